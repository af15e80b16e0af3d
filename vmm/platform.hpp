// The platform every VM gets: COM1 with its console, i8042 (reset), CMOS RTC, the debug-exit port,
// pvpanic, the ACPI power-management registers, the PCI root (0xCF8 and ECAM) with its MMIO window,
// and the virtio-pci devices asked for (disks), wired onto the VM's buses.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "devices/console.hpp"
#include "devices/pci.hpp"
#include "devices/tap.hpp"
#include "devices/virtio/net.hpp"
#include "disk/image.hpp"
#include "vmm/base/event_loop.hpp"
#include "vmm/base/error.hpp"
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

/// A disk to attach: its opened image and the id the guest reads.
struct DiskAttachment {
  std::unique_ptr<disk::Image> image;
  std::string id;
};

/// A network interface to attach: its TAP and MAC.
struct NetAttachment {
  devices::Tap tap;
  devices::virtio::MacAddress mac;
};

struct PlatformConfig {
  std::unique_ptr<devices::Console> console;  ///< COM1's host side (the platform owns it)
  std::vector<DiskAttachment> disks;          ///< virtio-blk devices, PCI slots 1, 2, ...
  std::vector<NetAttachment> nets;            ///< virtio-net devices, the slots after the disks
  EventLoop* loop = nullptr;                  ///< the I/O thread's loop (needed with disks)
};

/// Creates the devices and inserts them on `vm`'s buses. Devices that use the event loop must be
/// destroyed after it stopped (the Vm holds them through its buses).
Result<std::unique_ptr<Platform>> attach_platform(Vm& vm, PlatformConfig config);

}  // namespace vmm
