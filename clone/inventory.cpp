#include "clone/inventory.hpp"

#include <fstream>

#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "clone/template.hpp"
#include "vmm/api/http.hpp"
#include "vmm/api/registry.hpp"
#include "vmm/base/dir_entries.hpp"
#include "vmm/base/dir_lock.hpp"
#include "vmm/base/fd.hpp"
#include "vmm/base/process.hpp"
#include "vmm/exit_status.hpp"
#include "vmm/state_dir.hpp"

namespace vmm::clone {

namespace fs = std::filesystem;

uint64_t allocated_bytes(const fs::path& dir) {
  uint64_t total = 0;
  std::error_code ec;
  // The throwing increment of a range-for ended `template ls` and `clone ls` in std::terminate at
  // a directory it could not read: an error ends the walk here, with what was counted.
  for (fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec), end; !ec && it != end;
       it.increment(ec)) {
    struct stat st {};
    if (it->is_regular_file(ec) && ::lstat(it->path().c_str(), &st) == 0) total += static_cast<uint64_t>(st.st_blocks) * 512;
  }
  return total;
}

namespace {

CloneEntry read_entry(const fs::path& dir, const std::vector<api::RunningVm>& running) {
  CloneEntry c;
  c.name = dir.filename().string();
  c.dir = dir;
  if (auto rec = read_clone_record(dir)) c.record = std::move(*rec);
  auto vm = std::ranges::find(running, c.name, &api::RunningVm::name);
  if (vm != running.end()) {
    c.state = CloneEntry::State::Running;
    c.pid = vm->pid;
  } else if (!c.record || c.record->pid == 0) {
    c.state = CloneEntry::State::Starting;
  }
  c.bytes = allocated_bytes(dir);
  return c;
}

/// Whether the process registered as `vm` is the clone whose directory holds `record` (its record,
/// if it has one): it says so (GET /vm: a clone or a fork of that name), or it wrote that record
/// (the pid both give is as its own PID namespace sees it). Not so for whatever else may hold the
/// name in the registry: a booted VM of that name, another `vmm clone rm` burying it.
bool is_this_clone(const api::RunningVm& vm, const std::optional<CloneRecord>& record) {
  if (record && record->pid != 0 && record->pid == vm.pid) return true;
  auto r = api::call(vm.socket.string(), {.method = "GET", .path = "/vm", .body = {}}, 2.0);
  if (!r || r->status != 200) return false;
  auto j = nlohmann::json::parse(r->body, nullptr, false);
  if (!j.is_object()) return false;
  const auto kind = j.value("kind", nlohmann::json()), name = j.value("name", nlohmann::json());
  return kind.is_string() && (kind == "clone" || kind == "fork") && name == vm.name;
}

/// Kills the running VM `vm` and waits until it has ended (10 s at most). The process is the one
/// that listens on its API socket, as the kernel knows it (as `vmm stop` finds it): the pid its
/// vm.json gives is as its own PID namespace sees it (1 in a namespace of its own), which here
/// may name another process. Only a VM whose socket does not listen (yet) is found by that pid,
/// and only if that process is a vmm.
Result<> kill_and_wait(const api::RunningVm& vm) {
  const int64_t pid = vm.pid;
  Fd pidfd;
  if (auto p = api::listener_process(vm.socket.string())) {
    pidfd = std::move(*p);
    if (!pidfd) return {};  // ended already
  } else {
    std::string comm;
    if (pid > 1) (void)!std::getline(std::ifstream(fmt::format("/proc/{}/comm", pid)), comm);
    if (!comm.starts_with("vmm")) {
      return fail("its API socket {} does not answer and its pid {} is not a vmm process here: not killed", vm.socket.string(), pid);
    }
    pidfd = Fd(static_cast<int>(::syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0)));
    if (!pidfd) {
      if (errno == ESRCH) return {};  // ended already
      return fail("pidfd_open {}: {}", pid, errno_text(errno));
    }
  }
  if (::syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0) != 0 && errno != ESRCH) {
    return fail("kill {}: {}", pid, errno_text(errno));
  }
  if (auto w = wait_exit(pidfd, 10); !w) return fail("process {} after SIGKILL: {}", pid, w.error().message());
  return {};
}

}  // namespace

std::string_view state_name(CloneEntry::State state) {
  switch (state) {
    case CloneEntry::State::Running:
      return "running";
    case CloneEntry::State::Stopped:
      return "stopped";
    case CloneEntry::State::Starting:
      return "starting";
  }
  return "?";
}

std::vector<CloneEntry> list_clones(const fs::path& sdir) {
  const auto running = api::running_vms(sdir);
  std::vector<CloneEntry> out;
  std::error_code ec;
  for (const auto& e : dir_entries(sdir / "clones")) {
    if (e.is_directory(ec) && !e.is_symlink(ec) && valid_name(e.path().filename().string())) out.push_back(read_entry(e.path(), running));
  }
  std::ranges::sort(out, {}, &CloneEntry::name);
  return out;
}

Result<> remove_clone(const fs::path& sdir, const std::string& name, RemoveRunning running) {
  if (!valid_name(name)) return fail("clone name '{}': use letters, digits, '.', '_' and '-'", printable(name));
  const fs::path dir = sdir / "clones" / name;
  std::error_code ec;
  if (!fs::is_directory(fs::symlink_status(dir, ec))) return fail("no clone named '{}' in {}", name, (sdir / "clones").string());
  // The name, taken in the registry for as long as the directory is being removed: a clone that
  // runs holds it (refused, or killed first); none can start under it meanwhile.
  auto taken = api::Registration::create(sdir, name);
  if (!taken) {
    const auto vms = api::running_vms(sdir);
    auto vm = std::ranges::find(vms, name, &api::RunningVm::name);
    if (vm == vms.end()) return std::unexpected(taken.error());
    if (running == RemoveRunning::Refuse) {
      return fail("clone '{}' is running (pid {}): stop it first ('vmm stop {}'), or remove it with --force", name, vm->pid, name);
    }
    std::optional<CloneRecord> record;
    if (auto rec = read_clone_record(dir)) record = std::move(*rec);
    if (!is_this_clone(*vm, record)) {
      return fail("clone '{}': the name is held in {} by process {}, which is not this clone (a VM booted under that name, or "
                  "a removal under way): not killed", name, (sdir / "run").string(), vm->pid);
    }
    if (auto k = kill_and_wait(*vm); !k) return fail("clone '{}': {}", name, k.error().message());
    taken = api::Registration::create(sdir, name);  // its entry is stale now: taken over
    if (!taken) return fail("clone '{}': {}", name, taken.error().message());
  }
  const CloneEntry c = read_entry(dir, {});
  if (c.state == CloneEntry::State::Starting && running == RemoveRunning::Refuse) {
    return fail("clone '{}' is starting (no record of its start yet: a pool's member, a fork's child, or a start that was "
                "killed): remove it with --force", name);
  }
  // Moved aside, then removed: a removal cut short leaves no half of the clone under its name (its
  // record gone first, its overlays left, it looked "starting" for ever and kept its template).
  sweep_tombs(sdir / "clones");
  auto lock = lock_dir(dir, LOCK_EX);
  if (!lock) return std::unexpected(lock.error());
  return bury(dir, lock->fd);
}

std::optional<TemplateRemoval> remove_template(const fs::path& sdir, const std::string& target, bool force) {
  auto refuse = [](int status, std::string message) { return std::optional(TemplateRemoval{status, std::move(message)}); };
  auto resolved = resolve_template(sdir, target);
  if (!resolved) return refuse(exit_code::kImage, resolved.error().message());
  const bool ours = target.find('/') == std::string::npos;  // in the state directory's templates
  // By path, the template the path names (through a symbolic link: the template, not the link).
  std::error_code ec;
  fs::path dir = ours ? *resolved : fs::canonical(*resolved, ec);
  if (ec) return refuse(exit_code::kImage, fmt::format("template {}: {}", target, ec.message()));
  if (ours) sweep_tombs(sdir / "templates", /*drafts_too=*/true);
  // A symbolic link among the state directory's templates (clones follow it): not removed through.
  if (struct stat st; ours && ::lstat(dir.c_str(), &st) == 0 && S_ISLNK(st.st_mode)) {
    return refuse(exit_code::kImage, fmt::format("template {}: {} is a symbolic link: remove the link itself (rm), or the "
                                                 "template by its path", target, dir.string()));
  }
  // Locked, and checked under the lock: a clone being made from it holds it shared until its record
  // is written, from which point dependants() counts it.
  auto lock = lock_dir(dir, LOCK_EX | LOCK_NB);
  if (!lock) return refuse(exit_code::kVmmError, lock.error().message());
  auto depended_on = [&](const std::vector<std::string>& clones) {
    return refuse(exit_code::kUsage, fmt::format("template {}: {} linked clone(s) depend on it ({}); remove them first "
                                                 "('vmm clone rm NAME...', or 'vmm clone prune' for the stopped ones), or use --force",
                                                 dir.string(), clones.size(), fmt::join(clones, ", ")));
  };
  if (lock->busy && !force) {
    // Its dependants named if it has any (a pool's waiting members: the pool holds it too).
    if (const auto clones = dependants(sdir, dir); !clones.empty()) return depended_on(clones);
    return refuse(exit_code::kUsage, fmt::format("template {}: a clone is being made from it (or a fleet or a pool is using it): "
                                                 "try again once it has started, or use --force", dir.string()));
  }
  if (lock->busy) lock = lock_dir(dir, 0);  // --force: removed under whoever uses it (a pool holds it for its life)
  if (!lock) return refuse(exit_code::kVmmError, lock.error().message());
  if (auto m = read_manifest(dir); !m) {
    // Given by path, a directory must be a template to be removed; one of the state directory's own
    // templates whose manifest is gone is what an interrupted removal left (before tombs), and one
    // whose manifest is unreadable goes with --force (no command could remove it otherwise).
    // (Present: anything lstat does not call missing; a manifest that cannot be looked at, a
    // symbolic link loop say, is there.)
    struct stat st;
    const bool present = ::lstat((dir / kManifestFile).c_str(), &st) == 0 || errno != ENOENT;
    if (!ours || (!force && present)) {
      return refuse(exit_code::kImage, ours ? fmt::format("{} (remove it with --force)", m.error().message()) : m.error().message());
    }
  }
  if (const auto clones = dependants(sdir, dir); !clones.empty() && !force) return depended_on(clones);
  if (auto r = bury(dir, lock->fd); !r) return refuse(exit_code::kVmmError, r.error().message());
  return std::nullopt;
}

}  // namespace vmm::clone
