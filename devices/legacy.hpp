// Small legacy devices: i8042 (reset line), CMOS RTC, QEMU-style debug-exit port, and the ACPI
// hardware-reduced sleep/reset registers.
#pragma once

#include <cstdint>
#include <ctime>
#include <mutex>

#include "devices/device.hpp"

namespace vmm::devices {

/// i8042 keyboard controller, enough for Linux's probe and for reset (command 0xFE). Mapped twice:
/// at 0x60 (data) and 0x64 (status/command); `offset` 0 is data, 4 is command (insert with len 1
/// at 0x60 and at 0x64 using the two adapters from ports()).
class I8042 final : public BusDevice, public Snapshottable {
 public:
  explicit I8042(VmControl& vm) : vm_(vm) {}
  /// offset 0: data port 0x60; offset 4: status/command port 0x64 (one range 0x60..0x64, len 5).
  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;
  std::string_view name() const override { return "i8042"; }
  void save(ByteWriter& out) const override;
  Result<> restore(ByteReader& in) override;

 private:
  VmControl& vm_;
  mutable std::mutex mutex_;
  uint8_t command_byte_ = 0x45;
  uint8_t pending_cmd_ = 0;
  int out_ = -1;  // output buffer byte, -1 when empty
};

/// MC146818 CMOS RTC at ports 0x70/0x71 with host UTC time, BCD or binary per register B.
class Rtc final : public BusDevice, public Snapshottable {
 public:
  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;
  std::string_view name() const override { return "cmos-rtc"; }
  /// The index register and the CMOS RAM; the time registers read the host's clock.
  void save(ByteWriter& out) const override;
  Result<> restore(ByteReader& in) override;

 private:
  uint8_t reg(uint8_t index, const std::tm& t) const;
  mutable std::mutex mutex_;
  uint8_t index_ = 0;
  uint8_t ram_[128] = {};
  uint8_t reg_b_ = 0x02;  // 24-hour, BCD
};

/// QEMU isa-debug-exit: a write of V stops the VM with DebugExit(V); reads return all-ones.
class DebugExit final : public BusDevice, public Snapshottable {
 public:
  explicit DebugExit(VmControl& vm) : vm_(vm) {}
  void read(uint64_t, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;
  std::string_view name() const override { return "debug-exit"; }
  // No state.
  void save(ByteWriter&) const override {}
  Result<> restore(ByteReader&) override { return {}; }

 private:
  VmControl& vm_;
};

/// QEMU's pvpanic ISA device (docs/specs/pvpanic.rst in QEMU): a read returns the events supported
/// (bit 0 PANICKED); a write of PANICKED stops the VM with StopReason::Panic.
class PvPanic final : public BusDevice, public Snapshottable {
 public:
  static constexpr uint8_t kPanicked = 1u << 0;
  explicit PvPanic(VmControl& vm) : vm_(vm) {}
  void read(uint64_t, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;
  std::string_view name() const override { return "pvpanic"; }
  // No state.
  void save(ByteWriter&) const override {}
  Result<> restore(ByteReader&) override { return {}; }

 private:
  VmControl& vm_;
};

/// ACPI hardware-reduced registers (ACPI 6.4 §4.8.3.7–4.8.3.8, FADT RESET_REG): offset 0 sleep
/// control, 1 sleep status, 2 reset.
class AcpiPm final : public BusDevice, public Snapshottable {
 public:
  explicit AcpiPm(VmControl& vm) : vm_(vm) {}
  void read(uint64_t, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;
  std::string_view name() const override { return "acpi-pm"; }
  // No state.
  void save(ByteWriter&) const override {}
  Result<> restore(ByteReader&) override { return {}; }

 private:
  VmControl& vm_;
};

}  // namespace vmm::devices
