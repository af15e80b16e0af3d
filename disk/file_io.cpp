#include "disk/file_io.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

namespace vmm::disk {

namespace {

/// Drops the first `n` bytes of an iovec array (in place).
void advance(std::vector<iovec>& v, size_t& first, uint64_t n) {
  while (n > 0 && first < v.size()) {
    if (n >= v[first].iov_len) {
      n -= v[first].iov_len;
      ++first;
    } else {
      v[first].iov_base = static_cast<uint8_t*>(v[first].iov_base) + n;
      v[first].iov_len -= n;
      n = 0;
    }
  }
}

uint64_t total(std::span<const iovec> iov) {
  uint64_t n = 0;
  for (const auto& v : iov) n += v.iov_len;
  return n;
}

}  // namespace

Result<> pread_full(int fd, std::span<const iovec> iov, uint64_t offset) {
  std::vector<iovec> v(iov.begin(), iov.end());
  size_t first = 0;
  uint64_t left = total(iov);
  while (left > 0) {
    const int count = static_cast<int>(std::min<size_t>(v.size() - first, IOV_MAX));
    const ssize_t n = ::preadv(fd, &v[first], count, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("read of {:#x} bytes at {:#x}: {}", left, offset, errno_text(errno));
    }
    if (n == 0) {  // end of file: the rest reads as zeroes
      for (size_t i = first; i < v.size(); ++i) std::memset(v[i].iov_base, 0, v[i].iov_len);
      return {};
    }
    advance(v, first, static_cast<uint64_t>(n));
    left -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return {};
}

Result<> pwrite_full(int fd, std::span<const iovec> iov, uint64_t offset) {
  std::vector<iovec> v(iov.begin(), iov.end());
  size_t first = 0;
  uint64_t left = total(iov);
  while (left > 0) {
    const int count = static_cast<int>(std::min<size_t>(v.size() - first, IOV_MAX));
    const ssize_t n = ::pwritev(fd, &v[first], count, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("write of {:#x} bytes at {:#x}: {}", left, offset, errno_text(errno));
    }
    if (n == 0) return fail("write of {:#x} bytes at {:#x}: no progress", left, offset);
    advance(v, first, static_cast<uint64_t>(n));
    left -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return {};
}

Result<> pread_full(int fd, void* buf, uint64_t len, uint64_t offset) {
  const iovec v{buf, len};
  return pread_full(fd, std::span(&v, 1), offset);
}

Result<> pwrite_full(int fd, const void* buf, uint64_t len, uint64_t offset) {
  const iovec v{const_cast<void*>(buf), len};
  return pwrite_full(fd, std::span(&v, 1), offset);
}

void slice_iov(std::span<const iovec> in, uint64_t offset, uint64_t len, std::vector<iovec>& out) {
  for (const auto& v : in) {
    if (len == 0) return;
    if (offset >= v.iov_len) {
      offset -= v.iov_len;
      continue;
    }
    const uint64_t n = std::min<uint64_t>(v.iov_len - offset, len);
    out.push_back({static_cast<uint8_t*>(v.iov_base) + offset, n});
    len -= n;
    offset = 0;
  }
}

namespace {
template <typename F>
void walk(std::span<const iovec> iov, uint64_t offset, uint64_t len, F&& f) {
  uint64_t done = 0;
  for (const auto& v : iov) {
    if (len == 0) return;
    if (offset >= v.iov_len) {
      offset -= v.iov_len;
      continue;
    }
    const uint64_t n = std::min<uint64_t>(v.iov_len - offset, len);
    f(static_cast<uint8_t*>(v.iov_base) + offset, done, n);
    done += n;
    len -= n;
    offset = 0;
  }
}
}  // namespace

void copy_to_iov(std::span<const iovec> iov, uint64_t offset, const void* src, uint64_t len) {
  walk(iov, offset, len, [&](uint8_t* p, uint64_t at, uint64_t n) { std::memcpy(p, static_cast<const uint8_t*>(src) + at, n); });
}

void copy_from_iov(std::span<const iovec> iov, uint64_t offset, void* dst, uint64_t len) {
  walk(iov, offset, len, [&](uint8_t* p, uint64_t at, uint64_t n) { std::memcpy(static_cast<uint8_t*>(dst) + at, p, n); });
}

void zero_iov(std::span<const iovec> iov, uint64_t offset, uint64_t len) {
  walk(iov, offset, len, [](uint8_t* p, uint64_t, uint64_t n) { std::memset(p, 0, n); });
}

}  // namespace vmm::disk
