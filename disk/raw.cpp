#include "disk/raw.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>

#include <climits>
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
