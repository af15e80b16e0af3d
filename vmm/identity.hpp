// A machine's identity: what makes a clone a new machine. A clone id, a VM generation ID (written
// where the guest's vmgenid driver reads it, devices/vmgenid.hpp), a MAC per interface, and the
// hostname, IP and gateway asked for, and fresh random bytes for the guest's RNG; all of it readable
// by the guest through fw_cfg's opt/vmm/identity (devices/fw_cfg.hpp) as "key=value" lines: id, name,
// generation, mac0.., hostname, ip, gateway, seed, time, time_ms. The guest side that applies it is
// guest-images/linux/vmm-agent, which validates every value again (it trusts the host no more than
// the host trusts it).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "devices/vmgenid.hpp"
#include "vmm/base/error.hpp"

namespace vmm {

struct Identity {
  std::string id;                      ///< 32 hex digits, random
  std::string name;                    ///< the VM's name
  devices::VmGenId::Id generation{};   ///< random, new for every clone
  std::vector<std::string> macs;       ///< per interface, "02:..."
  std::string hostname, ip, gateway;   ///< as given (empty: not set); ip is A.B.C.D/P or "dhcp"
  std::string seed;                    ///< 64 hex digits, random, for the guest's RNG
};

/// The checks of --hostname, --ip and --gateway (one-line errors naming the option):
/// a hostname is RFC 1123 (labels of letters, digits and '-', not at either end, 1..63 bytes each,
/// 64 bytes in all); an IP is A.B.C.D with an optional /PREFIX (0..32; default 24) or "dhcp",
/// returned normalised (always with its prefix); a gateway is A.B.C.D. Leading zeros are refused
/// (010 is octal to some parsers and decimal to others).
Result<> check_hostname(std::string_view hostname);
Result<std::string> check_ip(std::string_view ip);
Result<> check_gateway(std::string_view gateway);
/// Refuses `count` consecutive addresses from `ip` (a checked --ip, or dhcp) that take in the
/// `gateway`'s (a checked one, or none): a clone would answer for its network's router; and a
/// gateway outside the addresses' network: no route can go through it.
Result<> check_ip_gateway(std::string_view ip, uint32_t count, std::string_view gateway);
/// The IPv4 address `k` after `ip` (A.B.C.D/P, same prefix): the addresses of a fleet's clones.
/// Fails past 255.255.255.255 or outside the prefix's network.
Result<std::string> ip_plus(std::string_view ip, uint32_t k);
/// Parses A.B.C.D (no prefix) into a host-order address.
Result<uint32_t> parse_ipv4(std::string_view text);
std::string format_ipv4(uint32_t address);

/// `bytes` random bytes as lowercase hex (getrandom).
std::string random_hex(size_t bytes);
/// A fresh identity: a new id, generation and seed.
Identity new_identity(std::string name);
/// The generation as 32 hex digits.
std::string generation_hex(const Identity& identity);
/// The fw_cfg identity file's pairs (the current time included).
std::vector<std::pair<std::string, std::string>> identity_pairs(const Identity& identity);

}  // namespace vmm
