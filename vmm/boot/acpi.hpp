// ACPI tables for a hardware-reduced x86 platform with KVM's in-kernel irqchip: RSDP, XSDT and
// RSDT, FADT, MADT and a minimal DSDT, built in the reserved area 0xE0000..0xFFFEF (clear of the
// VMGenID at layout::kVmGenIdAddr, in the EBDA, and of the reset vector).
// ACPI 6.4 §5.2 (tables), §4.1 (hardware-reduced ACPI).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"

namespace vmm::boot {

/// Most vCPUs the MADT describes: xAPIC ids 0..253 (255 is the broadcast id; 254 is kept free).
inline constexpr uint32_t kMaxVcpus = 254;

/// What the tables describe.
struct AcpiConfig {
  uint32_t vcpus = 1;
  /// AML appended to the DSDT's top level (devices a configuration adds).
  std::span<const uint8_t> extra_dsdt_aml = {};
};

/// The tables as one image of guest memory starting at `base`.
struct AcpiTables {
  uint64_t base = 0;            ///< GPA of bytes[0]
  uint64_t rsdp = 0;            ///< GPA of the RSDP (16-byte aligned, inside 0xE0000..0xFFFFF)
  std::vector<uint8_t> bytes;   ///< RSDP, DSDT, FADT, MADT, XSDT, RSDT
};

/// ACPI checksum: the byte that makes all of `bytes` sum to zero modulo 256 (ACPI 6.4 §5.2.6).
uint8_t acpi_checksum(std::span<const uint8_t> bytes);

/// Builds the tables for [layout::kAcpiStart, layout::kAcpiEnd). Errors: vCPU count 0 or above
/// kMaxVcpus, or tables too large for the area.
Result<AcpiTables> build_acpi_tables(const AcpiConfig& config);

/// The DSDT's AML body (without the table header): \_S5_ for soft-off; Scope(\_SB_) with COM1, the
/// RTC, pvpanic and the PCI host bridge; a second Scope(\_SB_) with clone_devices_aml(); then
/// config.extra_dsdt_aml.
std::vector<uint8_t> dsdt_aml(const AcpiConfig& config);

/// The devices clones need, always present (a template's guest must bind them from first boot), as
/// terms for Scope(\_SB_): FWCF (fw_cfg, QEMU0002, ports layout::kFwCfgPort..+1), VGEN (VMGENCTR,
/// ADDR = layout::kVmGenIdAddr) and GED_ (ACPI0013, edge GSI layout::kGedGsi, whose _EVT does
/// Notify(\_SB_.VGEN, 0x80)).
std::vector<uint8_t> clone_devices_aml();

/// Builds the tables and writes them to guest memory. Returns the RSDP's GPA (for
/// boot_params.acpi_rsdp_addr and hvm_start_info.rsdp_paddr).
Result<uint64_t> write_acpi_tables(const GuestMemory& memory, const AcpiConfig& config);

}  // namespace vmm::boot
