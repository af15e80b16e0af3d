// Commands for running VMs, over their control API (vmm/api): `vmm ps`, `vmm pause|resume|stop`,
// `vmm snapshot`, `vmm fork`, `vmm input`. A VM is named by its name in the state directory or by the path of
// its API socket.
#pragma once

#include <string>
#include <vector>

namespace vmm::cli {

struct VmCommand {
  std::string verb;    ///< ps, pause, resume, stop, snapshot, fork
  std::string target;  ///< name or socket path
  std::string state_dir;
  bool json = false;        ///< ps --json
  std::string dir;          ///< snapshot DIR
  bool stay_paused = false; ///< snapshot/fork --paused: do not resume afterwards
  unsigned count = 1;       ///< fork --count
  bool children_paused = false;  ///< fork --children-paused
  bool at_rest = false;     ///< snapshot/fork --at-rest: paused once the guest idles (within 200 ms)
  std::vector<std::string> nets;  ///< fork --net (each child's TAP patterns)
  std::string hostname, ip, gateway;  ///< fork --hostname/--ip/--gateway
  double timeout_s = 10;    ///< stop --timeout
  bool no_wait = false;     ///< stop --no-wait: return once the VM is told
  std::vector<std::string> text;  ///< input TEXT...: typed as one line
};

int vm_command(const VmCommand& command);

}  // namespace vmm::cli
