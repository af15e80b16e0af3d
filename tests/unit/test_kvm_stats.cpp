// KVM binary statistics (vmm/kvm_stats.hpp): hand-built stats files, first every malformed one the
// parser must refuse with a one-line error (truncations, offsets outside the file, a descriptor
// count that would overflow, names without their NUL, size 0), then well-formed ones (counters and
// instant values read, peaks and histograms skipped, unaligned layouts), reading through pread, and
// a real vCPU's stats on /dev/kvm.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "vmm/base/fd.hpp"
#include "vmm/kvm.hpp"
#include "vmm/kvm_stats.hpp"

namespace {

using Bytes = std::vector<uint8_t>;

// struct kvm_stats_header field offsets.
constexpr size_t kHdrNameSize = 4, kHdrNumDesc = 8, kHdrIdOffset = 12, kHdrDescOffset = 16, kHdrDataOffset = 20;
// struct kvm_stats_desc field offsets (the name follows the 16 fixed bytes).
constexpr size_t kDescFlags = 0, kDescSize = 6, kDescOffset = 8, kDescName = 16;

struct Desc {
  std::string name;
  uint32_t flags = KVM_STATS_TYPE_CUMULATIVE;
  std::vector<uint64_t> values;  // the descriptor's size is their count
};

void put32(Bytes& b, size_t off, uint32_t v) { std::memcpy(b.data() + off, &v, sizeof v); }
void put16(Bytes& b, size_t off, uint16_t v) { std::memcpy(b.data() + off, &v, sizeof v); }
uint32_t get32(const Bytes& b, size_t off) {
  uint32_t v;
  std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}

/// A stats file laid out as KVM lays it out (header, id, descriptors, data), with `gap` bytes
/// between the blocks so that nothing needs to be aligned.
Bytes build(const std::vector<Desc>& descs, uint32_t name_size = 48, uint32_t gap = 0) {
  const uint32_t id_offset = 24;
  const uint32_t desc_offset = id_offset + name_size + gap;
  const uint32_t desc_size = 16 + name_size;
  const uint32_t data_offset = desc_offset + static_cast<uint32_t>(descs.size()) * desc_size + gap;
  size_t values = 0;
  for (const auto& d : descs) values += d.values.size();
  Bytes b(data_offset + values * 8, 0);
  put32(b, kHdrNameSize, name_size);
  put32(b, kHdrNumDesc, static_cast<uint32_t>(descs.size()));
  put32(b, kHdrIdOffset, id_offset);
  put32(b, kHdrDescOffset, desc_offset);
  put32(b, kHdrDataOffset, data_offset);
  const std::string id = "kvm-1/vcpu-0";
  std::memcpy(b.data() + id_offset, id.data(), std::min<size_t>(id.size(), name_size - 1));
  uint32_t data_at = 0;
  for (size_t i = 0; i < descs.size(); ++i) {
    const size_t at = desc_offset + i * desc_size;
    put32(b, at + kDescFlags, descs[i].flags);
    put16(b, at + kDescSize, static_cast<uint16_t>(descs[i].values.size()));
    put32(b, at + kDescOffset, data_at);
    REQUIRE(descs[i].name.size() < name_size);
    std::memcpy(b.data() + at + kDescName, descs[i].name.data(), descs[i].name.size());
    std::memcpy(b.data() + data_offset + data_at, descs[i].values.data(), descs[i].values.size() * 8);
    data_at += static_cast<uint32_t>(descs[i].values.size() * 8);
  }
  return b;
}

/// Offset of descriptor `i` in `b`, from its header.
size_t desc_at(const Bytes& b, size_t i) { return get32(b, kHdrDescOffset) + i * (16 + get32(b, kHdrNameSize)); }

/// The three-descriptor file most tests start from: a counter, an instant boolean, a histogram.
Bytes sample() {
  std::vector<uint64_t> hist(32);
  for (size_t i = 0; i < hist.size(); ++i) hist[i] = 1000 + i;
  return build({
      {"exits", KVM_STATS_TYPE_CUMULATIVE, {12345}},
      {"blocking", KVM_STATS_TYPE_INSTANT | KVM_STATS_UNIT_BOOLEAN, {1}},
      {"halt_wait_hist", KVM_STATS_TYPE_LOG_HIST | KVM_STATS_UNIT_SECONDS, hist},
  });
}

/// The parse must fail with one line; returns it.
std::string refused(const Bytes& b) {
  auto r = vmm::parse_kvm_stats(b);
  REQUIRE_MESSAGE(!r, "parsed a malformed file");
  const std::string m = r.error().message();
  CHECK_FALSE(m.empty());
  CHECK(m.find('\n') == std::string::npos);
  CHECK(m.starts_with("KVM stats: "));
  return m;
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

/// A file holding `b` (memfd), for the pread path.
vmm::Fd file_with(const Bytes& b) {
  vmm::Fd fd(::memfd_create("kvm-stats-test", MFD_CLOEXEC));
  REQUIRE(fd);
  if (!b.empty()) REQUIRE(::write(fd.get(), b.data(), b.size()) == static_cast<ssize_t>(b.size()));
  return fd;
}

}  // namespace

// ---- Malformed files -------------------------------------------------------------------------------

TEST_CASE("kvm_stats: a truncated header is refused") {
  CHECK(has(refused({}), "truncated header (0 of 24 bytes)"));
  const Bytes b = sample();
  CHECK(has(refused(Bytes(b.begin(), b.begin() + 23)), "truncated header (23 of 24 bytes)"));
}

TEST_CASE("kvm_stats: every truncation of a valid file is refused") {
  // The last stat's values end the file, so every shorter prefix misses something.
  const Bytes b = sample();
  for (size_t n = 0; n < b.size(); ++n) {
    CAPTURE(n);
    refused(Bytes(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(n)));
  }
}

TEST_CASE("kvm_stats: a descriptor block beyond the file is refused") {
  Bytes b = sample();
  put32(b, kHdrDescOffset, static_cast<uint32_t>(b.size()));
  CHECK(has(refused(b), "3 descriptors at"));
  b = sample();
  put32(b, kHdrDescOffset, 0xffffffff);
  CHECK(has(refused(b), "beyond the"));
  // One byte short: the last descriptor's name runs past the end.
  b = sample();
  put32(b, kHdrDescOffset, static_cast<uint32_t>(b.size()) - 3 * 64 + 1);
  CHECK(has(refused(b), "beyond the"));
}

TEST_CASE("kvm_stats: a huge descriptor count or name size is refused without overflow") {
  Bytes b = sample();
  put32(b, kHdrNumDesc, 0xffffffff);
  CHECK(has(refused(b), "4294967295 descriptors (at most 4096)"));
  put32(b, kHdrNameSize, 0xffffffff);  // num_desc * (16 + name_size) would wrap 64 bits
  refused(b);
  b = sample();
  put32(b, kHdrNumDesc, 4097);
  CHECK(has(refused(b), "4097 descriptors"));
  // Both at their caps: a large but representable size, still beyond the file.
  put32(b, kHdrNumDesc, 4096);
  put32(b, kHdrNameSize, 4096);
  CHECK(has(refused(b), "beyond the"));
  b = sample();
  put32(b, kHdrNameSize, 0xffffffff);
  CHECK(has(refused(b), "name size 4294967295"));
  put32(b, kHdrNameSize, 0);
  CHECK(has(refused(b), "name size 0"));
}

TEST_CASE("kvm_stats: an id beyond the file is refused") {
  Bytes b = sample();
  put32(b, kHdrIdOffset, static_cast<uint32_t>(b.size()) - 47);
  CHECK(has(refused(b), "id at"));
  put32(b, kHdrIdOffset, 0xffffffff);
  CHECK(has(refused(b), "id at 0xffffffff"));
}

TEST_CASE("kvm_stats: a name not NUL-terminated within name_size is refused") {
  Bytes b = sample();
  const size_t at = desc_at(b, 1);
  std::memset(b.data() + at + kDescName, 'a', 48);
  CHECK(has(refused(b), "descriptor 1: name not NUL-terminated within 48 bytes"));
}

TEST_CASE("kvm_stats: an empty or unprintable name is refused") {
  Bytes b = sample();
  b[desc_at(b, 0) + kDescName] = 0;
  CHECK(has(refused(b), "descriptor 0: empty name"));
  b = sample();
  b[desc_at(b, 2) + kDescName + 4] = '\n';
  CHECK(has(refused(b), "descriptor 2: name is not printable ASCII"));
  b = sample();
  b[desc_at(b, 2) + kDescName + 1] = 0xc3;
  refused(b);
  b = sample();
  b[desc_at(b, 0) + kDescName + 2] = ' ';
  refused(b);
}

TEST_CASE("kvm_stats: a data offset beyond the file is refused") {
  // The counter's value far outside.
  Bytes b = sample();
  put32(b, desc_at(b, 0) + kDescOffset, 0xfffffff8);
  CHECK(has(refused(b), "exits: 1 values at"));
  // The data block itself outside.
  b = sample();
  put32(b, kHdrDataOffset, 0xffffffff);
  refused(b);
  // A skipped histogram is checked too: its 32 values overrun the end by one.
  b = sample();
  put32(b, desc_at(b, 2) + kDescOffset, get32(b, desc_at(b, 2) + kDescOffset) + 1);
  CHECK(has(refused(b), "halt_wait_hist: 32 values at"));
  // A histogram whose size reaches beyond the file.
  b = sample();
  put16(b, desc_at(b, 2) + kDescSize, 0xffff);
  CHECK(has(refused(b), "halt_wait_hist: 65535 values"));
}

TEST_CASE("kvm_stats: a stat of size 0 is refused") {
  Bytes b = sample();
  put16(b, desc_at(b, 1) + kDescSize, 0);
  CHECK(has(refused(b), "blocking: size 0"));
}

// ---- Well-formed files -------------------------------------------------------------------------------

TEST_CASE("kvm_stats: counters and instant values are read, histograms skipped") {
  auto r = vmm::parse_kvm_stats(sample());
  REQUIRE_MESSAGE(r, r.error().message());
  REQUIRE(r->size() == 2);
  CHECK((*r)[0].name == "exits");
  CHECK((*r)[0].value == 12345);
  CHECK((*r)[1].name == "blocking");
  CHECK((*r)[1].value == 1);
}

TEST_CASE("kvm_stats: peaks, multi-value counters and unknown types are skipped") {
  const Bytes b = build({
      {"max_mmu_rmap_size", KVM_STATS_TYPE_PEAK, {7}},
      {"halt_poll_success_ns", KVM_STATS_TYPE_CUMULATIVE | KVM_STATS_UNIT_SECONDS, {~0ull}},
      {"pair", KVM_STATS_TYPE_CUMULATIVE, {1, 2}},
      {"linear_hist", KVM_STATS_TYPE_LINEAR_HIST, {3, 4, 5}},
      {"future_type", 0xf, {9}},
      {"io_exits", KVM_STATS_TYPE_CUMULATIVE, {0}},
  });
  auto r = vmm::parse_kvm_stats(b);
  REQUIRE_MESSAGE(r, r.error().message());
  REQUIRE(r->size() == 2);
  CHECK((*r)[0].name == "halt_poll_success_ns");
  CHECK((*r)[0].value == ~0ull);
  CHECK((*r)[1].name == "io_exits");
  CHECK((*r)[1].value == 0);
}

TEST_CASE("kvm_stats: unaligned blocks, short names, a name filling name_size, no descriptors") {
  // name_size 13 and 3-byte gaps: no descriptor and no value is 8-byte aligned.
  const Bytes b = build({{"exits", KVM_STATS_TYPE_CUMULATIVE, {0x0102030405060708}},
                         {"abcdefghijkl", KVM_STATS_TYPE_INSTANT, {42}}},
                        13, 3);
  REQUIRE(get32(b, kHdrDataOffset) % 8 != 0);
  auto r = vmm::parse_kvm_stats(b);
  REQUIRE_MESSAGE(r, r.error().message());
  REQUIRE(r->size() == 2);
  CHECK((*r)[0].value == 0x0102030405060708);
  CHECK((*r)[1].name == "abcdefghijkl");
  CHECK((*r)[1].value == 42);
  // Trailing bytes beyond the data are allowed (a newer kernel may append).
  Bytes longer = b;
  longer.resize(b.size() + 100, 0xee);
  CHECK(vmm::parse_kvm_stats(longer));

  auto none = vmm::parse_kvm_stats(build({}));
  REQUIRE_MESSAGE(none, none.error().message());
  CHECK(none->empty());
}

TEST_CASE("kvm_stats: read_kvm_stats reads the whole file with pread, refuses more than 1 MiB") {
  const Bytes b = sample();
  const vmm::Fd fd = file_with(b);
  // The file position is at the end after the write: pread must not care.
  auto raw = vmm::read_kvm_stats_bytes(fd.get());
  REQUIRE_MESSAGE(raw, raw.error().message());
  CHECK(*raw == b);
  auto r = vmm::read_kvm_stats(fd.get());
  REQUIRE_MESSAGE(r, r.error().message());
  CHECK(r->size() == 2);

  // Exactly 1 MiB is read (and parsed: stats at the start, padding after them); one byte more is not.
  Bytes big = b;
  big.resize(1 << 20, 0);
  const vmm::Fd at_cap = file_with(big);
  auto ok = vmm::read_kvm_stats(at_cap.get());
  REQUIRE_MESSAGE(ok, ok.error().message());
  CHECK(ok->size() == 2);
  big.push_back(0);
  const vmm::Fd over = file_with(big);
  auto too_big = vmm::read_kvm_stats(over.get());
  REQUIRE(!too_big);
  CHECK(has(too_big.error().message(), "larger than 1048576 bytes"));

  auto empty = vmm::read_kvm_stats(file_with({}).get());
  REQUIRE(!empty);
  CHECK(has(empty.error().message(), "truncated header"));
  auto bad = vmm::read_kvm_stats(-1);
  REQUIRE(!bad);
  CHECK(has(bad.error().message(), "KVM stats: read at 0:"));
}

TEST_CASE("kvm_stats: KVM_GET_STATS_FD on something that is not a vCPU is one error") {
  const vmm::Fd fd = file_with({});
  auto r = vmm::open_stats_fd(fd.get());
  REQUIRE(!r);
  CHECK(has(r.error().message(), "KVM_GET_STATS_FD: "));
}

// ---- A real vCPU -------------------------------------------------------------------------------------

TEST_CASE("kvm_stats: a fresh vCPU's stats on /dev/kvm include the exit counters") {
  // A machine without a usable /dev/kvm skips (CTest sees the marker: SKIP_REGULAR_EXPRESSION).
  const auto device = vmm::Kvm::default_device();
  const vmm::Fd kvm(::open(device.c_str(), O_RDWR | O_CLOEXEC));
  if (!kvm) {
    std::printf("VMM_SKIP: %s is not usable on this machine\n", device.c_str());
    return;
  }
  if (::ioctl(kvm.get(), KVM_CHECK_EXTENSION, KVM_CAP_BINARY_STATS_FD) <= 0) {
    std::printf("VMM_SKIP: KVM has no binary stats (KVM_CAP_BINARY_STATS_FD, Linux 5.14)\n");
    return;
  }
  int vm_fd = -1;
  for (int attempt = 0; attempt < 100 && vm_fd < 0; ++attempt) {
    vm_fd = ::ioctl(kvm.get(), KVM_CREATE_VM, 0);
    if (vm_fd < 0 && errno != EINTR) break;
  }
  REQUIRE_MESSAGE(vm_fd >= 0, (std::string("KVM_CREATE_VM: ") + std::strerror(errno)));
  const vmm::Fd vm(vm_fd);
  const vmm::Fd vcpu(::ioctl(vm.get(), KVM_CREATE_VCPU, 0ul));
  REQUIRE_MESSAGE(vcpu, (std::string("KVM_CREATE_VCPU: ") + std::strerror(errno)));

  auto stats_fd = vmm::open_stats_fd(vcpu.get());
  REQUIRE_MESSAGE(stats_fd, stats_fd.error().message());
  auto stats = vmm::read_kvm_stats(stats_fd->get());
  REQUIRE_MESSAGE(stats, stats.error().message());
  auto find = [&](const std::string& name) {
    return std::find_if(stats->begin(), stats->end(), [&](const vmm::KvmStat& s) { return s.name == name; });
  };
  REQUIRE(find("exits") != stats->end());
  for (const char* name : {"io_exits", "mmio_exits", "halt_exits", "irq_exits", "signal_exits"}) {
    CAPTURE(name);
    CHECK(find(name) != stats->end());
  }
  // The histograms KVM keeps for halt polling are not in the list.
  CHECK(find("halt_wait_hist") == stats->end());

  // The VM's stats fd has the same layout.
  const vmm::Fd vm_stats(::ioctl(vm.get(), KVM_GET_STATS_FD, nullptr));
  REQUIRE(vm_stats);
  auto vm_list = vmm::read_kvm_stats(vm_stats.get());
  REQUIRE_MESSAGE(vm_list, vm_list.error().message());
  CHECK_FALSE(vm_list->empty());
}
