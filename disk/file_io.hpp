// Synchronous file I/O for the qcow2 engine: whole-range pread/pwrite that retry on EINTR and short
// transfers (reads past the end of the file give zeroes), and iovec slicing and copying.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "vmm/base/error.hpp"

namespace vmm::disk {

/// Reads [offset, offset + bytes(iov)) into `iov`; what lies past the end of the file reads as zeroes.
Result<> pread_full(int fd, std::span<const iovec> iov, uint64_t offset);
/// Writes all of `iov` at `offset`.
Result<> pwrite_full(int fd, std::span<const iovec> iov, uint64_t offset);
Result<> pread_full(int fd, void* buf, uint64_t len, uint64_t offset);
Result<> pwrite_full(int fd, const void* buf, uint64_t len, uint64_t offset);

/// Like pread_full/pwrite_full, but a large transfer is split across a small process-wide pool of
/// threads (two per CPU, at most 8) and the caller, so that page-cache copies of big
/// requests use several CPUs, as QEMU's thread pool does.
Result<> pread_parallel(int fd, std::span<const iovec> iov, uint64_t offset);
Result<> pwrite_parallel(int fd, std::span<const iovec> iov, uint64_t offset);

/// Runs `task` on the process-wide I/O pool (two threads per CPU, at most 8).
void post_io(std::function<void()> task);

/// Appends to `out` the part [offset, offset + len) of the byte sequence that `in` describes.
void slice_iov(std::span<const iovec> in, uint64_t offset, uint64_t len, std::vector<iovec>& out);
/// Copies between a flat buffer and the bytes [offset, offset + len) of `iov`.
void copy_to_iov(std::span<const iovec> iov, uint64_t offset, const void* src, uint64_t len);
void copy_from_iov(std::span<const iovec> iov, uint64_t offset, void* dst, uint64_t len);
void zero_iov(std::span<const iovec> iov, uint64_t offset, uint64_t len);

}  // namespace vmm::disk
