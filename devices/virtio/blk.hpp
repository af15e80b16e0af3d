// virtio-blk (virtio 1.2 §5.2) on a disk::Image: read, write, flush, get-id, discard and
// write-zeroes, served asynchronously through the image (io_uring), many requests in flight.
#pragma once

#include <atomic>

#include <memory>
#include <string>

#include "devices/virtio/device.hpp"
#include "disk/image.hpp"

namespace vmm::devices::virtio {

// virtio 1.2 §5.2.3, §5.2.6
inline constexpr uint64_t kBlkFSizeMax = 1ull << 1;
inline constexpr uint64_t kBlkFSegMax = 1ull << 2;
inline constexpr uint64_t kBlkFRo = 1ull << 5;
inline constexpr uint64_t kBlkFBlkSize = 1ull << 6;
inline constexpr uint64_t kBlkFFlush = 1ull << 9;
inline constexpr uint64_t kBlkFDiscard = 1ull << 13;
inline constexpr uint64_t kBlkFWriteZeroes = 1ull << 14;
inline constexpr uint32_t kBlkTIn = 0;
inline constexpr uint32_t kBlkTOut = 1;
inline constexpr uint32_t kBlkTFlush = 4;
inline constexpr uint32_t kBlkTGetId = 8;
inline constexpr uint32_t kBlkTDiscard = 11;
inline constexpr uint32_t kBlkTWriteZeroes = 13;
inline constexpr uint8_t kBlkSOk = 0;
inline constexpr uint8_t kBlkSIoErr = 1;
inline constexpr uint8_t kBlkSUnsupp = 2;
inline constexpr uint64_t kSectorSize = 512;
inline constexpr size_t kBlkIdBytes = 20;
inline constexpr uint32_t kBlkWriteZeroesFUnmap = 1;
/// Largest discard / write-zeroes range we accept in one request (advertised in the config).
inline constexpr uint32_t kBlkMaxRangeSectors = 1u << 22;  // 2 GiB
/// Largest read or write payload we serve (a chain may name overlapping buffers that add up to more
/// than RAM; the used length and io_uring's result are 32-bit).
inline constexpr uint64_t kBlkMaxDataBytes = 256ull << 20;
/// Largest buffer of a request, advertised (size_max): with seg_max, a driver's largest request
/// stays within kBlkMaxDataBytes (Linux otherwise builds requests as large as max_sectors_kb
/// allows, which a root user may raise past it: they failed with IOERR).
inline constexpr uint32_t kBlkSizeMax = 1u << 20;

/// A parsed request. `kind == Invalid` is a well-formed chain with a bad request in it: the device
/// answers `status` (IOERR or UNSUPP) and reports `error`.
struct BlkRequest {
  enum class Kind { Read, Write, Flush, GetId, Discard, WriteZeroes, Invalid };
  Kind kind = Kind::Invalid;
  uint32_t type = 0;
  uint64_t sector = 0;
  std::vector<Segment> data;  ///< the payload (device-writable for Read/GetId, readable for Write)
  uint64_t data_bytes = 0;
  uint64_t status_gpa = 0;  ///< the status byte (the chain's last device-writable byte)
  uint64_t range_sector = 0;  ///< Discard / WriteZeroes
  uint32_t range_sectors = 0;
  bool unmap = false;
  uint8_t status = kBlkSIoErr;  ///< Invalid: what to answer
  std::string error;            ///< Invalid: why
};

/// Parses `chain` for a disk of `capacity` sectors. Fails only when the chain has no status byte
/// to answer through (the device then returns it unanswered, length 0).
Result<BlkRequest> parse_blk_request(const GuestMemory& memory, const DescriptorChain& chain, uint64_t capacity);

class Block final : public VirtioDevice {
 public:
  static constexpr uint16_t kQueueSize = 256;
  /// `id` is the serial the guest reads with GET_ID (at most 20 bytes are used).
  Block(std::unique_ptr<disk::Image> image, std::string id);

  uint16_t device_type() const override { return 2; }
  uint64_t device_features() const override;
  void read_config(uint64_t offset, std::span<uint8_t> data) override;
  void write_config(uint64_t offset, std::span<const uint8_t> data) override;
  Result<> activate(const GuestMemory& memory, uint64_t features, Interrupt& interrupt) override;
  Result<> process_queue(unsigned queue) override;
  void reset() override;

  uint64_t capacity() const { return image_->size() / kSectorSize; }
  const disk::Image& image() const { return *image_; }
  /// For reads by the VMM itself while the device is quiesced (a snapshot copying the disk).
  disk::Image& image() { return *image_; }
  /// The serial the guest reads with GET_ID.
  const std::string& id() const { return id_; }
  /// Requests answered with IOERR or UNSUPP, or returned unanswered, since creation.
  uint64_t errors() const { return errors_; }
  size_t in_flight() const override { return in_flight_; }

  /// Counters since the device was created (the metrics endpoint), read under the device's mutex.
  /// Requests are counted when they complete successfully; `errors` as errors() above.
  struct Stats {
    uint64_t reads = 0, read_bytes = 0, writes = 0, write_bytes = 0, flushes = 0, discards = 0, errors = 0;
  };
  Stats stats();
  /// Makes every completed write durable (qcow2: metadata written back); `done` on the loop thread.
  Result<> flush_image(disk::Image::Done done) { return image_->flush(std::move(done)); }

 private:
  struct InFlight;
  /// Starts one request; answers it at once when it needs no I/O or is refused.
  void start(const BlkRequest& req, uint16_t head);
  /// Writes the status, returns the chain, interrupts if the driver wants it. Mutex held.
  void finish(uint16_t head, uint64_t status_gpa, uint8_t status, uint32_t written);
  /// Counts a request that completed successfully. Mutex held.
  void count(BlkRequest::Kind kind, uint64_t bytes);
  void refuse(const BlkRequest& req, uint16_t head, uint8_t status, const std::string& why);

  std::unique_ptr<disk::Image> image_;
  std::string id_;
  const GuestMemory* memory_ = nullptr;
  Interrupt* interrupt_ = nullptr;
  uint64_t generation_ = 0;  // bumped by reset(): completions of older requests are dropped
  uint64_t errors_ = 0;
  Stats stats_;  // all but errors
  std::atomic<size_t> in_flight_{0};  // image requests whose completion has not run yet
  bool logged_ = false;
};

}  // namespace vmm::devices::virtio
