// Address-range → device dispatch for port I/O and MMIO (Firecracker bus.rs semantics).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "devices/device.hpp"
#include "vmm/base/error.hpp"

namespace vmm::devices {

/// An ordered set of non-overlapping [base, base+len) ranges, each owned by one device. Built at
/// setup time, then read-only: dispatch is lock-free and thread-safe (devices lock themselves).
class Bus {
 public:
  explicit Bus(std::string_view name) : name_(name) {}

  /// Adds a device at [base, base+len). Rejects len 0, ranges that wrap past 2^64 (ending exactly at 2^64 is fine), and overlaps.
  Result<> insert(std::shared_ptr<BusDevice> device, uint64_t base, uint64_t len);

  /// Dispatches a read. Returns false if no device claims `addr` (data is then filled with 0xff and
  /// the first such access to each address is logged to stderr once).
  bool read(uint64_t addr, std::span<uint8_t> data) const;
  /// Dispatches a write; false (and logged once) if no device claims `addr`.
  bool write(uint64_t addr, std::span<const uint8_t> data) const;

 private:
  struct Range {
    uint64_t base;
    uint64_t len;
    std::shared_ptr<BusDevice> device;
  };
  const Range* find(uint64_t addr, uint64_t size) const;
  void log_unclaimed(const char* kind, uint64_t addr, size_t size) const;

  std::string name_;
  std::vector<Range> ranges_;  // sorted by base
};

/// Presents a device at a fixed offset of its own (the i8042's command port 0x64 is offset 4 of the
/// device at 0x60).
class OffsetDevice final : public BusDevice {
 public:
  OffsetDevice(std::shared_ptr<BusDevice> inner, uint64_t offset) : inner_(std::move(inner)), offset_(offset) {}
  void read(uint64_t o, std::span<uint8_t> d) override { inner_->read(o + offset_, d); }
  void write(uint64_t o, std::span<const uint8_t> d) override { inner_->write(o + offset_, d); }
  std::string_view name() const override { return inner_->name(); }

 private:
  std::shared_ptr<BusDevice> inner_;
  uint64_t offset_;
};

}  // namespace vmm::devices
