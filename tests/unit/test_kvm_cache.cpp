// The supported-CPUID cache (vmm/kvm_cache.hpp): every malformed file is ignored (never an error,
// never a crash): truncated at every length, any byte flipped, another key, magic or version, no
// entries, too many, bytes after the end; a well-formed one round-trips; the key names this host;
// writing goes through a temporary file and an unwritable place is not an error.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "vmm/base/crc32c.hpp"
#include "vmm/base/fd.hpp"
#include "vmm/kvm_cache.hpp"

namespace {

namespace fs = std::filesystem;
using vmm::CpuidEntries;

CpuidEntries sample() {
  CpuidEntries e;
  for (uint32_t f : {0u, 1u, 7u, 0xdu, 0x80000001u}) {
    kvm_cpuid_entry2 x{};
    x.function = f;
    x.eax = f * 3 + 1;
    x.ecx = 0xdeadbeef ^ f;
    e.push_back(x);
  }
  return e;
}

bool same(const CpuidEntries& a, const CpuidEntries& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(kvm_cpuid_entry2)) == 0;
}

/// `bytes` with its trailing CRC made right again (so that a test reaches the field it changed).
std::vector<uint8_t> resealed(std::vector<uint8_t> bytes) {
  const uint32_t crc = vmm::crc32c(0, std::span(bytes).first(bytes.size() - 4));
  std::memcpy(bytes.data() + bytes.size() - 4, &crc, 4);
  return bytes;
}

}  // namespace

TEST_CASE("kvm cache: a well-formed file round-trips, for its own key only") {
  const auto file = vmm::encode_cpuid_cache("key-1", sample());
  auto back = vmm::decode_cpuid_cache(file, "key-1");
  REQUIRE(back);
  CHECK(same(*back, sample()));
  CHECK_FALSE(vmm::decode_cpuid_cache(file, "key-2"));
  CHECK_FALSE(vmm::decode_cpuid_cache(file, "key-"));
  CHECK_FALSE(vmm::decode_cpuid_cache(file, ""));
}

TEST_CASE("kvm cache: malformed files are ignored") {
  const auto good = vmm::encode_cpuid_cache("k", sample());
  // Every truncation, and one byte more.
  for (size_t n = 0; n < good.size(); ++n) {
    CHECK_FALSE(vmm::decode_cpuid_cache(std::span(good).first(n), "k"));
  }
  auto longer = good;
  longer.push_back(0);
  CHECK_FALSE(vmm::decode_cpuid_cache(longer, "k"));
  CHECK_FALSE(vmm::decode_cpuid_cache(resealed(longer), "k"));  // a byte after the entries
  // Any byte flipped (the checksum, or what it covers).
  for (size_t i = 0; i < good.size(); ++i) {
    auto bad = good;
    bad[i] ^= 0x40;
    CHECK_FALSE(vmm::decode_cpuid_cache(bad, "k"));
  }
  // Fields wrong under a right checksum: magic, version, key length, entry count.
  auto magic = good;
  magic[0] = 'X';
  CHECK_FALSE(vmm::decode_cpuid_cache(resealed(magic), "k"));
  auto version = good;
  version[8] = 2;
  CHECK_FALSE(vmm::decode_cpuid_cache(resealed(version), "k"));
  auto keylen = good;
  keylen[12] = 0xff;
  keylen[13] = 0xff;
  CHECK_FALSE(vmm::decode_cpuid_cache(resealed(keylen), "k"));
  const size_t count_at = 8 + 4 + 4 + 1;
  auto count = good;
  const uint32_t huge = vmm::kMaxCachedCpuid + 1;
  std::memcpy(count.data() + count_at, &huge, 4);
  CHECK_FALSE(vmm::decode_cpuid_cache(resealed(count), "k"));
  const uint32_t one_more = static_cast<uint32_t>(sample().size() + 1);
  std::memcpy(count.data() + count_at, &one_more, 4);
  CHECK_FALSE(vmm::decode_cpuid_cache(resealed(count), "k"));
  // No entries: not an answer KVM gives.
  CHECK_FALSE(vmm::decode_cpuid_cache(vmm::encode_cpuid_cache("k", {}), "k"));
  // Not a cache at all.
  const std::vector<uint8_t> zeros(4096, 0);
  CHECK_FALSE(vmm::decode_cpuid_cache(zeros, "k"));
}

TEST_CASE("kvm cache: the key names this boot, the device node and the modules") {
  vmm::Fd null(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  const std::string key = vmm::kvm_host_key(null.get());
  std::string boot(37, '\0');
  vmm::Fd b(::open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC));
  REQUIRE(b);
  boot.resize(static_cast<size_t>(std::max<ssize_t>(0, ::read(b.get(), boot.data(), 36))));
  CHECK(key.find("boot=" + boot) != std::string::npos);
  CHECK(key.find("node=-") == std::string::npos);
  CHECK(key.find("modules=") != std::string::npos);
  CHECK(key.find('\n') == std::string::npos);
  // Another node, another key.
  vmm::Fd zero(::open("/dev/zero", O_RDONLY | O_CLOEXEC));
  CHECK(vmm::kvm_host_key(zero.get()) != key);
  CHECK(vmm::kvm_host_key(null.get()) == key);
}

TEST_CASE("kvm cache: written through a temporary file and read back, an unwritable place is no error") {
  const fs::path dir = fs::temp_directory_path() / ("vmm-kvm-cache-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const fs::path file = dir / "cache" / "kvm-cpuid";
  CHECK_FALSE(vmm::read_cpuid_cache(file, "k"));  // missing
  vmm::write_cpuid_cache(file, "k", sample());
  auto back = vmm::read_cpuid_cache(file, "k");
  REQUIRE(back);
  CHECK(same(*back, sample()));
  CHECK_FALSE(vmm::read_cpuid_cache(file, "other"));
  size_t files = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir / "cache")) ++files;
  CHECK(files == 1);  // no temporary file left
  // Garbage in its place: ignored, and a new write replaces it.
  {
    vmm::Fd f(::open(file.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC));
    REQUIRE(f);
    CHECK(::write(f.get(), "garbage", 7) == 7);
  }
  CHECK_FALSE(vmm::read_cpuid_cache(file, "k"));
  vmm::write_cpuid_cache(file, "k", sample());
  CHECK(vmm::read_cpuid_cache(file, "k"));
  // A directory where the file should be, and a parent that is a file: nothing written, no throw.
  vmm::write_cpuid_cache(dir / "cache", "k", sample());
  vmm::write_cpuid_cache(file / "below-a-file", "k", sample());
  CHECK_FALSE(vmm::read_cpuid_cache(dir / "cache", "k"));
  fs::remove_all(dir);
}
