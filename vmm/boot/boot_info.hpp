// The boot information handed to the guest, in the two forms we speak: the Linux zero page
// (struct boot_params) and PVH's struct hvm_start_info.
#pragma once

#include <asm/bootparam.h>

#include <cstdint>
#include <span>

#include "vmm/boot/e820.hpp"
#include "vmm/boot/kernel.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"

namespace vmm::boot {

static_assert(sizeof(boot_params) == 4096, "struct boot_params is the 4 KiB zero page");

/// Where the loader put everything the boot information points at.
struct BootInfo {
  uint64_t cmdline_addr = 0;
  uint64_t cmdline_len = 0;  ///< without the NUL
  uint64_t initrd_addr = 0;
  uint64_t initrd_size = 0;  ///< 0: no initrd
  uint64_t rsdp_addr = 0;
  std::span<const E820Entry> e820 = {};
};

/// Xen's PVH start info, version 1 (xen/include/public/arch-x86/hvm/start_info.h).
struct hvm_start_info {
  uint32_t magic;           ///< kHvmStartMagic
  uint32_t version;         ///< 1: memmap fields present
  uint32_t flags;
  uint32_t nr_modules;
  uint64_t modlist_paddr;   ///< hvm_modlist_entry[nr_modules]
  uint64_t cmdline_paddr;   ///< NUL-terminated
  uint64_t rsdp_paddr;
  uint64_t memmap_paddr;    ///< hvm_memmap_table_entry[memmap_entries]
  uint32_t memmap_entries;
  uint32_t reserved;
};
static_assert(sizeof(hvm_start_info) == 56);

/// One module (here: the initrd) for a PVH guest.
struct hvm_modlist_entry {
  uint64_t paddr;
  uint64_t size;
  uint64_t cmdline_paddr;
  uint64_t reserved;
};
static_assert(sizeof(hvm_modlist_entry) == 32);

/// One memory map entry for a PVH guest; the types are e820's.
struct hvm_memmap_table_entry {
  uint64_t addr;
  uint64_t size;
  uint32_t type;
  uint32_t reserved;
};
static_assert(sizeof(hvm_memmap_table_entry) == 24);

inline constexpr uint32_t kHvmStartMagic = 0x336ec578;

/// Builds the zero page (Linux boot protocol, Documentation/arch/x86/boot.rst and zero-page.rst):
/// zeroed, then the image's setup header copied to 0x1F1 (bzImage), type_of_loader 0xff, heap,
/// command line, initrd, e820 table and RSDP. For an ELF vmlinux (no setup header) the fields a
/// 64-bit kernel reads are filled in (boot flag, "HdrS", kernel_alignment).
Result<boot_params> build_zero_page(const LoadedKernel& kernel, const BootInfo& info);

/// Builds the zero page and writes it at layout::kZeroPage.
Result<> write_zero_page(const GuestMemory& memory, const LoadedKernel& kernel, const BootInfo& info);

/// Writes hvm_start_info (layout::kPvhStartInfo), the initrd as the one module
/// (layout::kPvhModList) and the memory map (layout::kPvhMemmap).
Result<> write_pvh_start_info(const GuestMemory& memory, const BootInfo& info);

}  // namespace vmm::boot
