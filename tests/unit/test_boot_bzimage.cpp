// bzImage kernels (Linux boot protocol, 64-bit entry): malformed images are refused with one clear
// error naming the file; good ones are loaded with a zero page built from their setup header.
#include <doctest/doctest.h>

#include <cstdlib>

#include "test_boot_helpers.hpp"
#include "vmm/boot/boot.hpp"
#include "vmm/boot/boot_info.hpp"
#include "vmm/boot/bzimage.hpp"
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
// Loads `image` and checks the error names the file and contains `what`, on one line.
void check_refused(const Bytes& image, std::string_view what, std::string cmdline = "console=ttyS0",
                   uint64_t ram = kRam) {
  TempFile f(image);
  auto mem = memory(ram);
  auto r = boot::load(mem, config(f.path(), std::move(cmdline)));
  REQUIRE_FALSE(r);
  const std::string& err = r.error().message();
  INFO("error: " << err);
  CHECK(err.find(f.name()) != std::string::npos);
  CHECK(err.find(what) != std::string::npos);
  CHECK(err.find('\n') == std::string::npos);
}

}  // namespace

// ---- Malformed input ----------------------------------------------------------------------------

TEST_CASE("boot: bzImage truncated") {
  const Bytes img = make_bzimage({});
  check_refused(Bytes(img.begin(), img.begin() + 0x210), "truncated bzImage: setup header ends at 0x26c");
  check_refused(Bytes(img.begin(), img.begin() + 0x300), "truncated bzImage: setup code is 0xa00 bytes");
  check_refused(Bytes(img.begin(), img.begin() + 0xa00), "truncated bzImage: setup code");
  check_refused(Bytes(img.begin(), img.end() - 0x100), "the header's syssize says 0x4000");
  // Too short to hold the boot flag and "HdrS": not recognised at all.
  check_refused(Bytes(img.begin(), img.begin() + 0x204), "not an ELF or bzImage kernel");
}

TEST_CASE("boot: bzImage wrong magic") {
  Bytes img = make_bzimage({});
  img[0x205] = 'X';  // "HdrX"
  check_refused(img, "not an ELF or bzImage kernel");
  img = make_bzimage({});
  img[0x1fe] = 0;  // boot flag
  check_refused(img, "not an ELF or bzImage kernel");
  // The loader itself checks too, when called directly.
  img = make_bzimage({});
  img[0x202] = 'h';
  TempFile f(img);
  auto file = boot::ImageFile::open(f.path());
  REQUIRE(file);
  auto mem = memory();
  auto r = boot::load_bzimage(mem, *file);
  REQUIRE_FALSE(r);
  CHECK(r.error().message().find("not a bzImage") != std::string::npos);
}

TEST_CASE("boot: bzImage boot protocol too old") {
  check_refused(make_bzimage({.version = 0x020b}), "boot protocol 2.11 is too old (need 2.12 or newer)");
  check_refused(make_bzimage({.version = 0x0200}), "boot protocol 2.00 is too old");
}

TEST_CASE("boot: bzImage without a 64-bit entry (XLF_KERNEL_64)") {
  check_refused(make_bzimage({.xloadflags = XLF_CAN_BE_LOADED_ABOVE_4G}), "XLF_KERNEL_64 not set");
}

TEST_CASE("boot: bzImage with huge setup_sects") {
  check_refused(make_bzimage({.setup_sects = 255, .kernel = {}}), "setup code is 0x20000 bytes (setup_sects 255)");
  Bytes img = make_bzimage({});
  img[0x1f1] = 200;  // claims 100 KiB of setup in a 20 KiB file
  check_refused(img, "setup_sects 200");
}

TEST_CASE("boot: bzImage setup header too short, zImage, bad load address") {
  check_refused(make_bzimage({.jump_len = 0x40}), "too short for boot protocol 2.12");
  check_refused(make_bzimage({.loadflags = 0}), "zImage");
  check_refused(make_bzimage({.pref_address = 0x10000}), "load address 0x10000 is below 1 MiB");
  check_refused(make_bzimage({.init_size = 60 * kMiB}), "needs guest RAM [0x1000000, 0x4c00000)");
  check_refused(make_bzimage({.pref_address = uint64_t{1} << 40}), "needs guest RAM");
}

TEST_CASE("boot: bzImage command line longer than cmdline_size") {
  check_refused(make_bzimage({.cmdline_size = 16}), "command line is 17 bytes, the kernel accepts at most 16",
                std::string(17, 'a'));
  check_refused(make_bzimage({}), "contains a NUL", std::string("a\0b", 3));
  // Longer than the area layout reserves, even if the kernel says it takes more.
  check_refused(make_bzimage({.cmdline_size = 0x100000}), "at most 65535", std::string(0x10000, 'a'));
  // Exactly cmdline_size is fine.
  TempFile f(make_bzimage({.cmdline_size = 16}));
  auto mem = memory();
  CHECK(boot::load(mem, config(f.path(), std::string(16, 'a'))));
}

TEST_CASE("boot: a non-relocatable bzImage runs at pref_address: init_size bytes there are RAM and hold no initrd") {
  // It is loaded at 1 MiB and decompresses itself to pref_address (16 MiB), into init_size (2 MiB).
  const BzSpec spec{.relocatable = 0, .pref_address = 16 * kMiB, .init_size = static_cast<uint32_t>(2 * kMiB),
                    .initrd_addr_max = static_cast<uint32_t>(20 * kMiB - 1)};
  TempFile kernel(make_bzimage(spec));
  TempFile initrd(pattern(10 * kMiB));
  auto mem = memory();
  auto r = boot::load(mem, config(kernel.path(), "", initrd.path()));
  if (!r) FAIL(r.error().message());
  auto bp = mem.read_obj<boot_params>(Gpa(layout::kZeroPage));
  REQUIRE(bp);
  // As high as it goes below 20 MiB ([10, 20) MiB) would cross [16, 18) MiB: below 16 MiB instead.
  CHECK(val(bp->hdr.ramdisk_image) == 6 * kMiB);
  // No room outside the range: refused, saying why.
  TempFile big(pattern(15 * kMiB + 1));
  auto mem2 = memory();
  auto full = boot::load(mem2, config(kernel.path(), "", big.path()));
  REQUIRE_FALSE(full);
  CHECK(full.error().message().find("outside [0x1000000, 0x1200000), where it runs") != std::string::npos);
  // Where it runs must be RAM: 17 MiB is not enough.
  check_refused(make_bzimage(spec), "(not relocatable) runs at [0x1000000, 0x1200000) (pref_address + init_size) but low RAM",
                "console=ttyS0", 17 * kMiB);
  check_refused(make_bzimage({.relocatable = 0, .pref_address = 0x8000}), "(not relocatable) runs at [0x8000,");
}

TEST_CASE("boot: initrd too large, missing, and limited by initrd_addr_max") {
  auto mem = memory(8 * kMiB);
  TempFile kernel(make_bzimage({.relocatable = 0, .pref_address = kMiB, .init_size = static_cast<uint32_t>(kMiB)}));
  TempFile big(Bytes(7 * kMiB, 1));
  auto r = boot::load(mem, config(kernel.path(), "", big.path()));
  REQUIRE_FALSE(r);
  CHECK(r.error().message().starts_with(
      fmt::format("initrd {} ({} bytes) does not fit in guest RAM below 0x800000", big.name(), 7 * kMiB)));

  auto missing = boot::load(mem, config(kernel.path(), "", std::filesystem::path("/nonexistent/initrd.img")));
  REQUIRE_FALSE(missing);
  CHECK(missing.error().message() == "initrd: /nonexistent/initrd.img: No such file or directory");

  auto mem64 = memory();
  TempFile limited(make_bzimage({.initrd_addr_max = 0x3fffff}));
  TempFile small(pattern(0x1800));
  auto ok = boot::load(mem64, config(limited.path(), "", small.path()));
  // The kernel occupies [16 MiB, 18 MiB): nothing fits between it and the 4 MiB limit.
  REQUIRE_FALSE(ok);
  CHECK(ok.error().message().find("below 0x400000") != std::string::npos);
  TempFile low(make_bzimage({.relocatable = 0, .initrd_addr_max = 0x3fffff}));
  auto ok2 = boot::load(mem64, config(low.path(), "", small.path()));
  REQUIRE_MESSAGE(ok2, ok2.error().message());
  auto bp = mem64.read_obj<boot_params>(Gpa(layout::kZeroPage));
  REQUIRE(bp);
  CHECK(val(bp->hdr.ramdisk_image) == 0x3fe000);  // highest page-aligned start ending <= 4 MiB
  CHECK(val(bp->hdr.ramdisk_size) == 0x1800);
}

// ---- Good kernels -------------------------------------------------------------------------------

TEST_CASE("boot: bzImage loads at pref_address with a zero page from its setup header") {
  const BzSpec spec{};
  const Bytes img = make_bzimage(spec);
  TempFile f(img);
  TempFile initrd(pattern(0x3456, 5));
  auto mem = memory();
  auto entry = boot::load(mem, config(f.path(), "console=ttyS0 quiet", initrd.path(), 4));
  REQUIRE_MESSAGE(entry, entry.error().message());
  CHECK(entry->mode == boot::EntryMode::Linux64);
  CHECK(entry->entry == 0x1000200);
  CHECK(entry->boot_info == layout::kZeroPage);

  Bytes kernel(spec.kernel.size());
  REQUIRE(mem.read(Gpa(0x1000000), kernel));
  CHECK(kernel == spec.kernel);

  auto bp = mem.read_obj<boot_params>(Gpa(layout::kZeroPage));
  REQUIRE(bp);
  // The header is the image's, with the loader's fields filled in.
  CHECK(val(bp->hdr.header) == 0x53726448);
  CHECK(val(bp->hdr.version) == 0x020f);
  CHECK(val(bp->hdr.pref_address) == 0x1000000);
  CHECK(val(bp->hdr.init_size) == spec.init_size);
  CHECK(val(bp->hdr.type_of_loader) == 0xff);
  CHECK(val(bp->hdr.loadflags) == (LOADED_HIGH | CAN_USE_HEAP));
  CHECK(val(bp->hdr.heap_end_ptr) == 0xfe00);
  CHECK(val(bp->hdr.cmd_line_ptr) == layout::kCmdline);
  CHECK(val(bp->hdr.setup_data) == 0);
  CHECK(val(bp->hdr.ramdisk_size) == 0x3456);
  CHECK(val(bp->hdr.ramdisk_image) % 4096 == 0);
  CHECK(val(bp->hdr.ramdisk_image) + 0x3456 <= kRam);
  CHECK(val(bp->hdr.ramdisk_image) + 0x3456 + 4096 > kRam);
  CHECK(val(bp->acpi_rsdp_addr) == layout::kAcpiStart);
  CHECK(val(bp->sentinel) == 0);
  // Byte for byte, the parts of the header the loader does not own are the image's.
  Bytes zp(0x26c);
  REQUIRE(mem.read(Gpa(layout::kZeroPage), zp));
  CHECK(std::equal(zp.begin() + 0x1f1, zp.begin() + 0x210, img.begin() + 0x1f1));  // up to type_of_loader
  CHECK(std::equal(zp.begin() + 0x228 + 4, zp.begin() + 0x26c, img.begin() + 0x228 + 4));  // after cmd_line_ptr

  Bytes cmdline(20);
  REQUIRE(mem.read(Gpa(layout::kCmdline), cmdline));
  CHECK(std::string(cmdline.begin(), cmdline.end()) == std::string("console=ttyS0 quiet\0", 20));

  REQUIRE(val(bp->e820_entries) == 4);  // with the PCI ECAM reserved
  CHECK(val(bp->e820_table[0].addr) == 0);
  CHECK(val(bp->e820_table[0].size) == 0x9fc00);
  CHECK(val(bp->e820_table[0].type) == 1);
  CHECK(val(bp->e820_table[1].addr) == 0x9fc00);
  CHECK(val(bp->e820_table[1].type) == 2);
  CHECK(val(bp->e820_table[2].addr) == kMiB);
  CHECK(val(bp->e820_table[2].size) == kRam - kMiB);
  CHECK(val(bp->e820_table[2].type) == 1);
}

TEST_CASE("boot: bzImage non-relocatable loads at 1 MiB, setup_sects 0 means 4") {
  const BzSpec spec{.setup_sects = 0, .relocatable = 0};
  TempFile f(make_bzimage(spec));
  auto mem = memory();
  auto entry = boot::load(mem, config(f.path()));
  REQUIRE_MESSAGE(entry, entry.error().message());
  CHECK(entry->entry == 0x100200);
  Bytes kernel(spec.kernel.size());
  REQUIRE(mem.read(Gpa(0x100000), kernel));
  CHECK(kernel == spec.kernel);
}

TEST_CASE("boot: the real Debian bzImage (VMM_TEST_BZIMAGE)") {
  const char* env = std::getenv("VMM_TEST_BZIMAGE");
  if (env == nullptr || *env == '\0') {
    FAIL("VMM_TEST_BZIMAGE is not set: run guest-images/linux/fetch-kernel.sh and set VMM_TEST_BZIMAGE to the "
         "bzImage path it prints");
    return;
  }
  const std::filesystem::path path(env);
  REQUIRE_MESSAGE(std::filesystem::is_regular_file(path), "VMM_TEST_BZIMAGE=" << env << " is not a file");
  TempFile initrd(pattern(0x10000, 11));

  auto mem = memory(256 * kMiB);
  auto entry = boot::load(mem, config(path, "console=ttyS0 noxsave", initrd.path(), 2));
  REQUIRE_MESSAGE(entry, entry.error().message());
  CHECK(entry->mode == boot::EntryMode::Linux64);
  auto bp = mem.read_obj<boot_params>(Gpa(layout::kZeroPage));
  REQUIRE(bp);
  CHECK(val(bp->hdr.version) >= boot::kMinBootProtocol);
  CHECK((val(bp->hdr.xloadflags) & XLF_KERNEL_64) != 0);
  const uint64_t load = val(bp->hdr.relocatable_kernel) ? val(bp->hdr.pref_address) : 0x100000;
  CHECK(entry->entry == load + 0x200);
  CHECK(val(bp->hdr.type_of_loader) == 0xff);
  CHECK(val(bp->hdr.cmd_line_ptr) == layout::kCmdline);
  CHECK(val(bp->acpi_rsdp_addr) == layout::kAcpiStart);
  CHECK(val(bp->e820_entries) == 4);  // with the PCI ECAM reserved
  // The protected-mode kernel is in guest memory byte for byte.
  auto file = boot::ImageFile::open(path);
  REQUIRE(file);
  const uint64_t setup = (uint64_t{val(bp->hdr.setup_sects) ? val(bp->hdr.setup_sects) : uint8_t{4}} + 1) * 512;
  const uint64_t size = file->size() - setup;
  for (uint64_t off : {uint64_t{0}, size / 2, size - 4096}) {
    auto want = file->read_vector(setup + off, 4096, "kernel");
    REQUIRE(want);
    Bytes got(4096);
    REQUIRE(mem.read(Gpa(load + off), got));
    CHECK(got == *want);
  }
  // The initrd sits above everything the kernel needs (init_size) and below initrd_addr_max.
  CHECK(val(bp->hdr.ramdisk_size) == 0x10000);
  CHECK(val(bp->hdr.ramdisk_image) >= load + std::max<uint64_t>(size, val(bp->hdr.init_size)));
  CHECK(uint64_t{val(bp->hdr.ramdisk_image)} + 0x10000 - 1 <= val(bp->hdr.initrd_addr_max));

  // Debian's kernel needs pref_address + init_size (~68 MiB): 64 MiB of RAM is refused clearly.
  auto small = memory(64 * kMiB);
  auto refused = boot::load(small, config(path));
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message().find("needs guest RAM") != std::string::npos);
  CHECK(refused.error().message().find(path.string()) != std::string::npos);
}
