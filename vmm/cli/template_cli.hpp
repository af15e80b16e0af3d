// Templates and clones on disk: `vmm template ls|inspect|rm|verify|bench` (making one is
// clone/make_template.hpp's) and `vmm clone ls|rm|prune` (clone/inventory.hpp).
#pragma once

#include <string>
#include <vector>

#include "clone/clones.hpp"

namespace vmm::cli {

int template_ls(const std::string& state_dir, bool json);
int template_inspect(const std::string& state_dir, const std::string& target);
int template_rm(const std::string& state_dir, const std::string& target, bool force);
int template_verify(const std::string& state_dir, const std::string& target);
int clone_ls(const std::string& state_dir, bool json);
/// Removes each clone named (all of them tried); `force`: a running one is killed first.
int clone_rm(const std::string& state_dir, const std::vector<std::string>& names, bool force);
/// Removes every stopped clone.
int clone_prune(const std::string& state_dir);
/// `vmm template bench TEMPLATE [--count N] [--input TEXT] [--expect TEXT]` (vmm/cli/clone_bench.cpp):
/// `count` clones started one after another in this process, each timed from its memory mapping to
/// `expect` on its console (its guest's answer to `input`, given to its UART before resume), then
/// removed.
int template_bench(const clone::CloneOptions& options, unsigned count, const std::string& input, const std::string& expect,
                   double timeout_s);

}  // namespace vmm::cli
