// A temporary directory for a test, removed with everything in it (read-only files included) when
// the test ends.
#pragma once

#include <stdlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace vmm::test {

struct TempDir {
  std::filesystem::path path;
  /// Under $TMPDIR (or /tmp), named WHAT.XXXXXX; throws (the test fails) if it cannot be made.
  explicit TempDir(const std::string& what = "vmm-test") {
    std::string t = (std::filesystem::temp_directory_path() / (what + ".XXXXXX")).string();
    if (::mkdtemp(t.data()) == nullptr) throw std::runtime_error("cannot make the directory " + t + ": " + std::strerror(errno));
    path = t;
  }
  std::filesystem::path operator/(const std::string& name) const { return path / name; }
  ~TempDir() {
    if (path.empty()) return;
    std::error_code ec;
    for (const auto& e : std::filesystem::recursive_directory_iterator(path, ec)) {
      if (!e.is_symlink(ec)) std::filesystem::permissions(e.path(), std::filesystem::perms::owner_all, std::filesystem::perm_options::add, ec);
    }
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

}  // namespace vmm::test
