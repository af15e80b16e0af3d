#include "disk/raw.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <climits>
#include <memory>
#include <cstring>
#include <utility>
#include <vector>

#include <fmt/core.h>

#include "disk/qcow2_format.hpp"

namespace vmm::disk {

FileId RawImage::file_id() const {
  struct stat st {};
  if (::fstat(fd_.get(), &st) != 0) return {};
  return {st.st_dev, st.st_ino};
}

Result<std::unique_ptr<RawImage>> RawImage::create(EventLoop& loop, Fd fd, std::filesystem::path path, uint64_t size,
                                                   bool read_only, bool probed) {
  std::unique_ptr<RawImage> img(new RawImage(loop, std::move(fd), std::move(path), size, read_only, probed));
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
  unlock_image(fd_.get());
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
  if (probed_ && offset < sizeof(uint32_t) && *n > 0) return write_head(offset, iov, *n, std::move(done));
  return loop_.writev(file_, iov.data(), static_cast<unsigned>(iov.size()), offset, std::move(done));
}

Result<> RawImage::write_head(uint64_t offset, std::span<const iovec> iov, uint64_t bytes, Done done) {
  constexpr uint64_t kHead = sizeof(uint32_t);  // the qcow2 magic's bytes
  auto refuse = [this](std::string why) -> Result<> {
    if (!std::exchange(refused_head_, true)) {
      fmt::print(stderr, "vmm: {}: refused the guest's write {} (give the disk's format=raw to allow it)\n", path_.string(), why);
    }
    return fail("{}: {} (the image's format was guessed: give format=raw to allow it)", path_.string(), why);
  };
  // Whether the first bytes become the magic must follow from this request alone: one that covers
  // only part of them (virtio-blk's cannot: whole sectors) is refused rather than read against the
  // file, which another request in flight may be changing.
  if (offset != 0 || bytes < kHead) return refuse("over part of its first 4 bytes");
  // They are copied once and written from the copy: the guest's buffer may change meanwhile.
  struct Held {
    uint8_t head[kHead];
    std::vector<iovec> iov;
  };
  auto held = std::make_shared<Held>();
  uint64_t got = 0;
  size_t i = 0;
  uint64_t skip = 0;  // bytes of iov[i] already in head
  for (; i < iov.size() && got < kHead; ++i) {
    const uint64_t k = std::min<uint64_t>(kHead - got, iov[i].iov_len);
    std::memcpy(held->head + got, iov[i].iov_base, k);
    got += k;
    if (k < iov[i].iov_len) {
      skip = k;
      break;
    }
  }
  if (qcow2::be32(held->head) == qcow2::kMagic) return refuse("that would make it look like a qcow2 image");
  held->iov.push_back({held->head, kHead});
  if (skip != 0) {
    held->iov.push_back({static_cast<uint8_t*>(iov[i].iov_base) + skip, iov[i].iov_len - skip});
    ++i;
  }
  for (; i < iov.size(); ++i) held->iov.push_back(iov[i]);
  if (held->iov.size() > IOV_MAX) return fail("{}: {} buffers, more than IOV_MAX", path_.string(), held->iov.size());
  const iovec* v = held->iov.data();
  const auto count = static_cast<unsigned>(held->iov.size());
  return loop_.writev(file_, v, count, 0, [held = std::move(held), done = std::move(done)](int32_t res) { done(res); });
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
  return zero(offset, length, true, /*hint=*/true, std::move(done));
}

Result<> RawImage::write_zeroes(uint64_t offset, uint64_t length, bool may_unmap, Done done) {
  return zero(offset, length, may_unmap, /*hint=*/false, std::move(done));
}

Result<> RawImage::zero(uint64_t offset, uint64_t length, bool unmap, bool hint, Done done) {
  if (auto r = check_writable(); !r) return r;
  if (auto r = check_range(offset, length, size_); !r) return r;
  // KEEP_SIZE: never grow the file. Punching a hole both zeroes and releases the space.
  const int mode = (unmap ? FALLOC_FL_PUNCH_HOLE : FALLOC_FL_ZERO_RANGE) | FALLOC_FL_KEEP_SIZE;
  const unsigned bit = unmap ? 1u : 2u;
  // (Answered through the loop, never inside this call: the device calls with its lock held, which
  // its completion takes.)
  auto fallback = [this, offset, length, hint](Done d) -> Result<> {
    if (hint) return loop_.complete_later(0, std::move(d));  // a discard is a hint: nothing done is an answer too (QEMU's as well)
    return write_zero_bytes(offset, length, std::move(d));
  };
  // A file system without the mode (tmpfs has no ZERO_RANGE; some have no PUNCH_HOLE) answers
  // EOPNOTSUPP, which the guest must not see as an I/O error: zeroes are written instead, and the
  // mode is not tried again.
  if (unsupported_.load(std::memory_order_relaxed) & bit) return fallback(std::move(done));
  return loop_.fallocate(file_, mode, offset, length, [this, bit, fallback, done = std::move(done)](int32_t res) mutable {
    if (res != -EOPNOTSUPP) return done(res);
    unsupported_.fetch_or(bit, std::memory_order_relaxed);
    auto d = std::make_shared<Done>(std::move(done));
    if (auto r = fallback([d](int32_t x) { (*d)(x); }); !r) (*d)(-EIO);
  });
}

Result<> RawImage::write_zero_bytes(uint64_t offset, uint64_t length, Done done) {
  if (length == 0) return loop_.complete_later(0, std::move(done));
  // Up to 64 MiB a write, every buffer the same 1 MiB of zeroes.
  static constexpr size_t kChunk = size_t{1} << 20, kBuffers = 64;
  static const std::vector<uint8_t> zeroes(kChunk);
  struct Run {
    uint64_t offset, left;
    Done done;
    std::array<iovec, kBuffers> iov;
  };
  auto run = std::make_shared<Run>(Run{offset, length, std::move(done), {}});
  auto next = std::make_shared<std::function<Result<>()>>();
  *next = [this, run, weak = std::weak_ptr(next)]() -> Result<> {
    if (run->left == 0) {
      run->done(0);  // (from a completion: the loop's)
      return {};
    }
    unsigned n = 0;
    for (uint64_t left = run->left; left > 0 && n < kBuffers; ++n) {
      const size_t len = static_cast<size_t>(std::min<uint64_t>(left, kChunk));
      run->iov[n] = {const_cast<uint8_t*>(zeroes.data()), len};
      left -= len;
    }
    return loop_.writev(file_, run->iov.data(), n, run->offset, [run, next = weak.lock()](int32_t res) {
      if (res <= 0) return run->done(res < 0 ? res : -EIO);
      run->offset += static_cast<uint64_t>(res);
      run->left -= std::min<uint64_t>(run->left, static_cast<uint64_t>(res));
      if (auto r = (*next)(); !r) run->done(-EIO);
    });
  };
  return (*next)();
}

}  // namespace vmm::disk
