// The platform every VM gets: COM1 with its console, i8042 (reset), CMOS RTC, the debug-exit port,
// pvpanic, the ACPI power-management registers and the PCI root (0xCF8), wired onto the VM's port bus.
#pragma once

#include <memory>
#include <string_view>

#include "devices/console.hpp"
#include "devices/pci.hpp"
#include "vmm/error.hpp"
#include "vmm/vm.hpp"

namespace vmm {

/// Owns the platform devices and the console's host side (stdin thread, terminal mode).
class Platform {
 public:
  virtual ~Platform() = default;
  /// Stops the console's input thread and restores the terminal.
  virtual void shutdown() = 0;
  /// The PCI root complex, where PCI devices are attached.
  virtual devices::PciRoot& pci_root() = 0;
};

/// Creates the devices, inserts them on `vm`'s buses, connects COM1 to `console` (which the
/// platform then owns).
Result<std::unique_ptr<Platform>> attach_platform(Vm& vm, std::unique_ptr<devices::Console> console);

}  // namespace vmm
