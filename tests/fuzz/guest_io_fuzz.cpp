// libFuzzer target for everything a hostile guest touches without KVM in between: the port-I/O
// devices (serial, i8042, RTC, debug-exit, ACPI PM, pvpanic, PCI configuration mechanism #1, fw_cfg),
// PCI configuration through ECAM, and two virtio-pci functions (virtio-blk on a raw image file,
// virtio-net on one end of a socketpair standing in for a TAP): their BARs (common configuration,
// ISR, device configuration, notify, MSI-X table and PBA), their virtqueues' rings and descriptor
// chains in guest RAM, block requests against the file (raw, or a qcow2 overlay on it) and frames
// both ways. Built by clang only (tests/fuzz/fuzz.cmake, scripts/fuzz-guest-io.sh) with
// -fsanitize=fuzzer,address,undefined.
//
// An input is a program: one byte of set-up flags, then operations (an opcode byte and its operands;
// bytes past the end read as zero). Besides the raw accesses a guest makes, a few operations do what
// a driver does in one step (bring a device up to DRIVER_OK with its queues on rings in RAM, publish
// a descriptor chain), so that the fuzzer reaches request processing quickly and then mutates from
// there. Everything runs on one thread: accesses as a vCPU makes them, the event loop turned by hand.
//
// Must never crash, hang, leak or trip a sanitizer. Checked besides:
// - a device's saved state (a snapshot taken mid-program, after the in-flight requests completed as
//   a pause waits for them) restores into a freshly built device, which saves the same bytes (unless
//   it served its rings on activation: chains published without a notification, or broken ones),
//   and so do the port devices' states (serial, i8042, RTC, PCI address register, fw_cfg selector);
// - every request the device started completes (the loop drains) and the disk file keeps its size;
//   a read-only disk's file keeps its contents.
//
// VMM_GUEST_IO_FUZZ_MAKE_SEEDS=DIR writes a few programs (a block read, write and flush; frames
// both ways; legacy port traffic) to DIR and exits.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/core.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <memory>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "devices/bus.hpp"
#include "devices/fw_cfg.hpp"
#include "devices/legacy.hpp"
#include "devices/pci.hpp"
#include "devices/serial.hpp"
#include "devices/tap.hpp"
#include "devices/virtio/blk.hpp"
#include "devices/virtio/net.hpp"
#include "devices/virtio/pci_transport.hpp"
#include "disk/image.hpp"
#include "disk/qcow2.hpp"
#include "fake_vm.hpp"
#include "vmm/base/codec.hpp"
#include "vmm/base/event_loop.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/base/layout.hpp"

namespace {

namespace fs = std::filesystem;
namespace dev = vmm::devices;
namespace virtio = vmm::devices::virtio;
using namespace std::chrono_literals;
using vmm::Gpa;
using Transport = virtio::PciTransport;

[[noreturn]] void die(const std::string& what, const std::string& detail = {}) {
  std::fprintf(stderr, "guest_io_fuzz: %s%s%s\n", what.c_str(), detail.empty() ? "" : ": ", detail.c_str());
  std::abort();
}

// ---- The machine -----------------------------------------------------------------------------------

constexpr uint64_t kRam = 1 << 20;  // small, so that guest addresses often land near its end
constexpr uint64_t kBars = 0xc0000000;
constexpr uint64_t kSlice = 0x8000;  // each function's BARs (Transport::kMmioBytes, aligned)
constexpr uint64_t kDiskBytes = 64 << 10;
constexpr uint64_t kBufArea = 0x40000;  // where the chain helper points buffers by default
constexpr unsigned kFunctions = 2;      // 0: virtio-blk at slot 1, 1: virtio-net at slot 2

// Virtio common configuration (virtio 1.2 §4.1.4.3).
constexpr uint64_t kDFSel = 0x00, kGFSel = 0x08, kGF = 0x0c, kMsixCfg = 0x10, kStatus = 0x14, kQSel = 0x16,
                   kQSize = 0x18, kQMsix = 0x1a, kQEnable = 0x1c, kQDesc = 0x20, kQDriver = 0x28, kQDevice = 0x30;

std::vector<uint8_t> disk_pattern() {
  std::vector<uint8_t> b(kDiskBytes);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(i * 7 + (i >> 9));
  return b;
}

/// The image files: a raw disk the program drives (reset to a pattern before each run) and a twin
/// of the same size for the devices a snapshot check restores into; or, with set-up flag 4, qcow2
/// overlays made afresh for each run over the raw one (a linked clone's disk: the raw file, its
/// backing, must come out unchanged).
struct Files {
  fs::path disk, twin, qdisk, qtwin;
  std::vector<uint8_t> pattern = disk_pattern();
  static Files& get() {
    static Files* f = [] {
      auto* files = new Files;
      for (fs::path* p : {&files->disk, &files->twin}) {
        char path[] = "/tmp/guest-io-fuzz-XXXXXX";
        const int fd = ::mkstemp(path);
        if (fd < 0 || ::ftruncate(fd, kDiskBytes) != 0) die("disk image");
        ::close(fd);
        *p = path;
      }
      files->qdisk = files->disk.string() + ".qcow2";
      files->qtwin = files->twin.string() + ".qcow2";
      std::atexit([] {
        std::error_code ec;
        for (const fs::path& p : {get().disk, get().twin, get().qdisk, get().qtwin}) fs::remove(p, ec);
      });
      return files;
    }();
    return *f;
  }
  void reset_disk(bool qcow2) const {
    const int fd = ::open(disk.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0 || ::ftruncate(fd, kDiskBytes) != 0 ||
        ::pwrite(fd, pattern.data(), pattern.size(), 0) != static_cast<ssize_t>(pattern.size())) {
      die("resetting the disk image");
    }
    ::close(fd);
    if (!qcow2) return;
    for (const fs::path& q : {qdisk, qtwin}) {
      std::error_code ec;
      fs::remove(q, ec);
      auto r = vmm::disk::Qcow2::create(q, {.size = kDiskBytes, .cluster_bits = 12, .backing = disk.filename().string(),
                                            .backing_format = "raw"});
      if (!r) die("qcow2 overlay", r.error().message());
    }
  }
  const fs::path& driven(bool qcow2) const { return qcow2 ? qdisk : disk; }
  const fs::path& spare(bool qcow2) const { return qcow2 ? qtwin : twin; }
};

/// A virtio device of either kind behind its transport, and what it needs alive.
struct Function {
  std::shared_ptr<virtio::VirtioDevice> device;
  std::shared_ptr<Transport> transport;
  vmm::Fd peer;  // virtio-net: the other end of its "TAP"
};

Function make_function(unsigned kind, const fs::path& disk, bool read_only, bool filter, vmm::EventLoop& loop,
                       fuzz_vm::FakeVmIo& io, const vmm::GuestMemory& memory, uint64_t bars, uint32_t gsi) {
  Function f;
  if (kind == 0) {
    auto img = vmm::disk::open_image(loop, {.path = disk, .read_only = read_only});
    if (!img) die("disk image", img.error().message());
    f.device = std::make_shared<virtio::Block>(std::move(*img), "guest-io-fuzz");
  } else {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0) die("socketpair");
    f.peer = vmm::Fd(sv[1]);
    auto net = virtio::Net::create(dev::Tap::adopt(vmm::Fd(sv[0]), "fuzz0"), {0x52, 0x54, 0, 0x12, 0x34, 0x56}, loop,
                                   {.filter_source = filter});
    if (!net) die("virtio-net", net.error().message());
    f.device = *net;
  }
  auto t = Transport::create(f.device, kind == 0 ? "virtio-blk fuzz" : "virtio-net fuzz", io, loop, memory, bars, gsi);
  if (!t) die("transport", t.error().message());
  f.transport = *t;
  return f;
}

/// The first field in which two saved transport states differ (for the failure message).
std::string difference(const Transport::State& a, const Transport::State& b) {
  for (size_t i = 0; i < a.config.size(); ++i) {
    if (a.config[i] != b.config[i]) return fmt::format("config byte {:#x}: {:#x} then {:#x}", i, a.config[i], b.config[i]);
  }
  const auto field = [](const char* name, auto x, auto y) {
    return x == y ? std::string() : fmt::format("{}: {:#x} then {:#x}", name, uint64_t(x), uint64_t(y));
  };
  for (const std::string& d : {field("status", a.status, b.status), field("driver_features", a.driver_features, b.driver_features),
                               field("msix_config", a.msix_config, b.msix_config), field("isr", a.isr, b.isr),
                               field("config_generation", a.config_generation, b.config_generation),
                               field("msix.enabled", a.msix.enabled, b.msix.enabled),
                               field("msix.function_masked", a.msix.function_masked, b.msix.function_masked)}) {
    if (!d.empty()) return d;
  }
  if (a.msix.pending != b.msix.pending) return "msix.pending";
  if (a.queue_vectors != b.queue_vectors) return "queue_vectors";
  for (size_t i = 0; i < std::min(a.queues.size(), b.queues.size()); ++i) {
    const auto &x = a.queues[i], &y = b.queues[i];
    for (const std::string& d : {field("size", x.size, y.size), field("ready", x.ready, y.ready), field("desc", x.desc, y.desc),
                                 field("avail", x.avail, y.avail), field("used", x.used, y.used),
                                 field("next_avail", x.next_avail, y.next_avail), field("next_used", x.next_used, y.next_used),
                                 field("signalled_used", x.signalled_used, y.signalled_used),
                                 field("signalled_valid", x.signalled_valid, y.signalled_valid),
                                 field("event_idx", x.event_idx, y.event_idx)}) {
      if (!d.empty()) return fmt::format("queue {}: {}", i, d);
    }
  }
  return "the MSI-X table or something unnamed";
}

/// Program bytes; past the end everything reads as zero.
struct Input {
  std::span<const uint8_t> data;
  size_t pos = 0;
  bool done() const { return pos >= data.size(); }
  template <typename T>
  T take() {
    T v{};
    const size_t n = std::min(sizeof v, data.size() - std::min(pos, data.size()));
    if (n) std::memcpy(&v, data.data() + pos, n);
    pos += sizeof v;
    return v;
  }
  std::span<const uint8_t> bytes(size_t n) {
    const size_t start = std::min(pos, data.size());
    const size_t len = std::min(n, data.size() - start);
    pos += n;
    return data.subspan(start, len);
  }
};

/// What the driver side knows about one queue (the helpers publish chains on it).
struct DriverQueue {
  uint16_t size = 0;  // 0: not set up by the helper
  uint64_t desc = 0, avail = 0, used = 0;
  uint16_t avail_idx = 0, next_desc = 0;
};

struct Machine {
  bool read_only, filter, qcow2;
  vmm::GuestMemory memory;
  std::unique_ptr<vmm::EventLoop> loop;
  fuzz_vm::FakeVmIo io{false};
  fuzz_vm::FakeControl control;
  std::shared_ptr<dev::PciRoot> pci = std::make_shared<dev::PciRoot>();
  // The buses as vmm/platform.cpp lays them out (a straddling access is unclaimed, as in a VM).
  dev::Bus pio_bus{"pio"}, mmio_bus{"mmio"};
  std::shared_ptr<dev::BusDevice> window;  // also on mmio_bus: the helpers reach the BARs through it
  struct Port {
    uint64_t port, len;
  };
  std::vector<Port> ports;
  std::array<Function, kFunctions> functions;
  std::array<std::array<DriverQueue, 2>, kFunctions> queues{};

  /// The port devices that keep state a snapshot carries, each with a way to build a fresh one.
  struct Legacy {
    const char* name;
    std::shared_ptr<dev::Snapshottable> device;
    std::function<std::shared_ptr<dev::Snapshottable>()> fresh;
  };
  std::vector<Legacy> legacy;

  static std::shared_ptr<dev::FwCfg> make_fw_cfg() {
    auto fw = std::make_shared<dev::FwCfg>();
    if (!fw->add_file(std::string(dev::kIdentityFileName), std::vector<uint8_t>(dev::kIdentitySize, 'i'))) {
      die("fw_cfg file");
    }
    return fw;
  }

  Machine(uint8_t flags, vmm::GuestMemory mem, std::unique_ptr<vmm::EventLoop> l)
      : read_only(flags & 1), filter(flags & 2), qcow2(flags & 4), memory(std::move(mem)), loop(std::move(l)) {
    auto fw = make_fw_cfg();
    auto i8042 = std::make_shared<dev::I8042>(control);
    auto make_serial = [] { return std::make_shared<dev::Serial>(std::make_shared<fuzz_vm::FakeIrq>(), [](std::span<const uint8_t>) {}); };
    auto serial = make_serial();
    auto rtc = std::make_shared<dev::Rtc>();
    legacy = {{"serial", serial, make_serial},
              {"i8042", i8042, [this] { return std::make_shared<dev::I8042>(control); }},
              {"rtc", rtc, [] { return std::make_shared<dev::Rtc>(); }},
              {"pci", pci, [] { return std::make_shared<dev::PciRoot>(); }},
              {"fw_cfg", fw, [] { return make_fw_cfg(); }}};
    namespace layout = vmm::layout;
    const std::vector<std::tuple<std::shared_ptr<dev::BusDevice>, uint64_t, uint64_t>> pio = {
        {serial, layout::kCom1Port, 8},
        {i8042, layout::kI8042DataPort, 1},
        {std::make_shared<dev::OffsetDevice>(i8042, 4), layout::kI8042CommandPort, 1},
        {rtc, layout::kRtcPort, 2},
        {std::make_shared<dev::DebugExit>(control), layout::kDebugExitPort, 4},
        {std::make_shared<dev::AcpiPm>(control), layout::kAcpiSleepControlPort, 3},
        {std::make_shared<dev::PvPanic>(control), layout::kPvPanicPort, 1},
        {pci, layout::kPciConfigAddressPort, 8},
        {fw, layout::kFwCfgPort, layout::kFwCfgPortCount}};
    for (const auto& [device, port, len] : pio) {
      if (!pio_bus.insert(device, port, len)) die("pio bus");
      ports.push_back({port, len});
    }
    for (unsigned i = 0; i < kFunctions; ++i) {
      functions[i] = make_function(i, Files::get().driven(qcow2), read_only, filter, *loop, io, memory, kBars + i * kSlice, 17 + i);
      if (!pci->attach(1 + i, functions[i].transport)) die("attach");
    }
    window = pci->mmio_window(kBars);  // after the functions are attached: it forwards to those
    if (!mmio_bus.insert(pci->ecam(), layout::kPciEcamStart, layout::kPciEcamSize) ||
        !mmio_bus.insert(window, layout::kPciMmioStart, layout::kPciMmioEnd - layout::kPciMmioStart)) {
      die("mmio bus");
    }
  }

  ~Machine() {
    // Everything started completes before the devices go (as a VM's I/O thread stops).
    drain();
  }

  /// What Machine::quiesce does before a snapshot: serve the notifications and frames the loop
  /// holds, until nothing is left and every request started has completed.
  void drain() {
    // Until the loop is idle and no device has a request in flight, as Machine::quiesce waits: a
    // qcow2 request runs on the image's worker thread, which the loop does not count (until
    // 2026-12-08 a snapshot could be taken with one running, and saved a chain in flight).
    auto busy = [this] {
      return loop->in_flight() > 0 || std::ranges::any_of(functions, [](const Function& f) { return f.transport->device().in_flight() > 0; });
    };
    for (int i = 0; i < 10000; ++i) {
      const bool waiting = busy();
      auto n = loop->run_once(waiting ? 10ms : 0ms);
      if (!n) die("event loop", n.error().message());
      if (*n == 0 && !waiting && !busy()) return;
    }
    die("a loop that never settles (requests that never complete, or events without end)");
  }

  Transport& transport(unsigned i) { return *functions[i % kFunctions].transport; }

  void mmio_write(unsigned fn, uint64_t offset, std::span<const uint8_t> v) {
    window->write(fn * kSlice + offset, v);
  }
  template <typename T>
  void mmio_write(unsigned fn, uint64_t offset, T v) {
    mmio_write(fn, offset, std::span(reinterpret_cast<const uint8_t*>(&v), sizeof v));
  }

  // ---- Operations ----
  /// A port access at or just past one of the devices' ranges (1, 2 or 4 bytes).
  void pio(Input& in, bool write) {
    const Port& p = ports[in.take<uint8_t>() % ports.size()];
    const uint64_t port = p.port + in.take<uint8_t>() % (p.len + 3);
    access(pio_bus, port, in.take<uint8_t>() % 3, in, write);
  }

  /// An MMIO access (1-8 bytes) in the PCI window, near both functions' BARs (where the guest left
  /// them), or in ECAM, bus 0's whole configuration space and a little past it.
  void mmio(Input& in, bool write, bool config) {
    const uint64_t addr = config ? vmm::layout::kPciEcamStart + in.take<uint32_t>() % (vmm::layout::kPciEcamSize + 8)
                                 : kBars + in.take<uint16_t>();
    access(mmio_bus, addr, in.take<uint8_t>() % 4, in, write);
  }

  static void access(const dev::Bus& bus, uint64_t addr, unsigned log2_size, Input& in, bool write) {
    auto value = in.take<uint64_t>();
    std::span<uint8_t> data(reinterpret_cast<uint8_t*>(&value), size_t{1} << log2_size);
    if (write) {
      bus.write(addr, data);
    } else {
      bus.read(addr, data);
    }
  }

  void poke(Input& in) {
    const uint64_t gpa = in.take<uint32_t>() % kRam;
    auto bytes = in.bytes(in.take<uint8_t>());
    bytes = bytes.first(std::min<uint64_t>(bytes.size(), kRam - gpa));
    if (!memory.write(Gpa(gpa), bytes)) die("guest memory write inside RAM failed");
  }

  /// Linux's virtio_pci_modern probe, in one step: memory decoding and bus mastering on, the status
  /// handshake, features (what the program says, or what was offered), MSI-X on or off, both queues
  /// on rings in RAM (a tidy layout or the program's addresses), DRIVER_OK.
  void bring_up(Input& in) {
    const unsigned fn = in.take<uint8_t>() % kFunctions;
    const uint8_t flags = in.take<uint8_t>();
    const uint64_t features = in.take<uint64_t>();
    Transport& t = transport(fn);
    t.config_write(0x04, dev::kPciCommandMemory | dev::kPciCommandMaster | (flags & 0x80 ? 0x400 : 0), 0xf);
    const auto ok = static_cast<uint8_t>(virtio::kStatusAcknowledge | virtio::kStatusDriver);
    mmio_write<uint8_t>(fn, kStatus, 0);
    mmio_write<uint8_t>(fn, kStatus, ok);
    uint64_t offered = 0;
    for (uint32_t sel = 0; sel < 2; ++sel) {
      mmio_write<uint32_t>(fn, kDFSel, sel);
      uint32_t half = 0;
      window->read(fn * kSlice + 0x04, std::span(reinterpret_cast<uint8_t*>(&half), 4));
      offered |= uint64_t{half} << (32 * sel);
    }
    const uint64_t accepted = flags & 1 ? features : (features | virtio::kFVersion1) & offered;
    mmio_write<uint32_t>(fn, kGFSel, 0);
    mmio_write<uint32_t>(fn, kGF, static_cast<uint32_t>(accepted));
    mmio_write<uint32_t>(fn, kGFSel, 1);
    mmio_write<uint32_t>(fn, kGF, static_cast<uint32_t>(accepted >> 32));
    mmio_write<uint8_t>(fn, kStatus, ok | virtio::kStatusFeaturesOk);
    if (flags & 2) {  // MSI-X on, entries 0..2 programmed and unmasked
      for (uint8_t p = static_cast<uint8_t>(t.config_read(0x34)), hops = 0; p && hops < 48;
           p = static_cast<uint8_t>(t.config_read(p & 0xfc) >> 8), ++hops) {
        if ((t.config_read(p & 0xfc) & 0xff) == dev::kPciCapMsix) t.config_write(p & 0xfc, 1u << 31, 0x8);
      }
      for (uint32_t v = 0; v < 3; ++v) {
        mmio_write<uint32_t>(fn, Transport::kBar0Size + 16 * v, 0xfee00000);
        mmio_write<uint32_t>(fn, Transport::kBar0Size + 16 * v + 8, 0x40 + v);
        mmio_write<uint32_t>(fn, Transport::kBar0Size + 16 * v + 12, 0);
      }
      mmio_write<uint16_t>(fn, kMsixCfg, 0);
    }
    for (uint16_t q = 0; q < (fn == 0 ? 1 : 2); ++q) {
      DriverQueue& dq = queues[fn][q];
      dq = {};
      dq.size = static_cast<uint16_t>(1u << (in.take<uint8_t>() % 9));  // 1 .. 256
      if (flags & 4) {  // the program's addresses, anywhere (inside RAM or not, aligned or not)
        dq.desc = in.take<uint32_t>();
        dq.avail = in.take<uint32_t>();
        dq.used = in.take<uint32_t>();
      } else {  // one 16 KiB area per queue: descriptors, avail ring, used ring
        dq.desc = 0x10000 + (2 * fn + q) * 0x4000ull;
        dq.avail = dq.desc + 16ull * dq.size;
        dq.used = (dq.avail + 6 + 2ull * dq.size + 3) & ~3ull;
      }
      mmio_write<uint16_t>(fn, kQSel, q);
      mmio_write<uint16_t>(fn, kQSize, dq.size);
      if (flags & 2) mmio_write<uint16_t>(fn, kQMsix, static_cast<uint16_t>(1 + q));
      for (const auto& [reg, gpa] : {std::pair{kQDesc, dq.desc}, {kQDriver, dq.avail}, {kQDevice, dq.used}}) {
        mmio_write<uint32_t>(fn, reg, static_cast<uint32_t>(gpa));  // as Linux's vp_iowrite64_twopart
        mmio_write<uint32_t>(fn, reg + 4, static_cast<uint32_t>(gpa >> 32));
      }
      mmio_write<uint16_t>(fn, kQEnable, 1);
    }
    mmio_write<uint8_t>(fn, kStatus, ok | virtio::kStatusFeaturesOk | virtio::kStatusDriverOk);
  }

  /// Writes a chain of 1-8 descriptors into a queue the helper set up and publishes its head; with
  /// the program's flags, next indices and addresses, or tidy ones (buffers in RAM, chained in
  /// order, readable then writable, a block request header in the first buffer).
  void add_chain(Input& in) {
    const unsigned fn = in.take<uint8_t>() % kFunctions;
    const uint8_t mode = in.take<uint8_t>();
    DriverQueue& dq = queues[fn][(mode >> 7) & (fn == 0 ? 0 : 1)];
    if (dq.size == 0) return;
    const unsigned n = 1 + (mode & 7);
    const uint16_t head = dq.next_desc;
    for (unsigned i = 0; i < n; ++i) {
      const auto index = static_cast<uint16_t>((head + i) % dq.size);
      struct {
        uint64_t addr;
        uint32_t len;
        uint16_t flags, next;
      } d{};
      const uint8_t raw = in.take<uint8_t>();
      if (mode & 8) {
        d.addr = in.take<uint64_t>();
        d.len = in.take<uint32_t>();
        d.flags = static_cast<uint16_t>(raw);
        d.next = in.take<uint16_t>();
      } else {
        d.addr = kBufArea + (in.take<uint16_t>() * 8ull) % (kRam - kBufArea);
        d.len = in.take<uint16_t>();
        const bool last = i + 1 == n;
        const bool writable = raw & 1;
        d.flags = static_cast<uint16_t>((last ? 0 : virtio::kDescFNext) | (writable ? virtio::kDescFWrite : 0) |
                                        (raw & 0x80 ? virtio::kDescFIndirect : 0));
        d.next = static_cast<uint16_t>((index + 1) % dq.size);
        if (i == 0 && fn == 0 && (mode & 0x10)) {  // a block request header: type, reserved, sector
          struct {
            uint32_t type, reserved;
            uint64_t sector;
          } h{static_cast<uint32_t>(in.take<uint8_t>() % 16), 0, in.take<uint16_t>() % (2 * kDiskBytes / 512)};
          (void)memory.write_obj(Gpa(d.addr), h);  // may not fit at the end of RAM
        }
      }
      (void)memory.write_obj(Gpa(dq.desc + 16ull * index), d);  // rings may lie outside RAM
    }
    dq.next_desc = static_cast<uint16_t>((head + n) % dq.size);
    (void)memory.write_obj<uint16_t>(Gpa(dq.avail + 4 + 2ull * (dq.avail_idx % dq.size)), head);
    dq.avail_idx = static_cast<uint16_t>(dq.avail_idx + 1 + (mode & 0x20 ? in.take<uint8_t>() : 0));
    (void)memory.write_obj<uint16_t>(Gpa(dq.avail + 2), dq.avail_idx);
  }

  /// One field of the common configuration written with its own width, memory decoding switched on
  /// first: a driver's single steps (a queue's size, an enable, a status, a feature word) in any order.
  void common_field(Input& in) {
    static constexpr std::pair<uint64_t, size_t> kFields[] = {
        {kDFSel, 4}, {kGFSel, 4}, {kGF, 4}, {kMsixCfg, 2}, {kStatus, 1}, {kQSel, 2}, {kQSize, 2}, {kQMsix, 2},
        {kQEnable, 2}, {kQDesc, 4}, {kQDesc + 4, 4}, {kQDriver, 4}, {kQDriver + 4, 4}, {kQDevice, 4}, {kQDevice + 4, 4}};
    const unsigned fn = in.take<uint8_t>() % kFunctions;
    const auto [offset, size] = kFields[in.take<uint8_t>() % std::size(kFields)];
    const auto value = in.take<uint32_t>();
    Transport& t = transport(fn);
    t.config_write(0x04, t.config_read(0x04) | dev::kPciCommandMemory, 0x3);
    mmio_write(fn, offset, std::span(reinterpret_cast<const uint8_t*>(&value), size));
  }

  void notify(Input& in) {
    const unsigned fn = in.take<uint8_t>() % kFunctions;
    mmio_write<uint16_t>(fn, Transport::kNotifyOffset + Transport::kNotifyMultiplier * (in.take<uint8_t>() % 3),
                         in.take<uint16_t>());
  }

  void turn_loop(Input& in) {
    const unsigned n = 1 + in.take<uint8_t>() % 4;
    for (unsigned i = 0; i < n; ++i) {
      if (auto r = loop->run_once(0ms); !r) die("event loop", r.error().message());
    }
  }

  /// A frame (virtio-net header included) from the host's side of the TAP.
  void frame_in(Input& in) {
    auto bytes = in.bytes(in.take<uint16_t>() % 2048);
    (void)::send(functions[1].peer.get(), bytes.data(), bytes.size(), MSG_DONTWAIT);
  }

  /// Whatever the guest sent, read off the host's side.
  void frames_out() {
    std::array<uint8_t, 65536> buf;
    for (int i = 0; i < 512 && ::recv(functions[1].peer.get(), buf.data(), buf.size(), MSG_DONTWAIT) >= 0; ++i) {
    }
  }

  /// A snapshot of one function as a pause takes it (requests completed first), restored into a
  /// freshly built one: the restore must take it, and the restored device must save the same bytes.
  /// The port devices' states go through the same round trip each time.
  void snapshot(Input& in) {
    const unsigned fn = in.take<uint8_t>() % kFunctions;
    drain();
    for (const Legacy& d : legacy) {
      vmm::ByteWriter lw;
      d.device->save(lw);
      const std::vector<uint8_t> state = lw.take();
      auto copy = d.fresh();
      vmm::ByteReader lr(state, d.name);
      auto res = copy->restore(lr);
      if (res) res = lr.finish();
      if (!res) die(fmt::format("{} refuses the state it saved", d.name), res.error().message());
      vmm::ByteWriter back;
      copy->save(back);
      if (back.take() != state) die(fmt::format("a restored {} saves other bytes than it was restored from", d.name));
    }
    vmm::ByteWriter w;
    transport(fn).save(w);
    const std::vector<uint8_t> saved = w.take();
    fuzz_vm::FakeVmIo io2{false};
    Function fresh = make_function(fn, Files::get().spare(qcow2), read_only, filter, *loop, io2, memory, kBars + fn * kSlice, 17 + fn);
    vmm::ByteReader r(saved, "snapshot");
    auto res = fresh.transport->restore(r);
    if (res) res = r.finish();
    if (!res) die("a transport refuses the state it saved", res.error().message());
    // The same bytes back, unless the restored device served its rings when it started (virtio-net
    // takes what is available at activation: chains the guest published without a notification),
    // or met a violation of the ring rules the guest left in memory (NEEDS_RESET, as the running
    // device would have at its next pop).
    const Transport::State before = transport(fn).save(), after = fresh.transport->save();
    bool served = (after.status & virtio::kStatusNeedsReset) && !(before.status & virtio::kStatusNeedsReset);
    for (size_t q = 0; q < before.queues.size() && q < after.queues.size(); ++q) {
      served |= before.queues[q].next_avail != after.queues[q].next_avail;
    }
    if (served) return drain();
    vmm::ByteWriter again;
    fresh.transport->save(again);
    if (again.take() != saved) {
      die("a restored transport saves other bytes than it was restored from", difference(before, after));
    }
    // The fresh device may have started requests on the rings (a restored running device processes
    // what is available): let them finish before it goes.
    drain();
  }

  void run(Input& in) {
    static const bool verbose = std::getenv("VMM_GUEST_IO_FUZZ_VERBOSE") != nullptr;  // for reproducers
    for (unsigned steps = 0; !in.done() && steps < 4096; ++steps) {
      // 15: none yet. The regressions' opcode bytes are the op numbers themselves (below the count),
      // so they decode the same when ops are added and the modulus grows.
      const unsigned op = in.take<uint8_t>() % 16;
      if (verbose) {
        std::fprintf(stderr, "op %u at byte %zu; status blk %#x net %#x, used idx blk %u\n", op, in.pos - 1,
                     transport(0).status(), transport(1).status(),
                     queues[0][0].size ? *memory.read_obj<uint16_t>(Gpa(queues[0][0].used + 2)) : 0u);
      }
      switch (op) {
        case 0: pio(in, true); break;
        case 1: pio(in, false); break;
        case 2: mmio(in, true, false); break;
        case 3: mmio(in, false, false); break;
        case 4: mmio(in, true, true); break;
        case 5: mmio(in, false, true); break;
        case 6: poke(in); break;
        case 7: bring_up(in); break;
        case 8: add_chain(in); break;
        case 9: notify(in); break;
        case 10: turn_loop(in); break;
        case 11: frame_in(in); break;
        case 12: frames_out(); break;
        case 13: snapshot(in); break;
        case 14: common_field(in); break;
      }
    }
    drain();
  }
};

void check_disk(bool read_only, bool qcow2) {
  const Files& f = Files::get();
  std::error_code ec;
  const auto size = fs::file_size(f.disk, ec);
  if (ec || size != kDiskBytes) die("the disk file changed size", fmt::format("{}", size));
  if (!read_only && !qcow2) return;
  std::vector<uint8_t> now(kDiskBytes);
  const int fd = ::open(f.disk.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 || ::pread(fd, now.data(), now.size(), 0) != static_cast<ssize_t>(now.size())) die("reading the disk");
  ::close(fd);
  if (now != f.pattern) die(qcow2 ? "an overlay's backing file was written" : "a read-only disk's file was written");
}

void run_program(std::span<const uint8_t> data) {
  Input in{data};
  const auto flags = in.take<uint8_t>();
  Files::get().reset_disk(flags & 4);
  auto memory = vmm::GuestMemory::anonymous(kRam);
  if (!memory) die("guest memory", memory.error().message());
  auto loop = vmm::EventLoop::create();
  if (!loop) die("event loop", loop.error().message());
  {
    Machine m(flags, std::move(*memory), std::move(*loop));
    m.run(in);
  }
  check_disk(flags & 1, flags & 4);
}

// ---- Seeds -------------------------------------------------------------------------------------------

struct Program {
  std::vector<uint8_t> b;
  Program& u8(uint8_t v) { return b.push_back(v), *this; }
  template <typename T>
  Program& put(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof v);
    return *this;
  }
};

void make_seeds(const fs::path& dir) {
  fs::create_directories(dir);
  std::vector<std::pair<std::string, Program>> seeds;
  // Block: bring up (tidy rings, MSI-X, offered features), then read, write, flush, get-id requests.
  for (const uint8_t type : std::initializer_list<uint8_t>{0, 1, 4, 8, 11, 13}) {
    Program p;
    p.u8(0);
    p.u8(7).u8(0).u8(2).put<uint64_t>(0).u8(4);  // bring_up fn 0, MSI-X, queue size 16
    // add_chain fn 0, 3 descriptors, header: header (16), data (512, writable), status (1, writable)
    // Data the device reads (write, discard, write-zeroes) or writes (read, get-id); discard and
    // write-zeroes read a range there: sector 1, 2 sectors, no flags (poked into the buffer first).
    const bool out = type == 1 || type == 11 || type == 13;
    if (type == 11 || type == 13) p.u8(6).put<uint32_t>(kBufArea + 0x100 * 8).u8(16).put<uint64_t>(1).put<uint32_t>(2).put<uint32_t>(0);
    p.u8(8).u8(0).u8(0x10 | 2);
    p.u8(0).put<uint16_t>(0).put<uint16_t>(16).u8(type).put<uint16_t>(3);
    p.u8(out ? 0 : 1).put<uint16_t>(0x100).put<uint16_t>(type == 11 || type == 13 ? 16 : 512);
    p.u8(1).put<uint16_t>(0x200).put<uint16_t>(1);
    p.u8(9).u8(0).u8(0).put<uint16_t>(0);  // notify queue 0
    p.u8(10).u8(3);
    p.u8(13).u8(0);  // snapshot
    seeds.push_back({fmt::format("blk-type{}", type), p});
    p.b[0] = 4;  // the same on a qcow2 overlay
    seeds.push_back({fmt::format("blk-qcow2-type{}", type), p});
  }
  {  // Net: bring up, receive buffers, a frame in, a frame out
    Program p;
    p.u8(0);
    p.u8(7).u8(1).u8(2).put<uint64_t>(0).u8(4).u8(4);
    p.u8(8).u8(1).u8(0x01).u8(1).put<uint16_t>(0x400).put<uint16_t>(12).u8(1).put<uint16_t>(0x600).put<uint16_t>(1514);
    p.u8(9).u8(1).u8(0).put<uint16_t>(0);
    p.u8(11).put<uint16_t>(74);
    for (int i = 0; i < 74; ++i) p.u8(static_cast<uint8_t>(i < 12 ? 0 : i));
    p.u8(10).u8(3);
    p.u8(8).u8(1).u8(0x81).u8(0).put<uint16_t>(0x800).put<uint16_t>(12).u8(0).put<uint16_t>(0x900).put<uint16_t>(60);
    p.u8(9).u8(1).u8(1).put<uint16_t>(1);
    p.u8(10).u8(3).u8(12).u8(13).u8(1);
    seeds.push_back({"net-both-ways", p});
  }
  {  // Legacy ports: serial, RTC, PCI config address/data, fw_cfg selector and data, i8042
    Program p;
    p.u8(1);
    p.u8(0).u8(0).u8(0).u8(0).put<uint32_t>('x');
    p.u8(0).u8(3).u8(0).u8(0).put<uint32_t>(0x0a).u8(1).u8(3).u8(1).u8(0).put<uint32_t>(0);
    p.u8(0).u8(7).u8(0).u8(2).put<uint32_t>(0x80000800).u8(1).u8(7).u8(4).u8(2).put<uint32_t>(0);
    p.u8(0).u8(8).u8(0).u8(1).put<uint32_t>(0x19).u8(1).u8(8).u8(1).u8(0).put<uint32_t>(0);
    p.u8(0).u8(2).u8(0).u8(0).put<uint32_t>(0xd1).u8(0).u8(1).u8(0).u8(0).put<uint32_t>(0xdf);
    p.u8(5).u8(2).put<uint32_t>(1 << 15).put<uint64_t>(0);
    seeds.push_back({"ports", p});
  }
  for (const auto& [name, p] : seeds) {
    std::ofstream(dir / name, std::ios::binary).write(reinterpret_cast<const char*>(p.b.data()),
                                                      static_cast<std::streamsize>(p.b.size()));
  }
  std::printf("%zu seeds in %s\n", seeds.size(), dir.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* seeds = std::getenv("VMM_GUEST_IO_FUZZ_MAKE_SEEDS")) {
    make_seeds(seeds);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  run_program({data, size});
  return 0;
}
