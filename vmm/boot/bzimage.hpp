// Linux bzImage kernels, entered through the 64-bit boot protocol.
// Linux boot protocol, Documentation/arch/x86/boot.rst.
#pragma once

#include "vmm/boot/kernel.hpp"

namespace vmm::boot {

/// Oldest boot protocol we accept: 2.12 (xloadflags with XLF_KERNEL_64; pref_address, init_size).
inline constexpr uint16_t kMinBootProtocol = 0x020c;

/// Loads a bzImage: checks the setup header (boot flag, "HdrS", protocol >= 2.12, XLF_KERNEL_64,
/// setup_sects, the header length the jump at 0x200 gives, syssize against the file), then copies
/// the protected-mode kernel (from (setup_sects+1)*512) to pref_address if relocatable, else 1 MiB,
/// after checking [load, load + max(size, init_size)) lies in low RAM. Entry = load + 0x200
/// (startup_64). Returns the setup header bytes for the zero page.
Result<LoadedKernel> load_bzimage(const GuestMemory& memory, const ImageFile& file);

}  // namespace vmm::boot
