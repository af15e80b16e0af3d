// Initial x86 CPU state for each boot entry mode: GDT, identity page tables, segment registers,
// control registers, MSRs, FPU and LAPIC LINT pins.
#pragma once

#include <linux/kvm.h>

#include <cstdint>

#include "vmm/boot/boot.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/vcpu.hpp"

namespace vmm::x86 {

/// A kvm_segment from a GDT descriptor and its selector (Intel SDM vol. 3A §3.4.5).
kvm_segment segment_from_descriptor(uint16_t selector, uint64_t descriptor);

/// Writes the boot GDT (and an empty IDT) at layout::kGdtAddr / kIdtAddr.
Result<> write_gdt(const GuestMemory& memory);
/// Writes PML4/PDPT/PDs identity-mapping the first 4 GiB with 2 MiB pages at layout::kPml4.
Result<> write_identity_page_tables(const GuestMemory& memory);

/// Registers and special registers that enter `entry` (PVH 32-bit or Linux 64-bit protocol).
struct BootRegisters {
  kvm_regs regs{};
  kvm_sregs sregs{};
};
/// Computes the boot vCPU's registers; `base` supplies fields the VMM does not set (KVM_GET_SREGS).
BootRegisters boot_registers(const boot::BootEntry& entry, const kvm_sregs& base);

/// Per-vCPU setup common to every vCPU: boot MSRs (MTRR default type, fast strings), FPU control
/// words, LAPIC LINT0 = ExtINT and LINT1 = NMI.
Result<> setup_vcpu_common(Vcpu& vcpu);

/// Full boot vCPU setup: GDT/page tables in memory, then registers.
Result<> setup_boot_vcpu(Vcpu& vcpu, const GuestMemory& memory, const boot::BootEntry& entry);

}  // namespace vmm::x86
