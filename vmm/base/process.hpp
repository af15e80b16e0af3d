// Running a host tool (iproute2's `ip`, `nft`) to its end: no shell, the argument vector as given,
// the input on its stdin, its stderr kept for the error message. Waiting for another process's end.
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

}  // namespace vmm
