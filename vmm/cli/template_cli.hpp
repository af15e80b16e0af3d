// `vmm template create|ls|inspect|rm|verify` and `vmm run --clone-of`.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "vmm/cli/cli.hpp"

namespace vmm::cli {

struct TemplateCreateOptions {
  std::string dir;       ///< a name (state_dir/templates/NAME) or a path
  std::string ready_on;  ///< console text that means "ready"
  double timeout_s = 60;
  RunOptions run;
  std::string state_dir;
};

struct CloneOptions {
  std::string template_name;
  std::string name;
  bool full = false;
  std::string hostname, ip;
  std::string state_dir;
  devices::ConsoleSpec console;
  bool console_given = false;  ///< otherwise the console goes to the clone's console.log
  std::vector<NetSpec> nets;
  std::filesystem::path kvm_device;
  std::filesystem::path api_socket;
  std::chrono::steady_clock::time_point started;  ///< when main() began (for the start-time line)
};

int template_create(const TemplateCreateOptions& options);
int template_ls(const std::string& state_dir, bool json);
int template_inspect(const std::string& state_dir, const std::string& target);
int template_rm(const std::string& state_dir, const std::string& target, bool force);
int template_verify(const std::string& state_dir, const std::string& target);
int run_clone(const CloneOptions& options);

}  // namespace vmm::cli
