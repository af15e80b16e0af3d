// The split virtqueue against a well-behaved and a hostile driver (tests/unit/virtq_builder.hpp).
#include <doctest/doctest.h>

#include <array>
#include <numeric>

#include "devices/virtio/queue.hpp"
#include "virtq_builder.hpp"

namespace {

using vmm::Gpa;
using vmm::GuestMemory;
using vmm::devices::virtio::DescriptorChain;
using vmm::devices::virtio::kAvailFNoInterrupt;
using vmm::devices::virtio::kDescFIndirect;
using vmm::devices::virtio::kDescFNext;
using vmm::devices::virtio::kDescFWrite;
using vmm::devices::virtio::Queue;
using vmm::devices::virtio::Reader;
using vmm::devices::virtio::Writer;
using vmm::test::RawDesc;
using vmm::test::VirtqBuilder;

constexpr uint64_t kRam = 2 << 20;
constexpr uint64_t kRings = 0x10000;
constexpr uint64_t kData = 0x40000;

GuestMemory ram() {
  auto m = GuestMemory::anonymous(kRam);
  REQUIRE(m);
  return std::move(*m);
}

// Pops expecting an error whose message contains `what`.
void expect_violation(Queue& q, const GuestMemory& mem, std::string_view what) {
  auto r = q.pop(mem);
  REQUIRE_FALSE(r);
  INFO(r.error().message());
  CHECK(r.error().message().find(what) != std::string::npos);
}

DescriptorChain pop_one(Queue& q, const GuestMemory& mem) {
  auto r = q.pop(mem);
  REQUIRE_MESSAGE(r, r.error().message());
  REQUIRE(r->has_value());
  return std::move(**r);
}

}  // namespace

TEST_CASE("virtio queue: setup is checked (size, alignment, rings inside RAM)") {
  auto mem = ram();
  Queue q(256);
  CHECK(q.size() == 256);
  CHECK_FALSE(q.ready());
  VirtqBuilder vq(mem, kRings, 16);
  REQUIRE(vq.attach(q));
  CHECK(q.ready());

  for (int bad : {0, 3, 24, 512}) {
    Queue b(256);
    b.set_size(static_cast<uint16_t>(bad));
    b.set_desc(vq.desc()), b.set_avail(vq.avail()), b.set_used(vq.used());
    CHECK_FALSE(b.enable(mem));
    CHECK_FALSE(b.ready());
  }
  auto try_rings = [&](uint64_t desc, uint64_t avail, uint64_t used) {
    Queue b(256);
    b.set_size(16);
    b.set_desc(desc), b.set_avail(avail), b.set_used(used);
    return b.enable(mem).has_value();
  };
  CHECK(try_rings(vq.desc(), vq.avail(), vq.used()));
  CHECK_FALSE(try_rings(vq.desc() + 8, vq.avail(), vq.used()));   // desc not 16-aligned
  CHECK_FALSE(try_rings(vq.desc(), vq.avail() + 1, vq.used()));   // avail not 2-aligned
  CHECK_FALSE(try_rings(vq.desc(), vq.avail(), vq.used() + 2));   // used not 4-aligned
  CHECK_FALSE(try_rings(kRam - 16 * 8, vq.avail(), vq.used()));   // table straddles the end of RAM
  CHECK(try_rings(kRam - 16 * 16, vq.avail(), vq.used()));        // ... or ends exactly there
  CHECK_FALSE(try_rings(vq.desc(), kRam - 8, vq.used()));
  CHECK_FALSE(try_rings(vq.desc(), vq.avail(), kRam - 64));
  CHECK_FALSE(try_rings(~0ull & ~15ull, vq.avail(), vq.used()));  // wraps around 2^64
  CHECK_FALSE(try_rings(0xc0000000, vq.avail(), vq.used()));      // in the MMIO hole

  q.reset();
  CHECK_FALSE(q.ready());
  CHECK(q.size() == 256);
  CHECK(q.desc() == 0);
}

TEST_CASE("virtio queue: a well-formed chain, read, written and returned") {
  auto mem = ram();
  Queue q(256);
  VirtqBuilder vq(mem, kRings, 8);
  REQUIRE(vq.attach(q));

  auto none = q.pop(mem);
  REQUIRE(none);
  CHECK_FALSE(none->has_value());
  CHECK_FALSE(*q.has_available(mem));

  const std::array<uint8_t, 6> hdr = {1, 2, 3, 4, 5, 6};
  REQUIRE(mem.write(Gpa(kData), hdr));
  vq.add_chain(6, {{kData, 4, false}, {kData + 4, 2, false}, {kData + 0x100, 3, true}, {kData + 0x200, 5, true}});
  CHECK(*q.has_available(mem));
  auto chain = pop_one(q, mem);
  CHECK(chain.head == 6);  // the chain wraps from descriptor 7 to 0
  CHECK(chain.readable.size() == 2);
  CHECK(chain.writable.size() == 2);
  CHECK(chain.readable_bytes == 6);
  CHECK(chain.writable_bytes == 8);

  Reader r(mem, chain.readable);
  std::array<uint8_t, 5> got{};
  REQUIRE(r.read(got));  // crosses the segment boundary
  CHECK(got == std::array<uint8_t, 5>{1, 2, 3, 4, 5});
  CHECK(r.remaining() == 1);
  std::array<uint8_t, 2> too_much{};
  CHECK_FALSE(r.read(too_much));
  CHECK(r.remaining() == 1);  // nothing consumed by the failed read
  CHECK(*r.read_obj<uint8_t>() == 6);

  Writer w(mem, chain.writable);
  const std::array<uint8_t, 4> out = {9, 8, 7, 6};
  REQUIRE(w.write(out));
  CHECK(w.bytes_written() == 4);
  const std::array<uint8_t, 5> big{};
  CHECK_FALSE(w.write(big));  // 4 left
  CHECK(w.bytes_written() == 4);
  REQUIRE(w.write_obj<uint8_t>(0x55));
  CHECK(*mem.read_obj<uint8_t>(Gpa(kData + 0x201)) == 0x55);
  CHECK(*mem.read_obj<uint8_t>(Gpa(kData + 0x100)) == 9);
  CHECK(*mem.read_obj<uint8_t>(Gpa(kData + 0x200)) == 6);

  REQUIRE(q.push_used(mem, chain.head, static_cast<uint32_t>(w.bytes_written())));
  CHECK(vq.used_idx() == 1);
  CHECK(vq.used_elem(0).id == 6);
  CHECK(vq.used_elem(0).len == 5);
  CHECK_FALSE(q.push_used(mem, 8, 0));  // head outside the queue
  CHECK(vq.used_idx() == 1);
}

TEST_CASE("virtio queue: zero-length buffers are tolerated, the reader skips them") {
  auto mem = ram();
  Queue q(16);
  VirtqBuilder vq(mem, kRings, 16);
  REQUIRE(vq.attach(q));
  REQUIRE(mem.write_obj<uint16_t>(Gpa(kData + 8), 0xbeef));
  vq.add_chain(0, {{kData, 0, false}, {kData + 8, 2, false}, {kData + 16, 0, true}, {0, 0, true}});
  auto chain = pop_one(q, mem);
  Reader r(mem, chain.readable);
  CHECK(r.remaining() == 2);
  CHECK(*r.read_obj<uint16_t>() == 0xbeef);
  Writer w(mem, chain.writable);
  CHECK(w.remaining() == 0);
  CHECK_FALSE(w.write_obj<uint8_t>(1));
  REQUIRE(w.skip(0));
}

TEST_CASE("virtio queue: hostile chains are refused with a reason") {
  auto mem = ram();
  Queue q(16);
  VirtqBuilder vq(mem, kRings, 16);
  REQUIRE(vq.attach(q));
  auto fresh = [&] {
    q.reset();
    vq = VirtqBuilder(mem, kRings, 16);
    REQUIRE(vq.attach(q));
  };

  SUBCASE("head outside the table") {
    vq.publish(16);
    expect_violation(q, mem, "descriptor index 16 outside");
  }
  SUBCASE("next outside the table") {
    vq.set_desc(0, {.addr = kData, .len = 4, .flags = kDescFNext, .next = 200});
    vq.publish(0);
    expect_violation(q, mem, "descriptor index 200 outside");
  }
  SUBCASE("a loop") {
    vq.set_desc(0, {.addr = kData, .len = 4, .flags = kDescFNext, .next = 1});
    vq.set_desc(1, {.addr = kData, .len = 4, .flags = kDescFNext, .next = 0});
    vq.publish(0);
    expect_violation(q, mem, "a loop?");
  }
  SUBCASE("a self loop") {
    vq.set_desc(3, {.addr = kData, .len = 4, .flags = kDescFNext | kDescFWrite, .next = 3});
    vq.publish(3);
    expect_violation(q, mem, "longer than the 16 entries");
  }
  SUBCASE("unknown flags") {
    vq.set_desc(0, {.addr = kData, .len = 4, .flags = 0x8, .next = 0});
    vq.publish(0);
    expect_violation(q, mem, "unknown flags 0x8");
  }
  SUBCASE("one head republished while in use: no more than the queue size in flight") {
    // A driver has at most 16 chains out on a queue of 16; the device stops at that, however
    // many times the guest publishes a head it has not been given back.
    vq.set_desc(0, {.addr = kData, .len = 4, .flags = kDescFWrite, .next = 0});
    for (int i = 0; i < 16; ++i) vq.publish(0);
    for (int i = 0; i < 16; ++i) CHECK(pop_one(q, mem).head == 0);
    vq.publish(0);
    expect_violation(q, mem, "16 chains are in use, the whole queue of 16");
    // Given back, the room is there again.
    fresh();
    vq.set_desc(0, {.addr = kData, .len = 4, .flags = kDescFWrite, .next = 0});
    for (int round = 0; round < 3; ++round) {
      for (int i = 0; i < 16; ++i) vq.publish(0);
      for (int i = 0; i < 16; ++i) {
        auto c = pop_one(q, mem);
        REQUIRE(q.push_used(mem, c.head, 0));
      }
    }
    CHECK(vq.used_idx() == 48);
  }
  SUBCASE("readable after writable") {
    vq.add_chain(0, {{kData, 4, true}, {kData + 8, 4, false}});
    expect_violation(q, mem, "follows a device-writable");
  }
  SUBCASE("buffer outside RAM, straddling its end, wrapping around 2^64, in the MMIO hole") {
    for (auto [addr, len] : std::initializer_list<std::pair<uint64_t, uint32_t>>{
             {kRam, 1}, {kRam - 4, 8}, {~0ull - 3, 16}, {0xfee00000, 4}, {kData, 0xffffffff}}) {
      fresh();
      vq.set_desc(0, {.addr = addr, .len = len, .flags = kDescFWrite, .next = 0});
      vq.publish(0);
      expect_violation(q, mem, "outside RAM");
    }
  }
  SUBCASE("a zero-length buffer outside RAM is still refused") {
    vq.set_desc(0, {.addr = kRam + 4096, .len = 0, .flags = 0, .next = 0});
    vq.publish(0);
    expect_violation(q, mem, "outside RAM");
  }
  SUBCASE("avail idx far beyond the queue size") {
    vq.set_avail_idx(17);
    expect_violation(q, mem, "more than the queue size 16");
    vq.set_avail_idx(0x8000);
    expect_violation(q, mem, "more than the queue size 16");
  }
  SUBCASE("avail idx exactly one queue ahead is legal") {
    for (uint16_t i = 0; i < 16; ++i) {
      vq.set_desc(i, {.addr = kData, .len = 1, .flags = 0, .next = 0});
      vq.publish(i);
    }
    for (uint16_t i = 0; i < 16; ++i) CHECK(pop_one(q, mem).head == i);
  }
  SUBCASE("indirect tables: nested, with NEXT, bad lengths, outside RAM, too long with what comes before") {
    const uint64_t table = kData + 0x1000;
    struct Case {
      RawDesc head;
      RawDesc second;
      bool chain_second;
      const char* what;
    };
    const std::vector<Case> cases = {
        {{table, 32, kDescFIndirect | kDescFNext, 1}, {}, false, "also has NEXT"},
        {{kData, 4, kDescFNext, 1}, {table, 16 * 16, kDescFIndirect, 0}, true, "after 1 descriptors is longer than the queue size"},
        {{table, 0, kDescFIndirect, 0}, {}, false, "not a nonzero multiple of 16"},
        {{table, 24, kDescFIndirect, 0}, {}, false, "not a nonzero multiple of 16"},
        {{kRam - 16, 32, kDescFIndirect, 0}, {}, false, "outside RAM"},
        {{table, 16 * 17, kDescFIndirect, 0}, {}, false, "longer than the queue size"},
    };
    for (const auto& c : cases) {
      fresh();
      vq.set_desc(0, c.head);
      if (c.chain_second) vq.set_desc(1, c.second);
      vq.publish(0);
      expect_violation(q, mem, c.what);
    }
    // Inside the table: nested indirect, a loop, an index past the table's end.
    const std::vector<std::pair<std::vector<RawDesc>, const char*>> inner = {
        {{{table, 16, kDescFIndirect, 0}}, "is itself indirect"},
        {{{kData, 4, kDescFNext, 1}, {kData, 4, kDescFNext, 0}}, "a loop?"},
        {{{kData, 4, kDescFNext, 2}, {kData, 4, 0, 0}}, "outside the indirect table of 2"},
        {{{kRam, 4, kDescFWrite, 0}}, "outside RAM"},
    };
    for (const auto& [descs, what] : inner) {
      fresh();
      for (size_t i = 0; i < descs.size(); ++i) vq.set_table_desc(table, static_cast<uint16_t>(i), descs[i]);
      vq.set_desc(0, {table, static_cast<uint32_t>(16 * descs.size()), kDescFIndirect, 0});
      vq.publish(0);
      expect_violation(q, mem, what);
    }
  }
  SUBCASE("normal descriptors then an indirect one: one chain (virtio 1.2 2.7.5.3.2)") {
    const uint64_t table = kData + 0x1000;
    vq.set_table_desc(table, 0, {kData + 0x10, 8, kDescFNext, 1});
    vq.set_table_desc(table, 1, {kData + 0x100, 1, kDescFWrite, 0});
    vq.set_desc(3, {kData, 16, kDescFNext, 7});
    vq.set_desc(7, {table, 32, kDescFIndirect, 0});
    vq.publish(3);
    auto chain = pop_one(q, mem);
    CHECK(chain.head == 3);
    REQUIRE(chain.readable.size() == 2);
    CHECK(chain.readable[0].gpa == kData);
    CHECK(chain.readable[1].gpa == kData + 0x10);
    CHECK(chain.readable_bytes == 24);
    CHECK(chain.writable_bytes == 1);
    // Readable after writable is refused across the two parts too.
    fresh();
    vq.set_table_desc(table, 0, {kData + 0x10, 8, 0, 0});
    vq.set_desc(3, {kData, 16, kDescFNext | kDescFWrite, 7});
    vq.set_desc(7, {table, 16, kDescFIndirect, 0});
    vq.publish(3);
    expect_violation(q, mem, "follows a device-writable one");
  }
  SUBCASE("a good indirect chain (WRITE on the indirect descriptor is ignored)") {
    const uint64_t table = kData + 0x1000;
    vq.set_table_desc(table, 0, {kData, 16, kDescFNext, 1});
    vq.set_table_desc(table, 1, {kData + 0x100, 1, kDescFWrite, 0});
    vq.set_desc(5, {table, 32, kDescFIndirect | kDescFWrite, 0});
    vq.publish(5);
    auto chain = pop_one(q, mem);
    CHECK(chain.head == 5);
    CHECK(chain.readable_bytes == 16);
    CHECK(chain.writable_bytes == 1);
  }
}

TEST_CASE("virtio queue: interrupt suppression with and without EVENT_IDX") {
  auto mem = ram();
  VirtqBuilder vq(mem, kRings, 8);
  auto push = [&](Queue& q) {
    vq.add_chain(0, {{kData, 1, true}});
    auto c = pop_one(q, mem);
    REQUIRE(q.push_used(mem, c.head, 1));
  };

  SUBCASE("flags") {
    Queue q(8);
    REQUIRE(vq.attach(q));
    push(q);
    CHECK(*q.needs_interrupt(mem));
    CHECK_FALSE(*q.needs_interrupt(mem));  // nothing new pushed
    vq.set_avail_flags(kAvailFNoInterrupt);
    push(q);
    CHECK_FALSE(*q.needs_interrupt(mem));
    vq.set_avail_flags(0);
    push(q);
    CHECK(*q.needs_interrupt(mem));
  }
  SUBCASE("event index") {
    Queue q(8);
    q.set_event_idx(true);
    REQUIRE(vq.attach(q));
    push(q);                        // used idx 1
    CHECK(*q.needs_interrupt(mem));  // used_event 0: the first used buffer interrupts
    vq.set_used_event(3);            // the driver wants an interrupt once used idx passes 3
    push(q);                         // 2
    CHECK_FALSE(*q.needs_interrupt(mem));
    push(q);                         // 3
    CHECK_FALSE(*q.needs_interrupt(mem));
    push(q);                         // 4: crossed 3 -> 4
    CHECK(*q.needs_interrupt(mem));
    push(q);
    push(q);                         // 6: the event (3) is behind: no interrupt
    CHECK_FALSE(*q.needs_interrupt(mem));
    // The device asks to be notified past its position.
    REQUIRE(q.enable_notification(mem));
    CHECK(vq.avail_event() == 6);
  }
}

TEST_CASE("virtio queue: save and restore, 16-bit index wrap-around") {
  auto mem = ram();
  Queue q(8);
  VirtqBuilder vq(mem, kRings, 8);
  REQUIRE(vq.attach(q));
  vq.set_avail_idx(0xfffe);
  auto st = q.save();
  st.next_avail = 0xfffe;
  st.next_used = 0xfffe;
  REQUIRE(q.restore(mem, st));
  vq.add_chain(0, {{kData, 1, true}});
  vq.add_chain(1, {{kData, 1, true}});
  vq.add_chain(2, {{kData, 1, true}});  // avail idx wraps to 1
  for (int want : {0, 1, 2}) {
    auto c = pop_one(q, mem);
    CHECK(c.head == want);
    REQUIRE(q.push_used(mem, c.head, 1));
  }
  CHECK(vq.used_idx() == 1);
  CHECK(q.save().next_avail == 1);

  // A restored state with more chains in use than the queue holds is refused.
  auto overfull = q.save();
  overfull.next_avail = 10;
  overfull.next_used = 1;
  auto refused = q.restore(mem, overfull);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message().find("9 chains in use") != std::string::npos);
  CHECK_FALSE(q.ready());
  overfull.next_used = 2;  // 8 in use: a full queue
  REQUIRE(q.restore(mem, overfull));
  CHECK(q.ready());

  // A restored state with rings outside RAM is refused and leaves the queue not ready.
  auto bad = q.save();
  bad.used = kRam;
  CHECK_FALSE(q.restore(mem, bad));
  CHECK_FALSE(q.ready());
  auto none = q.pop(mem);
  REQUIRE(none);
  CHECK_FALSE(none->has_value());
}
