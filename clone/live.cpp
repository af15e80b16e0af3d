// Live fork: PUT /vm/fork {"count": N}. The parent is paused and quiesced (as for a snapshot, but
// nothing is written), its state captured into memory, and the VMM fork()ed N times; the parent
// then runs on. Each child is a new VM over the inherited copy-on-write RAM:
//   - it keeps nothing of its parent's kernel objects: every inherited fd is closed (the VM, vCPU,
//     io_uring, eventfd, TAP and image fds: an image's lock belongs to the open file description,
//     which the parent still holds), and it never had the parent's KVM or io_uring mappings (made
//     MADV_DONTFORK), so the parent's VM is freed when the parent ends even while children live;
//   - the parent's objects in this process (its Machine, threads, server) are abandoned, never
//     destroyed: their destructors would join threads that do not exist here or write files the
//     parent still uses;
//   - it builds a KVM VM of the same shape over the same RAM (one builder, Machine::create),
//     restores the captured state, takes a new identity (id, generation with the VMGenID
//     notification; kvmclock as the parent left it, milliseconds before), registers under its
//     own name with its own API, and runs until its guest stops; then the process exits.
// Disks: at the fork every child sees its parent's disk contents and the two diverge afterwards;
// no file is written by two VMs. A read-only disk is shared. A writable overlay (a clone's) is
// copied, top file only, onto the child's own file with the same backing file, so chains never
// grow however often VMs fork; a writable standalone image is copied whole (a reflink where the
// file system offers one, else its data extents), and the parent stays paused while it is.
#include "clone/live.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <fstream>
#include <set>
#include <thread>

#include "clone/clones.hpp"
#include "clone/make_template.hpp"
#include "clone/memory_file.hpp"
#include "clone/snapshot.hpp"
#include "clone/template.hpp"
#include "disk/qcow2.hpp"
#include "vmm/base/dir_entries.hpp"
#include "vmm/base/thread.hpp"
#include "vmm/exit_status.hpp"
#include "vmm/identity.hpp"

namespace vmm::clone {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

/// Everything a child needs, prepared in the parent while it is paused.
struct ChildPlan {
  std::string name;
  fs::path dir;
  std::vector<DiskSpec> disks;
  int report_fd = -1;  ///< the child's end of its pipe
  /// Its console log, made by the parent before the pause: a new file costs 0.05-0.25 ms on this
  /// host's ext4, which the child's first instruction would otherwise wait for.
  int console_fd = -1;
  DetachedOutput output;  ///< its vmm.log (and /dev/null), made by the parent too: for its report
  bool paused = false;  ///< starts paused (PUT /vm/fork "children_paused"), to run on `vmm resume`
  std::chrono::steady_clock::time_point requested;  ///< when the parent began the fork (after its quiesce)
  std::vector<NetSpec> nets;  ///< its own TAPs (patterns expanded) and MACs, one per parent interface
  std::string hostname, ip, gateway;  ///< for its identity channel (empty: not given)
};

}  // namespace

DetachedOutput open_detached_output(const fs::path& log) {
  DetachedOutput d;
  d.null = Fd(::open("/dev/null", O_RDWR | O_CLOEXEC));
  d.log = Fd(::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  return d;
}

void detach_output(const DetachedOutput& d) {
  if (d.null) ::dup2(d.null.get(), STDIN_FILENO);
  const int out = d.log ? d.log.get() : d.null.get();
  if (out >= 0) {
    ::dup2(out, STDOUT_FILENO);
    ::dup2(out, STDERR_FILENO);
  }
}

void detach_output(const fs::path& log) { detach_output(open_detached_output(log)); }

void raise_open_file_limit() {
  if (rlimit nofile{}; ::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    (void)::setrlimit(RLIMIT_NOFILE, &nofile);
  }
}

void drop_inherited(std::vector<int> keep) {
  std::sort(keep.begin(), keep.end());
  // Without close_range (a kernel before 5.9, a seccomp profile that does not know it), each
  // descriptor the process has, from /proc/self/fd: a child that kept its parent's lock, sockets
  // and KVM fds would keep its parent's name taken and its VM's memory pinned after it ended.
  auto close_all = [](unsigned lo, unsigned hi) {
    if (::close_range(lo, hi, 0) == 0) return;
    std::vector<int> open;
    for (const auto& e : dir_entries("/proc/self/fd")) {
      int fd = -1;
      const std::string n = e.path().filename().string();
      if (std::from_chars(n.data(), n.data() + n.size(), fd).ec == std::errc() && fd >= 0 &&
          static_cast<unsigned>(fd) >= lo && static_cast<unsigned>(fd) <= hi) {
        open.push_back(fd);
      }
    }
    for (const int fd : open) ::close(fd);  // the directory's own fd is closed by then, or fails harmlessly
  };
  unsigned from = 3;
  for (const int k : keep) {
    if (k < static_cast<int>(from)) continue;
    if (static_cast<unsigned>(k) > from) close_all(from, static_cast<unsigned>(k) - 1);
    from = static_cast<unsigned>(k) + 1;
  }
  close_all(from, ~0u);
  // The KVM and io_uring mappings (vCPU run pages, rings) were never inherited: they are made
  // MADV_DONTFORK (Vcpu::create, EventLoop::create).
}

namespace {

void report(int fd, const std::string& text) {
  const std::string line = text + "\n";
  (void)!::write(fd, line.data(), line.size());
}

/// A fork's child is reaped by its parent's event loop once it ends (its pidfd readable): a VM
/// forked over and over keeps no zombies (each holds a pid and counts against pids.max; a child
/// that could not start left one per request). SIGCHLD is left alone: run_command() waits for its
/// own children.
void reap_when_ended(EventLoop& loop, pid_t pid) {
  const int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));  // close-on-exec
  if (fd < 0) return;  // (Linux before 5.3) a zombie until the VM ends
  auto id = std::make_shared<uint64_t>(0);
  auto w = loop.watch(fd, EventLoop::WatchKind::Internal, [&loop, pid, fd, id] {
    if (::waitpid(pid, nullptr, WNOHANG) != pid) return;
    loop.unwatch(*id);  // (safe in its own callback: the watch is freed when its poll's end completes)
    ::close(fd);
  });
  if (!w) {
    ::close(fd);
    return;
  }
  *id = *w;
}

/// The child's life after fork(): never returns.
[[noreturn]] void run_child(const LiveVm& parent, const ChildPlan& plan, const StateFile& state) {
  // Its start, step by step from the fork request (GET /vm start_ms, as a clone's; the bench's rows).
  std::vector<std::pair<std::string, std::chrono::steady_clock::time_point>> steps;
  auto step = [&steps](const char* what) { steps.emplace_back(what, std::chrono::steady_clock::now()); };
  step("forked");
  ::setsid();  // its own session: a Ctrl-C meant for the parent's terminal does not reach it
  const uint8_t* ram = parent.machine->vm().memory().regions().front().host;
  const uint64_t ram_size = parent.machine->vm().memory().size();
  // The parent's /dev/kvm stays open: a /dev/kvm fd holds no per-process state, and its Kvm (caps,
  // supported CPUID, MSR list: copied with the rest of the parent's memory) spares the child a
  // KVM_GET_SUPPORTED_CPUID (~0.3 ms on a nested host, every host CPUID trapping).
  const Kvm& kvm = parent.machine->kvm();
  drop_inherited({plan.report_fd, plan.console_fd, plan.output.null.get(), plan.output.log.get(), kvm.fd()});
  step("inherited_dropped");
  // Its registration, once made (below): a child that fails after it gives its name back.
  std::unique_ptr<api::ControlPlane> control;
  // What it opened on the host (its devices, then its machine): released before it exits, or its
  // network namespace, veth pair and TAPs stayed behind (_exit runs no destructor).
  std::function<void()> release;
  auto fail_child = [&](const std::string& why) {
    // Nothing of it left (its STATE/run entry, its directory) before its parent hears why: the
    // parent removes the directory too once it has heard (a child that could not say so could not
    // remove it), and the two removing it at once could each leave what the other had listed
    // (seen in the nested lane: a failed child's directory left behind).
    control.reset();
    if (release) release();
    std::error_code ec;
    fs::remove_all(plan.dir, ec);
    report(plan.report_fd, "error " + why);
    ::_exit(exit_code::kVmmError);
  };
  auto shape = read_shape(state, "fork");
  if (!shape) fail_child(shape.error().message());
  const devices::ConsoleSpec console{.kind = devices::ConsoleSpec::Kind::File, .path = (plan.dir / "console.log").string()};
  // Its interfaces on TAPs of its own, with the source-MAC filter of every clone: nothing leaves
  // under the parent's MAC (the guest's agent takes the new one from the identity channel). Its
  // console writes to the log its parent made (it stays open as long as this process).
  auto devs = open_devices(devices::ConsoleSpec{.kind = devices::ConsoleSpec::Kind::Fd, .path = {}, .fd = plan.console_fd},
                           plan.disks, plan.nets,
                           NetHost{.guest_ip = plan.ip, .gateway = plan.gateway, .state_dir = parent.state_dir, .filter_source = true});
  if (!devs) fail_child(devs.error().message);
  release = [&] { Devices gone = std::move(*devs); };
  step("devices");
  auto memory = GuestMemory::from_mapping(Mapping::adopt(const_cast<uint8_t*>(ram), ram_size), parent.machine->vm().memory().file());
  if (!memory) fail_child(memory.error().message());
  Identity identity = new_identity(plan.name);
  for (const auto& n : plan.nets) identity.macs.push_back(n.mac);
  identity.hostname = plan.hostname;
  identity.ip = plan.ip;
  identity.gateway = plan.gateway;
  auto machine = Machine::create(kvm, std::move(*memory),
                                 VmConfig{.vcpus = shape->vcpus, .cpu_template = shape->cpu_template, .cpuid = shape->cpuid, .restoring = true},
                                 PlatformConfig{.console = std::move(devs->console), .disks = std::move(devs->disks), .nets = std::move(devs->nets),
                                                .loop = nullptr, .identity = identity_pairs(identity), .console_tap = {}},
                                 std::move(devs->loop));
  if (!machine) fail_child(machine.error().message());
  release = [&] { machine->reset(); };
  Machine& m = **machine;
  step("machine");
  // The clock brought to the present: the parent's ran on from the capture (its disks copied
  // since, which can take seconds), and the child's keeps time with it.
  if (auto r = restore(m, state, "fork", Timers::AsSavedToNow); !r) fail_child(r.error().message());
  step("restored");
  if (auto r = m.platform().vmgenid().set(identity.generation); !r) fail_child(r.error().message());
  m.platform().vmgenid().notify();
  for (const auto& t : m.platform().transports()) t->signal_all_queues();
  step("identity");
  if (plan.paused) m.vm().start_paused();

  // Registered once its guest runs (Machine::run's `started`, on this thread, its vCPU threads
  // made), as a pool's clone is: its STATE/run entry, vm.json and API socket are new files
  // (~0.25 ms here) that its first instruction does not wait for. A name clash, very unlikely (its
  // parent picked a random suffix and made its directory), then stops it. (Registered on a thread
  // of its own beside the machine's creation, tried on 2026-12-06, the child's first instruction
  // came ~0.8 ms later, the two threads of a process just forked contending for its memory map.)
  std::optional<std::string> unregistered;
  bool reported = false;
  std::thread reporter;
  auto registration = [&] {
    auto stop_with = [&](const std::string& why) {
      unregistered = why;
      m.vm().request_stop(StopInfo{.reason = devices::StopReason::Error, .status = 0, .message = why});
    };
    auto made = api::ControlPlane::create(parent.state_dir, plan.name);
    if (!made) return stop_with(made.error().message());
    control = std::move(*made);
    step("registered");
    auto self = std::make_shared<LiveVm>(LiveVm{.state_dir = parent.state_dir, .kvm_device = parent.kvm_device, .name = plan.name,
                                                .template_name = parent.template_name, .template_dir = parent.template_dir,
                                                .cpu_template = parent.cpu_template, .config = parent.config,
                                                .kernel = parent.kernel, .cmdline = parent.cmdline,
                                                .machine = &m, .control = control.get()});
    self->config = config_json(ram_size, shape->vcpus, self->config.value("cpu_template", ""), plan.disks, plan.nets, console, identity,
                               m.platform());
    control->start(m, api::VmInfo{.id = identity.id, .name = plan.name, .kind = "fork", .template_name = parent.template_name,
                                  .template_dir = parent.template_dir, .parent = parent.name,
                                  .generation = generation_hex(identity), .config = self->config, .api_socket = {},
                                  .requested = plan.requested, .steps = steps, .paused = plan.paused},
                   live_operations(self));
    // Reported once its API answers (the request's client may use it at once); the guest runs meanwhile.
    auto t = start_thread("the fork's reporting thread", [&] {
      control->wait_serving();
      // A VM that stopped before it ran (a vCPU thread that could not be made) is not reported as
      // running: its error is, once run() returns.
      if (m.vm().stopping() && !m.vm().first_run().entered) return;
      // Its output goes to its own log before it is reported: the client may look for the log as
      // soon as it has the answer (the fork scenario did, under load, and found none yet).
      detach_output(plan.output);  // it outlives the request, and maybe its parent
      // Its record (clone.json, with its pid), written here rather than by its parent, before the
      // pause and again once the child runs (~0.5 ms of the request).
      if (auto r = write_clone_record(plan.dir, CloneRecord{.name = plan.name, .template_dir = parent.template_dir,
                                                            .full = parent.template_dir.empty(), .pid = ::getpid(), .created = utc_now()});
          !r) {
        fmt::print(stderr, "vmm: warning: {}\n", r.error().message());  // (it runs; `vmm clone ls` says "starting")
      }
      report(plan.report_fd, "ok");
      ::close(plan.report_fd);
      reported = true;
    });
    if (!t) return stop_with(t.error().message());
    reporter = std::move(*t);
  };
  const StopInfo stop = m.run(registration);
  if (reporter.joinable()) reporter.join();
  if (unregistered) fail_child(*unregistered);
  if (!reported) fail_child(describe_stop(stop));  // (its control plane ended first)
  const int status = stop_status(stop);
  control.reset();
  // Its machine ends as any VM's does: the disks' cached metadata written back (a qcow2 overlay's
  // tables since the guest's last flush), its namespaces and TAPs removed.
  machine->reset();
  ::_exit(status);
}

/// Gives the child `plan` its disks (copies into plan.dir/disk, made beforehand): see the comment
/// at the top.
Result<> prepare_disks(const LiveVm& vm, ChildPlan& plan) {
  std::error_code ec;
  const auto& disks = vm.machine->platform().disks();
  for (size_t i = 0; i < disks.size(); ++i) {
    const auto& image = disks[i]->image();
    const fs::path src = image.path();
    // The file the VM has open must still be at its path, which the copy and the child read: one
    // moved or replaced since would give a child another disk than the one its guest's memory
    // knows (found by review, 2026-12-08). And a qcow2 image's backing file, which the child opens
    // by name, must be the one the parent opened.
    struct stat st {};
    if (::stat(src.c_str(), &st) != 0) return fail("{}: {}", src.string(), errno_text(errno));
    if (disk::FileId{st.st_dev, st.st_ino} != image.file_id()) {
      return fail("{}: not the file the VM opened (moved or replaced since): its children would get another disk", src.string());
    }
    const auto backing = image.backing_file();
    std::optional<disk::FileId> backing_id;
    if (backing) backing_id = backing->id;
    if (image.read_only()) {
      plan.disks.push_back(DiskSpec{.path = src, .read_only = true, .id = disks[i]->id(), .format = image.reopen_format(), .backing_must_be = backing_id});
      continue;
    }
    const fs::path dst = plan.dir / "disk" / fmt::format("disk{}{}", i, src.extension().string());
    // Not fsynced while the parent is paused (a journal commit here is more than the pause's 2 ms
    // budget): the copy is durable with the child's guest's first flush, as its own writes are.
    if (auto r = copy_sparse(src, dst, {}, /*sync=*/false); !r) return r;
    fs::permissions(dst, fs::perms::owner_read | fs::perms::owner_write, ec);
    // A backing file named relative to the image's directory: named absolute in the copy, which
    // lives in the child's directory (every child failed to open its disk before).
    // Resolved by the file system, not lexically: "dir/link/../base.img" is the base.img next to
    // the link's target, which lexical normalisation would take for dir/base.img.
    if (backing && fs::path(backing->stored).is_relative()) {
      const fs::path resolved = fs::canonical(backing->path, ec);
      if (ec) return fail("{}: {}", backing->path.string(), ec.message());
      if (auto r = disk::Qcow2::set_backing_name(dst, resolved.string()); !r) return r;
    }
    // Opened as what the parent's is (a raw image the guest wrote a qcow2 header into stays raw; one
    // whose format was guessed, and so could not be written one, is guessed again: raw, and
    // guarded as the parent's is, rather than given to a guest that may then write one).
    plan.disks.push_back(DiskSpec{.path = dst, .read_only = false, .id = disks[i]->id(), .format = image.reopen_format(), .backing_must_be = backing_id});
  }
  return {};
}

/// The children's interfaces and identity from a fork request (checked already: api/requests.hpp):
/// "nets", the --net syntax, one per interface of the parent, names with {name} and {i}; "hostname"
/// with them too; "ip", counted up from child to child; "gateway". Planned before anything is forked.
Result<> plan_networks(const LiveVm& vm, const api::ForkRequest& request, std::vector<ChildPlan>& plans) {
  std::vector<NetSpec> patterns;
  for (const auto& text : request.nets.value_or(std::vector<std::string>{})) {
    auto n = parse_net_spec(text);
    if (!n) return std::unexpected(n.error());
    // Several children: each its own TAP (or namespace), as a fleet's clones, refused here rather
    // than at the second child, once all were forked and their disks copied. (A MAC cannot be
    // given to a fork at all: api/requests.cpp.)
    if (plans.size() > 1) {
      if (auto r = check_net_per_vm(*n); !r) return fail("nets: {}", r.error().message());
    }
    patterns.push_back(*n);
  }
  const NetSource source{.kind = "VM", .interfaces = vm.machine->platform().nets().size(), .ip = vm.config.value("ip", ""),
                         .gateway = vm.config.value("gateway", "")};
  for (size_t i = 0; i < plans.size(); ++i) {
    ChildPlan& p = plans[i];
    const unsigned index = static_cast<unsigned>(i + 1);
    // Consecutive addresses from the one asked for, one per child.
    std::string child_ip;
    if (!request.ip.empty()) {
      auto next = ip_plus(request.ip, static_cast<uint32_t>(i));
      if (!next) return std::unexpected(next.error());
      child_ip = *next;
    }
    auto net = plan_nets("fork", patterns, source, p.name, index, child_ip, request.gateway, /*ip_later=*/false);
    if (!net) return std::unexpected(net.error());
    p.nets = std::move(net->nets);
    p.ip = net->ip;
    p.gateway = net->gateway;
    if (request.hostname) {
      p.hostname = expand_pattern(*request.hostname, p.name, index);
      if (auto r = check_hostname(p.hostname); !r) return r;
    }
  }
  return {};
}

namespace {
/// A child's directory with its log files open (and disk/ if its disks are copied): at `dir`.
Result<ForkSpare> make_child_dir(const fs::path& dir, bool disk_dir) {
  std::error_code ec;
  // Its owner's alone (0700), as a clone's: its disks and log hold what its guest wrote and printed.
  if (::mkdir(dir.c_str(), 0700) != 0) return fail("{}: cannot create{}", dir.string(), errno == EEXIST ? " (exists)" : ": " + errno_text(errno));
  ForkSpare d{.dir = dir, .console = {}, .output = {}, .disk_dir = disk_dir};
  auto undone = [&](Error e) {  // what it made goes (not a directory that was there before)
    fs::remove_all(dir, ec);
    return std::unexpected(std::move(e));
  };
  // Where its copies of the writable disks go (prepare_disks): only if it gets any. (Its record,
  // clone.json, the child writes.)
  if (disk_dir && !fs::create_directory(dir / "disk", ec)) {
    return undone(Error(fmt::format("{}: cannot create: {}", (dir / "disk").string(), ec.message())));
  }
  const fs::path log = dir / "console.log";
  d.console = Fd(::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644));
  if (!d.console) return undone(Error(fmt::format("{}: {}", log.string(), errno_text(errno))));
  d.output = open_detached_output(dir / "vmm.log");
  return d;
}

/// The spare's place: in the VM's own STATE/run entry (mode 0700, removed with it).
fs::path spare_dir(const LiveVm& vm) { return vm.control->registration().dir() / "fork-spare"; }

/// Makes the next fork's spare if there is none (errors leave none: that fork makes its own).
void make_spare(const LiveVm& vm, bool disk_dir) {
  if (vm.control == nullptr) return;
  ForkSpares& f = *vm.fork_spares;
  {
    std::lock_guard lock(f.mutex);
    if (f.spare || f.making) return;
    f.making = true;
  }
  const fs::path dir = spare_dir(vm);
  std::error_code ec;
  fs::remove_all(dir, ec);  // one taken but not renamed, or left half made
  auto made = make_child_dir(dir, disk_dir);
  std::lock_guard lock(f.mutex);
  if (made) f.spare.emplace(std::move(*made));
  f.making = false;
}

/// The spare renamed to `dir`, if there is one that fits; else nothing (and no spare left).
std::optional<ForkSpare> take_spare(const LiveVm& vm, const fs::path& dir, bool disk_dir) {
  ForkSpares& f = *vm.fork_spares;
  std::lock_guard lock(f.mutex);  // (held over the rename: make_spare() clears the spare's place)
  std::optional<ForkSpare> s;
  s.swap(f.spare);
  if (!s) return std::nullopt;
  // Never over a directory of that name (EEXIST: the caller's own attempt then says so), nor
  // across file systems (EXDEV): then the spare goes, and the caller makes the directory.
  if (s->disk_dir != disk_dir || ::renameat2(AT_FDCWD, s->dir.c_str(), AT_FDCWD, dir.c_str(), RENAME_NOREPLACE) != 0) {
    std::error_code ec;
    fs::remove_all(s->dir, ec);
    return std::nullopt;
  }
  s->dir = dir;
  return s;
}
}  // namespace

Result<json> fork_vm(const std::shared_ptr<LiveVm>& vm, const api::ForkRequest& request, const api::PauseWindow& window) {
  Machine& m = *vm->machine;
  const unsigned count = request.count;
  const bool children_paused = request.children_paused;
  std::vector<ChildPlan> plans(count);
  std::set<std::string> names;
  for (auto& plan : plans) {
    // A fork of a fork of ... stays a valid name (64 characters at most): the parent's name is
    // shortened to make room for the child's suffix, 32 random bits (as a clone's), drawn again
    // while a child of this request or a clone already has it (with 24 bits, 256 children clashed
    // once in ~500 forks, and a clash failed the whole fork).
    for (int tries = 0;; ++tries) {
      plan.name = fmt::format("{}-{}", std::string_view(vm->name).substr(0, 55), random_hex(4));
      plan.dir = vm->state_dir / "clones" / plan.name;
      std::error_code ec;
      if ((!names.contains(plan.name) && !fs::exists(plan.dir, ec) && !ec) || tries == 16) break;
    }
    names.insert(plan.name);
    plan.paused = children_paused;
  }
  if (auto r = plan_networks(*vm, request, plans); !r) return std::unexpected(r.error());
  window.begin();  // the request is sound: what fails from here (a directory, a pipe) is ours

  // While the guest runs: each child's directory, its record and the pipe it reports on (nothing
  // here depends on the VM's state). A fork that fails leaves none of them behind.
  std::vector<int> reads;
  std::vector<fs::path> made;
  auto cleanup = [&](bool remove_dirs) {
    for (int fd : reads) ::close(fd);
    for (auto& p : plans) {
      if (p.report_fd >= 0) ::close(p.report_fd);
      if (p.console_fd >= 0) ::close(p.console_fd);
    }
    std::error_code ec;
    if (remove_dirs) {
      for (const auto& d : made) fs::remove_all(d, ec);
    }
  };
  auto failed = [&](Error e) {
    cleanup(true);
    return std::unexpected(std::move(e));
  };
  const bool copies_disks = std::ranges::any_of(m.platform().disks(), [](const auto& d) { return !d->image().read_only(); });
  for (auto& plan : plans) {
    std::error_code ec;
    fs::create_directories(plan.dir.parent_path(), ec);
    // The first child's directory is the one made after the last fork, renamed here (~0.02 ms
    // against ~0.6 for a directory and two new files on this host's ext4).
    auto d = &plan == &plans.front() ? take_spare(*vm, plan.dir, copies_disks) : std::nullopt;
    if (!d) {
      auto made_now = make_child_dir(plan.dir, copies_disks);
      if (!made_now) return failed(made_now.error());
      d.emplace(std::move(*made_now));
    }
    made.push_back(plan.dir);
    plan.console_fd = d->console.release();
    plan.output = std::move(d->output);
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) return failed(Error(fmt::format("pipe: {}", errno_text(errno))));
    reads.push_back(p[0]);
    plan.report_fd = p[1];
  }

  // Paused: the state, the disks as they are at this moment, the forks.
  if (auto r = window.pause(); !r) return failed(r.error());
  auto ms_since = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
  };
  const auto started = std::chrono::steady_clock::now();
  for (auto& plan : plans) plan.requested = started;  // the children time their start from here
  auto state = capture(m, vm->cpu_template);
  if (!state) return failed(state.error());
  const double capture_ms = ms_since(started);
  const auto disks_started = std::chrono::steady_clock::now();
  for (auto& plan : plans) {
    if (auto r = prepare_disks(*vm, plan); !r) return failed(r.error());
  }
  const double disks_ms = ms_since(disks_started);
  const auto t0 = std::chrono::steady_clock::now();
  json children = json::array();
  std::vector<pid_t> pids;
  std::vector<int> fork_errors;  // errno of each fork() that failed, before later calls change it
  // Each child's pidfd, for the kill of one that does not run in time: by then the event loop may
  // have reaped it (reap_when_ended) and its pid be another process's.
  std::vector<Fd> pidfds;
  for (auto& plan : plans) {
    const pid_t pid = ::fork();
    if (pid == 0) run_child(*vm, plan, *state);
    fork_errors.push_back(pid < 0 ? errno : 0);
    pids.push_back(pid);
    pidfds.emplace_back(pid > 0 ? static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)) : -1);
    ::close(plan.report_fd);
    plan.report_fd = -1;
    ::close(plan.console_fd);
    plan.console_fd = -1;
    plan.output = {};
  }
  const double fork_ms = ms_since(t0);
  // The loop is this thread's while the VM is paused, under a lease: a VM that stops meanwhile
  // (SIGTERM) has run() drain the loop, which must not meet a watch being added. A VM that stops
  // leaves its children unwatched: they are reaped by init once it has exited.
  if (auto lease = m.lease_loop()) {
    for (const pid_t pid : pids) {
      if (pid > 0) reap_when_ended(m.loop(), pid);
    }
  }
  window.resume();
  // The next fork's first directory, made while this one's children start (their parent only
  // waits for their reports meanwhile).
  make_spare(*vm, copies_disks);

  // Each child reports once it runs (or why it could not): all of them at once, 30 s at most in
  // all (one at a time, a request for 256 could have held the VM's control for hours).
  std::vector<std::string> texts(plans.size());
  std::vector<bool> heard(plans.size(), false);  // a line, or the end of its pipe
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  // Reads what the children say within `wait_ms`: how many spoke (or ended), -1 once none is left
  // to hear.
  auto listen = [&](int wait_ms) {
    std::vector<pollfd> pfds;
    std::vector<size_t> which;
    for (size_t i = 0; i < plans.size(); ++i) {
      if (pids[i] > 0 && !heard[i]) {
        pfds.push_back(pollfd{.fd = reads[i], .events = POLLIN, .revents = 0});
        which.push_back(i);
      }
    }
    if (pfds.empty()) return -1;
    const int ready = ::poll(pfds.data(), pfds.size(), wait_ms);
    for (size_t k = 0; ready > 0 && k < pfds.size(); ++k) {
      if (pfds[k].revents == 0) continue;
      const size_t i = which[k];
      char buf[512];
      const ssize_t n = ::read(reads[i], buf, sizeof buf);
      if (n > 0) texts[i].append(buf, static_cast<size_t>(n));
      if (n <= 0 || texts[i].find('\n') != std::string::npos) heard[i] = true;
    }
    return std::max(ready, 0);
  };
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0 || listen(static_cast<int>(std::min<int64_t>(left, 100))) < 0) break;
  }
  // Once more at the deadline: a child that spoke or ended in its last moments is heard. One still
  // unheard holds its pipe open, so it has not ended and its pid is still its own: killed below.
  while (listen(0) > 0) {
  }
  for (size_t i = 0; i < plans.size(); ++i) {
    json c{{"name", plans[i].name}, {"pid", pids[i]}};
    const std::string& text = texts[i];
    if (pids[i] < 0) {
      c["error"] = fmt::format("fork: {}", errno_text(fork_errors[i]));
    } else if (text.starts_with("ok")) {
      // Running, its record written.
    } else if (text.starts_with("error ")) {
      c["error"] = text.substr(6, text.find('\n') - 6);
    } else if (heard[i]) {
      c["error"] = "the child ended before it ran";
    } else {
      c["error"] = "the child did not run within 30 s: killed";
      if (pidfds[i]) {
        (void)::syscall(SYS_pidfd_send_signal, pidfds[i].get(), SIGKILL, nullptr, 0);
        // Ended before its directory goes (a kill is delivered in its own time: a child still
        // writing its record would leave files behind the removal). 2 s at most.
        pollfd p{.fd = pidfds[i].get(), .events = POLLIN, .revents = 0};
        while (::poll(&p, 1, 2000) < 0 && errno == EINTR) {
        }
      } else {
        ::kill(pids[i], SIGKILL);  // (Linux before 5.3) its pipe was still open just now: the pid is still its own
      }
    }
    // A child that does not run leaves nothing behind (one that reported an error removed its
    // directory itself; one killed, or that ended without a word, could not).
    if (c.contains("error")) {
      std::error_code ec;
      fs::remove_all(plans[i].dir, ec);
    }
    children.push_back(c);
  }
  cleanup(false);
  return json{{"children", children}, {"capture_ms", capture_ms}, {"disks_ms", disks_ms}, {"fork_ms", fork_ms}};
}

/// Copies what the guest sees on `blk` (through its whole backing chain) into a new sparse raw
/// file: the machine is quiesced, and its own loop (driven here) completes the reads.
Result<> flatten(Machine& m, devices::virtio::Block& blk, const fs::path& out) {
  disk::Image& image = blk.image();
  auto lease = m.lease_loop();
  if (!lease) return std::unexpected(lease.error());
  Fd fd(::open(out.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd) return fail("{}: cannot create: {}", out.string(), errno_text(errno));
  if (::ftruncate(fd.get(), static_cast<off_t>(image.size())) != 0) return fail("{}: ftruncate: {}", out.string(), errno_text(errno));
  constexpr size_t kChunk = 1 << 20;
  // The buffer and what the completion says live on the heap, shared with the callback: a read
  // still in flight when this returns early (the loop failed) completes into them, not into freed
  // memory, once the machine's I/O thread runs the loop again.
  // So does the buffer list: io_uring reads it at submission (perhaps the next run of the loop) and
  // again to redo a request it cancelled.
  struct Chunk {
    std::unique_ptr<uint8_t, decltype(&std::free)> buf{static_cast<uint8_t*>(std::aligned_alloc(4096, kChunk)), &std::free};
    iovec iov{};
    bool done = false;
    int32_t res = 0;
  };
  auto chunk = std::make_shared<Chunk>();
  uint8_t* buf = chunk->buf.get();
  if (!buf) return fail("out of memory");
  for (uint64_t off = 0; off < image.size(); off += kChunk) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, image.size() - off));
    chunk->iov = iovec{.iov_base = buf, .iov_len = n};
    chunk->done = false;
    if (auto r = image.read(off, std::span(&chunk->iov, 1), [chunk](int32_t v) { chunk->res = v, chunk->done = true; }); !r) return r;
    while (!chunk->done) {
      if (m.vm().stopping()) return fail("the VM is stopping");
      if (auto r = m.loop().run_once(std::chrono::milliseconds(100)); !r) return std::unexpected(r.error());
    }
    const int32_t res = chunk->res;
    if (res < 0) return fail("{}: read at {}: {}", image.path().string(), off, errno_text(-res));
    // A short read (the file shrank under it) would copy the last chunk's bytes in its place.
    if (static_cast<size_t>(res) != n) return fail("{}: read at {}: {} of {} bytes", image.path().string(), off, res, n);
    if (std::all_of(buf, buf + n, [](uint8_t b) { return b == 0; })) continue;  // a hole
    for (size_t w = 0; w < n;) {
      const ssize_t k = ::pwrite(fd.get(), buf + w, n - w, static_cast<off_t>(off + w));
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) return fail("{}: write: {}", out.string(), errno_text(errno));
      w += static_cast<size_t>(k);
    }
  }
  if (::fsync(fd.get()) != 0) return fail("{}: fsync: {}", out.string(), errno_text(errno));
  return {};
}

/// PUT /vm/snapshot {"dir": D}: a template of the running VM. While it is paused: its state, its
/// memory file and a flat copy of each disk are written; then it runs on, on its own disks, which
/// the template does not share (so nothing the VM does later reaches the template).
Result<json> snapshot_vm(const std::shared_ptr<LiveVm>& vm, const api::SnapshotRequest& request, const api::PauseWindow& window) {
  Machine& m = *vm->machine;
  auto draft = begin_template(vm->state_dir.string(), request.dir);
  // A destination that is no template's name or is taken: the request's; a directory that could
  // not be made: ours.
  if (!draft && draft.error().status != exit_code::kUsage) window.begin();
  if (!draft) return fail("{}", draft.error().message);
  window.begin();
  const fs::path tmp = (*draft)->tmp;
  const fs::path* dest = &(*draft)->dest;

  Manifest man;
  if (auto r = window.pause(); !r) return std::unexpected(r.error());
  auto state = capture(m, vm->cpu_template);
  if (!state) return std::unexpected(state.error());
  if (auto r = write_state_file(tmp / kStateFile, *state); !r) return std::unexpected(r.error());
  auto mem = write_memory_file(m.vm().memory(), tmp / kMemoryFile);
  if (!mem) return std::unexpected(mem.error());
  man.memory_file = {.name = kMemoryFile, .size = mem->size, .checksum = mem->checksum, .data_bytes = mem->data_bytes};
  const auto& disks = m.platform().disks();
  for (size_t i = 0; i < disks.size(); ++i) {
    const std::string name = fmt::format("disks/disk{}.img", i);
    if (auto r = flatten(m, *disks[i], tmp / name); !r) return std::unexpected(r.error());
    // A flattened qcow2 disk holds whatever the guest wrote, a qcow2 header included: raw, said so.
    // A probed raw one could not be given one (RawImage): its copies are probed again.
    const auto& image = disks[i]->image();
    man.disks.push_back({.file = {.name = name}, .id = disks[i]->id(), .format = "raw", .read_only = image.read_only(),
                         .probed = image.reopen_format().empty()});
  }
  window.resume();  // everything of the VM is copied: it runs on while the files are summed and sealed

  auto st = sum_file(tmp, kStateFile);
  if (!st) return std::unexpected(st.error());
  man.state = *st;
  man.name = dest->filename().string();
  man.created = utc_now();
  man.vmm_version = VMM_VERSION;
  man.memory = m.vm().memory().size();
  man.vcpus = static_cast<uint32_t>(m.vm().vcpu_count());
  man.cpu_template = std::string(cpu_template_name(vm->cpu_template));
  man.kernel = vm->kernel;
  man.cmdline = vm->cmdline;
  for (const auto& n : vm->config.value("nets", json::array())) man.nets.push_back({.mac = n.value("mac", ""), .tap = n.value("tap", "")});
  man.ip = vm->config.value("ip", "");
  man.gateway = vm->config.value("gateway", "");
  if (auto r = seal_template(**draft, man); !r) return std::unexpected(r.error());
  return json{{"template", dest->string()}, {"memory_bytes", mem->data_bytes}};
}

}  // namespace

api::VmOperations live_operations(std::shared_ptr<LiveVm> vm) {
  api::VmOperations ops;
  ops.snapshot = [vm](const api::SnapshotRequest& request, const api::PauseWindow& window) { return snapshot_vm(vm, request, window); };
  ops.fork = [vm](const api::ForkRequest& request, const api::PauseWindow& window) { return fork_vm(vm, request, window); };
  return ops;
}

}  // namespace vmm::clone
