// libFuzzer target for the supported-CPUID cache file (vmm/kvm_cache.hpp, decode_cpuid_cache).
// Built by clang only (tests/fuzz/fuzz.cmake, scripts/fuzz-kvm-cache.sh) with
// -fsanitize=fuzzer,address,undefined. Must never crash, hang or leak.
//
// Each input is a whole cache file, decoded twice: as it is, for the key it names (the bytes after
// its key length, when there are that many), and with its trailing CRC-32C made right, so that the
// fuzzer reaches the fields behind the checksum. An accepted file must be canonical: encoding its
// entries again under its key gives the very same bytes. A file is never accepted for another key.
//
// VMM_KVM_CACHE_FUZZ_MAKE_SEEDS=DIR writes a few well-formed files to DIR and exits.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include "vmm/base/crc32c.hpp"
#include "vmm/kvm_cache.hpp"

namespace {

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "kvm_cache_fuzz: %s\n", what);
  std::abort();
}

/// The key a file names: the bytes after its u32 key length at offset 12, or "" when it is short.
std::string key_of(std::span<const uint8_t> b) {
  if (b.size() < 16) return {};
  uint32_t n = 0;
  std::memcpy(&n, b.data() + 12, sizeof n);
  if (n > b.size() - 16) return {};
  return std::string(reinterpret_cast<const char*>(b.data() + 16), n);
}

void check(std::span<const uint8_t> bytes) {
  const std::string key = key_of(bytes);
  auto r = vmm::decode_cpuid_cache(bytes, key);
  if (!r) return;
  if (r->empty() || r->size() > vmm::kMaxCachedCpuid) die("an accepted file has no entries or too many");
  const auto again = vmm::encode_cpuid_cache(key, *r);
  if (again.size() != bytes.size() || std::memcmp(again.data(), bytes.data(), bytes.size()) != 0) die("not canonical");
  if (vmm::decode_cpuid_cache(bytes, key + "x")) die("accepted for another key");
}

void make_seeds(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  int i = 0;
  for (size_t n : {1, 3, 60}) {
    vmm::CpuidEntries e(n);
    for (size_t j = 0; j < n; ++j) {
      e[j].function = static_cast<uint32_t>(j);
      e[j].eax = static_cast<uint32_t>(j * 0x01010101u);
    }
    const auto b = vmm::encode_cpuid_cache(i == 1 ? "boot=x node=1:2:3.4 modules=5,-,6 microcode=0x1" : "k", e);
    std::ofstream(dir / ("seed-" + std::to_string(i++)), std::ios::binary)
        .write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  }
  std::printf("seeds in %s\n", dir.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* seeds = std::getenv("VMM_KVM_CACHE_FUZZ_MAKE_SEEDS")) {
    make_seeds(seeds);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> bytes(data, size);
  check(bytes);
  if (size >= 4) {
    std::vector<uint8_t> sealed(data, data + size);
    const uint32_t crc = vmm::crc32c(0, std::span(sealed).first(size - 4));
    std::memcpy(sealed.data() + size - 4, &crc, sizeof crc);
    check(sealed);
  }
  return 0;
}
