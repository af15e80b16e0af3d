#include "disk/image.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <limits>

#include "disk/qcow2.hpp"
#include "disk/qcow2_image.hpp"
#include "disk/raw.hpp"
#include "vmm/base/fd.hpp"

namespace vmm::disk {

Result<> check_range(uint64_t offset, uint64_t length, uint64_t size) {
  if (offset > size || length > size - offset) {
    return fail("range {:#x}+{:#x} is outside the image's {:#x} bytes", offset, length, size);
  }
  return {};
}

Result<uint64_t> iov_bytes(std::span<const iovec> iov) {
  if (iov.size() > IOV_MAX) return fail("{} buffers, more than IOV_MAX ({})", iov.size(), IOV_MAX);
  uint64_t n = 0;
  for (const auto& v : iov) {
    if (v.iov_len > std::numeric_limits<uint64_t>::max() - n) return fail("buffer lengths overflow");
    n += v.iov_len;
  }
  return n;
}

Result<LockedFile> open_locked(const std::filesystem::path& path, bool read_only) {
  const std::string name = path.string();
  Fd fd(::open(name.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC));
  if (!fd) {
    return fail("{}: cannot open {}: {}", name, read_only ? "for reading" : "for reading and writing",
                errno_text(errno));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return fail("{}: fstat: {}", name, errno_text(errno));
  uint64_t size = 0;
  if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
  } else if (S_ISBLK(st.st_mode)) {
    if (::ioctl(fd.get(), BLKGETSIZE64, &size) != 0) return fail("{}: BLKGETSIZE64: {}", name, errno_text(errno));
  } else {
    return fail("{}: not a regular file or block device", name);
  }
  // Like QEMU's image locking: one writer, or any number of readers.
  if (::flock(fd.get(), (read_only ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
    return fail("{}: {} (is another VM using it?)", name,
                errno == EWOULDBLOCK ? "locked by another process" : errno_text(errno));
  }
  return LockedFile{std::move(fd), size};
}

Result<std::unique_ptr<Image>> open_image(EventLoop& loop, const OpenOptions& o) {
  if (!o.format.empty() && o.format != "raw" && o.format != "qcow2") {
    return fail("{}: format '{}' is not raw or qcow2", o.path.string(), o.format);
  }
  auto f = open_locked(o.path, o.read_only);
  if (!f) return std::unexpected(f.error());
  // The format as given, or from the content, never the name.
  const bool looks_qcow2 = Qcow2::probe(f->fd.get());
  if (o.format == "qcow2" && !looks_qcow2) return fail("{}: not a qcow2 image (no qcow2 magic)", o.path.string());
  if (o.format != "raw" && looks_qcow2) {
    f->fd.reset();  // (drops the lock) Qcow2::open opens and locks the file itself
    auto q = Qcow2::open(o.path, Qcow2OpenOptions{.read_only = o.read_only, .backing_must_be = o.backing_must_be});
    if (!q) return std::unexpected(q.error());
    auto img = Qcow2Image::create(loop, std::move(*q));
    if (!img) return std::unexpected(img.error());
    return std::unique_ptr<Image>(std::move(*img));
  }
  auto raw = RawImage::create(loop, std::move(f->fd), o.path, f->size, o.read_only, /*probed=*/o.format.empty());
  if (!raw) return std::unexpected(raw.error());
  return std::unique_ptr<Image>(std::move(*raw));
}

}  // namespace vmm::disk
