#include "vmm/boot/boot_info.hpp"

#include <cstddef>
#include <cstring>

#include "vmm/base/layout.hpp"

namespace vmm::boot {

namespace {

constexpr size_t kSetupHeaderOffset = 0x1f1;  // boot_params.hdr
static_assert(offsetof(boot_params, hdr) == kSetupHeaderOffset);
static_assert(offsetof(boot_params, acpi_rsdp_addr) == 0x70 && offsetof(boot_params, e820_table) == 0x2d0);

constexpr uint16_t kBootFlag = 0xaa55;
constexpr uint32_t kHdrSMagic = 0x53726448;  // "HdrS"
constexpr uint8_t kTypeOfLoaderUndefined = 0xff;
// heap_end_ptr: end of the setup heap relative to the real-mode code, minus 0x200 (boot.rst). The
// 64-bit entry does not run the real-mode code; 0xfe00 is the conventional value.
constexpr uint16_t kHeapEndPtr = 0xfe00;
constexpr uint32_t kVmlinuxKernelAlignment = 0x1000000;

}  // namespace

Result<boot_params> build_zero_page(const LoadedKernel& kernel, const BootInfo& info) {
  boot_params bp;
  std::memset(&bp, 0, sizeof bp);
  if (!kernel.setup_header.empty()) {
    if (kernel.setup_header.size() > sizeof(setup_header)) {
      return fail("setup header of {} bytes is larger than struct setup_header ({})", kernel.setup_header.size(),
                  sizeof(setup_header));
    }
    std::memcpy(&bp.hdr, kernel.setup_header.data(), kernel.setup_header.size());
    bp.hdr.setup_data = 0;  // we pass no setup_data list
  } else {
    bp.hdr.boot_flag = kBootFlag;
    bp.hdr.header = kHdrSMagic;
    bp.hdr.kernel_alignment = kVmlinuxKernelAlignment;
    bp.hdr.cmdline_size = static_cast<uint32_t>(kernel.cmdline_max);
  }
  bp.hdr.type_of_loader = kTypeOfLoaderUndefined;
  bp.hdr.loadflags = static_cast<uint8_t>(bp.hdr.loadflags | CAN_USE_HEAP);
  bp.hdr.heap_end_ptr = kHeapEndPtr;

  if (info.cmdline_addr > UINT32_MAX) return fail("command line at {:#x} is above 4 GiB", info.cmdline_addr);
  bp.hdr.cmd_line_ptr = static_cast<uint32_t>(info.cmdline_addr);
  if (info.initrd_size != 0) {
    if (info.initrd_addr > UINT32_MAX || info.initrd_size > UINT32_MAX - info.initrd_addr) {
      return fail("initrd at {:#x} ({:#x} bytes) is not below 4 GiB", info.initrd_addr, info.initrd_size);
    }
    bp.hdr.ramdisk_image = static_cast<uint32_t>(info.initrd_addr);
    bp.hdr.ramdisk_size = static_cast<uint32_t>(info.initrd_size);
  }

  if (info.e820.size() > E820_MAX_ENTRIES_ZEROPAGE) {
    return fail("{} e820 entries do not fit the zero page (at most {})", info.e820.size(), E820_MAX_ENTRIES_ZEROPAGE);
  }
  for (size_t i = 0; i < info.e820.size(); ++i) {
    bp.e820_table[i] = {.addr = info.e820[i].addr, .size = info.e820[i].size,
                        .type = static_cast<uint32_t>(info.e820[i].type)};
  }
  bp.e820_entries = static_cast<uint8_t>(info.e820.size());
  bp.acpi_rsdp_addr = info.rsdp_addr;  // protocol 2.14+; ignored by older kernels
  return bp;
}

Result<> write_zero_page(const GuestMemory& memory, const LoadedKernel& kernel, const BootInfo& info) {
  auto bp = build_zero_page(kernel, info);
  if (!bp) return std::unexpected(bp.error());
  if (auto r = memory.write_obj(Gpa(layout::kZeroPage), *bp); !r) {
    return std::unexpected(r.error().context("writing the zero page"));
  }
  return {};
}

Result<> write_pvh_start_info(const GuestMemory& memory, const BootInfo& info) {
  if (info.e820.size() > layout::kPvhMemmapMaxEntries) {
    return fail("{} memory map entries do not fit the PVH map (at most {})", info.e820.size(),
                layout::kPvhMemmapMaxEntries);
  }
  for (size_t i = 0; i < info.e820.size(); ++i) {
    const hvm_memmap_table_entry e{.addr = info.e820[i].addr, .size = info.e820[i].size,
                                   .type = static_cast<uint32_t>(info.e820[i].type), .reserved = 0};
    if (auto r = memory.write_obj(Gpa(layout::kPvhMemmap + i * sizeof e), e); !r) {
      return std::unexpected(r.error().context("writing the PVH memory map"));
    }
  }
  hvm_start_info si{};
  si.magic = kHvmStartMagic;
  si.version = 1;
  si.cmdline_paddr = info.cmdline_addr;
  si.rsdp_paddr = info.rsdp_addr;
  si.memmap_paddr = layout::kPvhMemmap;
  si.memmap_entries = static_cast<uint32_t>(info.e820.size());
  if (info.initrd_size != 0) {
    const hvm_modlist_entry module{.paddr = info.initrd_addr, .size = info.initrd_size, .cmdline_paddr = 0,
                                   .reserved = 0};
    if (auto r = memory.write_obj(Gpa(layout::kPvhModList), module); !r) {
      return std::unexpected(r.error().context("writing the PVH module list"));
    }
    si.nr_modules = 1;
    si.modlist_paddr = layout::kPvhModList;
  }
  if (auto r = memory.write_obj(Gpa(layout::kPvhStartInfo), si); !r) {
    return std::unexpected(r.error().context("writing the PVH start info"));
  }
  return {};
}

}  // namespace vmm::boot
