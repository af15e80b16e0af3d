// The entries of a directory, read whole before anything is done with them.
#pragma once

#include <filesystem>
#include <system_error>
#include <vector>

namespace vmm {

/// The entries of `dir` as far as they can be read (none if it cannot be opened). Rather than a
/// range-for over std::filesystem::directory_iterator, whose increment throws on a read error
/// (EIO, ESTALE on NFS) where no caller catches it: std::terminate, the process aborted. And a
/// caller may remove or add entries as it goes.
inline std::vector<std::filesystem::directory_entry> dir_entries(const std::filesystem::path& dir) {
  std::vector<std::filesystem::directory_entry> out;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) out.push_back(*it);
  return out;
}

}  // namespace vmm
