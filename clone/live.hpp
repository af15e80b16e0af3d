// What a running VM (booted, cloned or forked) knows about itself to serve the API's operations
// that need more than the machine: live fork and snapshot. See README "Live fork".
#pragma once

#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "vmm/api/control.hpp"
#include "vmm/base/fd.hpp"
#include "vmm/cpuid.hpp"
#include "vmm/machine.hpp"

namespace vmm::clone {

/// A VM's stdin, stdout and stderr once it outlives its starter (detach_output() below): opened
/// ahead by a pool's member and a fork's parent, redirected later.
struct DetachedOutput {
  Fd null, log;
};

/// A fork's child's directory made ahead, while nothing waits for it: its console log and
/// vmm.log open (new files cost 0.05-0.25 ms each on this host's ext4). The next fork renames it
/// into place for its first child. It lives in the VM's own STATE/run entry, which goes with the
/// VM (and with a stale entry's sweep).
struct ForkSpare {
  std::filesystem::path dir;
  Fd console;
  DetachedOutput output;
  bool disk_dir = false;  ///< it has disk/ (the VM has writable disks, which a child copies)
};
struct ForkSpares {
  std::mutex mutex;
  std::optional<ForkSpare> spare;  ///< guarded by mutex
  bool making = false;              ///< one is being made (by one fork at a time); guarded by mutex
};

struct LiveVm {
  std::filesystem::path state_dir;
  std::filesystem::path kvm_device;
  std::string name;
  std::string template_name, template_dir;  ///< what its disks (and those of its forks) depend on
  CpuTemplate cpu_template = CpuTemplate::Host;
  nlohmann::json config;  ///< as GET /vm reports it
  std::string kernel, cmdline;  ///< what it booted (a template's manifest records them)
  Machine* machine = nullptr;
  api::ControlPlane* control = nullptr;
  std::shared_ptr<ForkSpares> fork_spares = std::make_shared<ForkSpares>();
};

/// In a child forked from a VMM process: drops what it inherited of its parent's kernel objects,
/// every fd but 0-2 and those in `keep` (KVM's and io_uring's mappings are not inherited: they are
/// made MADV_DONTFORK).
void drop_inherited(std::vector<int> keep);
/// For a VM that outlives the command that started it (a fork's child, a detached fleet's clone, a
/// pool's clone): its stdin becomes /dev/null and its stdout and stderr `log` (created or appended
/// to), so that it holds no terminal and no pipe of its starter's (`vmm run --count N --detach | cat`
/// would otherwise wait for every clone to end). Falls back to /dev/null if `log` cannot be opened.
void detach_output(const std::filesystem::path& log);
/// The same in two steps, for a pool's member, which opens (and creates) the files ahead of the
/// request and only redirects at it.
DetachedOutput open_detached_output(const std::filesystem::path& log);
void detach_output(const DetachedOutput& output);
/// Raises the soft limit on open files to the hard one (a launcher or pool holds a socket per
/// clone), so that a thousand clones need no change to the user's ulimit.
void raise_open_file_limit();

/// The API operations of `vm` (fork, snapshot), for ControlPlane::start.
api::VmOperations live_operations(std::shared_ptr<LiveVm> vm);

}  // namespace vmm::clone
