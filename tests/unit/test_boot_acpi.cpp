// ACPI tables and the AML emitter: encodings checked against the spec (and against iasl's output
// for the same ASL), tables parsed back from guest memory with their checksums.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include <stdlib.h>

#include "temp_dir.hpp"
#include "test_boot_helpers.hpp"
#include "vmm/boot/acpi.hpp"
#include "vmm/boot/reset_vector.hpp"
#include "vmm/boot/acpi_tables.hpp"
#include "vmm/boot/aml.hpp"
#include "vmm/boot/e820.hpp"
#include "vmm/base/layout.hpp"

using namespace boot_test;
using vmm::Gpa;
using vmm::GuestMemory;
namespace boot = vmm::boot;
namespace aml = vmm::boot::aml;
namespace acpi = vmm::boot::acpi;
namespace layout = vmm::layout;

namespace {

uint8_t sum(std::span<const uint8_t> b) {
  uint8_t s = 0;
  for (uint8_t x : b) s = static_cast<uint8_t>(s + x);
  return s;
}

// The tables as an OS finds them: from the RSDP, through the XSDT, each checksum verified.
struct ParsedTables {
  acpi::Rsdp rsdp{};
  std::vector<uint64_t> xsdt_entries;
  std::vector<uint32_t> rsdt_entries;
  std::map<std::string, Bytes> tables;  // by signature, whole table
};

Bytes read_table(const GuestMemory& mem, uint64_t addr) {
  auto header = mem.read_obj<acpi::SdtHeader>(Gpa(addr));
  REQUIRE(header);
  const uint32_t length = header->length;
  REQUIRE(length >= sizeof(acpi::SdtHeader));
  Bytes table(length);
  REQUIRE(mem.read(Gpa(addr), table));
  INFO("table " << std::string(header->signature, 4) << " at " << addr);
  CHECK(sum(table) == 0);
  CHECK(addr >= layout::kAcpiStart);
  CHECK(addr + length <= layout::kAcpiEnd);
  return table;
}

ParsedTables parse(const GuestMemory& mem, uint64_t rsdp_addr) {
  ParsedTables out;
  auto rsdp = mem.read_obj<acpi::Rsdp>(Gpa(rsdp_addr));
  REQUIRE(rsdp);
  out.rsdp = *rsdp;
  CHECK(std::memcmp(rsdp->signature, "RSD PTR ", 8) == 0);
  CHECK(val(rsdp->revision) == 2);
  CHECK(val(rsdp->length) == 36);
  Bytes raw(36);
  REQUIRE(mem.read(Gpa(rsdp_addr), raw));
  CHECK(sum(std::span(raw).first(20)) == 0);
  CHECK(sum(raw) == 0);

  const Bytes xsdt = read_table(mem, rsdp->xsdt_address);
  REQUIRE(std::memcmp(xsdt.data(), "XSDT", 4) == 0);
  for (size_t at = sizeof(acpi::SdtHeader); at + 8 <= xsdt.size(); at += 8) {
    out.xsdt_entries.push_back(get_at<uint64_t>(xsdt, at));
  }
  const Bytes rsdt = read_table(mem, rsdp->rsdt_address);
  REQUIRE(std::memcmp(rsdt.data(), "RSDT", 4) == 0);
  for (size_t at = sizeof(acpi::SdtHeader); at + 4 <= rsdt.size(); at += 4) {
    out.rsdt_entries.push_back(get_at<uint32_t>(rsdt, at));
  }
  for (uint64_t addr : out.xsdt_entries) {
    Bytes t = read_table(mem, addr);
    out.tables[std::string(t.begin(), t.begin() + 4)] = std::move(t);
  }
  return out;
}

// Counts MADT entries by type, checking every entry's length stays inside the table.
std::map<uint8_t, std::vector<Bytes>> madt_entries(const Bytes& madt) {
  std::map<uint8_t, std::vector<Bytes>> out;
  size_t at = sizeof(acpi::MadtHeader);
  while (at + 2 <= madt.size()) {
    const uint8_t type = madt[at];
    const uint8_t len = madt[at + 1];
    REQUIRE(len >= 2);
    REQUIRE(at + len <= madt.size());
    out[type].emplace_back(madt.begin() + at, madt.begin() + at + len);
    at += len;
  }
  CHECK(at == madt.size());
  return out;
}

GuestMemory memory() { return loader_memory(8 << 20); }

}  // namespace

// ---- AML ----------------------------------------------------------------------------------------

TEST_CASE("boot: AML PkgLength encodings at every size boundary") {
  CHECK(aml::pkg_length(0) == Bytes{0x01});
  CHECK(aml::pkg_length(62) == Bytes{0x3f});
  CHECK(aml::pkg_length(63) == Bytes{0x41, 0x04});         // total 65 = 0x041
  CHECK(aml::pkg_length(4093) == Bytes{0x4f, 0xff});       // total 0xfff: the largest 2-byte form
  CHECK(aml::pkg_length(4094) == Bytes{0x81, 0x00, 0x01});  // total 0x1001
  CHECK(aml::pkg_length((1u << 20) - 4) == Bytes{0x8f, 0xff, 0xff});
  CHECK(aml::pkg_length((1u << 20) - 3) == Bytes{0xc1, 0x00, 0x00, 0x01});
  CHECK(aml::pkg_length(aml::kMaxPkgBody).size() == 4);
  CHECK(aml::pkg_length(aml::kMaxPkgBody + 1).empty());
}

TEST_CASE("boot: AML names, integers, strings and EISA ids") {
  CHECK(aml::name_string("_HID") == Bytes{'_', 'H', 'I', 'D'});
  CHECK(aml::name_string("_SB") == Bytes{'_', 'S', 'B', '_'});
  CHECK(aml::name_string("\\_SB_") == Bytes{'\\', '_', 'S', 'B', '_'});
  CHECK(aml::name_string("\\_SB_.COM1") == Bytes{'\\', 0x2e, '_', 'S', 'B', '_', 'C', 'O', 'M', '1'});
  CHECK(aml::name_string("\\_SB_.PCI0.S08") ==
        Bytes{'\\', 0x2f, 3, '_', 'S', 'B', '_', 'P', 'C', 'I', '0', 'S', '0', '8', '_'});
  CHECK(aml::name_string("^^ABCD") == Bytes{'^', '^', 'A', 'B', 'C', 'D'});
  CHECK(aml::name_string("\\") == Bytes{'\\', 0x00});
  CHECK(aml::name_string("1ABC").empty());   // leading digit
  CHECK(aml::name_string("ABCDE").empty());  // too long
  CHECK(aml::name_string("ab").empty());     // lower case
  CHECK(aml::name_string("A..B").empty());
  CHECK(aml::name_string("AB.").empty());

  CHECK(aml::integer(0) == Bytes{0x00});
  CHECK(aml::integer(1) == Bytes{0x01});
  CHECK(aml::integer(5) == Bytes{0x0a, 0x05});
  CHECK(aml::integer(0xff) == Bytes{0x0a, 0xff});
  CHECK(aml::integer(0x100) == Bytes{0x0b, 0x00, 0x01});
  CHECK(aml::integer(0x12345678) == Bytes{0x0c, 0x78, 0x56, 0x34, 0x12});
  CHECK(aml::integer(0x100000000) == Bytes{0x0e, 0, 0, 0, 0, 1, 0, 0, 0});
  CHECK(aml::string("ab") == Bytes{0x0d, 'a', 'b', 0});

  CHECK(aml::eisa_id("PNP0501") == Bytes{0x0c, 0x41, 0xd0, 0x05, 0x01});
  CHECK(aml::eisa_id("PNP0A03") == Bytes{0x0c, 0x41, 0xd0, 0x0a, 0x03});
  CHECK(aml::eisa_id("QEMU0002") .empty());
  CHECK(aml::eisa_id("pnp0501").empty());
  CHECK(aml::eisa_id("PNP05G1").empty());
}

TEST_CASE("boot: AML resource descriptors and nested terms") {
  CHECK(aml::io_port(0x3f8, 0x3f8, 1, 8) == Bytes{0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08});
  CHECK(aml::irq_no_flags(4) == Bytes{0x22, 0x10, 0x00});
  CHECK(aml::irq_no_flags(12) == Bytes{0x22, 0x00, 0x10});
  CHECK(aml::resource_template({aml::irq_no_flags(4)}) == Bytes{0x11, 0x08, 0x0a, 0x05, 0x22, 0x10, 0x00, 0x79, 0x00});
  CHECK(aml::package({aml::integer(5), aml::integer(0)}) == Bytes{0x12, 0x05, 0x02, 0x0a, 0x05, 0x00});
  CHECK(aml::device("DEV0", Bytes{}) == Bytes{0x5b, 0x82, 0x05, 'D', 'E', 'V', '0'});
  // A large body switches the PkgLength to two bytes and stays consistent.
  const Bytes big(100, 0xa3);
  const Bytes s = aml::scope("ABCD", big);
  REQUIRE(s.size() == 1 + 2 + 4 + 100);
  CHECK(s[0] == 0x10);
  CHECK((s[1] >> 6) == 1);
  CHECK(((s[1] & 0x0f) | (s[2] << 4)) == 2 + 4 + 100);
}

TEST_CASE("boot: DSDT AML is what iasl emits for _S5_, COM1, the RTC, pvpanic and the PCI host bridge") {
  // iasl 20200925 (Debian acpica-tools) compiles
  //   Name (_S5, Package () { 5, 0 })
  //   Scope (\_SB) {
  //     Device (COM1) { Name (_HID, EisaId ("PNP0501")) Name (_UID, One)
  //       Name (_CRS, ResourceTemplate () { IO (Decode16, 0x3F8, 0x3F8, 1, 8) IRQNoFlags () {4} }) }
  //     Device (RTC_) { Name (_HID, EisaId ("PNP0B00"))
  //       Name (_CRS, ResourceTemplate () { IO (Decode16, 0x70, 0x70, 1, 2) }) }
  //     Device (PEVT) { Name (_HID, "QEMU0001") Name (_STA, 0x0F)
  //       Name (_CRS, ResourceTemplate () { IO (Decode16, 0x505, 0x505, 1, 1) }) }
  //     Device (PCI0) { Name (_HID, EisaId ("PNP0A08")) Name (_CID, EisaId ("PNP0A03"))
  //       Name (_SEG, Zero) Name (_BBN, Zero) Name (_UID, Zero)
  //       Name (_PRT, Package () { Package () { 0x0001FFFF, Zero, Zero, 16 }, ... one per slot 1-31,
  //                                GSI 16 + (slot - 1) % 8 ... })
  //       Name (_CRS, ResourceTemplate () {
  //         WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, 0, 0, 0, 1)
  //         IO (Decode16, 0x0CF8, 0x0CF8, 0x01, 0x08)
  //         WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, 0, 0x0CF7, 0, 0x0CF8)
  //         WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, 0x0D00, 0xFFFF, 0, 0xF300)
  //         DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, NonCacheable, ReadWrite, 0,
  //                      0xC0000000, 0xDFFFFFFF, 0, 0x20000000) }) } }
  // to these bytes, except that it writes the root-relative "_SB_" where we write "\_SB_" (one byte
  // more in the scope's PkgLength).
  const Bytes want = {
      0x08, 0x5f, 0x53, 0x35, 0x5f, 0x12, 0x05, 0x02, 0x0a, 0x05, 0x00,                    // Name(_S5_, ...)
      0x10, 0x41, 0x29, 0x5c, 0x5f, 0x53, 0x42, 0x5f,                                      // Scope(\_SB_)
      0x5b, 0x82, 0x2b, 0x43, 0x4f, 0x4d, 0x31,                                            // Device(COM1)
      0x08, 0x5f, 0x48, 0x49, 0x44, 0x0c, 0x41, 0xd0, 0x05, 0x01,                          // _HID PNP0501
      0x08, 0x5f, 0x55, 0x49, 0x44, 0x01,                                                  // _UID One
      0x08, 0x5f, 0x43, 0x52, 0x53, 0x11, 0x10, 0x0a, 0x0d,                                // _CRS Buffer(13)
      0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00,        // IO, IRQ, End
      0x5b, 0x82, 0x22, 0x52, 0x54, 0x43, 0x5f,                                            // Device(RTC_)
      0x08, 0x5f, 0x48, 0x49, 0x44, 0x0c, 0x41, 0xd0, 0x0b, 0x00,                          // _HID PNP0B00
      0x08, 0x5f, 0x43, 0x52, 0x53, 0x11, 0x0d, 0x0a, 0x0a,                                // _CRS Buffer(10)
      0x47, 0x01, 0x70, 0x00, 0x70, 0x00, 0x01, 0x02, 0x79, 0x00,                          // IO, End
      0x5b, 0x82, 0x2e, 0x50, 0x45, 0x56, 0x54,                                            // Device(PEVT)
      0x08, 0x5f, 0x48, 0x49, 0x44, 0x0d, 0x51, 0x45, 0x4d, 0x55, 0x30, 0x30, 0x30, 0x31, 0x00,  // _HID
      0x08, 0x5f, 0x53, 0x54, 0x41, 0x0a, 0x0f,                                            // _STA 0x0F
      0x08, 0x5f, 0x43, 0x52, 0x53, 0x11, 0x0d, 0x0a, 0x0a,                                // _CRS Buffer(10)
      0x47, 0x01, 0x05, 0x05, 0x05, 0x05, 0x01, 0x01, 0x79, 0x00,                          // IO, End
      // Device(PCI0)
      0x5b, 0x82, 0x47, 0x20, 0x50, 0x43, 0x49, 0x30, 0x08, 0x5f, 0x48, 0x49, 0x44, 0x0c, 0x41, 0xd0,
      0x0a, 0x08, 0x08, 0x5f, 0x43, 0x49, 0x44, 0x0c, 0x41, 0xd0, 0x0a, 0x03, 0x08, 0x5f, 0x53, 0x45,
      0x47, 0x00, 0x08, 0x5f, 0x42, 0x42, 0x4e, 0x00, 0x08, 0x5f, 0x55, 0x49, 0x44, 0x00, 0x08, 0x5f,
      0x50, 0x52, 0x54, 0x12, 0x47, 0x17, 0x1f, 0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x01, 0x00, 0x00,
      0x00, 0x0a, 0x10, 0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x0a, 0x11, 0x12,
      0x0b, 0x04, 0x0c, 0xff, 0xff, 0x03, 0x00, 0x00, 0x00, 0x0a, 0x12, 0x12, 0x0b, 0x04, 0x0c, 0xff,
      0xff, 0x04, 0x00, 0x00, 0x00, 0x0a, 0x13, 0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x05, 0x00, 0x00,
      0x00, 0x0a, 0x14, 0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x06, 0x00, 0x00, 0x00, 0x0a, 0x15, 0x12,
      0x0b, 0x04, 0x0c, 0xff, 0xff, 0x07, 0x00, 0x00, 0x00, 0x0a, 0x16, 0x12, 0x0b, 0x04, 0x0c, 0xff,
      0xff, 0x08, 0x00, 0x00, 0x00, 0x0a, 0x17, 0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x09, 0x00, 0x00,
      0x00, 0x0a, 0x10, 0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x0a, 0x00, 0x00, 0x00, 0x0a, 0x11, 0x12,
      0x0b, 0x04, 0x0c, 0xff, 0xff, 0x0b, 0x00, 0x00, 0x00, 0x0a, 0x12, 0x12, 0x0b, 0x04, 0x0c, 0xff,
      0xff, 0x0c, 0x00, 0x00, 0x00, 0x0a, 0x13, 0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x0d, 0x00, 0x00,
      0x00, 0x0a, 0x14, 0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x0e, 0x00, 0x00, 0x00, 0x0a, 0x15, 0x12,
      0x0b, 0x04, 0x0c, 0xff, 0xff, 0x0f, 0x00, 0x00, 0x00, 0x0a, 0x16, 0x12, 0x0b, 0x04, 0x0c, 0xff,
      0xff, 0x10, 0x00, 0x00, 0x00, 0x0a, 0x17, 0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x11, 0x00, 0x00,
      0x00, 0x0a, 0x10, 0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x12, 0x00, 0x00, 0x00, 0x0a, 0x11, 0x12,
      0x0b, 0x04, 0x0c, 0xff, 0xff, 0x13, 0x00, 0x00, 0x00, 0x0a, 0x12, 0x12, 0x0b, 0x04, 0x0c, 0xff,
      0xff, 0x14, 0x00, 0x00, 0x00, 0x0a, 0x13, 0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x15, 0x00, 0x00,
      0x00, 0x0a, 0x14, 0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x16, 0x00, 0x00, 0x00, 0x0a, 0x15, 0x12,
      0x0b, 0x04, 0x0c, 0xff, 0xff, 0x17, 0x00, 0x00, 0x00, 0x0a, 0x16, 0x12, 0x0b, 0x04, 0x0c, 0xff,
      0xff, 0x18, 0x00, 0x00, 0x00, 0x0a, 0x17, 0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x19, 0x00, 0x00,
      0x00, 0x0a, 0x10, 0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x1a, 0x00, 0x00, 0x00, 0x0a, 0x11, 0x12,
      0x0b, 0x04, 0x0c, 0xff, 0xff, 0x1b, 0x00, 0x00, 0x00, 0x0a, 0x12, 0x12, 0x0b, 0x04, 0x0c, 0xff,
      0xff, 0x1c, 0x00, 0x00, 0x00, 0x0a, 0x13, 0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x1d, 0x00, 0x00,
      0x00, 0x0a, 0x14, 0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x1e, 0x00, 0x00, 0x00, 0x0a, 0x15, 0x12,
      0x0b, 0x04, 0x0c, 0xff, 0xff, 0x1f, 0x00, 0x00, 0x00, 0x0a, 0x16, 0x08, 0x5f, 0x43, 0x52, 0x53,
      0x11, 0x48, 0x05, 0x0a, 0x54, 0x88, 0x0d, 0x00, 0x02, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x01, 0x00, 0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08, 0x88, 0x0d, 0x00,
      0x01, 0x0c, 0x03, 0x00, 0x00, 0x00, 0x00, 0xf7, 0x0c, 0x00, 0x00, 0xf8, 0x0c, 0x88, 0x0d, 0x00,
      0x01, 0x0c, 0x03, 0x00, 0x00, 0x00, 0x0d, 0xff, 0xff, 0x00, 0x00, 0x00, 0xf3, 0x87, 0x17, 0x00,
      0x00, 0x0c, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0xff, 0xff, 0xff, 0xdf, 0x00,
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x20, 0x79, 0x00,
  };
  // The devices for clones follow in a second Scope(\_SB_) (checked in the next test case).
  const Bytes dsdt = boot::dsdt_aml({.vcpus = 1});
  REQUIRE(dsdt.size() > want.size());
  CHECK(Bytes(dsdt.begin(), dsdt.begin() + static_cast<long>(want.size())) == want);
  CHECK(Bytes(dsdt.begin() + static_cast<long>(want.size()), dsdt.end()) ==
        aml::scope("\\_SB_", boot::clone_devices_aml()));
  // The S5 sleep type is the one the sleep-control device expects; the ports are the layout's.
  CHECK(want[9] == layout::kAcpiS5SleepType);
  CHECK(layout::kRtcPort == 0x70);
  CHECK(layout::kPvPanicPort == 0x505);
}

TEST_CASE("boot: AML methods, If, LEqual, Notify, Arg and the Extended Interrupt descriptor") {
  // Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) {5}: large item 0x89, length 6, flags
  // consumer | edge, one interrupt (ACPI 6.4 §6.4.3.6).
  using aml::Polarity;
  using aml::Sharing;
  using aml::Trigger;
  CHECK(aml::interrupt(5, Trigger::Edge, Polarity::ActiveHigh, Sharing::Exclusive) ==
        Bytes{0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0x00, 0x00, 0x00});
  CHECK(aml::interrupt(0x12345678, Trigger::Level, Polarity::ActiveLow, Sharing::Shared) ==
        Bytes{0x89, 0x06, 0x00, 0x0d, 0x01, 0x78, 0x56, 0x34, 0x12});
  CHECK(aml::arg(0) == Bytes{0x68});
  CHECK(aml::arg(6) == Bytes{0x6e});
  CHECK(aml::arg(7).empty());
  CHECK(aml::lequal(aml::arg(0), aml::integer(5)) == Bytes{0x93, 0x68, 0x0a, 0x05});
  CHECK(aml::notify("\\_SB_.VGEN", aml::integer(0x80)) ==
        Bytes{0x86, 0x5c, 0x2e, '_', 'S', 'B', '_', 'V', 'G', 'E', 'N', 0x0a, 0x80});
  CHECK(aml::name_ref("VGEN") == Bytes{'V', 'G', 'E', 'N'});
  CHECK(aml::if_(aml::integer(1), Bytes{}) == Bytes{0xa0, 0x02, 0x01});  // If (One) {}
  // Method (_EVT, 1, NotSerialized) {} and Method (M2__, 2, Serialized) { Return-less body }.
  CHECK(aml::method("_EVT", 1, aml::Serialize::NotSerialized, Bytes{}) ==
        Bytes{0x14, 0x06, '_', 'E', 'V', 'T', 0x01});
  CHECK(aml::method("M2", 2, aml::Serialize::Serialized, Bytes{0xa3}) ==
        Bytes{0x14, 0x07, 'M', '2', '_', '_', 0x0a, 0xa3});
  CHECK(aml::method("M8", 8, aml::Serialize::NotSerialized, Bytes{}).empty());
}

TEST_CASE("boot: DSDT clone devices (fw_cfg, VMGenID, power button, GED) are what iasl emits") {
  // iasl 20200925 -oa (no optimizations; -f, since it refuses the non-hex _HID "VMGENCTR" that
  // Linux's vmgenid driver needs) compiles
  //   Scope (\_SB) {
  //     Device (FWCF) { Name (_HID, "QEMU0002") Name (_STA, 0x0B)
  //       Name (_CRS, ResourceTemplate () { IO (Decode16, 0x0510, 0x0510, 0x01, 0x02) }) }
  //     Device (VGEN) { Name (_HID, "VMGENCTR") Name (_CID, "VM_Gen_Counter") Name (_DDN, "VM_Gen_Counter")
  //       Name (ADDR, Package () { 0x0009FC00, Zero }) }
  //     Device (PWRB) { Name (_HID, "PNP0C0C") Name (_UID, Zero) }
  //     Device (GED_) { Name (_HID, "ACPI0013") Name (_UID, Zero)
  //       Name (_CRS, ResourceTemplate () { Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { 5 }
  //                                         Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive) { 6 } })
  //       Method (_EVT, 1, NotSerialized) { If (LEqual (Arg0, 5)) { Notify (\_SB.VGEN, 0x80) }
  //                                         If (LEqual (Arg0, 6)) { Notify (\_SB.PWRB, 0x80) } } } }
  // to a Scope(\_SB_) header 10 41 0d 5c 5f 53 42 5f, then these bytes.
  const Bytes want = {
      0x5b, 0x82, 0x2e, 0x46, 0x57, 0x43, 0x46,                                            // Device(FWCF)
      0x08, 0x5f, 0x48, 0x49, 0x44, 0x0d, 0x51, 0x45, 0x4d, 0x55, 0x30, 0x30, 0x30, 0x32, 0x00,  // _HID
      0x08, 0x5f, 0x53, 0x54, 0x41, 0x0a, 0x0b,                                            // _STA 0x0B
      0x08, 0x5f, 0x43, 0x52, 0x53, 0x11, 0x0d, 0x0a, 0x0a,                                // _CRS Buffer(10)
      0x47, 0x01, 0x10, 0x05, 0x10, 0x05, 0x01, 0x02, 0x79, 0x00,                          // IO, End
      0x5b, 0x82, 0x4d, 0x04, 0x56, 0x47, 0x45, 0x4e,                                      // Device(VGEN)
      0x08, 0x5f, 0x48, 0x49, 0x44, 0x0d, 0x56, 0x4d, 0x47, 0x45, 0x4e, 0x43, 0x54, 0x52, 0x00,  // _HID
      0x08, 0x5f, 0x43, 0x49, 0x44, 0x0d, 0x56, 0x4d, 0x5f, 0x47, 0x65, 0x6e, 0x5f, 0x43, 0x6f, 0x75,
      0x6e, 0x74, 0x65, 0x72, 0x00,                                                        // _CID
      0x08, 0x5f, 0x44, 0x44, 0x4e, 0x0d, 0x56, 0x4d, 0x5f, 0x47, 0x65, 0x6e, 0x5f, 0x43, 0x6f, 0x75,
      0x6e, 0x74, 0x65, 0x72, 0x00,                                                        // _DDN
      0x08, 0x41, 0x44, 0x44, 0x52, 0x12, 0x08, 0x02, 0x0c, 0x00, 0xfc, 0x09, 0x00, 0x00,  // ADDR
      0x5b, 0x82, 0x19, 0x50, 0x57, 0x52, 0x42,                                            // Device(PWRB)
      0x08, 0x5f, 0x48, 0x49, 0x44, 0x0d, 0x50, 0x4e, 0x50, 0x30, 0x43, 0x30, 0x43, 0x00,  // _HID PNP0C0C
      0x08, 0x5f, 0x55, 0x49, 0x44, 0x00,                                                  // _UID Zero
      0x5b, 0x82, 0x45, 0x06, 0x47, 0x45, 0x44, 0x5f,                                      // Device(GED_)
      0x08, 0x5f, 0x48, 0x49, 0x44, 0x0d, 0x41, 0x43, 0x50, 0x49, 0x30, 0x30, 0x31, 0x33, 0x00,  // _HID
      0x08, 0x5f, 0x55, 0x49, 0x44, 0x00,                                                  // _UID Zero
      0x08, 0x5f, 0x43, 0x52, 0x53, 0x11, 0x17, 0x0a, 0x14,                                // _CRS Buffer(20)
      0x89, 0x06, 0x00, 0x03, 0x01, 0x05, 0x00, 0x00, 0x00,                                // Interrupt {5}
      0x89, 0x06, 0x00, 0x03, 0x01, 0x06, 0x00, 0x00, 0x00, 0x79, 0x00,                    // Interrupt {6}, End
      0x14, 0x2c, 0x5f, 0x45, 0x56, 0x54, 0x01,                                            // Method(_EVT, 1)
      0xa0, 0x12, 0x93, 0x68, 0x0a, 0x05,                                                  // If (Arg0 == 5)
      0x86, 0x5c, 0x2e, 0x5f, 0x53, 0x42, 0x5f, 0x56, 0x47, 0x45, 0x4e, 0x0a, 0x80,        // Notify VGEN
      0xa0, 0x12, 0x93, 0x68, 0x0a, 0x06,                                                  // If (Arg0 == 6)
      0x86, 0x5c, 0x2e, 0x5f, 0x53, 0x42, 0x5f, 0x50, 0x57, 0x52, 0x42, 0x0a, 0x80,        // Notify PWRB
  };
  CHECK(boot::clone_devices_aml() == want);
  CHECK(layout::kFwCfgPort == 0x510);
  CHECK(layout::kVmGenIdAddr == 0x9fc00);
  CHECK(layout::kGedGsi == 5);
  CHECK(layout::kPowerButtonGsi == 6);
  CHECK(layout::kGedGsi != layout::kCom1Irq);
  CHECK(layout::kGedGsi < 16);
  CHECK((layout::kGedGsi < layout::kPciIntxGsiBase || layout::kGedGsi >= layout::kPciIntxGsiBase + layout::kPciIntxGsis));
  // Without options the clone devices are there: a template's first boot binds them.
  const Bytes dsdt = boot::dsdt_aml({.vcpus = 1});
  CHECK(std::search(dsdt.begin(), dsdt.end(), want.begin(), want.end()) != dsdt.end());
}

TEST_CASE("boot: the VMGenID is reserved in the e820 map and outside the ACPI tables") {
  for (uint64_t size : {uint64_t{2} << 20, uint64_t{256} << 20, uint64_t{3200} << 20}) {
    CAPTURE(size);
    auto m = GuestMemory::anonymous(size);
    REQUIRE(m);
    const auto map = boot::build_e820(*m);
    bool reserved = false;
    for (const auto& e : map) {
      const bool overlaps = e.addr < layout::kVmGenIdAddr + layout::kVmGenIdSize && layout::kVmGenIdAddr < e.addr + e.size;
      if (!overlaps) continue;
      CHECK(e.type == boot::E820Type::Reserved);
      CHECK(e.addr <= layout::kVmGenIdAddr);
      CHECK(layout::kVmGenIdAddr + layout::kVmGenIdSize <= e.addr + e.size);
      reserved = true;
    }
    CHECK(reserved);
  }
  // The largest table image leaves an ID already in memory untouched.
  auto mem = memory();
  const Bytes id = pattern(16);
  REQUIRE(mem.write(Gpa(layout::kVmGenIdAddr), id));
  auto tables = boot::build_acpi_tables({.vcpus = boot::kMaxVcpus});
  REQUIRE(tables);
  CHECK((tables->base >= layout::kVmGenIdAddr + layout::kVmGenIdSize ||
         tables->base + tables->bytes.size() <= layout::kVmGenIdAddr));
  REQUIRE(mem.write(Gpa(tables->base), tables->bytes));
  Bytes after(16);
  REQUIRE(mem.read(Gpa(layout::kVmGenIdAddr), after));
  CHECK(after == id);
}

TEST_CASE("boot: iasl disassembles the DSDT without errors, with fw_cfg, VMGenID and the GED") {
  if (std::system("iasl -v >/dev/null 2>&1") != 0) {
    MESSAGE("VMM_SKIP: iasl is missing (Debian package acpica-tools)");
    return;
  }
  auto mem = memory();
  auto rsdp = boot::write_acpi_tables(mem, {.vcpus = 2});
  REQUIRE(rsdp);
  const ParsedTables t = parse(mem, *rsdp);
  acpi::Fadt f;
  std::memcpy(&f, t.tables.at("FACP").data(), sizeof f);
  const Bytes dsdt = read_table(mem, f.x_dsdt);

  const vmm::test::TempDir tmp("vmm-iasl");
  const std::filesystem::path& dir = tmp.path;
  {
    std::ofstream out(dir / "dsdt.dat", std::ios::binary);
    out.write(reinterpret_cast<const char*>(dsdt.data()), static_cast<std::streamsize>(dsdt.size()));
  }
  const std::string cmd = "cd '" + dir.string() + "' && iasl -d dsdt.dat >iasl.log 2>&1";
  const int status = std::system(cmd.c_str());
  std::ifstream log_in(dir / "iasl.log");
  const std::string log((std::istreambuf_iterator<char>(log_in)), std::istreambuf_iterator<char>());
  std::ifstream dsl_in(dir / "dsdt.dsl");
  const std::string dsl((std::istreambuf_iterator<char>(dsl_in)), std::istreambuf_iterator<char>());
  INFO("iasl output:\n" << log);
  CHECK(status == 0);
  CHECK(log.find("Disassembly completed") != std::string::npos);
  CHECK(log.find("Error") == std::string::npos);
  CHECK(log.find("Warning") == std::string::npos);
  INFO("disassembly:\n" << dsl);
  for (const char* want : {"Device (FWCF)", "\"QEMU0002\"", "Name (_STA, 0x0B)", "0x0510,", "Device (VGEN)",
                           "\"VMGENCTR\"", "\"VM_Gen_Counter\"", "Name (ADDR, Package (0x02)", "0x0009FC00",
                           "Device (GED)", "\"ACPI0013\"",
                           "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )",
                           "Method (_EVT, 1, NotSerialized)", "If ((Arg0 == 0x05))", "Notify (\\_SB.VGEN, 0x80)",
                           "Device (COM1)", "Device (PCI0)"}) {
    CAPTURE(want);
    CHECK(dsl.find(want) != std::string::npos);
  }
}

// ---- Tables -------------------------------------------------------------------------------------

TEST_CASE("boot: ACPI checksum") {
  CHECK(boot::acpi_checksum(Bytes{}) == 0);
  CHECK(boot::acpi_checksum(Bytes{1, 2, 3}) == 0xfa);
  Bytes b = {0x80, 0x80, 0x00};
  CHECK(boot::acpi_checksum(b) == 0);
  b = pattern(1000);
  b.push_back(boot::acpi_checksum(b));
  CHECK(sum(b) == 0);
}

TEST_CASE("boot: ACPI tables refuse 0 or more than 254 vCPUs and oversized DSDT AML") {
  auto zero = boot::build_acpi_tables({.vcpus = 0});
  REQUIRE_FALSE(zero);
  CHECK(zero.error().message().find("0 vCPUs") != std::string::npos);
  auto many = boot::build_acpi_tables({.vcpus = 255});
  REQUIRE_FALSE(many);
  CHECK(many.error().message().find("1 to 254") != std::string::npos);
  const Bytes huge(0x20000, 0);
  auto big = boot::build_acpi_tables({.vcpus = 1, .extra_dsdt_aml = huge});
  REQUIRE_FALSE(big);
  CHECK(big.error().message().find("ACPI tables need") != std::string::npos);
}

TEST_CASE("boot: ACPI RSDP, XSDT and RSDT point at FADT, MADT and MCFG with valid checksums") {
  auto mem = memory();
  auto rsdp = boot::write_acpi_tables(mem, {.vcpus = 2});
  REQUIRE_MESSAGE(rsdp, rsdp.error().message());
  CHECK(*rsdp == layout::kAcpiStart);
  CHECK(*rsdp % 16 == 0);
  const ParsedTables t = parse(mem, *rsdp);
  CHECK(std::string(t.rsdp.oem_id, 6) == "VMMCPP");
  REQUIRE(t.xsdt_entries.size() == 3);
  REQUIRE(t.rsdt_entries.size() == 3);
  CHECK(t.rsdt_entries[0] == t.xsdt_entries[0]);
  CHECK(t.rsdt_entries[1] == t.xsdt_entries[1]);
  CHECK(t.rsdt_entries[2] == t.xsdt_entries[2]);
  CHECK(t.tables.contains("FACP"));
  CHECK(t.tables.contains("APIC"));
  REQUIRE(t.tables.contains("MCFG"));
  // MCFG: header, 8 reserved bytes, one allocation: ECAM base, segment 0, buses 0-0.
  const auto& mcfg = t.tables.at("MCFG");
  REQUIRE(mcfg.size() == 36 + 8 + 16);
  acpi::McfgAllocation alloc;
  std::memcpy(&alloc, mcfg.data() + 44, sizeof alloc);
  CHECK(val(alloc.base) == layout::kPciEcamStart);
  CHECK(val(alloc.segment) == 0);
  CHECK(alloc.start_bus == 0);
  CHECK(alloc.end_bus == 0);
}

TEST_CASE("boot: ACPI FADT is hardware-reduced with reset and sleep registers, and points at the DSDT") {
  auto mem = memory();
  auto rsdp = boot::write_acpi_tables(mem, {.vcpus = 1});
  REQUIRE(rsdp);
  const ParsedTables t = parse(mem, *rsdp);
  const Bytes& raw = t.tables.at("FACP");
  REQUIRE(raw.size() == sizeof(acpi::Fadt));
  acpi::Fadt f;
  std::memcpy(&f, raw.data(), sizeof f);
  CHECK(val(f.header.revision) == 6);
  CHECK(val(f.minor_version) == 4);
  CHECK((val(f.flags) & acpi::kFadtHwReducedAcpi) != 0);
  CHECK((val(f.flags) & acpi::kFadtResetRegSup) != 0);
  CHECK(val(f.reset_reg.space_id) == acpi::kGasSystemIo);
  CHECK(val(f.reset_reg.bit_width) == 8);
  CHECK(val(f.reset_reg.address) == layout::kAcpiResetPort);
  CHECK(val(f.reset_value) == layout::kAcpiResetValue);
  CHECK(val(f.sleep_control_reg.space_id) == acpi::kGasSystemIo);
  CHECK(val(f.sleep_control_reg.bit_width) == 8);
  CHECK(val(f.sleep_control_reg.access_size) == acpi::kGasAccessByte);
  CHECK(val(f.sleep_control_reg.address) == layout::kAcpiSleepControlPort);
  CHECK(val(f.sleep_status_reg.address) == layout::kAcpiSleepStatusPort);
  CHECK(val(f.sleep_status_reg.space_id) == acpi::kGasSystemIo);
  // No 8042 flag: the i8042 model only resets; Linux must not probe it for a keyboard.
  CHECK((val(f.iapc_boot_arch) & acpi::kIapc8042) == 0);
  CHECK(val(f.sci_int) == 0);
  CHECK(val(f.pm1a_cnt_blk) == 0);
  CHECK(std::string(f.hypervisor_vendor_id, 8) == "VMMKVM  ");

  const Bytes dsdt = read_table(mem, f.x_dsdt);
  CHECK(std::memcmp(dsdt.data(), "DSDT", 4) == 0);
  CHECK(val(f.dsdt) == val(f.x_dsdt));
  CHECK(Bytes(dsdt.begin() + sizeof(acpi::SdtHeader), dsdt.end()) == boot::dsdt_aml({.vcpus = 1}));
}

TEST_CASE("boot: ACPI MADT lists one enabled local APIC per vCPU (1, 4, 254) and the IOAPIC") {
  for (uint32_t vcpus : {1u, 4u, 254u}) {
    CAPTURE(vcpus);
    auto mem = memory();
    auto rsdp = boot::write_acpi_tables(mem, {.vcpus = vcpus});
    REQUIRE(rsdp);
    const ParsedTables t = parse(mem, *rsdp);
    const Bytes& madt = t.tables.at("APIC");
    acpi::MadtHeader h;
    std::memcpy(&h, madt.data(), sizeof h);
    CHECK(val(h.local_apic_address) == layout::kLapicAddr);
    CHECK(val(h.header.revision) == 5);
    auto entries = madt_entries(madt);
    REQUIRE(entries[0].size() == vcpus);
    for (uint32_t i = 0; i < vcpus; ++i) {
      const Bytes& e = entries[0][i];
      REQUIRE(e.size() == 8);
      CHECK(e[2] == i);  // ACPI processor UID
      CHECK(e[3] == i);  // APIC id
      CHECK(get_at<uint32_t>(e, 4) == acpi::kMadtLapicEnabled);
    }
    REQUIRE(entries[1].size() == 1);
    const Bytes& io = entries[1][0];
    REQUIRE(io.size() == 12);
    CHECK(get_at<uint32_t>(io, 4) == layout::kIoapicAddr);
    CHECK(get_at<uint32_t>(io, 8) == 0);  // GSI base
    CHECK(entries[2].empty());            // no interrupt source overrides: GSI n = IRQ n under KVM
    REQUIRE(entries[4].size() == 1);      // LINT1 = NMI on all processors
    CHECK(entries[4][0][2] == 0xff);
    CHECK(entries[4][0][5] == 1);
  }
}

TEST_CASE("boot: ACPI extra DSDT AML is appended") {
  const Bytes extra = aml::scope("\\_SB_", aml::device("VGEN", aml::name("_HID", aml::string("VMGENCTR"))));
  auto tables = boot::build_acpi_tables({.vcpus = 1, .extra_dsdt_aml = extra});
  REQUIRE(tables);
  const Bytes body = boot::dsdt_aml({.vcpus = 1, .extra_dsdt_aml = extra});
  REQUIRE(body.size() > extra.size());
  CHECK(Bytes(body.end() - static_cast<long>(extra.size()), body.end()) == extra);
  auto mem = memory();
  REQUIRE(mem.write(Gpa(tables->base), tables->bytes));
  const ParsedTables t = parse(mem, tables->rsdp);
  acpi::Fadt f;
  std::memcpy(&f, t.tables.at("FACP").data(), sizeof f);
  const Bytes dsdt = read_table(mem, f.x_dsdt);
  CHECK(Bytes(dsdt.begin() + sizeof(acpi::SdtHeader), dsdt.end()) == body);
}

TEST_CASE("boot: the reset vector writes the FADT reset value to the reset register, after the tables") {
  // objdump -D -b binary -m i8086 of these bytes: cli; mov $0x602,%dx; mov $0x1,%al; out %al,(%dx);
  // hlt; jmp (to the hlt).
  const auto code = boot::reset_vector_code();
  const std::array<uint8_t, 10> want = {0xfa, 0xba, 0x02, 0x06, 0xb0, 0x01, 0xee, 0xf4, 0xeb, 0xfd};
  CHECK(std::equal(want.begin(), want.end(), code.begin()));
  CHECK(layout::kAcpiResetPort == 0x602);
  CHECK(layout::kAcpiResetValue == 0x01);
  CHECK(layout::kResetVector == 0xffff0);  // 0xF000:0xFFF0
  CHECK(layout::kAcpiEnd <= layout::kResetVector);

  auto mem = memory();
  REQUIRE(boot::write_reset_vector(mem));
  auto at = mem.slice(vmm::Gpa(layout::kResetVector), code.size());
  REQUIRE(at);
  CHECK(std::equal(code.begin(), code.end(), at->begin()));
  // The largest ACPI image still ends before the vector.
  auto rsdp = boot::write_acpi_tables(mem, {.vcpus = 254});
  REQUIRE(rsdp);
  CHECK(std::equal(code.begin(), code.end(), at->begin()));
}
