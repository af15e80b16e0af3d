// VmGenId: the ID lands in guest memory at the address the DSDT's VGEN.ADDR names, and notify()
// raises the GED interrupt.
#include <doctest/doctest.h>

#include <array>

#include "devices/vmgenid.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/base/layout.hpp"

namespace {

struct CountingIrq final : vmm::devices::IrqLine {
  int count = 0;
  void trigger() override { ++count; }
};

vmm::GuestMemory ram(uint64_t size) {
  auto m = vmm::GuestMemory::anonymous(size);
  REQUIRE(m);
  return std::move(*m);
}

}  // namespace

TEST_CASE("vmgenid: set writes the 16-byte ID at kVmGenIdAddr, get reads it back") {
  auto mem = ram(2 << 20);
  auto irq = std::make_shared<CountingIrq>();
  vmm::devices::VmGenId gen(mem, irq);
  CHECK(gen.get() == vmm::devices::VmGenId::Id{});  // fresh RAM: zero

  const vmm::devices::VmGenId::Id id = {0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
                                        0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10};
  REQUIRE(gen.set(id));
  std::array<uint8_t, 16> in_ram{};
  REQUIRE(mem.read(vmm::Gpa(vmm::layout::kVmGenIdAddr), in_ram));
  CHECK(in_ram == id);
  CHECK(gen.get() == id);
  // Only those 16 bytes change.
  std::array<uint8_t, 2> around{};
  REQUIRE(mem.read(vmm::Gpa(vmm::layout::kVmGenIdAddr - 1), std::span(around).first(1)));
  REQUIRE(mem.read(vmm::Gpa(vmm::layout::kVmGenIdAddr + 16), std::span(around).last(1)));
  CHECK(around == std::array<uint8_t, 2>{0, 0});
  CHECK(irq->count == 0);  // set does not notify

  gen.notify();
  CHECK(irq->count == 1);
  vmm::devices::VmGenId::Id next = id;
  next[0] ^= 0xff;
  REQUIRE(gen.set(next));
  gen.notify();
  CHECK(irq->count == 2);
  CHECK(gen.get() == next);
}

TEST_CASE("vmgenid: set fails cleanly when the address is not RAM, and the state is all in guest memory") {
  auto small = ram(64 << 10);  // ends below kVmGenIdAddr
  auto irq = std::make_shared<CountingIrq>();
  vmm::devices::VmGenId gen(small, irq);
  auto r = gen.set({1});
  REQUIRE_FALSE(r);
  CHECK(r.error().message().find("VM generation ID") != std::string::npos);
  CHECK(gen.get() == vmm::devices::VmGenId::Id{});

  // Snapshottable with nothing to save: the ID is in guest memory, which the snapshot holds.
  vmm::ByteWriter w;
  gen.save(w);
  CHECK(w.size() == 0);
  vmm::ByteReader rd(std::span<const uint8_t>{}, "test");
  CHECK(gen.restore(rd));

  // A null line is tolerated (notify does nothing).
  vmm::devices::VmGenId no_irq(small, nullptr);
  no_irq.notify();
}
