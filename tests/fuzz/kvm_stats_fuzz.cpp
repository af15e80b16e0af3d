// libFuzzer target for KVM's binary stats file (vmm/kvm_stats.hpp, parse_kvm_stats). Built by clang
// only (tests/fuzz/fuzz.cmake, scripts/fuzz-kvm-stats.sh) with -fsanitize=fuzzer,address,undefined.
// Must never crash, hang or leak.
//
// Each input is a whole stats file. A refusal must be one line starting "KVM stats: ". An accepted
// file must give no more stats than it has descriptors, each with a non-empty printable name, and
// must round-trip: the stats written again as a canonical file (one counter each) parse back to the
// same list.
//
// VMM_KVM_STATS_FUZZ_MAKE_SEEDS=DIR writes hand-built files of a few shapes to DIR and, when
// /dev/kvm is usable, the stats files of a fresh vCPU and VM, then exits. Files captured that way on
// a real kernel are committed in tests/fuzz/kvm-stats-seeds/.
#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <span>
#include <string>
#include <vector>

#include "vmm/base/fd.hpp"
#include "vmm/kvm_stats.hpp"

namespace {

namespace fs = std::filesystem;

[[noreturn]] void die(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "kvm_stats_fuzz: %s%s%s\n", what, detail.empty() ? "" : ": ", detail.c_str());
  std::abort();
}

struct Desc {
  std::string name;
  uint32_t flags = KVM_STATS_TYPE_CUMULATIVE;
  std::vector<uint64_t> values;
};

void put32(std::vector<uint8_t>& b, size_t off, uint32_t v) { std::memcpy(b.data() + off, &v, sizeof v); }

/// A stats file as KVM lays it out: header, id, descriptors (16 bytes + name_size), data; `gap`
/// bytes between the blocks.
std::vector<uint8_t> encode(const std::vector<Desc>& descs, uint32_t name_size, uint32_t gap = 0) {
  const uint32_t desc_offset = 24 + name_size + gap;
  const uint32_t desc_size = 16 + name_size;
  const uint32_t data_offset = desc_offset + static_cast<uint32_t>(descs.size()) * desc_size + gap;
  size_t values = 0;
  for (const auto& d : descs) values += d.values.size();
  std::vector<uint8_t> b(data_offset + values * 8, 0);
  put32(b, 4, name_size);
  put32(b, 8, static_cast<uint32_t>(descs.size()));
  put32(b, 12, 24);
  put32(b, 16, desc_offset);
  put32(b, 20, data_offset);
  uint32_t data_at = 0;
  for (size_t i = 0; i < descs.size(); ++i) {
    const size_t at = desc_offset + i * desc_size;
    const auto size = static_cast<uint16_t>(descs[i].values.size());
    put32(b, at, descs[i].flags);
    std::memcpy(b.data() + at + 6, &size, sizeof size);
    put32(b, at + 8, data_at);
    std::memcpy(b.data() + at + 16, descs[i].name.data(), std::min<size_t>(descs[i].name.size(), name_size - 1));
    std::memcpy(b.data() + data_offset + data_at, descs[i].values.data(), descs[i].values.size() * 8);
    data_at += static_cast<uint32_t>(descs[i].values.size() * 8);
  }
  return b;
}

/// The canonical file of a parsed list: one cumulative counter per stat, the shortest name_size.
std::vector<uint8_t> encode(const std::vector<vmm::KvmStat>& stats) {
  std::vector<Desc> descs;
  size_t longest = 0;
  for (const auto& s : stats) {
    descs.push_back({s.name, KVM_STATS_TYPE_CUMULATIVE, {s.value}});
    longest = std::max(longest, s.name.size());
  }
  return encode(descs, static_cast<uint32_t>(longest + 1));
}

void check(std::span<const uint8_t> bytes) {
  auto r = vmm::parse_kvm_stats(bytes);
  if (!r) {
    const std::string& m = r.error().message();
    if (!m.starts_with("KVM stats: ") || m.find('\n') != std::string::npos) die("bad error message", m);
    return;
  }
  uint32_t num_desc;  // a parse that succeeded had a whole header
  std::memcpy(&num_desc, bytes.data() + 8, sizeof num_desc);
  if (r->size() > num_desc) die("more stats than descriptors");
  for (const auto& s : *r) {
    if (s.name.empty()) die("an empty name was accepted");
    for (const char c : s.name) {
      if (c <= 0x20 || c >= 0x7f) die("an unprintable name was accepted", s.name);
    }
  }
  auto again = vmm::parse_kvm_stats(encode(*r));
  if (!again) die("the canonical file of a parsed list does not parse", again.error().message());
  if (again->size() != r->size()) die("the canonical file parses to another count");
  for (size_t i = 0; i < r->size(); ++i) {
    if ((*again)[i].name != (*r)[i].name || (*again)[i].value != (*r)[i].value) die("round trip changed", (*r)[i].name);
  }
}

void write_file(const fs::path& p, std::span<const uint8_t> b) {
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

/// The raw stats file of a fresh vCPU and of its VM, if /dev/kvm is usable; a note otherwise.
void capture_live(const fs::path& dir) {
  const vmm::Fd kvm(::open("/dev/kvm", O_RDWR | O_CLOEXEC));
  if (!kvm) {
    std::printf("no usable /dev/kvm: no live seeds\n");
    return;
  }
  const vmm::Fd vm(::ioctl(kvm.get(), KVM_CREATE_VM, 0));
  if (!vm) die("KVM_CREATE_VM");
  const vmm::Fd vcpu(::ioctl(vm.get(), KVM_CREATE_VCPU, 0ul));
  if (!vcpu) die("KVM_CREATE_VCPU");
  for (const auto& [name, fd] : {std::pair{"vcpu-live.stats", vcpu.get()}, std::pair{"vm-live.stats", vm.get()}}) {
    const vmm::Fd stats(::ioctl(fd, KVM_GET_STATS_FD, nullptr));
    if (!stats) {
      std::printf("KVM_GET_STATS_FD failed: no live seeds\n");
      return;
    }
    auto b = vmm::read_kvm_stats_bytes(stats.get());
    if (!b) die("reading live stats", b.error().message());
    if (!vmm::parse_kvm_stats(*b)) die("live stats do not parse");
    write_file(dir / name, *b);
  }
}

void make_seeds(const fs::path& dir) {
  fs::create_directories(dir);
  std::vector<uint64_t> hist(32);
  for (size_t i = 0; i < hist.size(); ++i) hist[i] = i * i;
  const std::vector<Desc> sample = {
      {"exits", KVM_STATS_TYPE_CUMULATIVE, {12345}},
      {"blocking", KVM_STATS_TYPE_INSTANT | KVM_STATS_UNIT_BOOLEAN, {1}},
      {"halt_wait_hist", KVM_STATS_TYPE_LOG_HIST | KVM_STATS_UNIT_SECONDS, hist},
  };
  const std::vector<Desc> kinds = {
      {"max_mmu_rmap_size", KVM_STATS_TYPE_PEAK, {7}},
      {"halt_poll_success_ns", KVM_STATS_TYPE_CUMULATIVE | KVM_STATS_UNIT_SECONDS, {~0ull}},
      {"linear_hist", KVM_STATS_TYPE_LINEAR_HIST, {3, 4, 5}},
      {"io_exits", KVM_STATS_TYPE_CUMULATIVE, {0}},
  };
  write_file(dir / "sample.stats", encode(sample, 48));
  write_file(dir / "kinds.stats", encode(kinds, 48));
  write_file(dir / "unaligned.stats", encode(sample, 15, 3));
  write_file(dir / "empty.stats", encode(std::vector<Desc>{}, 48));
  capture_live(dir);
  for (const auto& e : fs::directory_iterator(dir)) {
    std::ifstream in(e.path(), std::ios::binary);
    const std::vector<uint8_t> b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (!vmm::parse_kvm_stats(b)) die("a seed does not parse", e.path().string());
  }
  std::printf("seeds in %s\n", dir.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* seeds = std::getenv("VMM_KVM_STATS_FUZZ_MAKE_SEEDS")) {
    make_seeds(seeds);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  check(std::span<const uint8_t>(data, size));
  return 0;
}
