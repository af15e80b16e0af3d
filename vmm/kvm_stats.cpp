#include "vmm/kvm_stats.hpp"

#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <type_traits>

#include "vmm/base/fd.hpp"

namespace vmm {

namespace {

// struct kvm_stats_desc without its name. The UAPI struct ends in a __DECLARE_FLEX_ARRAY, whose
// size differs between C and C++ (see kvm_abi.hpp), so the fixed part is spelled out here: in the
// file each descriptor is these 16 bytes followed by header.name_size bytes of name.
struct StatsDescFixed {
  uint32_t flags;
  int16_t exponent;
  uint16_t size;  // number of u64 values
  uint32_t offset;  // of the values, from header.data_offset
  uint32_t bucket_size;
};
static_assert(sizeof(StatsDescFixed) == 16);
static_assert(sizeof(kvm_stats_header) == 24);

// Far above what KVM has (about 50 vCPU stats, names of KVM_STATS_NAME_SIZE = 48 bytes), and small
// enough that a bogus header can neither overflow the descriptor block's size nor make the parser
// allocate or loop much.
constexpr uint32_t kMaxDescs = 4096;
constexpr uint32_t kMaxNameSize = 4096;
// A vCPU's file is about 4 KiB; a VM's a little more.
constexpr size_t kMaxFileSize = size_t{1} << 20;

// The caller has checked that the bytes are there; memcpy because nothing in the file promises
// alignment.
template <typename T>
  requires std::is_trivially_copyable_v<T>
T load(std::span<const uint8_t> buf, uint64_t offset) {
  T value;
  std::memcpy(&value, buf.data() + offset, sizeof value);
  return value;
}

// KVM's names are C identifiers (stringified struct fields). Anything but printable ASCII would end
// up in one-line error messages, logs and JSON (which wants valid UTF-8), so it is refused.
bool valid_name_char(uint8_t c) { return c > 0x20 && c < 0x7f; }

}  // namespace

Result<std::vector<KvmStat>> parse_kvm_stats(std::span<const uint8_t> buf) {
  const uint64_t size = buf.size();
  if (size < sizeof(kvm_stats_header)) {
    return fail("KVM stats: truncated header ({} of {} bytes)", size, sizeof(kvm_stats_header));
  }
  const auto h = load<kvm_stats_header>(buf, 0);
  if (h.num_desc > kMaxDescs) return fail("KVM stats: {} descriptors (at most {})", h.num_desc, kMaxDescs);
  if (h.name_size == 0 || h.name_size > kMaxNameSize) {
    return fail("KVM stats: name size {} (must be 1 to {})", h.name_size, kMaxNameSize);
  }
  // The id string ("kvm-PID/vcpu-N") is not returned, but a header pointing it outside the file is
  // as broken as any other.
  if (uint64_t{h.id_offset} + h.name_size > size) {
    return fail("KVM stats: id at {:#x} ({} bytes) beyond the {}-byte file", h.id_offset, h.name_size, size);
  }
  // Both factors are capped above, so the product is at most 2^12 * (2^12 + 16): no overflow.
  const uint64_t desc_size = sizeof(StatsDescFixed) + uint64_t{h.name_size};
  const uint64_t descs_end = uint64_t{h.desc_offset} + uint64_t{h.num_desc} * desc_size;
  if (descs_end > size) {
    return fail("KVM stats: {} descriptors at {:#x} end at {:#x}, beyond the {}-byte file", h.num_desc,
                h.desc_offset, descs_end, size);
  }

  std::vector<KvmStat> stats;
  stats.reserve(h.num_desc);
  for (uint32_t i = 0; i < h.num_desc; ++i) {
    const uint64_t at = h.desc_offset + i * desc_size;
    const auto d = load<StatsDescFixed>(buf, at);
    const auto name_bytes = buf.subspan(at + sizeof(StatsDescFixed), h.name_size);
    const auto nul = std::find(name_bytes.begin(), name_bytes.end(), uint8_t{0});
    if (nul == name_bytes.end()) {
      return fail("KVM stats: descriptor {}: name not NUL-terminated within {} bytes", i, h.name_size);
    }
    if (nul == name_bytes.begin()) return fail("KVM stats: descriptor {}: empty name", i);
    if (!std::all_of(name_bytes.begin(), nul, valid_name_char)) {
      return fail("KVM stats: descriptor {}: name is not printable ASCII", i);
    }
    std::string name(name_bytes.begin(), nul);
    // Every stat has at least one value; size 0 is a corrupt descriptor, not an empty histogram.
    if (d.size == 0) return fail("KVM stats: {}: size 0", name);
    // Checked for skipped stats too: a descriptor pointing outside the file means the file is bad.
    const uint64_t data_at = uint64_t{h.data_offset} + d.offset;
    const uint64_t data_end = data_at + uint64_t{d.size} * sizeof(uint64_t);
    if (data_end > size) {
      return fail("KVM stats: {}: {} values at {:#x} beyond the {}-byte file", name, d.size, data_at, size);
    }
    // Peaks and histograms (and types newer than this code) are not single counters.
    const uint32_t type = d.flags & KVM_STATS_TYPE_MASK;
    if (d.size != 1 || (type != KVM_STATS_TYPE_CUMULATIVE && type != KVM_STATS_TYPE_INSTANT)) continue;
    stats.push_back({std::move(name), load<uint64_t>(buf, data_at)});
  }
  return stats;
}

Result<std::vector<uint8_t>> read_kvm_stats_bytes(int stats_fd) {
  // The stats fd is an anonymous inode with no size to stat: read until pread returns 0, with room
  // for one byte beyond the cap so that a larger file is refused rather than silently cut.
  std::vector<uint8_t> buf;
  size_t got = 0;
  for (;;) {
    if (got == buf.size()) {
      if (got > kMaxFileSize) return fail("KVM stats: file larger than {} bytes", kMaxFileSize);
      buf.resize(std::min(std::max(got * 2, size_t{16} << 10), kMaxFileSize + 1));
    }
    const ssize_t n = ::pread(stats_fd, buf.data() + got, buf.size() - got, static_cast<off_t>(got));
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("KVM stats: read at {}: {}", got, errno_text(errno));
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  buf.resize(got);
  return buf;
}

Result<std::vector<KvmStat>> read_kvm_stats(int stats_fd) {
  auto bytes = read_kvm_stats_bytes(stats_fd);
  if (!bytes) return std::unexpected(bytes.error());
  return parse_kvm_stats(*bytes);
}

Result<Fd> open_stats_fd(int kvm_object_fd) {
  const int fd = ::ioctl(kvm_object_fd, KVM_GET_STATS_FD, nullptr);
  if (fd < 0) {
    const int err = errno;
    // KVM_CAP_BINARY_STATS_FD came with Linux 5.14; older kernels do not know the ioctl.
    if (err == ENOTTY || err == EINVAL) return fail("KVM_GET_STATS_FD: {} (needs Linux 5.14 or later)", errno_text(err));
    return fail("KVM_GET_STATS_FD: {}", errno_text(err));
  }
  return Fd(fd);
}

}  // namespace vmm
