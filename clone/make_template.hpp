// Writing a template: `vmm template create` (boot a guest, wait for its console to print the
// ready text, pause, quiesce, save) and the draft that it and a live VM's snapshot (clone/live.hpp)
// write into: a hidden temporary directory renamed at the end, so that no failure leaves half a
// template behind.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "clone/template.hpp"
#include "vmm/base/fd.hpp"
#include "vmm/setup.hpp"

namespace vmm::clone {

struct TemplateCreateOptions {
  std::string dir;       ///< a name (state_dir/templates/NAME) or a path
  std::string ready_on;  ///< console text that means "ready"
  double timeout_s = 60;
  BootOptions run;
  std::string state_dir;
};

/// `vmm template create`: returns the exit status.
int create_template(const TemplateCreateOptions& options);
/// A template's directory for DIR given as a name (STATE_DIR/templates/NAME) or as a path.
Result<std::filesystem::path> template_path(const std::string& state_dir, const std::string& dir);
/// A template being written: everything goes into a hidden temporary directory beside the
/// destination, renamed at the end (seal_template), so that a failure leaves no half-written
/// template: the directory is removed unless sealed.
struct TemplateDraft {
  std::filesystem::path dest, tmp;
  Fd lock;  ///< LOCK_EX on tmp while it is a draft: a draft whose lock is free is a dead one's (sweep_tombs)
  bool sealed = false;
  ~TemplateDraft();
};
/// Resolves DIR (a name or a path), refuses an existing destination, makes the temporary directory
/// (with disks/ in it).
std::expected<std::unique_ptr<TemplateDraft>, Failure> begin_template(const std::string& state_dir, const std::string& dir);
/// The end of writing a template: sums its disks into `m`, writes manifest.json, makes every file
/// read-only and renames the draft to its destination.
Result<> seal_template(TemplateDraft& draft, Manifest& m);

}  // namespace vmm::clone
