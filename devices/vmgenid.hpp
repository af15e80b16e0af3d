// The VM generation ID (Microsoft's "Virtual Machine Generation ID" spec, as Linux's
// drivers/virt/vmgenid.c reads it): 16 bytes in reserved guest memory at layout::kVmGenIdAddr,
// described by the DSDT device \_SB.VGEN (ADDR), and an ACPI GED interrupt (layout::kGedGsi) whose
// _EVT does Notify(\_SB.VGEN, 0x80). On the notify the guest compares the ID with the one it last
// saw; if it changed, Linux reseeds its CRNG ("crng reseeded due to virtual machine fork").
#pragma once

#include <array>
#include <cstdint>
#include <memory>

#include "devices/device.hpp"
#include "vmm/base/guest_memory.hpp"

namespace vmm::devices {

/// Writes the generation ID into guest memory and raises the GED interrupt. The ID lives only in
/// guest memory (which a snapshot saves anyway), so the object has no state of its own: its
/// save/restore are no-ops.
class VmGenId final : public Snapshottable {
 public:
  using Id = std::array<uint8_t, 16>;

  /// `memory` must outlive this object; `ged_irq` is the line of GSI layout::kGedGsi.
  VmGenId(const GuestMemory& memory, std::shared_ptr<IrqLine> ged_irq);

  /// Writes `id` at layout::kVmGenIdAddr. Errors: that address is not in guest RAM.
  Result<> set(const Id& id);
  /// Raises the GED interrupt: the guest re-reads the ID. Call after set(), before or while the
  /// vCPUs run.
  void notify();
  /// The ID in guest memory (all zero if it cannot be read).
  Id get() const;

  void save(ByteWriter&) const override {}
  Result<> restore(ByteReader&) override { return {}; }

 private:
  const GuestMemory& memory_;
  std::shared_ptr<IrqLine> ged_irq_;
};

}  // namespace vmm::devices
