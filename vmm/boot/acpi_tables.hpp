// Binary layouts of the ACPI tables we build (ACPI 6.4 §5.2), shared by the builder and the tests
// that parse the tables back. All fields little-endian, structures packed.
#pragma once

#include <cstddef>
#include <cstdint>

namespace vmm::boot::acpi {

/// Generic Address Structure (ACPI 6.4 §5.2.3.2).
struct [[gnu::packed]] Gas {
  uint8_t space_id = 0;  ///< 0 system memory, 1 system I/O
  uint8_t bit_width = 0;
  uint8_t bit_offset = 0;
  uint8_t access_size = 0;  ///< 1 byte, 2 word, 3 dword, 4 qword
  uint64_t address = 0;
};
static_assert(sizeof(Gas) == 12);
inline constexpr uint8_t kGasSystemIo = 1;
inline constexpr uint8_t kGasAccessByte = 1;

/// Root System Description Pointer, revision 2 (ACPI 6.4 §5.2.5.3).
struct [[gnu::packed]] Rsdp {
  char signature[8];  ///< "RSD PTR "
  uint8_t checksum;   ///< over the first 20 bytes (the ACPI 1.0 structure)
  char oem_id[6];
  uint8_t revision;   ///< 2
  uint32_t rsdt_address;
  uint32_t length;    ///< 36
  uint64_t xsdt_address;
  uint8_t extended_checksum;  ///< over all 36 bytes
  uint8_t reserved[3];
};
static_assert(sizeof(Rsdp) == 36);
inline constexpr size_t kRsdpV1Length = 20;

/// System Description Table header (ACPI 6.4 §5.2.6).
struct [[gnu::packed]] SdtHeader {
  char signature[4];
  uint32_t length;
  uint8_t revision;
  uint8_t checksum;
  char oem_id[6];
  char oem_table_id[8];
  uint32_t oem_revision;
  char creator_id[4];
  uint32_t creator_revision;
};
static_assert(sizeof(SdtHeader) == 36);

/// Fixed ACPI Description Table, revision 6 (ACPI 6.4 §5.2.9, Table 5.9).
struct [[gnu::packed]] Fadt {
  SdtHeader header;
  uint32_t firmware_ctrl;
  uint32_t dsdt;
  uint8_t reserved0;
  uint8_t preferred_pm_profile;
  uint16_t sci_int;
  uint32_t smi_cmd;
  uint8_t acpi_enable, acpi_disable, s4bios_req, pstate_cnt;
  uint32_t pm1a_evt_blk, pm1b_evt_blk, pm1a_cnt_blk, pm1b_cnt_blk, pm2_cnt_blk, pm_tmr_blk, gpe0_blk, gpe1_blk;
  uint8_t pm1_evt_len, pm1_cnt_len, pm2_cnt_len, pm_tmr_len, gpe0_blk_len, gpe1_blk_len, gpe1_base, cst_cnt;
  uint16_t p_lvl2_lat, p_lvl3_lat, flush_size, flush_stride;
  uint8_t duty_offset, duty_width, day_alrm, mon_alrm, century;
  uint16_t iapc_boot_arch;
  uint8_t reserved1;
  uint32_t flags;
  Gas reset_reg;
  uint8_t reset_value;
  uint16_t arm_boot_arch;
  uint8_t minor_version;
  uint64_t x_firmware_ctrl;
  uint64_t x_dsdt;
  Gas x_pm1a_evt_blk, x_pm1b_evt_blk, x_pm1a_cnt_blk, x_pm1b_cnt_blk, x_pm2_cnt_blk, x_pm_tmr_blk, x_gpe0_blk,
      x_gpe1_blk;
  Gas sleep_control_reg;
  Gas sleep_status_reg;
  char hypervisor_vendor_id[8];
};
static_assert(sizeof(Fadt) == 276);
static_assert(offsetof(Fadt, flags) == 112 && offsetof(Fadt, reset_reg) == 116 && offsetof(Fadt, x_dsdt) == 140);
static_assert(offsetof(Fadt, sleep_control_reg) == 244 && offsetof(Fadt, hypervisor_vendor_id) == 268);

// FADT fixed feature flags (ACPI 6.4 Table 5.10) and IA-PC boot architecture flags (Table 5.11).
inline constexpr uint32_t kFadtPwrButton = 1u << 4;   ///< no fixed-hardware power button
inline constexpr uint32_t kFadtSlpButton = 1u << 5;   ///< no fixed-hardware sleep button
inline constexpr uint32_t kFadtResetRegSup = 1u << 10;
inline constexpr uint32_t kFadtHwReducedAcpi = 1u << 20;
inline constexpr uint16_t kIapcLegacyDevices = 1u << 0;  ///< ISA devices (COM1, RTC) present
inline constexpr uint16_t kIapc8042 = 1u << 1;           ///< an 8042 keyboard controller is present
inline constexpr uint16_t kIapcVgaNotPresent = 1u << 2;
inline constexpr uint16_t kIapcPcieAspmControls = 1u << 4;  ///< OSPM must not enable ASPM

/// Multiple APIC Description Table header (ACPI 6.4 §5.2.12).
struct [[gnu::packed]] MadtHeader {
  SdtHeader header;
  uint32_t local_apic_address;
  uint32_t flags;
};
static_assert(sizeof(MadtHeader) == 44);
inline constexpr uint32_t kMadtPcatCompat = 1;  ///< dual 8259s present (KVM's in-kernel PIC)

/// Processor Local APIC structure, type 0 (ACPI 6.4 §5.2.12.2).
struct [[gnu::packed]] MadtLocalApic {
  uint8_t type = 0;
  uint8_t length = 8;
  uint8_t processor_uid = 0;
  uint8_t apic_id = 0;
  uint32_t flags = 0;
};
static_assert(sizeof(MadtLocalApic) == 8);
inline constexpr uint32_t kMadtLapicEnabled = 1;

/// I/O APIC structure, type 1 (ACPI 6.4 §5.2.12.3).
struct [[gnu::packed]] MadtIoApic {
  uint8_t type = 1;
  uint8_t length = 12;
  uint8_t ioapic_id = 0;
  uint8_t reserved = 0;
  uint32_t address = 0;
  uint32_t gsi_base = 0;
};
static_assert(sizeof(MadtIoApic) == 12);

/// Local APIC NMI structure, type 4 (ACPI 6.4 §5.2.12.7).
struct [[gnu::packed]] MadtLocalApicNmi {
  uint8_t type = 4;
  uint8_t length = 6;
  uint8_t processor_uid = 0xff;  ///< all processors
  uint16_t flags = 0;            ///< conforms to the bus (edge, active high for NMI)
  uint8_t lint = 1;
};
static_assert(sizeof(MadtLocalApicNmi) == 6);

/// MCFG (PCI Firmware Specification 3.0 §4.1.2): the header, 8 reserved bytes, then one
/// allocation per PCI segment's ECAM range.
struct [[gnu::packed]] McfgAllocation {
  uint64_t base = 0;
  uint16_t segment = 0;
  uint8_t start_bus = 0;
  uint8_t end_bus = 0;
  uint32_t reserved = 0;
};
static_assert(sizeof(McfgAllocation) == 16);

}  // namespace vmm::boot::acpi
