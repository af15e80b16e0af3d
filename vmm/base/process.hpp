// Running a host tool (iproute2's `ip`, `nft`) to its end: no shell, the argument vector as given,
// the input on its stdin, its stderr kept for the error message. Waiting for another process's end.
// A stop signal that waits, blocked, for the VM's sigwait.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "vmm/base/error.hpp"
#include "vmm/base/fd.hpp"

namespace vmm {

/// Runs argv[0] (looked up in PATH) with `input` on its stdin; fails with its first line of stderr
/// when it cannot start or exits non-zero.
Result<> run_command(const std::vector<std::string>& argv, std::string_view input = {});

/// Waits until the process of `pidfd` (pidfd_open) has ended, `timeout_s` at most; fails with
/// "still running after N s" at the timeout.
Result<> wait_exit(const Fd& pidfd, double timeout_s);

/// The stop signal (SIGINT or SIGTERM) pending for this process or thread, or 0. main() blocks
/// both for the VM's sigwait, so a long step before the VM runs (a full clone's copy of its
/// template) looks here to end early; the signal stays pending.
int pending_stop_signal();
/// Unblocks SIGINT and SIGTERM in this thread (threads made later inherit it): for the commands
/// that run no VM, which end on them like any other tool.
void unblock_stop_signals();

}  // namespace vmm
