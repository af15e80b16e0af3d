// Hostile qcow2 tables: runtime corruption (bad L1/L2 entries, garbage compressed clusters, tables
// and refcounts that point at metadata) must fail the request or be refused, never crash and never
// break the image.
#include "qcow2_image_builder.hpp"

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
