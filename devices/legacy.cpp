#include "devices/legacy.hpp"

#include <algorithm>
#include <cstring>

#include <fmt/core.h>

#include "vmm/base/layout.hpp"

namespace vmm::devices {

// ---- i8042 (IBM PC/AT 8042 interface; Linux drivers/input/serio/i8042.c probe sequence) ----------
void I8042::read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard lock(mutex_);
  uint8_t v = 0;
  if (offset == 0) {
    v = out_ < 0 ? 0 : static_cast<uint8_t>(out_);
    out_ = -1;
  } else {
    v = static_cast<uint8_t>(0x14 | (out_ >= 0 ? 0x01 : 0));  // system flag, keylock off, OBF
  }
  std::fill(data.begin(), data.end(), v);
}

void I8042::write(uint64_t offset, std::span<const uint8_t> data) {
  if (data.empty()) return;
  const uint8_t v = data[0];
  bool reset = false;
  {
    std::lock_guard lock(mutex_);
    if (offset == 4) {
      pending_cmd_ = 0;
      switch (v) {
        case 0x20: out_ = command_byte_; break;       // read command byte
        case 0x60: pending_cmd_ = v; break;          // write command byte (next data byte)
        case 0xaa: out_ = 0x55; break;               // self test passed
        case 0xab: out_ = 0x00; break;               // interface test passed
        case 0xd1: pending_cmd_ = v; break;          // write output port (next data byte)
        default:
          // Pulse output lines 0xF0-0xFF: a clear bit pulses its line; bit 0 is the reset line
          // (0xFE is the usual one; QEMU resets on any of them, as it does for 0xD1 below).
          if (v >= 0xf0 && !(v & 1)) reset = true;
          break;
      }
    } else if (offset == 0 && pending_cmd_ == 0x60) {
      command_byte_ = v;
      pending_cmd_ = 0;
    } else if (offset == 0 && pending_cmd_ == 0xd1) {
      pending_cmd_ = 0;
      if (!(v & 1)) reset = true;  // the output port's bit 0: the reset line, active low
    }
  }
  if (reset) vm_.request_stop(StopReason::Reset);
}

// ---- CMOS RTC (MC146818A datasheet; registers 0x00–0x0D, century at 0x32) -------------------------
namespace {
uint8_t to_bcd(int v) { return static_cast<uint8_t>(((v / 10) << 4) | (v % 10)); }
}  // namespace

uint8_t Rtc::reg(uint8_t index, const std::tm& t) const {
  const bool binary = reg_b_ & 0x04;
  auto enc = [&](int v) { return binary ? static_cast<uint8_t>(v) : to_bcd(v); };
  switch (index) {
    case 0x00: return enc(t.tm_sec);
    case 0x02: return enc(t.tm_min);
    case 0x04: {
      if (reg_b_ & 0x02) return enc(t.tm_hour);
      int h = t.tm_hour % 12;
      if (h == 0) h = 12;
      return static_cast<uint8_t>(enc(h) | (t.tm_hour >= 12 ? 0x80 : 0));
    }
    case 0x06: return enc(t.tm_wday + 1);
    case 0x07: return enc(t.tm_mday);
    case 0x08: return enc(t.tm_mon + 1);
    case 0x09: return enc(t.tm_year % 100);
    case 0x32: return enc((t.tm_year + 1900) / 100);
    case 0x0a: return 0x26;  // UIP clear, 32.768 kHz divider, 1024 Hz rate
    case 0x0b: return reg_b_;
    case 0x0c: return 0;
    case 0x0d: return 0x80;  // VRT: valid RAM and time
    default: return ram_[index & 0x7f];
  }
}

void Rtc::read(uint64_t offset, std::span<uint8_t> data) {
  std::lock_guard lock(mutex_);
  uint8_t v = 0xff;
  if (offset == 1) {
    const std::time_t now = std::time(nullptr);
    std::tm t{};
    ::gmtime_r(&now, &t);
    v = reg(index_, t);
  } else if (offset == 0) {
    v = index_;
  }
  std::fill(data.begin(), data.end(), v);
}

void Rtc::write(uint64_t offset, std::span<const uint8_t> data) {
  if (data.empty()) return;
  std::lock_guard lock(mutex_);
  if (offset == 0) {
    index_ = data[0] & 0x7f;  // bit 7 masks NMI
  } else if (offset == 1) {
    if (index_ == 0x0b) {
      reg_b_ = data[0];
    } else if (index_ > 0x0d && index_ != 0x32) {
      ram_[index_] = data[0];
    }
    // Writes to the time registers are ignored: the clock follows the host.
  }
}

// ---- debug exit ---------------------------------------------------------------------------------
void DebugExit::read(uint64_t, std::span<uint8_t> data) { std::fill(data.begin(), data.end(), 0xff); }

void DebugExit::write(uint64_t offset, std::span<const uint8_t> data) {
  if (offset != 0 || data.empty() || data.size() > 4) return;
  uint32_t v = 0;
  std::memcpy(&v, data.data(), data.size());
  vm_.request_stop(StopReason::DebugExit, v);
}

// ---- pvpanic ------------------------------------------------------------------------------------
void PvPanic::read(uint64_t, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), 0);
  if (!data.empty()) data[0] = kPanicked;
}

void PvPanic::write(uint64_t offset, std::span<const uint8_t> data) {
  if (offset == 0 && !data.empty() && (data[0] & kPanicked)) vm_.request_stop(StopReason::Panic, data[0]);
}

// ---- ACPI PM ------------------------------------------------------------------------------------
void AcpiPm::read(uint64_t, std::span<uint8_t> data) { std::fill(data.begin(), data.end(), 0); }

void AcpiPm::write(uint64_t offset, std::span<const uint8_t> data) {
  if (data.empty()) return;
  const uint8_t v = data[0];
  if (offset == 0) {
    const uint8_t typ = (v >> 2) & 0x7;
    if ((v & 0x20) && typ == layout::kAcpiS5SleepType) vm_.request_stop(StopReason::PowerOff);
  } else if (offset == 2 && v == layout::kAcpiResetValue) {
    vm_.request_stop(StopReason::Reset);
  }
}

// ---- Snapshots ------------------------------------------------------------------------------------

void I8042::save(ByteWriter& out) const {
  std::lock_guard lock(mutex_);
  out.put(command_byte_);
  out.put(pending_cmd_);
  out.put(static_cast<int16_t>(out_));
}

Result<> I8042::restore(ByteReader& in) {
  auto cmd = in.get<uint8_t>("command_byte");
  auto pending = cmd ? in.get<uint8_t>("pending_cmd") : std::unexpected(cmd.error());
  auto out = pending ? in.get<int16_t>("output") : std::unexpected(pending.error());
  if (!out) return std::unexpected(out.error());
  if (*out < -1 || *out > 0xff) return std::unexpected(in.error("output", fmt::format("{} is not a byte or -1", *out)));
  std::lock_guard lock(mutex_);
  command_byte_ = *cmd;
  pending_cmd_ = *pending;
  out_ = *out;
  return {};
}

void Rtc::save(ByteWriter& out) const {
  std::lock_guard lock(mutex_);
  out.put(index_);
  out.put_bytes(ram_);
  out.put(reg_b_);
}

Result<> Rtc::restore(ByteReader& in) {
  auto index = in.get<uint8_t>("index");
  if (!index) return std::unexpected(index.error());
  if (*index >= sizeof ram_) return std::unexpected(in.error("index", fmt::format("{} is past the CMOS RAM", *index)));
  uint8_t ram[sizeof ram_];
  if (auto r = in.get_into(ram, "ram"); !r) return r;
  auto b = in.get<uint8_t>("register_b");
  if (!b) return std::unexpected(b.error());
  std::lock_guard lock(mutex_);
  index_ = *index;
  std::memcpy(ram_, ram, sizeof ram_);
  reg_b_ = *b;
  return {};
}

}  // namespace vmm::devices
