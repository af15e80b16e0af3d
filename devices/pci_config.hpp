// A type-0 PCI configuration header (PCI Local Bus Specification 3.0 §6.1) as data: 256 bytes with
// a per-byte writable mask, memory BARs that size themselves the standard way (the guest writes
// all-ones and reads back ~(size - 1)), and a capability list. Devices build one and forward
// configuration accesses to it.
#pragma once

#include <array>
#include <cstdint>
#include <span>

#include "vmm/base/error.hpp"

namespace vmm::devices {

inline constexpr uint8_t kPciCapMsix = 0x11;
inline constexpr uint8_t kPciCapVendor = 0x09;
inline constexpr uint16_t kPciCommandIo = 1u << 0;
inline constexpr uint16_t kPciCommandMemory = 1u << 1;
inline constexpr uint16_t kPciCommandMaster = 1u << 2;
inline constexpr uint16_t kPciCommandIntxDisable = 1u << 10;

class PciConfig {
 public:
  static constexpr unsigned kBars = 6;
  struct Ids {
    uint16_t vendor = 0, device = 0;
    uint32_t class_code = 0;  ///< base class, sub-class, prog-if (24 bits)
    uint8_t revision = 0;
    uint16_t subsystem_vendor = 0, subsystem = 0;
  };
  explicit PciConfig(const Ids& ids);

  /// Declares BAR `index` (and `index + 1` for a 64-bit one) as memory of `size` bytes (a power of
  /// two, at least 16) at `address`.
  void add_memory_bar(unsigned index, uint64_t address, uint64_t size, bool is64);
  /// Appends a capability: `id`, the next pointer, then `body`; returns its offset.
  uint8_t add_capability(uint8_t id, std::span<const uint8_t> body);
  /// Makes bytes [offset, offset + mask.size()) writable where `mask` has bits set.
  void set_writable(uint8_t offset, std::span<const uint8_t> mask);

  uint32_t read(uint8_t reg) const;
  /// What a write changed.
  struct Effect {
    int bar = -1;          ///< a BAR whose address changed (the low index of a 64-bit pair)
    bool command = false;  ///< the command register changed
  };
  Effect write(uint8_t reg, uint32_t value, uint8_t byte_mask);

  uint16_t command() const { return static_cast<uint16_t>(bytes_[4] | bytes_[5] << 8); }
  uint64_t bar_address(unsigned index) const;
  uint64_t bar_size(unsigned index) const { return index < kBars ? bars_[index].size : 0; }
  uint8_t byte(uint8_t offset) const { return bytes_[offset]; }
  /// Sets a byte as the device presents it (read-only unless made writable).
  void set_byte(uint8_t offset, uint8_t value) { bytes_[offset] = value; }

  /// The saved state: the 256 bytes (masks and BAR sizes are fixed by the device).
  using State = std::array<uint8_t, 256>;
  State save() const { return bytes_; }
  void restore(const State& state) { bytes_ = state; }
  /// Restores state from a file: fails unless every read-only bit equals this device's (a snapshot
  /// of another kind of device, or a corrupt one).
  Result<> restore_checked(const State& state);

 private:
  struct Bar {
    uint64_t size = 0;
    bool is64 = false;
  };
  std::array<uint8_t, 256> bytes_{};
  std::array<uint8_t, 256> writable_{};
  std::array<Bar, kBars> bars_{};
  uint8_t last_cap_ = 0;
  uint8_t next_cap_ = 0x40;
};

}  // namespace vmm::devices
