#include "vmm/base/dir_lock.hpp"

#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <string_view>

#include "vmm/base/dir_entries.hpp"

namespace vmm {

namespace fs = std::filesystem;

namespace {

/// ".NAME.rm-PID-N": a hidden name no template, clone or draft has (names do not start with '.';
/// a draft's ends in ".tmp-XXXXXX").
bool is_tomb(std::string_view n) {
  if (n.size() < 2 || n.front() != '.') return false;
  auto digits = [](std::string_view v) { return !v.empty() && v.find_first_not_of("0123456789") == std::string_view::npos; };
  const size_t dash = n.rfind('-');
  if (dash == std::string_view::npos || !digits(n.substr(dash + 1))) return false;
  const size_t rm = n.rfind(".rm-", dash);
  return rm != std::string_view::npos && rm > 1 && digits(n.substr(rm + 4, dash - rm - 4));
}

/// ".NAME.tmp-XXXXXX" (mkdtemp's six characters).
bool is_draft(std::string_view n) {
  return n.size() > 12 && n.front() == '.' && n.substr(n.size() - 11, 5) == ".tmp-";
}

}  // namespace

Result<DirLock> lock_dir(const fs::path& dir, int operation, bool follow) {
  DirLock l{.fd = Fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC | (follow ? 0 : O_NOFOLLOW))), .busy = false};
  if (!l.fd) return fail("{}: {}", dir.string(), errno_text(errno));
  while (operation != 0 && ::flock(l.fd.get(), operation) != 0) {
    if (errno == EINTR) continue;
    if (errno == EWOULDBLOCK) return DirLock{.fd = Fd(), .busy = true};
    return fail("{}: cannot lock: {}", dir.string(), errno_text(errno));
  }
  return l;
}

bool still_at(int fd, const fs::path& dir, bool follow) {
  struct stat a {}, b {};
  return ::fstat(fd, &a) == 0 && (follow ? ::stat(dir.c_str(), &b) : ::lstat(dir.c_str(), &b)) == 0 && a.st_dev == b.st_dev &&
         a.st_ino == b.st_ino;
}

Result<> bury(const fs::path& dir, const Fd& locked) {
  static std::atomic<unsigned> serial{0};
  const fs::path tomb = dir.parent_path() / fmt::format(".{}.rm-{}-{}", dir.filename().string(), ::getpid(), serial.fetch_add(1));
  if (!still_at(locked.get(), dir)) return fail("{}: changed while it was being removed", dir.string());
  if (::renameat2(AT_FDCWD, dir.c_str(), AT_FDCWD, tomb.c_str(), RENAME_NOREPLACE) != 0) {
    return fail("{}: cannot remove: {}", dir.string(), errno_text(errno));
  }
  std::error_code ec;
  fs::remove_all(tomb, ec);
  if (ec) return fail("{}: removed from its place, but {} is left: {}", dir.string(), tomb.string(), ec.message());
  return {};
}

void sweep_tombs(const fs::path& parent, bool drafts_too) {
  const auto now = fs::file_time_type::clock::now();
  for (const auto& e : dir_entries(parent)) {
    const std::string n = e.path().filename().string();
    const bool tomb = is_tomb(n);
    if (!tomb && !(drafts_too && is_draft(n))) continue;
    std::error_code sec;
    if (!e.is_directory(sec)) continue;
    // A draft, between its mkdtemp and its lock, is free: only an old one is taken for dead.
    if (!tomb && now - fs::last_write_time(e.path(), sec) < std::chrono::minutes(1)) continue;
    auto l = lock_dir(e.path(), LOCK_EX | LOCK_NB);
    if (l && !l->busy) fs::remove_all(e.path(), sec);
  }
}

}  // namespace vmm
