#include "vmm/cli/cli.hpp"

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <cstdio>

#include "devices/virtio/net.hpp"
#include "vmm/cli/disk_cli.hpp"
#include "vmm/cli/exit_codes.hpp"
#include "vmm/base/size_parse.hpp"
#include "vmm/vm.hpp"

namespace vmm::cli {

namespace {

constexpr uint64_t kMinMemory = 4ull << 20;
constexpr uint64_t kMaxMemory = 1ull << 40;
constexpr size_t kMaxDisks = 16;
constexpr size_t kMaxNets = 8;

void print_error(const std::string& message) { fmt::print(stderr, "vmm: error: {}\n", message); }

/// Validates what CLI11 cannot; returns an error message or nothing.
std::optional<std::string> validate(RunOptions& o, const std::string& memory_text, const std::string& cpu_template,
                                    const std::string& console, const std::vector<std::string>& disks,
                                    const std::vector<std::string>& nets) {
  auto mem = parse_size(memory_text);
  if (!mem) return fmt::format("--memory: {}", mem.error().message());
  if (*mem < kMinMemory) return fmt::format("--memory {}: at least 4 MiB is needed", memory_text);
  if (*mem > kMaxMemory) return fmt::format("--memory {}: at most 1 TiB is supported", memory_text);
  if (*mem % 4096 != 0) return fmt::format("--memory {}: must be a multiple of 4 KiB", memory_text);
  o.memory = *mem;
  if (o.vcpus == 0 || o.vcpus > kMaxVcpus) {
    return fmt::format("--cpus {}: must be between 1 and {}", o.vcpus, kMaxVcpus);
  }
  auto tmpl = parse_cpu_template(cpu_template);
  if (!tmpl) return fmt::format("--cpu-template: {}", tmpl.error().message());
  o.cpu_template = *tmpl;
  auto spec = devices::parse_console_spec(console);
  if (!spec) return spec.error().message();
  o.console = *spec;
  for (const auto& text : disks) {
    auto d = parse_disk_spec(text);
    if (!d) return d.error().message();
    if (d->id.empty()) d->id = fmt::format("disk{}", o.disks.size());
    o.disks.push_back(*d);
  }
  if (o.disks.size() > kMaxDisks) return fmt::format("--disk: at most {} disks are supported", kMaxDisks);
  for (const auto& text : nets) {
    auto n = parse_net_spec(text);
    if (!n) return n.error().message();
    if (!n->mac.empty()) {
      if (auto m = devices::virtio::parse_mac(n->mac); !m) return fmt::format("--net {}: {}", text, m.error().message());
    }
    o.nets.push_back(*n);
  }
  if (o.nets.size() > kMaxNets) return fmt::format("--net: at most {} interfaces are supported", kMaxNets);
  return std::nullopt;
}

/// "vmm run", "vmm disk create": the subcommands given, for "see '... --help'" hints.
std::string command_path(const CLI::App& app) {
  std::string path = "vmm";
  for (const CLI::App* a = &app; !a->get_subcommands().empty();) {
    a = a->get_subcommands().front();
    path += " " + a->get_name();
  }
  return path;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vmm: a small, fast KVM virtual machine monitor with millisecond cloning", "vmm"};
  app.set_version_flag("-V,--version", std::string("vmm ") + VMM_VERSION);
  app.require_subcommand(1);

  RunOptions opts;
  std::string memory_text = "256M";
  std::string cpu_template = "host";
  std::string console = "stdio";
  std::vector<std::string> disks;
  std::vector<std::string> nets;
  std::string kvm_device = Kvm::default_device().string();
  auto* run = app.add_subcommand("run", "Boot a guest kernel and run it until it stops");
  run->add_option("--kernel", opts.kernel, "Kernel: PVH ELF, ELF vmlinux or bzImage")->required();
  run->add_option("--initrd", opts.initrd, "Initial ramdisk");
  run->add_option("--cmdline", opts.cmdline, "Kernel command line");
  run->add_option("--memory", memory_text, "Guest RAM, e.g. 256M, 2G (a bare number means MiB)")
      ->capture_default_str();
  run->add_option("--cpus", opts.vcpus, "Number of vCPUs (1-254)")->capture_default_str();
  run->add_option("--console", console, "Serial console: stdio, file:PATH or none")->capture_default_str();
  run->add_option("--disk", disks, "A virtio-blk disk: path=FILE[,readonly=on][,id=NAME] (repeatable)");
  run->add_option("--net", nets, "A virtio-net interface on a TAP: tap=NAME[,mac=MAC] (repeatable)");
  run->add_option("--cpu-template", cpu_template, "CPU template: host or baseline")->capture_default_str();
  run->add_option("--kvm-device", kvm_device, "KVM device node (default: $VMM_KVM_DEVICE or /dev/kvm)")
      ->capture_default_str();
  run->footer(
      "Exit status: (v << 1) | 1 when the guest writes v to the debug-exit port 0xf4; 0 on guest power-off "
      "or reset; 2 bad usage; 4 KVM unavailable; 6 kernel/initrd/disk image error; 8 guest triple fault; "
      "10 other VMM error; 12 stopped by SIGINT/SIGTERM; 14 guest kernel panic (pvpanic).");

  DiskCommand disk(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    fmt::print("{}", app.help());  // the innermost subcommand given: "Usage: vmm disk create ..."
    return exit_code::kOk;
  } catch (const CLI::CallForAllHelp&) {
    fmt::print("{}", app.help("", CLI::AppFormatMode::All));
    return exit_code::kOk;
  } catch (const CLI::CallForVersion&) {
    fmt::print("vmm {}\n", VMM_VERSION);
    return exit_code::kOk;
  } catch (const CLI::ParseError& e) {
    std::string what = e.what();
    if (auto nl = what.find('\n'); nl != std::string::npos) what.resize(nl);
    print_error(fmt::format("{} (see '{} --help')", what, command_path(app)));
    return exit_code::kUsage;
  }

  if (run->parsed()) {
    if (auto err = validate(opts, memory_text, cpu_template, console, disks, nets)) {
      print_error(*err);
      return exit_code::kUsage;
    }
    opts.kvm_device = kvm_device;
    return run_vm(opts);
  }
  if (disk.parsed()) return disk.run();
  return exit_code::kUsage;
}

}  // namespace vmm::cli
