// The legacy platform every VM gets: COM1 with its console, i8042, CMOS RTC, the debug-exit port
// and the ACPI power-management registers, wired onto the VM's port bus.
#pragma once

#include <memory>
#include <string_view>

#include "vmm/error.hpp"
#include "vmm/vm.hpp"

namespace vmm {

/// Owns the platform devices and the console's host side (stdin thread, terminal mode).
class Platform {
 public:
  virtual ~Platform() = default;
  /// Stops the console's input thread and restores the terminal.
  virtual void shutdown() = 0;
};

/// Creates the devices, inserts them on `vm`'s buses, connects COM1 to `console_spec`.
Result<std::unique_ptr<Platform>> attach_platform(Vm& vm, std::string_view console_spec);

}  // namespace vmm
