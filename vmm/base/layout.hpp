// The guest-physical address map and I/O port map, shared by the boot loaders, the x86 setup and
// the devices. One place, so that nothing collides.
#pragma once

#include <cstdint>

namespace vmm::layout {

// ---- Low memory (below 1 MiB) -------------------------------------------------------------------
inline constexpr uint64_t kGdtAddr = 0x500;          ///< boot GDT (5 entries: x86_boot.cpp's kGdt)
inline constexpr uint64_t kIdtAddr = 0x528;          ///< empty boot IDT, after the GDT
inline constexpr uint64_t kPvhStartInfo = 0x6000;    ///< struct hvm_start_info (PVH boot)
inline constexpr uint64_t kPvhModList = 0x6040;      ///< hvm_modlist_entry[1] (initrd)
inline constexpr uint64_t kPvhMemmap = 0x6080;       ///< hvm_memmap_table_entry[], up to 0x7000
inline constexpr uint64_t kPvhMemmapMaxEntries = (0x7000 - kPvhMemmap) / 24;
inline constexpr uint64_t kZeroPage = 0x7000;        ///< struct boot_params (Linux boot protocol)
inline constexpr uint64_t kBootStackTop = 0x8ff0;    ///< initial RSP for 64-bit entry
inline constexpr uint64_t kPml4 = 0x9000;            ///< identity page tables for 64-bit entry
inline constexpr uint64_t kPdpt = 0xa000;
inline constexpr uint64_t kPd = 0xb000;              ///< 4 page directories: 0xb000..0xefff (4 GiB)
inline constexpr uint64_t kCmdline = 0x20000;        ///< kernel command line
inline constexpr uint64_t kCmdlineMax = 0x10000;     ///< bytes reserved for it (including the NUL)
inline constexpr uint64_t kEbdaStart = 0x9fc00;      ///< start of the reserved area below 1 MiB
/// The 16-byte VM generation ID (DSDT \_SB.VGEN ADDR): the first bytes of the reserved EBDA area
/// (e820 Reserved, so Linux's vmgenid driver memremaps it and nothing allocates it; where
/// Firecracker puts its system memory). Outside the ACPI table area, which starts at kAcpiStart.
inline constexpr uint64_t kVmGenIdAddr = kEbdaStart;
inline constexpr uint64_t kVmGenIdSize = 16;
inline constexpr uint64_t kAcpiStart = 0xe0000;      ///< RSDP and ACPI tables: 0xe0000..0xfffef
inline constexpr uint64_t kResetVector = 0xffff0;    ///< 16 bytes: the BIOS reset vector (reset_vector.hpp)
inline constexpr uint64_t kAcpiEnd = kResetVector;
inline constexpr uint64_t kHighMemStart = 0x100000;  ///< 1 MiB: kernels load at or above this
static_assert(kVmGenIdAddr >= kEbdaStart && kVmGenIdAddr + kVmGenIdSize <= kAcpiStart,
              "the VMGenID must sit in reserved memory, clear of the ACPI tables");

// ---- The 32-bit MMIO hole below 4 GiB -----------------------------------------------------------
inline constexpr uint64_t kMmioHoleStart = 0xc0000000;  ///< RAM above this goes to 4 GiB and up
inline constexpr uint64_t kMmioHoleEnd = 0x100000000;
/// 32-bit PCI memory window: BARs are allocated here (DSDT PCI0 _CRS).
inline constexpr uint64_t kPciMmioStart = 0xc0000000;
inline constexpr uint64_t kPciMmioEnd = 0xe0000000;
/// PCI Express ECAM (MCFG) for bus 0 only: 32 devices x 8 functions x 4 KiB.
inline constexpr uint64_t kPciEcamStart = 0xe0000000;
inline constexpr uint64_t kPciEcamSize = 0x100000;
/// PCI INTx: slot s's INTA is IOAPIC input kPciIntxGsiBase + (s - 1) % kPciIntxGsis (DSDT _PRT).
inline constexpr uint32_t kPciIntxGsiBase = 16;
inline constexpr uint32_t kPciIntxGsis = 8;
inline constexpr uint32_t pci_intx_gsi(uint32_t slot) { return kPciIntxGsiBase + (slot - 1) % kPciIntxGsis; }
inline constexpr uint64_t kIoapicAddr = 0xfec00000;
inline constexpr uint64_t kLapicAddr = 0xfee00000;

// ---- I/O ports ----------------------------------------------------------------------------------
inline constexpr uint16_t kCom1Port = 0x3f8;  ///< 8250 UART, 8 ports
inline constexpr uint32_t kCom1Irq = 4;
/// The ACPI Generic Event Device's interrupt (DSDT \_SB.GED_, ACPI0013): an ISA IRQ that no other
/// device uses (COM1 is 4, PCI INTx 16-23), edge-triggered, active high; its _EVT notifies VGEN.
inline constexpr uint32_t kGedGsi = 5;
/// The GED's second interrupt: the power button (DSDT \_SB.PWRB, PNP0C0C; _EVT notifies it 0x80,
/// which Linux's button driver turns into KEY_POWER). ISA IRQ 6, which no device here uses.
inline constexpr uint32_t kPowerButtonGsi = 6;
inline constexpr uint16_t kI8042DataPort = 0x60;
inline constexpr uint16_t kI8042CommandPort = 0x64;
inline constexpr uint16_t kRtcPort = 0x70;  ///< CMOS index (0x70) and data (0x71)
inline constexpr uint16_t kPvPanicPort = 0x505;  ///< QEMU pvpanic ISA port (ACPI QEMU0001), 1 byte
/// QEMU fw_cfg, traditional interface (QEMU docs/specs/fw_cfg.rst): 16-bit selector at 0x510,
/// 8-bit data at 0x511; no DMA register. 2 ports (DSDT \_SB.FWCF, QEMU0002).
inline constexpr uint16_t kFwCfgPort = 0x510;
inline constexpr uint16_t kFwCfgPortCount = 2;
inline constexpr uint16_t kPciConfigAddressPort = 0xcf8;  ///< PCI configuration mechanism #1, 8 ports
inline constexpr uint16_t kDebugExitPort = 0xf4;  ///< QEMU isa-debug-exit convention, 4 bytes
/// ACPI hardware-reduced registers (FADT): sleep control, sleep status, reset; one byte each.
inline constexpr uint16_t kAcpiSleepControlPort = 0x600;
inline constexpr uint16_t kAcpiSleepStatusPort = 0x601;
inline constexpr uint16_t kAcpiResetPort = 0x602;
inline constexpr uint8_t kAcpiResetValue = 0x1;
/// SLP_TYP value of \_S5 (soft off) in our DSDT; the guest writes (typ << 2) | SLP_EN (1 << 5).
inline constexpr uint8_t kAcpiS5SleepType = 5;

}  // namespace vmm::layout
