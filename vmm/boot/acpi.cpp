#include "vmm/boot/acpi.hpp"

#include <array>
#include <cstring>
#include <numeric>

#include "vmm/boot/acpi_tables.hpp"
#include "vmm/boot/aml.hpp"
#include "vmm/base/layout.hpp"

namespace vmm::boot {

namespace {

using namespace acpi;

constexpr char kOemId[6] = {'V', 'M', 'M', 'C', 'P', 'P'};
constexpr char kCreatorId[4] = {'V', 'M', 'M', ' '};
constexpr char kHypervisorVendor[8] = {'V', 'M', 'M', 'K', 'V', 'M', ' ', ' '};
constexpr uint32_t kOemRevision = 1;
constexpr uint32_t kCreatorRevision = 1;
constexpr size_t kTableAlign = 16;
// The tables fill [kAcpiStart, kAcpiEnd) at most (build_acpi_tables checks the size): never the
// VMGenID, which the guest reads and the VMM rewrites per clone.
static_assert(layout::kVmGenIdAddr + layout::kVmGenIdSize <= layout::kAcpiStart ||
                  layout::kVmGenIdAddr >= layout::kAcpiEnd,
              "ACPI table area overlaps the VMGenID");

// Table revisions for ACPI 6.4.
constexpr uint8_t kRsdpRevision = 2;
constexpr uint8_t kFadtRevision = 6;
constexpr uint8_t kFadtMinorVersion = 4;
constexpr uint8_t kMadtRevision = 5;
constexpr uint8_t kXsdtRevision = 1;
constexpr uint8_t kRsdtRevision = 1;
constexpr uint8_t kDsdtRevision = 2;  // 2 and up: AML integers are 64-bit
constexpr uint8_t kMcfgRevision = 1;

SdtHeader make_header(const char (&signature)[5], const char (&table_id)[9], uint8_t revision, size_t length) {
  SdtHeader h{};
  std::memcpy(h.signature, signature, 4);
  h.length = static_cast<uint32_t>(length);
  h.revision = revision;
  std::memcpy(h.oem_id, kOemId, sizeof h.oem_id);
  std::memcpy(h.oem_table_id, table_id, 8);
  h.oem_revision = kOemRevision;
  std::memcpy(h.creator_id, kCreatorId, sizeof h.creator_id);
  h.creator_revision = kCreatorRevision;
  return h;
}

Gas io_byte_register(uint16_t port) {
  return Gas{.space_id = kGasSystemIo, .bit_width = 8, .bit_offset = 0, .access_size = kGasAccessByte,
             .address = port};
}

// Appends raw bytes to the image.
template <typename T>
void put(std::vector<uint8_t>& out, const T& value) {
  const auto* p = reinterpret_cast<const uint8_t*>(&value);
  out.insert(out.end(), p, p + sizeof value);
}

// Builds tables into one image; each table starts 16-byte aligned and gets its checksum last.
class ImageBuilder {
 public:
  explicit ImageBuilder(uint64_t base) : base_(base) {}

  // Reserves `size` zero bytes at the next aligned offset; returns the offset.
  size_t reserve(size_t size) {
    bytes_.resize((bytes_.size() + kTableAlign - 1) / kTableAlign * kTableAlign);
    const size_t at = bytes_.size();
    bytes_.resize(at + size);
    return at;
  }
  // Adds one SDT (header already inside `table`), fixes its checksum; returns its GPA.
  uint64_t add_table(std::vector<uint8_t> table) {
    table[offsetof(SdtHeader, checksum)] = 0;
    table[offsetof(SdtHeader, checksum)] = acpi_checksum(table);
    const size_t at = reserve(table.size());
    std::memcpy(bytes_.data() + at, table.data(), table.size());
    return base_ + at;
  }
  std::vector<uint8_t>& bytes() { return bytes_; }

 private:
  uint64_t base_;
  std::vector<uint8_t> bytes_;
};

std::vector<uint8_t> build_fadt(uint64_t dsdt) {
  Fadt f{};
  f.header = make_header("FACP", "VMMFACP ", kFadtRevision, sizeof(Fadt));
  // Hardware-reduced (ACPI 6.4 §4.1): no PM1/GPE blocks, no SCI, no FACS. Reset and sleep go
  // through the byte-wide I/O registers of layout.hpp.
  f.dsdt = static_cast<uint32_t>(dsdt);  // below 1 MiB: the 32-bit field may carry it too
  f.x_dsdt = dsdt;
  f.flags = kFadtHwReducedAcpi | kFadtResetRegSup | kFadtPwrButton | kFadtSlpButton;
  // No 8042 flag: the i8042 model serves reset only, and an OS should not probe it for a keyboard.
  f.iapc_boot_arch = kIapcLegacyDevices | kIapcVgaNotPresent | kIapcPcieAspmControls;
  f.reset_reg = io_byte_register(layout::kAcpiResetPort);
  f.reset_value = layout::kAcpiResetValue;
  f.minor_version = kFadtMinorVersion;
  f.sleep_control_reg = io_byte_register(layout::kAcpiSleepControlPort);
  f.sleep_status_reg = io_byte_register(layout::kAcpiSleepStatusPort);
  std::memcpy(f.hypervisor_vendor_id, kHypervisorVendor, sizeof f.hypervisor_vendor_id);
  std::vector<uint8_t> out;
  put(out, f);
  return out;
}

std::vector<uint8_t> build_madt(uint32_t vcpus) {
  const size_t length = sizeof(MadtHeader) + sizeof(MadtIoApic) + vcpus * sizeof(MadtLocalApic) +
                        sizeof(MadtLocalApicNmi);
  MadtHeader h{};
  h.header = make_header("APIC", "VMMMADT ", kMadtRevision, length);
  h.local_apic_address = static_cast<uint32_t>(layout::kLapicAddr);
  h.flags = kMadtPcatCompat;
  std::vector<uint8_t> out;
  put(out, h);
  // One Processor Local APIC per vCPU: UID = APIC id = index, enabled (§5.2.12.2). KVM gives
  // vCPU n the APIC id n.
  for (uint32_t i = 0; i < vcpus; ++i) {
    put(out, MadtLocalApic{.processor_uid = static_cast<uint8_t>(i), .apic_id = static_cast<uint8_t>(i),
                           .flags = kMadtLapicEnabled});
  }
  // KVM's in-kernel IOAPIC (id 0 after reset), 24 pins from GSI 0. KVM's default GSI routing sends
  // GSI n to IOAPIC pin n (and ISA IRQ n < 16 to the PICs too), the in-kernel PIT raises GSI 0:
  // ISA IRQs map 1:1 to GSIs, so there is no Interrupt Source Override (as in Firecracker).
  put(out, MadtIoApic{.ioapic_id = 0, .address = static_cast<uint32_t>(layout::kIoapicAddr), .gsi_base = 0});
  // LINT1 of every local APIC is the NMI input (x86_boot programs it so).
  put(out, MadtLocalApicNmi{});
  return out;
}

std::vector<uint8_t> build_mcfg() {
  std::vector<uint8_t> out;
  put(out, make_header("MCFG", "VMMMCFG ", kMcfgRevision, sizeof(SdtHeader) + 8 + sizeof(McfgAllocation)));
  put(out, uint64_t{0});
  put(out, McfgAllocation{.base = layout::kPciEcamStart, .segment = 0, .start_bus = 0, .end_bus = 0});
  return out;
}

std::vector<uint8_t> build_xsdt(std::span<const uint64_t> tables) {
  std::vector<uint8_t> out;
  put(out, make_header("XSDT", "VMMXSDT ", kXsdtRevision, sizeof(SdtHeader) + tables.size() * 8));
  for (uint64_t t : tables) put(out, t);
  return out;
}

std::vector<uint8_t> build_rsdt(std::span<const uint64_t> tables) {
  std::vector<uint8_t> out;
  put(out, make_header("RSDT", "VMMRSDT ", kRsdtRevision, sizeof(SdtHeader) + tables.size() * 4));
  for (uint64_t t : tables) put(out, static_cast<uint32_t>(t));
  return out;
}

}  // namespace

uint8_t acpi_checksum(std::span<const uint8_t> bytes) {
  const uint8_t sum = std::accumulate(bytes.begin(), bytes.end(), uint8_t{0},
                                      [](uint8_t a, uint8_t b) { return static_cast<uint8_t>(a + b); });
  return static_cast<uint8_t>(0x100 - sum);
}

std::vector<uint8_t> clone_devices_aml() {
  using namespace aml;
  // fw_cfg (QEMU docs/specs/fw_cfg.rst), the traditional port interface only. Linux's qemu_fw_cfg
  // takes the first I/O resource whatever its length, uses selector at +0 and data at +1 on x86, and
  // touches the DMA register (+4) only when the ID item has the DMA bit: 2 ports suffice (QEMU
  // declares 12 because it has DMA). _STA 0xB as QEMU: present, enabled, functioning, not shown.
  const Bytes fw_cfg = concat({
      name("_HID", string("QEMU0002")),
      name("_STA", integer(0xb)),
      name("_CRS", resource_template({io_port(layout::kFwCfgPort, layout::kFwCfgPort, 1,
                                              static_cast<uint8_t>(layout::kFwCfgPortCount))})),
  });
  // VM generation ID (Linux drivers/virt/vmgenid.c): bound by _HID "VMGENCTR" before 6.10; ADDR is
  // a Package of two Integers, the low and high 32 bits of the ID's address; Notify(VGEN, 0x80)
  // makes the driver compare the ID and reseed on change.
  const Bytes vgen = concat({
      name("_HID", string("VMGENCTR")),
      name("_CID", string("VM_Gen_Counter")),
      name("_DDN", string("VM_Gen_Counter")),
      name("ADDR", package({integer(layout::kVmGenIdAddr & 0xffffffff), integer(layout::kVmGenIdAddr >> 32)})),
  });
  // ACPI Generic Event Device (ACPI 6.4 §5.6.10; Linux drivers/acpi/evged.c): Linux requests every
  // interrupt of _CRS and, when one fires, calls _EVT with its GSI (evged looks for _Exx/_Lxx first
  // for GSIs up to 255, then _EVT).
  const Bytes evt = concat({if_(lequal(arg(0), integer(layout::kGedGsi)), notify("\\_SB_.VGEN", integer(0x80))),
                            if_(lequal(arg(0), integer(layout::kPowerButtonGsi)), notify("\\_SB_.PWRB", integer(0x80)))});
  const Bytes ged = concat({
      name("_HID", string("ACPI0013")),
      name("_UID", integer(0)),
      name("_CRS", resource_template({interrupt(layout::kGedGsi, Trigger::Edge, Polarity::ActiveHigh, Sharing::Exclusive),
                                      interrupt(layout::kPowerButtonGsi, Trigger::Edge, Polarity::ActiveHigh, Sharing::Exclusive)})),
      method("_EVT", 1, Serialize::NotSerialized, evt),
  });
  // The power button as a control-method device (hardware-reduced ACPI has no fixed one): Linux's
  // button driver binds PNP0C0C and reports Notify(PWRB, 0x80) as a power-button press.
  const Bytes pwrb = concat({name("_HID", string("PNP0C0C")), name("_UID", integer(0))});
  return concat({device("FWCF", fw_cfg), device("VGEN", vgen), device("PWRB", pwrb), device("GED_", ged)});
}

std::vector<uint8_t> dsdt_aml(const AcpiConfig& config) {
  using namespace aml;
  // \_S5_: SLP_TYPa, SLP_TYPb. A hardware-reduced OSPM writes (SLP_TYPa << 2) | SLP_EN to the
  // sleep control register (ACPI 6.4 §7.4, \_Sx objects; SLEEP_CONTROL_REG in §5.2.9).
  Bytes out = name("_S5_", package({integer(layout::kAcpiS5SleepType), integer(0)}));
  // COM1: 16550-compatible UART (PNP0501) at 0x3F8, 8 ports, ISA IRQ 4 (edge, active high).
  const Bytes com1 = concat({
      name("_HID", eisa_id("PNP0501")),
      name("_UID", integer(1)),
      name("_CRS", resource_template({io_port(layout::kCom1Port, layout::kCom1Port, 1, 8),
                                      irq_no_flags(static_cast<uint8_t>(layout::kCom1Irq))})),
  });
  // CMOS RTC (PNP0B00) at 0x70, without an interrupt: a hardware-reduced platform has no legacy PIC
  // to route ISA IRQ 8, and Linux's rtc_cmos then runs without alarm interrupts.
  const Bytes rtc = concat({
      name("_HID", eisa_id("PNP0B00")),
      name("_CRS", resource_template({io_port(layout::kRtcPort, layout::kRtcPort, 1, 2)})),
  });
  // pvpanic (QEMU0001): the guest kernel writes 1 to the port when it panics.
  const Bytes pvpanic = concat({
      name("_HID", string("QEMU0001")),
      name("_STA", integer(0xf)),
      name("_CRS", resource_template({io_port(layout::kPvPanicPort, layout::kPvPanicPort, 1, 1)})),
  });
  // The PCI host bridge: bus 0, configuration mechanism #1 ports, and the windows its BARs live in
  // (all I/O ports but 0xCF8-0xCFF, the 32-bit MMIO window). ECAM is described by the MCFG. _PRT
  // routes each slot's INTA straight to an IOAPIC input (ACPI 6.4 §6.2.13: Address 0xSSSSFFFF,
  // Pin 0, Source 0, Source Index = GSI).
  std::vector<Bytes> prt;
  for (uint32_t slot = 1; slot < 32; ++slot) {
    prt.push_back(package({integer(uint64_t{slot} << 16 | 0xffff), integer(0), integer(0),
                           integer(layout::pci_intx_gsi(slot))}));
  }
  const Bytes pci0 = concat({
      name("_HID", eisa_id("PNP0A08")),
      name("_CID", eisa_id("PNP0A03")),
      name("_SEG", integer(0)),
      name("_BBN", integer(0)),
      name("_UID", integer(0)),
      name("_PRT", package(std::span<const Bytes>(prt))),
      name("_CRS", resource_template({
                       word_bus_number(0, 0),
                       io_port(layout::kPciConfigAddressPort, layout::kPciConfigAddressPort, 1, 8),
                       word_io(0x0000, layout::kPciConfigAddressPort - 1),
                       word_io(layout::kPciConfigAddressPort + 8, 0xffff),
                       dword_memory(static_cast<uint32_t>(layout::kPciMmioStart),
                                    static_cast<uint32_t>(layout::kPciMmioEnd - 1)),
                   })),
  });
  const Bytes sb = concat({device("COM1", com1), device("RTC_", rtc), device("PEVT", pvpanic), device("PCI0", pci0)});
  const Bytes sb_scope = scope("\\_SB_", sb);
  out.insert(out.end(), sb_scope.begin(), sb_scope.end());
  const Bytes clone_scope = scope("\\_SB_", clone_devices_aml());
  out.insert(out.end(), clone_scope.begin(), clone_scope.end());
  out.insert(out.end(), config.extra_dsdt_aml.begin(), config.extra_dsdt_aml.end());
  return out;
}

Result<AcpiTables> build_acpi_tables(const AcpiConfig& config) {
  if (config.vcpus == 0 || config.vcpus > kMaxVcpus) {
    return fail("{} vCPUs: the ACPI MADT describes 1 to {} (xAPIC ids)", config.vcpus, kMaxVcpus);
  }
  ImageBuilder image(layout::kAcpiStart);
  const size_t rsdp_at = image.reserve(sizeof(Rsdp));  // first: 16-byte aligned at 0xE0000

  std::vector<uint8_t> dsdt;
  put(dsdt, make_header("DSDT", "VMMDSDT ", kDsdtRevision, 0));
  const auto body = dsdt_aml(config);
  dsdt.insert(dsdt.end(), body.begin(), body.end());
  const uint32_t dsdt_len = static_cast<uint32_t>(std::min<size_t>(dsdt.size(), UINT32_MAX));
  std::memcpy(dsdt.data() + offsetof(SdtHeader, length), &dsdt_len, sizeof dsdt_len);

  const uint64_t dsdt_addr = image.add_table(std::move(dsdt));
  const uint64_t fadt_addr = image.add_table(build_fadt(dsdt_addr));
  const uint64_t madt_addr = image.add_table(build_madt(config.vcpus));
  const uint64_t mcfg_addr = image.add_table(build_mcfg());
  const std::array<uint64_t, 3> tables = {fadt_addr, madt_addr, mcfg_addr};
  const uint64_t xsdt_addr = image.add_table(build_xsdt(tables));
  const uint64_t rsdt_addr = image.add_table(build_rsdt(tables));

  auto& bytes = image.bytes();
  if (bytes.size() > layout::kAcpiEnd - layout::kAcpiStart) {
    return fail("ACPI tables need {:#x} bytes, more than the {:#x} reserved at {:#x}", bytes.size(),
                layout::kAcpiEnd - layout::kAcpiStart, layout::kAcpiStart);
  }

  Rsdp rsdp{};
  std::memcpy(rsdp.signature, "RSD PTR ", 8);
  std::memcpy(rsdp.oem_id, kOemId, sizeof rsdp.oem_id);
  rsdp.revision = kRsdpRevision;
  rsdp.rsdt_address = static_cast<uint32_t>(rsdt_addr);
  rsdp.length = sizeof(Rsdp);
  rsdp.xsdt_address = xsdt_addr;
  auto* raw = reinterpret_cast<uint8_t*>(&rsdp);
  rsdp.checksum = acpi_checksum(std::span<const uint8_t>(raw, kRsdpV1Length));
  rsdp.extended_checksum = acpi_checksum(std::span<const uint8_t>(raw, sizeof rsdp));
  std::memcpy(bytes.data() + rsdp_at, &rsdp, sizeof rsdp);

  return AcpiTables{.base = layout::kAcpiStart, .rsdp = layout::kAcpiStart + rsdp_at, .bytes = std::move(bytes)};
}

Result<uint64_t> write_acpi_tables(const GuestMemory& memory, const AcpiConfig& config) {
  auto tables = build_acpi_tables(config);
  if (!tables) return std::unexpected(tables.error());
  if (auto r = memory.write(Gpa(tables->base), tables->bytes); !r) {
    return std::unexpected(r.error().context("writing ACPI tables"));
  }
  return tables->rsdp;
}

}  // namespace vmm::boot
