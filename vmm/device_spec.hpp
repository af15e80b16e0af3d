// Parsers for device options on the command line: `--disk path=FILE[,readonly=on][,id=NAME]`.
// Comma-separated key=value pairs; unknown or repeated keys, empty values and bad booleans are
// errors that name the option and the problem.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "vmm/base/error.hpp"

namespace vmm {

/// How many disks and network interfaces a VM may have (the command line's and a template's limit).
inline constexpr size_t kMaxDisks = 16;
inline constexpr size_t kMaxNets = 8;

struct DiskSpec {
  std::filesystem::path path;
  bool read_only = false;
  std::string id;  ///< the serial the guest reads (GET_ID), at most 20 bytes; default: disk<N>
  /// "raw" or "qcow2"; empty: read from the content (disk::OpenOptions::format).
  std::string format{};
  /// (A clone's overlay) the file its backing file must be: the template disk checked before.
  std::optional<std::pair<uint64_t, uint64_t>> backing_must_be{};
};

/// Parses one --disk value.
Result<DiskSpec> parse_disk_spec(std::string_view text);

struct NetSpec {
  std::string tap;     ///< TAP interface name (created if missing)
  std::string mac;     ///< "52:54:00:..." or empty: a random locally administered address
  std::string bridge;  ///< a bridge the TAP joins (empty: none)
  std::string netns;   ///< a network namespace of the VM's own that holds the TAP (empty: the host's)
};

/// Parses one --net value: tap=NAME[,mac=MAC][,bridge=BR][,netns=NAME] (the MAC's syntax is
/// checked by the device; names may hold the patterns {name} and {i}, see expand_pattern).
Result<NetSpec> parse_net_spec(std::string_view text);

/// `pattern` with {name} and {i} replaced by the VM's name and its index in a fleet (1 otherwise).
std::string expand_pattern(std::string pattern, const std::string& name, unsigned index);
/// A NetSpec's names (tap, bridge, netns) expanded; each must then fit an interface name (15 bytes).
Result<NetSpec> expand_net(const NetSpec& spec, const std::string& name, unsigned index);
/// For many VMs from one spec (a fleet, a pool): fails unless each VM gets its own TAP, or its
/// own namespace where it has one (a pattern without {name} or {i}).
Result<> check_net_per_vm(const NetSpec& spec);

}  // namespace vmm
