#include "clone/inventory.hpp"

#include <fstream>

#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

#include "vmm/api/http.hpp"
#include "vmm/api/registry.hpp"
#include "vmm/base/fd.hpp"
#include "vmm/base/process.hpp"
#include "vmm/state_dir.hpp"

namespace vmm::clone {

namespace fs = std::filesystem;

namespace {

uint64_t allocated_bytes(const fs::path& dir) {
  uint64_t total = 0;
  std::error_code ec;
  for (const auto& e : fs::recursive_directory_iterator(dir, ec)) {
    struct stat st {};
    if (e.is_regular_file(ec) && ::lstat(e.path().c_str(), &st) == 0) total += static_cast<uint64_t>(st.st_blocks) * 512;
  }
  return total;
}

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
  for (const auto& e : fs::directory_iterator(sdir / "clones", ec)) {
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
    if (auto k = kill_and_wait(*vm); !k) return fail("clone '{}': {}", name, k.error().message());
    taken = api::Registration::create(sdir, name);  // its entry is stale now: taken over
    if (!taken) return fail("clone '{}': {}", name, taken.error().message());
  }
  const CloneEntry c = read_entry(dir, {});
  if (c.state == CloneEntry::State::Starting && running == RemoveRunning::Refuse) {
    return fail("clone '{}' is starting (no record of its start yet: a pool's member, a fork's child, or a start that was "
                "killed): remove it with --force", name);
  }
  fs::remove_all(dir, ec);
  if (ec) return fail("{}: {}", dir.string(), ec.message());
  return {};
}

}  // namespace vmm::clone
