// The state decoders a snapshot restores through, against malformed input: every Snapshottable
// device (save → restore into a fresh device gives the same bytes; every truncation refused with an
// error that leaves the device as it was; trailing bytes left for the caller's finish(); specific bad
// values refused naming the field). (A whole Machine's snapshot: test_clone_snapshot_machine.cpp.)
#include <doctest/doctest.h>

#include <sched.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <thread>

#include "clone/snapshot.hpp"
#include "devices/console.hpp"
#include "devices/fw_cfg.hpp"
#include "devices/legacy.hpp"
#include "devices/pci.hpp"
#include "devices/serial.hpp"
#include "devices/tap.hpp"
#include "devices/virtio/blk.hpp"
#include "devices/virtio/net.hpp"
#include "devices/virtio/pci_transport.hpp"
#include "devices/vmgenid.hpp"
#include "disk/image.hpp"
#include "kvm_helpers.hpp"
#include "test_boot_helpers.hpp"
#include "test_device_helpers.hpp"
#include "vmm/base/codec.hpp"
#include "vmm/machine.hpp"

namespace {

using boot_test::Bytes;
using boot_test::TempFile;
using vmm::ByteReader;
using vmm::ByteWriter;
using vmm::Gpa;
using vmm::GuestMemory;
using namespace vmm::devices;
using namespace vmm::devices::virtio;
using namespace std::chrono_literals;

constexpr uint64_t kRam = 4 << 20;
constexpr uint64_t kBars = 0xc0000000;
constexpr uint64_t kRings = 0x10000;

// ---- Fakes ----------------------------------------------------------------------------------------

struct NullControl final : VmControl {
  void request_stop(StopReason, uint32_t) override {}
};
struct NullIrq final : IrqLine {
  void trigger() override {}
};
struct NullVector final : MsiVector {
  void set_message(uint64_t, uint32_t) override {}
  void trigger() override {}
};
struct NullIntx final : IntxLine {
  vmm::Fd resample{::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)};
  void assert_line() override {}
  int resample_fd() const override { return resample.get(); }
};
struct NullVmIo final : VmIo {
  vmm::Result<std::unique_ptr<MsiVector>> allocate_msi() override { return std::make_unique<NullVector>(); }
  vmm::Result<std::unique_ptr<IntxLine>> allocate_intx(uint32_t) override { return std::make_unique<NullIntx>(); }
  vmm::Result<> add_ioeventfd(uint64_t, int) override { return vmm::fail("no KVM here"); }
  void remove_ioeventfd(uint64_t, int) override {}
};

bool contains(const std::string& text, std::string_view part) { return text.find(part) != std::string::npos; }

std::vector<uint8_t> saved(const Snapshottable& d) {
  ByteWriter w;
  d.save(w);
  return w.take();
}

/// Restores `bytes` into `d`; the error message, or "" on success (finish() not called).
std::string restore_error(Snapshottable& d, std::span<const uint8_t> bytes) {
  ByteReader r(bytes, "t");
  auto res = d.restore(r);
  return res ? std::string() : res.error().message();
}

/// The properties every decoder must have. `source` is a device driven into a non-default state,
/// `fresh` a newly built one of the same configuration.
void check_codec(const Snapshottable& source, Snapshottable& fresh) {
  const std::vector<uint8_t> bytes = saved(source);
  const std::vector<uint8_t> fresh_bytes = saved(fresh);
  // Every truncation is refused, names what was cut short, and changes nothing.
  for (size_t n = 0; n < bytes.size(); ++n) {
    const std::string e = restore_error(fresh, std::span(bytes).first(n));
    REQUIRE_MESSAGE(!e.empty(), "a truncation to " << n << " of " << bytes.size() << " bytes was accepted");
    CHECK_MESSAGE(contains(e, "truncated"), e);
    CHECK_MESSAGE(e.starts_with("t: "), e);
  }
  CHECK(saved(fresh) == fresh_bytes);
  // The whole section restores, consumes every byte, and saves the same bytes again.
  {
    ByteReader r(bytes, "t");
    auto res = fresh.restore(r);
    REQUIRE_MESSAGE(res, (res ? "" : res.error().message()));
    CHECK(r.remaining() == 0);
    CHECK(r.finish());
  }
  CHECK(saved(fresh) == bytes);
  // Trailing bytes are the caller's to detect (clone::restore calls finish()).
  std::vector<uint8_t> longer = bytes;
  longer.push_back(0);
  ByteReader r(longer, "t");
  REQUIRE(fresh.restore(r));
  auto fin = r.finish();
  REQUIRE_FALSE(fin);
  CHECK_MESSAGE(contains(fin.error().message(), "t: 1 unexpected bytes at the end"), fin.error().message());
}

/// `bytes` with `value` written at `offset`.
template <typename T>
std::vector<uint8_t> patched(std::vector<uint8_t> bytes, size_t offset, T value) {
  REQUIRE(offset + sizeof value <= bytes.size());
  std::memcpy(bytes.data() + offset, &value, sizeof value);
  return bytes;
}

// ---- virtio-pci rig --------------------------------------------------------------------------------

// Common configuration offsets (virtio 1.2 §4.1.4.3).
constexpr uint64_t kGFSel = 0x08, kGF = 0x0c, kMsixCfg = 0x10, kStatus = 0x14, kQSel = 0x16, kQSize = 0x18,
                   kQMsix = 0x1a, kQEnable = 0x1c, kQDesc = 0x20, kQDriver = 0x28, kQDevice = 0x30;

struct Driver {
  PciTransport& t;
  uint32_t cfg(uint8_t reg) { return t.config_read(reg); }
  void cfg_write(uint8_t reg, uint32_t v) { t.config_write(reg, v, 0xf); }
  template <typename T>
  void wr(uint64_t off, T v) {
    REQUIRE(t.mmio_write(kBars + off, std::span(reinterpret_cast<const uint8_t*>(&v), sizeof v)));
  }
  void wr64(uint64_t off, uint64_t v) {
    wr<uint32_t>(off, static_cast<uint32_t>(v));
    wr<uint32_t>(off + 4, static_cast<uint32_t>(v >> 32));
  }
  uint8_t msix_cap() {
    for (uint8_t p = static_cast<uint8_t>(cfg(0x34)); p; p = static_cast<uint8_t>(cfg(p) >> 8)) {
      if ((cfg(p) & 0xff) == kPciCapMsix) return p;
    }
    FAIL("no MSI-X capability");
    return 0;
  }
  /// The Linux probe sequence up to DRIVER_OK with `features`, MSI-X on, queue 0 ready at kRings.
  void bring_up(uint64_t features) {
    cfg_write(0x04, kPciCommandMemory | kPciCommandMaster);
    wr<uint8_t>(kStatus, 0);
    wr<uint8_t>(kStatus, kStatusAcknowledge | kStatusDriver);
    wr<uint32_t>(kGFSel, 0);
    wr<uint32_t>(kGF, static_cast<uint32_t>(features));
    wr<uint32_t>(kGFSel, 1);
    wr<uint32_t>(kGF, static_cast<uint32_t>(features >> 32));
    wr<uint8_t>(kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk);
    const uint8_t cap = msix_cap();
    cfg_write(cap, cfg(cap) | (1u << 31));
    for (uint32_t v = 0; v < 2; ++v) {
      wr<uint32_t>(PciTransport::kBar0Size + 16 * v, 0xfee00000);
      wr<uint32_t>(PciTransport::kBar0Size + 16 * v + 8, 0x40 + v);
      wr<uint32_t>(PciTransport::kBar0Size + 16 * v + 12, 0);
    }
    wr<uint16_t>(kMsixCfg, 0);
    wr<uint16_t>(kQSel, 0);
    wr<uint16_t>(kQSize, 16);
    wr<uint16_t>(kQMsix, 1);
    wr64(kQDesc, kRings);
    wr64(kQDriver, kRings + 0x1000);
    wr64(kQDevice, kRings + 0x2000);
    wr<uint16_t>(kQEnable, 1);
    wr<uint8_t>(kStatus, kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk);
    REQUIRE(t.status() == (kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk));
  }
};

/// The transport's encoding, written independently of PciTransport::save(ByteWriter&) (the round
/// trip below proves the two agree), so that tests can encode states the device would never save.
std::vector<uint8_t> encode(const PciTransport::State& st) {
  ByteWriter w;
  w.put_bytes(st.config);
  w.put(st.msix.enabled);
  w.put(st.msix.function_masked);
  w.put_vector(st.msix.table);
  w.put_vector(st.msix.pending);
  w.put(st.status);
  w.put(st.driver_features);
  w.put(st.device_feature_select);
  w.put(st.driver_feature_select);
  w.put(st.queue_select);
  w.put(st.msix_config);
  w.put_vector(st.queue_vectors);
  w.put(st.config_generation);
  w.put(st.isr);
  w.put(static_cast<uint32_t>(st.queues.size()));
  for (const auto& q : st.queues) {
    w.put(q.size);
    w.put(q.ready);
    w.put(q.desc);
    w.put(q.avail);
    w.put(q.used);
    w.put(q.next_avail);
    w.put(q.next_used);
    w.put(q.signalled_used);
    w.put(q.signalled_valid);
    w.put(q.event_idx);
  }
  return w.take();
}

/// Checks a transport's decoder: `source` brought up, `fresh` new, both for the same device kind.
void check_transport(PciTransport& source, PciTransport& fresh, uint64_t features) {
  Driver d{source};
  d.bring_up(features);
  const PciTransport::State st = source.save();
  REQUIRE(encode(st) == saved(source));
  check_codec(source, fresh);
  CHECK(fresh.status() == st.status);

  auto refused = [&](const PciTransport::State& bad, std::string_view field, std::string_view detail = {}) {
    const std::string e = restore_error(fresh, encode(bad));
    REQUIRE_MESSAGE(!e.empty(), "accepted a state with a bad " << field);
    CHECK_MESSAGE(contains(e, fmt::format("t: {}: ", field)), e);
    if (!detail.empty()) CHECK_MESSAGE(contains(e, detail), e);
  };
  const size_t vectors = st.msix.table.size();
  REQUIRE(vectors >= 2);

  // A bool that is 2 (msix.enabled comes right after the 256 configuration bytes).
  {
    const std::string e = restore_error(fresh, patched(saved(source), 256, uint8_t{2}));
    CHECK_MESSAGE(contains(e, "t: msix.enabled: 2 is not a boolean"), e);
  }
  // Read-only configuration bytes of another device (the device id), writable ones are fine.
  {
    auto bad = st;
    bad.config[2] ^= 1;
    refused(bad, "pci_config", "byte 0x2");
    auto ok = st;
    ok.config[0x0c] = 0x10;  // cache line size: scratch
    CHECK(restore_error(fresh, encode(ok)) == "");
  }
  // An MSI-X table of the wrong size, and a PBA of the wrong size.
  {
    auto bad = st;
    bad.msix.table.pop_back();
    refused(bad, "msix.table");
    bad = st;
    bad.msix.table.push_back({});
    refused(bad, "msix.table", "over the limit");
    bad = st;
    bad.msix.pending.push_back(0);
    refused(bad, "msix.pending", "over the limit");
    bad = st;
    bad.msix.pending.clear();
    refused(bad, "msix.pending", "0 words saved, the device has 1");
    // A pending bit for a vector past the table (the guest would read it in the PBA).
    bad = st;
    bad.msix.pending[0] |= 1ull << vectors;
    refused(bad, "msix.pending", "bits for vectors the device does not have");
    auto ok = st;
    ok.msix.pending[0] = 1ull << (vectors - 1);
    CHECK(restore_error(fresh, encode(ok)) == "");
  }
  // A vector that does not exist, for the configuration and for a queue.
  {
    auto bad = st;
    bad.msix_config = static_cast<uint16_t>(vectors);
    refused(bad, "msix_config", "does not exist");
    bad = st;
    bad.queue_vectors[0] = static_cast<uint16_t>(vectors);
    refused(bad, "queue_vectors", "does not exist");
    auto ok = st;
    ok.queue_vectors[0] = Msix::kNoVector;
    CHECK(restore_error(fresh, encode(ok)) == "");
  }
  // Driver features the device does not offer, once FEATURES_OK is set; before it, a guest paused
  // between writing its features and FEATURES_OK may have written anything (the guest-io fuzzer's
  // finding: such a VM saved a state that no restore took). A running device without FEATURES_OK
  // is not a state a guest can reach.
  {
    REQUIRE((st.status & kStatusFeaturesOk) != 0);
    auto bad = st;
    bad.driver_features |= 1ull << 63;
    refused(bad, "driver_features", "does not offer");
    auto ok = st;
    ok.status = kStatusAcknowledge | kStatusDriver;
    ok.driver_features |= 1ull << 63;
    CHECK(restore_error(fresh, encode(ok)) == "");
    CHECK(fresh.status() == ok.status);
    ok.status |= kStatusDriverOk | kStatusNeedsReset;  // what a guest gets for DRIVER_OK without FEATURES_OK
    CHECK(restore_error(fresh, encode(ok)) == "");
    bad = st;
    bad.status = static_cast<uint8_t>(bad.status & ~kStatusFeaturesOk);
    refused(bad, "status", "DRIVER_OK without FEATURES_OK");
  }
  // Queue counts that do not fit the device.
  {
    auto bad = st;
    bad.queues.push_back({});
    refused(bad, "queues", "saved, the device has");
    bad = st;
    bad.queue_vectors.push_back(Msix::kNoVector);
    refused(bad, "queue_vectors", "over the limit");
  }
  // A queue larger than its maximum; a ready queue whose size is not a power of two; rings outside
  // RAM or misaligned.
  {
    auto bad = st;
    bad.queues[0].size = static_cast<uint16_t>(fresh.device().queues()[0].max_size() + 1);
    refused(bad, "queue.size", "over the maximum");
    // Before the queue is enabled a driver may have written any size (its enable then fails).
    auto unready = bad;
    unready.queues[0].ready = false;
    CHECK(restore_error(fresh, encode(unready)) == "");
    bad = st;
    bad.queues[0].size = 3;
    refused(bad, "queues", "not a power of two");
    bad = st;
    bad.queues[0].desc = kRam - 0x10;
    refused(bad, "queues", "descriptor table");
    bad = st;
    bad.queues[0].avail = kRam;
    refused(bad, "queues", "avail ring");
    bad = st;
    bad.queues[0].used = ~uint64_t{0} - 3;
    refused(bad, "queues", "used ring");
    bad = st;
    bad.queues[0].used = kRings + 0x2002;
    refused(bad, "queues", "used ring");
    // A queue that is not ready is not checked against RAM (the driver sets it up again).
    auto ok = st;
    ok.queues[0].ready = false;
    ok.queues[0].desc = ~uint64_t{0};
    CHECK(restore_error(fresh, encode(ok)) == "");
  }
  // What the guest cannot make the device save: Vector Control bits besides the mask (dropped as
  // they are written), FEATURES_OK without VERSION_1 (refused as it is set), chains in flight
  // (saved quiesced), positions on a queue that is not ready (zeroed by a reset).
  {
    auto bad = st;
    bad.msix.table[1].control = 0x3;
    refused(bad, "msix.table", "vector 1: control 0x3 has bits besides the mask");
    auto ok = st;
    ok.msix.table[1].control = 0x1;
    CHECK(restore_error(fresh, encode(ok)) == "");
    bad = st;
    bad.driver_features &= ~(1ull << 32);
    refused(bad, "driver_features", "FEATURES_OK without VERSION_1");
    bad = st;
    bad.queues[0].next_avail = static_cast<uint16_t>(bad.queues[0].next_used + 1);
    refused(bad, "queue.next_avail", "chains in flight");
    bad.status |= kStatusNeedsReset;  // stopped between a pop and its push: the guest resets it
    CHECK(restore_error(fresh, encode(bad)) == "");
    ok = st;
    ok.queues[0].next_avail = ok.queues[0].next_used = 40000;  // (wrapping positions: any, if equal)
    CHECK(restore_error(fresh, encode(ok)) == "");
    bad = st;
    bad.queues[0].ready = false;
    bad.queues[0].next_used = 3;
    bad.queues[0].next_avail = 3;
    refused(bad, "queue.next_avail", "on a queue that is not ready");
  }
  // The bools inside a queue.
  {
    const std::vector<uint8_t> good = encode(st);
    const size_t q0 = good.size() - fresh.device().queues().size() * 35;  // 35 bytes per queue
    for (auto [at, field] : {std::pair{q0 + 2, "queue.ready"}, {q0 + 33, "queue.signalled_valid"}, {q0 + 34, "queue.event_idx"}}) {
      const std::string e = restore_error(fresh, patched(good, at, uint8_t{7}));
      CHECK_MESSAGE(contains(e, fmt::format("t: {}: 7 is not a boolean", field)), e);
    }
  }
  // After all that, the good state still restores and saves the same bytes.
  CHECK(restore_error(fresh, saved(source)) == "");
  CHECK(saved(fresh) == saved(source));
}

}  // namespace

// ---- Devices ---------------------------------------------------------------------------------------

TEST_CASE("snapshot codec: serial") {
  auto make = [] { return std::make_shared<Serial>(std::make_shared<NullIrq>(), [](std::span<const uint8_t>) {}); };
  auto a = make(), b = make();
  const uint8_t lcr = 0x1b, scr = 0x5a, ier = 0x03;
  a->write(3, std::span(&lcr, 1));
  a->write(7, std::span(&scr, 1));
  a->write(1, std::span(&ier, 1));
  const uint8_t input[] = {'h', 'e', 'l', 'l', 'o'};
  REQUIRE(a->enqueue_input(input) == 5);
  check_codec(*a, *b);

  const std::vector<uint8_t> good = saved(*a);
  REQUIRE(good.size() == 9 + 1 + 4 + 5);
  CHECK(contains(restore_error(*b, patched(good, 9, uint8_t{2})), "t: thre_pending: 2 is not a boolean"));
  // An RX FIFO longer than the 64 bytes the UART has.
  std::vector<uint8_t> long_fifo(good.begin(), good.begin() + 10);
  long_fifo.resize(10 + 4 + 65, 'x');
  long_fifo = patched(long_fifo, 10, uint32_t{65});
  CHECK(contains(restore_error(*b, long_fifo), "t: rx: count 65 is over the limit of 64"));
  long_fifo = patched(long_fifo, 10, uint32_t{64});
  long_fifo.pop_back();
  CHECK(restore_error(*b, long_fifo) == "");  // exactly full is fine
  CHECK(contains(restore_error(*b, patched(good, 10, uint32_t{0xffffffff})), "t: rx: count 4294967295 is over the limit"));
}

TEST_CASE("snapshot codec: i8042, RTC and the stateless legacy devices") {
  NullControl vm;
  {
    I8042 a(vm), b(vm);
    const uint8_t read_command_byte = 0x20;
    a.write(4, std::span(&read_command_byte, 1));  // the output buffer now holds the command byte
    check_codec(a, b);
    const std::vector<uint8_t> good = saved(a);
    REQUIRE(good.size() == 4);
    CHECK(contains(restore_error(b, patched(good, 2, int16_t{0x100})), "t: output: 256 is not a byte or -1"));
    CHECK(contains(restore_error(b, patched(good, 2, int16_t{-2})), "t: output: -2 is not a byte or -1"));
    CHECK(restore_error(b, patched(good, 2, int16_t{-1})) == "");
    CHECK(restore_error(b, patched(good, 2, int16_t{0xff})) == "");
  }
  {
    Rtc a, b;
    const uint8_t index = 0x30, value = 0xa5;
    a.write(0, std::span(&index, 1));
    a.write(1, std::span(&value, 1));
    check_codec(a, b);
    const std::vector<uint8_t> good = saved(a);
    REQUIRE(good.size() == 1 + 128 + 1);
    CHECK(contains(restore_error(b, patched(good, 0, uint8_t{128})), "t: index: 128 is past the CMOS RAM"));
    CHECK(contains(restore_error(b, patched(good, 0, uint8_t{0xff})), "t: index: 255 is past the CMOS RAM"));
    CHECK(restore_error(b, patched(good, 0, uint8_t{127})) == "");
  }
  {
    DebugExit a(vm), b(vm);
    check_codec(a, b);
    PvPanic c(vm), d(vm);
    check_codec(c, d);
    AcpiPm e(vm), f(vm);
    check_codec(e, f);
  }
  {
    auto mem = device_test::ram(kRam);
    VmGenId a(mem, std::make_shared<NullIrq>()), b(mem, std::make_shared<NullIrq>());
    check_codec(a, b);
  }
}

TEST_CASE("snapshot codec: PCI root") {
  auto a = std::make_shared<PciRoot>(), b = std::make_shared<PciRoot>();
  // The host bridge's command register (00:00.0 register 4), then the address register left
  // pointing at a register of slot 2.
  const uint32_t select_command = 0x80000004, select_other = 0x80001010;
  const uint16_t command = kPciCommandMemory | kPciCommandMaster;
  a->write(0, std::span(reinterpret_cast<const uint8_t*>(&select_command), 4));
  a->write(4, std::span(reinterpret_cast<const uint8_t*>(&command), 2));
  a->write(0, std::span(reinterpret_cast<const uint8_t*>(&select_other), 4));
  check_codec(*a, *b);
  const std::vector<uint8_t> good = saved(*a);
  REQUIRE(good.size() == 6);
  CHECK(contains(restore_error(*b, patched(good, 4, uint16_t{0x8})), "t: host_bridge_command: 0x8 has bits"));
  CHECK(contains(restore_error(*b, patched(good, 4, uint16_t{0x400})), "t: host_bridge_command"));
  // Reserved bits of the address register read as zero: a state with them set is not one it saved.
  CHECK(contains(restore_error(*b, patched(good, 0, uint32_t{0xc0000000})), "t: config_address: 0xc0000000 has reserved bits"));
  CHECK(contains(restore_error(*b, patched(good, 0, uint32_t{0x80000001})), "t: config_address"));
  CHECK(restore_error(*b, patched(good, 0, uint32_t{0x80fffffc})) == "");
}

TEST_CASE("snapshot codec: fw_cfg") {
  auto make = [] {
    auto f = std::make_shared<FwCfg>();
    REQUIRE(f->add_file(std::string(kIdentityFileName), std::vector<uint8_t>(kIdentitySize, 0)));
    return f;
  };
  auto a = make(), b = make();
  const uint16_t dir = FwCfg::kFileDirKey;
  a->write(0, std::span(reinterpret_cast<const uint8_t*>(&dir), 2));
  uint8_t three[3];
  a->read(1, three);
  check_codec(*a, *b);
  const std::vector<uint8_t> good = saved(*a);
  REQUIRE(good.size() == 6);
  CHECK(contains(restore_error(*b, patched(good, 0, uint16_t{0x0005})), "t: selector: 0x5 names no item"));
  CHECK(contains(restore_error(*b, patched(good, 0, uint16_t{0x0021})), "t: selector: 0x21 names no item"));
  CHECK(contains(restore_error(*b, patched(good, 0, uint16_t{0x8000})), "t: selector: 0x8000 names no item"));
  CHECK(contains(restore_error(*b, patched(good, 0, uint16_t{0x4019})), "t: selector"));
  // The directory has 4 + 64 bytes; the offset may be its end, not past it.
  CHECK(restore_error(*b, patched(good, 2, uint32_t{68})) == "");
  CHECK(contains(restore_error(*b, patched(good, 2, uint32_t{69})), "t: offset: 69 is past the end of item 0x19"));
  CHECK(restore_error(*b, patched(patched(good, 0, uint16_t{0x20}), 2, uint32_t{kIdentitySize})) == "");
  CHECK(contains(restore_error(*b, patched(patched(good, 0, uint16_t{0x20}), 2, uint32_t{kIdentitySize + 1})), "t: offset"));
  // No item selected: the offset must be 0.
  CHECK(restore_error(*b, patched(patched(good, 0, FwCfg::kInvalidKey), 2, uint32_t{0})) == "");
  CHECK(contains(restore_error(*b, patched(patched(good, 0, FwCfg::kInvalidKey), 2, uint32_t{1})), "t: offset: 1 with no item selected"));
}

TEST_CASE("snapshot codec: virtio-pci transport with virtio-blk") {
  auto mem = device_test::ram(kRam);
  TempFile file{Bytes(1 << 20, 0x5a), "vmm-snap-test"};
  auto loop = vmm::EventLoop::create();
  REQUIRE(loop);
  NullVmIo io;
  auto make = [&] {
    auto img = vmm::disk::open_image(**loop, {.path = file.path(), .read_only = true});
    REQUIRE(img);
    auto tr = PciTransport::create(std::make_shared<Block>(std::move(*img), "snap"), "blk", io, **loop, mem, kBars, 17);
    REQUIRE(tr);
    return *tr;
  };
  auto a = make(), b = make();
  check_transport(*a, *b, kFVersion1 | kFRingEventIdx | kBlkFFlush);
}

TEST_CASE("snapshot codec: virtio-pci transport with virtio-net") {
  // Each device on one end of a SOCK_SEQPACKET socketpair (a TAP's frames, no privilege needed).
  auto mem = device_test::ram(kRam);
  auto loop = vmm::EventLoop::create();
  REQUIRE(loop);
  NullVmIo io;
  const MacAddress mac{0x02, 0, 0, 0, 0, 1};
  std::vector<vmm::Fd> peers;
  auto make = [&] {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
    peers.emplace_back(sv[1]);
    auto net = Net::create(Tap::adopt(vmm::Fd(sv[0]), "pair"), mac, **loop);
    REQUIRE(net);
    auto tr = PciTransport::create(*net, "net", io, **loop, mem, kBars, 18);
    REQUIRE(tr);
    return *tr;
  };
  auto a = make(), b = make();
  REQUIRE(a->device().queues().size() == 2);
  check_transport(*a, *b, kFVersion1 | kFRingEventIdx | kNetFMac);

  // A guest that broke the ring rules before the pause (its receive ring's avail idx 100 entries
  // ahead of a 16-entry ring) and a frame waiting: the restored device meets the violation when it
  // starts serving and goes to NEEDS_RESET, as the running one would have; the restore itself
  // succeeds (the guest-io fuzzer found such a VM's snapshot refused by every restore).
  REQUIRE((a->status() & kStatusNeedsReset) == 0);
  ByteWriter w;
  a->save(w);
  REQUIRE(mem.write_obj<uint16_t>(Gpa(kRings + 0x1000 + 2), 100));
  auto c = make();
  const uint8_t frame[60] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  REQUIRE(::send(peers.back().get(), frame, sizeof frame, 0) == sizeof frame);
  ByteReader r(w.bytes(), "net");
  auto res = c->restore(r);
  REQUIRE_MESSAGE(res, res.error().message());
  CHECK((c->status() & kStatusNeedsReset) != 0);
  CHECK((c->status() & kStatusDriverOk) != 0);
}

// ---- The machine's own sections, without KVM ----------------------------------------------------

namespace {
/// A "machine" section as capture() writes it, for `vcpus` and `memory`.
std::vector<uint8_t> machine_section(uint32_t vcpus, uint64_t memory) {
  ByteWriter w;
  w.put(vcpus);
  w.put(memory);
  w.put(uint8_t{0});
  w.put_string("GenuineIntel");
  w.put(uint32_t{0x906ea});
  w.put(uint32_t{2400000});
  w.put(uint64_t{4096});
  return w.take();
}
std::vector<uint8_t> cpuid_section(size_t entries) {
  ByteWriter w;
  w.put_vector(std::vector<kvm_cpuid_entry2>(entries));
  return w.take();
}
std::string refusal(const vmm::clone::StateFile& s) {
  auto r = vmm::clone::read_shape(s, "t.state");
  return r ? std::string("accepted") : r.error().message();
}
}  // namespace

TEST_CASE("snapshot: the machine shape refuses RAM no machine has and more CPUID entries than KVM takes") {
  using vmm::clone::StateFile;
  StateFile ok{.sections = {{"machine", machine_section(1, kRam)}, {"cpuid", cpuid_section(256)}}};
  CHECK(refusal(ok) == "accepted");
  // 4 KiB of RAM passed before, and the clone failed later writing its generation ID at 0x9fc00.
  for (uint64_t memory : {uint64_t{0}, uint64_t{4096}, uint64_t{kRam - 4096}, uint64_t{kRam + 1}, uint64_t{(1ull << 40) + 4096}}) {
    StateFile s{.sections = {{"machine", machine_section(1, memory)}, {"cpuid", cpuid_section(2)}}};
    CAPTURE(memory);
    CHECK(refusal(s).starts_with("t.state: section machine: memory: "));
  }
  // KVM_SET_CPUID2 takes at most 256 entries (E2BIG, which failed the clone with a KVM error).
  StateFile many{.sections = {{"machine", machine_section(1, kRam)}, {"cpuid", cpuid_section(257)}}};
  CHECK(refusal(many).starts_with("t.state: section cpuid: vcpu 0: "));
}

TEST_CASE("snapshot: KVM's section refuses controllers out of place, a moved IOAPIC and PIT flags capture never saves") {
  using vmm::clone::StateFile;
  vmm::VmKernelState k;
  k.pic_master.chip_id = KVM_IRQCHIP_PIC_MASTER;
  k.pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
  k.ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
  k.ioapic.chip.ioapic.base_address = 0xfec00000;
  auto read = [](const vmm::VmKernelState& state) {
    ByteWriter w;
    w.put_raw(state);
    StateFile s{.sections = {{"kvm", w.take()}}};
    auto r = vmm::clone::read_kernel_state(s, "t.state");
    return r ? std::string("accepted") : r.error().message();
  };
  CHECK(read(k) == "accepted");
  auto bad = k;
  bad.pic_master.chip_id = KVM_IRQCHIP_IOAPIC;  // the master PIC's record labelled as the IOAPIC
  CHECK(read(bad) == "t.state: section kvm: kvm: interrupt controller 0 recorded as chip 2");
  bad = k;
  bad.ioapic.chip_id = KVM_IRQCHIP_PIC_SLAVE;
  CHECK(read(bad) == "t.state: section kvm: kvm: interrupt controller 2 recorded as chip 1");
  bad = k;
  bad.ioapic.chip.ioapic.base_address = 0xfed00000;
  CHECK(read(bad) == "t.state: section kvm: kvm: IOAPIC at 0xfed00000, not 0xfec00000");
  bad = k;
  bad.pit.flags = KVM_PIT_FLAGS_HPET_LEGACY;  // channel 0 silenced: the guest's timer never ticks
  CHECK(read(bad) == "t.state: section kvm: kvm: PIT flags 0x1");
  bad = k;
  bad.pit.flags = KVM_PIT_FLAGS_SPEAKER_DATA_ON;
  CHECK(read(bad) == "accepted");
  StateFile truncated{.sections = {{"kvm", std::vector<uint8_t>(sizeof k - 1)}}};
  auto r = vmm::clone::read_kernel_state(truncated, "t.state");
  REQUIRE_FALSE(r);
  CHECK(r.error().message().starts_with("t.state: section kvm: kvm: truncated"));
}
