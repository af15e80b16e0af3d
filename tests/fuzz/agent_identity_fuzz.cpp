// libFuzzer target for vmm-agent's identity parser (guest-images/linux/vmm-agent/identity.c): the
// guest's view of a file written by an untrusted host. Built by clang only (tests/fuzz/fuzz.cmake,
// scripts/fuzz-agent-identity.sh) with -fsanitize=fuzzer,address,undefined. Must never crash, hang
// or read outside its input.
//
// Each input is parsed twice: as it is (any size: all but 1024 bytes are refused) and NUL-padded or
// cut to 1024 bytes (so the fuzzer explores the text rather than the size check). A refusal must
// leave the output zeroed with a one-line printable reason. An accepted file must hold only values
// of the grammar (checked again here, independently) and must round-trip: the identity written out
// as a canonical file parses back to the same identity.
//
// VMM_AGENT_IDENTITY_FUZZ_MAKE_SEEDS=DIR writes a few canonical files (unpadded) to DIR and exits;
// hand-written ones are committed in tests/fuzz/agent-identity-seeds/.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "vmm-agent/identity.h"

namespace {

[[noreturn]] void die(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "agent_identity_fuzz: %s%s%s\n", what, detail.empty() ? "" : ": ", detail.c_str());
  std::abort();
}

bool lhex(const char* s, size_t n) {
  if (std::strlen(s) != n) return false;
  for (size_t i = 0; i < n; ++i)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
  return true;
}

bool charset(const char* s, const char* extra) {
  for (; *s; ++s) {
    const char c = *s;
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || std::strchr(extra, c))) return false;
  }
  return true;
}

std::string quad(const unsigned char a[4]) {
  return std::to_string(a[0]) + "." + std::to_string(a[1]) + "." + std::to_string(a[2]) + "." + std::to_string(a[3]);
}

bool unicast(const unsigned char a[4]) { return a[0] != 0 && a[0] != 127 && a[0] < 224; }

/// The identity as a canonical file text (keys in a fixed order, unpadded).
std::string canonical(const vmm_identity& id) {
  std::string t;
  if (id.has_id) t += std::string("id=") + id.id + "\n";
  if (id.has_name) t += std::string("name=") + id.name + "\n";
  t += std::string("generation=") + id.generation + "\n";
  for (int i = 0; i < VMM_IDENTITY_MAX_MACS; ++i) {
    if (!id.has_mac[i]) continue;
    char m[40];
    std::snprintf(m, sizeof m, "mac%d=%02x:%02x:%02x:%02x:%02x:%02x\n", i, id.mac[i][0], id.mac[i][1], id.mac[i][2],
                  id.mac[i][3], id.mac[i][4], id.mac[i][5]);
    t += m;
  }
  if (id.has_hostname) t += std::string("hostname=") + id.hostname + "\n";
  if (id.ip_mode == VMM_IP_DHCP) t += "ip=dhcp\n";
  if (id.ip_mode == VMM_IP_STATIC) t += "ip=" + quad(id.ip) + "/" + std::to_string(id.prefix) + "\n";
  if (id.has_gateway) t += "gateway=" + quad(id.gateway) + "\n";
  if (id.has_seed) {
    t += "seed=";
    for (unsigned char b : id.seed) {
      char h[3];
      std::snprintf(h, sizeof h, "%02x", b);
      t += h;
    }
    t += "\n";
  }
  if (id.has_time) t += "time=" + std::to_string(id.time) + "\n";
  if (id.has_time_ms) t += "time_ms=" + std::to_string(id.time_ms) + "\n";
  return t;
}

void check_accepted(const vmm_identity& id, const std::string& input) {
  if (!lhex(id.generation, 32)) die("accepted a bad generation", input);
  if (id.has_id && !lhex(id.id, 32)) die("accepted a bad id", input);
  if (id.has_name && (!*id.name || !charset(id.name, "._-"))) die("accepted a bad name", input);
  if (id.has_hostname) {
    const std::string h = id.hostname;
    if (h.empty() || h.size() > 64 || !charset(id.hostname, ".-") || h.front() == '-' || h.back() == '-' ||
        h.front() == '.' || h.back() == '.' || h.find("..") != std::string::npos || h.find("-.") != std::string::npos ||
        h.find(".-") != std::string::npos)
      die("accepted a bad hostname", input);
  }
  for (int i = 0; i < VMM_IDENTITY_MAX_MACS; ++i) {
    if (!id.has_mac[i]) continue;
    const unsigned char* m = id.mac[i];
    if ((m[0] & 1) || (m[0] | m[1] | m[2] | m[3] | m[4] | m[5]) == 0) die("accepted a multicast or zero MAC", input);
  }
  if (id.ip_mode < VMM_IP_NONE || id.ip_mode > VMM_IP_DHCP) die("bad ip_mode");
  if (id.ip_mode == VMM_IP_STATIC && (id.prefix > 32 || !unicast(id.ip))) die("accepted a bad address", input);
  if (id.has_gateway && !unicast(id.gateway)) die("accepted a bad gateway", input);
  // Round trip through the canonical text.
  std::string text = canonical(id);
  if (text.size() >= VMM_IDENTITY_SIZE) die("canonical text too long", text);
  text.resize(VMM_IDENTITY_SIZE, '\0');
  vmm_identity again;
  char err[160];
  if (vmm_identity_parse(text.data(), text.size(), &again, err, sizeof err) != 0)
    die("the canonical text of an accepted identity is refused", std::string(err) + "\n" + text);
  if (canonical(again) != canonical(id)) die("round trip changed the identity", canonical(id));
}

void check(const char* data, size_t size) {
  vmm_identity id;
  char err[160];
  std::memset(err, 'x', sizeof err);
  const int r = vmm_identity_parse(data, size, &id, err, sizeof err);
  const std::string input(data, size);
  if (r == 0) {
    if (err[0] != '\0') die("accepted with a reason");
    check_accepted(id, input);
    return;
  }
  if (r != -1) die("status neither 0 nor -1");
  const auto* b = reinterpret_cast<const unsigned char*>(&id);
  for (size_t i = 0; i < sizeof id; ++i)
    if (b[i]) die("a refusal left data in the output");
  const size_t n = strnlen(err, sizeof err);
  if (n == 0 || n == sizeof err) die("a refusal without a terminated reason");
  for (size_t i = 0; i < n; ++i)
    if (err[i] < 0x20 || err[i] > 0x7e) die("a reason with an unprintable byte", err);
}

void make_seeds(const char* dir) {
  const char* gen = "generation=00112233445566778899aabbccddeeff\n";
  const std::string seeds[] = {
      gen,
      std::string("id=0123456789abcdef0123456789abcdef\nname=web-1\n") + gen +
          "mac0=02:00:00:00:00:01\nmac1=02:00:00:00:00:02\nhostname=web-1\nip=10.0.3.11/24\ngateway=10.0.3.1\n"
          "seed=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\ntime=1700000000\n"
          "time_ms=1700000000123\n",
      std::string(gen) + "ip=dhcp\nmac31=fe:ff:ff:ff:ff:ff\nfuture=x\n",
      std::string(gen) + "hostname=a.b-c.d\nip=1.0.0.0/0\n",
  };
  std::filesystem::create_directories(dir);
  int i = 0;
  for (const auto& s : seeds) std::ofstream(std::string(dir) + "/own-" + std::to_string(i++)) << s;
  std::printf("seeds in %s\n", dir);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("VMM_AGENT_IDENTITY_FUZZ_MAKE_SEEDS")) {
    make_seeds(dir);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // As it is: exactly that many bytes on the heap (ASan sees any read past them).
  check(reinterpret_cast<const char*>(data), size);
  // Padded or cut to the item's size.
  std::string padded(reinterpret_cast<const char*>(data), size < VMM_IDENTITY_SIZE ? size : VMM_IDENTITY_SIZE);
  padded.resize(VMM_IDENTITY_SIZE, '\0');
  check(padded.data(), padded.size());
  return 0;
}
