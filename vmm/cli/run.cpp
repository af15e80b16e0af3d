// `vmm run`: open KVM, build the VM, load the guest, attach the platform, run, map the stop to an
// exit status.
#include <fmt/core.h>

#include <cstdio>
#include <sys/random.h>

#include <cstring>
#include <thread>

#include <pthread.h>

#include "vmm/boot/boot.hpp"
#include "clone/identity.hpp"
#include "vmm/cli/cli.hpp"
#include "vmm/cli/exit_codes.hpp"
#include "vmm/machine.hpp"
#include "vmm/api/control.hpp"
#include "vmm/cli/live.hpp"
#include "clone/template.hpp"

namespace vmm::cli {

namespace fs = std::filesystem;

namespace {



int exit_status(const StopInfo& stop) {
  using devices::StopReason;
  switch (stop.reason) {
    case StopReason::PowerOff:
      return exit_code::kOk;
    case StopReason::Reset:
      fmt::print(stderr, "vmm: guest reset; exiting\n");
      return exit_code::kOk;
    case StopReason::Panic:
      fmt::print(stderr, "vmm: guest panicked (pvpanic event {:#x})\n", stop.status);
      return exit_code::kGuestPanic;
    case StopReason::DebugExit:
      return exit_code::debug_exit(stop.status);
    case StopReason::TripleFault:
      fmt::print(stderr, "vmm: {}\n", stop.message);
      return exit_code::kTripleFault;
    case StopReason::Signal:
      fmt::print(stderr, "vmm: stopped by signal {} ({})\n", stop.status, ::strsignal(static_cast<int>(stop.status)));
      return exit_code::kSignal;
    case StopReason::Error:
      break;
  }
  return report_error(exit_code::kVmmError, stop.message);
}

}  // namespace

std::string describe_stop(const StopInfo& stop) {
  using devices::StopReason;
  switch (stop.reason) {
    case StopReason::PowerOff:
      return "it powered off";
    case StopReason::Reset:
      return "it reset";
    case StopReason::Panic:
      return fmt::format("it panicked (pvpanic event {:#x})", stop.status);
    case StopReason::DebugExit:
      return fmt::format("it exited through the debug port with value {:#x}", stop.status);
    case StopReason::TripleFault:
      return stop.message;
    case StopReason::Signal:
      return fmt::format("vmm got signal {} ({})", stop.status, ::strsignal(static_cast<int>(stop.status)));
    case StopReason::Error:
      break;
  }
  return stop.message;
}

std::expected<Devices, CliFailure> open_devices(const devices::ConsoleSpec& console_spec, const std::vector<DiskSpec>& disk_specs,
                                               const std::vector<NetSpec>& net_specs, const NetHost& host) {
  auto console = devices::Console::open(console_spec);
  if (!console) return std::unexpected(CliFailure{exit_code::kUsage, console.error().message()});
  auto loop = EventLoop::create();
  if (!loop) return std::unexpected(CliFailure{exit_code::kVmmError, loop.error().message()});
  Devices d{.console = std::move(*console), .disks = {}, .nets = {}, .loop = std::move(*loop)};
  for (const auto& spec : disk_specs) {
    auto image = disk::open_image(*d.loop, {.path = spec.path, .read_only = spec.read_only});
    if (!image) return std::unexpected(CliFailure{exit_code::kImage, image.error().message()});
    d.disks.push_back({.image = std::move(*image), .id = spec.id});
  }
  for (const auto& n : net_specs) {
    auto mac = n.mac.empty() ? random_mac() : devices::virtio::parse_mac(n.mac);
    if (!mac) return std::unexpected(CliFailure{exit_code::kUsage, mac.error().message()});
    std::unique_ptr<devices::Netns> netns;
    std::optional<devices::Tap> tap;
    if (!n.netns.empty()) {
      if (host.guest_ip.empty() || host.guest_ip == "dhcp" || host.gateway.empty()) {
        return std::unexpected(CliFailure{exit_code::kUsage, fmt::format(
            "--net tap={},netns={}: needs --ip A.B.C.D/P and --gateway G (the guest's address in its namespace, the same "
            "in every clone, and the gateway the namespace's TAP gets)", n.tap, n.netns)});
      }
      auto ns = devices::Netns::create({.netns = n.netns, .tap = n.tap, .guest_ip = host.guest_ip, .gateway = host.gateway,
                                        .records = host.state_dir / "netns"});
      if (!ns) return std::unexpected(CliFailure{exit_code::kVmmError, ns.error().message()});
      tap.emplace((*ns)->take_tap());
      netns = std::move(*ns);
    } else {
      auto t = devices::Tap::open(n.tap);
      if (!t) return std::unexpected(CliFailure{exit_code::kVmmError, t.error().message()});
      tap.emplace(std::move(*t));
      if (!n.bridge.empty()) {
        if (auto r = devices::attach_tap(n.tap, n.bridge); !r) return std::unexpected(CliFailure{exit_code::kVmmError, r.error().message()});
      }
    }
    d.nets.push_back({.tap = std::move(*tap), .mac = *mac, .netns = std::move(netns), .filter_source = host.filter_source});
  }
  return d;
}

std::expected<std::unique_ptr<Machine>, CliFailure> boot_machine(const Kvm* kvm_or_null, const RunOptions& o,
                                                                 std::function<void(std::span<const uint8_t>)> console_tap,
                                                                 std::optional<Kvm>& kvm_holder, clone::Identity* identity_out) {
  // Images are loaded into guest memory before KVM is touched: a bad kernel or initrd is reported as
  // such on any machine, and nothing about the VM depends on the order.
  auto memory = GuestMemory::anonymous(o.memory);
  if (!memory) return std::unexpected(CliFailure{exit_code::kVmmError, memory.error().message()});
  auto entry = boot::load(*memory, boot::BootConfig{.kernel = o.kernel, .initrd = o.initrd, .cmdline = o.cmdline,
                                                    .vcpus = o.vcpus});
  if (!entry) return std::unexpected(CliFailure{exit_code::kImage, entry.error().message()});
  // The console's output file and the disks are opened before KVM too: a bad path is reported as
  // such on any machine.
  std::vector<NetSpec> nets;
  for (const auto& spec : o.nets) {
    auto n = expand_net(spec, o.name, 1);
    if (!n) return std::unexpected(CliFailure{exit_code::kUsage, fmt::format("--net: {}", n.error().message())});
    nets.push_back(*n);
  }
  auto devs = open_devices(o.console, o.disks, nets,
                           NetHost{.guest_ip = o.ip, .gateway = o.gateway, .state_dir = clone::state_dir(o.state_dir), .filter_source = false});
  if (!devs) return std::unexpected(devs.error());
  if (!kvm_or_null) {
    auto kvm = Kvm::open(o.kvm_device, clone::cpuid_cache(clone::state_dir(o.state_dir)));
    if (!kvm) return std::unexpected(CliFailure{exit_code::kKvm, kvm.error().message()});
    kvm_holder.emplace(std::move(*kvm));
    kvm_or_null = &*kvm_holder;
  }
  // A booted VM has an identity too (a template's guest reads it before it is cloned).
  clone::Identity identity = clone::new_identity(o.name);
  for (const auto& n : devs->nets) identity.macs.push_back(devices::virtio::format_mac(n.mac));
  identity.hostname = expand_pattern(o.hostname, o.name, 1);
  if (auto r = clone::check_hostname(identity.hostname); !r && !o.hostname.empty()) {
    return std::unexpected(CliFailure{exit_code::kUsage, r.error().message()});
  }
  identity.ip = o.ip;
  identity.gateway = o.gateway;
  auto machine = Machine::create(*kvm_or_null, std::move(*memory), VmConfig{.vcpus = o.vcpus, .cpu_template = o.cpu_template, .cpuid = {}},
                                 PlatformConfig{.console = std::move(devs->console), .disks = std::move(devs->disks),
                                                .nets = std::move(devs->nets), .loop = nullptr,
                                                .identity = clone::identity_pairs(identity),
                                                .console_tap = std::move(console_tap)},
                                 std::move(devs->loop));
  if (!machine) return std::unexpected(CliFailure{exit_code::kVmmError, machine.error().message()});
  if (auto r = (*machine)->platform().vmgenid().set(identity.generation); !r) {
    return std::unexpected(CliFailure{exit_code::kVmmError, r.error().message()});
  }
  if (auto r = (*machine)->vm().prepare_boot(*entry); !r) return std::unexpected(CliFailure{exit_code::kVmmError, r.error().message()});
  if (identity_out) *identity_out = std::move(identity);
  return std::move(*machine);
}

Result<devices::virtio::MacAddress> random_mac() {
  devices::virtio::MacAddress mac{};
  if (::getrandom(mac.data() + 1, 5, 0) != 5) return fail("getrandom: {}", errno_text(errno));
  mac[0] = 0x02;
  return mac;
}

Result<> check_net_count(std::string_view who, std::string_view source_kind, size_t interfaces, size_t given) {
  if (given == interfaces) return {};
  return fail("the {} has {} network interface(s): give the {} as many --net tap=NAME (NAME with {{name}} or {{i}}: each its own "
              "TAP), {} given", source_kind, interfaces, who, given);
}

Result<NetPlan> plan_nets(std::string_view who, const std::vector<NetSpec>& patterns, const NetSource& source, const std::string& name,
                          unsigned index, const std::string& ip, const std::string& gateway, bool ip_later) {
  if (auto r = check_net_count(who, source.kind, source.interfaces, patterns.size()); !r) return std::unexpected(r.error());
  NetPlan plan;
  for (const auto& pattern : patterns) {
    auto n = expand_net(pattern, name, index);
    if (!n) return fail("--net: {}", n.error().message());
    if (n->mac.empty()) {
      auto mac = random_mac();
      if (!mac) return std::unexpected(mac.error());
      n->mac = devices::virtio::format_mac(*mac);
    }
    plan.nets.push_back(*n);
  }
  if (!ip.empty()) {
    auto checked = clone::check_ip(ip);
    if (!checked) return std::unexpected(checked.error());
    plan.ip = *checked;
  }
  if (!gateway.empty()) {
    if (auto r = clone::check_gateway(gateway); !r) return std::unexpected(r.error());
    plan.gateway = gateway;
  }
  for (const auto& n : plan.nets) {
    if (!n.netns.empty() && plan.ip.empty()) {
      plan.ip = source.ip;
      if (plan.gateway.empty()) plan.gateway = source.gateway;
    }
    if (n.netns.empty() && plan.ip.empty() && source.ip != "dhcp" && !ip_later) {
      return fail("--net tap={}: a {} on a shared network needs --ip (its own address: the {}'s{} would be a duplicate), or netns= "
                  "to keep the {}'s", n.tap, who, source.kind, source.ip.empty() ? "" : " " + source.ip, source.kind);
    }
  }
  return plan;
}

int report_error(int status, const std::string& message) {
  fmt::print(stderr, "vmm: error: {}\n", message);
  return status;
}

int report_failure(const CliFailure& f) { return report_error(f.status, f.message); }

nlohmann::json config_json(uint64_t memory, uint32_t vcpus, std::string_view cpu_template, const std::vector<DiskSpec>& disks,
                           const std::vector<NetSpec>& nets, const devices::ConsoleSpec& console, const clone::Identity& identity,
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

int run_vm(const RunOptions& options) {
  RunOptions o = options;
  if (o.name.empty()) o.name = "vm-" + clone::random_hex(4);
  if (!clone::valid_name(o.name)) return report_error(exit_code::kUsage, fmt::format("--name '{}': use letters, digits, '.', '_' and '-'", o.name));
  auto control = api::ControlPlane::create(clone::state_dir(o.state_dir), o.name, o.api_socket);
  if (!control) return report_error(exit_code::kUsage, control.error().message());
  std::optional<Kvm> kvm;
  clone::Identity identity;
  auto machine = boot_machine(nullptr, o, {}, kvm, &identity);
  if (!machine) return report_failure(machine.error());
  // Nets as the guest has them (MACs drawn where none was given).
  std::vector<NetSpec> nets;
  for (size_t i = 0; i < o.nets.size(); ++i) {
    nets.push_back(o.nets[i]);
    nets.back().mac = identity.macs.at(i);
  }
  auto live = std::make_shared<LiveVm>(LiveVm{
      .state_dir = clone::state_dir(o.state_dir), .kvm_device = o.kvm_device, .name = o.name, .template_name = {}, .template_dir = {},
      .cpu_template = o.cpu_template, .config = config_json(o.memory, o.vcpus, cpu_template_name(o.cpu_template), o.disks, nets, o.console,
                                                                     identity, (*machine)->platform()),
      .kernel = fs::absolute(o.kernel).string(), .cmdline = o.cmdline, .machine = machine->get(), .control = control->get()});
  (*control)->start(**machine, api::VmInfo{.id = identity.id, .name = o.name, .kind = "booted", .template_name = {},
                                           .template_dir = {}, .parent = {}, .generation = clone::generation_hex(identity),
                                           .config = live->config, .api_socket = {}, .requested = {}, .steps = {}, .paused = false},
                    live_operations(live));
  const StopInfo stop = (*machine)->run();
  control->reset();  // the API (whose requests use the machine) ends before the machine does
  return exit_status(stop);
}

int stop_status(const StopInfo& stop) { return exit_status(stop); }

}  // namespace vmm::cli
