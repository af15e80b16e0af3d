// Bus dispatch and the legacy devices, with fake interrupt lines and VM control.
#include <doctest/doctest.h>

#include <array>
#include <vector>

#include "devices/bus.hpp"
#include "devices/console.hpp"
#include "devices/legacy.hpp"
#include "devices/serial.hpp"

namespace {

using vmm::devices::StopReason;

struct Dummy final : vmm::devices::BusDevice {
  std::vector<uint64_t> offsets;
  void read(uint64_t o, std::span<uint8_t> d) override {
    offsets.push_back(o);
    std::fill(d.begin(), d.end(), 0x11);
  }
  void write(uint64_t o, std::span<const uint8_t>) override { offsets.push_back(o); }
  std::string_view name() const override { return "dummy"; }
};
struct FakeIrq final : vmm::devices::IrqLine {
  int count = 0;
  void trigger() override { ++count; }
};
struct FakeVm final : vmm::devices::VmControl {
  std::vector<std::pair<StopReason, uint32_t>> stops;
  void request_stop(StopReason r, uint32_t s) override { stops.emplace_back(r, s); }
};

uint8_t rd(vmm::devices::BusDevice& d, uint64_t off) {
  uint8_t v = 0;
  d.read(off, std::span(&v, 1));
  return v;
}
void wr(vmm::devices::BusDevice& d, uint64_t off, uint8_t v) { d.write(off, std::span<const uint8_t>(&v, 1)); }

}  // namespace

TEST_CASE("devices: bus rejects zero length, overflow and overlap") {
  vmm::devices::Bus bus("test");
  auto d = std::make_shared<Dummy>();
  CHECK(bus.insert(d, 0x100, 0x10));
  CHECK_FALSE(bus.insert(d, 0x200, 0));
  CHECK_FALSE(bus.insert(d, UINT64_MAX - 4, 16));
  CHECK_FALSE(bus.insert(d, 0x10f, 1));   // overlaps the end
  CHECK_FALSE(bus.insert(d, 0xf8, 0x10));  // overlaps the start
  CHECK_FALSE(bus.insert(d, 0x104, 2));   // inside
  CHECK_FALSE(bus.insert(d, 0x0, 0x1000));  // covers
  CHECK(bus.insert(d, 0x110, 1));          // adjacent is fine
  CHECK(bus.insert(d, 0xf0, 0x10));
  CHECK(bus.insert(d, UINT64_MAX - 15, 16));  // up to the very top
}

TEST_CASE("devices: bus dispatch at range edges and straddling accesses") {
  vmm::devices::Bus bus("test");
  auto d = std::make_shared<Dummy>();
  REQUIRE(bus.insert(d, 0x100, 0x10));
  std::array<uint8_t, 4> buf{};
  CHECK(bus.read(0x100, buf));
  CHECK(bus.read(0x10c, buf));
  CHECK(d->offsets == std::vector<uint64_t>{0, 0xc});
  CHECK_FALSE(bus.read(0x10e, buf));  // straddles the end: unclaimed
  CHECK(buf == std::array<uint8_t, 4>{0xff, 0xff, 0xff, 0xff});
  CHECK_FALSE(bus.read(0xff, std::span(buf).first(1)));
  CHECK_FALSE(bus.write(0x110, std::span<const uint8_t>(buf).first(1)));
  CHECK(d->offsets.size() == 2);
}

TEST_CASE("devices: serial output, divisor latch, loopback and interrupts") {
  auto irq = std::make_shared<FakeIrq>();
  std::vector<uint8_t> out;
  vmm::devices::Serial s(irq, [&](std::span<const uint8_t> b) { out.insert(out.end(), b.begin(), b.end()); });
  wr(s, 0, 'A');
  CHECK(out == std::vector<uint8_t>{'A'});
  CHECK((rd(s, 5) & 0x60) == 0x60);  // THRE | TEMT
  // DLAB: offsets 0/1 are the divisor latch, not THR/IER.
  wr(s, 3, 0x80);
  wr(s, 0, 0x01);
  wr(s, 1, 0x00);
  CHECK(rd(s, 0) == 0x01);
  wr(s, 3, 0x03);
  CHECK(out.size() == 1);
  // THRE interrupt when ETBEI is enabled; reading IIR clears it.
  irq->count = 0;
  wr(s, 1, 0x02);
  CHECK(irq->count == 1);
  CHECK((rd(s, 2) & 0x0f) == 0x02);
  CHECK((rd(s, 2) & 0x0f) == 0x01);
  // RX data: interrupt, LSR.DR, FIFO order, priority over THRE.
  wr(s, 1, 0x03);
  const std::array<uint8_t, 2> in{'x', 'y'};
  CHECK(s.enqueue_input(in) == 2);
  CHECK((rd(s, 2) & 0x0f) == 0x04);
  CHECK((rd(s, 5) & 0x01) == 1);
  CHECK(rd(s, 0) == 'x');
  CHECK(rd(s, 0) == 'y');
  CHECK((rd(s, 5) & 0x01) == 0);
  // Loopback: MSR mirrors MCR, THR comes back on RBR, nothing reaches the sink.
  wr(s, 4, 0x10 | 0x0f);
  CHECK((rd(s, 6) & 0xf0) == 0xf0);
  wr(s, 0, 0x5a);
  CHECK(rd(s, 0) == 0x5a);
  CHECK(out.size() == 1);
}

TEST_CASE("devices: serial FIFO back-pressure and save/restore") {
  auto irq = std::make_shared<FakeIrq>();
  vmm::devices::Serial s(irq, [](std::span<const uint8_t>) {});
  std::vector<uint8_t> many(100, 'z');
  CHECK(s.enqueue_input(many) == vmm::devices::Serial::kRxFifoSize);
  CHECK_FALSE(s.can_accept());
  CHECK(s.enqueue_input(many) == 0);
  wr(s, 7, 0x42);
  auto st = s.save();
  vmm::devices::Serial t(irq, [](std::span<const uint8_t>) {});
  t.restore(st);
  CHECK(rd(t, 7) == 0x42);
  CHECK(rd(t, 0) == 'z');
  CHECK(t.save().rx.size() == vmm::devices::Serial::kRxFifoSize - 1);
}

TEST_CASE("devices: i8042 self test and reset") {
  FakeVm vm;
  vmm::devices::I8042 k(vm);
  wr(k, 4, 0xaa);
  CHECK((rd(k, 4) & 1) == 1);
  CHECK(rd(k, 0) == 0x55);
  wr(k, 4, 0x60);
  wr(k, 0, 0x47);
  wr(k, 4, 0x20);
  CHECK(rd(k, 0) == 0x47);
  CHECK(vm.stops.empty());
  wr(k, 4, 0xfe);
  REQUIRE(vm.stops.size() == 1);
  CHECK(vm.stops[0].first == StopReason::Reset);
}

TEST_CASE("devices: RTC registers, BCD and binary, NMI bit masked") {
  vmm::devices::Rtc rtc;
  wr(rtc, 0, 0x8d);  // register D with the NMI-disable bit
  CHECK(rd(rtc, 1) == 0x80);
  wr(rtc, 0, 0x0a);
  CHECK((rd(rtc, 1) & 0x80) == 0);  // no update in progress
  wr(rtc, 0, 0x08);
  const uint8_t month_bcd = rd(rtc, 1);
  CHECK(month_bcd >= 1);
  CHECK(month_bcd <= 0x12);
  CHECK((month_bcd & 0x0f) <= 9);
  wr(rtc, 0, 0x0b);
  wr(rtc, 1, 0x06);  // binary, 24 h
  wr(rtc, 0, 0x08);
  const uint8_t month_bin = rd(rtc, 1);
  CHECK(month_bin == (month_bcd >> 4) * 10 + (month_bcd & 0x0f));
  wr(rtc, 0, 0x40);
  wr(rtc, 1, 0x99);
  CHECK(rd(rtc, 1) == 0x99);  // CMOS RAM
}

TEST_CASE("devices: debug exit values and ACPI sleep/reset registers") {
  FakeVm vm;
  vmm::devices::DebugExit de(vm);
  const std::array<uint8_t, 4> v4{0x34, 0x12, 0, 0};
  de.write(0, v4);
  de.write(0, std::span<const uint8_t>(v4).first(1));
  REQUIRE(vm.stops.size() == 2);
  CHECK(vm.stops[0] == std::pair{StopReason::DebugExit, uint32_t{0x1234}});
  CHECK(vm.stops[1] == std::pair{StopReason::DebugExit, uint32_t{0x34}});
  vm.stops.clear();
  vmm::devices::AcpiPm pm(vm);
  wr(pm, 1, 0x80);          // clear WAK_STS: no stop
  wr(pm, 0, (1 << 2) | 0x20);  // S1: ignored
  CHECK(vm.stops.empty());
  wr(pm, 0, (5 << 2) | 0x20);  // S5
  wr(pm, 2, 0x01);             // reset
  REQUIRE(vm.stops.size() == 2);
  CHECK(vm.stops[0].first == StopReason::PowerOff);
  CHECK(vm.stops[1].first == StopReason::Reset);
}

TEST_CASE("devices: console spec parsing") {
  CHECK(vmm::devices::parse_console_spec("stdio")->kind == vmm::devices::ConsoleSpec::Kind::Stdio);
  CHECK(vmm::devices::parse_console_spec("none")->kind == vmm::devices::ConsoleSpec::Kind::None);
  auto f = vmm::devices::parse_console_spec("file:/tmp/x");
  REQUIRE(f);
  CHECK(f->path == "/tmp/x");
  CHECK_FALSE(vmm::devices::parse_console_spec("file:"));
  CHECK_FALSE(vmm::devices::parse_console_spec("tty"));
  CHECK_FALSE(vmm::devices::parse_console_spec(""));
}
