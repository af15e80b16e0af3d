// The VM's fast device paths through KVM (devices::VmIo): MSI vectors as GSI routes with irqfds
// (KVM API 4.52 KVM_SET_GSI_ROUTING, 4.75 KVM_IRQFD) and ioeventfds (4.59 KVM_IOEVENTFD).
#pragma once

#include <linux/kvm.h>

#include <mutex>
#include <utility>
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

  /// Sets the MSI route of `gsi` (called by the vectors) and commits the whole routing table
  /// (KVM_SET_GSI_ROUTING, which waits for KVM's interrupt readers: tens of microseconds here), unless
  /// nothing changed (a driver that masks or unmasks an MSI-X entry rewrites its message as it was),
  /// the route of a vector never programmed would be the all-zero message (no interrupt can go
  /// there), or routes are held (hold_routes()).
  Result<> set_msi_route(uint32_t gsi, uint64_t address, uint32_t data);
  /// Routes set from now on are committed together by release_routes(): a restore sets every MSI-X
  /// vector's, once, rather than one KVM_SET_GSI_ROUTING each. Holds nest.
  void hold_routes();
  Result<> release_routes();
  /// KVM_SET_GSI_ROUTING calls made (for tests).
  uint64_t route_commits() const;

  /// The routing table: KVM's default irqchip routes (GSI 0-15 to both PICs and the IOAPIC, 16-23
  /// to the IOAPIC), which KVM_SET_GSI_ROUTING would otherwise drop, then the MSI routes.
  std::vector<kvm_irq_routing_entry> routes() const;

  /// The first GSI handed to MSI vectors (after the IOAPIC's 24 pins).
  static constexpr uint32_t kFirstMsiGsi = 24;

 private:
  int vm_fd_;
  mutable std::mutex mutex_;
  Result<> commit_routes();

  std::mutex commit_mutex_;  // serialises KVM_SET_GSI_ROUTING calls
  uint32_t next_gsi_ = kFirstMsiGsi;
  std::vector<kvm_irq_routing_entry> msi_routes_;  // guarded by mutex_
  unsigned held_ = 0;        // guarded by mutex_: hold_routes() not yet released
  bool uncommitted_ = false;  // guarded by mutex_: a route changed while held
  uint64_t commits_ = 0;      // guarded by mutex_
  bool stale_ = false;        // guarded by mutex_: the last commit failed (KVM's table may differ)
};

/// Holds `io`'s routes for a scope (KvmVmIo::hold_routes): commit() releases them and says whether
/// KVM took them; a scope left early releases them as it goes.
class RouteBatch {
 public:
  explicit RouteBatch(KvmVmIo& io) : io_(&io) { io.hold_routes(); }
  RouteBatch(const RouteBatch&) = delete;
  RouteBatch& operator=(const RouteBatch&) = delete;
  ~RouteBatch() {
    if (io_) (void)io_->release_routes();
  }
  Result<> commit() { return std::exchange(io_, nullptr)->release_routes(); }

 private:
  KvmVmIo* io_;
};

}  // namespace vmm
