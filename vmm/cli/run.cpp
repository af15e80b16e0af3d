// `vmm run`: open KVM, build the VM, load the guest, attach the platform, run, map the stop to an
// exit status.
#include <fmt/core.h>

#include <cstdio>
#include <sys/random.h>

#include <cstring>
#include <thread>

#include <pthread.h>

#include "vmm/boot/boot.hpp"
#include "vmm/cli/cli.hpp"
#include "vmm/cli/exit_codes.hpp"
#include "vmm/machine.hpp"

namespace vmm::cli {

namespace {

/// A random locally administered unicast MAC (02:xx:xx:xx:xx:xx), as Cloud Hypervisor gives.
Result<devices::virtio::MacAddress> random_mac() {
  devices::virtio::MacAddress mac{};
  if (::getrandom(mac.data() + 1, 5, 0) != 5) return fail("getrandom: {}", errno_text(errno));
  mac[0] = 0x02;
  return mac;
}

int report(int status, const std::string& message) {
  fmt::print(stderr, "vmm: error: {}\n", message);
  return status;
}

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
  return report(exit_code::kVmmError, stop.message);
}

}  // namespace

int run_vm(const RunOptions& o) {
  // Images are loaded into guest memory before KVM is touched: a bad kernel or initrd is reported as
  // such on any machine, and nothing about the VM depends on the order.
  auto memory = GuestMemory::anonymous(o.memory);
  if (!memory) return report(exit_code::kVmmError, memory.error().message());

  auto entry = boot::load(*memory, boot::BootConfig{.kernel = o.kernel, .initrd = o.initrd,
                                                    .cmdline = o.cmdline, .vcpus = o.vcpus});
  if (!entry) return report(exit_code::kImage, entry.error().message());

  // The console's output file and the disks are opened before KVM too: a bad path is reported as
  // such on any machine.
  auto console = devices::Console::open(o.console);
  if (!console) return report(exit_code::kUsage, console.error().message());
  auto loop = EventLoop::create();
  if (!loop) return report(exit_code::kVmmError, loop.error().message());
  std::vector<DiskAttachment> disks;
  for (const auto& d : o.disks) {
    auto image = disk::open_image(**loop, {.path = d.path, .read_only = d.read_only});
    if (!image) return report(exit_code::kImage, image.error().message());
    disks.push_back({.image = std::move(*image), .id = d.id});
  }
  std::vector<NetAttachment> nets;
  for (const auto& n : o.nets) {
    auto tap = devices::Tap::open(n.tap);
    if (!tap) return report(exit_code::kVmmError, tap.error().message());
    auto mac = n.mac.empty() ? random_mac() : devices::virtio::parse_mac(n.mac);
    if (!mac) return report(exit_code::kUsage, mac.error().message());
    nets.push_back({.tap = std::move(*tap), .mac = *mac});
  }

  auto kvm = Kvm::open(o.kvm_device);
  if (!kvm) return report(exit_code::kKvm, kvm.error().message());

  auto machine = Machine::create(*kvm, std::move(*memory), VmConfig{.vcpus = o.vcpus, .cpu_template = o.cpu_template},
                                 PlatformConfig{.console = std::move(*console), .disks = std::move(disks),
                                                .nets = std::move(nets)},
                                 std::move(*loop));
  if (!machine) return report(exit_code::kVmmError, machine.error().message());
  if (auto r = (*machine)->vm().prepare_boot(*entry); !r) return report(exit_code::kVmmError, r.error().message());
  return exit_status((*machine)->run());
}

}  // namespace vmm::cli
