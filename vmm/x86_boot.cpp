#include "vmm/x86_boot.hpp"

#include <array>

#include "vmm/base/layout.hpp"

namespace vmm::x86 {

namespace {

// Boot GDT: null, 64-bit code, data, 32-bit code, TSS (Intel SDM vol. 3A §3.4.5, §7.2.2).
constexpr uint16_t kCode64Selector = 0x08;
constexpr uint16_t kDataSelector = 0x10;
constexpr uint16_t kCode32Selector = 0x18;
constexpr uint16_t kTssSelector = 0x20;
constexpr std::array<uint64_t, 5> kGdt = {
    0,
    0x00af9b000000ffffull,  // code: 64-bit (L), present, DPL 0, exec/read, accessed
    0x00cf93000000ffffull,  // data: 4 GiB flat, read/write, accessed
    0x00cf9b000000ffffull,  // code: 32-bit (D), 4 GiB flat
    0x00808b000000ffffull,  // TSS: busy 32/64-bit TSS, base 0
};
// (The empty IDT was written over the TSS descriptor when it followed 4 entries.)
static_assert(layout::kGdtAddr + sizeof(kGdt) <= layout::kIdtAddr, "the boot IDT overlaps the boot GDT");

constexpr uint64_t kCr0Pe = 1ull << 0;
constexpr uint64_t kCr0Et = 1ull << 4;
constexpr uint64_t kCr0Pg = 1ull << 31;
constexpr uint64_t kCr4Pae = 1ull << 5;
constexpr uint64_t kEferLme = 1ull << 8;
constexpr uint64_t kEferLma = 1ull << 10;

constexpr uint32_t kMsrIa32MiscEnable = 0x1a0;
constexpr uint64_t kMiscEnableFastStrings = 1;
constexpr uint32_t kMsrMtrrDefType = 0x2ff;
constexpr uint64_t kMtrrEnable = 1ull << 11;
constexpr uint64_t kMtrrTypeWriteBack = 6;

// LAPIC register offsets and LVT delivery modes (Intel SDM vol. 3A §10.5.1).
constexpr size_t kApicLvt0 = 0x350;
constexpr size_t kApicLvt1 = 0x360;
constexpr uint32_t kApicModeNmi = 0x4;
constexpr uint32_t kApicModeExtInt = 0x7;

uint32_t lapic_reg(const kvm_lapic_state& s, size_t off) {
  uint32_t v;
  std::memcpy(&v, s.regs + off, sizeof v);
  return v;
}
void set_lapic_reg(kvm_lapic_state& s, size_t off, uint32_t v) { std::memcpy(s.regs + off, &v, sizeof v); }
uint32_t with_delivery_mode(uint32_t lvt, uint32_t mode) { return (lvt & ~0x700u) | (mode << 8); }

}  // namespace

kvm_segment segment_from_descriptor(uint16_t selector, uint64_t d) {
  kvm_segment s{};
  s.selector = selector;
  s.base = ((d >> 16) & 0xffffff) | (((d >> 56) & 0xff) << 24);
  uint32_t limit = static_cast<uint32_t>((d & 0xffff) | (((d >> 48) & 0xf) << 16));
  s.g = static_cast<uint8_t>((d >> 55) & 1);
  if (s.g) limit = (limit << 12) | 0xfff;
  s.limit = limit;
  s.type = static_cast<uint8_t>((d >> 40) & 0xf);
  s.s = static_cast<uint8_t>((d >> 44) & 1);
  s.dpl = static_cast<uint8_t>((d >> 45) & 3);
  s.present = static_cast<uint8_t>((d >> 47) & 1);
  s.avl = static_cast<uint8_t>((d >> 52) & 1);
  s.l = static_cast<uint8_t>((d >> 53) & 1);
  s.db = static_cast<uint8_t>((d >> 54) & 1);
  s.unusable = s.present ? 0 : 1;
  return s;
}

Result<> write_gdt(const GuestMemory& memory) {
  if (auto r = memory.write_obj(Gpa(layout::kGdtAddr), kGdt); !r) return r;
  return memory.write_obj(Gpa(layout::kIdtAddr), uint64_t{0});
}

Result<> write_identity_page_tables(const GuestMemory& memory) {
  constexpr uint64_t kPresentWritable = 0x3;
  constexpr uint64_t kHuge = 0x80;
  if (auto r = memory.fill_zero(Gpa(layout::kPml4), 0x1000); !r) return r;
  if (auto r = memory.write_obj(Gpa(layout::kPml4), layout::kPdpt | kPresentWritable); !r) return r;
  std::array<uint64_t, 512> pdpt{};
  for (uint64_t i = 0; i < 4; ++i) pdpt[i] = (layout::kPd + i * 0x1000) | kPresentWritable;
  if (auto r = memory.write_obj(Gpa(layout::kPdpt), pdpt); !r) return r;
  std::array<uint64_t, 512> pd{};
  for (uint64_t dir = 0; dir < 4; ++dir) {
    for (uint64_t i = 0; i < 512; ++i) pd[i] = ((dir * 512 + i) << 21) | kPresentWritable | kHuge;
    if (auto r = memory.write_obj(Gpa(layout::kPd + dir * 0x1000), pd); !r) return r;
  }
  return {};
}

BootRegisters boot_registers(const boot::BootEntry& entry, const kvm_sregs& base) {
  BootRegisters b;
  b.sregs = base;
  kvm_sregs& s = b.sregs;
  s.gdt.base = layout::kGdtAddr;
  s.gdt.limit = static_cast<uint16_t>(sizeof kGdt - 1);
  s.idt.base = layout::kIdtAddr;
  s.idt.limit = 0;
  const kvm_segment data = segment_from_descriptor(kDataSelector, kGdt[kDataSelector / 8]);
  s.ds = s.es = s.fs = s.gs = s.ss = data;
  s.tr = segment_from_descriptor(kTssSelector, kGdt[kTssSelector / 8]);
  s.ldt = {};
  s.ldt.unusable = 1;
  s.ldt.type = 2;  // LDT, as VMX wants even when unusable

  b.regs.rflags = 0x2;  // bit 1 is reserved and always set
  if (entry.mode == boot::EntryMode::Pvh32) {
    // PVH: 32-bit protected mode, paging off, EBX = hvm_start_info (Xen arch-x86/hvm/start_info.h).
    s.cs = segment_from_descriptor(kCode32Selector, kGdt[kCode32Selector / 8]);
    s.cr0 = kCr0Pe | kCr0Et;
    s.cr3 = 0;
    s.cr4 = 0;
    s.efer = 0;
    b.regs.rip = entry.entry;
    b.regs.rbx = entry.boot_info;
  } else {
    // Linux 64-bit boot protocol: long mode, identity-mapped, RSI = boot_params.
    s.cs = segment_from_descriptor(kCode64Selector, kGdt[kCode64Selector / 8]);
    s.cr0 = kCr0Pe | kCr0Et | kCr0Pg;
    s.cr3 = layout::kPml4;
    s.cr4 = kCr4Pae;
    s.efer = kEferLme | kEferLma;
    b.regs.rip = entry.entry;
    b.regs.rsi = entry.boot_info;
    b.regs.rsp = layout::kBootStackTop;
    b.regs.rbp = layout::kBootStackTop;
  }
  return b;
}

Result<> setup_vcpu_common(Vcpu& vcpu) {
  const std::array<kvm_msr_entry, 2> msrs = {
      kvm_msr_entry{.index = kMsrIa32MiscEnable, .reserved = 0, .data = kMiscEnableFastStrings},
      kvm_msr_entry{.index = kMsrMtrrDefType, .reserved = 0, .data = kMtrrEnable | kMtrrTypeWriteBack},
  };
  if (auto r = vcpu.set_msrs(msrs); !r) return r;
  kvm_fpu fpu{};
  fpu.fcw = 0x37f;     // x87 default control word (FNINIT)
  fpu.mxcsr = 0x1f80;  // SSE default: all exceptions masked
  if (auto r = vcpu.set_fpu(fpu); !r) return r;
  auto lapic = vcpu.get_lapic();
  if (!lapic) return std::unexpected(lapic.error());
  set_lapic_reg(*lapic, kApicLvt0, with_delivery_mode(lapic_reg(*lapic, kApicLvt0), kApicModeExtInt));
  set_lapic_reg(*lapic, kApicLvt1, with_delivery_mode(lapic_reg(*lapic, kApicLvt1), kApicModeNmi));
  return vcpu.set_lapic(*lapic);
}

Result<> setup_boot_vcpu(Vcpu& vcpu, const GuestMemory& memory, const boot::BootEntry& entry) {
  if (auto r = write_gdt(memory); !r) return r;
  if (entry.mode == boot::EntryMode::Linux64) {
    if (auto r = write_identity_page_tables(memory); !r) return r;
  }
  auto sregs = vcpu.get_sregs();
  if (!sregs) return std::unexpected(sregs.error());
  const BootRegisters b = boot_registers(entry, *sregs);
  if (auto r = vcpu.set_sregs(b.sregs); !r) return r;
  return vcpu.set_regs(b.regs);
}

}  // namespace vmm::x86
