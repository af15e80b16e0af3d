// What every kernel loader reports back, and kernel format detection from the file's content.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "vmm/boot/boot.hpp"
#include "vmm/boot/image_file.hpp"
#include "vmm/boot/initrd.hpp"

namespace vmm::boot {

/// A kernel placed in guest memory.
struct LoadedKernel {
  EntryMode mode = EntryMode::Pvh32;
  uint64_t entry = 0;        ///< guest-physical entry point
  uint64_t end = 0;          ///< first GPA above everything the kernel occupies or needs (init_size)
  /// Where it runs, when not where it was loaded: a non-relocatable bzImage decompresses itself to
  /// pref_address and needs init_size bytes there (boot.rst: "the kernel runtime start address").
  GpaRange runtime = {};
  uint64_t initrd_end_max = 0;  ///< the initrd must end at or below this GPA (exclusive)
  uint64_t cmdline_max = 0;  ///< longest command line the kernel accepts, without the NUL
  /// bzImage only: the image's setup header, bytes 0x1F1 up to the end the jump at 0x200 gives.
  std::vector<uint8_t> setup_header = {};
};

/// Kernel file formats we load.
enum class KernelFormat { Elf, BzImage };

/// Detects the format from the content: the ELF magic, or a bzImage's boot flag 0xAA55 at 0x1FE and
/// "HdrS" at 0x202 (Linux boot protocol, Documentation/arch/x86/boot.rst). Else
/// "FILE: not an ELF or bzImage kernel".
Result<KernelFormat> detect_format(const ImageFile& file);

/// Guest RAM as text for messages: "[0, 0x4000000)" or "[0, 0xc0000000) and [0x100000000, ...)".
std::string describe_ram(const GuestMemory& memory);

}  // namespace vmm::boot
