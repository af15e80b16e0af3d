// Builds qcow2 images byte by byte for the hostile-file tests (qcow2 spec, docs/interop/qcow2.txt
// in QEMU): a valid minimal v3 image and edits of it. Shared by tests/unit/qcow2_bad_header.cpp
// and tests/unit/qcow2_bad_tables.cpp.
#pragma once

#include <doctest/doctest.h>

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "disk/qcow2.hpp"
#include "temp_dir.hpp"

namespace {

namespace fs = std::filesystem;
using Bytes = std::vector<uint8_t>;
using vmm::disk::Qcow2;
using vmm::disk::Qcow2OpenOptions;

// ---- Spec constants (docs/interop/qcow2.txt) ------------------------------------------------------
constexpr uint32_t kMagic = 0x514649fb;  // "QFI\xfb"
constexpr uint64_t kCopied = 1ull << 63;  // L1/L2 entry: refcount is exactly 1
constexpr uint64_t kCompressed = 1ull << 62;
constexpr uint64_t kZeroFlag = 1;  // v3 standard L2 entry: reads as zeroes
constexpr uint32_t kExtEnd = 0;
constexpr uint32_t kExtBackingFormat = 0xe2792aca;

// Header field offsets.
enum : size_t {
  kOffMagic = 0,
  kOffVersion = 4,
  kOffBackingOffset = 8,
  kOffBackingSize = 16,
  kOffClusterBits = 20,
  kOffSize = 24,
  kOffCrypt = 32,
  kOffL1Size = 36,
  kOffL1Offset = 40,
  kOffRtOffset = 48,
  kOffRtClusters = 56,
  kOffNbSnapshots = 60,
  kOffSnapshotsOffset = 64,
  kOffIncompatible = 72,
  kOffCompatible = 80,
  kOffAutoclear = 88,
  kOffRefcountOrder = 96,
  kOffHeaderLength = 100,
};

using vmm::test::TempDir;

void write_file(const fs::path& p, const Bytes& b) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  REQUIRE(out.good());
}

Bytes read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

Bytes pattern(size_t n, uint8_t seed) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(i * 13 + seed + (i >> 8));
  return b;
}

void put_be(Bytes& b, size_t off, uint64_t v, unsigned bytes) {
  if (b.size() < off + bytes) b.resize(off + bytes);
  for (unsigned i = 0; i < bytes; ++i) b[off + i] = static_cast<uint8_t>(v >> (8 * (bytes - 1 - i)));
}
inline uint64_t get_be(const Bytes& b, size_t off, unsigned bytes) {
  uint64_t v = 0;
  for (unsigned i = 0; i < bytes; ++i) v = (v << 8) | b[off + i];
  return v;
}

/// What the minimal image looks like.
struct Layout {
  unsigned cluster_bits = 16;
  uint64_t size = 1 << 20;
  uint32_t version = 3;
  unsigned refcount_order = 4;
  /// An L2 table and one data cluster (pattern) for guest cluster 0, and two spare clusters after it.
  bool with_data = false;
  std::string backing{};       // stored after the header extensions when not empty
  std::string backing_format{};  // a backing-format header extension when not empty
};

/// A minimal valid image, cluster by cluster: 0 header (+ extensions, backing name), 1 refcount table,
/// 2 refcount block, 3.. L1 table; with data: then an L2 table, a data cluster, two spare clusters.
/// Every field offset is kept so that a test can break exactly one thing.
struct Image {
  Layout l;
  uint64_t c = 0;  // cluster size
  Bytes b;
  uint64_t rt_offset = 0, rb_offset = 0, l1_offset = 0, l2_offset = 0, data_offset = 0, spare_offset = 0;
  uint32_t l1_size = 0;
  uint32_t header_length = 0;
  size_t ext_offset = 0;  // first header extension

  explicit Image(Layout layout) : l(std::move(layout)) {
    c = 1ull << l.cluster_bits;
    const uint64_t l2_entries = c / 8;
    const uint64_t per_l1 = l2_entries * c;
    l1_size = static_cast<uint32_t>((l.size + per_l1 - 1) / per_l1);
    const uint64_t l1_clusters = std::max<uint64_t>(1, (uint64_t{l1_size} * 8 + c - 1) / c);
    rt_offset = c;
    rb_offset = 2 * c;
    l1_offset = 3 * c;
    uint64_t clusters = 3 + l1_clusters;
    if (l.with_data) {
      l2_offset = clusters * c;
      data_offset = l2_offset + c;
      spare_offset = data_offset + c;
      clusters += 4;
    }
    b.assign(clusters * c, 0);

    header_length = l.version >= 3 ? 104 : 72;
    be32(kOffMagic, kMagic);
    be32(kOffVersion, l.version);
    be32(kOffClusterBits, l.cluster_bits);
    be64(kOffSize, l.size);
    be32(kOffL1Size, l1_size);
    be64(kOffL1Offset, l1_offset);
    be64(kOffRtOffset, rt_offset);
    be32(kOffRtClusters, 1);
    if (l.version >= 3) {
      be32(kOffRefcountOrder, l.refcount_order);
      be32(kOffHeaderLength, header_length);
    }
    // Header extensions, then the backing file name.
    ext_offset = header_length;
    size_t p = ext_offset;
    if (!l.backing_format.empty()) {
      be32(p, kExtBackingFormat);
      be32(p + 4, static_cast<uint32_t>(l.backing_format.size()));
      std::memcpy(b.data() + p + 8, l.backing_format.data(), l.backing_format.size());
      p += 8 + ((l.backing_format.size() + 7) & ~size_t{7});
    }
    be32(p, kExtEnd);
    be32(p + 4, 0);
    p += 8;
    if (!l.backing.empty()) {
      be64(kOffBackingOffset, p);
      be32(kOffBackingSize, static_cast<uint32_t>(l.backing.size()));
      std::memcpy(b.data() + p, l.backing.data(), l.backing.size());
    }
    REQUIRE(p + l.backing.size() <= c);

    be64(rt_offset, rb_offset);
    for (uint64_t i = 0; i < clusters; ++i) set_refcount(i, 1);
    if (l.with_data) {
      set_l1(0, l2_offset | kCopied);
      set_l2(0, data_offset | kCopied);
      const Bytes d = data();
      std::copy(d.begin(), d.end(), b.begin() + static_cast<ptrdiff_t>(data_offset));
    }
  }

  /// What guest cluster 0 holds in a with_data image.
  Bytes data() const { return pattern(c, 0x42); }

  void be32(size_t off, uint64_t v) { put_be(b, off, v, 4); }
  void be64(size_t off, uint64_t v) { put_be(b, off, v, 8); }
  void set_l1(uint64_t i, uint64_t entry) { be64(l1_offset + 8 * i, entry); }
  void set_l2(uint64_t i, uint64_t entry) { be64(l2_offset + 8 * i, entry); }

  /// Refcount of host cluster `i` (it must be covered by the one refcount block); entries of fewer
  /// than 8 bits are packed least significant first, wider ones big-endian (QEMU's layout).
  void set_refcount(uint64_t i, uint64_t v) {
    const unsigned bits = 1u << l.refcount_order;
    REQUIRE(i < c * 8 / bits);
    if (bits < 8) {
      const uint64_t bit = i * bits;
      uint8_t& byte = b[rb_offset + bit / 8];
      const unsigned shift = static_cast<unsigned>(bit % 8);
      const auto mask = static_cast<uint8_t>(((1u << bits) - 1) << shift);
      byte = static_cast<uint8_t>((byte & ~mask) | ((v << shift) & mask));
    } else {
      put_be(b, rb_offset + i * bits / 8, v, bits / 8);
    }
  }

  /// A compressed L2 entry for `bytes` (> 0) of data at host offset `host` (docs/interop/qcow2.txt,
  /// "Compressed Clusters Descriptor": x = 62 - (cluster_bits - 8)).
  uint64_t compressed_entry(uint64_t host, uint64_t bytes) const {
    const unsigned x = 62 - (l.cluster_bits - 8);
    const uint64_t sectors = (host % 512 + bytes + 511) / 512 - 1;  // additional 512-byte sectors
    return kCompressed | (sectors << x) | host;
  }
};

/// Raw deflate (no zlib header, window 4 KiB) of `in`, as qcow2 compressed clusters hold it.
inline Bytes deflate_raw(const Bytes& in) {
  z_stream z{};
  REQUIRE(deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY) == Z_OK);
  Bytes out(deflateBound(&z, static_cast<uLong>(in.size())));
  z.next_in = const_cast<Bytef*>(in.data());
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&z, Z_FINISH) == Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

Qcow2OpenOptions ro_opts(bool backing = false) { return {.read_only = true, .open_backing = backing}; }
Qcow2OpenOptions rw_opts(bool backing = false) { return {.read_only = false, .open_backing = backing}; }

std::string open_error(const fs::path& p, const Qcow2OpenOptions& o) {
  auto r = Qcow2::open(p, o);
  if (r) return {};
  return r.error().message();
}

bool contains_any(const std::string& s, std::initializer_list<std::string_view> words) {
  return std::any_of(words.begin(), words.end(), [&](std::string_view w) { return s.find(w) != std::string::npos; });
}

/// Writes `img` as `name` into `dir`, opens it with `o`, and requires a refusal whose message names the
/// file and one of `field` (the field, as the engine spells it).
inline void expect_refused(const TempDir& dir, const std::string& name, const Bytes& img,
                    std::initializer_list<std::string_view> field, const Qcow2OpenOptions& o = rw_opts()) {
  const fs::path p = dir / name;
  write_file(p, img);
  const std::string msg = open_error(p, o);
  INFO("case ", name, ": ", msg);
  REQUIRE_MESSAGE(!msg.empty(), "accepted a malformed image: ", name);
  CHECK_MESSAGE(msg.find(p.string()) != std::string::npos, "message does not name the file");
  CHECK_MESSAGE(contains_any(msg, field), "message does not name the field");
  CHECK(msg.find('\n') == std::string::npos);
  if (std::getenv("QCOW2_BAD_INPUT_VERBOSE")) MESSAGE(name, ": ", msg);
}

inline void expect_opens(const TempDir& dir, const std::string& name, const Bytes& img, const Qcow2OpenOptions& o = rw_opts()) {
  const fs::path p = dir / name;
  write_file(p, img);
  const std::string msg = open_error(p, o);
  CHECK_MESSAGE(msg.empty(), "case ", name, " refused: ", msg);
}

Bytes read_range(Qcow2& q, uint64_t off, size_t n, vmm::Result<>* status = nullptr) {
  Bytes out(n, 0xee);
  const iovec v{out.data(), n};
  auto r = q.read(off, std::span(&v, 1));
  if (status) *status = r;
  else REQUIRE_MESSAGE(r, r.error().message());
  return out;
}

bool all_zero(const Bytes& b) {
  return std::all_of(b.begin(), b.end(), [](uint8_t x) { return x == 0; });
}

}  // namespace
