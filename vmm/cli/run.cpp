// `vmm run` of a kernel: a VM booted (vmm/setup.hpp), its API served, run until it stops; the
// stop mapped to an exit status.
#include "vmm/cli/cli.hpp"

#include "clone/live.hpp"
#include "vmm/api/control.hpp"
#include "vmm/exit_status.hpp"
#include "vmm/state_dir.hpp"

namespace vmm::cli {

namespace fs = std::filesystem;

int run_vm(const BootOptions& options) {
  BootOptions o = options;
  if (o.name.empty()) o.name = "vm-" + random_hex(4);
  if (!valid_name(o.name)) return report_error(exit_code::kUsage, fmt::format("--name '{}': use letters, digits, '.', '_' and '-'", o.name));
  // A stopped clone's name stays taken (README): a VM booted under it was taken for the clone by
  // `vmm clone ls` and killed by `vmm clone rm --force`.
  if (std::error_code ec; fs::exists(resolve_state_dir(o.state_dir) / "clones" / o.name, ec)) {
    return report_error(exit_code::kUsage, fmt::format("--name '{}': a clone has that name (vmm clone rm {} frees it)", o.name, o.name));
  }
  auto control = api::ControlPlane::create(resolve_state_dir(o.state_dir), o.name, o.api_socket);
  if (!control) return report_error(exit_code::kUsage, control.error().message());
  std::optional<Kvm> kvm;
  Identity identity;
  auto machine = boot_machine(nullptr, o, {}, kvm, &identity);
  if (!machine) return report_failure(machine.error());
  // Nets as the guest has them (MACs drawn where none was given).
  std::vector<NetSpec> nets;
  for (size_t i = 0; i < o.nets.size(); ++i) {
    nets.push_back(o.nets[i]);
    nets.back().mac = identity.macs.at(i);
  }
  auto live = std::make_shared<clone::LiveVm>(clone::LiveVm{
      .state_dir = resolve_state_dir(o.state_dir), .kvm_device = o.kvm_device, .name = o.name, .template_name = {}, .template_dir = {},
      .cpu_template = o.cpu_template, .config = config_json(o.memory, o.vcpus, cpu_template_name(o.cpu_template), o.disks, nets, o.console,
                                                                     identity, (*machine)->platform()),
      .kernel = fs::absolute(o.kernel).string(), .cmdline = o.cmdline, .machine = machine->get(), .control = control->get()});
  (*control)->start(**machine, api::VmInfo{.id = identity.id, .name = o.name, .kind = "booted", .template_name = {},
                                           .template_dir = {}, .parent = {}, .generation = generation_hex(identity),
                                           .config = live->config, .api_socket = {}, .requested = {}, .steps = {}, .paused = false},
                    clone::live_operations(live));
  const StopInfo stop = (*machine)->run();
  control->reset();  // the API (whose requests use the machine) ends before the machine does
  return stop_status(stop);
}

}  // namespace vmm::cli
