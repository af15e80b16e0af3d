// The BIOS reset vector at 0xF000:FFF0, the one piece of firmware a guest of ours can reach.
//
// Linux on a hardware-reduced ACPI platform restarts through EFI (efi_reboot_required()), and
// without EFI runtime services it falls back to machine_real_restart(): real mode, then a far jump
// to 0xF000:0xFFF0, where a PC's BIOS would reset the machine. With no code at that address the
// vCPU would execute zeroed memory and the guest would never reset (seen before this code existed).
// These 16 bytes write the FADT's reset value to the ACPI reset register, so the VM stops as reset
// whatever path the guest took.
#pragma once

#include <array>
#include <cstdint>

#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"

namespace vmm::boot {

/// The 16-bit code at layout::kResetVector: cli; mov dx, RESET_PORT; mov al, RESET_VALUE;
/// out dx, al; then hlt in a loop.
std::array<uint8_t, 16> reset_vector_code();

/// Writes reset_vector_code() at layout::kResetVector.
Result<> write_reset_vector(const GuestMemory& memory);

}  // namespace vmm::boot
