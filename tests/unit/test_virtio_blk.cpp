// virtio-blk: request parsing on good and malformed chains, and the device serving a real file
// through the io_uring event loop, driven by the guest-side queue builder.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <unistd.h>

#include "devices/virtio/blk.hpp"
#include "test_boot_helpers.hpp"
#include "test_device_helpers.hpp"
#include "virtq_builder.hpp"

namespace {

using boot_test::Bytes;
using boot_test::TempFile;
using vmm::Gpa;
using vmm::GuestMemory;
using namespace vmm::devices::virtio;
using namespace std::chrono_literals;
using vmm::test::VirtqBuilder;

constexpr uint64_t kRam = 4 << 20;
constexpr uint64_t kRings = 0x10000;
constexpr uint64_t kHdr = 0x30000;     // request headers
constexpr uint64_t kStatus = 0x31000;  // status bytes
constexpr uint64_t kBuf = 0x100000;    // data buffers
constexpr uint64_t kDiskBytes = 1 << 20;
constexpr uint64_t kCapacity = kDiskBytes / 512;

GuestMemory ram() { return device_test::ram(kRam); }

struct Header {
  uint32_t type, reserved;
  uint64_t sector;
};

DescriptorChain chain(std::vector<Segment> r, std::vector<Segment> w) {
  DescriptorChain c;
  for (auto& s : r) c.readable_bytes += s.len;
  for (auto& s : w) c.writable_bytes += s.len;
  c.readable = std::move(r);
  c.writable = std::move(w);
  return c;
}

BlkRequest parse(const GuestMemory& mem, uint32_t type, uint64_t sector, std::vector<Segment> r, std::vector<Segment> w) {
  REQUIRE(mem.write_obj(Gpa(kHdr), Header{type, 0, sector}));
  r.insert(r.begin(), Segment{kHdr, 16});
  auto req = parse_blk_request(mem, chain(std::move(r), std::move(w)), kCapacity);
  REQUIRE_MESSAGE(req, req.error().message());
  return *req;
}


Bytes pattern(size_t n, uint8_t seed) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(i * 13 + seed + (i >> 8));
  return b;
}


// A block device on a temporary file, its queue on guest rings, and an event loop.
struct Rig {
  GuestMemory mem = ram();
  TempFile file{pattern(kDiskBytes, 9), "vmm-blk-test"};
  std::unique_ptr<vmm::EventLoop> loop;
  std::unique_ptr<Block> blk;
  VirtqBuilder vq{mem, kRings, 16};
  device_test::CountingInterrupt irq;
  uint16_t next_desc = 0;

  explicit Rig(bool read_only = false) {
    auto l = vmm::EventLoop::create();
    REQUIRE(l);
    loop = std::move(*l);
    auto img = vmm::disk::open_image(*loop, {.path = file.path(), .read_only = read_only});
    REQUIRE_MESSAGE(img, img.error().message());
    blk = std::make_unique<Block>(std::move(*img), "vmm-disk-0123456789abcdef");
    REQUIRE(vq.attach(blk->queues()[0]));
    REQUIRE(blk->activate(mem, kFVersion1 | kFRingEventIdx, irq));
  }

  // Makes a request available: header (type, sector), then `bufs`, then a status byte.
  uint16_t submit(uint32_t type, uint64_t sector, std::vector<VirtqBuilder::Buf> bufs, int slot) {
    const uint64_t hdr = kHdr + 16ull * slot;
    REQUIRE(mem.write_obj(Gpa(hdr), Header{type, 0, sector}));
    REQUIRE(mem.write_obj<uint8_t>(Gpa(kStatus + slot), 0xee));
    bufs.insert(bufs.begin(), {hdr, 16, false});
    bufs.push_back({kStatus + static_cast<uint64_t>(slot), 1, true});
    const uint16_t head = next_desc;
    next_desc = static_cast<uint16_t>((next_desc + bufs.size()) % vq.size());
    return vq.add_chain(head, bufs);
  }
  uint8_t status(int slot) { return *mem.read_obj<uint8_t>(Gpa(kStatus + slot)); }

  // Kicks the device (the driver's notify).
  void run() {
    std::lock_guard lock(blk->mutex());
    REQUIRE(blk->process_queue(0));
  }
  // Runs the loop until `n` chains are used.
  void wait_used(uint16_t n) {
    for (int i = 0; i < 200 && vq.used_idx() < n; ++i) REQUIRE(loop->run_once(50ms));
    REQUIRE(vq.used_idx() == n);
  }
};

}  // namespace

TEST_CASE("virtio-blk: request parsing, good and malformed") {
  auto mem = ram();
  SUBCASE("read: data is the writable part without the status byte") {
    auto r = parse(mem, kBlkTIn, 8, {}, {{kBuf, 1024}, {kBuf + 4096, 1}});
    CHECK(r.kind == BlkRequest::Kind::Read);
    CHECK(r.sector == 8);
    CHECK(r.data_bytes == 1024);
    CHECK(r.status_gpa == kBuf + 4096);
    // The status byte may share the last buffer with data.
    auto s = parse(mem, kBlkTIn, 0, {}, {{kBuf, 513}});
    CHECK(s.kind == BlkRequest::Kind::Read);
    CHECK(s.data_bytes == 512);
    CHECK(s.status_gpa == kBuf + 512);
    REQUIRE(s.data.size() == 1);
    CHECK(s.data[0].len == 512);
  }
  SUBCASE("write: data is the readable part after the header, even inside the header's buffer") {
    REQUIRE(mem.write_obj(Gpa(kHdr), Header{kBlkTOut, 0, 2}));
    auto r = parse_blk_request(mem, chain({{kHdr, 16 + 512}}, {{kStatus, 1}}), kCapacity);
    REQUIRE(r);
    CHECK(r->kind == BlkRequest::Kind::Write);
    CHECK(r->data_bytes == 512);
    REQUIRE(r->data.size() == 1);
    CHECK(r->data[0].gpa == kHdr + 16);
  }
  SUBCASE("no status byte: the only hard failure") {
    REQUIRE(mem.write_obj(Gpa(kHdr), Header{kBlkTIn, 0, 0}));
    CHECK_FALSE(parse_blk_request(mem, chain({{kHdr, 16}}, {}), kCapacity));
    CHECK_FALSE(parse_blk_request(mem, chain({{kHdr, 16}}, {{kBuf, 0}}), kCapacity));
  }
  SUBCASE("malformed requests are answered, not fatal") {
    struct Case {
      uint32_t type;
      uint64_t sector;
      std::vector<Segment> r, w;
      uint8_t status;
      const char* what;
    };
    const std::vector<Case> cases = {
        {kBlkTIn, 0, {}, {{kBuf, 100}, {kStatus, 1}}, kBlkSIoErr, "not a multiple of 512"},
        // Overlapping buffers adding up to more than any request we serve.
        {kBlkTIn, 0, {}, {{kBuf, 1u << 31}, {kBuf, 1u << 31}, {kStatus, 1}}, kBlkSIoErr, "is more than"},
        {kBlkTIn, kCapacity - 1, {}, {{kBuf, 1024}, {kStatus, 1}}, kBlkSIoErr, "outside the disk"},
        {kBlkTIn, ~0ull, {}, {{kBuf, 512}, {kStatus, 1}}, kBlkSIoErr, "outside the disk"},
        {kBlkTIn, ~0ull / 512 + 1, {}, {{kBuf, 512}, {kStatus, 1}}, kBlkSIoErr, "outside the disk"},
        {kBlkTIn, 0, {{kBuf, 512}}, {{kStatus, 1}}, kBlkSIoErr, "device-readable data"},  // buffer not writable
        {kBlkTOut, 0, {}, {{kBuf, 512}, {kStatus, 1}}, kBlkSIoErr, "device-writable data"},
        {kBlkTOut, kCapacity, {{kBuf, 512}}, {{kStatus, 1}}, kBlkSIoErr, "outside the disk"},
        {kBlkTGetId, 0, {{kBuf, 20}}, {{kStatus, 1}}, kBlkSIoErr, "device-readable"},
        {99, 0, {}, {{kStatus, 1}}, kBlkSUnsupp, "type 99 not supported"},
        {kBlkTDiscard, 0, {}, {{kStatus, 1}}, kBlkSUnsupp, "expected one 16-byte range"},
        {kBlkTDiscard, 0, {{kBuf, 32}}, {{kStatus, 1}}, kBlkSUnsupp, "expected one 16-byte range"},
    };
    for (const auto& c : cases) {
      auto r = parse(mem, c.type, c.sector, c.r, c.w);
      INFO(c.what, " / ", r.error);
      CHECK(r.kind == BlkRequest::Kind::Invalid);
      CHECK(r.status == c.status);
      CHECK(r.error.find(c.what) != std::string::npos);
    }
    // A header cut short.
    auto shorthdr = parse_blk_request(mem, chain({{kHdr, 8}}, {{kStatus, 1}}), kCapacity);
    REQUIRE(shorthdr);
    CHECK(shorthdr->kind == BlkRequest::Kind::Invalid);
  }
  SUBCASE("discard and write-zeroes ranges") {
    struct Range {
      uint64_t sector;
      uint32_t n, flags;
    };
    auto range = [&](uint32_t type, Range rg) {
      REQUIRE(mem.write_obj(Gpa(kBuf), rg));
      return parse(mem, type, 0, {{kBuf, 16}}, {{kStatus, 1}});
    };
    auto d = range(kBlkTDiscard, {8, 16, 0});
    CHECK(d.kind == BlkRequest::Kind::Discard);
    CHECK(d.range_sector == 8);
    CHECK(d.range_sectors == 16);
    CHECK(range(kBlkTDiscard, {8, 16, 1}).status == kBlkSUnsupp);  // unmap on discard
    auto z = range(kBlkTWriteZeroes, {0, 8, kBlkWriteZeroesFUnmap});
    CHECK(z.kind == BlkRequest::Kind::WriteZeroes);
    CHECK(z.unmap);
    CHECK(range(kBlkTWriteZeroes, {0, 8, 2}).status == kBlkSUnsupp);
    CHECK(range(kBlkTWriteZeroes, {kCapacity - 4, 8, 0}).kind == BlkRequest::Kind::Invalid);
    CHECK(range(kBlkTWriteZeroes, {~0ull - 2, 8, 0}).kind == BlkRequest::Kind::Invalid);
  }
}

TEST_CASE("virtio-blk: config space and features") {
  Rig rig;
  const uint64_t f = rig.blk->device_features();
  CHECK((f & kFVersion1) != 0);
  CHECK((f & kBlkFFlush) != 0);
  CHECK((f & kBlkFDiscard) != 0);
  CHECK((f & kBlkFRo) == 0);
  uint64_t cap = 0;
  rig.blk->read_config(0, std::span(reinterpret_cast<uint8_t*>(&cap), 8));
  CHECK(cap == kCapacity);
  uint32_t seg_max = 0;
  rig.blk->read_config(12, std::span(reinterpret_cast<uint8_t*>(&seg_max), 4));
  CHECK(seg_max == Block::kQueueSize - 2);
  // size_max: with seg_max, the largest request a driver makes is one the device serves.
  CHECK((f & kBlkFSizeMax) != 0);
  uint32_t size_max = 0;
  rig.blk->read_config(8, std::span(reinterpret_cast<uint8_t*>(&size_max), 4));
  CHECK(size_max == 1u << 20);
  CHECK(uint64_t{size_max} * seg_max <= kBlkMaxDataBytes);
  std::array<uint8_t, 8> past{1, 1, 1, 1, 1, 1, 1, 1};
  rig.blk->read_config(56, past);  // write_zeroes_may_unmap, padding, then past the end: zero
  CHECK(past == std::array<uint8_t, 8>{1, 0, 0, 0, 0, 0, 0, 0});
  Rig ro(true);
  CHECK((ro.blk->device_features() & kBlkFRo) != 0);
  CHECK((ro.blk->device_features() & kBlkFDiscard) == 0);
}

TEST_CASE("virtio-blk: write, read back, flush, get-id and discard through a real file") {
  Rig rig;
  const Bytes data = pattern(4096, 77);
  REQUIRE(rig.mem.write(Gpa(kBuf), data));
  rig.submit(kBlkTOut, 16, {{kBuf, 1024, false}, {kBuf + 1024, 3072, false}}, 0);
  rig.submit(kBlkTFlush, 0, {}, 1);
  rig.submit(kBlkTGetId, 0, {{kBuf + 0x20000, 20, true}}, 3);
  rig.run();
  rig.wait_used(3);
  // Requests in flight are not ordered (virtio 1.2 §5.2.6.4): read once the write completed.
  rig.submit(kBlkTIn, 8, {{kBuf + 0x10000, 8192, true}}, 2);  // sectors 8..23: old, then the write
  rig.run();
  rig.wait_used(4);
  for (int slot = 0; slot < 4; ++slot) CHECK(rig.status(slot) == kBlkSOk);
  CHECK(device_test::file_bytes(rig.file.path(), 16 * 512, 4096) == data);
  auto read = rig.mem.slice(Gpa(kBuf + 0x10000), 8192);
  REQUIRE(read);
  const Bytes old = pattern(kDiskBytes, 9);
  CHECK(Bytes(read->begin(), read->begin() + 4096) == Bytes(old.begin() + 8 * 512, old.begin() + 16 * 512));
  CHECK(Bytes(read->begin() + 4096, read->end()) == data);
  // Used lengths: the status byte, plus the data for reads and get-id.
  bool seen_read = false;
  for (uint16_t i = 0; i < 4; ++i) {
    auto e = rig.vq.used_elem(i);
    if (e.len == 8193) seen_read = true;
  }
  CHECK(seen_read);
  auto id = rig.mem.slice(Gpa(kBuf + 0x20000), 20);
  CHECK(std::string(id->begin(), id->end()) == "vmm-disk-0123456789a");
  CHECK(rig.irq.count >= 1);
  CHECK(rig.blk->errors() == 0);

  // Discard the written range: reads back as zeroes.
  struct Range {
    uint64_t sector;
    uint32_t n, flags;
  };
  REQUIRE(rig.mem.write_obj(Gpa(kBuf + 0x30000), Range{16, 8, 0}));
  rig.submit(kBlkTDiscard, 0, {{kBuf + 0x30000, 16, false}}, 4);
  rig.run();
  rig.wait_used(5);
  CHECK(rig.status(4) == kBlkSOk);
  CHECK(device_test::file_bytes(rig.file.path(), 16 * 512, 4096) == Bytes(4096, 0));
}

TEST_CASE("virtio-blk: a hostile driver cannot touch the file outside legal requests") {
  Rig rig;
  const Bytes before = device_test::file_bytes(rig.file.path(), 0, kDiskBytes);
  // Past the end, straddling the end, a non-multiple of 512, an unknown type, a write whose data
  // the device would have to write, and a chain without a status byte.
  rig.submit(kBlkTOut, kCapacity, {{kBuf, 512, false}}, 0);
  rig.submit(kBlkTOut, kCapacity - 1, {{kBuf, 1024, false}}, 1);
  rig.submit(kBlkTOut, 0, {{kBuf, 100, false}}, 2);
  rig.submit(77, 0, {}, 3);
  rig.submit(kBlkTOut, 0, {{kBuf, 512, true}}, 4);
  REQUIRE(rig.mem.write_obj(Gpa(kHdr + 16 * 5), Header{kBlkTOut, 0, 0}));
  rig.vq.add_chain(rig.next_desc, {{kHdr + 16 * 5, 16, false}, {kBuf, 512, false}});
  rig.run();
  rig.wait_used(6);
  CHECK(rig.status(0) == kBlkSIoErr);
  CHECK(rig.status(1) == kBlkSIoErr);
  CHECK(rig.status(2) == kBlkSIoErr);
  CHECK(rig.status(3) == kBlkSUnsupp);
  CHECK(rig.status(4) == kBlkSIoErr);
  CHECK(rig.vq.used_elem(5).len == 0);  // returned unanswered
  CHECK(rig.blk->errors() == 6);
  CHECK(device_test::file_bytes(rig.file.path(), 0, kDiskBytes) == before);

  // A queue violation (avail idx far ahead) is an error for the transport (NEEDS_RESET).
  rig.vq.set_avail_idx(static_cast<uint16_t>(rig.vq.used_idx() + 100));
  std::lock_guard lock(rig.blk->mutex());
  CHECK_FALSE(rig.blk->process_queue(0));
}

TEST_CASE("virtio-blk: a read-only disk answers writes with IOERR and leaves the file alone") {
  Rig rig(true);
  const Bytes before = device_test::file_bytes(rig.file.path(), 0, 4096);
  REQUIRE(rig.mem.write(Gpa(kBuf), pattern(512, 1)));
  rig.submit(kBlkTOut, 0, {{kBuf, 512, false}}, 0);
  rig.submit(kBlkTIn, 0, {{kBuf + 4096, 512, true}}, 1);
  rig.run();
  rig.wait_used(2);
  CHECK(rig.status(0) == kBlkSIoErr);
  CHECK(rig.status(1) == kBlkSOk);
  CHECK(device_test::file_bytes(rig.file.path(), 0, 4096) == before);
}

TEST_CASE("virtio-blk: a reset drops completions of requests still in flight") {
  Rig rig;
  rig.submit(kBlkTIn, 0, {{kBuf, 4096, true}}, 0);
  rig.run();
  {
    std::lock_guard lock(rig.blk->mutex());
    rig.blk->reset();
  }
  for (int i = 0; i < 20 && rig.loop->in_flight() > 0; ++i) REQUIRE(rig.loop->run_once(50ms));
  CHECK(rig.loop->in_flight() == 0);
  CHECK(rig.vq.used_idx() == 0);  // nothing written to the old rings
  CHECK(rig.status(0) == 0xee);
}

TEST_CASE("virtio-blk: a driver that refills its ring at every interrupt is served one ring's worth a pass") {
  // A guest's vCPU can make chains available as fast as the device serves them; one pass that
  // followed it would hold the I/O thread and the device's mutex for as long as the guest liked.
  Rig rig;
  uint16_t made = 0;  // chains made available so far
  auto fill = [&] {
    // As a driver does: wants an interrupt for the next used chain, and refills what was used.
    rig.vq.set_used_event(rig.vq.used_idx());
    while (static_cast<uint16_t>(made - rig.vq.used_idx()) + 1 <= rig.vq.size() / 2 && made < 2000) {
      rig.submit(77, 0, {}, made % 8);  // an unknown type: answered at once
      ++made;
    }
  };
  rig.irq.on_signal = [&](unsigned) { fill(); };
  fill();
  rig.run();
  CHECK(rig.vq.used_idx() == rig.vq.size());  // one ring's worth, then it yields
  CHECK(rig.irq.served_again == std::vector<unsigned>{0});
  // Served again (the transport's loop calls process_queue once more), another ring's worth.
  rig.run();
  CHECK(rig.vq.used_idx() == 2 * rig.vq.size());
  CHECK(rig.irq.served_again.size() == 2);
  // Once the driver stops refilling, a pass ends with nothing left and asks for no more.
  while (rig.vq.used_idx() < 2000) {
    const size_t asked = rig.irq.served_again.size();
    rig.run();
    if (rig.irq.served_again.size() == asked) break;
  }
  CHECK(made == 2000);
  CHECK(rig.vq.used_idx() == 2000);
  CHECK(rig.blk->errors() == 2000);
}
