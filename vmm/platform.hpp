// The platform every VM gets: COM1 with its console, i8042 (reset), CMOS RTC, the debug-exit port,
// pvpanic, the ACPI power-management registers, the PCI root (0xCF8 and ECAM) with its MMIO window,
// and the virtio-pci devices asked for (disks), wired onto the VM's buses.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "devices/console.hpp"
#include "devices/pci.hpp"
#include "devices/tap.hpp"
#include "devices/fw_cfg.hpp"
#include "devices/serial.hpp"
#include "devices/vmgenid.hpp"
#include "devices/virtio/blk.hpp"
#include "devices/virtio/net.hpp"
#include "devices/virtio/pci_transport.hpp"
#include "disk/image.hpp"
#include "vmm/base/event_loop.hpp"
#include "vmm/base/error.hpp"
#include "vmm/vm.hpp"

namespace vmm {

/// A disk to attach: its opened image and the id the guest reads.
struct DiskAttachment {
  std::unique_ptr<disk::Image> image;
  std::string id;
};

/// A network interface to attach: its TAP and MAC, the namespace that holds the TAP (if any: the
/// device owns it), and whether frames from any other source MAC are dropped (a clone's).
struct NetAttachment {
  devices::Tap tap;
  devices::virtio::MacAddress mac;
  std::unique_ptr<devices::Netns> netns = {};
  bool filter_source = false;
};

struct PlatformConfig {
  std::unique_ptr<devices::Console> console;  ///< COM1's host side (the platform owns it)
  std::vector<DiskAttachment> disks;          ///< virtio-blk devices, PCI slots 1, 2, ...
  std::vector<NetAttachment> nets;            ///< virtio-net devices, the slots after the disks
  EventLoop* loop = nullptr;                  ///< the I/O thread's loop (needed with disks)
  /// The identity channel's initial content (fw_cfg file opt/vmm/identity): key=value pairs.
  std::vector<std::pair<std::string, std::string>> identity;
  /// Also sees every byte the guest writes to COM1 (e.g. to wait for a line), on a vCPU thread.
  std::function<void(std::span<const uint8_t>)> console_tap;
};

/// One device's place in a snapshot: a stable id ("serial0", "virtio-blk0", ...) and its state.
struct DeviceEntry {
  std::string id;
  devices::Snapshottable* state = nullptr;
};

/// Owns the platform devices and the console's host side (stdin thread, terminal mode), and keeps
/// the one list of every device with state: a device is inserted on a bus and registered under its
/// id in the same call (attach_platform), so a snapshot cannot leave one out.
class Platform {
 public:
  /// Starts feeding host input to the guest's serial port (after any restore: input that arrived
  /// before it would be overwritten by the saved FIFO).
  Result<> start();
  /// Stops the console's input thread and restores the terminal.
  void shutdown();
  /// The PCI root complex, where PCI devices are attached.
  devices::PciRoot& pci_root() { return *pci_; }
  /// Every device with state, in a fixed order (attach order).
  const std::vector<DeviceEntry>& devices() const { return devices_; }
  /// The virtio-pci functions (for quiescing: requests in flight).
  const std::vector<std::shared_ptr<devices::virtio::PciTransport>>& transports() const { return transports_; }
  /// The virtio-blk devices, in --disk order.
  const std::vector<std::shared_ptr<devices::virtio::Block>>& disks() const { return disks_; }
  /// The virtio-net devices, in --net order.
  const std::vector<std::shared_ptr<devices::virtio::Net>>& nets() const { return nets_; }
  /// The identity channel (fw_cfg, file opt/vmm/identity) and the VM generation ID.
  devices::FwCfg& fw_cfg() { return *fw_cfg_; }
  devices::VmGenId& vmgenid() { return *vmgenid_; }
  const devices::Serial& serial() const { return *serial_; }
  devices::Serial& serial() { return *serial_; }
  /// Presses the ACPI power button (the GED's second interrupt, layout::kPowerButtonGsi).
  void press_power_button() { power_button_->trigger(); }
  /// Replaces the identity the guest reads (same fixed size; key=value pairs).
  Result<> set_identity(const std::vector<std::pair<std::string, std::string>>& identity);

 private:
  friend Result<std::unique_ptr<Platform>> attach_platform(Vm& vm, PlatformConfig config);
  Platform() = default;
  std::unique_ptr<devices::Console> console_;
  std::shared_ptr<devices::Serial> serial_;
  std::shared_ptr<devices::PciRoot> pci_;
  std::vector<DeviceEntry> devices_;
  std::vector<std::shared_ptr<devices::virtio::PciTransport>> transports_;
  std::vector<std::shared_ptr<devices::virtio::Block>> disks_;
  std::vector<std::shared_ptr<devices::virtio::Net>> nets_;
  std::shared_ptr<devices::FwCfg> fw_cfg_;
  std::unique_ptr<devices::VmGenId> vmgenid_;
  std::shared_ptr<devices::IrqLine> power_button_;
};

/// Creates the devices and inserts them on `vm`'s buses. Devices that use the event loop must be
/// destroyed after it stopped (the Vm holds them through its buses).
Result<std::unique_ptr<Platform>> attach_platform(Vm& vm, PlatformConfig config);

}  // namespace vmm
