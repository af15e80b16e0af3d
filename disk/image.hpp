// Disk images as a block device sees them: a size, a read-only flag and asynchronous requests that
// complete on the event loop's thread. virtio-blk talks only to this interface; raw files are here,
// qcow2 images (disk/qcow2_image.hpp) behind the same interface.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>

#include "vmm/base/error.hpp"
#include "vmm/base/event_loop.hpp"
#include "vmm/base/fd.hpp"

namespace vmm::disk {

/// A file's identity: (st_dev, st_ino).
using FileId = std::pair<uint64_t, uint64_t>;

/// A qcow2 image's backing file as the image opened it.
struct BackingFile {
  std::filesystem::path path;  ///< where it was opened (a relative name resolved from the image's directory)
  std::string stored;          ///< the name as the image's header stores it
  FileId id;                   ///< the file opened
};

class Image {
 public:
  /// Bytes transferred (>= 0) or -errno, on the event loop's thread.
  using Done = EventLoop::Done;
  virtual ~Image() = default;

  /// Virtual size in bytes.
  virtual uint64_t size() const = 0;
  virtual bool read_only() const = 0;
  virtual const std::filesystem::path& path() const = 0;
  /// "raw" or "qcow2": what the image was opened as (a fork's child opens its copy as the same).
  virtual const char* format() const = 0;
  /// The format to reopen it (a copy of it) with: format(), or empty for a raw image whose format
  /// was guessed, so that its copy is guessed again and keeps the guard (see OpenOptions::format).
  virtual std::string reopen_format() const { return format(); }
  /// The file open, which path() named when it was opened (a fork checks it is still there).
  virtual FileId file_id() const = 0;
  /// A qcow2 image's backing file (none for a raw image, or a qcow2 one without).
  virtual std::optional<BackingFile> backing_file() const { return std::nullopt; }

  // Requests. A request outside [0, size()) or a modification of a read-only image is refused here,
  // synchronously, with an error; otherwise `done` runs exactly once. The iovecs (and the memory
  // they point to) must stay valid until then.
  virtual Result<> read(uint64_t offset, std::span<const iovec> iov, Done done) = 0;
  virtual Result<> write(uint64_t offset, std::span<const iovec> iov, Done done) = 0;
  /// Makes every completed write durable (metadata first, then data: fdatasync).
  virtual Result<> flush(Done done) = 0;
  /// The range may read back as anything afterwards (here: zeroes, its space released).
  virtual Result<> discard(uint64_t offset, uint64_t length, Done done) = 0;
  /// The range reads back as zeroes; with `may_unmap` its space may be released.
  virtual Result<> write_zeroes(uint64_t offset, uint64_t length, bool may_unmap, Done done) = 0;
};

struct OpenOptions {
  std::filesystem::path path;
  bool read_only = false;
  /// "raw" or "qcow2" as the user or a template's manifest says; empty: read from the content (a
  /// raw image whose format was guessed then refuses the guest's writes that would make it look
  /// like a qcow2 image, as QEMU's probed raw images do: see RawImage).
  std::string format{};
  /// A qcow2 image's backing file must be this file (Qcow2OpenOptions::backing_must_be).
  std::optional<std::pair<uint64_t, uint64_t>> backing_must_be{};
};

/// Opens the image at `options.path` (format as given, else read from its content, never its
/// name; a qcow2 format given for a file that is not one is an error), locks it
/// (shared when read-only, exclusive otherwise, so two writers cannot share it) and registers it
/// with `loop`. Errors name the file and the problem.
Result<std::unique_ptr<Image>> open_image(EventLoop& loop, const OpenOptions& options);

/// An open image file (regular file or block device), locked like QEMU locks images: exclusively
/// when writable, shared when read-only, so two writers cannot share it.
struct LockedFile {
  Fd fd;
  uint64_t size;
};
Result<LockedFile> open_locked(const std::filesystem::path& path, bool read_only);

/// QEMU's own image locks (the byte-range locks qemu-img and QEMU test on every image they
/// open), taken on `fd` for a reader or a writer: fails, holding nothing, while QEMU or qemu-img
/// has the image in a way that conflicts. open_locked takes them after its flock.
Result<> lock_like_qemu(int fd, bool read_only);

/// Releases both kinds of lock now, without waiting for the file's last reference to go (io_uring
/// may hold it a little longer than its owner).
void unlock_image(int fd);

/// Checks [offset, offset + length) against an image of `size` bytes, overflow-safe.
Result<> check_range(uint64_t offset, uint64_t length, uint64_t size);

/// Sum of the iovec lengths; fails on overflow.
Result<uint64_t> iov_bytes(std::span<const iovec> iov);

}  // namespace vmm::disk
