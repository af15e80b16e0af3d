#include "vmm/setup.hpp"

#include <sys/random.h>

#include <fmt/core.h>

#include "vmm/boot/boot.hpp"
#include "vmm/state_dir.hpp"

namespace vmm {

std::expected<Devices, Failure> open_devices(const devices::ConsoleSpec& console_spec, const std::vector<DiskSpec>& disk_specs,
                                               const std::vector<NetSpec>& net_specs, const NetHost& host) {
  auto console = devices::Console::open(console_spec);
  if (!console) return std::unexpected(Failure{exit_code::kUsage, console.error().message()});
  auto loop = EventLoop::create();
  if (!loop) return std::unexpected(Failure{exit_code::kVmmError, loop.error().message()});
  Devices d{.loop = std::move(*loop), .console = std::move(*console), .disks = {}, .nets = {}};
  for (const auto& spec : disk_specs) {
    auto image = disk::open_image(*d.loop, {.path = spec.path, .read_only = spec.read_only, .format = spec.format, .backing_must_be = spec.backing_must_be});
    if (!image) return std::unexpected(Failure{exit_code::kImage, image.error().message()});
    d.disks.push_back({.image = std::move(*image), .id = spec.id});
  }
  for (const auto& n : net_specs) {
    auto mac = n.mac.empty() ? random_mac() : devices::virtio::parse_mac(n.mac);
    if (!mac) return std::unexpected(Failure{exit_code::kUsage, mac.error().message()});
    std::unique_ptr<devices::Netns> netns;
    std::optional<devices::Tap> tap;
    if (!n.netns.empty()) {
      if (host.guest_ip.empty() || host.guest_ip == "dhcp" || host.gateway.empty()) {
        return std::unexpected(Failure{exit_code::kUsage, fmt::format(
            "--net tap={},netns={}: needs --ip A.B.C.D/P and --gateway G (the guest's address in its namespace, the same "
            "in every clone, and the gateway the namespace's TAP gets)", n.tap, n.netns)});
      }
      auto ns = devices::Netns::create({.netns = n.netns, .tap = n.tap, .guest_ip = host.guest_ip, .gateway = host.gateway,
                                        .records = host.state_dir / "netns"});
      if (!ns) return std::unexpected(Failure{exit_code::kVmmError, ns.error().message()});
      tap.emplace((*ns)->take_tap());
      netns = std::move(*ns);
    } else {
      auto t = devices::Tap::open(n.tap);
      if (!t) return std::unexpected(Failure{exit_code::kVmmError, t.error().message()});
      tap.emplace(std::move(*t));
      if (!n.bridge.empty()) {
        if (auto r = devices::attach_tap(n.tap, n.bridge, *mac); !r) return std::unexpected(Failure{exit_code::kVmmError, r.error().message()});
      }
    }
    d.nets.push_back({.tap = std::move(*tap), .mac = *mac, .netns = std::move(netns), .filter_source = host.filter_source});
  }
  return d;
}

std::expected<std::unique_ptr<Machine>, Failure> boot_machine(const Kvm* kvm_or_null, const BootOptions& o,
                                                                 std::function<void(std::span<const uint8_t>)> console_tap,
                                                                 std::optional<Kvm>& kvm_holder, Identity* identity_out) {
  // Images are loaded into guest memory before KVM is touched: a bad kernel or initrd is reported as
  // such on any machine, and nothing about the VM depends on the order.
  auto memory = GuestMemory::anonymous(o.memory);
  if (!memory) return std::unexpected(Failure{exit_code::kVmmError, memory.error().message()});
  auto entry = boot::load(*memory, boot::BootConfig{.kernel = o.kernel, .initrd = o.initrd, .cmdline = o.cmdline,
                                                    .vcpus = o.vcpus});
  if (!entry) return std::unexpected(Failure{exit_code::kImage, entry.error().message()});
  // The console's output file and the disks are opened before KVM too: a bad path is reported as
  // such on any machine.
  std::vector<NetSpec> nets;
  for (const auto& spec : o.nets) {
    auto n = expand_net(spec, o.name, 1);
    if (!n) return std::unexpected(Failure{exit_code::kUsage, fmt::format("--net: {}", n.error().message())});
    nets.push_back(*n);
  }
  auto devs = open_devices(o.console, o.disks, nets,
                           NetHost{.guest_ip = o.ip, .gateway = o.gateway, .state_dir = resolve_state_dir(o.state_dir), .filter_source = false});
  if (!devs) return std::unexpected(devs.error());
  if (!kvm_or_null) {
    auto kvm = Kvm::open(o.kvm_device, cpuid_cache(resolve_state_dir(o.state_dir)));
    if (!kvm) return std::unexpected(Failure{exit_code::kKvm, kvm.error().message()});
    kvm_holder.emplace(std::move(*kvm));
    kvm_or_null = &*kvm_holder;
  }
  // A booted VM has an identity too (a template's guest reads it before it is cloned).
  Identity identity = new_identity(o.name);
  for (const auto& n : devs->nets) identity.macs.push_back(devices::virtio::format_mac(n.mac));
  identity.hostname = expand_pattern(o.hostname, o.name, 1);
  if (auto r = check_hostname(identity.hostname); !r && !o.hostname.empty()) {
    return std::unexpected(Failure{exit_code::kUsage, r.error().message()});
  }
  identity.ip = o.ip;
  identity.gateway = o.gateway;
  auto machine = Machine::create(*kvm_or_null, std::move(*memory), VmConfig{.vcpus = o.vcpus, .cpu_template = o.cpu_template, .cpuid = {}},
                                 PlatformConfig{.console = std::move(devs->console), .disks = std::move(devs->disks),
                                                .nets = std::move(devs->nets), .loop = nullptr,
                                                .identity = identity_pairs(identity),
                                                .console_tap = std::move(console_tap)},
                                 std::move(devs->loop));
  if (!machine) return std::unexpected(Failure{exit_code::kVmmError, machine.error().message()});
  if (auto r = (*machine)->platform().vmgenid().set(identity.generation); !r) {
    return std::unexpected(Failure{exit_code::kVmmError, r.error().message()});
  }
  if (auto r = (*machine)->vm().prepare_boot(*entry); !r) return std::unexpected(Failure{exit_code::kVmmError, r.error().message()});
  if (identity_out) *identity_out = std::move(identity);
  return std::move(*machine);
}

Result<devices::virtio::MacAddress> random_mac() {
  devices::virtio::MacAddress mac{};
  if (::getrandom(mac.data() + 1, 5, 0) != 5) return fail("getrandom: {}", errno_text(errno));
  mac[0] = 0x02;
  return mac;
}

nlohmann::json config_json(uint64_t memory, uint32_t vcpus, std::string_view cpu_template, const std::vector<DiskSpec>& disks,
                           const std::vector<NetSpec>& nets, const devices::ConsoleSpec& console, const Identity& identity,
                           const Platform& platform) {
  nlohmann::json d = nlohmann::json::array(), n = nlohmann::json::array();
  for (const auto& s : disks) d.push_back({{"path", s.path.string()}, {"read_only", s.read_only}, {"id", s.id}});
  for (size_t i = 0; i < nets.size(); ++i) {
    const auto& s = nets[i];
    nlohmann::json e = {{"tap", s.tap}, {"mac", i < identity.macs.size() ? identity.macs[i] : s.mac}};
    if (!s.bridge.empty()) e["bridge"] = s.bridge;
    if (!s.netns.empty()) e["netns"] = s.netns;
    if (i < platform.nets().size() && platform.nets()[i]->netns()) {
      e["outside"] = platform.nets()[i]->netns()->outside();
      e["host_if"] = platform.nets()[i]->netns()->host_if();
    }
    n.push_back(e);
  }
  using Kind = devices::ConsoleSpec::Kind;
  const std::string con = console.kind == Kind::Stdio ? "stdio" : console.kind == Kind::None ? "none" : console.kind == Kind::Fd ? "fd" : "file:" + console.path;
  nlohmann::json c = {{"memory_mib", memory >> 20}, {"vcpus", vcpus}, {"cpu_template", cpu_template}, {"disks", d}, {"nets", n}, {"console", con}};
  for (auto [key, value] : {std::pair{"hostname", &identity.hostname}, {"ip", &identity.ip}, {"gateway", &identity.gateway}}) {
    if (!value->empty()) c[key] = *value;
  }
  return c;
}

}  // namespace vmm
