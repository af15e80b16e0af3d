// The snapshot state file (clone/state_file.hpp) and its checksum (vmm/base/crc32c.hpp): a round
// trip, then one valid file and, one field away from it, every malformed file the parser must refuse
// with a one-line error naming the file and the field; truncation at every offset and random
// corruption must fail cleanly.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "clone/state_file.hpp"
#include "temp_dir.hpp"
#include "vmm/base/crc32c.hpp"

namespace {

namespace fs = std::filesystem;
using vmm::clone::StateFile;
using vmm::clone::StateSection;
using Bytes = std::vector<uint8_t>;

constexpr const char* kName = "bad.state";

std::span<const uint8_t> as_bytes(std::string_view s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

Bytes random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Bytes b(n);
  for (auto& x : b) x = static_cast<uint8_t>(rng());
  return b;
}

/// Three sections, one of them empty, with odd sizes.
StateFile sample() {
  StateFile f;
  f.sections.push_back({"vcpu0", random_bytes(40, 1)});
  f.sections.push_back({"empty", {}});
  f.sections.push_back({"serial0", random_bytes(13, 2)});
  return f;
}

template <typename T>
void put_at(Bytes& b, size_t off, T v) {
  REQUIRE(off + sizeof v <= b.size());
  std::memcpy(b.data() + off, &v, sizeof v);
}
template <typename T>
T get_at(const Bytes& b, size_t off) {
  T v;
  std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}

/// Recomputes the trailing checksum, so the check a test means is the one that fires.
void reseal(Bytes& b) {
  REQUIRE(b.size() >= 4);
  put_at<uint32_t>(b, b.size() - 4, vmm::crc32c(0, std::span(b).first(b.size() - 4)));
}

/// File offset of table entry i's id-length byte.
size_t entry_at(const Bytes& b, size_t i) {
  size_t pos = 24;
  for (size_t k = 0; k < i; ++k) pos += 1 + b[pos] + 16;
  return pos;
}
size_t offset_field(const Bytes& b, size_t i) { return entry_at(b, i) + 1 + b[entry_at(b, i)]; }
size_t size_field(const Bytes& b, size_t i) { return offset_field(b, i) + 8; }

/// Parses and expects an error whose message holds the file name and every one of `parts`.
void expect_error(const Bytes& b, std::initializer_list<std::string_view> parts) {
  auto r = vmm::clone::parse_state_file(b, kName);
  REQUIRE_FALSE(r.has_value());
  const std::string& m = r.error().message();
  INFO(m);
  CHECK(m.starts_with(std::string(kName) + ": "));
  CHECK(m.find('\n') == std::string::npos);
  for (auto p : parts) CHECK_MESSAGE(m.find(p) != std::string::npos, "missing '", p, "'");
}

bool same(const StateFile& a, const StateFile& b) {
  if (a.major != b.major || a.minor != b.minor || a.sections.size() != b.sections.size()) return false;
  for (size_t i = 0; i < a.sections.size(); ++i) {
    if (a.sections[i].id != b.sections[i].id || a.sections[i].data != b.sections[i].data) return false;
  }
  return true;
}

using vmm::test::TempDir;

}  // namespace

// ---- CRC-32C ------------------------------------------------------------------------------------

TEST_CASE("crc32c: check values on both paths (RFC 3720 B.4)") {
  const bool hw = vmm::crc32c_has_hardware();
  if (!hw) MESSAGE("no SSE4.2 on this host: only the software path is checked");
  const auto check = [&](std::span<const uint8_t> in, uint32_t expect) {
    CHECK(vmm::crc32c_software(0, in) == expect);
    CHECK(vmm::crc32c(0, in) == expect);
    if (hw) CHECK(vmm::crc32c_hardware(0, in) == expect);
  };
  check(as_bytes("123456789"), 0xE3069283);
  check({}, 0);
  check(Bytes(32, 0x00), 0x8A9136AA);
  check(Bytes(32, 0xff), 0x62A8AB43);
  Bytes up(32), down(32);
  for (size_t i = 0; i < 32; ++i) up[i] = static_cast<uint8_t>(i), down[i] = static_cast<uint8_t>(31 - i);
  check(up, 0x46DD794E);
  check(down, 0x113FDB5C);
}

TEST_CASE("crc32c: hardware and software agree on random buffers of odd lengths and alignments") {
  const Bytes big = random_bytes((1 << 20) + 64, 7);
  std::mt19937_64 rng(11);
  std::vector<size_t> lengths = {1, 3, 7, 9, 15, 17, 255, 767, 769, 3 * 256 + 5, 3 * 8192 - 1, 3 * 8192 + 13,
                                 5 * 8192 + 777, (1 << 20) + 3};
  for (int i = 0; i < 60; ++i) lengths.push_back((rng() % 200000) | 1);
  for (const size_t len : lengths) {
    const size_t start = rng() % 8;
    if (start + len > big.size()) continue;
    CAPTURE(len);
    CAPTURE(start);
    const auto in = std::span(big).subspan(start, len);
    const uint32_t sw = vmm::crc32c_software(0, in);
    CHECK(vmm::crc32c(0, in) == sw);
    if (vmm::crc32c_has_hardware()) CHECK(vmm::crc32c_hardware(0, in) == sw);
    // Incremental: any split gives the same value.
    const size_t cut = rng() % (len + 1);
    CHECK(vmm::crc32c(vmm::crc32c(0, in.first(cut)), in.subspan(cut)) == sw);
    CHECK(vmm::crc32c_software(vmm::crc32c_software(0, in.first(cut)), in.subspan(cut)) == sw);
  }
}

TEST_CASE("crc32c: extending over zero bytes without them gives what reading them gives") {
  std::mt19937_64 rng(7);
  const std::vector<uint8_t> zeros(3 << 20, 0);
  for (uint64_t n : {uint64_t{0}, uint64_t{1}, uint64_t{2}, uint64_t{3}, uint64_t{7}, uint64_t{8}, uint64_t{255}, uint64_t{4096},
                     uint64_t{65537}, uint64_t{(1 << 20) + 3}, uint64_t{3 << 20}}) {
    for (uint32_t start : {0u, 0xffffffffu, static_cast<uint32_t>(rng()), vmm::crc32c(0, std::span(zeros).first(5))}) {
      CAPTURE(n);
      CAPTURE(start);
      CHECK(vmm::crc32c_zeros(start, n) == vmm::crc32c(start, std::span(zeros).first(n)));
    }
  }
}

// ---- Round trips ---------------------------------------------------------------------------------

TEST_CASE("state file: round trip with several sections, an empty one included") {
  const StateFile f = sample();
  const Bytes b = vmm::clone::encode_state_file(f);
  CHECK(b.size() % 8 == 4);  // 8-aligned data area, then the u32 checksum
  CHECK(std::memcmp(b.data(), "VMMSTATE", 8) == 0);
  CHECK(get_at<uint64_t>(b, 16) == b.size());
  for (size_t i = 0; i < 3; ++i) CHECK(get_at<uint64_t>(b, offset_field(b, i)) % 8 == 0);
  auto r = vmm::clone::parse_state_file(b, kName);
  REQUIRE_MESSAGE(r, r.error().message());
  CHECK(same(*r, f));
  CHECK(r->find("empty") != nullptr);
  CHECK(r->find("empty")->data.empty());
  CHECK(r->find("nosuch") == nullptr);
  auto s = r->require("serial0", kName);
  REQUIRE(s);
  CHECK(Bytes(s->begin(), s->end()) == f.sections[2].data);
  auto missing = r->require("vcpu1", "t.state");
  REQUIRE_FALSE(missing);
  CHECK(missing.error().message() == "t.state: section 'vcpu1' is missing");

  // No sections; and only empty sections.
  for (const StateFile& g : {StateFile{}, StateFile{.sections = {{"a", {}}, {"b", {}}, {"c", {}}}}}) {
    auto q = vmm::clone::parse_state_file(vmm::clone::encode_state_file(g), kName);
    REQUIRE_MESSAGE(q, q.error().message());
    CHECK(same(*q, g));
  }
}

TEST_CASE("state file: write and read through a file, errors name the path") {
  TempDir dir;
  StateFile f = sample();
  f.sections.push_back({"big.section-1_x", random_bytes(100000, 3)});
  const fs::path p = dir / "t.state";
  auto w = vmm::clone::write_state_file(p, f);
  REQUIRE_MESSAGE(w, w.error().message());
  auto r = vmm::clone::read_state_file(p);
  REQUIRE_MESSAGE(r, r.error().message());
  CHECK(same(*r, f));

  auto missing = vmm::clone::read_state_file(dir / "nosuch.state");
  REQUIRE_FALSE(missing);
  CHECK(missing.error().message().find("nosuch.state: cannot open") != std::string::npos);
  auto nodir = vmm::clone::write_state_file(dir / "nodir" / "x.state", f);
  REQUIRE_FALSE(nodir);
  CHECK(nodir.error().message().find("nodir/x.state: cannot create") != std::string::npos);

  // A parse error from read_state_file names the path too.
  {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out << "not a state file, but long enough for a header";
  }
  auto bad = vmm::clone::read_state_file(p);
  REQUIRE_FALSE(bad);
  CHECK(bad.error().message().starts_with(p.string() + ": bad magic"));

  // Over the size cap: refused from fstat, before anything is read (the file is sparse).
  const fs::path huge = dir / "huge.state";
  { std::ofstream out(huge); }
  fs::resize_file(huge, vmm::clone::kMaxFileSize + 1);
  auto h = vmm::clone::read_state_file(huge);
  REQUIRE_FALSE(h);
  CHECK(h.error().message().find("huge.state: 268435457 bytes is over the state file limit") != std::string::npos);

  CHECK_FALSE(vmm::clone::read_state_file(dir / ""));  // a directory
}

TEST_CASE("state file: write_state_file refuses what the parser would refuse") {
  TempDir dir;
  const auto refused = [&](const StateFile& f, std::string_view part) {
    auto w = vmm::clone::write_state_file(dir / "w.state", f);
    REQUIRE_FALSE(w);
    INFO(w.error().message());
    CHECK(w.error().message().find("w.state: ") != std::string::npos);
    CHECK(w.error().message().find(part) != std::string::npos);
  };
  refused(StateFile{.sections = {{"Upper", {}}}}, "section id 'Upper' is invalid");
  refused(StateFile{.sections = {{"", {}}}}, "section id '' is invalid");
  refused(StateFile{.sections = {{std::string(64, 'a'), {}}}}, "is invalid");
  refused(StateFile{.sections = {{"a", {}}, {"a", {}}}}, "appears twice");
  refused(StateFile{.sections = {{"a", Bytes(vmm::clone::kMaxSectionSize + 1)}}}, "over the limit of 64 MiB");
  refused(StateFile{.major = 2, .minor = 0, .sections = {}}, "format version 2.0 cannot be written");
  StateFile many;
  for (size_t i = 0; i <= vmm::clone::kMaxSections; ++i) many.sections.push_back({"s" + std::to_string(i), {}});
  refused(many, "4097 sections is over the limit of 4096");
  many.sections.pop_back();
  auto ok = vmm::clone::write_state_file(dir / "many.state", many);
  REQUIRE_MESSAGE(ok, ok.error().message());
  auto r = vmm::clone::read_state_file(dir / "many.state");
  REQUIRE_MESSAGE(r, r.error().message());
  CHECK(r->sections.size() == vmm::clone::kMaxSections);
}

// ---- Malformed files, in the parser's order ------------------------------------------------------

TEST_CASE("state file bad input: too short for a header") {
  const Bytes b = vmm::clone::encode_state_file(StateFile{});
  REQUIRE(b.size() == 28);
  expect_error(Bytes{}, {"too short", "0 bytes"});
  expect_error(Bytes(b.begin(), b.begin() + 27), {"too short", "27 bytes", "at least 28"});
}

TEST_CASE("state file bad input: bad magic") {
  Bytes b = vmm::clone::encode_state_file(sample());
  b[3] = 'x';
  reseal(b);
  expect_error(b, {"bad magic 'VMMxTATE'"});
  b[0] = 0;
  expect_error(b, {"bad magic '\\x00MMxTATE'"});
}

TEST_CASE("state file bad input: another major version") {
  Bytes b = vmm::clone::encode_state_file(sample());
  put_at<uint16_t>(b, 8, 2);
  reseal(b);
  expect_error(b, {fmt::format("bad.state: format version 2.{} is not supported (this vmm reads 1.x)", vmm::clone::kStateMinor)});
  put_at<uint16_t>(b, 8, 0);
  put_at<uint16_t>(b, 10, 7);
  reseal(b);
  expect_error(b, {"format version 0.7 is not supported"});
}

TEST_CASE("state file bad input: a newer minor version") {
  Bytes b = vmm::clone::encode_state_file(sample());
  put_at<uint16_t>(b, 10, vmm::clone::kStateMinor + 1);
  reseal(b);
  expect_error(b, {fmt::format("format version 1.{}", vmm::clone::kStateMinor + 1), "minor version"});
}

TEST_CASE("state file bad input: total length differs from the file size") {
  const Bytes good = vmm::clone::encode_state_file(sample());
  Bytes b(good.begin(), good.end() - 1);
  expect_error(b, {"total length", "truncated"});
  b = good;
  b.push_back(0);
  expect_error(b, {"total length", "trailing bytes"});
  b = good;
  put_at<uint64_t>(b, 16, UINT64_MAX);
  reseal(b);
  expect_error(b, {"total length 18446744073709551615", "truncated"});
  // Consistent but over the limit (not read further, the checksum not computed).
  Bytes huge(vmm::clone::kMaxFileSize + 8, 0);
  std::memcpy(huge.data(), good.data(), 24);
  put_at<uint64_t>(huge, 16, huge.size());
  expect_error(huge, {"total length 268435464 is over the limit of 256 MiB"});
}

TEST_CASE("state file bad input: checksum mismatch") {
  Bytes b = vmm::clone::encode_state_file(sample());
  const uint32_t stored = get_at<uint32_t>(b, b.size() - 4);
  b[b.size() - 10] ^= 0x01;  // a data byte
  const uint32_t computed = vmm::crc32c(0, std::span(b).first(b.size() - 4));
  expect_error(b, {fmt::format("checksum mismatch (stored {:#010x}, computed {:#010x}): the file is corrupt", stored,
                               computed)});
  b[b.size() - 10] ^= 0x01;
  b[b.size() - 1] ^= 0x80;  // the checksum itself
  expect_error(b, {"checksum mismatch"});
}

TEST_CASE("state file bad input: section count over the limit") {
  Bytes b = vmm::clone::encode_state_file(sample());
  put_at<uint32_t>(b, 12, 4097);
  reseal(b);
  expect_error(b, {"section count 4097 is over the limit of 4096"});
  put_at<uint32_t>(b, 12, UINT32_MAX);
  reseal(b);
  expect_error(b, {"section count 4294967295"});
}

TEST_CASE("state file bad input: the table runs past the data") {
  Bytes b = vmm::clone::encode_state_file(StateFile{});
  put_at<uint32_t>(b, 12, 1);
  reseal(b);
  expect_error(b, {"section table", "entry 0 id length", "truncated"});
  b = vmm::clone::encode_state_file(StateFile{.sections = {{"abc", {}}}});
  put_at<uint32_t>(b, 12, 2);  // entry 1 is read from the data area's padding: id length 0
  reseal(b);
  expect_error(b, {"section table", "entry 1", "id length 0"});
}

TEST_CASE("state file bad input: bad id length") {
  Bytes b = vmm::clone::encode_state_file(sample());
  b[entry_at(b, 1)] = 0;
  reseal(b);
  expect_error(b, {"section table: entry 1: id length 0 is not in 1..63"});
  b[entry_at(b, 1)] = 64;
  reseal(b);
  expect_error(b, {"entry 1: id length 64 is not in 1..63"});
  b[entry_at(b, 1)] = 255;
  reseal(b);
  expect_error(b, {"entry 1: id length 255"});
  b = vmm::clone::encode_state_file(sample());
  b[entry_at(b, 2)] = 60;  // runs the id into the following bytes: they are not id characters
  reseal(b);
  expect_error(b, {"entry 2", "characters outside [a-z0-9._-]"});
}

TEST_CASE("state file bad input: bad id characters") {
  for (const char c : {'A', ' ', '/', '\0', '\xff', ':', '\''}) {
    CAPTURE(static_cast<int>(c));
    Bytes b = vmm::clone::encode_state_file(sample());
    b[entry_at(b, 2) + 3] = static_cast<uint8_t>(c);  // "serial0"
    reseal(b);
    expect_error(b, {"section table: entry 2: id", "characters outside [a-z0-9._-]"});
  }
}

TEST_CASE("state file bad input: duplicate id") {
  Bytes b = vmm::clone::encode_state_file(StateFile{.sections = {{"aa", {1}}, {"bb", {2}}, {"cc", {}}}});
  b[entry_at(b, 2) + 1] = 'a';
  b[entry_at(b, 2) + 2] = 'a';
  reseal(b);
  expect_error(b, {"section table: entry 2 ('aa'): duplicate id"});
}

TEST_CASE("state file bad input: section size over the limit") {
  Bytes b = vmm::clone::encode_state_file(sample());
  put_at<uint64_t>(b, size_field(b, 0), vmm::clone::kMaxSectionSize + 1);
  reseal(b);
  expect_error(b, {"entry 0 ('vcpu0'): size 67108865 is over the limit of 64 MiB"});
}

TEST_CASE("state file bad input: offset + size overflows") {
  Bytes b = vmm::clone::encode_state_file(sample());
  put_at<uint64_t>(b, offset_field(b, 0), UINT64_MAX - 7);
  reseal(b);
  expect_error(b, {"entry 0 ('vcpu0'): offset 0xfffffffffffffff8 + size 0x28 overflows"});
}

TEST_CASE("state file bad input: offset not aligned") {
  Bytes b = vmm::clone::encode_state_file(sample());
  put_at<uint64_t>(b, offset_field(b, 2), get_at<uint64_t>(b, offset_field(b, 2)) + 4);
  reseal(b);
  expect_error(b, {"entry 2 ('serial0'): offset", "is not 8-byte aligned"});
}

TEST_CASE("state file bad input: section outside the data area") {
  Bytes b = vmm::clone::encode_state_file(sample());
  put_at<uint64_t>(b, offset_field(b, 0), 0);  // over the header
  reseal(b);
  expect_error(b, {"entry 0 ('vcpu0'): offset 0x0 size 0x28 is outside the data area"});
  b = vmm::clone::encode_state_file(sample());
  put_at<uint64_t>(b, offset_field(b, 0), 24);  // over the table
  reseal(b);
  expect_error(b, {"entry 0 ('vcpu0'): offset 0x18", "outside the data area"});
  b = vmm::clone::encode_state_file(sample());
  const uint64_t into_crc = b.size() - 4 - get_at<uint64_t>(b, offset_field(b, 2)) + 1;  // one byte into the checksum
  put_at<uint64_t>(b, size_field(b, 2), into_crc);
  reseal(b);
  expect_error(b, {"entry 2 ('serial0'): offset", fmt::format("size {:#x} is outside the data area", into_crc)});
  b = vmm::clone::encode_state_file(sample());
  put_at<uint64_t>(b, offset_field(b, 2), 1 << 20);  // past the end
  reseal(b);
  expect_error(b, {"entry 2 ('serial0'): offset 0x100000", "outside the data area"});
}

TEST_CASE("state file bad input: sections out of order") {
  Bytes b = vmm::clone::encode_state_file(sample());
  put_at<uint64_t>(b, offset_field(b, 1), get_at<uint64_t>(b, offset_field(b, 0)));  // empty, same offset
  reseal(b);
  expect_error(b, {"entry 1 ('empty'): offset", "is out of order"});
  b = vmm::clone::encode_state_file(sample());
  put_at<uint64_t>(b, offset_field(b, 2), get_at<uint64_t>(b, offset_field(b, 0)));  // below entry 1
  reseal(b);
  expect_error(b, {"entry 2 ('serial0'): offset", "is out of order"});
}

TEST_CASE("state file bad input: overlapping sections") {
  Bytes b = vmm::clone::encode_state_file(sample());
  put_at<uint64_t>(b, offset_field(b, 1), get_at<uint64_t>(b, offset_field(b, 0)) + 8);  // inside vcpu0's 40
  reseal(b);
  expect_error(b, {"entry 1 ('empty'): offset", "overlaps entry 0"});
}

// ---- Whole-file robustness -----------------------------------------------------------------------

TEST_CASE("state file bad input: truncation at every byte offset fails cleanly") {
  const Bytes good = vmm::clone::encode_state_file(sample());
  for (size_t n = 0; n < good.size(); ++n) {
    CAPTURE(n);
    const Bytes b(good.begin(), good.begin() + n);
    auto r = vmm::clone::parse_state_file(b, kName);
    REQUIRE_FALSE(r);
    CHECK(r.error().message().starts_with("bad.state: "));
    // Also with the length field and the checksum made consistent with the cut.
    if (n >= 28) {
      Bytes c = b;
      put_at<uint64_t>(c, 16, n);
      reseal(c);
      auto q = vmm::clone::parse_state_file(c, kName);
      if (q) {
        auto again = vmm::clone::parse_state_file(vmm::clone::encode_state_file(*q), kName);
        REQUIRE(again);
        CHECK(same(*again, *q));
      }
    }
  }
}

TEST_CASE("state file bad input: random single-byte corruption never crashes") {
  const Bytes good = vmm::clone::encode_state_file(sample());
  std::mt19937_64 rng(42);
  for (int i = 0; i < 20000; ++i) {
    Bytes b = good;
    const size_t at = rng() % b.size();
    const auto v = static_cast<uint8_t>(b[at] ^ (1 + rng() % 255));
    b[at] = v;
    // As corrupted: the checksum (or an earlier check) catches every single-byte change.
    auto r = vmm::clone::parse_state_file(b, kName);
    CHECK_FALSE(r);
    // Resealed: every table check is reachable; a success must round-trip.
    if (b.size() >= 28) reseal(b);
    auto q = vmm::clone::parse_state_file(b, kName);
    if (q) {
      auto again = vmm::clone::parse_state_file(vmm::clone::encode_state_file(*q), kName);
      REQUIRE(again);
      CHECK(same(*again, *q));
    } else {
      CHECK(q.error().message().starts_with("bad.state: "));
    }
  }
}
