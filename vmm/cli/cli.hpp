// The `vmm` command line: subcommands, option parsing and validation, exit statuses. What the
// commands do lives below it: vmm/ (booting, the API), clone/ (templates, clones, forks, fleets,
// pools), disk/.
#pragma once

#include "vmm/setup.hpp"

namespace vmm::cli {

/// Entry point: parses argv, runs the subcommand, returns the process exit status.
int main(int argc, char** argv);

/// Boots a VM and runs it to completion; returns the exit status (see vmm/exit_status.hpp).
int run_vm(const BootOptions& options);

}  // namespace vmm::cli
