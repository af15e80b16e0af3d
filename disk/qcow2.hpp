// qcow2 (v3, and v2 for reading) images: the synchronous engine. One object per open file, used by
// one thread at a time; every guest-visible operation is a method here, metadata is cached in memory
// (L1 table whole, L2 tables and refcount blocks in a bounded LRU cache) and written back in a
// crash-safe order on flush() (see qcow2.cpp, "Write ordering"). The asynchronous disk::Image that
// virtio-blk uses (open_image) runs this engine on a worker thread of its own, so that metadata I/O
// never blocks a vCPU or the event loop.
//
// Everything read from a file is validated before it is used: a malformed image gives a one-line
// error naming the file and the field, never a crash, and nothing is ever written outside the
// image's own clusters.
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "disk/image.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/fd.hpp"

namespace vmm::disk {

/// One file transfer a request is made of, once its mapping is known: `iov` from or to `fd` at
/// `offset` (a read past the file's end reads zeroes).
struct FileOp {
  int fd;
  std::vector<iovec> iov;
  uint64_t offset;
  bool write = false;
};
using IoPlan = std::vector<FileOp>;

/// Runs the transfers of a plan (synchronously, large ones split across CPUs).
Result<> execute(const IoPlan& plan);

/// A source of bytes read synchronously: a raw file or a qcow2 image, used as a backing file.
class BlockSource {
 public:
  virtual ~BlockSource() = default;
  virtual uint64_t size() const = 0;
  virtual const std::filesystem::path& path() const = 0;
  /// Fills `iov` from [offset, offset + bytes(iov)); bytes past size() read as zeroes.
  Result<> read(uint64_t offset, std::span<const iovec> iov);
  /// The same in two steps: maps the range and fills what needs no file data (zeroes, compressed
  /// clusters) now, and appends the file reads that remain to `plan`, for the caller to run
  /// (possibly on other threads; the source must stay open and its clusters in place until then:
  /// Qcow2 frees clusters only in flush(), so a caller runs plans before it flushes).
  virtual Result<> plan_read(uint64_t offset, std::span<const iovec> iov, IoPlan& plan) = 0;
  /// "raw" or "qcow2".
  virtual const char* format() const = 0;
  /// The open file (for its identity: fstat).
  virtual int file() const = 0;
};


/// A raw file opened read-only (shared lock), as a backing file.
Result<std::unique_ptr<BlockSource>> open_raw_source(const std::filesystem::path& path);

struct Qcow2OpenOptions {
  bool read_only = false;
  /// Backing-chain depth this image is at (0: the top); chains deeper than kMaxChainDepth are refused.
  unsigned depth = 0;
  /// Open the backing chain (off for `vmm disk info` of a broken chain, and for tests).
  bool open_backing = true;
  /// Upper bound of the metadata cache in bytes (L2 tables + refcount blocks).
  uint64_t cache_bytes = 32ull << 20;
  /// The file the backing file must be once opened (a clone's overlay: the template disk checked
  /// before, so that one replaced since, by a link out of the template, is refused).
  std::optional<FileId> backing_must_be{};
};

struct Qcow2CreateOptions {
  uint64_t size = 0;                 // virtual size; 0 with a backing file: the backing file's size
  unsigned cluster_bits = 16;        // 12 (4 KiB) .. 21 (2 MiB)
  std::string backing{};             // as stored in the header (relative to the new image's directory)
  std::string backing_format{};      // "raw", "qcow2" or empty (probed)
};

/// What `vmm disk info` prints.
struct Qcow2Info {
  uint32_t version = 0;
  uint64_t virtual_size = 0;
  unsigned cluster_bits = 0;
  unsigned refcount_bits = 0;
  uint64_t file_size = 0;
  uint64_t allocated_bytes = 0;       // host clusters with a nonzero refcount, times the cluster size
  std::string backing;                // as stored
  std::string backing_format;         // from the header extension, empty if none
  uint64_t incompatible_features = 0;
  uint64_t compatible_features = 0;
  uint64_t autoclear_features = 0;
  uint32_t snapshots = 0;
  bool dirty = false;
  bool corrupt = false;
  /// The backing chain below this image, nearest first (path and format of each).
  std::vector<std::pair<std::string, std::string>> chain;
};

inline constexpr unsigned kMaxChainDepth = 16;

class Qcow2 final : public BlockSource {
 public:
  /// Opens an image: validates the header, its extensions and the L1 and refcount tables, and (with
  /// open_backing) the backing chain. The file is locked (exclusive when writable).
  static Result<std::unique_ptr<Qcow2>> open(const std::filesystem::path& path, const Qcow2OpenOptions& options = {});
  /// Creates a new empty image (fails if `path` exists). With a backing file, its size (and format,
  /// when not given) come from the backing file, which must open.
  static Result<> create(const std::filesystem::path& path, const Qcow2CreateOptions& options);
  /// True when the file starts with the qcow2 magic; false when it does not, or is no regular file
  /// or block device (the opener refuses it then, saying so). A read that fails is an error, not
  /// "raw": a qcow2 image opened as raw would have its guest write over its tables.
  static Result<bool> probe(int fd);

  ~Qcow2() override;
  Qcow2(const Qcow2&) = delete;
  Qcow2& operator=(const Qcow2&) = delete;

  uint64_t size() const override;
  const std::filesystem::path& path() const override;
  const char* format() const override { return "qcow2"; }
  int file() const override;
  bool read_only() const;
  Qcow2Info info() const;
  /// The backing file as opened (none without one, or when opened without open_backing).
  std::optional<BackingFile> backing_file() const;
  /// Writes `name` as the backing file's name in the header of the image at `path` (closed: a copy
  /// of an image), where the old one was: a relative name, which resolves from the image's
  /// directory, made absolute for a copy that lives elsewhere. Refused if it does not fit in the
  /// header's cluster or over 1023 bytes (QEMU's limit).
  static Result<> set_backing_name(const std::filesystem::path& path, const std::string& name);

  // Guest-visible operations. Ranges are checked against size(); writes on a read-only image fail.
  using BlockSource::read;
  Result<> plan_read(uint64_t offset, std::span<const iovec> iov, IoPlan& plan) override;
  Result<> write(uint64_t offset, std::span<const iovec> iov);
  /// A write whose transfers into clusters that are already allocated are left in `plan` for the
  /// caller to run (allocating writes and their copy-on-write are done here, before returning).
  Result<> plan_write(uint64_t offset, std::span<const iovec> iov, IoPlan& plan);
  /// The range reads back as zeroes afterwards; whole clusters are deallocated (their space released).
  Result<> discard(uint64_t offset, uint64_t length);
  /// The range reads back as zeroes; with `may_unmap` whole clusters are deallocated, otherwise
  /// they keep their space (v3 zero flag on an allocated cluster). v2 images write real zeroes.
  Result<> write_zeroes(uint64_t offset, uint64_t length, bool may_unmap);
  /// Makes every completed write durable: data and refcount blocks, fdatasync; then L2 tables and
  /// the L1 table, fdatasync; then frees of clusters no longer referenced.
  Result<> flush();

  struct State;
  /// (Internal: open() builds the state.)
  explicit Qcow2(std::unique_ptr<State> state);

 private:
  std::unique_ptr<State> s_;
};

/// Opens any backing file: qcow2 if it has the magic (or `format` says so), raw otherwise.
Result<std::unique_ptr<BlockSource>> open_backing(const std::filesystem::path& path, const std::string& format,
                                                  unsigned depth);

}  // namespace vmm::disk
