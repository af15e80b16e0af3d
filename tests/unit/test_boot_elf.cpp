// ELF and PVH kernels: malformed files are refused with one clear error naming the file; good
// ones are loaded where their program headers say, with the PVH start info or zero page.
#include <doctest/doctest.h>

#include "test_boot_helpers.hpp"
#include "vmm/boot/boot.hpp"
#include "vmm/boot/boot_info.hpp"
#include "vmm/boot/elf.hpp"
#include "vmm/boot/image_file.hpp"
#include "vmm/base/layout.hpp"

using namespace boot_test;
using vmm::Gpa;
using vmm::GuestMemory;
namespace boot = vmm::boot;
namespace layout = vmm::layout;

namespace {

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kRam = 64 * kMiB;

GuestMemory memory(uint64_t size = kRam) { return loader_memory(size); }
// A good PVH ELF64: code at 1 MiB (+ bss), the entry note in a PT_NOTE.
Bytes good_pvh_elf() {
  return make_elf({{.type = PT_LOAD, .paddr = kMiB, .data = pattern(0x3000), .memsz = 0x5000},
                   {.type = PT_NOTE, .paddr = 0, .data = pvh_note(kMiB + 0x10, 8), .align = 4}},
                  kMiB);
}

// Loads `image` through boot::load and returns the error text ("" if it loaded).
std::string load_error(const Bytes& image, uint64_t ram = kRam, std::string* name = nullptr) {
  TempFile f(image);
  if (name) *name = f.name();
  auto mem = memory(ram);
  auto r = boot::load(mem, config(f.path(), "console=ttyS0"));
  return r ? std::string() : r.error().message();
}

// Checks that loading fails with one line that names the file and contains `what`.
void check_refused(const Bytes& image, std::string_view what, uint64_t ram = kRam) {
  std::string name;
  const std::string err = load_error(image, ram, &name);
  INFO("error: " << err);
  CHECK_FALSE(err.empty());
  CHECK(err.find(name) != std::string::npos);
  CHECK(err.find(what) != std::string::npos);
  CHECK(err.find('\n') == std::string::npos);
}

}  // namespace

// ---- Malformed input ----------------------------------------------------------------------------

TEST_CASE("boot: empty file and garbage are not kernels") {
  check_refused({}, "not an ELF or bzImage kernel");
  Bytes garbage(300, 'x');
  check_refused(garbage, "not an ELF or bzImage kernel");
  Bytes bad_magic = good_pvh_elf();
  bad_magic[3] = 'G';
  check_refused(bad_magic, "not an ELF or bzImage kernel");
}

TEST_CASE("boot: ELF loader refuses bad magic and identification") {
  auto mem = memory();
  Bytes img = good_pvh_elf();
  img[1] = 'X';
  {
    TempFile f(img);
    auto file = boot::ImageFile::open(f.path());
    REQUIRE(file);
    auto r = boot::load_elf(mem, *file);
    REQUIRE_FALSE(r);
    CHECK(r.error().message().find("bad ELF magic") != std::string::npos);
  }
  img = good_pvh_elf();
  img[EI_CLASS] = 3;
  check_refused(img, "ELF class 3");
  img = good_pvh_elf();
  img[EI_DATA] = ELFDATA2MSB;
  check_refused(img, "not little-endian");
  img = good_pvh_elf();
  put_at<uint16_t>(img, offsetof(Elf64_Ehdr, e_machine), EM_AARCH64);
  check_refused(img, "ELF machine");
  img = good_pvh_elf();
  put_at<uint16_t>(img, offsetof(Elf64_Ehdr, e_type), ET_REL);
  check_refused(img, "not an executable");
}

TEST_CASE("boot: ELF truncated header") {
  const Bytes img = good_pvh_elf();
  check_refused(Bytes(img.begin(), img.begin() + 40), "truncated ELF header (40 of 64 bytes)");
  check_refused(Bytes(img.begin(), img.begin() + 10), "truncated ELF header");
  Bytes img32 = make_elf({{.paddr = kMiB, .data = pattern(64)}, {.type = PT_NOTE, .data = pvh_note(kMiB)}}, kMiB,
                         false);
  check_refused(Bytes(img32.begin(), img32.begin() + 40), "truncated ELF header (40 of 52 bytes)");
}

TEST_CASE("boot: ELF program headers past the end of the file") {
  const Bytes img = good_pvh_elf();
  check_refused(Bytes(img.begin(), img.begin() + 100), "program headers");
  check_refused(Bytes(img.begin(), img.begin() + 100), "truncated");
  Bytes far = img;
  put_at<uint64_t>(far, offsetof(Elf64_Ehdr, e_phoff), 0x100000);
  check_refused(far, "run past the end of the file");
  Bytes overflow = img;  // e_phoff + table size wraps around
  put_at<uint64_t>(overflow, offsetof(Elf64_Ehdr, e_phoff), UINT64_MAX - 16);
  check_refused(overflow, "truncated");
}

TEST_CASE("boot: ELF header fields that cannot describe a kernel") {
  Bytes img = good_pvh_elf();
  put_at<uint16_t>(img, offsetof(Elf64_Ehdr, e_phentsize), 32);
  check_refused(img, "program header size 32");
  img = good_pvh_elf();
  put_at<uint16_t>(img, offsetof(Elf64_Ehdr, e_phnum), 0);
  check_refused(img, "no program headers");
  img = good_pvh_elf();
  put_at<uint16_t>(img, offsetof(Elf64_Ehdr, e_phnum), PN_XNUM);
  check_refused(img, "PN_XNUM");
  check_refused(make_elf({{.type = PT_NOTE, .data = pvh_note(kMiB)}}, kMiB), "no loadable (PT_LOAD) segment");
  check_refused(make_elf({{.paddr = kMiB, .data = pattern(64)}}, 0x200000), "entry point 0x200000 is outside");
  check_refused(make_elf({{.paddr = kMiB, .data = pattern(64)}, {.type = PT_NOTE, .data = pvh_note(0x300000, 8)}},
                         kMiB),
                "PVH entry point 0x300000 is outside");
  check_refused(make_elf({{.paddr = kMiB, .data = pattern(64)}}, kMiB, /*is64=*/false), "32-bit ELF without");
  // In RAM, but above 4 GiB (RAM above the MMIO hole): the boot page tables do not reach it.
  constexpr uint64_t k4G = vmm::layout::kMmioHoleEnd;
  check_refused(make_elf({{.paddr = k4G, .data = pattern(64)}}, k4G), "above 4 GiB", vmm::layout::kMmioHoleStart + 16 * kMiB);
  check_refused(make_elf({{.paddr = kMiB, .data = pattern(64)}, {.paddr = k4G, .data = pattern(64)}}, kMiB), "above 4 GiB",
                vmm::layout::kMmioHoleStart + 16 * kMiB);
}

TEST_CASE("boot: ELF segment data past the end of the file, with and without overflow") {
  Bytes img = good_pvh_elf();
  put_at<uint64_t>(img, phdr64_field(0, offsetof(Elf64_Phdr, p_filesz)), 0x100000);
  put_at<uint64_t>(img, phdr64_field(0, offsetof(Elf64_Phdr, p_memsz)), 0x100000);
  check_refused(img, "ELF program header 0: segment data");
  img = good_pvh_elf();  // p_offset + p_filesz wraps around to a small number
  put_at<uint64_t>(img, phdr64_field(0, offsetof(Elf64_Phdr, p_offset)), UINT64_MAX - 8);
  check_refused(img, "truncated");
  img = good_pvh_elf();
  check_refused(Bytes(img.begin(), img.begin() + 0x1000), "truncated");
}

TEST_CASE("boot: ELF p_filesz larger than p_memsz") {
  check_refused(make_elf({{.paddr = kMiB, .data = pattern(0x2000), .memsz = 0x1000}}, kMiB),
                "p_filesz 0x2000 is larger than p_memsz 0x1000");
}

TEST_CASE("boot: ELF segments outside RAM, below 1 MiB, straddling the end of RAM") {
  const auto elf_at = [](uint64_t paddr, uint64_t memsz) {
    return make_elf({{.paddr = paddr, .data = pattern(0x100), .memsz = memsz},
                     {.type = PT_NOTE, .data = pvh_note(paddr + 0x10 < paddr ? 0 : paddr)}},
                    paddr);
  };
  check_refused(elf_at(uint64_t{1} << 40, 0x1000), "outside guest RAM [0x0, 0x4000000)");
  check_refused(elf_at(0x8000, 0x1000), "below 1 MiB");
  check_refused(elf_at(0xfff00, 0x1000), "below 1 MiB");
  check_refused(elf_at(kRam - 0x800, 0x1000), "outside guest RAM");
  check_refused(elf_at(kRam, 0x100), "outside guest RAM");
  check_refused(elf_at(UINT64_MAX - 0x10, 0x100), "outside guest RAM");  // paddr + memsz wraps
  // In the MMIO hole between low RAM and 4 GiB.
  check_refused(elf_at(layout::kMmioHoleStart - 0x800, 0x1000), "outside guest RAM",
                layout::kMmioHoleStart + 16 * kMiB);
}

TEST_CASE("boot: ELF nothing is written when a later segment is bad") {
  auto mem = memory();
  const Bytes img = make_elf({{.paddr = 2 * kMiB, .data = pattern(0x1000)},
                              {.paddr = uint64_t{1} << 40, .data = pattern(0x10)},
                              {.type = PT_NOTE, .data = pvh_note(2 * kMiB)}},
                             2 * kMiB);
  TempFile f(img);
  auto r = boot::load(mem, config(f.path()));
  REQUIRE_FALSE(r);
  CHECK(r.error().message().find("ELF program header 1") != std::string::npos);
  auto first = mem.slice(Gpa(2 * kMiB), 0x1000);
  REQUIRE(first);
  CHECK(std::all_of(first->begin(), first->end(), [](uint8_t b) { return b == 0; }));
}

TEST_CASE("boot: ELF malformed notes") {
  SUBCASE("namesz runs past the segment") {
    Bytes note = pvh_note(kMiB);
    put_at<uint32_t>(note, 0, 0x1000);
    auto r = boot::find_pvh_entry(note, 4);
    REQUIRE_FALSE(r);
    CHECK(r.error().message().find("malformed ELF note at offset 0x0") != std::string::npos);
  }
  SUBCASE("descsz runs past the segment, and 0xffffffff sizes do not wrap") {
    Bytes note = pvh_note(kMiB);
    put_at<uint32_t>(note, 4, 0xffffffff);
    CHECK_FALSE(boot::find_pvh_entry(note, 4));
    put_at<uint32_t>(note, 0, 0xffffffff);
    CHECK_FALSE(boot::find_pvh_entry(note, 8));
  }
  SUBCASE("a bad note after a good one of another kind") {
    Bytes notes = elf_note("GNU", 3, pattern(20));
    Bytes bad = pvh_note(kMiB);
    put_at<uint32_t>(bad, 4, 64);
    notes.insert(notes.end(), bad.begin(), bad.end());
    auto r = boot::find_pvh_entry(notes, 4);
    REQUIRE_FALSE(r);
    CHECK(r.error().message().find("offset 0x24") != std::string::npos);
  }
  SUBCASE("PHYS32_ENTRY with a desc that is not an address") {
    auto r = boot::find_pvh_entry(elf_note("Xen", 18, pattern(2)), 4);
    REQUIRE_FALSE(r);
    CHECK(r.error().message().find("descsz 2") != std::string::npos);
  }
  SUBCASE("PHYS32_ENTRY above 4 GiB") {
    auto r = boot::find_pvh_entry(pvh_note(uint64_t{1} << 33, 8), 4);
    REQUIRE_FALSE(r);
    CHECK(r.error().message().find("above 4 GiB") != std::string::npos);
  }
  SUBCASE("header cut short: ignored as padding") {
    auto r = boot::find_pvh_entry(Bytes(11, 0), 4);
    REQUIRE(r);
    CHECK_FALSE(r->has_value());
  }
  SUBCASE("through the loader: names the file and the program header") {
    Bytes note = pvh_note(kMiB);
    put_at<uint32_t>(note, 4, 0x400);
    check_refused(make_elf({{.paddr = kMiB, .data = pattern(64)}, {.type = PT_NOTE, .data = note}}, kMiB),
                  "ELF program header 1: malformed ELF note");
  }
  SUBCASE("note segment past the end of the file") {
    Bytes img = good_pvh_elf();
    put_at<uint64_t>(img, phdr64_field(1, offsetof(Elf64_Phdr, p_offset)), UINT64_MAX - 4);
    check_refused(img, "notes at offset");
  }
}

// ---- Good kernels -------------------------------------------------------------------------------

TEST_CASE("boot: PVH note parsing finds the entry among other notes") {
  Bytes notes = elf_note("GNU", 3, pattern(20));
  const Bytes other_xen = elf_note("Xen", 1, pattern(8));
  const Bytes entry = pvh_note(0x1000123, 8);
  notes.insert(notes.end(), other_xen.begin(), other_xen.end());
  notes.insert(notes.end(), entry.begin(), entry.end());
  auto r = boot::find_pvh_entry(notes, 4);
  REQUIRE(r);
  REQUIRE(r->has_value());
  CHECK(**r == 0x1000123);
  // 8-byte alignment (ELF64 gABI).
  Bytes aligned8 = elf_note("GNU", 3, pattern(20), 8);
  const Bytes entry8 = elf_note("Xen", 18, Bytes{0x44, 0x33, 0x22, 0x11}, 8);
  aligned8.insert(aligned8.end(), entry8.begin(), entry8.end());
  auto r8 = boot::find_pvh_entry(aligned8, 8);
  REQUIRE(r8);
  REQUIRE(r8->has_value());
  CHECK(**r8 == 0x11223344);
  // No Xen note at all.
  auto none = boot::find_pvh_entry(elf_note("GNU", 3, pattern(20)), 4);
  REQUIRE(none);
  CHECK_FALSE(none->has_value());
}

TEST_CASE("boot: PVH ELF64 loads segments, command line, initrd and hvm_start_info") {
  auto mem = memory();
  // Poison the bss area to see that it is zeroed.
  auto bss = mem.slice(Gpa(kMiB + 0x3000), 0x2000);
  REQUIRE(bss);
  std::fill(bss->begin(), bss->end(), 0xaa);
  const Bytes initrd_data = pattern(10000, 9);
  TempFile kernel(good_pvh_elf());
  TempFile initrd(initrd_data);
  auto entry = boot::load(mem, config(kernel.path(), "hello world", initrd.path(), 2));
  REQUIRE_MESSAGE(entry, entry.error().message());
  CHECK(entry->mode == boot::EntryMode::Pvh32);
  CHECK(entry->entry == kMiB + 0x10);
  CHECK(entry->boot_info == layout::kPvhStartInfo);

  Bytes loaded(0x3000);
  REQUIRE(mem.read(Gpa(kMiB), loaded));
  CHECK(loaded == pattern(0x3000));
  CHECK(std::all_of(bss->begin(), bss->end(), [](uint8_t b) { return b == 0; }));

  auto si = mem.read_obj<boot::hvm_start_info>(Gpa(layout::kPvhStartInfo));
  REQUIRE(si);
  CHECK(si->magic == 0x336ec578);
  CHECK(si->version == 1);
  CHECK(si->cmdline_paddr == layout::kCmdline);
  Bytes cmdline(12);
  REQUIRE(mem.read(Gpa(layout::kCmdline), cmdline));
  CHECK(std::string(cmdline.begin(), cmdline.end()) == std::string("hello world\0", 12));
  CHECK(si->rsdp_paddr >= layout::kAcpiStart);
  CHECK(si->rsdp_paddr < layout::kAcpiEnd);
  Bytes sig(8);
  REQUIRE(mem.read(Gpa(si->rsdp_paddr), sig));
  CHECK(std::string(sig.begin(), sig.end()) == "RSD PTR ");

  REQUIRE(si->nr_modules == 1);
  CHECK(si->modlist_paddr == layout::kPvhModList);
  auto mod = mem.read_obj<boot::hvm_modlist_entry>(Gpa(si->modlist_paddr));
  REQUIRE(mod);
  CHECK(mod->size == initrd_data.size());
  CHECK(mod->paddr % 4096 == 0);
  CHECK(mod->paddr + mod->size <= kRam);
  CHECK(mod->paddr + 4096 + mod->size > kRam);  // as high as possible
  Bytes initrd_back(initrd_data.size());
  REQUIRE(mem.read(Gpa(mod->paddr), initrd_back));
  CHECK(initrd_back == initrd_data);

  REQUIRE(si->memmap_paddr == layout::kPvhMemmap);
  REQUIRE(si->memmap_entries == 4);  // with the PCI ECAM reserved
  const uint64_t want[3][3] = {{0, 0x9fc00, 1}, {0x9fc00, 0x60400, 2}, {kMiB, kRam - kMiB, 1}};
  for (uint32_t i = 0; i < 3; ++i) {
    auto e = mem.read_obj<boot::hvm_memmap_table_entry>(Gpa(si->memmap_paddr + i * 24));
    REQUIRE(e);
    CHECK(e->addr == want[i][0]);
    CHECK(e->size == want[i][1]);
    CHECK(e->type == want[i][2]);
    CHECK(e->reserved == 0);
  }
}

TEST_CASE("boot: PVH ELF32 with a 4-byte entry note, no initrd") {
  auto mem = memory();
  const Bytes img = make_elf({{.paddr = 2 * kMiB, .data = pattern(0x800), .memsz = 0x1000},
                              {.type = PT_NOTE, .data = pvh_note(2 * kMiB + 0x40, 4)}},
                             0, /*is64=*/false);
  TempFile f(img);
  auto entry = boot::load(mem, config(f.path(), "smp"));
  REQUIRE_MESSAGE(entry, entry.error().message());
  CHECK(entry->mode == boot::EntryMode::Pvh32);
  CHECK(entry->entry == 2 * kMiB + 0x40);
  auto si = mem.read_obj<boot::hvm_start_info>(Gpa(layout::kPvhStartInfo));
  REQUIRE(si);
  CHECK(si->nr_modules == 0);
  CHECK(si->modlist_paddr == 0);
  Bytes loaded(0x800);
  REQUIRE(mem.read(Gpa(2 * kMiB), loaded));
  CHECK(loaded == pattern(0x800));
}

TEST_CASE("boot: ELF64 vmlinux without a PVH note enters the 64-bit protocol with a zero page") {
  auto mem = memory();
  const Bytes img = make_elf({{.paddr = 16 * kMiB, .data = pattern(0x2000), .memsz = 0x3000}}, 16 * kMiB + 0x100);
  TempFile f(img);
  TempFile initrd(pattern(5000));
  auto entry = boot::load(mem, config(f.path(), "console=ttyS0", initrd.path()));
  REQUIRE_MESSAGE(entry, entry.error().message());
  CHECK(entry->mode == boot::EntryMode::Linux64);
  CHECK(entry->entry == 16 * kMiB + 0x100);
  CHECK(entry->boot_info == layout::kZeroPage);
  auto bp = mem.read_obj<boot_params>(Gpa(layout::kZeroPage));
  REQUIRE(bp);
  CHECK(val(bp->hdr.boot_flag) == 0xaa55);
  CHECK(val(bp->hdr.header) == 0x53726448);
  CHECK(val(bp->hdr.type_of_loader) == 0xff);
  CHECK(val(bp->hdr.cmd_line_ptr) == layout::kCmdline);
  CHECK(val(bp->hdr.ramdisk_size) == 5000);
  CHECK(val(bp->hdr.ramdisk_image) >= 16 * kMiB + 0x3000);
  CHECK(val(bp->hdr.ramdisk_image) % 4096 == 0);
  CHECK(val(bp->e820_entries) == 4);  // with the PCI ECAM reserved
  CHECK(val(bp->acpi_rsdp_addr) == layout::kAcpiStart);
}
