#include "vmm/identity.hpp"

#include <sys/random.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <ctime>

namespace vmm {

namespace {

void fill_random(uint8_t* p, size_t n) {
  while (n) {
    const ssize_t got = ::getrandom(p, n, 0);
    if (got <= 0) continue;  // EINTR; getrandom does not fail otherwise once the pool is ready
    p += got;
    n -= static_cast<size_t>(got);
  }
}

std::string hex(const uint8_t* p, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) s += fmt::format("{:02x}", p[i]);
  return s;
}

}  // namespace

std::string random_hex(size_t bytes) {
  std::vector<uint8_t> b(bytes);
  fill_random(b.data(), b.size());
  return hex(b.data(), b.size());
}

Identity new_identity(std::string name) {
  Identity i;
  i.id = random_hex(16);
  i.name = std::move(name);
  fill_random(i.generation.data(), i.generation.size());
  i.seed = random_hex(32);
  return i;
}

std::string generation_hex(const Identity& identity) { return hex(identity.generation.data(), identity.generation.size()); }

std::vector<std::pair<std::string, std::string>> identity_pairs(const Identity& identity) {
  std::vector<std::pair<std::string, std::string>> kv = {
      {"id", identity.id}, {"name", identity.name}, {"generation", generation_hex(identity)}};
  for (size_t i = 0; i < identity.macs.size(); ++i) kv.emplace_back(fmt::format("mac{}", i), identity.macs[i]);
  if (!identity.hostname.empty()) kv.emplace_back("hostname", identity.hostname);
  if (!identity.ip.empty()) kv.emplace_back("ip", identity.ip);
  if (!identity.gateway.empty()) kv.emplace_back("gateway", identity.gateway);
  if (!identity.seed.empty()) kv.emplace_back("seed", identity.seed);
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  kv.emplace_back("time", std::to_string(std::chrono::duration_cast<std::chrono::seconds>(now).count()));
  kv.emplace_back("time_ms", std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(now).count()));
  return kv;
}

Result<uint32_t> parse_ipv4(std::string_view text) {
  uint32_t out = 0;
  size_t at = 0;
  for (int part = 0; part < 4; ++part) {
    const size_t end = part < 3 ? text.find('.', at) : text.size();
    if (end == std::string_view::npos) return fail("'{}' is not an IPv4 address (A.B.C.D)", text);
    const std::string_view num = text.substr(at, end - at);
    unsigned v = 0;
    auto [p, ec] = std::from_chars(num.data(), num.data() + num.size(), v);
    if (num.empty() || num.size() > 3 || ec != std::errc() || p != num.data() + num.size() || v > 255 ||
        (num.size() > 1 && num[0] == '0')) {
      return fail("'{}' is not an IPv4 address (A.B.C.D, each 0..255 without leading zeros)", text);
    }
    out = out << 8 | v;
    at = end + 1;
  }
  return out;
}

std::string format_ipv4(uint32_t a) { return fmt::format("{}.{}.{}.{}", a >> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255); }

Result<> check_hostname(std::string_view h) {
  if (h.empty() || h.size() > 64) return fail("--hostname '{}': 1 to 64 characters", h);
  size_t at = 0;
  while (at <= h.size()) {
    const size_t end = std::min(h.find('.', at), h.size());
    const std::string_view label = h.substr(at, end - at);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') {
      return fail("--hostname '{}': each dot-separated label is 1 to 63 characters, not starting or ending with '-'", h);
    }
    for (char c : label) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-') {
        return fail("--hostname '{}': use letters, digits, '-' and '.' (RFC 1123)", h);
      }
    }
    // RFC 1123 2.1: never the form of an address (1.2.3.4): the last of several labels is not all digits.
    if (end == h.size() && at > 0 && std::ranges::all_of(label, [](char c) { return c >= '0' && c <= '9'; })) {
      return fail("--hostname '{}': its last label is all digits, an address's form, not a name's (RFC 1123)", h);
    }
    at = end + 1;
  }
  return {};
}

namespace {

/// An address a host on a network can have: not 0.x (this network), 127.x (loopback), 224.x and
/// up (multicast, reserved, broadcast). vmm-agent refuses an identity with any other, and applies
/// nothing of it (identity.c's parse_addr): refused here, so that a clone is never given one.
Result<> check_unicast(uint32_t a) {
  const unsigned first = a >> 24;
  if (first == 0 || first == 127 || first >= 224) return fail("not an address an interface can have (0.x, 127.x, 224.x and up are not)");
  return {};
}

}  // namespace

Result<std::string> check_ip(std::string_view ip) {
  if (ip == "dhcp") return std::string(ip);
  const size_t slash = ip.find('/');
  auto a = parse_ipv4(ip.substr(0, slash));
  if (!a) return fail("--ip {}: {}", ip, a.error().message());
  if (auto r = check_unicast(*a); !r) return fail("--ip {}: {}", ip, r.error().message());
  unsigned prefix = 24;
  if (slash != std::string_view::npos) {
    const std::string_view p = ip.substr(slash + 1);
    auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), prefix);
    if (p.empty() || p.size() > 2 || ec != std::errc() || end != p.data() + p.size() || prefix > 32 || (p.size() > 1 && p[0] == '0')) {
      return fail("--ip {}: the prefix after '/' is 0 to 32", ip);
    }
  }
  // On a network of more than two addresses its first names the network and its last is the
  // broadcast: neither is a host's (RFC 919, 3021: a /31 and a /32 have no such addresses).
  if (prefix <= 30) {
    const uint32_t host_bits = ~uint32_t{0} >> prefix;
    if ((*a & host_bits) == 0) return fail("--ip {}: the address of its /{} network itself, not of a host on it", ip, prefix);
    if ((*a & host_bits) == host_bits) return fail("--ip {}: the broadcast address of its /{} network, not a host's", ip, prefix);
  }
  return fmt::format("{}/{}", format_ipv4(*a), prefix);
}

Result<> check_ip_gateway(std::string_view ip, uint32_t count, std::string_view gateway) {
  if (ip == "dhcp" || gateway.empty() || count == 0) return {};
  auto a = parse_ipv4(ip.substr(0, ip.find('/')));
  auto g = parse_ipv4(gateway);
  if (!a || !g) return {};  // (checked by check_ip and check_gateway)
  if (*g >= *a && uint64_t{*g} - *a < count) {
    return fail("--ip {}: {} the gateway's address ({})", ip, count == 1 ? "is" : fmt::format("the {} addresses from it take in", count), gateway);
  }
  // A default route is through a neighbour: Linux refuses one via an address off every network
  // the guest is on (ENETUNREACH), and the agent would fail to apply the identity. (The range stays
  // in the first address's network: ip_plus.)
  const size_t slash = ip.find('/');
  unsigned prefix = 24;
  if (slash != std::string_view::npos) std::from_chars(ip.data() + slash + 1, ip.data() + ip.size(), prefix);
  const uint32_t mask = prefix == 0 ? 0 : ~uint32_t{0} << (32 - std::min(prefix, 32u));
  if ((*g & mask) != (*a & mask)) {
    return fail("--gateway {}: not on the /{} network of --ip {} (the guest could not route through it)", gateway, prefix, ip);
  }
  return {};
}

Result<> check_gateway(std::string_view gateway) {
  auto a = parse_ipv4(gateway);
  if (!a) return fail("--gateway {}: {}", gateway, a.error().message());
  if (auto r = check_unicast(*a); !r) return fail("--gateway {}: {}", gateway, r.error().message());
  return {};
}

Result<std::string> ip_plus(std::string_view ip, uint32_t k) {
  auto norm = check_ip(ip);
  if (!norm) return norm;
  if (*norm == "dhcp") return norm;
  const size_t slash = norm->find('/');
  const uint32_t a = *parse_ipv4(std::string_view(*norm).substr(0, slash));
  const unsigned prefix = static_cast<unsigned>(std::stoul(norm->substr(slash + 1)));
  const uint64_t next = uint64_t{a} + k;
  const uint32_t mask = prefix == 0 ? 0 : ~uint32_t{0} << (32 - prefix);
  if (next > 0xffffffffull || (static_cast<uint32_t>(next) & mask) != (a & mask)) {
    return fail("--ip {}: {} addresses from it leave its /{} network", ip, k + 1, prefix);
  }
  return check_ip(fmt::format("{}/{}", format_ipv4(static_cast<uint32_t>(next)), prefix));
}

}  // namespace vmm
