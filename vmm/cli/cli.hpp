// The `vmm` command line: subcommands, option parsing and validation, exit statuses.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "devices/console.hpp"
#include "vmm/cpuid.hpp"
#include "vmm/cli/device_spec.hpp"

namespace vmm::cli {

/// Everything `vmm run` was asked to do, validated.
struct RunOptions {
  std::filesystem::path kernel;
  std::optional<std::filesystem::path> initrd;
  std::string cmdline;
  uint64_t memory = 256ull << 20;
  uint32_t vcpus = 1;
  devices::ConsoleSpec console;
  CpuTemplate cpu_template = CpuTemplate::Host;
  std::filesystem::path kvm_device;
  std::vector<DiskSpec> disks;
  std::vector<NetSpec> nets;  ///< mac already checked (or empty: random)
};

/// Entry point: parses argv, runs the subcommand, returns the process exit status.
int main(int argc, char** argv);

/// Runs a VM to completion; returns the exit status (see exit_codes.hpp).
int run_vm(const RunOptions& options);

}  // namespace vmm::cli
