// One KVM vCPU: its fd, its kvm_run page, and every piece of its architectural state readable and
// settable (the clone subsystem snapshots and restores it).
#pragma once

#include <linux/kvm.h>

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "vmm/base/error.hpp"
#include "vmm/base/fd.hpp"
#include "vmm/kvm.hpp"
#include "vmm/kvm_stats.hpp"
#include "vmm/base/mapping.hpp"

namespace vmm {

/// Everything KVM keeps about one vCPU (KVM API §4: KVM_GET_* / KVM_SET_* per piece).
/// IA32_TSC: the guest's time stamp counter (a clone's is stepped by the time since its snapshot).
inline constexpr uint32_t kMsrTsc = 0x10;

struct VcpuState {
  kvm_regs regs{};
  kvm_sregs sregs{};
  kvm_fpu fpu{};
  /// The XSAVE area: 4 KiB (KVM_GET_XSAVE) or Kvm::xsave_size() bytes (KVM_GET_XSAVE2); bytes,
  /// because the UAPI struct ends in a flexible array.
  std::vector<uint8_t> xsave;
  kvm_xcrs xcrs{};
  kvm_lapic_state lapic{};
  kvm_vcpu_events events{};
  kvm_mp_state mp_state{};
  kvm_debugregs debugregs{};
  std::vector<kvm_msr_entry> msrs;  ///< index + value for each MSR KVM reports as saveable
  uint32_t tsc_khz = 0;             ///< KVM_GET_TSC_KHZ (a restore needs the same frequency)
};

/// A vCPU of one VM. Created by the VM; used by exactly one thread while it runs.
class Vcpu {
 public:
  static Result<std::unique_ptr<Vcpu>> create(const Kvm& kvm, int vm_fd, uint32_t index);

  uint32_t index() const { return index_; }

  /// KVM_SET_CPUID2; the table is kept (cpuid()) for snapshots.
  Result<> set_cpuid(const CpuidEntries& entries);
  const CpuidEntries& cpuid() const { return cpuid_; }
  /// KVM_GET_TSC_KHZ.
  Result<uint32_t> tsc_khz() const;
  Result<kvm_regs> get_regs() const;
  Result<> set_regs(const kvm_regs& regs);
  Result<kvm_sregs> get_sregs() const;
  Result<> set_sregs(const kvm_sregs& sregs);
  Result<> set_fpu(const kvm_fpu& fpu);
  Result<kvm_lapic_state> get_lapic() const;
  /// KVM_GET_MP_STATE (KVM_MP_STATE_HALTED: the guest waits in HLT for an interrupt).
  Result<uint32_t> mp_state() const;
  /// Whether an mp_state is an AP's that was never started (it waits for INIT and SIPI).
  static bool waits_for_sipi(uint32_t mp_state) {
    return mp_state == KVM_MP_STATE_UNINITIALIZED || mp_state == KVM_MP_STATE_INIT_RECEIVED;
  }
  Result<> set_lapic(const kvm_lapic_state& lapic);
  /// KVM_SET_MSRS; fails unless every entry was accepted.
  Result<> set_msrs(std::span<const kvm_msr_entry> msrs);
  /// KVM_GET_MSRS of the given indices.
  Result<std::vector<kvm_msr_entry>> get_msrs(std::span<const uint32_t> indices) const;

  /// Reads the whole state; `msr_indices` usually Kvm::msr_index_list(), `xsave_size`
  /// Kvm::xsave_size(). The vCPU must not be running (KVM_GET_VCPU_EVENTS is unsafe then).
  Result<VcpuState> save(std::span<const uint32_t> msr_indices, size_t xsave_size) const;
  /// Writes the whole state back, in the order the KVM API requires (see vcpu.cpp). The CPUID is
  /// set before, at creation.
  Result<> restore(const VcpuState& state);

  /// The shared kvm_run page (and its size, which covers the PIO data area).
  kvm_run& run_area() const { return *reinterpret_cast<kvm_run*>(run_.data()); }
  size_t run_size() const { return run_.size(); }

  /// A thread's first KVM_RUN, with immediate_exit set: KVM returns at once (EINTR) without
  /// entering the guest, having done what it does on a thread's first run (recent Linux, 6.18
  /// here: start a task of its own for the VM, which fails at a limit on tasks). Call it first on each vCPU
  /// thread: a VM that cannot run fails here, before its guest is counted as entered or the VM
  /// is announced as running.
  Result<> prime();
  /// Does ahead, for the vCPU's present state, what its next KVM_RUN would do first: KVM loads
  /// the vCPU's MMU (the root for the guest's page tables, the vCPU's caches of page-table pages)
  /// and, with two-dimensional paging, maps the guest page of the next instruction. For a VM made
  /// ready before it is wanted (a pool's member); call it after the vCPU's last state change
  /// (KVM_SET_SREGS unloads the MMU). Best effort: nothing the guest sees changes, and a kernel
  /// that cannot (before Linux 6.10) leaves the work to KVM_RUN.
  void preload_mmu() const;
  /// Tells the guest, through its kvmclock, that it was stopped (KVM_KVMCLOCK_CTRL: KVM sets
  /// PVCLOCK_GUEST_STOPPED at the vCPU's next clock update). Linux's soft-lockup and RCU-stall
  /// watchdogs then take the time that passed for a stop, not a hung CPU: a clone's clock steps
  /// over the time since its template was saved, a paused VM's over the pause. Not while the vCPU
  /// runs (it would wait for KVM_RUN to return). Best effort: a guest without kvmclock (EINVAL) has
  /// nothing to be told.
  void tell_stopped() const;
  /// KVM_RUN once. Ok(true): an exit to handle in run_area(). Ok(false): interrupted (EINTR) or
  /// asked to retry (EAGAIN, an AP leaving wait-for-SIPI) — run again after checking for a stop.
  /// An EAGAIN that KVM gives a vCPU out of wait-for-SIPI again and again is an error (see run()).
  Result<bool> run();
  /// Makes the next or current KVM_RUN return promptly (kvm_run.immediate_exit); pair with a signal
  /// to the vCPU's thread to interrupt a KVM_RUN already in progress.
  void request_immediate_exit() const { run_area().immediate_exit = 1; }
  void clear_immediate_exit() const { run_area().immediate_exit = 0; }
  /// KVM's statistics of this vCPU (exit counters and more), read without stopping it.
  Result<std::vector<KvmStat>> stats() const;

 private:
  Vcpu(uint32_t index, Fd fd, Mapping run) : index_(index), fd_(std::move(fd)), run_(std::move(run)) {}
  Result<> ioctl_set(unsigned long request, const void* arg, const char* what) const;
  Result<> ioctl_get(unsigned long request, void* arg, const char* what) const;

  uint32_t index_;
  Fd fd_;
  Fd stats_;  // KVM_GET_STATS_FD; invalid on kernels without it
  std::string stats_error_;  // why stats_ is invalid
  Mapping run_;
  CpuidEntries cpuid_;
  unsigned started_eagains_ = 0;  // KVM_RUN's EAGAINs in a row while the vCPU was out of wait-for-SIPI
};

}  // namespace vmm
