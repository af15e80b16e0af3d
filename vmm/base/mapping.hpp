// RAII owner of an mmap()ed region.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

#include "vmm/base/error.hpp"

namespace vmm {

/// One mmap()ed region, unmapped on destruction. Move-only.
class Mapping {
 public:
  Mapping() = default;
  Mapping(Mapping&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  Mapping& operator=(Mapping&& o) noexcept;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping();

  /// Anonymous private read-write memory; with `huge_pages`, advised MADV_HUGEPAGE (THP), which keeps
  /// a later fork() of the VMM cheap.
  static Result<Mapping> anonymous(size_t size, bool huge_pages);
  /// A file mapped MAP_PRIVATE read-write: reads share the page cache, writes copy on write.
  static Result<Mapping> file_private(int fd, size_t size, off_t offset = 0);
  /// Maps `size` bytes of `fd` MAP_SHARED with `prot` (e.g. a KVM vCPU's kvm_run page).
  static Result<Mapping> shared(int fd, size_t size, int prot, off_t offset = 0);

  /// Takes ownership of a region mapped elsewhere: in a forked child, the parent's guest RAM,
  /// inherited copy-on-write, whose first owner the child abandons.
  static Mapping adopt(void* data, size_t size) { return Mapping(data, size); }

  /// Forgets the region without unmapping it (it stays mapped until the process ends): memory the
  /// kernel may still write into, the buffers of I/O abandoned in flight.
  void leak() {
    data_ = nullptr;
    size_ = 0;
  }

  uint8_t* data() const { return static_cast<uint8_t*>(data_); }
  size_t size() const { return size_; }

 private:
  Mapping(void* data, size_t size) : data_(data), size_(size) {}
  void* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace vmm
