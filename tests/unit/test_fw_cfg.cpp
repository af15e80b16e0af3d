// fw_cfg through its bus interface, as Linux's qemu_fw_cfg driver uses it (select a key with a
// 16-bit write at offset 0, read bytes at offset 1), its snapshot state, and the identity file.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "devices/fw_cfg.hpp"
#include "vmm/base/codec.hpp"
#include "vmm/base/layout.hpp"

using vmm::ByteReader;
using vmm::ByteWriter;
using vmm::devices::FwCfg;
using Bytes = std::vector<uint8_t>;

namespace {

void select(FwCfg& d, uint16_t key) {
  const uint8_t le[2] = {static_cast<uint8_t>(key), static_cast<uint8_t>(key >> 8)};
  d.write(0, le);
}

// `n` one-byte reads of the data port (the driver's ioread8 / rep insb).
Bytes read_data(FwCfg& d, size_t n) {
  Bytes out(n);
  for (auto& b : out) d.read(1, std::span(&b, 1));
  return out;
}

Bytes bytes(std::string_view s) { return Bytes(s.begin(), s.end()); }

uint32_t be32(const Bytes& b, size_t at) {
  return uint32_t{b[at]} << 24 | uint32_t{b[at + 1]} << 16 | uint32_t{b[at + 2]} << 8 | b[at + 3];
}

struct DirEntry {
  uint32_t size;
  uint16_t select;
  std::string name;
};

// Reads the file directory the way Linux's fw_cfg_register_dir_entries does: the count first, then
// (selecting again, skipping the count) count entries of 64 bytes.
std::vector<DirEntry> read_directory(FwCfg& d) {
  select(d, FwCfg::kFileDirKey);
  const uint32_t count = be32(read_data(d, 4), 0);
  select(d, FwCfg::kFileDirKey);
  read_data(d, 4);
  const Bytes raw = read_data(d, size_t{count} * 64);
  std::vector<DirEntry> out;
  for (uint32_t i = 0; i < count; ++i) {
    const size_t at = size_t{i} * 64;
    CHECK(raw[at + 6] == 0);  // reserved
    CHECK(raw[at + 7] == 0);
    CHECK(raw[at + 8 + 55] == 0);  // the name is NUL-terminated within its 56 bytes
    const char* name = reinterpret_cast<const char*>(raw.data() + at + 8);
    out.push_back({be32(raw, at), static_cast<uint16_t>(raw[at + 4] << 8 | raw[at + 5]), std::string(name)});
  }
  return out;
}

// Reads `count` bytes of item `key` from `pos` as Linux's fw_cfg_read_blob: select, skip, read.
Bytes read_blob(FwCfg& d, uint16_t key, size_t pos, size_t count) {
  select(d, key);
  read_data(d, pos);
  return read_data(d, count);
}

Bytes saved(const FwCfg& d) {
  ByteWriter w;
  d.save(w);
  return w.take();
}

vmm::Result<> restore(FwCfg& d, const Bytes& state) {
  ByteReader r(state, "test: fw_cfg");
  auto res = d.restore(r);
  if (res) CHECK(r.remaining() == 0);
  return res;
}

Bytes state(uint16_t key, uint32_t offset) {
  ByteWriter w;
  w.put(key);
  w.put(offset);
  return w.take();
}

}  // namespace

TEST_CASE("fw_cfg: signature and ID, selected with 16-bit little-endian writes") {
  FwCfg d;
  CHECK(read_data(d, 4) == bytes("QEMU"));  // the signature is selected at reset
  CHECK(read_blob(d, FwCfg::kSignatureKey, 0, 6) == Bytes{'Q', 'E', 'M', 'U', 0, 0});
  // ID: le32 1 = traditional interface, no DMA bit (bit 1).
  CHECK(read_blob(d, FwCfg::kIdKey, 0, 4) == Bytes{1, 0, 0, 0});
  // The selector port reads as 0 and leaves the data position alone.
  select(d, FwCfg::kSignatureKey);
  read_data(d, 1);
  uint8_t sel[2] = {0xaa, 0xaa};
  d.read(0, sel);
  CHECK(sel[0] == 0);
  CHECK(sel[1] == 0);
  CHECK(read_data(d, 3) == bytes("EMU"));
  CHECK(d.name() == "fw_cfg");
  CHECK(vmm::layout::kFwCfgPort == 0x510);
  CHECK(vmm::layout::kFwCfgPortCount == 2);
}

TEST_CASE("fw_cfg: the directory lists files sorted by name with keys from 0x20, and files read back") {
  FwCfg d;
  CHECK(read_directory(d).empty());
  Bytes identity(1024, 0);
  identity[0] = 'x';
  REQUIRE(d.add_file("opt/vmm/identity", identity));
  REQUIRE(d.add_file("etc/zeta", bytes("zzz")));
  REQUIRE(d.add_file("etc/alpha", bytes("alpha!")));
  REQUIRE(d.add_file("etc/empty", {}));
  const std::string longest(FwCfg::kMaxNameLength, 'n');
  REQUIRE(d.add_file(longest, bytes("L")));

  const auto dir = read_directory(d);
  REQUIRE(dir.size() == 5);
  const std::vector<std::string> names = {"etc/alpha", "etc/empty", "etc/zeta", longest, "opt/vmm/identity"};
  const std::vector<uint32_t> sizes = {6, 0, 3, 1, 1024};
  for (size_t i = 0; i < dir.size(); ++i) {
    CAPTURE(i);
    CHECK(dir[i].name == names[i]);
    CHECK(dir[i].size == sizes[i]);
    CHECK(dir[i].select == FwCfg::kFirstFileKey + i);
  }
  CHECK(read_blob(d, dir[0].select, 0, 6) == bytes("alpha!"));
  CHECK(read_blob(d, dir[2].select, 0, 3) == bytes("zzz"));
  CHECK(read_blob(d, dir[4].select, 0, 1024) == identity);
  // A read from a position, as sysfs does for pread(fd, buf, n, pos).
  CHECK(read_blob(d, dir[0].select, 2, 4) == bytes("pha!"));
  // Past the end, reads return 0 and the position stays at the end.
  CHECK(read_blob(d, dir[2].select, 0, 6) == Bytes{'z', 'z', 'z', 0, 0, 0});
  CHECK(read_blob(d, dir[1].select, 0, 2) == Bytes{0, 0});
  // A multi-byte access takes consecutive bytes.
  select(d, dir[0].select);
  Bytes two(2);
  d.read(1, two);
  CHECK(two == bytes("al"));
}

TEST_CASE("fw_cfg: add_file refuses bad names, duplicates and a full key space") {
  FwCfg d;
  CHECK_FALSE(d.add_file("", bytes("x")));
  auto too_long = d.add_file(std::string(FwCfg::kMaxNameLength + 1, 'n'), bytes("x"));
  REQUIRE_FALSE(too_long);
  CHECK(too_long.error().message().find("1 to 55") != std::string::npos);
  CHECK_FALSE(d.add_file(std::string("a\0b", 3), bytes("x")));
  REQUIRE(d.add_file("etc/a", bytes("x")));
  auto dup = d.add_file("etc/a", bytes("yy"));
  REQUIRE_FALSE(dup);
  CHECK(dup.error().message().find("twice") != std::string::npos);
  CHECK(read_directory(d).size() == 1);
  CHECK(read_blob(d, FwCfg::kFirstFileKey, 0, 1) == bytes("x"));

  FwCfg full;
  for (size_t i = 0; i < FwCfg::kMaxFiles; ++i) REQUIRE(full.add_file(fmt::format("f{:05}", i), {}));
  CHECK_FALSE(full.add_file("one-more", {}));
  const auto dir = read_directory(full);
  REQUIRE(dir.size() == FwCfg::kMaxFiles);
  CHECK(dir.back().select == 0x3fff);
}

TEST_CASE("fw_cfg: set_file_content replaces bytes of the same size only") {
  FwCfg d;
  REQUIRE(d.add_file("opt/vmm/identity", Bytes(16, 'a')));
  const auto before = read_directory(d);
  REQUIRE(d.set_file_content("opt/vmm/identity", Bytes(16, 'b')));
  CHECK(read_blob(d, FwCfg::kFirstFileKey, 0, 16) == Bytes(16, 'b'));
  auto shorter = d.set_file_content("opt/vmm/identity", Bytes(15, 'c'));
  REQUIRE_FALSE(shorter);
  CHECK(shorter.error().message().find("15 bytes") != std::string::npos);
  CHECK_FALSE(d.set_file_content("opt/vmm/identity", Bytes(17, 'c')));
  CHECK_FALSE(d.set_file_content("opt/vmm/other", Bytes(16, 'c')));
  CHECK(read_blob(d, FwCfg::kFirstFileKey, 0, 16) == Bytes(16, 'b'));
  // The directory (names, sizes) is what the guest cached at probe: unchanged.
  const auto after = read_directory(d);
  REQUIRE(after.size() == before.size());
  CHECK(after[0].size == before[0].size);
  CHECK(after[0].name == before[0].name);
}

TEST_CASE("fw_cfg: unknown selectors read 0, odd accesses are ignored") {
  FwCfg d;
  REQUIRE(d.add_file("etc/a", bytes("abc")));
  for (uint16_t key : {uint16_t{0x0002}, uint16_t{0x0018}, uint16_t{0x0021}, uint16_t{0x3fff}, uint16_t{0x8000},
                       uint16_t{0x8019}, uint16_t{0xffff}}) {
    CAPTURE(key);
    CHECK(read_blob(d, key, 0, 4) == Bytes(4, 0));
  }
  // Bit 14 (the old write channel) selects the same item, as in QEMU.
  CHECK(read_blob(d, 0x4020, 0, 3) == bytes("abc"));
  // One-byte writes to the selector and writes to the data port change nothing.
  select(d, FwCfg::kFirstFileKey);
  read_data(d, 1);
  const uint8_t one = 0x00;
  d.write(0, std::span(&one, 1));
  const uint8_t junk[2] = {0x00, 0x00};
  d.write(1, std::span(junk, 1));
  d.write(1, junk);
  CHECK(read_data(d, 2) == bytes("bc"));
  // Accesses at other offsets read 0.
  uint8_t b = 0x55;
  d.read(2, std::span(&b, 1));
  CHECK(b == 0);
}

TEST_CASE("fw_cfg: save and restore the selector and position") {
  FwCfg a;
  REQUIRE(a.add_file("etc/a", bytes("0123456789")));
  REQUIRE(a.add_file("opt/vmm/identity", Bytes(1024, 'i')));
  select(a, FwCfg::kFirstFileKey);
  CHECK(read_data(a, 4) == bytes("0123"));
  const Bytes s = saved(a);
  CHECK(s == state(0x20, 4));

  FwCfg b;
  REQUIRE(b.add_file("etc/a", bytes("0123456789")));
  REQUIRE(b.add_file("opt/vmm/identity", Bytes(1024, 'i')));
  REQUIRE(restore(b, s));
  CHECK(read_data(b, 6) == bytes("456789"));
  CHECK(read_data(b, 1) == Bytes{0});

  // The position at the very end, the directory, and the no-item state survive too.
  CHECK(saved(b) == state(0x20, 10));
  select(b, 0x1234);
  CHECK(saved(b) == state(FwCfg::kInvalidKey, 0));
  FwCfg c;
  REQUIRE(restore(c, saved(b)));
  CHECK(read_data(c, 2) == Bytes{0, 0});
  REQUIRE(restore(c, state(FwCfg::kFileDirKey, 4)));
  CHECK(read_data(c, 4) == Bytes{0, 0, 0, 0});  // c has no files: past the 4-byte count
  // A key written with bit 14 is saved as the item's key.
  select(b, 0x4021);
  read_data(b, 2);
  CHECK(saved(b) == state(0x21, 2));
}

TEST_CASE("fw_cfg: restore refuses malformed state and keeps the current one") {
  FwCfg d;
  REQUIRE(d.add_file("etc/a", bytes("0123456789")));
  select(d, FwCfg::kFirstFileKey);
  read_data(d, 3);
  const Bytes good = saved(d);

  struct Case {
    const char* what;
    Bytes bytes;
    const char* message;
  };
  const std::vector<Case> cases = {
      {"empty", {}, "selector: truncated"},
      {"truncated offset", {0x20, 0x00, 0x01}, "offset: truncated"},
      {"unknown well-known key", state(0x0002, 0), "names no item"},
      {"file key past the files", state(0x0021, 0), "names no item"},
      {"write-channel bit", state(0x4020, 0), "names no item"},
      {"arch-local key", state(0x8000, 0), "names no item"},
      {"offset past the file", state(0x0020, 11), "past the end"},
      {"offset past the signature", state(0x0000, 5), "past the end"},
      {"offset with no item", state(FwCfg::kInvalidKey, 1), "no item selected"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    auto r = restore(d, c.bytes);
    REQUIRE_FALSE(r);
    CHECK(r.error().message().find(c.message) != std::string::npos);
    CHECK(r.error().message().find("test: fw_cfg") == 0);
    CHECK(saved(d) == good);
  }
  // Offsets up to the item's size are fine.
  CHECK(restore(d, state(0x0020, 10)));
  CHECK(restore(d, state(0x0000, 4)));
  CHECK(restore(d, state(0x0001, 0)));
}

TEST_CASE("fw_cfg: reads while the VMM replaces content see old or new bytes, never others") {
  FwCfg d;
  REQUIRE(d.add_file("opt/vmm/identity", Bytes(1024, 'a')));
  std::atomic<bool> stop{false};
  std::atomic<bool> set_failed{false};
  std::thread setter([&] {
    const Bytes a(1024, 'a'), b(1024, 'b');
    for (int i = 0; !stop; ++i) {
      if (!d.set_file_content("opt/vmm/identity", i % 2 ? a : b)) set_failed = true;
    }
  });
  for (int i = 0; i < 200; ++i) {
    for (uint8_t c : read_blob(d, FwCfg::kFirstFileKey, 0, 1024)) {
      if (c != 'a' && c != 'b') FAIL("unexpected byte " << int(c));
    }
  }
  stop = true;
  setter.join();
  CHECK_FALSE(set_failed);
}

// ---- Identity file ------------------------------------------------------------------------------

TEST_CASE("fw_cfg: identity_text renders key=value lines, NUL-padded to 1024 bytes") {
  using vmm::devices::identity_text;
  auto t = identity_text({{"clone_id", "7"}, {"hostname", "web-7.example"}, {"empty", ""}, {"x_9", "a=b c"}});
  REQUIRE(t);
  REQUIRE(t->size() == vmm::devices::kIdentitySize);
  const std::string text = "clone_id=7\nhostname=web-7.example\nempty=\nx_9=a=b c\n";
  CHECK(Bytes(t->begin(), t->begin() + static_cast<long>(text.size())) == bytes(text));
  CHECK(std::all_of(t->begin() + static_cast<long>(text.size()), t->end(), [](uint8_t b) { return b == 0; }));
  CHECK(vmm::devices::kIdentityFileName == "opt/vmm/identity");

  auto none = identity_text({});
  REQUIRE(none);
  CHECK(*none == Bytes(1024, 0));

  // 1023 bytes fit (a NUL always ends the text: vmm-agent refuses a file without one); 1024 do not.
  const std::string v(1023 - 3, 'v');  // "k=" + v + "\n"
  auto full = identity_text({{"k", v}});
  REQUIRE(full);
  CHECK(full->back() == 0);
  auto over = identity_text({{"k", v + "v"}});
  REQUIRE_FALSE(over);
  CHECK(over.error().message().find("over 1023 bytes") != std::string::npos);
  CHECK_FALSE(identity_text({{"a", std::string(600, 'x')}, {"b", std::string(600, 'y')}}));
}

TEST_CASE("fw_cfg: identity_text refuses keys outside [a-z0-9_] and values with newline or NUL") {
  using vmm::devices::identity_text;
  for (const char* key : {"", "Upper", "has-dash", "a=b", "sp ace", "nl\n", "dot.ted", "\xc3\xa9"}) {
    CAPTURE(key);
    auto r = identity_text({{"ok", "1"}, {key, "v"}});
    REQUIRE_FALSE(r);
    CHECK(r.error().message().find("identity key") != std::string::npos);
  }
  CHECK_FALSE(identity_text({{"k", "line\nbreak"}}));
  CHECK_FALSE(identity_text({{"k", std::string("nul\0byte", 8)}}));
  CHECK(identity_text({{"k", "tab\tand \x7f and \xc3\xa9"}}));
}

TEST_CASE("fw_cfg: the identity file changes per clone under a fixed directory entry") {
  using vmm::devices::identity_text;
  FwCfg d;
  auto first = identity_text({{"clone_id", "0"}});
  REQUIRE(first);
  REQUIRE(d.add_file(std::string(vmm::devices::kIdentityFileName), *first));
  const auto dir = read_directory(d);
  REQUIRE(dir.size() == 1);
  CHECK(dir[0].name == "opt/vmm/identity");
  CHECK(dir[0].size == 1024);
  auto second = identity_text({{"clone_id", "42"}, {"ip", "10.0.0.42"}});
  REQUIRE(second);
  REQUIRE(d.set_file_content(vmm::devices::kIdentityFileName, *second));
  const Bytes raw = read_blob(d, dir[0].select, 0, dir[0].size);
  CHECK(std::string(reinterpret_cast<const char*>(raw.data())) == "clone_id=42\nip=10.0.0.42\n");
}
