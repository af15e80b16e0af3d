#include "vmm/boot/bzimage.hpp"

#include <asm/bootparam.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstring>

#include "vmm/base/layout.hpp"

namespace vmm::boot {

namespace {

// Offsets in the image (boot.rst, "The Real-Mode Kernel Header").
constexpr uint64_t kSetupHeaderOffset = 0x1f1;
constexpr uint64_t kJumpOffset = 0x200;    // 2-byte short jump: 0xEB, then the header's length - 2
constexpr uint64_t kHeaderMagicOffset = 0x202;
constexpr uint64_t kSectorSize = 512;
constexpr uint8_t kDefaultSetupSects = 4;  // setup_sects 0 means 4
constexpr uint64_t kStartup64Offset = 0x200;
constexpr uint64_t kNonRelocatableLoad = 0x100000;
// The setup header must reach at least through init_size (protocol 2.10, at 0x260).
constexpr uint64_t kMinHeaderEnd = kSetupHeaderOffset + offsetof(setup_header, init_size) + sizeof(uint32_t);
constexpr uint64_t kMaxHeaderEnd = kSetupHeaderOffset + sizeof(setup_header);
// Before protocol 2.03 the initrd limit was implicit (boot.rst: "0x37FFFFFF if not set").
constexpr uint64_t kDefaultInitrdAddrMax = 0x37ffffff;

}  // namespace

Result<LoadedKernel> load_bzimage(const GuestMemory& memory, const ImageFile& file) {
  // The first sector plus the header: everything up to kMaxHeaderEnd that the file has.
  if (file.size() < kJumpOffset + 2) {
    return file.error("truncated bzImage: {} bytes, the setup header alone needs {:#x}", file.size(),
                      kJumpOffset + 2);
  }
  std::array<uint8_t, kMaxHeaderEnd> head{};
  const uint64_t head_len = std::min<uint64_t>(file.size(), head.size());
  if (auto r = file.read_at(0, std::span(head.data(), head_len), "bzImage setup header"); !r) {
    return std::unexpected(r.error());
  }
  uint16_t boot_flag;
  uint32_t magic;
  std::memcpy(&boot_flag, head.data() + 0x1fe, sizeof boot_flag);
  std::memcpy(&magic, head.data() + kHeaderMagicOffset, sizeof magic);
  if (boot_flag != 0xaa55 || magic != 0x53726448) {
    return file.error("not a bzImage: boot flag {:#x} (want 0xaa55), header magic {:#x} (want \"HdrS\")", boot_flag,
                      magic);
  }
  // The jump at 0x200 skips the header: its end is 0x202 + the jump's 8-bit displacement.
  const uint64_t header_end = kHeaderMagicOffset + head[kJumpOffset + 1];
  if (header_end < kMinHeaderEnd) {
    return file.error("bzImage setup header ends at {:#x}, too short for boot protocol 2.12 (needs {:#x})",
                      header_end, kMinHeaderEnd);
  }
  if (header_end > file.size()) {
    return file.error("truncated bzImage: setup header ends at {:#x} but the file has {:#x} bytes", header_end,
                      file.size());
  }
  const uint64_t copy_end = std::min(header_end, kMaxHeaderEnd);
  setup_header hdr;
  std::memset(&hdr, 0, sizeof hdr);
  std::memcpy(&hdr, head.data() + kSetupHeaderOffset, copy_end - kSetupHeaderOffset);

  if (hdr.version < kMinBootProtocol) {
    return file.error("bzImage boot protocol {}.{:02} is too old (need 2.12 or newer)", hdr.version >> 8,
                      hdr.version & 0xff);
  }
  if (!(hdr.xloadflags & XLF_KERNEL_64)) {
    return file.error("bzImage has no 64-bit entry point (XLF_KERNEL_64 not set in xloadflags {:#x})",
                      uint16_t{hdr.xloadflags});
  }
  if (!(hdr.loadflags & LOADED_HIGH)) {
    return file.error("bzImage is a zImage (LOADED_HIGH not set): its kernel must load at 0x10000");
  }

  const uint64_t setup_sects = hdr.setup_sects == 0 ? kDefaultSetupSects : hdr.setup_sects;
  const uint64_t setup_size = (setup_sects + 1) * kSectorSize;
  if (setup_size >= file.size()) {
    return file.error("truncated bzImage: setup code is {:#x} bytes (setup_sects {}) but the file has {:#x} bytes",
                      setup_size, setup_sects, file.size());
  }
  const uint64_t kernel_size = file.size() - setup_size;
  const uint64_t syssize_bytes = uint64_t{hdr.syssize} * 16;
  if (syssize_bytes > kernel_size) {
    return file.error("truncated bzImage: protected-mode kernel is {:#x} bytes, the header's syssize says {:#x}",
                      kernel_size, syssize_bytes);
  }

  const uint64_t load = hdr.relocatable_kernel ? hdr.pref_address : kNonRelocatableLoad;
  if (load < layout::kHighMemStart) {
    return file.error("bzImage load address {:#x} is below 1 MiB, where the boot structures live", load);
  }
  // The kernel needs init_size bytes from its load address before it reads the memory map
  // (boot.rst, init_size); it is entered with identity paging, so it must sit in low RAM.
  const uint64_t need = std::max<uint64_t>(kernel_size, hdr.init_size);
  if (load > memory.low_end() || need > memory.low_end() - load) {
    return file.error("bzImage needs guest RAM [{:#x}, {:#x}) (load address + max(size, init_size)) but low RAM "
                      "ends at {:#x}", load, load + need, memory.low_end());
  }
  // A kernel that cannot relocate runs at pref_address (LOAD_PHYSICAL_ADDR), whatever address it
  // was loaded at: it decompresses itself there, into init_size bytes that must be RAM and must
  // not hold the initrd.
  GpaRange runtime;
  if (!hdr.relocatable_kernel) {
    runtime = GpaRange{.start = hdr.pref_address, .end = hdr.pref_address + hdr.init_size};
    if (runtime.start < layout::kHighMemStart || runtime.start > memory.low_end() || hdr.init_size > memory.low_end() - runtime.start) {
      return file.error("bzImage (not relocatable) runs at [{:#x}, {:#x}) (pref_address + init_size) but low RAM is [{:#x}, {:#x})",
                        runtime.start, runtime.start + hdr.init_size, layout::kHighMemStart, memory.low_end());
    }
  }
  if (auto r = file.read_into(memory, Gpa(load), setup_size, kernel_size, "bzImage protected-mode kernel"); !r) {
    return std::unexpected(r.error());
  }

  const uint64_t initrd_addr_max = hdr.initrd_addr_max != 0 ? hdr.initrd_addr_max : kDefaultInitrdAddrMax;
  return LoadedKernel{
      .mode = EntryMode::Linux64,
      .entry = load + kStartup64Offset,
      .end = load + need,
      .runtime = runtime,
      .initrd_end_max = std::min(initrd_addr_max + 1, memory.low_end()),
      .cmdline_max = std::min<uint64_t>(hdr.cmdline_size, layout::kCmdlineMax - 1),
      .setup_header = std::vector<uint8_t>(head.begin() + kSetupHeaderOffset, head.begin() + copy_end),
  };
}

}  // namespace vmm::boot
