// MSI-X (PCI Local Bus Specification 3.0 §6.8.2): the capability's control bits, the vector table
// and the pending-bit array, and delivery through the VM's MsiVector objects. A vector fires only
// when MSI-X is enabled and neither the function nor the entry is masked; otherwise its pending bit
// is set and it fires when unmasked. Thread-safe (vCPU threads program it, the I/O thread signals).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "devices/device.hpp"
#include "devices/pci_config.hpp"

namespace vmm::devices {

class Msix {
 public:
  static constexpr uint16_t kNoVector = 0xffff;  ///< virtio's VIRTIO_MSI_NO_VECTOR
  struct Entry {
    uint32_t addr_lo = 0, addr_hi = 0, data = 0, control = 1;  // masked at reset
  };
  struct State {
    bool enabled = false, function_masked = false;
    std::vector<Entry> table;
    std::vector<uint64_t> pending;  // one bit per vector
  };

  /// `vectors` come from the VM (one per table entry).
  explicit Msix(std::vector<std::unique_ptr<MsiVector>> vectors);

  unsigned size() const { return static_cast<unsigned>(vectors_.size()); }
  /// Table and PBA sizes in bytes (16 per entry; 8 per 64 vectors).
  uint64_t table_bytes() const { return 16ull * size(); }
  uint64_t pba_bytes() const { return 8ull * ((size() + 63) / 64); }

  /// Adds the capability to `config` (table in BAR `bir` at `table_offset`, PBA after it) and
  /// makes its control bits writable; returns the capability's offset.
  uint8_t add_capability(PciConfig& config, uint8_t bir, uint32_t table_offset, uint32_t pba_offset);
  /// Picks up the enable and function-mask bits, and Bus Master Enable, after a configuration write.
  void update_control(const PciConfig& config);

  void table_read(uint64_t offset, std::span<uint8_t> data);
  void table_write(uint64_t offset, std::span<const uint8_t> data);
  void pba_read(uint64_t offset, std::span<uint8_t> data);

  /// Fires `vector` (or marks it pending). Out-of-range vectors and kNoVector are ignored.
  void signal(uint16_t vector);
  bool enabled() const;

  State save() const;
  void restore(const State& state);

 private:
  void deliver_pending_locked();
  bool masked_locked(unsigned v) const;
  mutable std::mutex mutex_;
  std::vector<std::unique_ptr<MsiVector>> vectors_;
  std::vector<Entry> table_;
  std::vector<uint64_t> pending_;
  bool enabled_ = false, function_masked_ = false;
  bool bus_master_ = false;  // the function's Bus Master Enable (command register bit 2)
  uint8_t cap_ = 0;
};

}  // namespace vmm::devices
