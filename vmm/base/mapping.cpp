#include "vmm/base/mapping.hpp"

#include <sys/mman.h>

#include <cerrno>

namespace vmm {

Mapping& Mapping::operator=(Mapping&& o) noexcept {
  if (this != &o) {
    if (data_) ::munmap(data_, size_);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

Mapping::~Mapping() {
  if (data_) ::munmap(data_, size_);
}

Result<Mapping> Mapping::anonymous(size_t size, bool huge_pages) {
  if (size == 0) return fail("cannot map 0 bytes");
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
  if (p == MAP_FAILED) return fail("mmap of {} bytes of anonymous memory: {}", size, errno_text(errno));
  if (huge_pages) ::madvise(p, size, MADV_HUGEPAGE);  // advice only: THP may be disabled
  return Mapping(p, size);
}

Result<Mapping> Mapping::file_private(int fd, size_t size, off_t offset) {
  if (size == 0) return fail("cannot map 0 bytes");
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, offset);
  if (p == MAP_FAILED) return fail("mmap of {} bytes of a file: {}", size, errno_text(errno));
  return Mapping(p, size);
}

Result<Mapping> Mapping::shared(int fd, size_t size, int prot, off_t offset) {
  if (size == 0) return fail("cannot map 0 bytes");
  void* p = ::mmap(nullptr, size, prot, MAP_SHARED, fd, offset);
  if (p == MAP_FAILED) return fail("mmap of {} bytes: {}", size, errno_text(errno));
  return Mapping(p, size);
}

}  // namespace vmm
