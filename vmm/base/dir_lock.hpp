// Directories that a name stands for (a template, a clone), locked and removed so that concurrent
// commands and a removal cut short (kill -9, Ctrl-C) cannot harm what another process made under
// the same name since: a lock on the directory itself (flock: it holds whatever the directory is
// renamed to, and goes with the last process holding the descriptor, fork children included), and
// a removal that first renames the directory to a hidden "tomb" beside it, so that the name is free
// at once and a half-removed directory never stands under it.
#pragma once

#include <filesystem>

#include "vmm/base/error.hpp"
#include "vmm/base/fd.hpp"

namespace vmm {

/// A directory open and locked, or (`busy`) not locked: a LOCK_NB lock that another process holds.
struct DirLock {
  Fd fd;
  bool busy = false;
};
/// `dir` opened (a symbolic link in its last component followed only if `follow`) and locked with
/// `operation` (LOCK_SH or LOCK_EX, with LOCK_NB or not; 0: opened only).
Result<DirLock> lock_dir(const std::filesystem::path& dir, int operation, bool follow = false);
/// Whether `dir` (followed if `follow`) is still the directory open as `fd` (not removed or
/// renamed, nothing else in its place).
bool still_at(int fd, const std::filesystem::path& dir, bool follow = false);
/// Removes `dir`, which the caller holds open as `locked` with LOCK_EX: renamed to a tomb
/// (".NAME.rm-PID-N" beside it), then removed with the lock held. The name is free when this
/// returns, even if removing the tomb failed (which is said).
Result<> bury(const std::filesystem::path& dir, const Fd& locked);
/// Removes the tombs in `parent` whose remover died (their lock is free), and, when `drafts_too`,
/// the drafts (".NAME.tmp-XXXXXX", made by mkdtemp and held locked while written) that are free
/// and older than a minute.
void sweep_tombs(const std::filesystem::path& parent, bool drafts_too = false);

}  // namespace vmm
