// `vmm run --clone-of TEMPLATE`: a fresh KVM VM whose RAM is the template's memory file mapped
// MAP_PRIVATE, its disks qcow2 overlays on the template's, its state restored, a new identity, run.
#include "clone/clones.hpp"

#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <thread>

#include "clone/live.hpp"
#include "clone/memory_file.hpp"
#include "clone/snapshot.hpp"
#include "clone/template.hpp"
#include "devices/virtio/net.hpp"
#include "disk/qcow2.hpp"
#include "vmm/api/control.hpp"
#include "vmm/base/dir_lock.hpp"
#include "vmm/base/process.hpp"
#include "vmm/base/progress.hpp"
#include "vmm/base/thread.hpp"
#include "vmm/exit_status.hpp"
#include "vmm/identity.hpp"

namespace vmm::clone {

namespace fs = std::filesystem;

namespace {

std::optional<Failure> read_template(const CloneOptions& o, OpenTemplate& t) {
  auto bad = [](int status, std::string message) { return std::optional<Failure>(Failure{status, std::move(message)}); };
  t.sdir = resolve_state_dir(o.state_dir);
  auto tdir = resolve_template(t.sdir, o.template_name);
  if (!tdir) return bad(exit_code::kImage, tdir.error().message());
  t.tdir = *tdir;
  // Shared with other clones' starts; waits while a removal holds it, and then finds it gone.
  // (A template given by a path may be a symbolic link to one, as it could before.)
  auto in_use = lock_dir(t.tdir, LOCK_SH, /*follow=*/true);
  if (!in_use) return bad(exit_code::kImage, in_use.error().message());
  if (!still_at(in_use->fd.get(), t.tdir, /*follow=*/true)) return bad(exit_code::kImage, fmt::format("template {}: removed as the clone started", o.template_name));
  // From here the directory locked, by its own path: through a symbolic link, every later open
  // (manifest, files, the overlays' backing names) and the clone's record followed the link again,
  // and one retargeted since (to another template) mixed the two, or made `template rm` of the
  // first one miss this clone among its dependants.
  {
    std::error_code ec;
    const fs::path real = fs::read_symlink(fmt::format("/proc/self/fd/{}", in_use->fd.get()), ec);
    if (ec || !real.is_absolute() || !still_at(in_use->fd.get(), real)) {
      return bad(exit_code::kImage, fmt::format("template {}: moved as the clone started", o.template_name));
    }
    t.tdir = real;
  }
  t.in_use = std::move(in_use->fd);
  auto manifest = read_manifest(t.tdir);
  if (!manifest) return bad(exit_code::kImage, manifest.error().message());
  t.manifest = std::move(*manifest);
  t.state_path = (t.tdir / t.manifest.state.name).string();
  // Every file the manifest names is a regular file of the template's own (no link out of it),
  // opened once and used as opened (template.hpp: open_template_file).
  auto state_file = open_template_file(t.tdir, t.manifest.state.name);
  if (!state_file) return bad(exit_code::kImage, state_file.error().message());
  auto memory_file = open_template_file(t.tdir, t.manifest.memory_file.name);
  if (!memory_file) return bad(exit_code::kImage, memory_file.error().message());
  // Checked here, not only when mapped: a full clone copies the file first (all of it).
  if (memory_file->size != t.manifest.memory) {
    return bad(exit_code::kImage, fmt::format("{}: memory file is {} bytes, the guest's RAM is {} bytes (truncated or replaced)",
                                              (t.tdir / t.manifest.memory_file.name).string(), memory_file->size, t.manifest.memory));
  }
  t.memory_file = std::move(*memory_file);
  auto state = read_state_file(state_file->fd.get(), t.tdir / t.manifest.state.name);
  if (!state) return bad(exit_code::kImage, state.error().message());
  t.state = std::move(*state);
  auto shape = read_shape(t.state, t.state_path);
  if (!shape) return bad(exit_code::kImage, shape.error().message());
  t.shape = std::move(*shape);
  if (t.shape.memory != t.manifest.memory || t.shape.vcpus != t.manifest.vcpus) {
    return bad(exit_code::kImage, fmt::format("{}: the state file and the manifest disagree about the machine", t.tdir.string()));
  }
  // The template's disks must be the ones it was made with.
  for (const auto& d : t.manifest.disks) {
    auto file = open_template_file(t.tdir, d.file.name);
    if (!file) return bad(exit_code::kImage, fmt::format("template disk: {} (run 'vmm template verify')", file.error().message()));
    if (file->size != d.file.size) {
      return bad(exit_code::kImage, fmt::format("{}: template disk changed size (run 'vmm template verify')", (t.tdir / d.file.name).string()));
    }
    if (d.format == "qcow2") {
      if (auto r = check_standalone_qcow2(file->fd.get(), t.tdir / d.file.name); !r) return bad(exit_code::kImage, r.error().message());
    }
    t.disk_files.push_back(std::move(*file));
  }
  // Linked clones share one copy-on-write mapping of the memory file (a fleet's clones inherit it).
  if (!o.full) {
    auto memory = map_memory_file(t.memory_file.fd.get(), t.tdir / t.manifest.memory_file.name, t.manifest.memory);
    if (!memory) return bad(exit_code::kImage, memory.error().message());
    t.memory.emplace(std::move(*memory));
  }
  return std::nullopt;
}

}  // namespace

std::optional<Failure> open_template(const CloneOptions& o, OpenTemplate& t) {
  if (auto f = read_template(o, t)) return f;
  // /dev/kvm, opened once: a fleet's and a pool's clones use their launcher's (a /dev/kvm fd holds
  // no per-process state; each clone makes its own VM with it), which spares each of them the
  // capability checks and KVM_GET_SUPPORTED_CPUID (~0.4 ms of KVM's time here, its host CPUID
  // reads trapping); a lone clone reads the last answer from the state directory's cache. (Opening it on a thread beside the template's reading gained nothing: the
  // thread ran only once the reading was done, 0.3-0.6 ms after it was made.)
  auto kvm = Kvm::open(o.kvm_device, cpuid_cache(t.sdir));
  if (!kvm) return Failure{exit_code::kKvm, kvm.error().message()};
  t.kvm = std::make_unique<Kvm>(std::move(*kvm));
  // Before any machine is built from the shape: KVM itself refuses some of what a crafted or foreign
  // state file holds (CPUID tables, vCPU counts, RAM beyond the host's addresses) with errors that
  // would not say why.
  if (auto r = check_cpu(*t.kvm, t.shape, t.state_path); !r) return Failure{exit_code::kImage, r.error().message()};
  return std::nullopt;
}

Result<std::string> clone_hostname(const CloneOptions& o, const std::string& name) {
  if (o.hostname.empty()) return std::string();
  std::string h = expand_pattern(o.hostname, name, o.index);
  if (auto r = check_hostname(h); !r) return std::unexpected(r.error());
  return h;
}

std::expected<std::unique_ptr<PreparedClone>, Failure> prepare_clone(OpenTemplate& t, const CloneOptions& o,
                                                                        const std::string& name, bool inherited) {
  auto bad = [](int status, std::string message) { return std::unexpected(Failure{status, std::move(message)}); };
  const fs::path& sdir = t.sdir;
  const auto* tdir = &t.tdir;
  const auto* manifest = &t.manifest;
  const auto* shape = &t.shape;
  if (!valid_name(name)) return bad(exit_code::kUsage, fmt::format("--name '{}': use letters, digits, '.', '_' and '-'", name));
  auto c = std::make_unique<PreparedClone>();
  c->name = name;
  auto step = [&c](const char* what) { c->steps.emplace_back(what, std::chrono::steady_clock::now()); };
  step("template");
  const fs::path cdir = sdir / "clones" / name;
  std::error_code ec;
  fs::create_directories(cdir.parent_path(), ec);
  if (ec) return bad(exit_code::kVmmError, fmt::format("{}: cannot create: {}", cdir.parent_path().string(), ec.message()));
  // Its owner's alone (0700): its overlays hold what its guest wrote, its log what it printed.
  if (::mkdir(cdir.c_str(), 0700) != 0) {
    const int err = errno;
    return bad(err != EEXIST ? exit_code::kVmmError : exit_code::kUsage,
               err != EEXIST ? fmt::format("{}: cannot create: {}", cdir.string(), errno_text(err))
                             : fmt::format("a clone named '{}' already exists ({}; 'vmm clone rm {}' removes it once it has stopped)", name,
                                           cdir.string(), name));
  }
  // A clone that fails to start leaves nothing behind (its name stays free, the template has no
  // dependant); one that ran keeps its directory (its disks hold what it wrote).
  c->dir = cdir;
  if (struct stat st {}; ::stat(cdir.c_str(), &st) == 0) c->dir_id = {st.st_dev, st.st_ino};
  if (!t.manifest.disks.empty()) fs::create_directory(cdir / "disk", ec);  // (a new directory: ~30 µs here)

  // Memory: the template's file mapped copy-on-write (once per template: inherited by a fleet's
  // clones, which adopt the launcher's mapping), or for a full clone its own copy.
  std::optional<GuestMemory> memory;
  // A full clone's copies (the memory file, then each disk) under one progress bar on a terminal.
  std::optional<Progress> progress;
  uint64_t copied_before = 0;
  auto copy = [&](int from_fd, const fs::path& from, const fs::path& to) -> Result<> {
    uint64_t copied = 0;
    auto r = copy_sparse(from_fd, from, to, [&](uint64_t n) { progress->update(copied_before + (copied = n)); });
    copied_before += copied;
    return r;
  };
  // A copy ends early at Ctrl-C (or SIGTERM): the clone then stops as its VM would have.
  auto copy_failed = [](int otherwise) { return pending_stop_signal() != 0 ? exit_code::kSignal : otherwise; };
  if (o.full) {
    uint64_t total = data_bytes(t.memory_file.fd.get());
    for (const auto& f : t.disk_files) total += data_bytes(f.fd.get());
    progress.emplace(fmt::format("copying template {} for the full clone {}", manifest->name, name), total);
    const fs::path copy_path = cdir / kMemoryFile;
    if (auto r = copy(t.memory_file.fd.get(), *tdir / manifest->memory_file.name, copy_path); !r) {
      return bad(copy_failed(exit_code::kVmmError), r.error().message());
    }
    auto m = map_memory_file(copy_path, manifest->memory);
    if (!m) return bad(exit_code::kImage, m.error().message());
    memory.emplace(std::move(*m));
  } else if (inherited) {
    auto m = GuestMemory::from_mapping(Mapping::adopt(t.memory->regions().front().host, t.memory->size()), t.memory->file());
    if (!m) return bad(exit_code::kVmmError, m.error().message());
    memory.emplace(std::move(*m));
  } else {
    memory.emplace(std::move(*t.memory));
    t.memory.reset();
  }

  // Disks: an overlay on each template disk (linked), or a copy of it (full; template disks have no
  // backing file, so a copy is already flat).
  for (size_t i = 0; i < manifest->disks.size(); ++i) {
    const auto& d = manifest->disks[i];
    if (o.full) {
      const fs::path copy_path = cdir / "disk" / fmt::format("disk{}.{}", i, d.format == "qcow2" ? "qcow2" : "img");
      if (auto r = copy(t.disk_files[i].fd.get(), *tdir / d.file.name, copy_path); !r) {
        return bad(copy_failed(exit_code::kImage), r.error().message());
      }
      fs::permissions(copy_path, fs::perms::owner_read | fs::perms::owner_write, ec);
      // Opened as the manifest says: a raw disk whose guest wrote a qcow2 header into it would
      // otherwise become a qcow2 image with a backing file of the guest's choosing. A probed one
      // is probed again (its content cannot look like qcow2), which keeps that guard on the copy.
      c->disks.push_back(DiskSpec{.path = copy_path, .read_only = d.read_only, .id = d.id, .format = d.probed ? "" : d.format});
      continue;
    }
    const fs::path overlay = cdir / "disk" / fmt::format("disk{}.qcow2", i);
    auto r = disk::Qcow2::create(overlay, disk::Qcow2CreateOptions{.size = 0, .cluster_bits = 16,
                                                                   .backing = (*tdir / d.file.name).string(),
                                                                   .backing_format = d.format});
    if (!r) return bad(exit_code::kImage, r.error().message());
    // Its backing file is opened by name when the clone's disks open: it must be the file checked.
    c->disks.push_back(DiskSpec{.path = overlay, .read_only = d.read_only, .id = d.id, .format = "qcow2", .backing_must_be = t.disk_files[i].id});
  }
  if (progress) progress->complete();
  step("files");
  // Interfaces: the template's, each on a TAP of the clone's own (a pattern with {name} or {i}
  // names them in a fleet), each with a new MAC unless given: the source-MAC filter then keeps the
  // clone silent until its guest has taken it, which vmm-agent does last, once hostname and keys are
  // the clone's. That holds in a namespace too, where the clone keeps the template's IP and would
  // otherwise answer at once under the template's hostname (seen in the nested lane); a guest
  // without the agent keeps its template's MAC there with mac=.
  auto net = plan_nets(o.ip_at_request ? "pool" : "clone", o.nets,
                       NetSource{.kind = "template", .interfaces = manifest->nets.size(), .ip = manifest->ip, .gateway = manifest->gateway},
                       name, o.index, o.ip, o.gateway, o.ip_at_request);
  if (!net) return bad(exit_code::kUsage, net.error().message());
  c->nets = std::move(net->nets);
  c->console = o.console;
  if (c->console.kind == devices::ConsoleSpec::Kind::File) c->console.path = expand_pattern(c->console.path, name, o.index);
  if (!o.console_given) c->console = devices::ConsoleSpec{.kind = devices::ConsoleSpec::Kind::File, .path = (cdir / "console.log").string()};
  const std::string ip = net->ip, gateway = net->gateway;
  auto devs = open_devices(c->console, c->disks, c->nets,
                           NetHost{.guest_ip = ip, .gateway = gateway, .state_dir = t.sdir, .filter_source = true});
  if (!devs) return std::unexpected(devs.error());
  step("devices");

  // Identity: a new id, generation and MACs; the guest reads them through fw_cfg.
  c->identity = new_identity(name);
  for (const auto& n : c->nets) c->identity.macs.push_back(n.mac);
  auto hostname = clone_hostname(o, name);
  if (!hostname) return bad(exit_code::kUsage, hostname.error().message());
  c->identity.hostname = *hostname;
  c->identity.ip = ip;
  c->identity.gateway = gateway;

  auto machine = Machine::create(*t.kvm, std::move(*memory),
                                 VmConfig{.vcpus = shape->vcpus, .cpu_template = shape->cpu_template, .cpuid = shape->cpuid, .restoring = true},
                                 PlatformConfig{.console = std::move(devs->console), .disks = std::move(devs->disks),
                                                .nets = std::move(devs->nets), .loop = nullptr,
                                                .identity = identity_pairs(c->identity), .console_tap = {}},
                                 std::move(devs->loop));
  if (!machine) return bad(exit_code::kVmmError, machine.error().message());
  c->machine = std::move(*machine);
  step("machine");
  Machine& m = *c->machine;
  // Restored now but for its timers, which begin_clone() loads when the clone starts (the clock
  // stepped to the present), for a pool's clone later.
  if (auto r = restore(m, t.state, t.state_path, Timers::AtStart); !r) return bad(exit_code::kImage, r.error().message());
  // Its generation ID written now, though notified only when it starts: the guest runs no
  // instruction before, and a pool's member has the copy of that page made ahead (the first
  // write into a template's page copies it, ~15 µs of the request here).
  if (auto r = m.platform().vmgenid().set(c->identity.generation); !r) return bad(exit_code::kVmmError, r.error().message());
  step("restored");
  return c;
}

PreparedClone::~PreparedClone() {
  machine.reset();
  if (keep || dir.empty()) return;
  // The directory it made, and no other: `vmm clone rm --force` may have removed this one as it
  // started, and another clone taken the name since.
  auto l = lock_dir(dir, LOCK_EX | LOCK_NB);
  struct stat st {};
  if (l && !l->busy && ::fstat(l->fd.get(), &st) == 0 && std::pair<uint64_t, uint64_t>{st.st_dev, st.st_ino} == dir_id) {
    (void)bury(dir, l->fd);
  }
}

Result<> begin_clone(OpenTemplate& t, const CloneOptions& o, PreparedClone& c) {
  Machine& m = *c.machine;
  // Who it is (a pool's clone learns its hostname and IP only now), then the new generation ID and
  // its notification and the clock, before the vCPUs run: Linux reseeds its RNG.
  auto hostname = clone_hostname(o, c.name);
  if (!hostname) return std::unexpected(hostname.error());
  // What the request gives replaces what the clone was prepared with.
  if (!hostname->empty()) c.identity.hostname = *hostname;
  if (!o.ip.empty()) c.identity.ip = o.ip;
  if (!o.gateway.empty()) c.identity.gateway = o.gateway;
  if (auto r = m.platform().set_identity(identity_pairs(c.identity)); !r) return r;
  if (auto r = m.platform().vmgenid().set(c.identity.generation); !r) return r;
  // The edge, then the clock. Stepping the clock leaves the interrupt controllers as they are, so
  // the edge reaches the guest through the 8259 as through the IOAPIC. (Until 2026-12-04 it
  // reloaded them as saved, which dropped the edge for an 8259 guest such as the test guest, which
  // then learnt its generation by polling; raising the edge after that reload was tried on
  // 2026-12-03 and two clones in the nested lane's full runs, on its old two-vCPU L1, stayed
  // halted waiting for an interrupt.)
  m.platform().vmgenid().notify();
  if (auto r = step_clock(m, t.state, t.state_path); !r) return r;
  // Whatever the snapshot left owed to the guest's drivers (a Linux clone on a network that nothing
  // re-initialised did not answer ARP until its virtio-net queues were signalled).
  for (const auto& tr : m.platform().transports()) tr->signal_all_queues();
  return {};
}

namespace {
/// The record of `c`, a clone of `t` made by this process, now.
CloneRecord record_of(const OpenTemplate& t, const CloneOptions& o, const PreparedClone& c) {
  return CloneRecord{.name = c.name, .template_dir = o.full ? "" : t.tdir.string(), .full = o.full, .pid = ::getpid(), .created = utc_now()};
}
}  // namespace

Result<std::unique_ptr<api::ControlPlane>> stage_clone(OpenTemplate& t, const CloneOptions& o, PreparedClone& c) {
  auto control = api::ControlPlane::prepare(t.sdir, c.name, o.api_socket, /*bind_now=*/true);
  if (!control) return std::unexpected(control.error());
  // The record's file made now (written again at the request, when the clone is created): until
  // then it says whose template the waiting member depends on (`vmm template rm` counts it).
  if (auto r = stage_clone_record(c.dir, record_of(t, o, c)); !r) return std::unexpected(r.error());
  return std::move(*control);
}

Result<> publish_clone(OpenTemplate& t, const CloneOptions& o, PreparedClone& c, api::ControlPlane& control) {
  if (auto r = control.publish(); !r) return r;
  return record_clone(t, o, c);
}

Result<> record_clone(OpenTemplate& t, const CloneOptions& o, PreparedClone& c) {
  if (auto r = write_clone_record(c.dir, record_of(t, o, c)); !r) return r;
  c.keep = true;
  return {};
}

void serve_clone(OpenTemplate& t, const CloneOptions& o, PreparedClone& c, api::ControlPlane& control) {
  Machine& m = *c.machine;
  auto live = std::make_shared<LiveVm>(LiveVm{
      .state_dir = t.sdir, .kvm_device = o.kvm_device, .name = c.name, .template_name = t.manifest.name,
      .template_dir = o.full ? std::string() : t.tdir.string(), .cpu_template = t.shape.cpu_template,
      .config = config_json(t.manifest.memory, t.manifest.vcpus, t.manifest.cpu_template, c.disks, c.nets, c.console, c.identity,
                             m.platform()),
      .kernel = t.manifest.kernel, .cmdline = t.manifest.cmdline, .machine = &m, .control = &control});
  control.start(m, api::VmInfo{.id = c.identity.id, .name = c.name, .kind = "clone", .template_name = t.manifest.name,
                               .template_dir = t.tdir.string(), .parent = {}, .generation = generation_hex(c.identity),
                               .config = live->config, .api_socket = {}, .requested = o.started, .steps = c.steps, .paused = false},
                live_operations(live));
}

int launch_clone(OpenTemplate& t, const CloneOptions& o, PreparedClone& c, const StartReport& report) {
  auto fail = [&report, &c](Failure f) {
    c.keep = false;  // it never ran: nothing of it is worth keeping
    if (!report.failed) return report_failure(f);
    report.failed(f);
    return f.status;
  };
  Machine& m = *c.machine;
  // Registered before its guest runs: a name another VM holds stops the clone first. (Made on a
  // thread of its own beside the machine's creation, on 2026-12-06, it gained nothing here: the
  // machine's creation got slower by what the registration no longer cost, the two threads of a
  // new process contending for its memory map.)
  auto control = api::ControlPlane::create(t.sdir, c.name, o.api_socket);
  if (!control) return fail({exit_code::kUsage, control.error().message()});
  if (auto r = record_clone(t, o, c); !r) return fail({exit_code::kVmmError, r.error().message()});
  t.in_use.reset();  // its record names the template now (a full clone's: none, it has its own copy)
  c.steps.emplace_back("registered", std::chrono::steady_clock::now());
  if (auto r = begin_clone(t, o, c); !r) return fail({exit_code::kVmmError, r.error().message()});
  c.steps.emplace_back("resumed", std::chrono::steady_clock::now());
  serve_clone(t, o, c, **control);
  const std::string ms = fmt::format("{:.2f}", std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - o.started).count());
  std::thread announcer;
  std::atomic<bool> announced{false}, ended{false};
  // Once its API answers, and once its guest runs: a clone whose VM stopped before its guest ran
  // (a vCPU thread that could not be made, at a limit on tasks) failed to start, and is not
  // announced as running.
  auto announce = [&] {
    (*control)->wait_serving();
    while (!m.vm().first_run().entered && !m.vm().stopping() && !ended) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (!m.vm().first_run().entered) return;
    announced = true;
    report.started(ms);
  };
  if (report.when == Announce::AtStart) {
    announced = true;
    report.started(ms);
  } else if (auto a = start_thread("the clone's announcing thread", announce)) {
    announcer = std::move(*a);
  } else {
    // Not announced before its guest runs, which may still fail (the next thread it needs, at the
    // same limit): it fails here instead.
    return fail({exit_code::kVmmError, a.error().message()});
  }
  const StopInfo stop = m.run();
  ended = true;
  if (announcer.joinable()) announcer.join();
  control->reset();  // the API (whose requests use the machine) ends before the machine does
  if (!announced) {
    return fail({exit_status_of(stop), stop.reason == devices::StopReason::Error ? stop.message
                                                                                  : "it stopped before it ran: " + describe_stop(stop)});
  }
  return stop_status(stop);
}

int start_clone(OpenTemplate& t, const CloneOptions& o, const std::string& name, bool inherited, const StartReport& report) {
  auto c = prepare_clone(t, o, name, inherited);
  if (!c) {
    if (!report.failed) return report_failure(c.error());
    report.failed(c.error());
    return c.error().status;
  }
  return launch_clone(t, o, **c, report);
}

int run_clone(const CloneOptions& o) {
  OpenTemplate t;
  if (auto f = open_template(o, t)) return report_failure(*f);
  const std::string name = o.name.empty() ? fmt::format("{}-{}", std::string_view(t.manifest.name).substr(0, 55), random_hex(4)) : o.name;
  return start_clone(t, o, name, /*inherited=*/false,
                     StartReport{.when = Announce::AtStart, .started = [&](const std::string& ms) {
                       fmt::print(stderr, "vmm: clone {} of {} restored in {} ms (since main)\n", name, t.manifest.name, ms);
                     }, .failed = {}});
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
    } else {
      // As the guest's agent reads it from the identity file: lower case (52:54:00:AB:... given).
      auto mac = devices::virtio::parse_mac(n->mac);
      if (!mac) return fail("--net: {}", mac.error().message());
      n->mac = devices::virtio::format_mac(*mac);
    }
    plan.nets.push_back(*n);
  }
  if (!ip.empty()) {
    auto checked = check_ip(ip);
    if (!checked) return std::unexpected(checked.error());
    plan.ip = *checked;
  }
  if (!gateway.empty()) {
    if (auto r = check_gateway(gateway); !r) return std::unexpected(r.error());
    plan.gateway = gateway;
  }
  // What the guest will have, given or kept from its source (checked when either is given: a
  // source's own pair is what it ran with).
  if (!ip.empty() || !gateway.empty()) {
    if (auto r = check_ip_gateway(plan.ip.empty() ? source.ip : plan.ip, 1, plan.gateway.empty() ? source.gateway : plan.gateway); !r) {
      return std::unexpected(r.error());
    }
  }
  for (const auto& n : plan.nets) {
    if (!n.netns.empty() && plan.ip.empty()) {
      plan.ip = source.ip;
      if (plan.gateway.empty()) plan.gateway = source.gateway;
    }
    // A source that took its address by DHCP: so does each of its clones, for its own MAC (without
    // it the clone kept the source's lease, and announced it from its new MAC).
    if (n.netns.empty() && plan.ip.empty() && source.ip == "dhcp") plan.ip = "dhcp";
    if (n.netns.empty() && plan.ip.empty() && source.ip != "dhcp" && !ip_later) {
      return fail("--net tap={}: a {} on a shared network needs --ip (its own address: the {}'s{} would be a duplicate), or netns= "
                  "to keep the {}'s", n.tap, who, source.kind, source.ip.empty() ? "" : " " + source.ip, source.kind);
    }
  }
  return plan;
}

}  // namespace vmm::clone
