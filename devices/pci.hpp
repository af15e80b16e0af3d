// PCI configuration access: the root complex behind configuration mechanism #1 (ports 0xCF8 address,
// 0xCFC-0xCFF data; PCI Local Bus Specification 3.0 §3.2.2.3.2) with a host bridge at 00:00.0.
// Functions plug in as PciFunction: configuration space is its own small interface, not a hook on
// every bus device. Bus 0 only; other buses and empty slots read all-ones.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>

#include "devices/device.hpp"
#include "vmm/base/error.hpp"

namespace vmm::devices {

/// The configuration space of one PCI function (256 bytes, dword-addressed).
class PciFunction {
 public:
  virtual ~PciFunction() = default;
  /// Reads the dword at configuration offset `reg` (a multiple of 4, below 256).
  virtual uint32_t config_read(uint8_t reg) = 0;
  /// Writes the bytes of `value` selected by `byte_mask` (bit i = byte i) at dword offset `reg`.
  virtual void config_write(uint8_t reg, uint32_t value, uint8_t byte_mask) = 0;
  /// An access to guest-physical `addr` in the PCI MMIO window: true if one of this function's
  /// memory BARs decodes it (and it was served).
  virtual bool mmio_read(uint64_t /*addr*/, std::span<uint8_t> /*data*/) { return false; }
  virtual bool mmio_write(uint64_t /*addr*/, std::span<const uint8_t> /*data*/) { return false; }
};

/// A host bridge (class 06/00/00) with read-only configuration apart from the command register.
class PciHostBridge final : public PciFunction {
 public:
  static constexpr uint16_t kVendor = 0x1b36;  ///< Red Hat, Inc. (QEMU's PCI ids)
  static constexpr uint16_t kDevice = 0x0008;  ///< PCIe host bridge
  uint32_t config_read(uint8_t reg) override;
  void config_write(uint8_t reg, uint32_t value, uint8_t byte_mask) override;
  uint16_t command() const;
  void set_command(uint16_t command);

 private:
  mutable std::mutex mutex_;
  uint16_t command_ = 0;
};

/// Configuration mechanism #1 for bus 0: a bus device for ports 0xCF8..0xCFF (offset 0 address,
/// 4..7 data).
class PciRoot final : public BusDevice, public Snapshottable, public std::enable_shared_from_this<PciRoot> {
 public:
  static constexpr unsigned kSlots = 32;
  /// Saved state: the configuration address register.
  struct State {
    uint32_t address = 0;
  };

  /// A root with the host bridge at slot 0. ecam() needs it to be owned by a shared_ptr.
  PciRoot();
  /// Plugs `function` in at `slot` (function 0); fails if the slot is taken or out of range.
  Result<void> attach(unsigned slot, std::shared_ptr<PciFunction> function);

  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;
  std::string_view name() const override { return "pci-root"; }
  /// Who a reset through port 0xCF9 (the chipset's reset control register, within this device's
  /// ports: Linux's reboot=pci) stops; none: such a write is ignored.
  void set_reset_target(VmControl* vm) { reset_target_ = vm; }

  State save() const;
  void restore(const State& state);
  /// The address register and the host bridge's command register (functions in other slots are
  /// devices of their own, saved under their own ids).
  void save(ByteWriter& out) const override;
  Result<> restore(ByteReader& in) override;

  /// The bus device for PCI Express ECAM (enhanced configuration access, memory-mapped) of bus 0:
  /// offset = device << 15 | function << 12 | register. Registers from 256 up read zero (no
  /// extended capabilities).
  std::shared_ptr<BusDevice> ecam();

  /// The bus device for the PCI MMIO window: forwards each access to the function whose BAR
  /// decodes it (BARs may move when the guest reprograms them); unclaimed reads are all-ones.
  std::shared_ptr<BusDevice> mmio_window(uint64_t base);

 private:
  /// The function the address register selects, or null (disabled, other bus, function, empty slot).
  PciFunction* selected() const;
  /// Reads or writes `data` (1-4 bytes inside one dword) at register `reg` of `f`. Mutex held.
  static void access(PciFunction* f, unsigned reg, std::span<uint8_t> data, bool write);
  friend class Ecam;
  mutable std::mutex mutex_;
  uint32_t address_ = 0;
  VmControl* reset_target_ = nullptr;
  uint8_t reset_control_ = 0;  // 0xCF9: bits 1 (hard reset) and 3 (full reset) as written
  std::array<std::shared_ptr<PciFunction>, kSlots> slots_{};
  std::shared_ptr<PciHostBridge> host_;  // also slots_[0]
};

}  // namespace vmm::devices
