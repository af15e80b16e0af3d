// Reading a small file whole (a manifest, a state file): sized by fstat, never more than a limit.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <string_view>

#include "vmm/base/error.hpp"

namespace vmm {

/// The whole of the regular file `path`, refused when it is larger than `max_bytes` ("PATH: N bytes
/// is over the WHAT limit of M MiB", `what` naming the kind of file). The buffer is
/// sized by the file, not by the limit (a 1 MiB buffer for a 600-byte manifest cost ~0.7 ms of page
/// faults on every clone's start); a file that grows while it is read is refused too.
Result<std::string> read_file(const std::filesystem::path& path, size_t max_bytes, std::string_view what);
/// The same for an open file (read from its start; `path` names it in messages).
Result<std::string> read_file(int fd, const std::filesystem::path& path, size_t max_bytes, std::string_view what);

}  // namespace vmm
