#include "vmm/cli/template_cli.hpp"

#include <sys/stat.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "clone/inventory.hpp"
#include "clone/template.hpp"
#include "vmm/api/json_text.hpp"
#include "vmm/base/dir_entries.hpp"
#include "vmm/exit_status.hpp"
#include "vmm/state_dir.hpp"

namespace vmm::cli {

namespace fs = std::filesystem;

int template_ls(const std::string& state_dir, bool json) {
  const fs::path sdir = resolve_state_dir(state_dir);
  nlohmann::json list = nlohmann::json::array();
  std::error_code ec;
  std::vector<fs::path> dirs;
  for (const auto& e : dir_entries(sdir / "templates")) {
    if (e.is_directory(ec) && e.path().filename().string().front() != '.') dirs.push_back(e.path());
  }
  std::sort(dirs.begin(), dirs.end());
  const auto deps = clone::clone_dependences(sdir);
  if (!json) fmt::print("{:<24} {:>8} {:>5} {:>5} {:>10} {:>7}\n", "NAME", "MEMORY", "CPUS", "DISKS", "ON DISK", "CLONES");
  for (const auto& d : dirs) {
    auto m = clone::read_manifest(d);
    if (!m) {
      fmt::print(stderr, "vmm: warning: {}\n", m.error().message());
      continue;
    }
    const uint64_t on_disk = clone::allocated_bytes(d);
    const auto clones = clone::dependants(deps, d);
    if (json) {
      list.push_back({{"name", m->name}, {"path", d.string()}, {"memory", m->memory}, {"vcpus", m->vcpus},
                      {"disks", m->disks.size()}, {"size_on_disk", on_disk}, {"linked_clones", clones.size()}});
    } else {
      fmt::print("{:<24} {:>7}M {:>5} {:>5} {:>9}M {:>7}\n", m->name, m->memory >> 20, m->vcpus, m->disks.size(),
                 on_disk >> 20, clones.size());
    }
  }
  if (json) fmt::print("{}\n", api::json_display(list, 2));
  return exit_code::kOk;
}

int template_inspect(const std::string& state_dir, const std::string& target) {
  auto dir = clone::resolve_template(resolve_state_dir(state_dir), target);
  if (!dir) return report_error(exit_code::kImage, dir.error().message());
  auto m = clone::read_manifest(*dir);
  if (!m) return report_error(exit_code::kImage, m.error().message());
  fmt::print("{}", clone::manifest_json(*m));
  return exit_code::kOk;
}

int template_rm(const std::string& state_dir, const std::string& target, bool force) {
  if (auto f = clone::remove_template(resolve_state_dir(state_dir), target, force)) return report_error(f->status, f->message);
  return exit_code::kOk;
}

int template_verify(const std::string& state_dir, const std::string& target) {
  auto dir = clone::resolve_template(resolve_state_dir(state_dir), target);
  if (!dir) return report_error(exit_code::kImage, dir.error().message());
  if (auto r = clone::verify_template(*dir); !r) return report_error(exit_code::kImage, r.error().message());
  fmt::print("{}: ok\n", dir->string());
  return exit_code::kOk;
}

int clone_ls(const std::string& state_dir, bool json) {
  const auto clones = clone::list_clones(resolve_state_dir(state_dir));
  nlohmann::json list = nlohmann::json::array();
  if (!json) fmt::print("{:<24} {:<9} {:>8} {:<20} {:<7} {:>9} {}\n", "NAME", "STATE", "PID", "TEMPLATE", "KIND", "ON DISK", "CREATED");
  for (const auto& c : clones) {
    // No record yet (a starting clone): whether it is full or linked is not known.
    const char* kind = !c.record ? "-" : c.record->full ? "full" : "linked";
    std::string from = c.record && !c.record->template_dir.empty() ? fs::path(c.record->template_dir).filename().string() : "-";
    const std::string created = c.record ? c.record->created : "-";  // (JSON: null)
    if (json) {
      nlohmann::json e = {{"name", c.name}, {"state", clone::state_name(c.state)}, {"dir", c.dir.string()}, {"size_on_disk", c.bytes},
                          {"full", c.record ? nlohmann::json(c.record->full) : nlohmann::json(nullptr)}, {"template", c.record ? nlohmann::json(c.record->template_dir) : nlohmann::json(nullptr)},
                          {"created", c.record ? nlohmann::json(created) : nlohmann::json(nullptr)}};
      if (c.state == clone::CloneEntry::State::Running) e["pid"] = c.pid;
      list.push_back(e);
    } else {
      const std::string pid = c.state == clone::CloneEntry::State::Running ? std::to_string(c.pid) : "-";
      fmt::print("{:<24} {:<9} {:>8} {:<20} {:<7} {:>8}K {}\n", c.name, clone::state_name(c.state), pid, from,
                 kind, c.bytes >> 10, created);
    }
  }
  if (json) fmt::print("{}\n", api::json_display(list, 2));
  return exit_code::kOk;
}

int clone_rm(const std::string& state_dir, const std::vector<std::string>& names, bool force) {
  const fs::path sdir = resolve_state_dir(state_dir);
  int status = exit_code::kOk;
  for (const auto& name : names) {
    if (auto r = clone::remove_clone(sdir, name, force ? clone::RemoveRunning::Kill : clone::RemoveRunning::Refuse); !r) {
      status = report_error(exit_code::kUsage, r.error().message());
    }
  }
  return status;
}

int clone_prune(const std::string& state_dir) {
  const fs::path sdir = resolve_state_dir(state_dir);
  int status = exit_code::kOk;
  unsigned removed = 0;
  uint64_t bytes = 0;
  for (const auto& c : clone::list_clones(sdir)) {
    if (c.state != clone::CloneEntry::State::Stopped) continue;
    // A clone that started since it was listed is refused here, and stays.
    if (auto r = clone::remove_clone(sdir, c.name, clone::RemoveRunning::Refuse); !r) {
      status = report_error(exit_code::kVmmError, r.error().message());
      continue;
    }
    ++removed;
    bytes += c.bytes;
  }
  fmt::print("removed {} stopped clone(s), {} KiB\n", removed, bytes >> 10);
  return status;
}

}  // namespace vmm::cli
