// The pure part of the vCPU loop: what to do with one KVM exit. No ioctls here, so a unit test can
// drive it with a fabricated kvm_run (Firecracker handle_kvm_exit, crosvm handle_io).
#pragma once

#include <linux/kvm.h>

#include <string>

#include "devices/bus.hpp"
#include "devices/device.hpp"

namespace vmm {

/// The port-I/O and MMIO buses of one VM.
struct Buses {
  devices::Bus pio{"pio"};
  devices::Bus mmio{"mmio"};
};

/// The handler's verdict on one exit.
struct ExitOutcome {
  bool stop = false;                                         ///< false: run the vCPU again
  devices::StopReason reason = devices::StopReason::Error;  ///< why, when stop
  std::string message;                                       ///< for Error: one line describing it
};

/// Handles one exit described by `run` (whose mapping is `run_size` bytes: PIO data lives inside
/// it at io.data_offset and is bounds-checked). Port and MMIO accesses go to `buses`.
ExitOutcome handle_exit(kvm_run& run, size_t run_size, const Buses& buses);

/// A one-line description of an emulation failure or other internal error, with the instruction
/// bytes when KVM provides them.
std::string describe_internal_error(const kvm_run& run);

}  // namespace vmm
