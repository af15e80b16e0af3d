#include "vmm/cli/cli.hpp"

#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <algorithm>
#include <cstdlib>
#include <cstdio>
#include <optional>
#include <string_view>

#include "clone/fleet.hpp"
#include "clone/make_template.hpp"
#include "clone/pool.hpp"
#include "devices/virtio/net.hpp"
#include "vmm/base/process.hpp"
#include "vmm/base/size_parse.hpp"
#include "vmm/cli/disk_cli.hpp"
#include "vmm/cli/template_cli.hpp"
#include "vmm/cli/vm_cli.hpp"
#include "vmm/exit_status.hpp"
#include "vmm/machine.hpp"
#include "vmm/vm.hpp"

namespace vmm::cli {

namespace {

constexpr uint64_t kMinMemory = 4ull << 20;
constexpr uint64_t kMaxMemory = 1ull << 40;

void print_error(const std::string& message) { fmt::print(stderr, "vmm: error: {}\n", message); }

/// Validates what CLI11 cannot; returns an error message or nothing.
std::optional<std::string> validate(BootOptions& o, const std::string& memory_text, const std::string& cpu_template,
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
    // The serial a guest names the disk by (/dev/disk/by-id/virtio-ID): one per disk.
    if (std::ranges::any_of(o.disks, [&](const DiskSpec& other) { return other.id == d->id; })) {
      return fmt::format("--disk {}: id '{}' is another disk's already (each disk needs its own)", text, d->id);
    }
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
  if (!o.hostname.empty()) {
    // Its shape, with any {name} and {i} in it (a clone's is checked again once they are known).
    if (auto r = check_hostname(expand_pattern(o.hostname, "n", 1)); !r) {
      return o.hostname.find('{') == std::string::npos
                 ? r.error().message()
                 : fmt::format("--hostname '{}': not a hostname (RFC 1123) with {{name}} and {{i}} filled in", o.hostname);
    }
  }
  if (!o.ip.empty()) {
    auto ip = check_ip(o.ip);
    if (!ip) return ip.error().message();
    o.ip = *ip;
  }
  if (!o.gateway.empty()) {
    if (auto r = check_gateway(o.gateway); !r) return r.error().message();
  }
  // (As clones, forks and fleets check it: a guest at its gateway's address answers for its router.)
  if (auto r = check_ip_gateway(o.ip, 1, o.gateway); !r) return r.error().message();
  return std::nullopt;
}

/// Whole numbers are written in decimal, without leading zeros: CLI11 reads "010" as octal (8)
/// and "0x10" as 16.
const CLI::Validator kDecimal(
    [](std::string& text) {
      return !text.empty() && text.size() <= 19 && std::ranges::all_of(text, [](char c) { return c >= '0' && c <= '9'; }) &&
                     (text.size() == 1 || text[0] != '0')
                 ? std::string()
                 : "'" + text + "' is not a whole number in decimal";
    },
    "DECIMAL");
/// Seconds: a plain decimal number (no "nan", "inf", hexadecimal or exponent, which CLI11 takes).
const CLI::Validator kSeconds(
    [](std::string& text) {
      const bool plain = !text.empty() && text.size() <= 12 && std::ranges::all_of(text, [](char c) { return (c >= '0' && c <= '9') || c == '.'; }) &&
                         std::ranges::count(text, '.') <= 1 && text != ".";
      return plain ? std::string() : "'" + text + "' is not a number of seconds";
    },
    "SECONDS");
/// As kSeconds, and more than zero.
const CLI::Validator kPositiveSeconds(
    [](std::string& text) {
      if (std::string e = kSeconds(text); !e.empty()) return e;
      return std::strtod(text.c_str(), nullptr) > 0 ? std::string() : "'" + text + "' seconds: give more than 0";
    },
    "SECONDS");

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
  // Only the subcommand named on the command line is built: CLI11 makes every option, validator and
  // help text up front, ~0.5 ms for all of them at each exec here (a clone's start pays it). For
  // anything else (help, a misspelt command) all of them are, so that help and errors list them.
  static constexpr std::string_view kCommands[] = {"run", "template", "clone", "disk", "pool", "ps", "pause", "resume",
                                                   "stop", "snapshot", "fork", "input"};
  const std::string_view named = argc > 1 ? std::string_view(argv[1]) : std::string_view();
  const bool known = std::ranges::find(kCommands, named) != std::end(kCommands);
  auto want = [&](std::string_view command) { return !known || named == command; };

  // `vmm run` and `vmm template create` take the same options.
  struct RunArgs {
    BootOptions opts;
    std::string memory_text = "256M", cpu_template = "host", console = "stdio";
    std::vector<std::string> disks, nets;
    std::string kvm_device = Kvm::default_device().string();
    std::string state_dir;
    CLI::Option* memory = nullptr;
    CLI::Option* cpus = nullptr;
    CLI::Option* tmpl = nullptr;
    CLI::Option* kernel = nullptr;
  };
  auto add_run_options = [](CLI::App* cmd, RunArgs& a) {
    a.kernel = cmd->add_option("--kernel", a.opts.kernel, "Kernel: PVH ELF, ELF vmlinux or bzImage");
    cmd->add_option("--initrd", a.opts.initrd, "Initial ramdisk");
    cmd->add_option("--cmdline", a.opts.cmdline, "Kernel command line");
    a.memory = cmd->add_option("--memory", a.memory_text, "Guest RAM, e.g. 256M, 2G (a bare number means MiB)")->capture_default_str();
    a.cpus = cmd->add_option("--cpus", a.opts.vcpus, "Number of vCPUs (1-254)")->capture_default_str()->check(kDecimal);
    cmd->add_option("--console", a.console, "Serial console: stdio, file:PATH or none")->capture_default_str();
    cmd->add_option("--disk", a.disks, "A virtio-blk disk: path=FILE[,readonly=on][,id=NAME][,format=raw|qcow2] (repeatable; "
                                       "format: default the content's, and a guessed raw image refuses the guest's writes that "
                                       "would make it look like qcow2)");
    cmd->add_option("--net", a.nets, "A virtio-net interface on a TAP: tap=NAME[,mac=MAC][,bridge=BRIDGE][,netns=NAME] (repeatable; "
                                     "NAME may hold {name} and {i}, the VM's name and a fleet's index)");
    cmd->add_option("--hostname", a.opts.hostname, "Hostname the guest's identity channel carries (vmm-agent applies it)");
    cmd->add_option("--ip", a.opts.ip, "IPv4 address A.B.C.D[/PREFIX] (default /24) or dhcp for the first interface, "
                                       "carried by the identity channel (with --count: the first clone's, each next one +1)");
    cmd->add_option("--gateway", a.opts.gateway, "IPv4 default gateway the identity channel carries");
    a.tmpl = cmd->add_option("--cpu-template", a.cpu_template, "CPU template: host or baseline")->capture_default_str();
    cmd->add_option("--kvm-device", a.kvm_device, "KVM device node (default: $VMM_KVM_DEVICE or /dev/kvm)")->capture_default_str();
    cmd->add_option("--state-dir", a.state_dir, "Where templates and clones live (default: $VMM_STATE_DIR, /var/lib/vmm for root, $XDG_STATE_HOME/vmm or ~/.local/state/vmm)");
  };
  RunArgs run_args;
  clone::CloneOptions clone_args;
  clone_args.started = std::chrono::steady_clock::now();
  std::string api_socket;
  unsigned fleet_count = 0;
  bool detach = false;
  std::string pool_socket;
  CLI::App* run = nullptr;
  if (want("run")) {
    run = app.add_subcommand("run", "Boot a guest kernel, or start a clone of a template, and run it until it stops");
    add_run_options(run, run_args);
    run->add_option("--clone-of", clone_args.template_name, "Start a clone of this template (a name in the state directory, or a path)");
    run->add_option("--name", clone_args.name, "The VM's name, unique among the running VMs and clones of the state directory (default: a generated one)");
    run->add_option("--count", fleet_count, "Start a fleet of N clones, one process each, named NAME-1..NAME-N "
                                            "(NAME: --name, default the template's)")->check(kDecimal)->check(CLI::Range(1, 100000));
    run->add_flag("--detach", detach, "With --count: return once every clone runs");
    run->add_option("--start-timeout", clone_args.start_timeout_s, "With --count: seconds a clone has to start after its process "
                                                                   "is made; then it is killed and counted failed (default: 120, none with --full, which copies the template first)")
        ->capture_default_str()->check(kPositiveSeconds)->check(CLI::Range(0.0, 86400.0));
    run->add_option("--pool", pool_socket, "Take the clone from the warm pool serving this socket (see vmm pool)");
    run->add_option("--api-socket", api_socket, "Where the VM serves its control API (default: STATE_DIR/run/NAME/api.sock)");
    run->add_flag("--full", clone_args.full, "A full clone: its own copy of memory and disks, independent of the template");
    run->footer(
        "Exit status: (v << 1) | 1 when the guest writes v to the debug-exit port 0xf4; 0 on guest power-off "
        "or reset; 2 bad usage; 4 KVM unavailable; 6 kernel/initrd/disk image or template error; 8 guest triple fault; "
        "10 other VMM error; 12 stopped by SIGINT/SIGTERM; 14 guest kernel panic (pvpanic).");
  }

  RunArgs create_args;
  clone::TemplateCreateOptions create;
  std::string tstate_dir;
  bool ls_json = false, force = false;
  std::string target;
  unsigned bench_count = 100;
  double bench_timeout = 10;
  std::string bench_input = "get", bench_expect = "counter: value=", bench_kvm = Kvm::default_device().string();
  CLI::App *tcreate = nullptr, *tls = nullptr, *tinspect = nullptr, *trm = nullptr, *tverify = nullptr, *tbench = nullptr;
  if (want("template")) {
    auto* tmpl = app.add_subcommand("template", "Make, list, inspect, verify and remove templates");
    tmpl->require_subcommand(1);
    tcreate = tmpl->add_subcommand("create", "Boot a guest, wait for a console line, and save it as a template");
    tcreate->add_option("DIR", create.dir, "Template name (in the state directory) or path")->required();
    add_run_options(tcreate, create_args);
    tcreate->add_option("--ready-on", create.ready_on, "Console text that means the guest is ready to be saved")->required();
    tcreate->add_option("--timeout", create.timeout_s, "Seconds to wait for it")->capture_default_str()->check(kSeconds)->check(CLI::Range(0.0, 31536000.0));
    tls = tmpl->add_subcommand("ls", "List the templates of the state directory");
    tls->add_flag("--json", ls_json, "JSON output");
    tinspect = tmpl->add_subcommand("inspect", "Print a template's manifest");
    trm = tmpl->add_subcommand("rm", "Remove a template (refused while linked clones depend on it)");
    trm->add_flag("--force", force, "Remove it even if linked clones depend on it");
    tverify = tmpl->add_subcommand("verify", "Check every file of a template against its manifest");
    tbench = tmpl->add_subcommand("bench", "Start clones of a template one after another in this process and time each "
                                           "to its guest's answer on the console (the clone path alone, as a library call)");
    tbench->add_option("--count", bench_count, "Clones to start")->capture_default_str()->check(kDecimal)->check(CLI::Range(1, 100000));
    tbench->add_option("--input", bench_input, "A line each clone's UART holds before it resumes (the counter guest answers 'get'; empty: none)")
        ->capture_default_str();
    tbench->add_option("--expect", bench_expect, "The console text that ends each clone's clock (its answer)")->capture_default_str();
    tbench->add_option("--timeout", bench_timeout, "Seconds a clone has to answer")->capture_default_str()->check(kPositiveSeconds)->check(CLI::Range(0.0, 86400.0));
    tbench->add_option("--kvm-device", bench_kvm, "KVM device node")->capture_default_str();
    tbench->footer("Prints the median, min and max of the time from mapping a clone's memory to its answer, and the "
                   "median of each step (the start_ms steps of GET /vm). Each clone's directory is removed after it ran.");
    for (auto* c : {tinspect, trm, tverify, tbench}) c->add_option("TEMPLATE", target, "Template name or path")->required();
    for (auto* c : {tls, tinspect, trm, tverify, tbench}) c->add_option("--state-dir", tstate_dir, "The state directory");
  }

  // Clones on disk.
  std::string cstate_dir;
  bool cls_json = false, crm_force = false;
  std::vector<std::string> crm_names;
  CLI::App *cls = nullptr, *crm = nullptr, *cprune = nullptr;
  if (want("clone")) {
    auto* cl = app.add_subcommand("clone", "List and remove clones (their directories stay after they stop)");
    cl->require_subcommand(1);
    cls = cl->add_subcommand("ls", "List the clones of the state directory: running, stopped or starting");
    cls->add_flag("--json", cls_json, "JSON output");
    crm = cl->add_subcommand("rm", "Remove clones: their directories, overlays and console logs (a running one is refused)");
    crm->add_option("NAME", crm_names, "Clone names")->required();
    crm->add_flag("--force", crm_force, "Kill a running clone first (a starting one's directory is removed as it is)");
    cprune = cl->add_subcommand("prune", "Remove every stopped clone");
    for (auto* c : {cls, crm, cprune}) c->add_option("--state-dir", cstate_dir, "The state directory");
  }

  std::optional<DiskCommand> disk;
  if (want("disk")) disk.emplace(app);

  // A warm pool of clones.
  clone::CloneOptions pool_opts;
  unsigned pool_size = 4;
  std::string pool_state_dir, pool_kvm = Kvm::default_device().string();
  std::vector<std::string> pool_nets;
  CLI::App* pool = nullptr;
  if (want("pool")) {
    pool = app.add_subcommand("pool", "Keep clones of a template ready to start, and hand them out on request");
    pool->add_option("TEMPLATE", pool_opts.template_name, "Template name or path")->required();
    pool->add_option("--size", pool_size, "Clones kept ready")->capture_default_str()->check(kDecimal)->check(CLI::Range(1, 10000));
    pool->add_option("--name", pool_opts.name, "The pool's name in the state directory (default pool-TEMPLATE)");
    pool->add_option("--api-socket", pool_opts.api_socket, "Where the pool serves POST /clones (default STATE/run/NAME/api.sock)");
    pool->add_option("--state-dir", pool_state_dir, "The state directory");
    pool->add_option("--kvm-device", pool_kvm, "KVM device node")->capture_default_str();
    pool->add_option("--net", pool_nets, "Each clone's interface: tap=NAME[,mac=MAC][,bridge=BRIDGE][,netns=NAME], one per template "
                                         "interface (NAME holds {i}, the member's number, or {name}); on a bridge each request "
                                         "gives the clone's ip");
  }

  // Running VMs, over their API.
  VmCommand vmc;
  CLI::App* ps = nullptr;
  if (want("ps")) {
    ps = app.add_subcommand("ps", "List the running VMs of the state directory");
    ps->add_flag("--json", vmc.json, "JSON output (each VM as GET /vm reports it)");
  }
  std::vector<CLI::App*> vm_verbs;  // null: not named on this command line
  for (auto [verb, what] : {std::pair{"pause", "Pause a running VM (vCPUs parked, disks quiesced)"},
                            {"resume", "Resume a paused VM"},
                            {"stop", "Stop a VM and wait until it has ended (the guest is asked first; a hard stop after --timeout)"},
                            {"snapshot", "Save a running VM as a template, and let it carry on"},
                            {"fork", "Fork a running VM into copies of itself that run on from this instant"},
                            {"input", "Type a line on a running VM's serial console"}}) {
    if (!want(verb)) {
      vm_verbs.push_back(nullptr);
      continue;
    }
    auto* c = app.add_subcommand(verb, what);
    c->add_option("VM", vmc.target, "The VM's name, or the path of its API socket")->required();
    vm_verbs.push_back(c);
  }
  if (vm_verbs[2]) {
    vm_verbs[2]->add_option("--timeout", vmc.timeout_s, "Seconds the guest has to power off before a hard stop (at most 3600, "
                                                        "as PUT /vm/stop takes)")->capture_default_str()
        ->check(kSeconds)->check(CLI::Range(0.0, 3600.0));
    vm_verbs[2]->add_flag("--no-wait", vmc.no_wait, "Return once the VM is told, not once its process has ended");
  }
  if (vm_verbs[3]) {
    vm_verbs[3]->add_option("DIR", vmc.dir, "Where the template goes (a new directory)")->required();
    vm_verbs[3]->add_flag("--paused", vmc.stay_paused, "Leave the VM paused afterwards");
    vm_verbs[3]->add_flag("--at-rest", vmc.at_rest, fmt::format("Pause once every vCPU idles (HLT), within {} ms, so that the template does "
                                                               "not begin in the middle of the guest's work",
                                                               Machine::kAtRestGrace.count()));
  }
  if (vm_verbs[4]) {
    vm_verbs[4]->add_option("--count", vmc.count, "How many copies")->capture_default_str()->check(kDecimal)->check(CLI::Range(1, 256));
    vm_verbs[4]->add_flag("--paused", vmc.stay_paused, "Leave the parent paused afterwards");
    vm_verbs[4]->add_flag("--children-paused", vmc.children_paused, "Start the copies paused ('vmm resume' runs them)");
    vm_verbs[4]->add_flag("--at-rest", vmc.at_rest,
                          fmt::format("Fork once every vCPU idles (HLT), within {} ms, rather than at once", Machine::kAtRestGrace.count()));
    vm_verbs[4]->add_option("--net", vmc.nets, "Each copy's interface: tap=NAME[,bridge=BRIDGE][,netns=NAME], one per interface of the VM "
                                               "(NAME holds {name} or {i}: each copy its own TAP)");
    vm_verbs[4]->add_option("--hostname", vmc.hostname, "Each copy's hostname (may hold {name} and {i})");
    vm_verbs[4]->add_option("--ip", vmc.ip, "The first copy's IPv4 address A.B.C.D[/PREFIX] (each next one +1); needed on a bridge");
    vm_verbs[4]->add_option("--gateway", vmc.gateway, "The copies' IPv4 default gateway");
  }
  if (vm_verbs[5]) vm_verbs[5]->add_option("TEXT", vmc.text, "The line (its words joined by spaces; a newline is added)")->required();
  vm_verbs.push_back(ps);
  for (auto* c : vm_verbs) {
    if (c) c->add_option("--state-dir", vmc.state_dir, "The state directory");
  }

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

  auto finish_run_args = [&](RunArgs& a, bool need_kernel) -> std::optional<std::string> {
    if (need_kernel && a.opts.kernel.empty()) return std::string("--kernel is required");
    if (auto err = validate(a.opts, a.memory_text, a.cpu_template, a.console, a.disks, a.nets)) return err;
    a.opts.kvm_device = a.kvm_device;
    return std::nullopt;
  };
  if (run && run->parsed()) {
    if (!clone_args.template_name.empty()) {
      // A clone restores a machine: what would change it is refused.
      for (auto [opt, what] : {std::pair{run_args.kernel, "--kernel"}, {run_args.memory, "--memory"}, {run_args.cpus, "--cpus"},
                               {run_args.tmpl, "--cpu-template"}}) {
        if (opt->count()) {
          print_error(fmt::format("{} cannot be given with --clone-of: a clone runs the template's machine as it was saved", what));
          return exit_code::kUsage;
        }
      }
      if (!run_args.disks.empty()) {
        print_error("--disk cannot be given with --clone-of: a clone gets an overlay on each of the template's disks");
        return exit_code::kUsage;
      }
      // Nor is what only a boot reads: a clone resumes a guest that booted long ago (they were
      // silently unused).
      for (const char* opt : {"--initrd", "--cmdline"}) {
        if (run->get_option(opt)->count()) {
          print_error(fmt::format("{} cannot be given with --clone-of: a clone resumes the template's guest, which booted already", opt));
          return exit_code::kUsage;
        }
      }
      if (auto err = finish_run_args(run_args, false)) {
        print_error(*err);
        return exit_code::kUsage;
      }
      clone_args.state_dir = run_args.state_dir;
      clone_args.console = run_args.opts.console;
      clone_args.console_given = run->get_option("--console")->count() > 0;
      clone_args.nets = run_args.opts.nets;
      clone_args.hostname = run_args.opts.hostname;
      clone_args.ip = run_args.opts.ip;
      clone_args.gateway = run_args.opts.gateway;
      clone_args.kvm_device = run_args.opts.kvm_device;
      clone_args.api_socket = api_socket;
      if (!pool_socket.empty()) {
        for (const char* opt : {"--count", "--full", "--name", "--console", "--net", "--api-socket", "--detach", "--start-timeout",
                                "--kvm-device"}) {
          if (run->get_option(opt)->count()) {
            print_error(fmt::format("{} cannot be given with --pool: the pool made the clone ready", opt));
            return exit_code::kUsage;
          }
        }
        // It only asks the pool, which runs the clone: SIGINT and SIGTERM stay blocked through the
        // request (30 s at most), so that a clone the pool started is always named (killed in the
        // middle, it ran on with nobody told its name, and a retry started a second one).
        return clone::run_from_pool(pool_socket, clone_args);
      }
      if (fleet_count > 0) {
        // A full clone copies its template first, as long as that takes: no limit unless given.
        if (clone_args.full && run->get_option("--start-timeout")->count() == 0) clone_args.start_timeout_s = 0;
        if (!api_socket.empty()) {
          print_error("--api-socket cannot be given with --count: each clone has its own under the state directory");
          return exit_code::kUsage;
        }
        return clone::run_fleet(clone_args, fleet_count, detach);
      }
      for (const char* opt : {"--detach", "--start-timeout"}) {
        if (run->get_option(opt)->count()) {
          print_error(fmt::format("{} needs --count", opt));
          return exit_code::kUsage;
        }
      }
      return clone::run_clone(clone_args);
    }
    for (const char* o : {"--full", "--count", "--detach", "--start-timeout", "--pool"}) {
      if (run->get_option(o)->count()) {
        print_error(fmt::format("{} needs --clone-of", o));
        return exit_code::kUsage;
      }
    }
    if (auto err = finish_run_args(run_args, true)) {
      print_error(*err);
      return exit_code::kUsage;
    }
    run_args.opts.name = clone_args.name;
    run_args.opts.api_socket = api_socket;
    run_args.opts.state_dir = run_args.state_dir;
    return run_vm(run_args.opts);
  }
  if (tcreate && tcreate->parsed()) {
    if (auto err = finish_run_args(create_args, true)) {
      print_error(*err);
      return exit_code::kUsage;
    }
    if (create.timeout_s <= 0) {
      print_error("--timeout must be positive");
      return exit_code::kUsage;
    }
    create.run = create_args.opts;
    create.state_dir = create_args.state_dir;
    return clone::create_template(create);
  }
  // main() blocks SIGINT and SIGTERM for the commands that run a VM (its sigwait takes them); the
  // others (a checksum of gigabytes, a stop that waits for a VM) end on them like any other tool.
  const bool runs_vm = (tbench && tbench->parsed()) || (pool && pool->parsed());
  if (!runs_vm) unblock_stop_signals();
  if (tls && tls->parsed()) return template_ls(tstate_dir, ls_json);
  if (tinspect && tinspect->parsed()) return template_inspect(tstate_dir, target);
  if (trm && trm->parsed()) return template_rm(tstate_dir, target, force);
  if (tverify && tverify->parsed()) return template_verify(tstate_dir, target);
  if (tbench && tbench->parsed()) {
    clone::CloneOptions b;
    b.template_name = target;
    b.state_dir = tstate_dir;
    b.kvm_device = bench_kvm;
    b.started = clone_args.started;
    return template_bench(b, bench_count, bench_input.empty() ? std::string() : bench_input + "\n", bench_expect, bench_timeout);
  }
  if (cls && cls->parsed()) return clone_ls(cstate_dir, cls_json);
  if (crm && crm->parsed()) return clone_rm(cstate_dir, crm_names, crm_force);
  if (cprune && cprune->parsed()) return clone_prune(cstate_dir);
  if (disk && disk->parsed()) return disk->run();
  if (pool && pool->parsed()) {
    pool_opts.state_dir = pool_state_dir;
    pool_opts.kvm_device = pool_kvm;
    pool_opts.started = clone_args.started;
    for (const auto& text : pool_nets) {
      auto n = parse_net_spec(text);
      if (n && !n->mac.empty()) {
        print_error(fmt::format("--net {}: mac= cannot be given to a pool (its clones would share it)", text));
        return exit_code::kUsage;
      }
      if (!n) {
        print_error(n.error().message());
        return exit_code::kUsage;
      }
      pool_opts.nets.push_back(*n);
    }
    return clone::run_pool(pool_opts, pool_size);
  }
  for (auto* c : vm_verbs) {
    if (c && c->parsed()) {
      vmc.verb = c->get_name();
      return vm_command(vmc);
    }
  }
  return exit_code::kUsage;
}

}  // namespace vmm::cli
