// What a running VM (booted, cloned or forked) knows about itself to serve the API's operations
// that need more than the machine: live fork (and, later, snapshot). See README "Live fork".
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "vmm/api/control.hpp"
#include "vmm/cpuid.hpp"
#include "vmm/machine.hpp"

namespace vmm::cli {

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
};

/// The API operations of `vm` (fork), for ControlPlane::start.
api::VmOperations live_operations(std::shared_ptr<LiveVm> vm);

}  // namespace vmm::cli
