// A whole Machine's snapshot on /dev/kvm (skipped without it): capture, the state file, restore
// into a second machine built from the shape, and the refusals of clone::restore and check_cpu.
// (The devices' state decoders against malformed input: test_clone_snapshot.cpp.)
#include <doctest/doctest.h>

#include <array>
#include <chrono>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "clone/snapshot.hpp"
#include "devices/console.hpp"
#include "disk/image.hpp"
#include "kvm_helpers.hpp"
#include "test_boot_helpers.hpp"
#include "vmm/machine.hpp"

namespace {

using boot_test::Bytes;
using boot_test::TempFile;
using vmm::Gpa;
using vmm::GuestMemory;
using namespace vmm::devices;
using namespace std::chrono_literals;

bool contains(const std::string& text, std::string_view part) { return text.find(part) != std::string::npos; }

}  // namespace

namespace {

using vmm::test::kvm_missing;
using vmm::test::open_kvm;

constexpr uint64_t kCodeAddr = 0x1000;
constexpr uint64_t kCounterAddr = 0x2000;
constexpr uint64_t kMachineRam = 4 << 20;
// loop: inc word [0x2000] ; inc bx ; jmp loop (real mode, CS = 0)
constexpr std::array<uint8_t, 7> kCounterCode{0xff, 0x06, 0x00, 0x20, 0x43, 0xeb, 0xf9};

struct MachineRig {
  TempFile disk{Bytes(1 << 20, 0x11), "vmm-snap-disk"};
  std::unique_ptr<vmm::Machine> m;

  MachineRig(const vmm::Kvm& kvm, GuestMemory mem, const vmm::VmConfig& config) {
    auto loop = vmm::EventLoop::create();
    REQUIRE(loop);
    auto img = vmm::disk::open_image(**loop, {.path = disk.path(), .read_only = true});
    REQUIRE(img);
    auto console = Console::open(ConsoleSpec{.kind = ConsoleSpec::Kind::None, .path = {}});
    REQUIRE(console);
    vmm::PlatformConfig pc;
    pc.console = std::move(*console);
    pc.disks.push_back(vmm::DiskAttachment{.image = std::move(*img), .id = "d0"});
    auto made = vmm::Machine::create(kvm, std::move(mem), config, std::move(pc), std::move(*loop));
    REQUIRE_MESSAGE(made, (made ? "" : made.error().message()));
    m = std::move(*made);
  }
};

// A machine that cannot be built lets its disks go before the event loop they are registered on
// (the configuration outlived the loop: a use after free, reported by ASan on a host with KVM).
TEST_CASE("snapshot: a running machine's parts, when it cannot be built, go before its event loop") {
  if (kvm_missing()) return;
  vmm::Kvm kvm = open_kvm();
  auto mem = GuestMemory::anonymous(kMachineRam);
  REQUIRE(mem);
  TempFile disk{Bytes(1 << 20, 0x11), "vmm-snap-disk"};
  auto loop = vmm::EventLoop::create();
  REQUIRE(loop);
  auto img = vmm::disk::open_image(**loop, {.path = disk.path(), .read_only = false});
  REQUIRE(img);
  vmm::PlatformConfig pc;
  pc.disks.push_back(vmm::DiskAttachment{.image = std::move(*img), .id = "d0"});
  auto made = vmm::Machine::create(kvm, std::move(*mem), vmm::VmConfig{.vcpus = 0, .cpu_template = vmm::CpuTemplate::Host, .cpuid = {}}, std::move(pc), std::move(*loop));
  REQUIRE_FALSE(made);
  CHECK(made.error().message().find("vCPUs requested") != std::string::npos);
}

void enter_real_mode(vmm::Vcpu& vcpu) { vmm::test::enter_real_mode(vcpu, kCodeAddr); }

/// Waits (up to 10 s: a loaded or sanitized host can be slow to start a vCPU) until the guest's
/// counter at kCounterAddr is no longer `from`.
void wait_for_count(const GuestMemory& mem, uint16_t from) {
  auto word = mem.slice(Gpa(kCounterAddr), 2);
  REQUIRE(word);
  const auto* counter = reinterpret_cast<const volatile uint16_t*>(word->data());
  for (int i = 0; i < 1000 && *counter == from; ++i) std::this_thread::sleep_for(10ms);
  std::this_thread::sleep_for(10ms);
}

vmm::clone::StateFile without(vmm::clone::StateFile s, std::string_view id) {
  std::erase_if(s.sections, [&](const auto& sec) { return sec.id == id; });
  return s;
}
std::vector<uint8_t>& section(vmm::clone::StateFile& s, std::string_view id) {
  for (auto& sec : s.sections) {
    if (sec.id == id) return sec.data;
  }
  FAIL("no section " << id);
  static std::vector<uint8_t> none;
  return none;
}

}  // namespace

TEST_CASE("snapshot: a running machine captured, written, read back and restored into another") {
  if (kvm_missing()) return;
  vmm::Kvm kvm = open_kvm();

  // The first machine counts in BX and at 0x2000; it runs, is quiesced and captured.
  auto mem = GuestMemory::anonymous(kMachineRam);
  REQUIRE(mem);
  REQUIRE(mem->write(Gpa(kCodeAddr), kCounterCode));
  MachineRig a(kvm, std::move(*mem), vmm::VmConfig{.vcpus = 1, .cpu_template = vmm::CpuTemplate::Host, .cpuid = {}});
  enter_real_mode(a.m->vm().vcpu(0));
  std::thread runner([&] { (void)a.m->run(); });
  wait_for_count(a.m->vm().memory(), 0);
  auto q = a.m->quiesce();
  vmm::Result<vmm::clone::StateFile> captured = q ? vmm::clone::capture(*a.m, vmm::CpuTemplate::Host)
                                                   : std::unexpected(q.error());
  auto regs_a = a.m->vm().vcpu(0).get_regs();
  const uint16_t counter_a = *a.m->vm().memory().read_obj<uint16_t>(Gpa(kCounterAddr));
  a.m->vm().request_stop(StopReason::PowerOff);
  runner.join();
  REQUIRE_MESSAGE(captured, (captured ? "" : captured.error().message()));
  REQUIRE(regs_a);
  CHECK(regs_a->rbx != 0);
  CHECK(counter_a != 0);
  CHECK(regs_a->rip >= kCodeAddr);
  CHECK(regs_a->rip < kCodeAddr + kCounterCode.size());

  // Every section the platform has, under its id.
  for (const char* id : {"machine", "cpuid", "kvm", "vcpu0", "dev.serial0", "dev.i8042", "dev.rtc", "dev.debug-exit",
                         "dev.acpi-pm", "dev.pvpanic", "dev.pci", "dev.fw-cfg", "dev.vmgenid", "dev.virtio-blk0"}) {
    CHECK_MESSAGE(captured->find(id) != nullptr, id);
  }
  const std::vector<uint8_t> file = vmm::clone::encode_state_file(*captured);
  auto state = vmm::clone::parse_state_file(file, "t.state");
  REQUIRE_MESSAGE(state, (state ? "" : state.error().message()));
  auto shape = vmm::clone::read_shape(*state, "t.state");
  REQUIRE_MESSAGE(shape, (shape ? "" : shape.error().message()));
  CHECK(shape->vcpus == 1);
  CHECK(shape->memory == kMachineRam);
  REQUIRE(shape->cpuid.size() == 1);

  // A machine built from the shape, with a copy of the memory.
  auto build = [&]() {
    auto m2 = GuestMemory::anonymous(shape->memory);
    REQUIRE(m2);
    auto src = a.m->vm().memory().slice(Gpa(0), kMachineRam);
    REQUIRE(src);
    REQUIRE(m2->write(Gpa(0), *src));
    return std::make_unique<MachineRig>(kvm, std::move(*m2),
                                        vmm::VmConfig{.vcpus = shape->vcpus, .cpu_template = shape->cpu_template, .cpuid = shape->cpuid});
  };
  auto b = build();
  auto cpu_ok = vmm::clone::check_cpu(kvm, *shape, "t.state");
  REQUIRE_MESSAGE(cpu_ok, (cpu_ok ? "" : cpu_ok.error().message()));
  auto restored = vmm::clone::restore(*b->m, *state, "t.state", vmm::clone::Timers::AsSaved);
  REQUIRE_MESSAGE(restored, (restored ? "" : restored.error().message()));
  auto regs_b = b->m->vm().vcpu(0).get_regs();
  REQUIRE(regs_b);
  CHECK(regs_b->rbx == regs_a->rbx);
  CHECK(regs_b->rip == regs_a->rip);
  CHECK(regs_b->rflags == regs_a->rflags);
  // Captured again, the restored machine gives the same device and vCPU register sections.
  {
    auto again = vmm::clone::capture(*b->m, vmm::CpuTemplate::Host);
    REQUIRE(again);
    for (const auto& s : state->sections) {
      if (!s.id.starts_with("dev.") && s.id != "machine" && s.id != "cpuid") continue;
      const auto* t = again->find(s.id);
      REQUIRE_MESSAGE(t != nullptr, s.id);
      CHECK_MESSAGE(t->data == s.data, s.id);
    }
    const auto* v = again->find("vcpu0");
    REQUIRE(v != nullptr);
    REQUIRE(v->data.size() >= sizeof(kvm_regs));
    kvm_regs saved_regs, again_regs;
    std::memcpy(&saved_regs, state->find("vcpu0")->data.data(), sizeof saved_regs);
    std::memcpy(&again_regs, v->data.data(), sizeof again_regs);
    CHECK(std::memcmp(&saved_regs, &again_regs, sizeof saved_regs) == 0);
  }
  // And it counts on from where the first one stopped.
  {
    std::thread r2([&] { (void)b->m->run(); });
    wait_for_count(b->m->vm().memory(), counter_a);
    b->m->vm().pause();
    auto regs = b->m->vm().vcpu(0).get_regs();
    b->m->vm().resume();
    b->m->vm().request_stop(StopReason::PowerOff);
    r2.join();
    REQUIRE(regs);
    CHECK(static_cast<uint16_t>(regs->rbx - regs_a->rbx) != 0);
  }

  // ---- What clone::restore refuses (each into a fresh machine) ----
  auto refused = [&](const vmm::clone::StateFile& s, std::initializer_list<std::string_view> parts) {
    auto fresh = build();
    auto r = vmm::clone::restore(*fresh->m, s, "t.state", vmm::clone::Timers::AsSaved);
    REQUIRE_FALSE_MESSAGE(r, "accepted a bad state: " << *parts.begin());
    for (auto p : parts) CHECK_MESSAGE(contains(r.error().message(), p), r.error().message());
  };
  refused(without(*state, "dev.rtc"), {"t.state: section 'dev.rtc' is missing"});
  refused(without(*state, "vcpu0"), {"vcpu0", "missing"});
  refused(without(*state, "kvm"), {"kvm", "missing"});
  {
    auto s = *state;
    s.sections.push_back({.id = "dev.bogus", .data = {}});
    refused(s, {"section 'dev.bogus' belongs to no part of this machine"});
    s = *state;
    s.sections.push_back({.id = "vcpu1", .data = section(s, "vcpu0")});
    refused(s, {"section 'vcpu1' belongs to no part"});
  }
  {
    auto s = *state;
    section(s, "vcpu0").pop_back();
    refused(s, {"t.state: section vcpu0: tsc_khz: truncated"});
    s = *state;
    section(s, "vcpu0").push_back(0);
    refused(s, {"t.state: section vcpu0: 1 unexpected bytes"});
    s = *state;
    section(s, "kvm").pop_back();
    refused(s, {"t.state: section kvm: kvm: truncated"});
    s = *state;
    section(s, "dev.serial0").push_back(0);
    refused(s, {"t.state: section dev.serial0: 1 unexpected bytes"});
    s = *state;
    section(s, "dev.rtc")[0] = 200;
    refused(s, {"t.state: section dev.rtc: index: 200 is past the CMOS RAM"});
  }
  {
    // A machine section that does not describe this machine: 0 vCPUs, 2 vCPUs, another RAM size.
    auto s = *state;
    auto& machine = section(s, "machine");
    const uint32_t zero = 0, two = 2;
    std::memcpy(machine.data(), &zero, 4);
    refused(s, {"t.state: section machine: vcpus: 0 is out of range"});
    std::memcpy(machine.data(), &two, 4);
    refused(s, {"t.state: section cpuid: vcpu 1: truncated"});
    auto& cpuid = section(s, "cpuid");
    const std::vector<uint8_t> one = cpuid;
    cpuid.insert(cpuid.end(), one.begin(), one.end());  // a table for the second vCPU
    refused(s, {"t.state: section machine: vcpus: 2 saved, this machine has 1"});
    cpuid = one;
    std::memcpy(machine.data(), &state->find("machine")->data[0], 4);
    const uint64_t other_ram = kMachineRam * 2;
    std::memcpy(machine.data() + 4, &other_ram, 8);
    refused(s, {"t.state: section machine: memory:"});
    s = without(*state, "machine");
    refused(s, {"machine", "missing"});
    // A vendor string with a line break and a terminal escape (vcpus u32, memory u64, cpu_template
    // u8, then the vendor's u32 length and its 12 bytes): refused, and the message stays one line.
    s = *state;
    auto& shaped = section(s, "machine");
    REQUIRE(shaped.size() >= 29);
    CHECK(std::string(shaped.begin() + 17, shaped.begin() + 29) == shape->vendor);
    shaped[17] = '\n';
    shaped[18] = 0x1b;
    refused(s, {"t.state: section machine: vendor: '", "' is not a CPU vendor string"});
  }

  // ---- What check_cpu refuses ----
  auto cpu_refused = [&](const vmm::clone::MachineShape& sh, std::string_view part) {
    auto r = vmm::clone::check_cpu(kvm, sh, "t.state");
    REQUIRE_FALSE_MESSAGE(r, "check_cpu accepted: " << part);
    CHECK_MESSAGE(contains(r.error().message(), part), r.error().message());
  };
  auto leaf = [](vmm::CpuidEntries& table, uint32_t function) -> kvm_cpuid_entry2& {
    for (auto& e : table) {
      if (e.function == function && e.index == 0) return e;
    }
    FAIL("no CPUID leaf " << function);
    throw std::logic_error("unreachable");
  };
  {
    auto sh = *shape;
    sh.vendor = sh.vendor == "GenuineIntel" ? "AuthenticAMD" : "GenuineIntel";
    cpu_refused(sh, "t.state: made on a");
    sh = *shape;
    sh.signature ^= 0x10;
    cpu_refused(sh, "family/model/stepping");
    sh = *shape;
    sh.xsave_size += 64;
    cpu_refused(sh, "XSAVE area");
    // A feature bit this host lacks: leaf 7.0 ECX with every bit set (some are reserved).
    sh = *shape;
    leaf(sh.cpuid[0], 7).ecx = 0xffffffff;
    cpu_refused(sh, "vCPU 0 saw CPUID leaf 0x7.0 ecx bits");
    sh = *shape;
    leaf(sh.cpuid[0], 0x80000001).edx = 0xffffffff;
    cpu_refused(sh, "CPUID leaf 0x80000001.0 edx bits");
    // Every vCPU's table is set as saved, so every one is checked, not only the first.
    sh = *shape;
    sh.vcpus = 2;
    sh.cpuid.push_back(sh.cpuid[0]);
    CHECK(vmm::clone::check_cpu(kvm, sh, "t.state"));
    leaf(sh.cpuid[1], 7).ecx = 0xffffffff;
    cpu_refused(sh, "vCPU 1 saw CPUID leaf 0x7.0 ecx bits");
    // Address sizes (leaf 0x80000008 EAX) and its feature bits (EBX), which were not checked at all.
    sh = *shape;
    leaf(sh.cpuid[0], 0x80000008).eax += 1;
    cpu_refused(sh, "physical address bits, this host has");
    sh = *shape;
    leaf(sh.cpuid[0], 0x80000008).eax ^= 0x0900;  // 48 <-> 57 ... or anything else but the host's
    cpu_refused(sh, "virtual address bits, this host has");
    sh = *shape;
    leaf(sh.cpuid[0], 0x80000008).ebx = 0xffffffff;
    cpu_refused(sh, "CPUID leaf 0x80000008.0 ebx bits");
    // More vCPUs than this host's KVM runs in one VM (KVM_CREATE_VCPU would fail half way).
    sh = *shape;
    sh.vcpus = kvm.max_vcpus() + 1;
    sh.cpuid.assign(sh.vcpus, sh.cpuid[0]);
    cpu_refused(sh, "this host's KVM runs at most");
    // RAM beyond this host's physical addresses (1 TiB + the hole: at most 40 bits was never a host).
    sh = *shape;
    const uint32_t host_phys = leaf(sh.cpuid[0], 0x80000008).eax & 0xff;
    sh.memory = 1ull << 40;
    if (host_phys <= 40) {
      cpu_refused(sh, "physical address bits");
    } else {
      CHECK(vmm::clone::check_cpu(kvm, sh, "t.state"));
    }
  }
}
