// Raw image files (and block devices): the guest's sectors are the file's bytes. Every request is
// one io_uring operation on a registered file.
#pragma once

#include <atomic>

#include "disk/image.hpp"
#include "vmm/base/fd.hpp"

namespace vmm::disk {

class RawImage final : public Image {
 public:
  /// Takes an open, locked file of `size` bytes and registers it with `loop`. `probed`: nobody
  /// said the image is raw, its content was read to decide. Such an image refuses a write that
  /// would put the qcow2 magic at its start: the next open, guessing again, would take it for a
  /// qcow2 image whose header the guest wrote, with a backing file of the guest's choosing (a host
  /// file the guest could then read). QEMU restricts writes to a probed raw image's first sector
  /// the same way. The guest gets an I/O error; a raw format given explicitly lifts the guard.
  static Result<std::unique_ptr<RawImage>> create(EventLoop& loop, Fd fd, std::filesystem::path path,
                                                  uint64_t size, bool read_only, bool probed = false);
  ~RawImage() override;

  uint64_t size() const override { return size_; }
  bool read_only() const override { return read_only_; }
  const std::filesystem::path& path() const override { return path_; }
  FileId file_id() const override;
  const char* format() const override { return "raw"; }
  std::string reopen_format() const override { return probed_ ? "" : "raw"; }

  Result<> read(uint64_t offset, std::span<const iovec> iov, Done done) override;
  Result<> write(uint64_t offset, std::span<const iovec> iov, Done done) override;
  Result<> flush(Done done) override;
  Result<> discard(uint64_t offset, uint64_t length, Done done) override;
  Result<> write_zeroes(uint64_t offset, uint64_t length, bool may_unmap, Done done) override;

 private:
  RawImage(EventLoop& loop, Fd fd, std::filesystem::path path, uint64_t size, bool read_only, bool probed)
      : loop_(loop), fd_(std::move(fd)), path_(std::move(path)), size_(size), read_only_(read_only), probed_(probed) {}
  Result<> check_writable() const;
  /// Discard (`hint`) or write zeroes: fallocate, or zeroes written where the file system lacks the mode.
  Result<> zero(uint64_t offset, uint64_t length, bool unmap, bool hint, Done done);
  Result<> write_zero_bytes(uint64_t offset, uint64_t length, Done done);
  /// A write over the first bytes of a probed image (see create()).
  Result<> write_head(uint64_t offset, std::span<const iovec> iov, uint64_t bytes, Done done);

  EventLoop& loop_;
  Fd fd_;
  std::filesystem::path path_;
  uint64_t size_;
  bool read_only_;
  bool probed_;
  bool refused_head_ = false;  // (said once on stderr)
  unsigned file_ = 0;  // registered-file index
  bool registered_ = false;
  std::atomic<int> flush_error_{0};  // the errno of the first fdatasync that failed
  std::atomic<unsigned> unsupported_{0};  // fallocate modes the file system refused: 1 PUNCH_HOLE, 2 ZERO_RANGE
};

}  // namespace vmm::disk
