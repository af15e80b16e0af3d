// Hostile qcow2 files: images built byte by byte (qcow2 spec, docs/interop/qcow2.txt in QEMU), one
// valid minimal v3 image and, one edit away from it, every malformed header, table and chain the
// engine must refuse with a one-line error naming the file and the field; and runtime corruption
// (bad L1/L2 entries, garbage compressed clusters) that must fail the request, never crash.
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

/// A directory under the temp directory, removed with its content on destruction.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "vmm-qcow2-bad-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  fs::path operator/(const std::string& name) const { return path_ / name; }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

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
uint64_t get_be(const Bytes& b, size_t off, unsigned bytes) {
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
Bytes deflate_raw(const Bytes& in) {
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
void expect_refused(const TempDir& dir, const std::string& name, const Bytes& img,
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

void expect_opens(const TempDir& dir, const std::string& name, const Bytes& img, const Qcow2OpenOptions& o = rw_opts()) {
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

TEST_CASE("qcow2 bad input: the minimal hand-built v3 image opens, reads zeroes, round-trips a write") {
  TempDir dir;
  const Image img({});
  const fs::path p = dir / "good.qcow2";
  write_file(p, img.b);
  {
    auto q = Qcow2::open(p, ro_opts());
    REQUIRE_MESSAGE(q, q.error().message());
    CHECK((*q)->size() == img.l.size);
    CHECK((*q)->read_only());
    CHECK(all_zero(read_range(**q, 0, img.l.size)));
    const auto info = (*q)->info();
    CHECK(info.version == 3);
    CHECK(info.cluster_bits == 16);
    CHECK(info.refcount_bits == 16);
  }
  const Bytes d = pattern(3 * 512, 9);
  {
    auto q = Qcow2::open(p, rw_opts());
    REQUIRE_MESSAGE(q, q.error().message());
    CHECK_FALSE((*q)->read_only());
    const iovec v{const_cast<uint8_t*>(d.data()), d.size()};
    auto w = (*q)->write(70000, std::span(&v, 1));
    REQUIRE_MESSAGE(w, w.error().message());
    auto f = (*q)->flush();
    REQUIRE_MESSAGE(f, f.error().message());
  }
  auto q = Qcow2::open(p, ro_opts());
  REQUIRE_MESSAGE(q, q.error().message());
  CHECK(read_range(**q, 70000, d.size()) == d);
  CHECK(all_zero(read_range(**q, 0, 70000)));
}

TEST_CASE("qcow2 bad input: cluster_bits 9..21 and refcount orders 0..6 and v2 are accepted") {
  TempDir dir;
  for (unsigned bits = 9; bits <= 21; ++bits) {
    CAPTURE(bits);
    const Image img({.cluster_bits = bits, .size = 3 << 20});
    const fs::path p = dir / ("bits" + std::to_string(bits) + ".qcow2");
    write_file(p, img.b);
    auto q = Qcow2::open(p, rw_opts());
    REQUIRE_MESSAGE(q, q.error().message());
    CHECK((*q)->size() == img.l.size);
    CHECK(all_zero(read_range(**q, img.l.size - 4096, 4096)));
  }
  for (unsigned order = 0; order <= 6; ++order) {
    CAPTURE(order);
    const Image img({.cluster_bits = 12, .refcount_order = order, .with_data = true});
    const fs::path p = dir / ("order" + std::to_string(order) + ".qcow2");
    write_file(p, img.b);
    auto q = Qcow2::open(p, ro_opts());
    REQUIRE_MESSAGE(q, q.error().message());
    CHECK(read_range(**q, 0, img.c) == img.data());
  }
  const Image v2({.version = 2, .with_data = true});
  const fs::path p = dir / "v2.qcow2";
  write_file(p, v2.b);
  auto q = Qcow2::open(p, ro_opts());
  REQUIRE_MESSAGE(q, q.error().message());
  CHECK((*q)->info().version == 2);
  CHECK(read_range(**q, 0, v2.c) == v2.data());
}

TEST_CASE("qcow2 bad input: truncated files, bad magic, bad version") {
  TempDir dir;
  const Image good({});
  expect_refused(dir, "empty.qcow2", {}, {"truncated header"});
  expect_refused(dir, "short.qcow2", Bytes(good.b.begin(), good.b.begin() + 50), {"truncated header"});
  {
    Image i = good;
    i.be32(kOffMagic, 0x514649fa);
    expect_refused(dir, "magic.qcow2", i.b, {"magic"});
  }
  for (uint32_t v : {0u, 1u, 4u, 0xffffffffu}) {
    Image i = good;
    i.be32(kOffVersion, v);
    expect_refused(dir, "version" + std::to_string(v) + ".qcow2", i.b, {"version"});
  }
  // A v3 header cut short inside its 104 bytes.
  expect_refused(dir, "short-v3.qcow2", Bytes(good.b.begin(), good.b.begin() + 90), {"truncated version 3 header"});
}

TEST_CASE("qcow2 bad input: header_length too small, too big, unaligned") {
  TempDir dir;
  const Image good({});
  for (uint32_t len : {0u, 72u, 96u, 100u}) {
    Image i = good;
    i.be32(kOffHeaderLength, len);
    expect_refused(dir, "hlen-small-" + std::to_string(len) + ".qcow2", i.b, {"header_length"});
  }
  for (uint64_t len : {good.c + 8, uint64_t{0x80000000}, uint64_t{0xfffffff8}}) {
    Image i = good;
    i.be32(kOffHeaderLength, len);
    expect_refused(dir, "hlen-big-" + std::to_string(len) + ".qcow2", i.b, {"header_length"});
  }
  {
    Image i = good;
    i.be32(kOffHeaderLength, 105);
    expect_refused(dir, "hlen-unaligned.qcow2", i.b, {"header_length"});
  }
  {
    // Longer than 104, a multiple of 8, with zeroes past the known fields: valid (compression type 0).
    Image i = good;
    i.be32(kOffHeaderLength, 112);
    i.be64(112, 0);  // end of extensions after the longer header
    expect_opens(dir, "hlen-112.qcow2", i.b);
  }
}

TEST_CASE("qcow2 bad input: cluster_bits out of range") {
  TempDir dir;
  const Image good({});
  for (uint32_t bits : {0u, 8u, 22u, 31u, 63u, 64u, 0xffffffffu}) {
    Image i = good;
    i.be32(kOffClusterBits, bits);
    expect_refused(dir, "cbits" + std::to_string(bits) + ".qcow2", i.b, {"cluster_bits"});
  }
}

TEST_CASE("qcow2 bad input: absurd virtual sizes and L1 tables that do not match") {
  TempDir dir;
  const Image good({});
  {
    // > 2^61 with an L1 size that would cover it if it could: refused for the size or the L1 table.
    Image i = good;
    i.be64(kOffSize, (1ull << 62));
    i.be32(kOffL1Size, 0xffffffffu);
    expect_refused(dir, "size-2p62.qcow2", i.b, {"virtual size"});
    i.be64(kOffSize, ~0ull);
    expect_refused(dir, "size-max.qcow2", i.b, {"virtual size"});
    i.be64(kOffSize, 1ull << 63);
    expect_refused(dir, "size-2p63.qcow2", i.b, {"virtual size"});
  }
  {
    // 512-byte clusters: one L1 entry covers 32 KiB; 2^45 bytes needs a 2^30-entry (8 GiB) L1 table.
    Image i({.cluster_bits = 9});
    i.be64(kOffSize, 1ull << 45);
    i.be32(kOffL1Size, 1u << 30);
    expect_refused(dir, "l1-too-large.qcow2", i.b, {"l1_size"});
  }
  {
    // l1_size one entry short of what the virtual size needs (64 KiB clusters: 512 MiB per entry).
    Image i = good;
    i.be64(kOffSize, 3ull << 30);
    i.be32(kOffL1Size, 5);
    expect_refused(dir, "l1-short.qcow2", i.b, {"l1_size"});
  }
  for (uint32_t n : {0x02000000u, 0x7fffffffu, 0xffffffffu}) {
    Image i = good;
    i.be32(kOffL1Size, n);
    expect_refused(dir, "l1-huge-" + std::to_string(n) + ".qcow2", i.b, {"l1_size"});
  }
}

TEST_CASE("qcow2 bad input: l1_table_offset unaligned, zero, beyond the file") {
  TempDir dir;
  const Image good({});
  const std::initializer_list<std::string_view> field = {"l1_table_offset"};
  for (uint64_t off : {good.l1_offset + 8, good.l1_offset + 512, uint64_t{0}, good.b.size(), good.b.size() + good.c * 100,
                       uint64_t{0x00fffffffff00000}, ~uint64_t{0} - 0xffff}) {
    Image i = good;
    i.be64(kOffL1Offset, off);
    expect_refused(dir, "l1off-" + std::to_string(off) + ".qcow2", i.b, field);
  }
  {
    // The L1 table at the refcount table's offset: its entries are read as L1 entries. Whether that
    // is caught at open (overlap) or later, it must not crash. Reported.
    Image i = good;
    i.be64(kOffL1Offset, good.rt_offset);
    write_file(dir / "l1-over-rt.qcow2", i.b);
    const std::string msg = open_error(dir / "l1-over-rt.qcow2", rw_opts());
    if (msg.empty()) MESSAGE("note: an L1 table overlapping the refcount table is accepted at open");
  }
}

TEST_CASE("qcow2 bad input: refcount table offset and size") {
  TempDir dir;
  const Image good({});
  const std::initializer_list<std::string_view> field = {"refcount_table_offset"};
  for (uint64_t off : {good.rt_offset + 8, good.rt_offset + 512, uint64_t{0}, good.b.size() + good.c,
                       uint64_t{0x00fffffffff00000}, ~uint64_t{0} - 0xffff}) {
    Image i = good;
    i.be64(kOffRtOffset, off);
    expect_refused(dir, "rtoff-" + std::to_string(off) + ".qcow2", i.b, field);
  }
  for (uint32_t n : {0u, 1000u, 0x00800000u, 0xffffffffu}) {
    Image i = good;
    i.be32(kOffRtClusters, n);
    expect_refused(dir, "rtclusters-" + std::to_string(n) + ".qcow2", i.b,
                   {"refcount_table_clusters"});
  }
  for (uint32_t order : {7u, 8u, 64u, 0xffffffffu}) {
    Image i = good;
    i.be32(kOffRefcountOrder, order);
    expect_refused(dir, "rorder-" + std::to_string(order) + ".qcow2", i.b, {"refcount_order"});
  }
  {
    // A refcount table entry that is unaligned or points past the end of the file.
    Image i = good;
    i.be64(good.rt_offset, good.rb_offset + 512);
    expect_refused(dir, "rt-entry-unaligned.qcow2", i.b, {"refcount table entry 0"});
  }
  {
    Image i = good;
    i.be64(good.rt_offset + 8, good.b.size() + 64 * good.c);
    expect_refused(dir, "rt-entry-beyond.qcow2", i.b, {"refcount table entry 1"});
  }
}

TEST_CASE("qcow2 bad input: feature bits, dirty and corrupt images, encryption") {
  TempDir dir;
  const Image good({});
  for (unsigned bit : {2u, 10u, 63u}) {
    // Bit 2: external data file (not supported); 10, 63: unknown.
    Image i = good;
    i.be64(kOffIncompatible, 1ull << bit);
    expect_refused(dir, "incompat-bit" + std::to_string(bit) + ".qcow2", i.b, {"incompatible_features"}, ro_opts());
  }
  {
    // Unknown compatible and autoclear bits are fine.
    Image i = good;
    i.be64(kOffCompatible, 1ull << 40);
    i.be64(kOffAutoclear, 1ull << 40);
    expect_opens(dir, "compat-unknown.qcow2", i.b);
  }
  {
    Image i = good;
    i.be64(kOffIncompatible, 1);  // dirty
    expect_opens(dir, "dirty-ro.qcow2", i.b, ro_opts());
    expect_refused(dir, "dirty-rw.qcow2", i.b, {"dirty"}, rw_opts());
  }
  {
    Image i = good;
    i.be64(kOffIncompatible, 2);  // corrupt
    expect_refused(dir, "corrupt-rw.qcow2", i.b, {"corrupt"}, rw_opts());
    const std::string ro = open_error(dir / "corrupt-rw.qcow2", ro_opts());
    if (!ro.empty()) MESSAGE("note: a corrupt-flagged image is refused read-only too: ", ro);
  }
  for (uint32_t method : {1u, 2u, 3u}) {
    Image i = good;
    i.be32(kOffCrypt, method);
    expect_refused(dir, "crypt" + std::to_string(method) + ".qcow2", i.b, {"crypt_method"}, ro_opts());
  }
  {
    // A v2 image has no feature fields: bytes 72.. are extensions, so the same bits are ignored.
    Image i({.version = 2});
    i.be32(kOffCrypt, 1);
    expect_refused(dir, "crypt-v2.qcow2", i.b, {"crypt_method"}, ro_opts());
  }
}

TEST_CASE("qcow2 bad input: backing file name outside the header cluster or too long") {
  TempDir dir;
  const Image good({.backing = "base.raw"});
  write_file(dir / "base.raw", Bytes(1 << 20, 0));
  const std::initializer_list<std::string_view> field = {"backing_file_offset"};
  {
    Image i = good;
    i.be64(kOffBackingOffset, good.c + 8);
    expect_refused(dir, "bf-offset-past.qcow2", i.b, field, ro_opts());
  }
  {
    Image i = good;
    i.be64(kOffBackingOffset, good.c - 4);
    expect_refused(dir, "bf-straddles.qcow2", i.b, field, ro_opts());
  }
  {
    Image i = good;
    i.be64(kOffBackingOffset, ~uint64_t{0} - 3);  // offset + size wraps around
    expect_refused(dir, "bf-wraps.qcow2", i.b, field, ro_opts());
  }
  {
    Image i = good;
    i.be32(kOffBackingSize, 1024);
    expect_refused(dir, "bf-1024.qcow2", i.b, {"backing_file_size"}, ro_opts());
    i.be32(kOffBackingSize, 0xffffffff);
    expect_refused(dir, "bf-huge.qcow2", i.b, {"backing_file_size"}, ro_opts());
  }
  {
    // A name overlapping the header fields themselves.
    Image i = good;
    i.be64(kOffBackingOffset, 8);
    expect_refused(dir, "bf-in-header.qcow2", i.b, field, ro_opts());
  }
  {
    // 1023 bytes is the limit; with a valid (if odd) name it opens without the chain.
    Image i({.backing = std::string(1023, 'x')});
    expect_opens(dir, "bf-1023.qcow2", i.b, ro_opts(false));
  }
}

TEST_CASE("qcow2 bad input: snapshots and header extensions") {
  TempDir dir;
  const Image good({});
  for (uint64_t off : {uint64_t{0}, uint64_t{0x1234}, good.b.size() + good.c, ~uint64_t{0} - 0xffff}) {
    Image i = good;
    i.be32(kOffNbSnapshots, 1);
    i.be64(kOffSnapshotsOffset, off);
    expect_refused(dir, "snap-" + std::to_string(off) + ".qcow2", i.b, {"snapshots_offset"}, ro_opts());
  }
  {
    Image i = good;
    i.be32(kOffNbSnapshots, 0xffffffff);
    i.be64(kOffSnapshotsOffset, good.l1_offset);
    expect_refused(dir, "snap-many.qcow2", i.b, {"nb_snapshots"}, ro_opts());
  }
  const std::initializer_list<std::string_view> field = {"header extension"};
  {
    Image i = good;
    i.be32(good.ext_offset, 0x12345678);  // unknown extension: skipped, but its length runs past the cluster
    i.be32(good.ext_offset + 4, static_cast<uint32_t>(good.c));
    expect_refused(dir, "ext-past-cluster.qcow2", i.b, field, ro_opts());
    i.be32(good.ext_offset + 4, 0xffffffff);
    expect_refused(dir, "ext-huge.qcow2", i.b, field, ro_opts());
  }
  {
    // No end marker: extensions chained to the end of the cluster.
    Image i = good;
    for (uint64_t p = good.ext_offset; p + 8 <= good.c; p += 8) {
      i.be32(p, 0x12345678);
      i.be32(p + 4, 0);
    }
    expect_refused(dir, "ext-no-end.qcow2", i.b, field, ro_opts());
  }
  {
    // A backing-format extension with an unknown format, and one too long.
    Image i({.backing = "base.raw", .backing_format = "vmdk"});
    write_file(dir / "base.raw", Bytes(1 << 20, 0));
    expect_refused(dir, "ext-bf-vmdk.qcow2", i.b, {"backing format 'vmdk'"}, ro_opts(true));
  }
}

TEST_CASE("qcow2 bad input: backing chains that loop, are too deep, or are missing") {
  TempDir dir;
  const uint64_t size = 1 << 20;
  const Bytes base = pattern(size, 3);
  write_file(dir / "base.raw", base);
  {
    // A short chain of qcow2 images on a raw file reads the raw file's bytes.
    write_file(dir / "c2.qcow2", Image({.cluster_bits = 12, .size = size, .backing = "base.raw", .backing_format = "raw"}).b);
    write_file(dir / "c1.qcow2", Image({.cluster_bits = 16, .size = size, .backing = "c2.qcow2", .backing_format = "qcow2"}).b);
    write_file(dir / "c0.qcow2", Image({.cluster_bits = 13, .size = size, .backing = "c1.qcow2"}).b);
    auto q = Qcow2::open(dir / "c0.qcow2", rw_opts(true));
    REQUIRE_MESSAGE(q, q.error().message());
    CHECK(read_range(**q, 0, size) == base);
    CHECK((*q)->info().chain.size() == 3);
  }
  {
    // a -> b -> a: read-only (shared locks all along) reaches the depth limit or a loop check.
    write_file(dir / "a.qcow2", Image({.backing = "b.qcow2", .backing_format = "qcow2"}).b);
    write_file(dir / "b.qcow2", Image({.backing = "a.qcow2", .backing_format = "qcow2"}).b);
    const std::string ro = open_error(dir / "a.qcow2", ro_opts(true));
    INFO("loop, read-only: ", ro);
    REQUIRE(!ro.empty());
    CHECK(contains_any(ro, {"a.qcow2", "b.qcow2"}));
    CHECK(ro.find("loops") != std::string::npos);
    const std::string rw = open_error(dir / "a.qcow2", rw_opts(true));
    INFO("loop, read-write: ", rw);
    REQUIRE(!rw.empty());
    CHECK(contains_any(rw, {"a.qcow2", "b.qcow2"}));
    // Self-loop.
    write_file(dir / "self.qcow2", Image({.backing = "self.qcow2"}).b);
    const std::string self = open_error(dir / "self.qcow2", ro_opts(true));
    INFO("self loop: ", self);
    REQUIRE(!self.empty());
    CHECK(self.find("self.qcow2") != std::string::npos);
    if (std::getenv("QCOW2_BAD_INPUT_VERBOSE")) MESSAGE("loop ro: ", ro, "\nloop rw: ", rw, "\nself: ", self);
  }
  {
    // d0 -> d1 -> ... -> d{N} -> base.raw with N = kMaxChainDepth + 1 qcow2 layers below the top.
    const unsigned n = vmm::disk::kMaxChainDepth + 2;
    for (unsigned k = 0; k < n; ++k) {
      const std::string below = k + 1 < n ? "d" + std::to_string(k + 1) + ".qcow2" : "base.raw";
      write_file(dir / ("d" + std::to_string(k) + ".qcow2"), Image({.cluster_bits = 12, .size = size, .backing = below}).b);
    }
    const std::string msg = open_error(dir / "d0.qcow2", ro_opts(true));
    INFO("deep chain: ", msg);
    REQUIRE(!msg.empty());
    CHECK(msg.find("deeper than") != std::string::npos);
    // The deepest chain that opens: report it (the limit's exact boundary is the engine's).
    unsigned deepest = 0;
    for (unsigned top = n; top-- > 0;) {
      auto q = Qcow2::open(dir / ("d" + std::to_string(top) + ".qcow2"), ro_opts(true));
      if (!q) break;
      deepest = n - top;  // qcow2 layers in this chain, the raw file not counted
    }
    MESSAGE("deepest qcow2 chain that opens: ", deepest, " layers + raw base (kMaxChainDepth = ", vmm::disk::kMaxChainDepth,
            ")");
    CHECK(deepest >= vmm::disk::kMaxChainDepth - 1);
    CHECK(deepest <= vmm::disk::kMaxChainDepth + 1);
  }
  {
    write_file(dir / "orphan.qcow2", Image({.backing = "missing.qcow2"}).b);
    const std::string msg = open_error(dir / "orphan.qcow2", ro_opts(true));
    INFO("missing backing: ", msg);
    REQUIRE(!msg.empty());
    if (std::getenv("QCOW2_BAD_INPUT_VERBOSE")) MESSAGE("missing backing: ", msg);
    CHECK(msg.find("missing.qcow2") != std::string::npos);
    // Without the chain it opens.
    expect_opens(dir, "orphan.qcow2", read_file(dir / "orphan.qcow2"), ro_opts(false));
  }
}

// ---- Runtime corruption: tables that pass the open checks but point at nonsense ------------------

namespace {

/// Opens `img` (written as `name`) and reads guest bytes [off, off + n). A refusal at open is accepted
/// (then it must name the file). Returns the read status, or the open error.
vmm::Result<> open_and_read(const TempDir& dir, const std::string& name, const Image& img, uint64_t off, size_t n,
                            Bytes* out = nullptr, bool read_only = true) {
  const fs::path p = dir / name;
  write_file(p, img.b);
  auto q = Qcow2::open(p, read_only ? ro_opts() : rw_opts());
  if (!q) {
    INFO(name, ": ", q.error().message());
    CHECK(q.error().message().find(p.string()) != std::string::npos);
    MESSAGE(name, ": refused at open: ", q.error().message());
    return std::unexpected(q.error());
  }
  vmm::Result<> st;
  Bytes b = read_range(**q, off, n, &st);
  if (out) *out = std::move(b);
  // Whatever happened, the image still serves its valid cluster.
  if (img.l.with_data) {
    const Bytes want = img.data();
    CHECK(read_range(**q, 0, want.size()) == want);
  }
  return st;
}

/// The read must fail with a message naming the file, or (when `zeroes_ok`) return zeroes.
void expect_bad_read(const TempDir& dir, const std::string& name, const Image& img, uint64_t off, size_t n,
                     bool zeroes_ok = false) {
  Bytes got;
  auto st = open_and_read(dir, name, img, off, n, &got);
  INFO(name);
  if (st) {
    CHECK_MESSAGE(zeroes_ok, "read of a corrupt mapping succeeded");
    CHECK(all_zero(got));
    MESSAGE(name, ": read returned zeroes");
  } else {
    INFO(st.error().message());
    CHECK(st.error().message().find((dir / name).string()) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("qcow2 bad input: corrupt L2 entries fail the read, never crash") {
  TempDir dir;
  const Image good({.cluster_bits = 12, .size = 8 << 20, .with_data = true});
  const uint64_t c = good.c;
  {
    Bytes got;
    REQUIRE(open_and_read(dir, "good-data.qcow2", good, 0, c, &got));
    CHECK(got == good.data());
  }
  {
    Image i = good;
    i.set_l2(1, (good.data_offset + 512) | kCopied);
    expect_bad_read(dir, "l2-unaligned.qcow2", i, c, c);
  }
  {
    Image i = good;
    i.set_l2(1, 0x00fffffffff00000 | kCopied);
    expect_bad_read(dir, "l2-absurd.qcow2", i, c, c, true);
  }
  {
    Image i = good;
    i.set_l2(1, (good.b.size() + 16 * c) | kCopied);
    expect_bad_read(dir, "l2-beyond-eof.qcow2", i, c, c, true);
  }
  {
    // Reserved bits 56..61 and 1..8 set on an otherwise valid entry. QEMU ignores them at run time
    // (only `qemu-img check` reports them); refusing is fine too. Never a crash. Reported.
    Image i = good;
    std::fill_n(i.b.begin() + static_cast<ptrdiff_t>(good.spare_offset), c, uint8_t{0x66});
    for (uint64_t bit : {57, 3}) {
      i.set_l2(1, good.spare_offset | kCopied | (1ull << bit));
      const std::string name = "l2-reserved-bit" + std::to_string(bit) + ".qcow2";
      Bytes got;
      auto st = open_and_read(dir, name, i, c, c, &got);
      if (st) MESSAGE(name, ": reserved bit ignored, read ", std::string(got == Bytes(c, 0x66) ? "the cluster" : "other bytes"));
      else CHECK(st.error().message().find((dir / name).string()) != std::string::npos);
    }
  }
  {
    // A data cluster at the header's offset with no COPIED flag... and offset 0 with the zero flag:
    // the format says "all zeroes".
    Image i = good;
    i.set_l2(1, kZeroFlag);
    Bytes got;
    auto st = open_and_read(dir, "l2-zero-flag.qcow2", i, c, c, &got);
    REQUIRE_MESSAGE(st, st.error().message());
    CHECK(all_zero(got));
    i.set_l2(1, good.spare_offset | kCopied | kZeroFlag);  // allocated and zero
    std::fill_n(i.b.begin() + static_cast<ptrdiff_t>(good.spare_offset), c, uint8_t{0x77});
    st = open_and_read(dir, "l2-zero-flag-alloc.qcow2", i, c, c, &got);
    REQUIRE_MESSAGE(st, st.error().message());
    CHECK(all_zero(got));
  }
}

TEST_CASE("qcow2 bad input: corrupt L1 entries fail the read, never crash") {
  TempDir dir;
  const Image good({.cluster_bits = 12, .size = 8 << 20, .with_data = true});
  const uint64_t per_l1 = good.c / 8 * good.c;  // 2 MiB
  REQUIRE(good.l1_size == 4);
  {
    Image i = good;
    i.set_l1(1, (good.b.size() + 64 * good.c) | kCopied);
    expect_bad_read(dir, "l1-beyond-eof.qcow2", i, per_l1, good.c);
  }
  {
    Image i = good;
    i.set_l1(1, (good.l2_offset + 512) | kCopied);
    expect_bad_read(dir, "l1-unaligned.qcow2", i, per_l1, good.c);
  }
  {
    // Reserved bits 1..8 of an L1 entry: masked off (as QEMU does), so this is the L2 table of
    // entry 0 again, shared by two L1 entries. Reads may follow it; never a crash. Reported.
    Image i = good;
    i.set_l1(1, (good.l2_offset + 8) | kCopied);
    Bytes got;
    auto st = open_and_read(dir, "l1-reserved-bits.qcow2", i, per_l1, good.c, &got);
    if (st) MESSAGE("l1-reserved-bits: followed, read ", std::string(got == good.data() ? "guest cluster 0's data" : "other bytes"));
  }
  {
    Image i = good;
    i.set_l1(1, 0x00fffffffff00000 | kCopied);
    expect_bad_read(dir, "l1-absurd.qcow2", i, per_l1, good.c);
  }
  {
    // An L1 entry pointing at the header cluster: its bytes read as L2 entries (magic, version ...).
    Image i = good;
    i.set_l1(1, kCopied);  // offset 0 is "unallocated": reads zeroes
    Bytes got;
    auto st = open_and_read(dir, "l1-zero.qcow2", i, per_l1, good.c, &got);
    REQUIRE_MESSAGE(st, st.error().message());
    CHECK(all_zero(got));
    i.set_l1(1, good.rt_offset | kCopied);  // the refcount table as an L2 table: entry 0 = rb_offset
    auto st2 = open_and_read(dir, "l1-at-rt.qcow2", i, per_l1, good.c, &got);
    if (st2) MESSAGE("note: an L1 entry pointing at the refcount table is followed (reads cluster ", good.rb_offset, ")");
  }
}

TEST_CASE("qcow2 bad input: compressed clusters with garbage, short or truncated deflate data") {
  TempDir dir;
  const Image good({.cluster_bits = 12, .size = 8 << 20, .with_data = true});
  const uint64_t c = good.c;
  const Bytes plain = pattern(c, 0x31);
  const Bytes z = deflate_raw(plain);
  REQUIRE(z.size() < c);
  {
    // Valid: the control.
    Image i = good;
    std::copy(z.begin(), z.end(), i.b.begin() + static_cast<ptrdiff_t>(good.spare_offset));
    i.set_l2(1, i.compressed_entry(good.spare_offset, z.size()));
    Bytes got;
    auto st = open_and_read(dir, "z-valid.qcow2", i, c, c, &got);
    REQUIRE_MESSAGE(st, st.error().message());
    CHECK(got == plain);
  }
  {
    Image i = good;
    std::fill_n(i.b.begin() + static_cast<ptrdiff_t>(good.spare_offset), c, uint8_t{0xa5});
    i.set_l2(1, i.compressed_entry(good.spare_offset, 1024));
    expect_bad_read(dir, "z-garbage.qcow2", i, c, c);
    for (uint8_t fill : {uint8_t{0x00}, uint8_t{0xff}, uint8_t{0x03}}) {
      std::fill_n(i.b.begin() + static_cast<ptrdiff_t>(good.spare_offset), c, fill);
      expect_bad_read(dir, "z-fill-" + std::to_string(fill) + ".qcow2", i, c, c);
    }
  }
  {
    // A valid stream of less than a cluster.
    Image i = good;
    const Bytes zs = deflate_raw(Bytes(plain.begin(), plain.begin() + 1000));
    std::copy(zs.begin(), zs.end(), i.b.begin() + static_cast<ptrdiff_t>(good.spare_offset));
    i.set_l2(1, i.compressed_entry(good.spare_offset, zs.size()));
    expect_bad_read(dir, "z-short-output.qcow2", i, c, c);
  }
  {
    // The stream cut in half (the descriptor says fewer sectors than it needs).
    const Bytes big = deflate_raw(pattern(c, 0));  // incompressible enough to take several sectors
    Image i = good;
    std::copy(big.begin(), big.end(), i.b.begin() + static_cast<ptrdiff_t>(good.spare_offset));
    if (big.size() > 600) {
      i.set_l2(1, i.compressed_entry(good.spare_offset, 100));
      expect_bad_read(dir, "z-truncated.qcow2", i, c, c);
    }
  }
  {
    // Compressed data running past the end of the file, and at an absurd offset.
    Image i = good;
    const uint64_t near_end = i.b.size() - 100;
    i.set_l2(1, i.compressed_entry(near_end, 4 * 512));
    expect_bad_read(dir, "z-past-eof.qcow2", i, c, c);
    i.set_l2(1, i.compressed_entry(uint64_t{1} << 50, 512));
    expect_bad_read(dir, "z-absurd.qcow2", i, c, c);
  }
}

TEST_CASE("qcow2 bad input: writes through corrupt mappings never touch metadata or crash") {
  TempDir dir;
  const Image good({.cluster_bits = 12, .size = 8 << 20, .with_data = true});
  const uint64_t c = good.c;
  const Bytes d(c, 0x5a);
  const iovec v{const_cast<uint8_t*>(d.data()), d.size()};
  {
    // An L2 entry claiming (COPIED) the L1 table's cluster as data: writing there would overwrite
    // the L1 table. (Entry 1: offset 0 with COPIED is merely unallocated: a write allocates.)
    Image i = good;
    i.set_l2(1, 0 | kCopied);
    i.set_l2(2, good.l1_offset | kCopied);
    const fs::path p = dir / "w-into-l1.qcow2";
    write_file(p, i.b);
    {
      auto q = Qcow2::open(p, rw_opts());
      REQUIRE_MESSAGE(q, q.error().message());
      auto w1 = (*q)->write(c, std::span(&v, 1));
      CHECK_MESSAGE(w1, w1.error().message());
      auto w2 = (*q)->write(2 * c, std::span(&v, 1));
      if (w2) w2 = (*q)->flush();
      if (w2) MESSAGE("note: a write through an L2 entry that points at the L1 table was accepted");
      else CHECK(w2.error().message().find(p.string()) != std::string::npos);
    }
    // The L1 table's first entry still points at the L2 table (unless the engine let the data in).
    const Bytes after = read_file(p);
    const uint64_t l1e = get_be(after, good.l1_offset, 8);
    CHECK_MESSAGE((l1e & 0x00fffffffffffe00) == good.l2_offset, "L1 table overwritten by guest data");
  }
  {
    // Writes, discards and zeroing over clusters with bad entries fail or succeed, never crash.
    Image i = good;
    i.set_l2(1, (good.data_offset + 512) | kCopied);
    i.set_l2(2, (good.b.size() + 64 * c) | kCopied);
    i.set_l2(3, i.compressed_entry(good.spare_offset, 512));
    i.set_l2(4, (good.spare_offset + c) | kCopied | (1ull << 60));
    const fs::path p = dir / "w-corrupt.qcow2";
    write_file(p, i.b);
    auto q = Qcow2::open(p, rw_opts());
    REQUIRE_MESSAGE(q, q.error().message());
    for (uint64_t off : {c, 2 * c, 3 * c, 4 * c, uint64_t{2} << 20}) {
      CAPTURE(off);
      auto w = (*q)->write(off, std::span(&v, 1));
      if (!w) CHECK(w.error().message().find(p.string()) != std::string::npos);
      auto z1 = (*q)->write_zeroes(off, c, false);
      auto z2 = (*q)->discard(off, c);
      (void)z1;
      (void)z2;
    }
    auto f = (*q)->flush();
    (void)f;
    q->reset();
    auto again = Qcow2::open(p, ro_opts());
    CHECK_MESSAGE(again, "the image no longer opens: ", again ? std::string() : again.error().message());
    if (again) CHECK(read_range(**again, 0, c) == good.data());
  }
  {
    // A COPIED L2 entry pointing 1 TiB into the file: a write there would make a 1 TiB sparse file
    // out of a few-KiB image (and put guest data outside the image's clusters).
    Image i = good;
    i.set_l2(1, (uint64_t{1} << 40) | kCopied);
    const fs::path p = dir / "w-far.qcow2";
    write_file(p, i.b);
    auto q = Qcow2::open(p, rw_opts());
    REQUIRE_MESSAGE(q, q.error().message());
    auto w = (*q)->write(c, std::span(&v, 1));
    if (w) w = (*q)->flush();
    if (!w) CHECK(w.error().message().find(p.string()) != std::string::npos);
    if (std::getenv("QCOW2_BAD_INPUT_VERBOSE")) MESSAGE("w-far: ", w ? std::string("accepted") : w.error().message());
    q->reset();
    const auto file_size = fs::file_size(p);
    CHECK_MESSAGE(file_size < (uint64_t{1} << 30), "a write through a far L2 entry grew the file to ", file_size,
                  " bytes (write ", w ? "accepted" : "refused", ")");
  }
}

TEST_CASE("qcow2 bad input: L1 entries pointing at metadata: writes never break the image") {
  TempDir dir;
  const Image good({.cluster_bits = 12, .size = 8 << 20, .with_data = true});
  const uint64_t c = good.c;
  const uint64_t per_l1 = c / 8 * c;
  const Bytes d(2 * c, 0x5a);
  const iovec v{const_cast<uint8_t*>(d.data()), d.size()};
  struct Target {
    const char* name;
    uint64_t offset;
  };
  for (const Target& t : {Target{"header", 0}, Target{"refcount-table", good.rt_offset}, Target{"refcount-block", good.rb_offset},
                          Target{"l1-table", good.l1_offset}, Target{"shared-l2", good.l2_offset},
                          Target{"data-cluster", good.data_offset}}) {
    const std::string name = t.name;
    CAPTURE(name);
    Image i = good;
    i.set_l1(1, t.offset | kCopied);
    if (t.offset == 0) i.set_l1(1, kCopied | 0x200);  // reserved bit 9 (unaligned for 4 KiB clusters)
    const fs::path p = dir / (std::string("l1-to-") + t.name + ".qcow2");
    write_file(p, i.b);
    std::string outcome;
    {
      auto q = Qcow2::open(p, rw_opts());
      if (!q) {
        CHECK(q.error().message().find(p.string()) != std::string::npos);
        if (std::getenv("QCOW2_BAD_INPUT_VERBOSE")) MESSAGE(name, ": refused at open: ", q.error().message());
        continue;
      } else {
        auto w = (*q)->write(per_l1 + c, std::span(&v, 1));
        if (w) w = (*q)->flush();
        outcome = w ? std::string("write accepted") : "write refused: " + w.error().message();
      }
    }
    if (std::getenv("QCOW2_BAD_INPUT_VERBOSE")) MESSAGE(name, ": ", outcome);
    // Whatever happened, the header, refcounts and L1 table still describe guest cluster 0 (the data
    // cluster excepted: there the guest may legitimately have overwritten its own data).
    auto q = Qcow2::open(p, ro_opts());
    CHECK_MESSAGE(q, "after ", outcome, ": the image no longer opens: ", q ? std::string() : q.error().message());
    if (q && name != "data-cluster") CHECK_MESSAGE(read_range(**q, 0, c) == good.data(), outcome);
  }
}

TEST_CASE("qcow2 bad input: refcounts that call metadata free: allocation never reuses it") {
  // A refcount of 0 for a cluster the image uses (or no refcount block at all) must not make the
  // allocator hand that cluster out: QEMU's overlap checks refuse such writes and mark the image
  // corrupt. Whatever the engine does, the image must still open afterwards with its data intact.
  TempDir dir;
  const Image good({.cluster_bits = 12, .size = 8 << 20, .with_data = true});
  const uint64_t c = good.c;
  const Bytes d = pattern(3 * c, 0x21);
  const iovec v{const_cast<uint8_t*>(d.data()), d.size()};
  struct Case {
    const char* name;
    uint64_t cluster;  // whose refcount drops to 0; ~0: no refcount block at all
  };
  for (const Case& k : {Case{"no-refcount-block", ~uint64_t{0}}, Case{"header", 0}, Case{"refcount-table", 1},
                        Case{"refcount-block", 2}, Case{"l1-table", 3}, Case{"l2-table", good.l2_offset / c},
                        Case{"data", good.data_offset / c}}) {
    const std::string name = k.name;
    CAPTURE(name);
    Image i = good;
    if (k.cluster == ~uint64_t{0}) i.be64(good.rt_offset, 0);
    else i.set_refcount(k.cluster, 0);
    const fs::path p = dir / ("free-" + name + ".qcow2");
    write_file(p, i.b);
    std::string outcome = "writes accepted";
    {
      auto q = Qcow2::open(p, rw_opts());
      if (!q) {
        CHECK(q.error().message().find(p.string()) != std::string::npos);
        if (std::getenv("QCOW2_BAD_INPUT_VERBOSE")) MESSAGE(name, ": refused at open: ", q.error().message());
        continue;
      }
      for (uint64_t off : {c, uint64_t{3} << 20, uint64_t{5} << 20}) {
        auto w = (*q)->write(off, std::span(&v, 1));
        if (!w) {
          CHECK(w.error().message().find(p.string()) != std::string::npos);
          outcome = "a write refused: " + w.error().message();
          break;
        }
      }
      if (auto f = (*q)->flush(); !f) outcome += "; flush refused: " + f.error().message();
    }
    if (std::getenv("QCOW2_BAD_INPUT_VERBOSE")) MESSAGE(name, ": ", outcome);
    auto q = Qcow2::open(p, ro_opts());
    CHECK_MESSAGE(q, outcome, "; then the image no longer opens: ", q ? std::string() : q.error().message());
    if (!q) continue;
    if (name == "data" || name == "no-refcount-block") {
      // Only a scan of every L2 table could tell that a data cluster with refcount 0 is in use; QEMU
      // does not do that either (qemu-img check does): the allocator may reuse it. Reported only.
      if (read_range(**q, 0, c) != good.data()) MESSAGE(name, ": note: the data cluster with refcount 0 was reused (as QEMU would)");
      continue;
    }
    CHECK_MESSAGE(read_range(**q, 0, c) == good.data(), outcome, "; guest cluster 0 changed");
    if (outcome == "writes accepted") {
      CHECK_MESSAGE(read_range(**q, c, d.size()) == d, outcome, "; but the data did not stay");
      CHECK(read_range(**q, uint64_t{5} << 20, d.size()) == d);
    }
  }
}

TEST_CASE("qcow2 bad input: compressed entries pointing at metadata: replacing them never frees it") {
  // Overwriting, zeroing or discarding a compressed cluster drops a reference to the clusters its
  // extent covers. When the (hostile) extent lies on the header or a table, that must be refused or
  // ignored, never turn those clusters free for the next allocation.
  TempDir dir;
  const Image good({.cluster_bits = 12, .size = 8 << 20, .with_data = true});
  const uint64_t c = good.c;
  const Bytes d(c, 0x3c);
  const iovec v{const_cast<uint8_t*>(d.data()), d.size()};
  struct Target {
    const char* name;
    uint64_t offset;
  };
  for (const Target& t : {Target{"header", 0}, Target{"refcount-table", good.rt_offset},
                          Target{"refcount-block", good.rb_offset}, Target{"l1-table", good.l1_offset},
                          Target{"l2-table", good.l2_offset}}) {
    for (int how = 0; how < 4; ++how) {
      const std::string name = std::string(t.name) + "-" + std::to_string(how);
      CAPTURE(name);
      Image i = good;
      i.set_l2(1, i.compressed_entry(t.offset, 512));
      const fs::path p = dir / ("z-meta-" + name + ".qcow2");
      write_file(p, i.b);
      std::string outcome = "accepted";
      {
        auto q = Qcow2::open(p, rw_opts());
        if (!q) {
          CHECK(q.error().message().find(p.string()) != std::string::npos);
          continue;
        }
        vmm::Result<> r;
        switch (how) {
          case 0: r = (*q)->write(c, std::span(&v, 1)); break;
          case 1: r = (*q)->write_zeroes(c, c, false); break;
          case 2: r = (*q)->write_zeroes(c, c, true); break;
          case 3: r = (*q)->discard(c, c); break;
        }
        if (r) r = (*q)->flush();
        // Then allocations that would take any cluster wrongly made free.
        for (uint64_t off : {uint64_t{2} << 20, uint64_t{4} << 20, uint64_t{6} << 20}) {
          if (r) r = (*q)->write(off, std::span(&v, 1));
        }
        if (r) r = (*q)->flush();
        if (!r) {
          CHECK(r.error().message().find(p.string()) != std::string::npos);
          outcome = r.error().message();
        }
      }
      if (std::getenv("QCOW2_BAD_INPUT_VERBOSE")) MESSAGE(name, ": ", outcome);
      auto q = Qcow2::open(p, ro_opts());
      CHECK_MESSAGE(q, outcome, "; then the image no longer opens: ", q ? std::string() : q.error().message());
      if (q) CHECK_MESSAGE(read_range(**q, 0, c) == good.data(), outcome, "; guest cluster 0 changed");
    }
  }
}

TEST_CASE("qcow2 bad input: requests outside the virtual size and on a read-only image are refused") {
  TempDir dir;
  const Image good({.cluster_bits = 12, .size = 1 << 20, .with_data = true});
  const fs::path p = dir / "range.qcow2";
  write_file(p, good.b);
  Bytes buf(4096);
  const iovec v{buf.data(), buf.size()};
  {
    auto q = Qcow2::open(p, rw_opts());
    REQUIRE_MESSAGE(q, q.error().message());
    CHECK_FALSE((*q)->read(good.l.size - 100, std::span(&v, 1)));
    CHECK_FALSE((*q)->read(~uint64_t{0} - 10, std::span(&v, 1)));
    CHECK_FALSE((*q)->write(good.l.size, std::span(&v, 1)));
    CHECK_FALSE((*q)->write_zeroes(good.l.size - 512, 1024, true));
    CHECK_FALSE((*q)->discard(~uint64_t{0} - 511, 1024));
    const iovec huge[2] = {{buf.data(), ~size_t{0} - 10}, {buf.data(), 100}};  // length overflows
    CHECK_FALSE((*q)->read(0, std::span(huge, 2)));
  }
  auto q = Qcow2::open(p, ro_opts());
  REQUIRE_MESSAGE(q, q.error().message());
  CHECK_FALSE((*q)->write(0, std::span(&v, 1)));
  CHECK_FALSE((*q)->write_zeroes(0, 4096, true));
  CHECK_FALSE((*q)->discard(0, 4096));
  CHECK(read_file(p) == good.b);
}
