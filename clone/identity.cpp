#include "clone/identity.hpp"

#include <sys/random.h>

#include <ctime>

namespace vmm::clone {

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
  return i;
}

std::string generation_hex(const Identity& identity) { return hex(identity.generation.data(), identity.generation.size()); }

std::vector<std::pair<std::string, std::string>> identity_pairs(const Identity& identity) {
  std::vector<std::pair<std::string, std::string>> kv = {
      {"id", identity.id}, {"name", identity.name}, {"generation", generation_hex(identity)}};
  for (size_t i = 0; i < identity.macs.size(); ++i) kv.emplace_back(fmt::format("mac{}", i), identity.macs[i]);
  if (!identity.hostname.empty()) kv.emplace_back("hostname", identity.hostname);
  if (!identity.ip.empty()) kv.emplace_back("ip", identity.ip);
  kv.emplace_back("time", std::to_string(std::time(nullptr)));
  return kv;
}

}  // namespace vmm::clone
