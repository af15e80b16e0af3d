// libFuzzer target for the snapshot state file (clone/state_file.hpp). Built by clang only
// (tests/fuzz/fuzz.cmake, scripts/fuzz-state.sh) with -fsanitize=fuzzer,address,undefined. Must never
// crash, hang or leak.
//
// Each input is parsed twice: as it is (the header, length and checksum checks), and with its total
// length field and trailing CRC-32C made consistent with the input (a random mutation almost never
// keeps the checksum right, so without this pass nothing behind the checksum would be reached).
// Every parse that succeeds goes to fuzz_sections() and must round-trip: encode, parse again, the
// same StateFile and the same bytes. A parse that fails must say so in one line naming the file.
// fuzz_sections() also hands the "machine"/"cpuid" sections to clone::read_shape(), "kvm" to
// clone::read_kernel_state(), each "vcpuN" to clone::read_vcpu(), and every device
// section ("dev.serial0", "dev.virtio-blk0", ...: the ids clone::capture writes, vmm/platform.cpp)
// to the restore() of a freshly built device of that kind, with fake VM interfaces (no KVM): a
// refusal must be one line naming the section; an accepted section must save bytes that restore
// again into another fresh device and save the same bytes (the decoder accepts what it produces).
//
// VMM_STATE_FUZZ_MAKE_SEEDS=DIR writes valid state files of a few shapes to DIR and exits;
// VMM_STATE_FUZZ_VERBOSE=1 prints what each device section's restore said.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include <fmt/core.h>
#include <unistd.h>

#include <memory>
#include <optional>

#include "clone/snapshot.hpp"
#include "clone/state_file.hpp"
#include "devices/fw_cfg.hpp"
#include "fake_vm.hpp"
#include "devices/legacy.hpp"
#include "devices/pci.hpp"
#include "devices/serial.hpp"
#include "devices/virtio/blk.hpp"
#include "devices/virtio/net.hpp"
#include "devices/virtio/pci_transport.hpp"
#include "devices/vmgenid.hpp"
#include "disk/image.hpp"
#include "vmm/base/codec.hpp"
#include "vmm/base/crc32c.hpp"
#include "vmm/base/event_loop.hpp"
#include "vmm/base/guest_memory.hpp"

namespace {

namespace fs = std::filesystem;
using vmm::clone::StateFile;

constexpr const char* kFile = "fuzz.state";

[[noreturn]] void die(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "state_fuzz: %s%s%s\n", what, detail.empty() ? "" : ": ", detail.c_str());
  std::abort();
}

bool same(const StateFile& a, const StateFile& b) {
  if (a.major != b.major || a.minor != b.minor || a.sections.size() != b.sections.size()) return false;
  for (size_t i = 0; i < a.sections.size(); ++i) {
    if (a.sections[i].id != b.sections[i].id || a.sections[i].data != b.sections[i].data) return false;
  }
  return true;
}

// ---- Devices without KVM -----------------------------------------------------------------------------

namespace dev = vmm::devices;
namespace virtio = vmm::devices::virtio;

/// virtio-net's shape for the transport (virtio::Net needs a TAP): type 1, two queues of 256, the
/// features Net offers, nothing in flight.
class FakeNet final : public virtio::VirtioDevice {
 public:
  FakeNet() : VirtioDevice({virtio::Queue(virtio::Net::kQueueSize), virtio::Queue(virtio::Net::kQueueSize)}) {}
  uint16_t device_type() const override { return 1; }
  uint64_t device_features() const override {
    return virtio::kFVersion1 | virtio::kFRingEventIdx | virtio::kFRingIndirectDesc | virtio::kNetFMac | virtio::kNetFStatus;
  }
  void read_config(uint64_t, std::span<uint8_t> data) override { std::fill(data.begin(), data.end(), 0); }
  void write_config(uint64_t, std::span<const uint8_t>) override {}
  vmm::Result<> activate(const vmm::GuestMemory&, uint64_t, virtio::Interrupt&) override { return {}; }
  vmm::Result<> process_queue(unsigned) override { return {}; }
  void reset() override {}
};

/// What every device built here shares, made once: guest RAM as large as a default VM's (untouched,
/// so cheap), the event loop, a disk image file.
struct Bed {
  static constexpr uint64_t kRam = 256ull << 20;
  static constexpr uint64_t kBars = 0xc0000000;
  vmm::GuestMemory memory;
  std::unique_ptr<vmm::EventLoop> loop;
  fuzz_vm::FakeVmIo io;
  fuzz_vm::FakeControl control;
  fs::path disk;

  static Bed& get() {
    static Bed* bed = [] {
      auto mem = vmm::GuestMemory::anonymous(kRam);
      if (!mem) die("guest memory", mem.error().message());
      auto ev = vmm::EventLoop::create();
      if (!ev) die("event loop", ev.error().message());
      char path[] = "/tmp/state-fuzz-disk-XXXXXX";
      const int fd = ::mkstemp(path);
      if (fd < 0 || ::ftruncate(fd, 1 << 20) != 0) die("disk image");
      ::close(fd);
      auto* b = new Bed{std::move(*mem), std::move(*ev), {}, {}, path};
      std::atexit([] { std::error_code ec; fs::remove(get().disk, ec); });
      return b;
    }();
    return *bed;
  }
};

/// A fresh device for the section `id` ("dev." + the platform's id), or nullptr for other sections.
/// `keep` holds what the device needs alive.
std::shared_ptr<dev::Snapshottable> make_device(std::string_view id, std::shared_ptr<void>& keep) {
  Bed& bed = Bed::get();
  if (!id.starts_with("dev.")) return nullptr;
  id.remove_prefix(4);
  if (id == "serial0") return std::make_shared<dev::Serial>(std::make_shared<fuzz_vm::FakeIrq>(), [](std::span<const uint8_t>) {});
  if (id == "i8042") return std::make_shared<dev::I8042>(bed.control);
  if (id == "rtc") return std::make_shared<dev::Rtc>();
  if (id == "debug-exit") return std::make_shared<dev::DebugExit>(bed.control);
  if (id == "acpi-pm") return std::make_shared<dev::AcpiPm>(bed.control);
  if (id == "pvpanic") return std::make_shared<dev::PvPanic>(bed.control);
  if (id == "pci") return std::make_shared<dev::PciRoot>();
  if (id == "vmgenid") return std::make_shared<dev::VmGenId>(bed.memory, std::make_shared<fuzz_vm::FakeIrq>());
  if (id == "fw-cfg") {
    auto f = std::make_shared<dev::FwCfg>();
    if (!f->add_file(std::string(dev::kIdentityFileName), std::vector<uint8_t>(dev::kIdentitySize, 0))) die("fw_cfg file");
    return f;
  }
  std::shared_ptr<virtio::VirtioDevice> vdev;
  if (id.starts_with("virtio-blk")) {
    auto img = vmm::disk::open_image(*bed.loop, {.path = bed.disk, .read_only = true});
    if (!img) die("disk image", img.error().message());
    vdev = std::make_shared<virtio::Block>(std::move(*img), "fuzz");
  } else if (id.starts_with("virtio-net")) {
    vdev = std::make_shared<FakeNet>();
  } else {
    return nullptr;
  }
  auto t = virtio::PciTransport::create(vdev, std::string(id), bed.io, *bed.loop, bed.memory, Bed::kBars, 17);
  if (!t) die("transport", t.error().message());
  keep = vdev;
  return *t;
}

std::vector<uint8_t> saved(const dev::Snapshottable& d) {
  vmm::ByteWriter w;
  d.save(w);
  return w.take();
}

/// Drives `t` as Linux's virtio_pci_modern probe does, up to DRIVER_OK (for seeds).
void bring_up(virtio::PciTransport& t) {
  auto wr = [&](uint64_t off, auto v) {
    t.mmio_write(Bed::kBars + off, std::span(reinterpret_cast<const uint8_t*>(&v), sizeof v));
  };
  t.config_write(0x04, dev::kPciCommandMemory | dev::kPciCommandMaster, 0xf);
  const uint8_t ok = virtio::kStatusAcknowledge | virtio::kStatusDriver;
  wr(0x14, ok);
  wr(0x08, uint32_t{0});
  wr(0x0c, static_cast<uint32_t>(virtio::kFRingEventIdx));
  wr(0x08, uint32_t{1});
  wr(0x0c, uint32_t{1});  // VERSION_1
  wr(0x14, static_cast<uint8_t>(ok | virtio::kStatusFeaturesOk));
  for (uint8_t p = static_cast<uint8_t>(t.config_read(0x34)); p; p = static_cast<uint8_t>(t.config_read(p) >> 8)) {
    if ((t.config_read(p) & 0xff) == dev::kPciCapMsix) t.config_write(p, t.config_read(p) | (1u << 31), 0xf);
  }
  for (uint32_t v = 0; v < 2; ++v) {
    wr(virtio::PciTransport::kBar0Size + 16 * v, uint32_t{0xfee00000});
    wr(virtio::PciTransport::kBar0Size + 16 * v + 8, uint32_t{0x40 + v});
    wr(virtio::PciTransport::kBar0Size + 16 * v + 12, uint32_t{0});
  }
  wr(0x10, uint16_t{0});
  wr(0x16, uint16_t{0});
  wr(0x18, uint16_t{16});
  wr(0x1a, uint16_t{1});
  wr(0x20, uint64_t{0x10000});
  wr(0x28, uint64_t{0x11000});
  wr(0x30, uint64_t{0x12000});
  wr(0x1c, uint16_t{1});
  wr(0x14, static_cast<uint8_t>(ok | virtio::kStatusFeaturesOk | virtio::kStatusDriverOk));
  if (t.status() != (ok | virtio::kStatusFeaturesOk | virtio::kStatusDriverOk)) die("seed transport not brought up");
}

/// Restores `bytes` into a fresh device for `id` as clone::restore does (restore, then finish):
/// the saved bytes on success, nothing on a refusal (checked to be one line naming the section).
std::optional<std::vector<uint8_t>> restore_device(std::string_view id, std::span<const uint8_t> bytes) {
  std::shared_ptr<void> keep;
  auto d = make_device(id, keep);
  if (!d) return std::nullopt;
  const std::string context = fmt::format("{}: section {}", kFile, id);
  vmm::ByteReader r(bytes, context);
  auto res = d->restore(r);
  if (res) res = r.finish();
  static const bool verbose = std::getenv("VMM_STATE_FUZZ_VERBOSE") != nullptr;  // for reproducers
  if (verbose) std::fprintf(stderr, "%s: %s\n", context.c_str(), res ? "restored" : res.error().message().c_str());
  if (!res) {
    const std::string& m = res.error().message();
    if (!m.starts_with(context + ": ") || m.find('\n') != std::string::npos) die("bad device error message", m);
    return std::nullopt;
  }
  return saved(*d);
}

void fuzz_device(const vmm::clone::StateSection& s) {
  auto first = restore_device(s.id, s.data);
  if (!first) return;
  auto second = restore_device(s.id, *first);
  if (!second) die("a device refuses the state it saved after a restore", s.id);
  if (*second != *first) die("a device's saved state changes across a restore", s.id);
}

/// Called with every state file that parsed: the lookups agree with the section list, the machine
/// shape decodes or is refused cleanly, and each device section goes to its decoder, which must
/// refuse bad bytes with an error, never crash.
void fuzz_sections(const StateFile& state) {
  for (const auto& s : state.sections) {
    if (!vmm::clone::valid_section_id(s.id)) die("parsed an invalid section id", s.id);
    if (state.find(s.id) != &s) die("find() does not return the section", s.id);
    auto r = state.require(s.id, kFile);
    if (!r || r->data() != s.data.data() || r->size() != s.data.size()) die("require() disagrees", s.id);
  }
  if (state.find("no-such-section") || state.require("no-such-section", kFile)) die("found a missing section");

  auto shape = vmm::clone::read_shape(state, kFile);
  if (!shape) {
    const std::string& m = shape.error().message();
    if (!m.starts_with(std::string(kFile) + ": ") || m.find('\n') != std::string::npos) die("bad shape error message", m);
  } else if (shape->vcpus == 0 || shape->cpuid.size() != shape->vcpus || shape->memory % 4096 != 0) {
    die("read_shape accepted an impossible shape");
  }
  // KVM's section and the vCPUs': decoded and checked as restore() does before it hands them to KVM.
  auto one_line = [](const vmm::Error& e, const std::string& prefix, const char* what) {
    if (!e.message().starts_with(prefix) || e.message().find('\n') != std::string::npos) die(what, e.message());
  };
  if (auto k = vmm::clone::read_kernel_state(state, kFile); !k) {
    one_line(k.error(), std::string(kFile) + ": ", "bad kvm section error message");
  } else if (k->pic_master.chip_id != KVM_IRQCHIP_PIC_MASTER || k->pic_slave.chip_id != KVM_IRQCHIP_PIC_SLAVE ||
             k->ioapic.chip_id != KVM_IRQCHIP_IOAPIC || k->ioapic.chip.ioapic.base_address != 0xfec00000) {
    die("read_kernel_state accepted controllers out of place");
  }
  for (const auto& s : state.sections) {
    if (!s.id.starts_with("vcpu")) continue;
    const std::string context = fmt::format("{}: section {}", kFile, s.id);
    vmm::ByteReader r(s.data, context);
    auto v = vmm::clone::read_vcpu(r);
    if (v) {
      if (auto f = r.finish(); !f) one_line(f.error(), context + ": ", "bad vcpu finish message");
      if (v->xsave.size() < 4096) die("read_vcpu accepted a short XSAVE area");
    } else {
      one_line(v.error(), context + ": ", "bad vcpu error message");
    }
  }
  for (const auto& s : state.sections) fuzz_device(s);
}

void check(std::span<const uint8_t> bytes) {
  auto r = vmm::clone::parse_state_file(bytes, kFile);
  if (!r) {
    const std::string& m = r.error().message();
    if (!m.starts_with(std::string(kFile) + ": ") || m.find('\n') != std::string::npos) die("bad error message", m);
    return;
  }
  if (r->sections.size() > vmm::clone::kMaxSections) die("too many sections accepted");
  fuzz_sections(*r);
  const std::vector<uint8_t> encoded = vmm::clone::encode_state_file(*r);
  auto again = vmm::clone::parse_state_file(encoded, kFile);
  if (!again) die("re-encoded file does not parse", again.error().message());
  if (!same(*r, *again)) die("re-encoded file parses to something else");
  if (vmm::clone::encode_state_file(*again) != encoded) die("encoding is not stable");
}

void make_seeds(const fs::path& dir) {
  fs::create_directories(dir);
  const auto bytes = [](size_t n, uint8_t seed) {
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 31);
    return v;
  };
  std::vector<std::pair<std::string, StateFile>> shapes;
  shapes.push_back({"empty", StateFile{}});
  shapes.push_back({"one", StateFile{.sections = {{"vcpu0", bytes(1024, 1)}}}});
  shapes.push_back({"mixed", StateFile{.sections = {{"vcpu0", bytes(40, 2)},
                                                    {"empty", {}},
                                                    {"serial0", bytes(13, 3)},
                                                    {"virtio-blk.disk0", bytes(7, 4)}}}});
  shapes.push_back({"all-empty", StateFile{.sections = {{"a", {}}, {"b", {}}, {"c", {}}}}});
  shapes.push_back({"long-id", StateFile{.sections = {{std::string(63, 'z'), bytes(9, 5)},
                                                      {"0123456789.abcdefghijklmnopqrstuvwxyz_-", bytes(64, 6)}}}});
  // Device sections as the devices save them, and a machine shape, under the ids clone::capture uses.
  {
    StateFile devs;
    for (const char* id : {"dev.serial0", "dev.i8042", "dev.rtc", "dev.debug-exit", "dev.acpi-pm", "dev.pvpanic",
                           "dev.pci", "dev.fw-cfg", "dev.vmgenid", "dev.virtio-blk0", "dev.virtio-net0"}) {
      std::shared_ptr<void> keep;
      auto d = make_device(id, keep);
      if (!d) die("no device for a seed", id);
      devs.sections.push_back({id, saved(*d)});
    }
    vmm::ByteWriter m;
    m.put(uint32_t{1});
    m.put(uint64_t{256} << 20);
    m.put(uint8_t{0});
    m.put_string("GenuineIntel");
    m.put(uint32_t{0x906ea});
    m.put(uint32_t{2400000});
    m.put(uint64_t{4096});
    devs.sections.push_back({"machine", m.take()});
    vmm::ByteWriter c;
    std::vector<kvm_cpuid_entry2> cpuid(2);
    cpuid[0].function = 0;
    cpuid[0].eax = 0xd;
    cpuid[1].function = 1;
    cpuid[1].eax = 0x906ea;
    c.put_vector(cpuid);
    devs.sections.push_back({"cpuid", c.take()});
    // KVM's section and a vCPU's, as capture() writes them (zeroed registers, a 4 KiB XSAVE area).
    vmm::VmKernelState k;
    k.pic_master.chip_id = KVM_IRQCHIP_PIC_MASTER;
    k.pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
    k.ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
    k.ioapic.chip.ioapic.base_address = 0xfec00000;
    vmm::ByteWriter kw;
    kw.put_raw(k);
    devs.sections.push_back({"kvm", kw.take()});
    vmm::ByteWriter vw;
    vw.put_raw(kvm_regs{});
    vw.put_raw(kvm_sregs{});
    vw.put_raw(kvm_fpu{});
    vw.put_blob(std::vector<uint8_t>(4096));
    vw.put_raw(kvm_xcrs{});
    vw.put_raw(kvm_lapic_state{});
    vw.put_raw(kvm_vcpu_events{});
    vw.put_raw(kvm_mp_state{});
    vw.put_raw(kvm_debugregs{});
    vw.put_vector(std::vector<kvm_msr_entry>(3));
    vw.put(uint32_t{2400000});
    devs.sections.push_back({"vcpu0", vw.take()});
    shapes.push_back({"devices", std::move(devs)});
  }
  // virtio transports a driver brought up to DRIVER_OK: MSI-X on, queue 0 ready with its rings in RAM.
  {
    StateFile driven;
    for (const char* id : {"dev.virtio-blk0", "dev.virtio-net0"}) {
      std::shared_ptr<void> keep;
      auto d = make_device(id, keep);
      auto* t = dynamic_cast<virtio::PciTransport*>(d.get());
      if (!t) die("no transport for a seed", id);
      bring_up(*t);
      driven.sections.push_back({id, saved(*t)});
    }
    shapes.push_back({"driven", std::move(driven)});
  }
  StateFile many;
  for (int i = 0; i < 64; ++i) many.sections.push_back({"s" + std::to_string(i), bytes(static_cast<size_t>(i % 5), 7)});
  shapes.push_back({"many", std::move(many)});
  for (const auto& [name, state] : shapes) {
    const auto b = vmm::clone::encode_state_file(state);
    std::ofstream(dir / (name + ".state"), std::ios::binary).write(reinterpret_cast<const char*>(b.data()),
                                                                  static_cast<std::streamsize>(b.size()));
  }
  std::printf("%zu seeds in %s\n", shapes.size(), dir.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* seeds = std::getenv("VMM_STATE_FUZZ_MAKE_SEEDS")) {
    make_seeds(seeds);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> input(data, size);
  check(input);
  // The same bytes with the length field and checksum made consistent.
  if (size >= vmm::clone::kStateHeaderSize + 4) {
    std::vector<uint8_t> fixed(input.begin(), input.end());
    const uint64_t length = size;
    std::memcpy(fixed.data() + 16, &length, sizeof length);
    const uint32_t crc = vmm::crc32c(0, std::span(fixed).first(size - 4));
    std::memcpy(fixed.data() + size - 4, &crc, sizeof crc);
    check(fixed);
  }
  return 0;
}
