// The whole state of a quiesced Machine as a StateFile, and back: the machine's shape and CPU
// stamp ("machine"), the CPUID tables ("cpuid"), KVM's per-VM state ("kvm"), each vCPU
// ("vcpu0", ...), and every device the platform registered, under its id. A restore builds the
// machine from the shape first (one builder, vmm/machine.hpp), then loads the rest into it.
#pragma once

#include <string_view>

#include "clone/state_file.hpp"
#include "vmm/base/codec.hpp"
#include "vmm/cpuid.hpp"
#include "vmm/kvm.hpp"
#include "vmm/machine.hpp"

namespace vmm::clone {

/// What must be known to build the machine a state file restores into, and the CPU it ran on.
struct MachineShape {
  uint32_t vcpus = 0;
  uint64_t memory = 0;  ///< bytes of guest RAM (the memory file's size)
  CpuTemplate cpu_template = CpuTemplate::Host;
  std::vector<CpuidEntries> cpuid;  ///< per vCPU, as set at creation
  // CPU-compatibility stamp.
  std::string vendor;     ///< CPUID leaf 0 vendor string
  uint32_t signature = 0;  ///< CPUID leaf 1 EAX: family, model, stepping
  uint32_t tsc_khz = 0;  ///< vCPU 0's TSC rate (each vCPU's restore gives it its own saved rate)
  uint64_t xsave_size = 0;
};

/// Captures a machine after Machine::quiesce(); `cpu_template` is the one it was created with.
Result<StateFile> capture(Machine& machine, CpuTemplate cpu_template);

/// Reads the "machine" and "cpuid" sections (errors name `file` and the field).
Result<MachineShape> read_shape(const StateFile& state, std::string_view file);

/// Checks, before a machine is built from the shape, that this host can run a guest captured on
/// the CPU it describes: same vendor and family/model/stepping, XSAVE area size, vCPU count and
/// RAM within this host's limits, and every CPUID feature each vCPU saw still offered here (the
/// template's CPUID table recomputed on this host must have it), address sizes included.
Result<> check_cpu(const Kvm& kvm, const MachineShape& shape, std::string_view file);

/// KVM's per-VM state from the "kvm" section: the interrupt controllers, each in its own place,
/// the IOAPIC where the guest's tables put it, the PIT with the flags capture() can save.
Result<VmKernelState> read_kernel_state(const StateFile& state, std::string_view file);
/// One vCPU's section, as far as it can be checked without KVM (the rest KVM checks as it loads it).
Result<VcpuState> read_vcpu(ByteReader& r);

/// What restore() does with the PIT and kvmclock.
enum class Timers {
  AsSaved,  ///< loaded as saved
  /// Loaded as saved, the clock brought to the present (a fork's child: its parent's clock ran on
  /// while the fork copied its disks, seconds on a file system without reflinks, which the child's
  /// clock lagged by), the guest told it was stopped.
  AsSavedToNow,
  /// Left alone until the machine starts, when step_clock() loads them. A pool's member waits
  /// restored for its request: a PIT loaded ahead ticked meanwhile, and the tick it left raised in
  /// the 8259 reached the clone before anything else (an interrupt handled that the guest never
  /// had, ~0.15 ms of emulated ring 0 here before a pool clone's first byte).
  AtStart,
};

/// Loads every section into a machine built from read_shape(): devices first (their interrupt
/// routes), then KVM's irqchips (and its PIT and clock: `timers`), then the vCPUs. Sections the
/// machine has no place for, and places with no section, are errors.
Result<> restore(Machine& machine, const StateFile& state, std::string_view file, Timers timers);

/// Steps a restored machine's kvmclock to the present (KVM_CLOCK_REALTIME) and restarts its PIT
/// from the "kvm" section; the interrupt controllers are not touched: for a machine restored ahead
/// of its start (a pool's), or just before it.
Result<> step_clock(Machine& machine, const StateFile& state, std::string_view file);

}  // namespace vmm::clone
