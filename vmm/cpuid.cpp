#include "vmm/cpuid.hpp"

#include <bit>

namespace vmm {

namespace {

constexpr uint32_t bit(unsigned n) { return 1u << n; }

// Leaf 1 ECX (Intel SDM vol. 2A, CPUID, table 3-10).
constexpr uint32_t kLeaf1EcxFma = bit(12);
constexpr uint32_t kLeaf1EcxCx16 = bit(13);
constexpr uint32_t kLeaf1EcxXsave = bit(26);
constexpr uint32_t kLeaf1EcxOsxsave = bit(27);
constexpr uint32_t kLeaf1EcxAvx = bit(28);
constexpr uint32_t kLeaf1EcxF16c = bit(29);
constexpr uint32_t kLeaf1EcxHypervisor = bit(31);
constexpr uint32_t kLeaf1EdxHtt = bit(28);
constexpr uint32_t kLeaf1EcxVmx = bit(5);
constexpr uint32_t kExt1EcxSvm = bit(2);            // leaf 0x80000001
constexpr uint32_t kExt7EdxInvariantTsc = bit(8);   // leaf 0x80000007
// Leaf 7 subleaf 0 EBX: AVX2 (5), AVX-512 F/DQ (16,17), IFMA (21), PF/ER/CD (26-28), BW/VL (30,31).
constexpr uint32_t kLeaf7EbxAvxFamily = bit(5) | bit(16) | bit(17) | bit(21) | bit(26) | bit(27) | bit(28) |
                                        bit(30) | bit(31);
// Leaf 7 subleaf 0 ECX: AVX512_VBMI (1), VBMI2 (6), VAES(9), VPCLMULQDQ(10), VNNI (11), BITALG (12), VPOPCNTDQ (14).
constexpr uint32_t kLeaf7EcxAvxFamily = bit(1) | bit(6) | bit(9) | bit(10) | bit(11) | bit(12) | bit(14);
// Leaf 7 subleaf 0 EDX: AVX512_4VNNIW (2), 4FMAPS (3), VP2INTERSECT (8), AMX-BF16 (22), AVX512_FP16
// (23), AMX-TILE (24), AMX-INT8 (25). Only these: the rest of EDX passes, the speculation controls
// among it (MD_CLEAR, IBRS/IBPB, STIBP, L1D_FLUSH, ARCH_CAPABILITIES, SSBD), which a guest without
// them takes itself to be exposed to every CPU bug and mitigates worse (it was all cleared).
constexpr uint32_t kLeaf7EdxStateHeavy = bit(2) | bit(3) | bit(8) | bit(22) | bit(23) | bit(24) | bit(25);
// Leaf 7 subleaf 1 EAX: AVX-VNNI (4), AVX512_BF16 (5).
constexpr uint32_t kLeaf71EaxAvxFamily = bit(4) | bit(5);

void apply_template(kvm_cpuid_entry2& e, CpuTemplate tmpl) {
  if (tmpl != CpuTemplate::Baseline) return;
  if (e.function == 1) {
    e.ecx &= ~(kLeaf1EcxCx16 | kLeaf1EcxXsave | kLeaf1EcxOsxsave | kLeaf1EcxAvx | kLeaf1EcxF16c | kLeaf1EcxFma);
  } else if (e.function == 7 && e.index == 0) {
    e.ebx &= ~kLeaf7EbxAvxFamily;
    e.ecx &= ~kLeaf7EcxAvxFamily;
    e.edx &= ~kLeaf7EdxStateHeavy;
  } else if (e.function == 7 && e.index == 1) {
    e.eax &= ~kLeaf71EaxAvxFamily;
  }
}

}  // namespace

Result<CpuTemplate> parse_cpu_template(std::string_view name) {
  if (name == "host") return CpuTemplate::Host;
  if (name == "baseline") return CpuTemplate::Baseline;
  return fail("unknown CPU template '{}' (known: host, baseline)", name);
}

std::string_view cpu_template_name(CpuTemplate t) { return t == CpuTemplate::Host ? "host" : "baseline"; }

void drop_host_apic_ids(CpuidEntries& supported) {
  for (kvm_cpuid_entry2& e : supported) {
    if (e.function == 1) e.ebx &= 0x00ffffffu;
    if (e.function == 0xb || e.function == 0x1f) e.edx = 0;
  }
}

uint32_t withheld_cpuid_bits(uint32_t function, uint32_t index, int reg) {
  if (index != 0) return 0;
  if (function == 1 && reg == 2) return kLeaf1EcxVmx;
  if (function == 0x80000001 && reg == 2) return kExt1EcxSvm;
  if (function == 0x80000007 && reg == 3) return kExt7EdxInvariantTsc;
  return 0;
}

CpuidEntries make_cpuid(const CpuidEntries& supported, CpuTemplate tmpl, uint32_t index, uint32_t vcpu_count) {
  CpuidEntries out;
  out.reserve(supported.size());
  const uint32_t core_bits = vcpu_count <= 1 ? 0 : static_cast<uint32_t>(std::bit_width(vcpu_count - 1));
  for (kvm_cpuid_entry2 e : supported) {
    // The Baseline template drops the XSAVE state leaf entirely.
    if (tmpl == CpuTemplate::Baseline && e.function == 0xd) continue;
    apply_template(e, tmpl);
    switch (e.function) {
      case 1:
        // EBX[31:24] initial APIC id, [23:16] logical processors per package (valid with HTT).
        e.ebx = (e.ebx & 0x0000ffffu) | (index << 24) | ((vcpu_count & 0xffu) << 16);
        if (vcpu_count > 1) {
          e.edx |= kLeaf1EdxHtt;
        } else {
          e.edx &= ~kLeaf1EdxHtt;
        }
        e.ecx |= kLeaf1EcxHypervisor;
        // Hardware virtualization is not offered: a snapshot does not carry nested state
        // (KVM_GET_NESTED_STATE), and a guest kernel that turned VMX on (Linux 6.12+ does as
        // kvm_intel loads) would fault in its clones at its next VMX instruction.
        e.ecx &= ~kLeaf1EcxVmx;
        break;
      case 0x80000001:
        e.ecx &= ~kExt1EcxSvm;
        break;
      case 0x80000007:
        // Not invariant TSC: a guest told so leaves kvm-clock for the raw TSC, which a restore
        // does not step, and every clone's clock read the template's time (QEMU, too, treats
        // invtsc as unmigratable).
        e.edx &= ~kExt7EdxInvariantTsc;
        break;
      case 0xb:
      case 0x1f:
        // Extended topology: level 0 = SMT (1 thread per core), level 1 = core (all vCPUs in one package).
        e.edx = index;
        if (e.index == 0) {
          e.eax = 0;
          e.ebx = 1;
          e.ecx = (1u << 8) | e.index;
        } else if (e.index == 1) {
          e.eax = core_bits;
          e.ebx = vcpu_count;
          e.ecx = (2u << 8) | e.index;
        } else {
          e.eax = 0;
          e.ebx = 0;
          e.ecx = e.index;
        }
        break;
      case 4:
        // Deterministic cache parameters: EAX[31:26] = cores per package - 1, at most 63 (its six
        // bits wrapped: 65 vCPUs read as 1 core).
        e.eax = (e.eax & 0x03ffffffu) | (std::min(vcpu_count - 1, 63u) << 26);
        break;
      default:
        break;
    }
    out.push_back(e);
  }
  return out;
}

}  // namespace vmm
