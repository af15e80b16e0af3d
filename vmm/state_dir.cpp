#include "vmm/state_dir.hpp"

#include <unistd.h>

#include <cctype>
#include <cstdlib>

namespace vmm {

namespace fs = std::filesystem;

fs::path resolve_state_dir(const std::string& given) {
  if (!given.empty()) return given;
  if (const char* e = std::getenv("VMM_STATE_DIR"); e && *e) return e;
  if (::geteuid() == 0) return "/var/lib/vmm";
  if (const char* x = std::getenv("XDG_STATE_HOME"); x && *x) return fs::path(x) / "vmm";
  if (const char* h = std::getenv("HOME"); h && *h) return fs::path(h) / ".local/state/vmm";
  return "/tmp/vmm-state";
}

bool valid_name(std::string_view name) {
  if (name.empty() || name.size() > 64 || name.front() == '.') return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) return false;
  }
  return true;
}

}  // namespace vmm
