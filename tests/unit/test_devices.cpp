// Bus dispatch and the legacy devices, with fake interrupt lines and VM control.
#include <doctest/doctest.h>

#include <array>
#include <vector>

#include "devices/bus.hpp"
#include "devices/console.hpp"
#include "devices/legacy.hpp"
#include "devices/pci.hpp"
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
  // The other pulse commands with the reset line's bit clear, and the output port written with it
  // clear, reset too (as QEMU's); with it set, nothing.
  wr(k, 4, 0xff);
  wr(k, 4, 0xf1);
  wr(k, 4, 0xd1);
  wr(k, 0, 0x03);
  CHECK(vm.stops.size() == 1);
  wr(k, 4, 0xf0);
  wr(k, 4, 0xd1);
  wr(k, 0, 0x02);
  REQUIRE(vm.stops.size() == 3);
  CHECK(vm.stops[1].first == StopReason::Reset);
  CHECK(vm.stops[2].first == StopReason::Reset);
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

TEST_CASE("devices: pvpanic reports its capability and stops the VM on a panic event only") {
  FakeVm vm;
  vmm::devices::PvPanic pp(vm);
  CHECK(rd(pp, 0) == vmm::devices::PvPanic::kPanicked);
  wr(pp, 0, 0x02);  // crash-loaded: not advertised, ignored
  wr(pp, 0, 0x00);
  CHECK(vm.stops.empty());
  wr(pp, 0, 0x01);
  REQUIRE(vm.stops.size() == 1);
  CHECK(vm.stops[0].first == StopReason::Panic);
  CHECK(vm.stops[0].second == 1);
}

namespace {

uint32_t rd32(vmm::devices::BusDevice& d, uint64_t off) {
  uint32_t v = 0;
  d.read(off, std::span(reinterpret_cast<uint8_t*>(&v), 4));
  return v;
}
void wr32(vmm::devices::BusDevice& d, uint64_t off, uint32_t v) {
  d.write(off, std::span(reinterpret_cast<const uint8_t*>(&v), 4));
}
uint32_t cfg_addr(unsigned bus, unsigned slot, unsigned fn, unsigned reg) {
  return 0x80000000u | bus << 16 | slot << 11 | fn << 8 | reg;
}

struct FakeFunction final : vmm::devices::PciFunction {
  std::array<uint32_t, 64> space{};
  std::vector<std::pair<uint8_t, uint8_t>> writes;  // (reg, byte mask)
  uint32_t config_read(uint8_t reg) override { return space.at(reg / 4); }
  void config_write(uint8_t reg, uint32_t value, uint8_t mask) override {
    writes.emplace_back(reg, mask);
    for (unsigned i = 0; i < 4; ++i) {
      if (mask & (1u << i)) {
        space.at(reg / 4) = (space.at(reg / 4) & ~(0xffu << 8 * i)) | (value & (0xffu << 8 * i));
      }
    }
  }
};

}  // namespace

// Port 0xCF9 (offset 1 of the PCI root's ports), the reset control register: Linux's reboot=pci
// writes 0x02, then 0x06; the second resets. (Its writes went nowhere: the reboot became a triple fault.)
TEST_CASE("devices: a write of the reset bit to port 0xCF9 resets the VM") {
  auto root = std::make_shared<vmm::devices::PciRoot>();
  FakeVm vm;
  wr(*root, 1, 0x06);  // no target yet: ignored
  root->set_reset_target(&vm);
  wr(*root, 1, 0x02);
  CHECK(vm.stops.empty());
  CHECK(rd(*root, 1) == 0x02);
  wr(*root, 1, 0x06);
  REQUIRE(vm.stops.size() == 1);
  CHECK(vm.stops[0].first == StopReason::Reset);
  // The address register at 0xCF8 is untouched by it, and still dword-only.
  wr32(*root, 0, 0x80000000);
  CHECK(rd32(*root, 0) == 0x80000000);
}

TEST_CASE("devices: PCI configuration mechanism #1 reaches the host bridge and attached functions") {
  auto shared_root = std::make_shared<vmm::devices::PciRoot>();
  vmm::devices::PciRoot& root = *shared_root;
  // The address register keeps only its defined bits.
  wr32(root, 0, 0xffffffff);
  CHECK(rd32(root, 0) == 0x80fffffc);
  // Host bridge at 00:00.0: vendor/device, class 06/00/00, header type 0.
  wr32(root, 0, cfg_addr(0, 0, 0, 0x00));
  CHECK(rd32(root, 4) == (uint32_t{0x0008} << 16 | 0x1b36));
  wr32(root, 0, cfg_addr(0, 0, 0, 0x08));
  CHECK((rd32(root, 4) >> 8) == 0x060000);
  // Byte reads at 0xCFD-0xCFF see the right lanes of the dword.
  wr32(root, 0, cfg_addr(0, 0, 0, 0x00));
  CHECK(rd(root, 4) == 0x36);
  CHECK(rd(root, 5) == 0x1b);
  CHECK(rd(root, 6) == 0x08);
  // The command register keeps memory/io/bus-master bits only.
  wr32(root, 0, cfg_addr(0, 0, 0, 0x04));
  wr32(root, 4, 0xffff);
  CHECK(rd32(root, 4) == 0x7);

  // Empty slots, other functions, other buses and a disabled address read all-ones.
  wr32(root, 0, cfg_addr(0, 5, 0, 0));
  CHECK(rd32(root, 4) == 0xffffffff);
  wr32(root, 0, cfg_addr(0, 0, 1, 0));
  CHECK(rd32(root, 4) == 0xffffffff);
  wr32(root, 0, cfg_addr(1, 0, 0, 0));
  CHECK(rd32(root, 4) == 0xffffffff);
  wr32(root, 0, cfg_addr(0, 0, 0, 0) & 0x7fffffff);
  CHECK(rd32(root, 4) == 0xffffffff);

  auto fn = std::make_shared<FakeFunction>();
  fn->space[0] = 0x10001af4;
  CHECK(root.attach(3, fn));
  CHECK_FALSE(root.attach(3, std::make_shared<FakeFunction>()));  // taken
  CHECK_FALSE(root.attach(0, std::make_shared<FakeFunction>()));  // the host bridge's
  CHECK_FALSE(root.attach(32, std::make_shared<FakeFunction>()));
  CHECK_FALSE(root.attach(4, nullptr));
  wr32(root, 0, cfg_addr(0, 3, 0, 0));
  CHECK(rd32(root, 4) == 0x10001af4);
  // A byte write at 0xCFE goes to byte 2 of the dword with the matching mask.
  wr32(root, 0, cfg_addr(0, 3, 0, 0x10));
  wr(root, 6, 0xab);
  REQUIRE(fn->writes.size() == 1);
  CHECK(fn->writes[0] == std::pair<uint8_t, uint8_t>{0x10, 0x4});
  CHECK(fn->space[4] == 0x00ab0000);
  // Malformed accesses: byte access to the address register, straddling the end, too wide.
  wr(root, 0, 0x12);
  CHECK(rd32(root, 0) == cfg_addr(0, 3, 0, 0x10));
  CHECK(rd(root, 1) == 0);  // (0xCF9: the reset control register, nothing written to it)
  std::array<uint8_t, 8> wide{};
  root.read(0, wide);
  CHECK(wide == std::array<uint8_t, 8>{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff});
  root.write(6, std::span<const uint8_t>(wide).first(4));  // straddles 0xCFF: ignored
  CHECK(fn->writes.size() == 1);

  // The address register is saved and restored.
  auto saved = root.save();
  wr32(root, 0, 0);
  root.restore(saved);
  CHECK(rd32(root, 0) == cfg_addr(0, 3, 0, 0x10));
}

TEST_CASE("devices: PCI ECAM reaches the same configuration spaces") {
  auto root = std::make_shared<vmm::devices::PciRoot>();
  auto fn = std::make_shared<FakeFunction>();
  fn->space[0] = 0x10421af4;
  REQUIRE(root->attach(2, fn));
  auto ecam = root->ecam();
  auto at = [](unsigned slot, unsigned func, unsigned reg) { return uint64_t{slot} << 15 | func << 12 | reg; };
  CHECK(rd32(*ecam, at(0, 0, 0)) == (uint32_t{0x0008} << 16 | 0x1b36));  // the host bridge
  CHECK(rd32(*ecam, at(2, 0, 0)) == 0x10421af4);
  CHECK(rd(*ecam, at(2, 0, 2)) == 0x42);
  CHECK(rd32(*ecam, at(3, 0, 0)) == 0xffffffff);  // empty slot
  CHECK(rd32(*ecam, at(2, 1, 0)) == 0xffffffff);  // other function
  CHECK(rd32(*ecam, at(2, 0, 0x100)) == 0);       // no extended capabilities
  wr32(*ecam, at(2, 0, 0x14), 0xc0001000);
  CHECK(fn->space[5] == 0xc0001000);
  wr32(*ecam, at(2, 0, 0x200), 0x1234);  // extended space: ignored
  CHECK(fn->writes.size() == 1);
  std::array<uint8_t, 4> straddle{};
  ecam->read(at(2, 0, 2), straddle);  // crosses the dword: refused
  CHECK(straddle == std::array<uint8_t, 4>{0xff, 0xff, 0xff, 0xff});
}
