// Parsers for device options on the command line: `--disk path=FILE[,readonly=on][,id=NAME]`.
// Comma-separated key=value pairs; unknown or repeated keys, empty values and bad booleans are
// errors that name the option and the problem.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "vmm/base/error.hpp"

namespace vmm {

struct DiskSpec {
  std::filesystem::path path;
  bool read_only = false;
  std::string id;  ///< the serial the guest reads (GET_ID), at most 20 bytes; default: disk<N>
};

/// Parses one --disk value.
Result<DiskSpec> parse_disk_spec(std::string_view text);

struct NetSpec {
  std::string tap;  ///< TAP interface name (created if missing)
  std::string mac;  ///< "52:54:00:..." or empty: a random locally administered address
};

/// Parses one --net value: tap=NAME[,mac=MAC] (the MAC's syntax is checked by the device).
Result<NetSpec> parse_net_spec(std::string_view text);

}  // namespace vmm
