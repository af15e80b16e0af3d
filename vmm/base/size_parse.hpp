// Parsing of memory sizes given on the command line ("256M", "1G", "512", "64MiB").
#pragma once

#include <cstdint>
#include <string_view>

#include "vmm/base/error.hpp"

namespace vmm {

/// Parses a size: digits, then an optional unit K/M/G/T (also KiB/MiB/GiB/TiB, any case); a bare
/// number means MiB. Rejects empty strings, junk, and values that overflow 64 bits.
Result<uint64_t> parse_size(std::string_view text);

}  // namespace vmm
