#include "disk/raw.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/file.h>

namespace vmm::disk {

Result<std::unique_ptr<RawImage>> RawImage::create(EventLoop& loop, Fd fd, std::filesystem::path path, uint64_t size,
                                                   bool read_only) {
  std::unique_ptr<RawImage> img(new RawImage(loop, std::move(fd), std::move(path), size, read_only));
  auto index = loop.register_file(img->fd_.get());
  if (!index) return std::unexpected(index.error().context(img->path_.string()));
  img->file_ = *index;
  img->registered_ = true;
  return img;
}

RawImage::~RawImage() {
  if (registered_) loop_.unregister_file(file_);
  // io_uring may hold the file a little longer than we do (its teardown is deferred), and the lock
  // lives as long as the file: release it now, so the image can be reopened at once.
  ::flock(fd_.get(), LOCK_UN);
}

Result<> RawImage::check_writable() const {
  if (read_only_) return fail("{}: the image is read-only", path_.string());
  return {};
}

Result<> RawImage::read(uint64_t offset, std::span<const iovec> iov, Done done) {
  auto n = iov_bytes(iov);
  if (!n) return std::unexpected(n.error());
  if (auto r = check_range(offset, *n, size_); !r) return r;
  return loop_.readv(file_, iov.data(), static_cast<unsigned>(iov.size()), offset, std::move(done));
}

Result<> RawImage::write(uint64_t offset, std::span<const iovec> iov, Done done) {
  if (auto r = check_writable(); !r) return r;
  auto n = iov_bytes(iov);
  if (!n) return std::unexpected(n.error());
  if (auto r = check_range(offset, *n, size_); !r) return r;
  return loop_.writev(file_, iov.data(), static_cast<unsigned>(iov.size()), offset, std::move(done));
}

Result<> RawImage::flush(Done done) {
  // A read-only image has nothing to make durable; the guest's flush still succeeds.
  // Once an fdatasync has failed, none may succeed again: the kernel reports a writeback error to
  // one fdatasync only and may have dropped the pages it could not write, so a later success
  // would tell the guest that writes are durable which never will be (QEMU does the same).
  if (const int e = flush_error_.load(std::memory_order_relaxed)) {
    return fail("{}: an earlier flush failed ({}): what it covered may not be on disk, so no flush succeeds any more",
                path_.string(), errno_text(e));
  }
  return loop_.fdatasync(file_, [this, done = std::move(done)](int32_t res) {
    if (res < 0) flush_error_.store(-res, std::memory_order_relaxed);
    done(res);
  });
}

Result<> RawImage::discard(uint64_t offset, uint64_t length, Done done) {
  return write_zeroes(offset, length, true, std::move(done));
}

Result<> RawImage::write_zeroes(uint64_t offset, uint64_t length, bool may_unmap, Done done) {
  if (auto r = check_writable(); !r) return r;
  if (auto r = check_range(offset, length, size_); !r) return r;
  // KEEP_SIZE: never grow the file. Punching a hole both zeroes and releases the space.
  const int mode = (may_unmap ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE) | FALLOC_FL_KEEP_SIZE;
  return loop_.fallocate(file_, mode, offset, length, std::move(done));
}

}  // namespace vmm::disk
