// A temporary directory for a test, removed with everything in it (read-only files included) when
// the test ends.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <string>

namespace vmm::test {

struct TempDir {
  std::filesystem::path path;
  explicit TempDir(const std::string& what = "vmm-test") {
    std::string t = "/tmp/" + what + ".XXXXXX";
    if (::mkdtemp(t.data()) != nullptr) path = t;
  }
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
