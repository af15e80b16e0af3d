// A split virtqueue, device side (virtio 1.2 §2.7), written for a hostile driver: every index,
// address, length and flag the guest hands over is checked before it is used, and a violation is an
// error the transport turns into NEEDS_RESET — never a crash, a hang or an access outside RAM.
//
// What is checked (CONVENTIONS.md, "Guest memory and the hostile guest"):
// - setup: size a power of two, at most the device's maximum; rings aligned and inside RAM;
// - every pop: avail idx at most `size` ahead of the device's position;
// - chains: heads and next indices below the size, at most `size` hops (loops), unknown flags,
//   INDIRECT together with NEXT, indirect tables (only at the head, length a nonzero multiple of 16,
//   inside RAM, at most `size` entries, no nested INDIRECT), device-readable descriptors before
//   device-writable ones, every (addr, len) inside RAM;
// - the used length reported is what the device wrote, never what the guest claimed.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <span>
#include <type_traits>
#include <vector>

#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"

namespace vmm::devices::virtio {

// virtio 1.2 §2.7.5, §2.7.6, §2.7.8
inline constexpr uint16_t kDescFNext = 1;
inline constexpr uint16_t kDescFWrite = 2;
inline constexpr uint16_t kDescFIndirect = 4;
inline constexpr uint16_t kAvailFNoInterrupt = 1;
inline constexpr uint16_t kUsedFNoNotify = 1;

/// One guest buffer of a chain, already checked to lie inside RAM.
struct Segment {
  uint64_t gpa = 0;
  uint32_t len = 0;
};

/// A validated descriptor chain: device-readable segments, then device-writable ones.
struct DescriptorChain {
  uint16_t head = 0;
  std::vector<Segment> readable;
  std::vector<Segment> writable;
  uint64_t readable_bytes = 0;
  uint64_t writable_bytes = 0;
};

/// A position in a list of segments; the common part of Reader and Writer.
class SegmentCursor {
 public:
  SegmentCursor(const GuestMemory& memory, std::span<const Segment> segments);
  uint64_t remaining() const { return remaining_; }
  /// Skips `n` bytes (fails without moving if fewer remain).
  Result<> skip(uint64_t n);

 protected:
  /// Copies between `bytes` and the next bytes.size() bytes of the segments; `to_guest` chooses the
  /// direction. Fails without moving if fewer remain.
  Result<> transfer(std::span<uint8_t> bytes, bool to_guest, const char* what);

 private:
  void advance(uint64_t n);
  const GuestMemory& memory_;
  std::span<const Segment> segments_;
  size_t index_ = 0;
  uint64_t offset_ = 0;  // into segments_[index_]
  uint64_t remaining_ = 0;
};

/// Copies out of a chain's readable segments, in order.
class Reader : public SegmentCursor {
 public:
  using SegmentCursor::SegmentCursor;
  /// Fills `out` completely or fails (too few bytes left) without consuming anything.
  Result<> read(std::span<uint8_t> out) { return transfer(out, false, "readable"); }
  template <typename T>
    requires std::is_trivially_copyable_v<T>
  Result<T> read_obj() {
    T value;
    auto r = read(std::span(reinterpret_cast<uint8_t*>(&value), sizeof(T)));
    if (!r) return std::unexpected(r.error());
    return value;
  }
};

/// Copies into a chain's writable segments, in order; counts what was written.
class Writer : public SegmentCursor {
 public:
  using SegmentCursor::SegmentCursor;
  /// Writes all of `in` or fails (too little room) without writing anything.
  Result<> write(std::span<const uint8_t> in) {
    auto r = transfer(std::span(const_cast<uint8_t*>(in.data()), in.size()), true, "writable");
    if (r) written_ += in.size();
    return r;
  }
  template <typename T>
    requires std::is_trivially_copyable_v<T>
  Result<> write_obj(const T& value) {
    return write(std::span(reinterpret_cast<const uint8_t*>(&value), sizeof(T)));
  }
  /// Skips `n` bytes (they count as written: the device left them as they were).
  Result<> skip(uint64_t n) {
    auto r = SegmentCursor::skip(n);
    if (r) written_ += n;
    return r;
  }
  uint64_t bytes_written() const { return written_; }

 private:
  uint64_t written_ = 0;
};

/// The device side of one split virtqueue. Not thread-safe: one owner (the device's I/O thread)
/// pops and pushes; the transport configures it while the queue is not ready.
class Queue {
 public:
  /// The driver-visible configuration and the device's ring positions: everything a snapshot needs.
  struct State {
    uint16_t size = 0;  ///< 0: use max_size
    bool ready = false;
    uint64_t desc = 0, avail = 0, used = 0;
    uint16_t next_avail = 0;  ///< the device's position in the avail ring
    uint16_t next_used = 0;   ///< the used idx the device publishes next
    uint16_t signalled_used = 0;  ///< used idx at the last interrupt (EVENT_IDX)
    bool signalled_valid = false;
    bool event_idx = false;
  };

  explicit Queue(uint16_t max_size);

  uint16_t max_size() const { return max_size_; }
  uint16_t size() const { return state_.size; }
  /// The most chains one pass of a device serves before it yields (Interrupt::serve_again): one
  /// ring's worth.
  unsigned chains_per_pass() const { return state_.size > 0 ? state_.size : 1u; }
  bool ready() const { return state_.ready; }
  // Transport setters (virtio-pci common configuration). Effective once the queue is enabled.
  void set_size(uint16_t size) { state_.size = size; }
  void set_desc(uint64_t gpa) { state_.desc = gpa; }
  void set_avail(uint64_t gpa) { state_.avail = gpa; }
  void set_used(uint64_t gpa) { state_.used = gpa; }
  uint64_t desc() const { return state_.desc; }
  uint64_t avail() const { return state_.avail; }
  uint64_t used() const { return state_.used; }
  /// Whether VIRTIO_F_EVENT_IDX was negotiated (set at DRIVER_OK).
  void set_event_idx(bool on) { state_.event_idx = on; }

  /// Checks the configuration against `memory` and marks the queue ready (virtio 1.2 §2.7: size a
  /// power of two ≤ max, descriptor table 16-aligned, avail 2-aligned, used 4-aligned, all in RAM).
  Result<> enable(const GuestMemory& memory);
  /// Back to the reset state (size = max, addresses 0, positions 0, not ready).
  void reset();

  /// The next available chain, validated, or nothing when the driver has not made one available.
  Result<std::optional<DescriptorChain>> pop(const GuestMemory& memory);
  /// Puts the chain pop() returned last back, as if it had not been popped (a receive queue that
  /// had a buffer but no frame for it).
  void unpop() { --state_.next_avail; }
  /// Gives a chain back to the driver with `len` bytes written into its writable part.
  Result<> push_used(const GuestMemory& memory, uint16_t head, uint32_t len);
  /// Whether the driver wants an interrupt for what was pushed since the last one (EVENT_IDX's
  /// used_event, or the avail ring's NO_INTERRUPT flag). Call after a batch of push_used.
  Result<bool> needs_interrupt(const GuestMemory& memory);
  /// With EVENT_IDX: tells the driver to notify once it adds past the current position (call before
  /// sleeping on the queue's ioeventfd). Without EVENT_IDX, does nothing.
  Result<> enable_notification(const GuestMemory& memory);
  /// Whether the driver has made chains available that were not popped yet.
  Result<bool> has_available(const GuestMemory& memory) const;

  State save() const { return state_; }
  /// Restores a saved state; a ready queue is checked against `memory` like enable().
  Result<> restore(const GuestMemory& memory, const State& state);

 private:
  /// Checks the configuration and marks the queue ready (enable() without resetting positions).
  Result<> validate(const GuestMemory& memory);
  Result<uint16_t> avail_idx(const GuestMemory& memory) const;
  Result<> walk(const GuestMemory& memory, uint64_t table, uint32_t count, uint16_t index, bool indirect,
                DescriptorChain& chain) const;

  uint16_t max_size_;
  State state_;
};

}  // namespace vmm::devices::virtio
