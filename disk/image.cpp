#include "disk/image.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <vector>

#include <fmt/core.h>

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

namespace {
/// Whether flock() on `fd`'s file system is emulated with byte-range locks (NFS, SMB/CIFS).
bool flock_is_byte_lock(int fd) {
  struct statfs fs {};
  if (::fstatfs(fd, &fs) != 0) return false;
  const auto type = static_cast<uint32_t>(fs.f_type);
  return type == 0x6969u /* NFS */ || type == 0xFF534D42u /* CIFS */ || type == 0xFE534D42u /* SMB2 */ || type == 0x517Bu /* SMB */;
}
}  // namespace

Result<LockedFile> open_locked(const std::filesystem::path& path, bool read_only) {
  const std::string name = path.string();
  // O_NONBLOCK for the open only: a FIFO's would wait for a writer, for ever; it is refused below.
  // (Left on, io_uring would answer EAGAIN instead of waiting for the disk.)
  Fd fd(::open(name.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
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
  if (const int fl = ::fcntl(fd.get(), F_GETFL); fl < 0 || ::fcntl(fd.get(), F_SETFL, fl & ~O_NONBLOCK) != 0) {
    return fail("{}: fcntl: {}", name, errno_text(errno));
  }
  // Like QEMU's image locking: one writer, or any number of readers. flock too where it is a lock
  // of its own: NFS and SMB emulate it with a whole-file byte-range lock, which QEMU's byte locks
  // below would take for another's (two readers of one image refused each other); those alone
  // keep one writer or many readers apart there.
  if (!flock_is_byte_lock(fd.get()) && ::flock(fd.get(), (read_only ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
    return fail("{}: {} (is another VM using it?)", name,
                errno == EWOULDBLOCK ? "locked by another process" : errno_text(errno));
  }
  if (auto r = lock_like_qemu(fd.get(), read_only); !r) return fail("{}: {}", name, r.error().message());
  return LockedFile{std::move(fd), size};
}

namespace {

// QEMU's image locks (block/file-posix.c), which qemu-img and QEMU take and test on every image
// they open: open-file-description byte locks, all shared (F_RDLCK), one byte per permission:
// byte 100 + p while holding permission p, byte 200 + p while refusing to share it with others.
// Permissions: 0 consistent read, 1 write, 2 write unchanged, 3 resize.
constexpr off_t kPermBase = 100, kUnsharedBase = 200;
constexpr int kRead = 0, kWrite = 1, kResize = 3;
constexpr const char* kPermName[] = {"consistent read", "write", "write unchanged", "resize"};

int ofd_lock(int fd, short type, off_t start, off_t len, int cmd, struct flock* out = nullptr) {
  struct flock l {};
  l.l_type = type;
  l.l_whence = SEEK_SET;
  l.l_start = start;
  l.l_len = len;
  int r;
  do {
    r = ::fcntl(fd, cmd, &l);
  } while (r != 0 && errno == EINTR);
  if (out != nullptr) *out = l;
  return r;
}

// Whether another open file description holds byte `at` (ours never conflicts with itself).
Result<bool> held_by_other(int fd, off_t at) {
  struct flock l {};
  if (ofd_lock(fd, F_WRLCK, at, 1, F_OFD_GETLK, &l) != 0) return fail("F_OFD_GETLK: {}", errno_text(errno));
  return l.l_type != F_UNLCK;
}

void unlock_qemu(int fd) { (void)ofd_lock(fd, F_UNLCK, kPermBase, kUnsharedBase + 100 - kPermBase, F_OFD_SETLK); }

}  // namespace

Result<> lock_like_qemu(int fd, bool read_only) {
  // A reader holds consistent read; a writer also write and resize (QEMU's writer does too). Both
  // refuse to share write and resize: a reader needs the image to stay as it is (a template's base
  // under its clones), a writer is the only one.
  std::vector<int> held{kRead};
  if (!read_only) held.insert(held.end(), {kWrite, kResize});
  const int unshared[] = {kWrite, kResize};
  // Taken first, then checked, as QEMU does: of two racing openers, at least one sees the other.
  auto refuse = [&](const std::string& why) -> Result<> {
    unlock_qemu(fd);
    return fail("{}", why);
  };
  for (int p : held) {
    if (ofd_lock(fd, F_RDLCK, kPermBase + p, 1, F_OFD_SETLK) != 0) return refuse(fmt::format("F_OFD_SETLK: {}", errno_text(errno)));
  }
  for (int p : unshared) {
    if (ofd_lock(fd, F_RDLCK, kUnsharedBase + p, 1, F_OFD_SETLK) != 0) return refuse(fmt::format("F_OFD_SETLK: {}", errno_text(errno)));
  }
  for (int p : unshared) {  // someone holds what we refuse to share
    auto other = held_by_other(fd, kPermBase + p);
    if (!other) return refuse(other.error().message());
    if (*other) return refuse(fmt::format("locked by another process (QEMU or qemu-img has it open for {})", kPermName[p]));
  }
  for (int p : held) {  // someone refuses to share what we hold
    auto other = held_by_other(fd, kUnsharedBase + p);
    if (!other) return refuse(other.error().message());
    if (*other) return refuse(fmt::format("locked by another process (QEMU or qemu-img has it open, not sharing {})", kPermName[p]));
  }
  return {};
}

void unlock_image(int fd) {
  ::flock(fd, LOCK_UN);
  unlock_qemu(fd);
}

Result<std::unique_ptr<Image>> open_image(EventLoop& loop, const OpenOptions& o) {
  if (!o.format.empty() && o.format != "raw" && o.format != "qcow2") {
    return fail("{}: format '{}' is not raw or qcow2", o.path.string(), o.format);
  }
  auto f = open_locked(o.path, o.read_only);
  if (!f) return std::unexpected(f.error());
  // The format as given, or from the content, never the name.
  auto probed = Qcow2::probe(f->fd.get());
  if (!probed) return std::unexpected(probed.error().context(o.path.string()));
  const bool looks_qcow2 = *probed;
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
