#include "vmm/state_dir.hpp"

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <string>
#include <string_view>

#include <fmt/core.h>

#include "vmm/base/error.hpp"
#include "vmm/exit_status.hpp"

namespace vmm {

namespace fs = std::filesystem;

namespace {
/// Absolute: a relative one would name other places once written into a file read elsewhere (a
/// clone's overlay names its template disk relative to the overlay's own directory, so a linked
/// clone of a template with disks could not open them).
fs::path absolute(const fs::path& p) {
  std::error_code ec;
  fs::path a = fs::absolute(p, ec);
  return ec ? p : a;
}
}  // namespace

fs::path resolve_state_dir(const std::string& given) {
  if (!given.empty()) return absolute(given);
  if (const char* e = std::getenv("VMM_STATE_DIR"); e && *e) return absolute(e);
  if (::geteuid() == 0) return "/var/lib/vmm";
  if (auto dir = user_state_dir(std::getenv("XDG_STATE_HOME"), std::getenv("HOME"), nullptr); !dir.empty()) return dir;
  // Without a usable HOME (a service's environment), the home directory the user database gives
  // (looked up only then: a directory service can be slow, and every VM's start would wait for it).
  if (const passwd* pw = ::getpwuid(::geteuid()); pw) {
    if (auto dir = user_state_dir(nullptr, nullptr, pw->pw_dir); !dir.empty()) return dir;
  }
  // A fixed path in /tmp, which every user can create first, is the last resort, named after the
  // user. That path may be someone else's (a symlink, a directory they made first, open to them): used
  // only once it is a directory of this user's that nobody else can enter.
  const fs::path last = fs::path("/tmp") / ("vmm-state-" + std::to_string(::geteuid()));
  if (auto why = unsafe_private_dir(last)) {
    fmt::print(stderr, "vmm: {}: {}: give --state-dir or VMM_STATE_DIR\n", last.string(), *why);
    std::exit(exit_code::kUsage);
  }
  return last;
}

fs::path user_state_dir(const char* xdg_state_home, const char* home, const char* passwd_home) {
  auto usable = [](const char* p) { return p && *p == '/'; };
  if (usable(xdg_state_home)) return fs::path(xdg_state_home) / "vmm";
  for (const char* h : {home, passwd_home}) {
    if (usable(h) && fs::path(h).lexically_normal() != "/") return fs::path(h) / ".local/state/vmm";
  }
  return {};
}

std::optional<std::string> unsafe_private_dir(const fs::path& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return fmt::format("cannot create: {}", errno_text(errno));
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) return fmt::format("cannot stat: {}", errno_text(errno));
  if (S_ISLNK(st.st_mode)) return std::string("a symbolic link, not a directory of this user's");
  if (!S_ISDIR(st.st_mode)) return std::string("not a directory");
  if (st.st_uid != ::geteuid()) return fmt::format("owned by uid {}, not this user ({})", st.st_uid, ::geteuid());
  if ((st.st_mode & 077) != 0) return fmt::format("mode {:04o}: other users can enter it", st.st_mode & 07777);
  return std::nullopt;
}

bool valid_name(std::string_view name) {
  if (name.empty() || name.size() > 64 || name.front() == '.') return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) return false;
  }
  return true;
}

}  // namespace vmm
