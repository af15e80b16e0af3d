// `vmm run`: open KVM, build the VM, load the guest, attach the platform, run, map the stop to an
// exit status.
#include <fmt/core.h>

#include <cstdio>
#include <cstring>

#include "vmm/boot/boot.hpp"
#include "vmm/cli.hpp"
#include "vmm/exit_codes.hpp"
#include "vmm/platform.hpp"
#include "vmm/vm.hpp"

namespace vmm::cli {

namespace {

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

  // The console's output file is opened before KVM too: a bad path is a usage error anywhere.
  auto console = devices::Console::open(o.console);
  if (!console) return report(exit_code::kUsage, console.error().message());

  auto kvm = Kvm::open(o.kvm_device);
  if (!kvm) return report(exit_code::kKvm, kvm.error().message());

  auto vm = Vm::create(*kvm, VmConfig{.vcpus = o.vcpus, .cpu_template = o.cpu_template}, std::move(*memory));
  if (!vm) return report(exit_code::kVmmError, vm.error().message());

  auto platform = attach_platform(**vm, std::move(*console));
  if (!platform) return report(exit_code::kVmmError, platform.error().message());

  if (auto r = (*vm)->prepare_boot(*entry); !r) return report(exit_code::kVmmError, r.error().message());

  const StopInfo stop = (*vm)->run();
  (*platform)->shutdown();
  return exit_status(stop);
}

}  // namespace vmm::cli
