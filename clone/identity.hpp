// A machine's identity: what makes a clone a new machine. A clone id, a VM generation ID (written
// where the guest's vmgenid driver reads it, devices/vmgenid.hpp), a MAC per interface, and the
// hostname and IP asked for; all of it readable by the guest through fw_cfg's opt/vmm/identity
// (devices/fw_cfg.hpp) as "key=value" lines: id, name, generation, mac0.., hostname, ip, time.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "devices/vmgenid.hpp"
#include "vmm/base/error.hpp"

namespace vmm::clone {

struct Identity {
  std::string id;                      ///< 32 hex digits, random
  std::string name;                    ///< the VM's name
  devices::VmGenId::Id generation{};   ///< random, new for every clone
  std::vector<std::string> macs;       ///< per interface, "02:..."
  std::string hostname, ip;            ///< as given (empty: not set)
};

/// `bytes` random bytes as lowercase hex (getrandom).
std::string random_hex(size_t bytes);
/// A fresh identity: a new id and generation.
Identity new_identity(std::string name);
/// The generation as 32 hex digits.
std::string generation_hex(const Identity& identity);
/// The fw_cfg identity file's pairs (the current time included).
std::vector<std::pair<std::string, std::string>> identity_pairs(const Identity& identity);

}  // namespace vmm::clone
