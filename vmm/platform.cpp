#include "vmm/platform.hpp"

#include <fmt/core.h>

#include "devices/bus.hpp"
#include "devices/console.hpp"
#include "devices/legacy.hpp"
#include "devices/pci.hpp"
#include "devices/serial.hpp"
#include "devices/virtio/blk.hpp"
#include "devices/virtio/pci_transport.hpp"
#include "vmm/base/layout.hpp"

namespace vmm {

namespace {

constexpr std::string_view kIdentityFile = "opt/vmm/identity";

/// PCI MMIO window bytes per device (a power of two that holds BAR 0 and BAR 1 aligned).
constexpr uint64_t kPciSliceBytes = 0x8000;
static_assert(kPciSliceBytes >= devices::virtio::PciTransport::kMmioBytes);

}  // namespace

Result<> Platform::set_identity(const std::vector<std::pair<std::string, std::string>>& identity) {
  auto text = devices::identity_text(identity);
  if (!text) return std::unexpected(text.error());
  return fw_cfg_->set_file_content(kIdentityFile, *text);
}

Result<> Platform::start() { return console_->start_input(serial_); }

void Platform::shutdown() {
  if (console_) console_->shutdown();
}

Result<std::unique_ptr<Platform>> attach_platform(Vm& vm, PlatformConfig config) {
  std::unique_ptr<Platform> p(new Platform());
  p->console_ = std::move(config.console);
  p->pci_ = std::make_shared<devices::PciRoot>();
  p->pci_->set_reset_target(&vm);
  devices::Console* out = p->console_.get();
  p->serial_ = std::make_shared<devices::Serial>(vm.irq_line(layout::kCom1Irq),
                                                 [out, tap = std::move(config.console_tap)](std::span<const uint8_t> b) {
                                                   out->write(b);
                                                   if (tap) tap(b);
                                                 });
  auto& pio = vm.buses().pio;
  // Inserts a device on the port bus and registers its state under `id`, in one step.
  auto add_pio = [&](std::string id, const auto& device, uint16_t port, uint64_t len) -> Result<> {
    if (auto r = pio.insert(device, port, len); !r) return r;
    p->devices_.push_back({.id = std::move(id), .state = device.get()});
    return {};
  };
  auto i8042 = std::make_shared<devices::I8042>(vm);
  Result<> r = add_pio("serial0", p->serial_, layout::kCom1Port, 8);
  if (r) r = add_pio("i8042", i8042, layout::kI8042DataPort, 1);
  if (r) r = pio.insert(std::make_shared<devices::OffsetDevice>(i8042, 4), layout::kI8042CommandPort, 1);  // same device
  if (r) r = add_pio("rtc", std::make_shared<devices::Rtc>(), layout::kRtcPort, 2);
  if (r) r = add_pio("debug-exit", std::make_shared<devices::DebugExit>(vm), layout::kDebugExitPort, 4);
  if (r) r = add_pio("acpi-pm", std::make_shared<devices::AcpiPm>(vm), layout::kAcpiSleepControlPort, 3);
  if (r) r = add_pio("pvpanic", std::make_shared<devices::PvPanic>(vm), layout::kPvPanicPort, 1);
  if (r) r = add_pio("pci", p->pci_, layout::kPciConfigAddressPort, 8);
  // The identity channel and the generation ID, present from the first boot on.
  p->fw_cfg_ = std::make_shared<devices::FwCfg>();
  if (r) {
    auto text = devices::identity_text(config.identity);
    r = text ? p->fw_cfg_->add_file(std::string(kIdentityFile), std::move(*text)) : std::unexpected(text.error());
  }
  if (r) r = add_pio("fw-cfg", p->fw_cfg_, layout::kFwCfgPort, layout::kFwCfgPortCount);
  p->vmgenid_ = std::make_unique<devices::VmGenId>(vm.memory(), vm.irq_line(layout::kGedGsi));
  p->power_button_ = vm.irq_line(layout::kPowerButtonGsi);
  p->devices_.push_back({.id = "vmgenid", .state = p->vmgenid_.get()});
  if (!r) return std::unexpected(r.error());

  // virtio-pci devices: disks then network interfaces, from slot 1 on, each with its BARs in its
  // own slice of the 32-bit window.
  unsigned slot = 1;
  auto attach = [&](std::shared_ptr<devices::virtio::VirtioDevice> dev, std::string id, const std::string& name) -> Result<> {
    const uint64_t bars = layout::kPciMmioStart + (slot - 1) * kPciSliceBytes;
    if (!config.loop) return fail("virtio devices need the event loop");
    if (bars + kPciSliceBytes > layout::kPciMmioEnd) return fail("too many PCI devices for the MMIO window");
    auto t = devices::virtio::PciTransport::create(std::move(dev), name, vm.io(), *config.loop, vm.memory(), bars,
                                                   layout::pci_intx_gsi(slot));
    if (!t) return std::unexpected(t.error());
    if (auto a = p->pci_->attach(slot++, *t); !a) return a;
    p->devices_.push_back({.id = std::move(id), .state = t->get()});
    p->transports_.push_back(*t);
    return {};
  };
  for (auto& d : config.disks) {
    auto blk = std::make_shared<devices::virtio::Block>(std::move(d.image), d.id);
    if (auto a = attach(blk, fmt::format("virtio-blk{}", p->disks_.size()), fmt::format("virtio-blk {}", d.id)); !a) {
      return std::unexpected(a.error());
    }
    p->disks_.push_back(std::move(blk));
  }
  for (auto& n : config.nets) {
    const std::string name = fmt::format("virtio-net {}", n.tap.name());
    if (!config.loop) return fail("virtio devices need the event loop");
    auto net = devices::virtio::Net::create(std::move(n.tap), n.mac, *config.loop,
                                            {.filter_source = n.filter_source, .netns = std::move(n.netns)});
    if (!net) return std::unexpected(net.error());
    if (auto a = attach(*net, fmt::format("virtio-net{}", p->nets_.size()), name); !a) return std::unexpected(a.error());
    p->nets_.push_back(std::move(*net));
  }
  auto& mmio = vm.buses().mmio;
  r = mmio.insert(p->pci_->ecam(), layout::kPciEcamStart, layout::kPciEcamSize);
  if (r) r = mmio.insert(p->pci_->mmio_window(layout::kPciMmioStart), layout::kPciMmioStart,
                         layout::kPciMmioEnd - layout::kPciMmioStart);
  if (!r) return std::unexpected(r.error());
  return p;
}

}  // namespace vmm
