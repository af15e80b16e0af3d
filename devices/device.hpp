// The small interfaces between devices and the VM: a bus device, an interrupt line, and the stop
// requests a device can make (power off, reset, debug exit). A device never touches KVM directly.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "vmm/base/codec.hpp"
#include "vmm/base/error.hpp"

namespace vmm::devices {

/// A device mapped on the PIO or MMIO bus. `offset` is relative to the start of the device's range;
/// `data` is the access (1, 2, 4 or 8 bytes for CPU accesses). Must be thread-safe: several vCPU
/// threads may call it at once.
class BusDevice {
 public:
  virtual ~BusDevice() = default;
  virtual void read(uint64_t offset, std::span<uint8_t> data) = 0;
  virtual void write(uint64_t offset, std::span<const uint8_t> data) = 0;
  virtual std::string_view name() const = 0;
};

/// A piece of the machine whose state goes into a snapshot: `save` writes it into its section,
/// `restore` reads it back into a freshly built device of the same configuration. `restore` gets
/// bytes from a file (untrusted): every value is checked, and a section that does not fit is an
/// error naming the field. The platform registers every device under a stable id (vmm/platform.hpp);
/// a device without state still says so by implementing both as no-ops.
class Snapshottable {
 public:
  virtual ~Snapshottable() = default;
  virtual void save(ByteWriter& out) const = 0;
  virtual Result<> restore(ByteReader& in) = 0;
};

/// An edge-triggered interrupt line into the guest's interrupt controllers (ISA IRQ / GSI).
class IrqLine {
 public:
  virtual ~IrqLine() = default;
  /// Signals one interrupt (a rising edge).
  virtual void trigger() = 0;
};

/// One message-signalled interrupt vector of a device (MSI-X entry), delivered by the VM (KVM GSI
/// routing + irqfd). Thread-safe.
class MsiVector {
 public:
  virtual ~MsiVector() = default;
  /// Points the vector at a message (address, data) as the guest programmed it.
  virtual void set_message(uint64_t address, uint32_t data) = 0;
  /// Sends the message once.
  virtual void trigger() = 0;
};

/// A PCI function's level-triggered INTx line, delivered by the VM (KVM irqfd with a resample fd).
/// Thread-safe.
class IntxLine {
 public:
  virtual ~IntxLine() = default;
  /// Asserts the line; it stays asserted until the guest acknowledges the interrupt (EOI).
  virtual void assert_line() = 0;
  /// Becomes readable when the guest's EOI deasserted the line: the device then asserts it again if
  /// it still has a reason (virtio: a nonzero ISR).
  virtual int resample_fd() const = 0;
};

/// What a device needs from the VM for fast paths: MSI vectors, INTx lines, and guest writes to an MMIO address
/// turned into eventfd signals (ioeventfd) that the I/O thread waits on.
class VmIo {
 public:
  virtual ~VmIo() = default;
  virtual Result<std::unique_ptr<MsiVector>> allocate_msi() = 0;
  /// A level-triggered line into IOAPIC input `gsi` (for PCI INTx).
  virtual Result<std::unique_ptr<IntxLine>> allocate_intx(uint32_t gsi) = 0;
  /// Signals `eventfd` on every guest write to the MMIO address `gpa` (any length), without an
  /// exit to the VMM. `remove` undoes it.
  virtual Result<> add_ioeventfd(uint64_t gpa, int eventfd) = 0;
  virtual void remove_ioeventfd(uint64_t gpa, int eventfd) = 0;
};

/// Why a VM stops.
enum class StopReason {
  PowerOff,     ///< ACPI sleep to S5
  Reset,        ///< i8042 reset line or the ACPI reset register
  DebugExit,    ///< a write to the debug-exit port; `status` holds the value written
  TripleFault,  ///< KVM_EXIT_SHUTDOWN
  Panic,        ///< the guest kernel reported a panic through pvpanic
  Signal,       ///< SIGINT / SIGTERM to the VMM
  Error,        ///< a VMM or KVM failure
};

/// What a device calls to end the VM; the VM stops every vCPU and exits with the matching status.
class VmControl {
 public:
  virtual ~VmControl() = default;
  virtual void request_stop(StopReason reason, uint32_t status = 0) = 0;
};

}  // namespace vmm::devices
