// Size parsing, CPU templates, x86 boot register setup and exit statuses.
#include <doctest/doctest.h>

#include <cstring>

#include "vmm/cpuid.hpp"
#include "vmm/base/layout.hpp"
#include "vmm/base/size_parse.hpp"
#include "vmm/x86_boot.hpp"

TEST_CASE("cli: parse_size units and errors") {
  CHECK(*vmm::parse_size("256M") == 256ull << 20);
  CHECK(*vmm::parse_size("256") == 256ull << 20);
  CHECK(*vmm::parse_size("1G") == 1ull << 30);
  CHECK(*vmm::parse_size("2gib") == 2ull << 30);
  CHECK(*vmm::parse_size("512K") == 512ull << 10);
  CHECK(*vmm::parse_size("0") == 0);
  CHECK_FALSE(vmm::parse_size(""));
  CHECK_FALSE(vmm::parse_size("M"));
  CHECK_FALSE(vmm::parse_size("-1M"));
  CHECK_FALSE(vmm::parse_size("12Q"));
  CHECK_FALSE(vmm::parse_size("99999999999999999999"));
  CHECK_FALSE(vmm::parse_size("17179869184T"));  // overflows 64 bits after the shift
}

TEST_CASE("cpuid: template names") {
  CHECK(*vmm::parse_cpu_template("host") == vmm::CpuTemplate::Host);
  CHECK(*vmm::parse_cpu_template("baseline") == vmm::CpuTemplate::Baseline);
  CHECK_FALSE(vmm::parse_cpu_template("skylake"));
}

TEST_CASE("cpuid: per-vCPU APIC ids and the baseline template") {
  vmm::CpuidEntries supported(3);
  supported[0].function = 1;
  supported[0].ecx = (1u << 13) | (1u << 26) | (1u << 0);
  supported[0].ebx = 0xff00ffff;
  supported[1].function = 0xb;
  supported[1].index = 1;
  supported[2].function = 0xd;
  auto host = vmm::make_cpuid(supported, vmm::CpuTemplate::Host, 3, 4);
  REQUIRE(host.size() == 3);
  CHECK((host[0].ebx >> 24) == 3);
  CHECK(((host[0].ebx >> 16) & 0xff) == 4);
  CHECK((host[0].ecx & (1u << 31)) != 0);  // hypervisor bit
  CHECK((host[0].ecx & (1u << 13)) != 0);
  CHECK(host[1].edx == 3);
  CHECK(host[1].ebx == 4);
  auto base = vmm::make_cpuid(supported, vmm::CpuTemplate::Baseline, 0, 1);
  REQUIRE(base.size() == 2);  // leaf 0xd dropped
  CHECK((base[0].ecx & (1u << 13)) == 0);  // CX16 hidden
  CHECK((base[0].ecx & (1u << 26)) == 0);  // XSAVE hidden
  CHECK((base[0].ecx & 1u) != 0);          // SSE3 kept
}

// No hardware virtualization (a snapshot carries no nested state) and no invariant TSC (a restored
// guest's clock is stepped through kvmclock), whatever the template; the rest of those leaves kept.
TEST_CASE("cpuid: VMX, SVM and invariant TSC are withheld") {
  vmm::CpuidEntries supported(3);
  supported[0].function = 1;
  supported[0].ecx = 0x7fffffffu;
  supported[1].function = 0x80000001;
  supported[1].ecx = 0xffffffffu;
  supported[2].function = 0x80000007;
  supported[2].edx = 0xffffffffu;
  for (auto t : {vmm::CpuTemplate::Host, vmm::CpuTemplate::Baseline}) {
    auto c = vmm::make_cpuid(supported, t, 0, 1);
    REQUIRE(c.size() == 3);
    CHECK((c[0].ecx & (1u << 5)) == 0);
    CHECK((c[0].ecx & 1u) != 0);
    CHECK(c[1].ecx == ~(1u << 2));
    CHECK(c[2].edx == ~(1u << 8));
  }
  CHECK(vmm::withheld_cpuid_bits(1, 0, 2) == (1u << 5));
  CHECK(vmm::withheld_cpuid_bits(1, 0, 3) == 0);
  CHECK(vmm::withheld_cpuid_bits(0x80000007, 0, 3) == (1u << 8));
}

// Leaf 4's EAX[31:26] (cores per package - 1) saturates at 63: its six bits wrapped, 65 vCPUs read as 1.
TEST_CASE("cpuid: leaf 4's core count saturates rather than wraps") {
  vmm::CpuidEntries supported(1);
  supported[0].function = 4;
  supported[0].eax = 0x121;
  CHECK((vmm::make_cpuid(supported, vmm::CpuTemplate::Host, 0, 4)[0].eax >> 26) == 3);
  CHECK((vmm::make_cpuid(supported, vmm::CpuTemplate::Host, 0, 64)[0].eax >> 26) == 63);
  CHECK((vmm::make_cpuid(supported, vmm::CpuTemplate::Host, 0, 65)[0].eax >> 26) == 63);
  CHECK((vmm::make_cpuid(supported, vmm::CpuTemplate::Host, 0, 200)[0].eax >> 26) == 63);
  CHECK((vmm::make_cpuid(supported, vmm::CpuTemplate::Host, 0, 65)[0].eax & 0x03ffffffu) == 0x121);
}

// Leaf 7's EDX: the baseline hides AVX-512's and AMX's bits there, not the speculation controls
// beside them (a guest without IBPB, STIBP, SSBD or ARCH_CAPABILITIES mitigates as if exposed to all).
TEST_CASE("cpuid: the baseline template keeps leaf 7's speculation controls") {
  vmm::CpuidEntries supported(2);
  supported[0].function = 7;
  supported[0].edx = 0xffffffffu;
  supported[1].function = 7;
  supported[1].index = 1;
  supported[1].eax = 0xffffffffu;
  auto base = vmm::make_cpuid(supported, vmm::CpuTemplate::Baseline, 0, 1);
  REQUIRE(base.size() == 2);
  for (unsigned b : {10u, 26u, 27u, 28u, 29u, 31u}) {
    CAPTURE(b);
    CHECK((base[0].edx & (1u << b)) != 0);
  }
  for (unsigned b : {2u, 3u, 8u, 22u, 23u, 24u, 25u}) {
    CAPTURE(b);
    CHECK((base[0].edx & (1u << b)) == 0);
  }
  CHECK((base[1].eax & (3u << 4)) == 0);  // AVX-VNNI, AVX512_BF16
  CHECK((base[1].eax & 1u) != 0);
  auto host = vmm::make_cpuid(supported, vmm::CpuTemplate::Host, 0, 1);
  CHECK(host[0].edx == 0xffffffffu);
}

TEST_CASE("cpuid: the host CPU's APIC ids are dropped from the supported table, and nothing else") {
  auto entry = [](uint32_t function, uint32_t index, uint32_t eax, uint32_t ebx, uint32_t ecx, uint32_t edx) {
    kvm_cpuid_entry2 e{};
    e.function = function, e.index = index, e.eax = eax, e.ebx = ebx, e.ecx = ecx, e.edx = edx;
    return e;
  };
  vmm::CpuidEntries supported{entry(1, 0, 0xb00f21, 0x01020800, 0x81202000, 0x078bfbff), entry(0xb, 0, 1, 2, 0x100, 1),
                              entry(0x1f, 1, 1, 2, 0x201, 7), entry(0x8000001e, 0, 5, 6, 7, 8), entry(0xd, 1, 0xf, 0x18, 1, 2)};
  vmm::CpuidEntries other = supported;  // as another host CPU answers: its APIC id 0
  other[0].ebx = 0x00020800;
  other[1].edx = 0;
  other[2].edx = 0;
  vmm::drop_host_apic_ids(supported);
  vmm::drop_host_apic_ids(other);
  CHECK(supported[0].ebx == 0x00020800);
  CHECK(supported[0].eax == 0xb00f21);
  CHECK(supported[0].ecx == 0x81202000);
  CHECK(supported[1].edx == 0);
  CHECK(supported[1].eax == 1);
  CHECK(supported[2].edx == 0);
  CHECK(supported[3].eax == 5);
  CHECK(supported[3].edx == 8);
  CHECK(supported[4].edx == 2);
  CHECK(std::memcmp(supported.data(), other.data(), supported.size() * sizeof(supported[0])) == 0);
}

TEST_CASE("x86: segment decoding and boot registers") {
  auto code64 = vmm::x86::segment_from_descriptor(0x8, 0x00af9b000000ffffull);
  CHECK(code64.l == 1);
  CHECK(code64.db == 0);
  CHECK(code64.limit == 0xffffffffu);
  CHECK(code64.type == 0xb);
  CHECK(code64.present == 1);
  auto data = vmm::x86::segment_from_descriptor(0x10, 0x00cf93000000ffffull);
  CHECK(data.db == 1);
  CHECK(data.type == 0x3);

  kvm_sregs base{};
  auto pvh = vmm::x86::boot_registers({.mode = vmm::boot::EntryMode::Pvh32, .entry = 0x100123, .boot_info = 0x6000}, base);
  CHECK(pvh.regs.rip == 0x100123);
  CHECK(pvh.regs.rbx == 0x6000);
  CHECK(pvh.sregs.cr0 == 0x11);
  CHECK(pvh.sregs.efer == 0);
  CHECK(pvh.sregs.cs.db == 1);
  CHECK(pvh.sregs.cs.l == 0);
  auto lin = vmm::x86::boot_registers({.mode = vmm::boot::EntryMode::Linux64, .entry = 0x1000200, .boot_info = 0x7000}, base);
  CHECK(lin.regs.rsi == 0x7000);
  CHECK(lin.sregs.cr3 == vmm::layout::kPml4);
  CHECK((lin.sregs.efer & 0x500) == 0x500);
  CHECK(lin.sregs.cs.l == 1);
  CHECK((lin.sregs.cr0 & 0x80000001u) == 0x80000001u);
}

TEST_CASE("x86: identity page tables map the first 4 GiB with 2 MiB pages") {
  auto mem = vmm::GuestMemory::anonymous(1 << 20);
  REQUIRE(mem);
  REQUIRE(vmm::x86::write_identity_page_tables(*mem));
  CHECK(*mem->read_obj<uint64_t>(vmm::Gpa(vmm::layout::kPml4)) == (vmm::layout::kPdpt | 3));
  CHECK(*mem->read_obj<uint64_t>(vmm::Gpa(vmm::layout::kPdpt + 3 * 8)) == ((vmm::layout::kPd + 0x3000) | 3));
  // Last 2 MiB page of the 4th GiB.
  CHECK(*mem->read_obj<uint64_t>(vmm::Gpa(vmm::layout::kPd + 0x3000 + 511 * 8)) == (((4ull << 30) - (2 << 20)) | 0x83));
  CHECK(*mem->read_obj<uint64_t>(vmm::Gpa(vmm::layout::kPd + 8)) == ((2ull << 20) | 0x83));
}

#include "vmm/exit_status.hpp"

TEST_CASE("exit status: every way a VM stops has its status, printed or not") {
  using vmm::devices::StopReason;
  using vmm::StopInfo;
  struct Case {
    StopInfo stop;
    int status;
  };
  const Case cases[] = {
      {StopInfo{.reason = StopReason::PowerOff, .status = 0, .message = {}}, vmm::exit_code::kOk},
      {StopInfo{.reason = StopReason::Reset, .status = 0, .message = {}}, vmm::exit_code::kOk},
      {StopInfo{.reason = StopReason::Panic, .status = 1, .message = {}}, vmm::exit_code::kGuestPanic},
      {StopInfo{.reason = StopReason::DebugExit, .status = 0x31, .message = {}}, 0x63},
      {StopInfo{.reason = StopReason::TripleFault, .status = 0, .message = "triple fault"}, vmm::exit_code::kTripleFault},
      {StopInfo{.reason = StopReason::Signal, .status = 15, .message = {}}, vmm::exit_code::kSignal},
      {StopInfo{.reason = StopReason::Error, .status = 0, .message = "cannot start the I/O thread"}, vmm::exit_code::kVmmError},
  };
  for (const auto& c : cases) {
    CAPTURE(static_cast<int>(c.stop.reason));
    CHECK(vmm::exit_status_of(c.stop) == c.status);
    CHECK(vmm::stop_status(c.stop) == c.status);
    CHECK_FALSE(vmm::describe_stop(c.stop).empty());
  }
  CHECK(vmm::describe_stop(cases[6].stop) == "cannot start the I/O thread");
  CHECK(vmm::describe_stop(cases[3].stop) == "it exited through the debug port with value 0x31");
  // Odd statuses are the guest's: (value << 1) | 1, in eight bits.
  CHECK(vmm::exit_code::debug_exit(0) == 1);
  CHECK(vmm::exit_code::debug_exit(0x80) == 1);
}
