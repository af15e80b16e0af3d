// Raw image files (and block devices): the guest's sectors are the file's bytes. Every request is
// one io_uring operation on a registered file.
#pragma once

#include <atomic>

#include "disk/image.hpp"
#include "vmm/base/fd.hpp"

namespace vmm::disk {

class RawImage final : public Image {
 public:
  /// Takes an open, locked file of `size` bytes and registers it with `loop`.
  static Result<std::unique_ptr<RawImage>> create(EventLoop& loop, Fd fd, std::filesystem::path path,
                                                  uint64_t size, bool read_only);
  ~RawImage() override;

  uint64_t size() const override { return size_; }
  bool read_only() const override { return read_only_; }
  const std::filesystem::path& path() const override { return path_; }

  Result<> read(uint64_t offset, std::span<const iovec> iov, Done done) override;
  Result<> write(uint64_t offset, std::span<const iovec> iov, Done done) override;
  Result<> flush(Done done) override;
  Result<> discard(uint64_t offset, uint64_t length, Done done) override;
  Result<> write_zeroes(uint64_t offset, uint64_t length, bool may_unmap, Done done) override;

 private:
  RawImage(EventLoop& loop, Fd fd, std::filesystem::path path, uint64_t size, bool read_only)
      : loop_(loop), fd_(std::move(fd)), path_(std::move(path)), size_(size), read_only_(read_only) {}
  Result<> check_writable() const;

  EventLoop& loop_;
  Fd fd_;
  std::filesystem::path path_;
  uint64_t size_;
  bool read_only_;
  unsigned file_ = 0;  // registered-file index
  bool registered_ = false;
  std::atomic<int> flush_error_{0};  // the errno of the first fdatasync that failed
};

}  // namespace vmm::disk
