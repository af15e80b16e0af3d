// Guest CPUID: KVM_GET_SUPPORTED_CPUID passed through a named CPU template, then made per-vCPU
// (APIC ids, topology). The template name is also part of a template's CPU-compatibility stamp.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "vmm/base/error.hpp"
#include "vmm/kvm.hpp"

namespace vmm {

/// A named CPU template: which supported features the guest is allowed to see.
enum class CpuTemplate {
  Host,      ///< everything KVM supports
  Baseline,  ///< hides what a nested host may fail to emulate: CX16, XSAVE/AVX family, AVX-512
};

/// Parses a template name ("host", "baseline").
Result<CpuTemplate> parse_cpu_template(std::string_view name);
std::string_view cpu_template_name(CpuTemplate t);

/// KVM_GET_SUPPORTED_CPUID passes through the APIC id of the host CPU that ran it (leaf 1
/// EBX[31:24], leaves 0xB and 0x1F EDX): zeroes them, so that the table (and the cache of it) is
/// the same whichever CPU asked. make_cpuid() sets them per vCPU.
void drop_host_apic_ids(CpuidEntries& supported);

/// The CPUID table for vCPU `index` of `vcpu_count`, derived from `supported`. Whatever the
/// template, no VMX or SVM (a snapshot does not carry nested state) and no invariant TSC (a
/// restored guest's clock is stepped through kvmclock).
CpuidEntries make_cpuid(const CpuidEntries& supported, CpuTemplate tmpl, uint32_t index, uint32_t vcpu_count);
/// Bits make_cpuid() withholds since 2026-12-08 that a template made before may have shown its
/// guest (it is restored with them, as it saw them): for the compatibility check.
uint32_t withheld_cpuid_bits(uint32_t function, uint32_t index, int reg);

}  // namespace vmm
