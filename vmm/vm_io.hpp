// The VM's fast device paths through KVM (devices::VmIo): MSI vectors as GSI routes with irqfds
// (KVM API 4.52 KVM_SET_GSI_ROUTING, 4.75 KVM_IRQFD) and ioeventfds (4.59 KVM_IOEVENTFD).
#pragma once

#include <linux/kvm.h>

#include <mutex>
#include <vector>

#include "devices/device.hpp"

namespace vmm {

class KvmVmIo final : public devices::VmIo {
 public:
  /// Uses the VM fd (which must outlive this) with its in-kernel irqchip.
  explicit KvmVmIo(int vm_fd) : vm_fd_(vm_fd) {}

  Result<std::unique_ptr<devices::MsiVector>> allocate_msi() override;
  Result<std::unique_ptr<devices::IntxLine>> allocate_intx(uint32_t gsi) override;
  Result<> add_ioeventfd(uint64_t gpa, int eventfd) override;
  void remove_ioeventfd(uint64_t gpa, int eventfd) override;

  /// Sets the MSI route of `gsi` (called by the vectors); commits the whole routing table.
  Result<> set_msi_route(uint32_t gsi, uint64_t address, uint32_t data);

  /// The routing table: KVM's default irqchip routes (GSI 0-15 to both PICs and the IOAPIC, 16-23
  /// to the IOAPIC), which KVM_SET_GSI_ROUTING would otherwise drop, then the MSI routes.
  std::vector<kvm_irq_routing_entry> routes() const;

  /// The first GSI handed to MSI vectors (after the IOAPIC's 24 pins).
  static constexpr uint32_t kFirstMsiGsi = 24;

 private:
  int vm_fd_;
  mutable std::mutex mutex_;
  std::mutex commit_mutex_;  // serialises KVM_SET_GSI_ROUTING calls
  uint32_t next_gsi_ = kFirstMsiGsi;
  std::vector<kvm_irq_routing_entry> msi_routes_;  // guarded by mutex_
};

}  // namespace vmm
