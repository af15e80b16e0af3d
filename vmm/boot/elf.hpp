// ELF kernels: an uncompressed vmlinux (64-bit Linux boot protocol) or a PVH kernel, recognised by
// its Xen PHYS32_ENTRY note (ELF64, or ELF32 for small PVH guests).
#pragma once

#include <cstdint>
#include <optional>
#include <span>

#include "vmm/boot/kernel.hpp"

namespace vmm::boot {

/// Xen's ELF note name and the PVH entry note type (Xen public/elfnote.h, XEN_ELFNOTE_PHYS32_ENTRY).
inline constexpr uint32_t kXenElfNotePhys32Entry = 18;

/// Loads an ELF kernel: checks the ELF and program headers against the file (overflow-safe), checks
/// every PT_LOAD lies in RAM at or above 1 MiB with p_filesz <= p_memsz, then copies p_filesz bytes
/// to p_paddr and zeroes up to p_memsz (ELF gABI, "Program Header"). Nothing is written to guest
/// memory unless every check passed. With a PVH note the mode is Pvh32 at the note's address,
/// otherwise Linux64 at e_entry (physical for an x86 vmlinux). ET_DYN images load unrelocated at
/// their p_paddr, as QEMU's -kernel does.
Result<LoadedKernel> load_elf(const GuestMemory& memory, const ImageFile& file);

/// Scans the notes of one PT_NOTE segment for Xen's PHYS32_ENTRY (ELF gABI "Note Section":
/// namesz, descsz, type, then name and desc, each padded to a multiple of `align`, 4 or 8).
/// Returns the 32-bit entry, nullopt if absent, or an error for a malformed note (sizes running
/// past the segment, a desc that is not a 4- or 8-byte address, an address above 4 GiB).
Result<std::optional<uint32_t>> find_pvh_entry(std::span<const uint8_t> notes, uint64_t align);

}  // namespace vmm::boot
