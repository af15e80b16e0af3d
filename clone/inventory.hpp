// The clones of a state directory (STATE/clones/NAME), running or not, and their removal: what
// `vmm clone ls|rm|prune` do. A clone's directory stays after it stops (its overlays hold what it
// wrote), keeps its name taken, and keeps its template from being removed, until it is removed here.
//
// A clone is running while its name is registered (STATE/run/NAME, vmm/api/registry.hpp). One
// with no record yet (clone.json), or a record without a pid, is starting: a pool's member waiting
// for its request, a fork's child before it runs, a clone being prepared (or one whose start was
// killed). Removal takes the clone's name in the registry first, so that nothing starts under it
// while its directory goes.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "clone/template.hpp"
#include "vmm/base/error.hpp"

namespace vmm::clone {

/// Bytes allocated to the regular files under `dir` (st_blocks), as far as it can be read.
uint64_t allocated_bytes(const std::filesystem::path& dir);

struct CloneEntry {
  enum class State { Running, Stopped, Starting };
  std::string name;
  std::filesystem::path dir;
  State state = State::Stopped;
  int64_t pid = 0;                   ///< running: its process
  std::optional<CloneRecord> record;  ///< clone.json, when there is one and it reads
  uint64_t bytes = 0;                ///< allocated on disk, its directory's files
};
std::string_view state_name(CloneEntry::State state);

/// Every clone of `state_dir`, sorted by name.
std::vector<CloneEntry> list_clones(const std::filesystem::path& state_dir);

/// How remove_clone treats a clone that is not stopped.
enum class RemoveRunning { Refuse, Kill };
/// Removes the stopped clone `name` (its directory: overlays, console log, record). A running clone
/// is refused, or with Kill its process is killed (SIGKILL) and waited for; a starting one is
/// refused unless Kill (then its directory is removed as it is: a VM still starting under it, such
/// as a pool's member, loses its files).
Result<> remove_clone(const std::filesystem::path& state_dir, const std::string& name, RemoveRunning running);

/// Why remove_template refused or failed: kUsage (linked clones depend on it, one is starting
/// from it), kImage (not a template), kVmmError (the removal failed).
struct TemplateRemoval {
  int status;
  std::string message;
};
/// Removes the template `target` (a name in `state_dir`, or a path), refused while linked clones
/// depend on it or a clone is being made from it (it holds the template's lock, OpenTemplate::in_use)
/// unless `force`. Its directory is locked, checked and renamed aside under the lock, then removed
/// (vmm/base/dir_lock.hpp: bury), so that a clone starting meanwhile either is counted or finds it
/// gone, and an interrupted removal leaves nothing under the name. A template of the state
/// directory whose manifest is gone (a removal of an older vmm, cut short) is removed too.
std::optional<TemplateRemoval> remove_template(const std::filesystem::path& state_dir, const std::string& target, bool force);

}  // namespace vmm::clone
