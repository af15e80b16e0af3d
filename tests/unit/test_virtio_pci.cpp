// The virtio-pci transport driven the way a driver drives it, through configuration space and BAR
// accesses: capabilities, BAR sizing, feature negotiation, queue setup, DRIVER_OK, a block request,
// MSI-X delivery and masking, NEEDS_RESET on a hostile ring, device reset, and save/restore.
#include <doctest/doctest.h>

#include <sys/eventfd.h>
#include <sys/socket.h>

#include <set>

#include "devices/virtio/blk.hpp"
#include "devices/virtio/net.hpp"
#include "devices/virtio/pci_transport.hpp"
#include "test_boot_helpers.hpp"
#include "virtq_builder.hpp"

namespace {

using boot_test::Bytes;
using boot_test::TempFile;
using vmm::Gpa;
using vmm::GuestMemory;
using namespace vmm::devices;
using namespace vmm::devices::virtio;
using namespace std::chrono_literals;
using vmm::test::VirtqBuilder;

constexpr uint64_t kRam = 4 << 20;
constexpr uint64_t kBars = 0xc0000000;
constexpr uint64_t kRings = 0x10000;

struct FakeVector final : MsiVector {
  uint64_t address = 0;
  uint32_t data = 0;
  int fired = 0;
  void set_message(uint64_t a, uint32_t d) override { address = a, data = d; }
  void trigger() override { ++fired; }
};

struct FakeIntx final : IntxLine {
  int asserted = 0;
  vmm::Fd resample{::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)};
  void assert_line() override { ++asserted; }
  int resample_fd() const override { return resample.get(); }
};

struct FakeVmIo final : VmIo {
  std::vector<FakeIntx*> intx;
  vmm::Result<std::unique_ptr<IntxLine>> allocate_intx(uint32_t) override {
    auto l = std::make_unique<FakeIntx>();
    intx.push_back(l.get());
    return std::unique_ptr<IntxLine>(std::move(l));
  }
  std::vector<FakeVector*> vectors;
  int ioeventfds = 0;
  vmm::Result<std::unique_ptr<MsiVector>> allocate_msi() override {
    auto v = std::make_unique<FakeVector>();
    vectors.push_back(v.get());
    return std::unique_ptr<MsiVector>(std::move(v));
  }
  // Refused: notifications then take the MMIO path, which the test drives. With accept_ioeventfds,
  // taken and counted (the addresses KVM would signal).
  bool accept_ioeventfds = false;
  std::set<uint64_t> ioeventfd_gpas;
  vmm::Result<> add_ioeventfd(uint64_t gpa, int) override {
    if (!accept_ioeventfds) return vmm::fail("no KVM here");
    ioeventfd_gpas.insert(gpa);
    return {};
  }
  void remove_ioeventfd(uint64_t gpa, int) override { ioeventfd_gpas.erase(gpa); }
};

// A driver's view: config space dwords and BAR accesses of 1, 2, 4 bytes.
struct Driver {
  PciTransport& t;
  uint32_t cfg(uint8_t reg) { return t.config_read(reg); }
  void cfg_write(uint8_t reg, uint32_t v) { t.config_write(reg, v, 0xf); }
  template <typename T>
  T rd(uint64_t off) {
    T v{};
    REQUIRE(t.mmio_read(kBars + off, std::span(reinterpret_cast<uint8_t*>(&v), sizeof v)));
    return v;
  }
  template <typename T>
  void wr(uint64_t off, T v) {
    REQUIRE(t.mmio_write(kBars + off, std::span(reinterpret_cast<const uint8_t*>(&v), sizeof v)));
  }
  void wr64(uint64_t off, uint64_t v) {  // as Linux's vp_iowrite64_twopart
    wr<uint32_t>(off, static_cast<uint32_t>(v));
    wr<uint32_t>(off + 4, static_cast<uint32_t>(v >> 32));
  }
};

// Common configuration offsets (virtio 1.2 §4.1.4.3).
constexpr uint64_t kDFSel = 0x00, kDF = 0x04, kGFSel = 0x08, kGF = 0x0c, kMsixCfg = 0x10, kNumQ = 0x12,
                   kStatus = 0x14, kQSel = 0x16, kQSize = 0x18, kQMsix = 0x1a, kQEnable = 0x1c, kQDesc = 0x20,
                   kQDriver = 0x28, kQDevice = 0x30;

struct Rig {
  GuestMemory mem = [] {
    auto m = GuestMemory::anonymous(kRam);
    REQUIRE(m);
    return std::move(*m);
  }();
  TempFile file{Bytes(1 << 20, 0x5a), "vmm-vpci-test"};
  std::unique_ptr<vmm::EventLoop> loop = [] {
    auto l = vmm::EventLoop::create();
    REQUIRE(l);
    return std::move(*l);
  }();
  FakeVmIo io;
  std::shared_ptr<Block> blk;  // the last transport's device
  std::shared_ptr<PciTransport> t;
  VirtqBuilder vq{mem, kRings, 16};

  Rig() { t = make(); }
  std::shared_ptr<PciTransport> make() {
    auto img = vmm::disk::open_image(*loop, {.path = file.path(), .read_only = true});
    REQUIRE(img);
    blk = std::make_shared<Block>(std::move(*img), "vpci");
    auto tr = PciTransport::create(blk, "test", io, *loop, mem, kBars, 17);
    REQUIRE(tr);
    return *tr;
  }
  // The Linux virtio_pci_modern probe sequence, up to DRIVER_OK, with MSI-X vectors 0 (config)
  // and 1 (queue 0).
  void bring_up(Driver& d, bool bus_master = true) {
    d.cfg_write(0x04, kPciCommandMemory | (bus_master ? kPciCommandMaster : 0));
    d.wr<uint8_t>(kStatus, 0);
    d.wr<uint8_t>(kStatus, kStatusAcknowledge);
    d.wr<uint8_t>(kStatus, kStatusAcknowledge | kStatusDriver);
    d.wr<uint32_t>(kGFSel, 0);
    d.wr<uint32_t>(kGF, static_cast<uint32_t>(kFRingEventIdx | kBlkFFlush));
    d.wr<uint32_t>(kGFSel, 1);
    d.wr<uint32_t>(kGF, 1);  // VERSION_1
    d.wr<uint8_t>(kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
    REQUIRE((d.rd<uint8_t>(kStatus) & kStatusFeaturesOk) != 0);
    // MSI-X: enable in the capability, program and unmask entries 0 and 1.
    enable_msix(d, 2);
    d.wr<uint16_t>(kMsixCfg, 0);
    d.wr<uint16_t>(kQSel, 0);
    d.wr<uint16_t>(kQSize, 16);
    d.wr<uint16_t>(kQMsix, 1);
    d.wr64(kQDesc, vq.desc());
    d.wr64(kQDriver, vq.avail());
    d.wr64(kQDevice, vq.used());
    d.wr<uint16_t>(kQEnable, 1);
    d.wr<uint8_t>(kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
  }
  // MSI-X enabled in the capability, entries 0..n-1 programmed (data 0x40 + entry) and unmasked.
  static void enable_msix(Driver& d, uint32_t n) {
    const uint8_t cap = msix_cap(d);
    d.cfg_write(cap, d.cfg(cap) | (1u << 31));
    for (uint32_t v = 0; v < n; ++v) {
      d.wr<uint32_t>(PciTransport::kBar0Size + 16 * v, 0xfee00000);
      d.wr<uint32_t>(PciTransport::kBar0Size + 16 * v + 8, 0x40 + v);
      d.wr<uint32_t>(PciTransport::kBar0Size + 16 * v + 12, 0);
    }
  }
  static uint8_t msix_cap(Driver& d) {
    for (uint8_t p = static_cast<uint8_t>(d.cfg(0x34)); p; p = static_cast<uint8_t>(d.cfg(p) >> 8)) {
      if ((d.cfg(p) & 0xff) == kPciCapMsix) return p;
    }
    FAIL("no MSI-X capability");
    return 0;
  }
  // A read of sector 0 into 512 bytes; returns when it is used.
  struct Hdr {
    uint32_t type, reserved;
    uint64_t sector;
  };
  /// Makes a read of 4 KiB from sector 0 into 0x43000 available at descriptor 0, not notified.
  void make_read_available() {
    REQUIRE(mem.write_obj(Gpa(0x30000), Hdr{kBlkTIn, 0, 0}));
    vq.add_chain(0, {{0x30000, 16, false}, {0x43000, 4096, true}, {0x30100, 1, true}});
  }
  void read_sector(Driver& d, uint16_t first_desc, uint64_t buf) {
    REQUIRE(mem.write_obj(Gpa(0x30000), Hdr{kBlkTIn, 0, 0}));
    const uint16_t before = vq.used_idx();
    vq.set_used_event(before);  // as a driver does: interrupt me once this one is used
    vq.add_chain(first_desc, {{0x30000, 16, false}, {buf, 512, true}, {0x30100, 1, true}});
    d.wr<uint16_t>(PciTransport::kNotifyOffset, 0);  // notify queue 0 (no ioeventfd: MMIO path)
    for (int i = 0; i < 100 && vq.used_idx() == before; ++i) REQUIRE(loop->run_once(20ms));
    REQUIRE(vq.used_idx() == before + 1);
  }
};

}  // namespace

TEST_CASE("virtio-pci: identity, capabilities and BAR sizing") {
  Rig rig;
  Driver d{*rig.t};
  CHECK(d.cfg(0x00) == (uint32_t{0x1042} << 16 | 0x1af4));  // modern virtio-blk
  CHECK((d.cfg(0x08) >> 8) == 0x018000);
  CHECK((d.cfg(0x08) & 0xff) == 1);  // revision 1: modern only
  CHECK((d.cfg(0x04) >> 16 & 0x10) != 0);  // capability list
  // Four virtio capabilities (common, notify, ISR, device), MSI-X, then PCI configuration access.
  std::vector<uint8_t> types;
  for (uint8_t p = static_cast<uint8_t>(d.cfg(0x34)); p; p = static_cast<uint8_t>(d.cfg(p) >> 8)) {
    if ((d.cfg(p) & 0xff) == kPciCapVendor) types.push_back(static_cast<uint8_t>(d.cfg(p) >> 24));
    if ((d.cfg(p) & 0xff) == kPciCapMsix) types.push_back(0);
  }
  CHECK(types == std::vector<uint8_t>{1, 2, 3, 4, 0, 5});
  // BAR 0 sizing: all-ones reads back the size mask; the address is restored afterwards.
  d.cfg_write(0x10, 0xffffffff);
  CHECK(d.cfg(0x10) == static_cast<uint32_t>(~(PciTransport::kBar0Size - 1)));
  d.cfg_write(0x10, static_cast<uint32_t>(kBars));
  CHECK(d.cfg(0x10) == kBars);
  // Memory decoding off: BAR accesses are not claimed.
  uint32_t v;
  CHECK_FALSE(rig.t->mmio_read(kBars, std::span(reinterpret_cast<uint8_t*>(&v), 4)));
  d.cfg_write(0x04, kPciCommandMemory);
  CHECK(d.rd<uint16_t>(kNumQ) == 1);
  d.wr<uint32_t>(kDFSel, 1);
  CHECK((d.rd<uint32_t>(kDF) & 1) == 1);  // VERSION_1
}

namespace {
// The VIRTIO_PCI_CAP_PCI_CFG capability's offset.
uint8_t pci_cfg_cap(Driver& d) {
  for (uint8_t p = static_cast<uint8_t>(d.cfg(0x34)); p; p = static_cast<uint8_t>(d.cfg(p) >> 8)) {
    if ((d.cfg(p) & 0xff) == kPciCapVendor && (d.cfg(p) >> 24) == 5) return p;
  }
  FAIL("no PCI configuration access capability");
  return 0;
}
// An access through it: bar, offset and length in the capability, then pci_cfg_data.
uint32_t cfg_window_read(Driver& d, uint8_t bar, uint32_t offset, uint32_t length) {
  const uint8_t cap = pci_cfg_cap(d);
  d.cfg_write(cap + 4, bar);
  d.cfg_write(cap + 8, offset);
  d.cfg_write(cap + 12, length);
  return d.cfg(cap + 16);
}
void cfg_window_write(Driver& d, uint8_t bar, uint32_t offset, uint32_t length, uint32_t value) {
  const uint8_t cap = pci_cfg_cap(d);
  d.cfg_write(cap + 4, bar);
  d.cfg_write(cap + 8, offset);
  d.cfg_write(cap + 12, length);
  d.cfg_write(cap + 16, value);
}
}  // namespace

TEST_CASE("virtio-pci: the PCI configuration access capability reaches both BARs without memory decoding") {
  Rig rig;
  Driver d{*rig.t};
  const uint8_t cap = pci_cfg_cap(d);
  CHECK(((d.cfg(cap) >> 16) & 0xff) == 20);  // cap_len covers pci_cfg_data
  // Memory decoding is off: the BARs do not answer, the window does (virtio 1.2 §4.1.4.9).
  uint32_t v;
  REQUIRE_FALSE(rig.t->mmio_read(kBars, std::span(reinterpret_cast<uint8_t*>(&v), 4)));
  CHECK(cfg_window_read(d, 0, kNumQ, 2) == 1);
  cfg_window_write(d, 0, kDFSel, 4, 1);
  CHECK((cfg_window_read(d, 0, kDF, 4) & 1) == 1);  // VERSION_1
  cfg_window_write(d, 0, kStatus, 1, kStatusAcknowledge);
  CHECK(rig.t->status() == kStatusAcknowledge);
  CHECK(cfg_window_read(d, 0, kStatus, 1) == kStatusAcknowledge);
  // Only the first cap.length bytes are written: a 1-byte write of 0x0301 sets DRIVER, not more.
  cfg_window_write(d, 0, kStatus, 1, 0x0300 | kStatusAcknowledge | kStatusDriver);
  CHECK(rig.t->status() == (kStatusAcknowledge | kStatusDriver));
  // The device configuration (capacity in 512-byte sectors: the 1 MiB image is 2048).
  CHECK(cfg_window_read(d, 0, PciTransport::kDeviceOffset, 4) == 2048);
  // BAR 1: the MSI-X table (entry 0's message data).
  cfg_window_write(d, 1, 8, 4, 0x4455);
  CHECK(cfg_window_read(d, 1, 8, 4) == 0x4455);
  // Bad windows do nothing: a length other than 1, 2, 4, an unaligned offset, a BAR the device
  // does not have, an offset past the BAR's end.
  cfg_window_write(d, 0, kStatus, 3, 0);
  cfg_window_write(d, 0, kStatus + 1, 2, 0);
  cfg_window_write(d, 2, kStatus, 1, 0);
  cfg_window_write(d, 0, static_cast<uint32_t>(PciTransport::kBar0Size), 1, 0);
  cfg_window_write(d, 0, 0xfffffffc, 4, 0x12345678);
  CHECK(rig.t->status() == (kStatusAcknowledge | kStatusDriver));
  CHECK(cfg_window_read(d, 1, static_cast<uint32_t>(PciTransport::kBar1Size), 4) == 0x12345678);  // no read: data as written
  // The capability's header is read-only.
  d.cfg_write(cap, 0);
  CHECK((d.cfg(cap) & 0xff) == kPciCapVendor);
  CHECK((d.cfg(cap) >> 24) == 5);
}

TEST_CASE("virtio-pci: a notification through the PCI configuration access capability serves the queue") {
  Rig rig;
  Driver d{*rig.t};
  rig.bring_up(d);
  REQUIRE(rig.mem.write_obj(Gpa(0x30000), Rig::Hdr{kBlkTIn, 0, 0}));
  rig.vq.set_used_event(0);
  rig.vq.add_chain(0, {{0x30000, 16, false}, {0x40000, 512, true}, {0x30100, 1, true}});
  cfg_window_write(d, 0, static_cast<uint32_t>(PciTransport::kNotifyOffset), 2, 0);
  for (int i = 0; i < 100 && rig.vq.used_idx() == 0; ++i) REQUIRE(rig.loop->run_once(20ms));
  CHECK(rig.vq.used_idx() == 1);
}

TEST_CASE("virtio-pci: a state saved without the PCI configuration access capability gets it on restore") {
  Rig rig;
  Driver d{*rig.t};
  rig.bring_up(d);
  vmm::ByteWriter w;
  rig.t->save(w);
  std::vector<uint8_t> bytes = w.take();
  // As state format 1.0 saved it: the list ends at MSI-X, zeros after it.
  const uint8_t cap = pci_cfg_cap(d);
  const uint8_t msix = Rig::msix_cap(d);
  REQUIRE(bytes[msix + 1] == cap);
  bytes[msix + 1] = 0;
  std::fill(bytes.begin() + cap, bytes.begin() + cap + 20, 0);
  auto other = rig.make();
  // Not in a state of this vmm's format (1.1): refused as another device's.
  vmm::ByteReader now(bytes, "new state");
  CHECK_FALSE(other->restore(now));
  vmm::ByteReader in(bytes, "old state");
  in.set_format_minor(0);
  REQUIRE(other->restore(in));
  Driver d2{*other};
  CHECK(pci_cfg_cap(d2) == cap);
  CHECK(cfg_window_read(d2, 0, kNumQ, 2) == 1);
  // Any other change to the capability is still refused as another device's state.
  bytes[cap + 12] = 1;  // a window length left in it: not a 1.0 state
  auto third = rig.make();
  vmm::ByteReader in2(bytes, "bad state");
  in2.set_format_minor(0);
  CHECK_FALSE(third->restore(in2));
}

TEST_CASE("virtio-pci: feature negotiation refuses what was not offered, and legacy drivers") {
  Rig rig;
  Driver d{*rig.t};
  d.cfg_write(0x04, kPciCommandMemory);
  d.wr<uint8_t>(kStatus, kStatusAcknowledge | kStatusDriver);
  d.wr<uint32_t>(kGFSel, 0);
  d.wr<uint32_t>(kGF, 1u << 31);  // not offered
  d.wr<uint32_t>(kGFSel, 1);
  d.wr<uint32_t>(kGF, 1);
  d.wr<uint8_t>(kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  CHECK((d.rd<uint8_t>(kStatus) & kStatusFeaturesOk) == 0);
  d.wr<uint8_t>(kStatus, 0);  // reset
  CHECK(d.rd<uint8_t>(kStatus) == 0);
  d.wr<uint8_t>(kStatus, kStatusAcknowledge | kStatusDriver);
  d.wr<uint32_t>(kGFSel, 0);
  d.wr<uint32_t>(kGF, static_cast<uint32_t>(kBlkFFlush));  // no VERSION_1: a legacy driver
  d.wr<uint8_t>(kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
  CHECK((d.rd<uint8_t>(kStatus) & kStatusFeaturesOk) == 0);
}

TEST_CASE("virtio-pci: a request end to end with MSI-X, masking, NEEDS_RESET and reset") {
  Rig rig;
  Driver d{*rig.t};
  rig.bring_up(d);
  REQUIRE(rig.io.vectors.size() == 2);
  CHECK(rig.io.vectors[1]->address == 0xfee00000);
  CHECK(rig.io.vectors[1]->data == 0x41);
  rig.read_sector(d, 0, 0x40000);
  CHECK(*rig.mem.read_obj<uint8_t>(Gpa(0x40000)) == 0x5a);
  CHECK(*rig.mem.read_obj<uint8_t>(Gpa(0x30100)) == kBlkSOk);
  CHECK(rig.io.vectors[1]->fired == 1);

  // A masked entry makes the interrupt pending; unmasking delivers it.
  d.wr<uint32_t>(PciTransport::kBar0Size + 16 + 12, 1);
  rig.read_sector(d, 3, 0x41000);
  CHECK(rig.io.vectors[1]->fired == 1);
  CHECK((d.rd<uint32_t>(PciTransport::kBar0Size + PciTransport::kPbaOffset) & 2) != 0);
  d.wr<uint32_t>(PciTransport::kBar0Size + 16 + 12, 0);
  CHECK(rig.io.vectors[1]->fired == 2);
  CHECK((d.rd<uint32_t>(PciTransport::kBar0Size + PciTransport::kPbaOffset) & 2) == 0);

  // A driver that clears status bits keeps them (it cannot make a running device look
  // unconfigured, nor activate it twice), and the device serves on.
  const uint8_t running = kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk;
  d.wr<uint8_t>(kStatus, 0x36);
  CHECK(d.rd<uint8_t>(kStatus) == running);  // (bits 4 and 5 are nobody's)
  d.wr<uint8_t>(kStatus, kStatusAcknowledge);
  CHECK(d.rd<uint8_t>(kStatus) == running);
  rig.read_sector(d, 6, 0x41000);
  CHECK(*rig.mem.read_obj<uint8_t>(Gpa(0x30100)) == kBlkSOk);
  // Nor can it set DEVICE_NEEDS_RESET, the device's bit: the device serves on.
  d.wr<uint8_t>(kStatus, static_cast<uint8_t>(running | kStatusNeedsReset));
  CHECK(d.rd<uint8_t>(kStatus) == running);
  REQUIRE(rig.mem.write_obj(Gpa(0x30100), uint8_t{0xff}));
  rig.read_sector(d, 6, 0x41000);
  CHECK(*rig.mem.read_obj<uint8_t>(Gpa(0x30100)) == kBlkSOk);

  // A hostile avail index: NEEDS_RESET, a config interrupt, and no more processing.
  rig.vq.set_avail_idx(static_cast<uint16_t>(rig.vq.used_idx() + 50));
  d.wr<uint16_t>(PciTransport::kNotifyOffset, 0);
  for (int i = 0; i < 5; ++i) REQUIRE(rig.loop->run_once(20ms));
  CHECK((d.rd<uint8_t>(kStatus) & kStatusNeedsReset) != 0);
  CHECK(rig.io.vectors[0]->fired == 1);
  // Only a reset clears it; the driver can then start over.
  d.wr<uint8_t>(kStatus, kStatusAcknowledge);
  CHECK((d.rd<uint8_t>(kStatus) & kStatusNeedsReset) != 0);
  d.wr<uint8_t>(kStatus, 0);
  CHECK(d.rd<uint8_t>(kStatus) == 0);
  d.wr<uint16_t>(kQSel, 0);
  CHECK(d.rd<uint16_t>(kQEnable) == 0);
  CHECK(d.rd<uint16_t>(kQMsix) == Msix::kNoVector);
  rig.vq = VirtqBuilder(rig.mem, kRings, 16);
  rig.bring_up(d);
  rig.read_sector(d, 0, 0x42000);
  CHECK(*rig.mem.read_obj<uint8_t>(Gpa(0x30100)) == kBlkSOk);
}

TEST_CASE("virtio-pci: a reset with a request in flight completes when the request has") {
  // The driver writes 0 and waits for a read of 0 before it reuses its buffers (Linux's vp_reset);
  // a read still in flight writes into them meanwhile, so the status reads non-zero until it ended.
  Rig rig;
  Driver d{*rig.t};
  rig.bring_up(d);
  rig.make_read_available();
  {
    std::lock_guard lock(rig.blk->mutex());
    REQUIRE(rig.blk->process_queue(0));  // started; its completion waits for the event loop
  }
  REQUIRE(rig.t->in_flight() == 1);
  d.wr<uint8_t>(kStatus, 0);
  CHECK(d.rd<uint8_t>(kStatus) == kStatusNeedsReset);
  for (int i = 0; i < 100 && rig.t->in_flight() > 0; ++i) REQUIRE(rig.loop->run_once(20ms));
  CHECK(rig.t->in_flight() == 0);
  CHECK(d.rd<uint8_t>(kStatus) == 0);
  CHECK(rig.vq.used_idx() == 0);  // nothing given back through the old rings
  CHECK(*rig.mem.read_obj<uint8_t>(Gpa(0x43000)) == 0x5a);  // the read landed before the 0
  rig.vq = VirtqBuilder(rig.mem, kRings, 16);
  rig.bring_up(d);
  rig.read_sector(d, 0, 0x42000);
  CHECK(*rig.mem.read_obj<uint8_t>(Gpa(0x30100)) == kBlkSOk);
}

TEST_CASE("virtio-pci: a device that stopped at its pass's bound is served again from the event loop") {
  Rig rig;
  Driver d{*rig.t};
  rig.bring_up(d);
  rig.make_read_available();  // not notified
  for (int i = 0; i < 3; ++i) REQUIRE(rig.loop->run_once(20ms));
  CHECK(rig.vq.used_idx() == 0);
  {
    std::lock_guard lock(rig.blk->mutex());
    rig.t->serve_again(0);
    rig.t->serve_again(7);  // no such queue: nothing
  }
  for (int i = 0; i < 100 && rig.vq.used_idx() < 1; ++i) REQUIRE(rig.loop->run_once(20ms));
  CHECK(rig.vq.used_idx() == 1);
  CHECK(*rig.mem.read_obj<uint8_t>(Gpa(0x30100)) == kBlkSOk);
  CHECK(*rig.mem.read_obj<uint8_t>(Gpa(0x43000)) == 0x5a);
}

TEST_CASE("virtio-pci: a saved transport restores into a new one that carries on") {
  Rig rig;
  Driver d{*rig.t};
  rig.bring_up(d);
  rig.read_sector(d, 0, 0x40000);
  const auto saved = rig.t->save();
  CHECK(saved.status == (kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk));
  REQUIRE(saved.queues.size() == 1);
  CHECK(saved.queues[0].next_avail == 1);

  auto other = rig.make();
  REQUIRE(other->restore(saved));
  Driver d2{*other};
  CHECK(d2.rd<uint8_t>(kStatus) == saved.status);
  d2.wr<uint16_t>(kQSel, 0);
  CHECK(d2.rd<uint16_t>(kQEnable) == 1);
  CHECK(d2.rd<uint16_t>(kQMsix) == 1);
  CHECK(d2.rd<uint64_t>(kQDesc) == rig.vq.desc());
  // The restored device serves the next request from where the first left off.
  const int fired = rig.io.vectors[3]->fired;  // the new transport's queue vector
  rig.t.reset();
  Rig* r = &rig;
  r->t = other;
  rig.read_sector(d2, 3, 0x41000);
  CHECK(rig.vq.used_idx() == 2);
  CHECK(rig.io.vectors[3]->fired == fired + 1);

  // A state for another device shape is refused.
  auto bad = saved;
  bad.queues.push_back({});
  CHECK_FALSE(other->restore(bad));
}

TEST_CASE("virtio-pci: a restored device serves what was made available before the snapshot, notified or not") {
  // The notification (or a pass the device still owed) lived in the old VMM's eventfd, which a
  // snapshot does not carry; with EVENT_IDX the driver does not notify again for it.
  Rig rig;
  Driver d{*rig.t};
  rig.bring_up(d);
  rig.make_read_available();
  const auto saved = rig.t->save();
  CHECK(saved.queues[0].next_avail == 0);
  auto other = rig.make();
  REQUIRE(other->restore(saved));
  rig.t = other;
  for (int i = 0; i < 100 && rig.vq.used_idx() < 1; ++i) REQUIRE(rig.loop->run_once(20ms));
  CHECK(rig.vq.used_idx() == 1);
  CHECK(*rig.mem.read_obj<uint8_t>(Gpa(0x30100)) == kBlkSOk);
  CHECK(*rig.mem.read_obj<uint8_t>(Gpa(0x43000)) == 0x5a);
}

TEST_CASE("virtio-pci: without MSI-X, INTx with the ISR, re-asserted after EOI until the ISR is read") {
  Rig rig;
  Driver d{*rig.t};
  CHECK(((d.cfg(0x3c) >> 8) & 0xff) == 1);  // interrupt pin INTA
  CHECK((d.cfg(0x3c) & 0xff) == 17);        // interrupt line: the GSI it was given
  rig.bring_up(d);
  const uint8_t cap = Rig::msix_cap(d);
  d.cfg_write(cap, d.cfg(cap) & ~(1u << 31));  // the driver turns MSI-X off again (pci=nomsi-like)
  FakeIntx& line = *rig.io.intx.at(0);
  rig.read_sector(d, 0, 0x40000);
  CHECK(line.asserted == 1);
  CHECK(rig.io.vectors[1]->fired == 0);
  // The guest EOIs without reading the ISR: KVM signals the resample fd, the line comes back.
  const uint64_t one = 1;
  REQUIRE(::write(line.resample_fd(), &one, 8) == 8);
  for (int i = 0; i < 5 && line.asserted == 1; ++i) REQUIRE(rig.loop->run_once(20ms));
  CHECK(line.asserted == 2);
  // Reading the ISR returns the queue bit and clears it; the next EOI does not re-assert.
  CHECK(d.rd<uint8_t>(PciTransport::kIsrOffset) == 1);
  CHECK(d.rd<uint8_t>(PciTransport::kIsrOffset) == 0);
  REQUIRE(::write(line.resample_fd(), &one, 8) == 8);
  for (int i = 0; i < 3; ++i) REQUIRE(rig.loop->run_once(20ms));
  CHECK(line.asserted == 2);
  // With INTx disabled in the command register, nothing is asserted; the ISR still says why.
  d.cfg_write(0x04, kPciCommandMemory | kPciCommandMaster | kPciCommandIntxDisable);
  rig.read_sector(d, 3, 0x41000);
  CHECK(line.asserted == 2);
  // INTx enabled again with the ISR unread: the interrupt owed is asserted now (no EOI would
  // bring it: none came).
  d.cfg_write(0x04, kPciCommandMemory | kPciCommandMaster);
  CHECK(line.asserted == 3);
  CHECK(d.rd<uint8_t>(PciTransport::kIsrOffset) == 1);
  d.cfg_write(0x04, kPciCommandMemory | kPciCommandMaster | kPciCommandIntxDisable);
  d.cfg_write(0x04, kPciCommandMemory | kPciCommandMaster);
  CHECK(line.asserted == 3);  // nothing owed
}

// The queues' notify addresses are KVM's ioeventfds only while BAR 0 decodes: a guest that turns
// Memory Space off may give that range to another function, whose writes would kick this device;
// and none come back for a device that needs a reset, whatever the guest does with its BAR.
TEST_CASE("virtio-pci: notify ioeventfds only while memory decoding is on and the device runs") {
  Rig rig;
  rig.io.accept_ioeventfds = true;
  Driver d{*rig.t};
  rig.bring_up(d);
  const uint64_t notify = kBars + PciTransport::kNotifyOffset;
  CHECK(rig.io.ioeventfd_gpas == std::set<uint64_t>{notify});
  d.cfg_write(0x04, kPciCommandMaster);  // Memory Space off
  CHECK(rig.io.ioeventfd_gpas.empty());
  d.cfg_write(0x04, kPciCommandMemory | kPciCommandMaster);
  CHECK(rig.io.ioeventfd_gpas == std::set<uint64_t>{notify});
  d.cfg_write(0x04, kPciCommandMemory);  // bus mastering off while it runs: NEEDS_RESET
  CHECK((d.rd<uint8_t>(kStatus) & kStatusNeedsReset) != 0);
  CHECK(rig.io.ioeventfd_gpas.empty());
  d.cfg_write(0x04, kPciCommandMemory | kPciCommandMaster);
  d.cfg_write(0x10, static_cast<uint32_t>(kBars) + 0x10000);  // BAR 0 moved
  CHECK(rig.io.ioeventfd_gpas.empty());
}

// An MSI-X message is a write to memory, which a function without Bus Master Enable does not
// make: the interrupt waits, pending, until the driver turns bus mastering on (it was dropped).
TEST_CASE("virtio-pci: an MSI-X interrupt raised without bus mastering is pending until it is turned on") {
  Rig rig;
  Driver d{*rig.t};
  rig.bring_up(d, /*bus_master=*/false);
  rig.read_sector(d, 0, 0x40000);
  CHECK(*rig.mem.read_obj<uint8_t>(Gpa(0x30100)) == kBlkSOk);
  CHECK(rig.io.vectors[1]->fired == 0);
  CHECK((d.rd<uint32_t>(PciTransport::kBar0Size + PciTransport::kPbaOffset) & 2) != 0);
  d.cfg_write(0x04, kPciCommandMemory | kPciCommandMaster);
  CHECK(rig.io.vectors[1]->fired == 1);
  CHECK((d.rd<uint32_t>(PciTransport::kBar0Size + PciTransport::kPbaOffset) & 2) == 0);
}

// A driver may write a 64-bit queue address whole (virtio 1.2 §4.1.3.1) as well as in two halves:
// a whole write was dropped, leaving the ring at GPA 0.
TEST_CASE("virtio-pci: a queue address written whole in 64 bits is taken, as two halves are") {
  Rig rig;
  Driver d{*rig.t};
  d.cfg_write(0x04, kPciCommandMemory | kPciCommandMaster);
  d.wr<uint8_t>(kStatus, kStatusAcknowledge | kStatusDriver);
  d.wr<uint16_t>(kQSel, 0);
  d.wr<uint64_t>(kQDesc, 0x12345678abcd000ull);
  d.wr<uint64_t>(kQDriver, 0x10000);
  d.wr<uint64_t>(kQDevice, 0x20000);
  CHECK(d.rd<uint64_t>(kQDesc) == 0x12345678abcd000ull);
  CHECK(d.rd<uint64_t>(kQDriver) == 0x10000);
  CHECK(d.rd<uint64_t>(kQDevice) == 0x20000);
  d.wr64(kQDesc, 0x30000);  // halves still work
  CHECK(d.rd<uint64_t>(kQDesc) == 0x30000);
  // A 64-bit write at the high half's offset is no field's: ignored.
  d.wr<uint64_t>(kQDesc + 4, 0x40000);
  CHECK(d.rd<uint64_t>(kQDesc) == 0x30000);
}

namespace {

// virtio-net behind the transport, on one end of a socket pair (as its TAP): receive queue 0 with
// MSI-X vector 1, transmit queue 1 with vector 2, one receive buffer posted.
struct NetRig {
  GuestMemory mem = [] {
    auto m = GuestMemory::anonymous(kRam);
    REQUIRE(m);
    return std::move(*m);
  }();
  std::unique_ptr<vmm::EventLoop> loop = [] {
    auto l = vmm::EventLoop::create();
    REQUIRE(l);
    return std::move(*l);
  }();
  FakeVmIo io;
  vmm::Fd peer;
  std::shared_ptr<PciTransport> t;
  VirtqBuilder rx{mem, kRings, 16}, tx{mem, kRings + 0x10000, 16};
  NetRig() {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
    peer = vmm::Fd(sv[1]);
    auto net = Net::create(vmm::devices::Tap::adopt(vmm::Fd(sv[0]), "pair0"), {0x52, 0x54, 0, 1, 2, 3}, *loop);
    REQUIRE(net);
    auto tr = PciTransport::create(*net, "net", io, *loop, mem, kBars, 18);
    REQUIRE(tr);
    t = *tr;
    Driver d{*t};
    d.cfg_write(0x04, kPciCommandMemory | kPciCommandMaster);
    d.wr<uint8_t>(kStatus, kStatusAcknowledge | kStatusDriver);
    d.wr<uint32_t>(kGFSel, 1);
    d.wr<uint32_t>(kGF, 1);  // VERSION_1
    d.wr<uint8_t>(kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
    Rig::enable_msix(d, 3);
    d.wr<uint16_t>(kMsixCfg, 0);
    for (uint16_t q = 0; q < 2; ++q) {
      VirtqBuilder& vq = q == 0 ? rx : tx;
      d.wr<uint16_t>(kQSel, q);
      d.wr<uint16_t>(kQSize, 16);
      d.wr<uint16_t>(kQMsix, static_cast<uint16_t>(q + 1));
      d.wr<uint64_t>(kQDesc, vq.desc());  // whole 64-bit writes, as some drivers make them
      d.wr<uint64_t>(kQDriver, vq.avail());
      d.wr<uint64_t>(kQDevice, vq.used());
      d.wr<uint16_t>(kQEnable, 1);
    }
    d.wr<uint8_t>(kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
    REQUIRE((d.rd<uint8_t>(kStatus) & kStatusDriverOk) != 0);
    REQUIRE(io.vectors.size() >= 3);
    rx.add_chain(0, {{0x100000, 2048, true}});
  }
  void frame_arrives() {
    std::vector<uint8_t> f(60, 0xab);
    REQUIRE(::send(peer.get(), f.data(), f.size(), 0) == 60);
    for (int i = 0; i < 5; ++i) REQUIRE(loop->run_once(10ms));
  }
  uint8_t status() { return Driver{*t}.rd<uint8_t>(kStatus); }
};

}  // namespace

TEST_CASE("virtio-net behind the transport: a frame reaches the posted buffer") {
  NetRig rig;
  rig.frame_arrives();
  CHECK(rig.rx.used_idx() == 1);
  CHECK(rig.io.vectors[1]->fired == 1);
  CHECK((rig.status() & kStatusNeedsReset) == 0);
}

// NEEDS_RESET stops the device (device.hpp): a TAP's frames no longer reach the guest's buffers,
// and a receive ring the driver broke puts the device in NEEDS_RESET too (receiving stopped
// without a word to the driver).
TEST_CASE("virtio-net behind the transport: NEEDS_RESET stops receiving, and a broken receive ring sets it") {
  SUBCASE("a broken transmit ring: no frame is received afterwards") {
    NetRig rig;
    rig.tx.set_avail_idx(static_cast<uint16_t>(rig.tx.used_idx() + 50));
    Driver{*rig.t}.wr<uint16_t>(PciTransport::kNotifyOffset + PciTransport::kNotifyMultiplier, 1);
    for (int i = 0; i < 3; ++i) REQUIRE(rig.loop->run_once(10ms));
    REQUIRE((rig.status() & kStatusNeedsReset) != 0);
    const int fired = rig.io.vectors[1]->fired;
    rig.frame_arrives();
    CHECK(rig.rx.used_idx() == 0);
    CHECK(rig.io.vectors[1]->fired == fired);
  }
  SUBCASE("a broken receive ring, never notified: NEEDS_RESET and a configuration interrupt") {
    NetRig rig;
    rig.rx.set_avail_idx(static_cast<uint16_t>(rig.rx.used_idx() + 50));
    const int config_fired = rig.io.vectors[0]->fired;
    rig.frame_arrives();
    CHECK((rig.status() & kStatusNeedsReset) != 0);
    CHECK(rig.io.vectors[0]->fired == config_fired + 1);
    CHECK(rig.rx.used_idx() == 0);
  }
}

// Bus mastering off (Linux turns it off before a kexec, whose new kernel reuses the rings' memory):
// the device no longer writes guest memory or sends MSI-X messages, until a reset; a reset and bus
// mastering on again bring it back.
TEST_CASE("virtio-net behind the transport: bus mastering turned off stops the device until a reset") {
  NetRig rig;
  Driver d{*rig.t};
  d.cfg_write(0x04, kPciCommandMemory);
  CHECK((rig.status() & kStatusNeedsReset) != 0);
  const int fired = rig.io.vectors[0]->fired + rig.io.vectors[1]->fired;
  rig.frame_arrives();
  CHECK(rig.rx.used_idx() == 0);
  CHECK(rig.io.vectors[0]->fired + rig.io.vectors[1]->fired == fired);  // (not even the configuration interrupt)
  d.cfg_write(0x04, kPciCommandMemory | kPciCommandMaster);
  rig.frame_arrives();
  CHECK(rig.rx.used_idx() == 0);  // still stopped: only a reset brings it back
  d.wr<uint8_t>(kStatus, 0);
  CHECK(rig.status() == 0);
}
