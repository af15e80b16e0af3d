// The boot layout: e820 map, initrd placement, format detection, zero-page and PVH limits, and the
// errors load() gives before any kernel parsing (missing file, directory, too little RAM).
#include <doctest/doctest.h>
#include <fmt/core.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_boot_helpers.hpp"
#include "vmm/boot/boot.hpp"
#include "vmm/boot/boot_info.hpp"
#include "vmm/boot/e820.hpp"
#include "vmm/boot/image_file.hpp"
#include "vmm/boot/initrd.hpp"
#include "vmm/boot/kernel.hpp"
#include "vmm/base/layout.hpp"
#include "vmm/x86_boot.hpp"

using namespace boot_test;
using vmm::Gpa;
using vmm::GuestMemory;
namespace boot = vmm::boot;
namespace layout = vmm::layout;
using boot::E820Entry;
using boot::E820Type;

namespace {
constexpr uint64_t kMiB = 1 << 20;
GuestMemory memory(uint64_t size) { return loader_memory(size); }
}  // namespace

TEST_CASE("boot: e820 map for small, ordinary and above-4-GiB RAM") {
  {
    auto mem = memory(64 * kMiB);
    const std::vector<E820Entry> want = {
        {.addr = 0, .size = 0x9fc00, .type = E820Type::Ram},
        {.addr = 0x9fc00, .size = 0x100000 - 0x9fc00, .type = E820Type::Reserved},
        {.addr = kMiB, .size = 63 * kMiB, .type = E820Type::Ram},
        {.addr = layout::kPciEcamStart, .size = layout::kPciEcamSize, .type = E820Type::Reserved},  // MCFG's ECAM
    };
    CHECK(boot::build_e820(mem) == want);
  }
  {
    // RAM above the 3 GiB hole start moves to 4 GiB (the mapping is reserved, never touched here).
    const uint64_t size = layout::kMmioHoleStart + 256 * kMiB;
    auto mem = memory(size);
    const auto map = boot::build_e820(mem);
    REQUIRE(map.size() == 5);
    CHECK(map[2] == E820Entry{.addr = kMiB, .size = layout::kMmioHoleStart - kMiB, .type = E820Type::Ram});
    CHECK(map[3].addr == layout::kPciEcamStart);
    CHECK(map[4] == E820Entry{.addr = layout::kMmioHoleEnd, .size = 256 * kMiB, .type = E820Type::Ram});
  }
  {
    auto mem = memory(512 * 1024);  // below the EBDA: one range of RAM (and the ECAM)
    const auto map = boot::build_e820(mem);
    REQUIRE(map.size() == 2);
    CHECK(map[0] == E820Entry{.addr = 0, .size = 512 * 1024, .type = E820Type::Ram});
  }
  {
    auto mem = memory(kMiB);  // exactly 1 MiB: no RAM above it
    const auto map = boot::build_e820(mem);
    REQUIRE(map.size() == 3);
    CHECK(map[1].type == E820Type::Reserved);
  }
}

TEST_CASE("boot: initrd placement is page-aligned, as high as possible, above the kernel") {
  CHECK(boot::place_initrd(0x1800, 0x200000, 0x400000) == 0x3fe000);
  CHECK(boot::place_initrd(0x1000, 0x200000, 0x400000) == 0x3ff000);
  CHECK(boot::place_initrd(0x1000, 0x200000, 0x400fff) == 0x3ff000);  // end limit not page-aligned
  CHECK(boot::place_initrd(0, 0x200000, 0x400000) == 0x400000);
  CHECK(boot::place_initrd(0x200000, 0x200000, 0x400000) == 0x200000);  // exactly fits
  CHECK_FALSE(boot::place_initrd(0x200001, 0x200000, 0x400000));
  CHECK_FALSE(boot::place_initrd(0x1000, 0x200001, 0x201fff));  // kernel end rounds up past the room
  CHECK_FALSE(boot::place_initrd(UINT64_MAX, 0, 0x400000));
  CHECK_FALSE(boot::place_initrd(0x1000, UINT64_MAX, UINT64_MAX));
  // A range to avoid (where a non-relocatable kernel runs): placed below it, or nowhere.
  CHECK(boot::place_initrd(0x1000, 0x200000, 0x400000, {.start = 0x3ff800, .end = 0x500000}) == 0x3fe000);
  CHECK(boot::place_initrd(0x1000, 0x200000, 0x400000, {.start = 0x400000, .end = 0x500000}) == 0x3ff000);  // touching is fine
  CHECK(boot::place_initrd(0x1000, 0x200000, 0x400000, {.start = 0x100000, .end = 0x200000}) == 0x3ff000);
  CHECK_FALSE(boot::place_initrd(0x1000, 0x200000, 0x400000, {.start = 0x200800, .end = 0x400000}));
  CHECK_FALSE(boot::place_initrd(0x2000, 0x0, 0x400000, {.start = 0x1000, .end = 0x400000}));
  CHECK(boot::place_initrd(0x1000, 0x200000, 0x400000, {.start = 0x300000, .end = 0x300000}) == 0x3ff000);  // empty
}

TEST_CASE("boot: kernel format detection from content") {
  const auto detect = [](const Bytes& content) {
    TempFile f(content);
    auto file = boot::ImageFile::open(f.path());
    REQUIRE(file);
    return boot::detect_format(*file);
  };
  CHECK(detect(make_elf({{.paddr = kMiB, .data = pattern(16)}}, kMiB)) == boot::KernelFormat::Elf);
  CHECK(detect(make_bzimage({})) == boot::KernelFormat::BzImage);
  CHECK(detect(Bytes{0x7f, 'E', 'L', 'F'}) == boot::KernelFormat::Elf);  // then refused by the ELF loader
  auto none = detect(Bytes(0x300, 0));
  REQUIRE_FALSE(none);
  CHECK(none.error().message().ends_with(": not an ELF or bzImage kernel"));
}

TEST_CASE("boot: load refuses a missing kernel, a directory, and too little RAM") {
  auto mem = memory(64 * kMiB);
  auto missing = boot::load(mem, config("/nonexistent/vmlinuz"));
  REQUIRE_FALSE(missing);
  CHECK(missing.error().message() == "kernel: /nonexistent/vmlinuz: No such file or directory");

  auto dir = boot::load(mem, config(std::filesystem::temp_directory_path()));
  REQUIRE_FALSE(dir);
  CHECK(dir.error().message().find("is a directory") != std::string::npos);

  auto tiny = memory(kMiB);
  TempFile f(make_elf({{.paddr = kMiB, .data = pattern(16)}}, kMiB));
  auto small = boot::load(tiny, config(f.path()));
  REQUIRE_FALSE(small);
  CHECK(small.error().message().find("too small") != std::string::npos);
}

TEST_CASE("boot: load refuses a vCPU count the MADT cannot describe") {
  auto mem = memory(64 * kMiB);
  TempFile f(make_elf({{.paddr = kMiB, .data = pattern(16)}, {.type = PT_NOTE, .data = pvh_note(kMiB)}}, kMiB));
  auto r = boot::load(mem, config(f.path(), "", std::nullopt, 255));
  REQUIRE_FALSE(r);
  CHECK(r.error().message().find("255 vCPUs") != std::string::npos);
}

TEST_CASE("boot: zero page and PVH map refuse more entries than they hold") {
  std::vector<E820Entry> map(129, E820Entry{.addr = 0, .size = 0x1000, .type = E820Type::Ram});
  const boot::LoadedKernel kernel{};
  auto bp = boot::build_zero_page(kernel, {.e820 = map});
  REQUIRE_FALSE(bp);
  CHECK(bp.error().message().find("129 e820 entries") != std::string::npos);
  map.resize(128);
  CHECK(boot::build_zero_page(kernel, {.e820 = map}));

  auto mem = memory(8 * kMiB);
  map.resize(layout::kPvhMemmapMaxEntries + 1);
  auto pvh = boot::write_pvh_start_info(mem, {.e820 = map});
  REQUIRE_FALSE(pvh);
  CHECK(pvh.error().message().find("PVH map") != std::string::npos);
  map.resize(layout::kPvhMemmapMaxEntries);
  CHECK(boot::write_pvh_start_info(mem, {.e820 = map}));
  // The last entry ends right below the zero page.
  CHECK(layout::kPvhMemmap + map.size() * sizeof(boot::hvm_memmap_table_entry) <= layout::kZeroPage);
}

TEST_CASE("boot: zero page for a vmlinux ELF fills the fields a 64-bit kernel reads") {
  const std::vector<E820Entry> map = {{.addr = 0, .size = 0x9fc00, .type = E820Type::Ram}};
  const boot::LoadedKernel kernel{.cmdline_max = 2047};
  auto bp = boot::build_zero_page(kernel, {.cmdline_addr = layout::kCmdline, .cmdline_len = 3, .initrd_addr = 0x2000000,
                                           .initrd_size = 0x1000, .rsdp_addr = 0xe0000, .e820 = map});
  REQUIRE(bp);
  CHECK(val(bp->hdr.boot_flag) == 0xaa55);
  CHECK(val(bp->hdr.header) == 0x53726448);
  CHECK(val(bp->hdr.kernel_alignment) == 0x1000000);
  CHECK(val(bp->hdr.cmdline_size) == 2047);
  CHECK(val(bp->hdr.ramdisk_image) == 0x2000000);
  CHECK(val(bp->hdr.ramdisk_size) == 0x1000);
  CHECK(val(bp->acpi_rsdp_addr) == 0xe0000);
  CHECK(val(bp->e820_entries) == 1);
  // An initrd above 4 GiB cannot be described in the 32-bit fields.
  auto high = boot::build_zero_page(kernel, {.initrd_addr = 0xffffff000, .initrd_size = 0x2000, .e820 = map});
  REQUIRE_FALSE(high);
}

// The boot GDT's five entries, then the empty IDT: the IDT was written over the TSS descriptor
// (entry 4, TR's selector 0x20), which a guest reusing the boot GDT would fault on.
TEST_CASE("boot: the boot GDT keeps its TSS descriptor, the empty IDT after it") {
  auto mem = memory(4 * kMiB);
  REQUIRE(vmm::x86::write_gdt(mem));
  CHECK(*mem.read_obj<uint64_t>(vmm::Gpa(vmm::layout::kGdtAddr + 4 * 8)) == 0x00808b000000ffffull);
  CHECK(*mem.read_obj<uint64_t>(vmm::Gpa(vmm::layout::kGdtAddr + 1 * 8)) == 0x00af9b000000ffffull);
  CHECK(*mem.read_obj<uint64_t>(vmm::Gpa(vmm::layout::kIdtAddr)) == 0);
}

// A FIFO as the kernel: refused at once (its open waited for a writer, for ever).
TEST_CASE("boot: a FIFO as the kernel is refused, not waited on") {
  auto mem = memory(64 * kMiB);
  const auto fifo = std::filesystem::temp_directory_path() / fmt::format("vmm-boot-fifo-{}", ::getpid());
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  auto r = boot::load(mem, config(fifo));
  std::filesystem::remove(fifo);
  REQUIRE_FALSE(r);
  CHECK(r.error().message() == "kernel: " + fifo.string() + ": not a regular file");
}
