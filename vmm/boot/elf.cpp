#include "vmm/boot/elf.hpp"

#include <elf.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "vmm/base/layout.hpp"

namespace vmm::boot {

namespace {

// Notes larger than this are not kernel notes; refuse rather than allocate for them.
constexpr uint64_t kMaxNoteSegment = 1 << 20;

// One program header, whichever the ELF class.
struct Segment {
  uint32_t type = 0;
  uint64_t offset = 0;
  uint64_t paddr = 0;
  uint64_t filesz = 0;
  uint64_t memsz = 0;
  uint64_t align = 0;
};

// The parts of the ELF header we use, whichever the class.
struct Header {
  bool is64 = true;
  uint16_t type = 0;
  uint16_t machine = 0;
  uint64_t entry = 0;
  uint64_t phoff = 0;
  uint16_t phentsize = 0;
  uint16_t phnum = 0;
};

template <typename T>
T load_le(std::span<const uint8_t> bytes, size_t offset) {
  T v;
  std::memcpy(&v, bytes.data() + offset, sizeof v);
  return v;
}

uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

Result<Header> read_header(const ImageFile& file) {
  std::array<uint8_t, EI_NIDENT> ident{};
  if (file.size() < ident.size()) return file.error("truncated ELF header ({} of {} bytes)", file.size(), EI_NIDENT);
  if (auto r = file.read_at(0, ident, "ELF identification"); !r) return std::unexpected(r.error());
  if (std::memcmp(ident.data(), ELFMAG, SELFMAG) != 0) return file.error("bad ELF magic");
  if (ident[EI_CLASS] != ELFCLASS64 && ident[EI_CLASS] != ELFCLASS32) {
    return file.error("unsupported ELF class {} (want 1 = ELF32 or 2 = ELF64)", ident[EI_CLASS]);
  }
  if (ident[EI_DATA] != ELFDATA2LSB) return file.error("ELF data encoding {} is not little-endian", ident[EI_DATA]);
  if (ident[EI_VERSION] != EV_CURRENT) return file.error("unsupported ELF version {}", ident[EI_VERSION]);

  Header h;
  h.is64 = ident[EI_CLASS] == ELFCLASS64;
  const size_t ehsize = h.is64 ? sizeof(Elf64_Ehdr) : sizeof(Elf32_Ehdr);
  if (file.size() < ehsize) return file.error("truncated ELF header ({} of {} bytes)", file.size(), ehsize);
  if (h.is64) {
    Elf64_Ehdr e;
    if (auto r = file.read_at(0, std::span(reinterpret_cast<uint8_t*>(&e), sizeof e), "ELF header"); !r) {
      return std::unexpected(r.error());
    }
    h = {.is64 = true, .type = e.e_type, .machine = e.e_machine, .entry = e.e_entry, .phoff = e.e_phoff,
         .phentsize = e.e_phentsize, .phnum = e.e_phnum};
  } else {
    Elf32_Ehdr e;
    if (auto r = file.read_at(0, std::span(reinterpret_cast<uint8_t*>(&e), sizeof e), "ELF header"); !r) {
      return std::unexpected(r.error());
    }
    h = {.is64 = false, .type = e.e_type, .machine = e.e_machine, .entry = e.e_entry, .phoff = e.e_phoff,
         .phentsize = e.e_phentsize, .phnum = e.e_phnum};
  }
  const uint16_t want_machine = h.is64 ? EM_X86_64 : EM_386;
  if (h.machine != want_machine) {
    return file.error("ELF machine {} is not {} ({})", h.machine, want_machine, h.is64 ? "x86-64" : "i386");
  }
  if (h.type != ET_EXEC && h.type != ET_DYN) return file.error("ELF type {} is not an executable", h.type);
  const size_t want_phentsize = h.is64 ? sizeof(Elf64_Phdr) : sizeof(Elf32_Phdr);
  if (h.phentsize != want_phentsize) {
    return file.error("ELF program header size {} (want {})", h.phentsize, want_phentsize);
  }
  if (h.phnum == 0) return file.error("ELF file has no program headers");
  if (h.phnum == PN_XNUM) return file.error("ELF file has too many program headers (PN_XNUM)");
  return h;
}

Result<std::vector<Segment>> read_segments(const ImageFile& file, const Header& h) {
  const uint64_t table_size = uint64_t{h.phnum} * h.phentsize;  // at most 65534 * 56: no overflow
  if (!file.contains(h.phoff, table_size)) {
    return file.error("truncated: {} ELF program headers at offset {:#x} ({:#x} bytes) run past the end of the "
                      "file ({:#x} bytes)", h.phnum, h.phoff, table_size, file.size());
  }
  auto table = file.read_vector(h.phoff, table_size, "ELF program headers");
  if (!table) return std::unexpected(table.error());
  std::vector<Segment> segments;
  segments.reserve(h.phnum);
  for (size_t i = 0; i < h.phnum; ++i) {
    const size_t at = i * h.phentsize;
    if (h.is64) {
      const auto p = load_le<Elf64_Phdr>(*table, at);
      segments.push_back({.type = p.p_type, .offset = p.p_offset, .paddr = p.p_paddr, .filesz = p.p_filesz,
                          .memsz = p.p_memsz, .align = p.p_align});
    } else {
      const auto p = load_le<Elf32_Phdr>(*table, at);
      segments.push_back({.type = p.p_type, .offset = p.p_offset, .paddr = p.p_paddr, .filesz = p.p_filesz,
                          .memsz = p.p_memsz, .align = p.p_align});
    }
  }
  return segments;
}

// Checks one PT_LOAD against the file and guest RAM.
Result<> check_load(const GuestMemory& memory, const ImageFile& file, size_t index, const Segment& s) {
  if (s.filesz > s.memsz) {
    return file.error("ELF program header {}: p_filesz {:#x} is larger than p_memsz {:#x}", index, s.filesz, s.memsz);
  }
  if (!file.contains(s.offset, s.filesz)) {
    return file.error("truncated: ELF program header {}: segment data at offset {:#x} ({:#x} bytes) runs past the "
                      "end of the file ({:#x} bytes)", index, s.offset, s.filesz, file.size());
  }
  if (s.paddr < layout::kHighMemStart) {
    return file.error("ELF program header {}: segment at {:#x} is below 1 MiB, where the boot structures live",
                      index, s.paddr);
  }
  if (!memory.contains(Gpa(s.paddr), s.memsz)) {
    return file.error("ELF program header {}: segment at {:#x} ({:#x} bytes) is outside guest RAM {}", index,
                      s.paddr, s.memsz, describe_ram(memory));
  }
  return {};
}

}  // namespace

Result<std::optional<uint32_t>> find_pvh_entry(std::span<const uint8_t> notes, uint64_t align) {
  const uint64_t a = align == 8 ? 8 : 4;
  constexpr uint64_t kHeader = 12;  // Elf{32,64}_Nhdr: namesz, descsz, type (three 32-bit words)
  uint64_t at = 0;
  const uint64_t size = notes.size();
  while (size - at >= kHeader) {
    const uint32_t namesz = load_le<uint32_t>(notes, at);
    const uint32_t descsz = load_le<uint32_t>(notes, at + 4);
    const uint32_t type = load_le<uint32_t>(notes, at + 8);
    // Offsets relative to the segment, whose start is aligned: the desc and the next note start at
    // the next multiple of `a` (as binutils' ELF_NOTE_DESC_OFFSET / ELF_NOTE_NEXT_OFFSET).
    // 64-bit arithmetic on 32-bit sizes: no overflow.
    const uint64_t name_at = at + kHeader;
    const uint64_t desc_at = align_up(name_at + namesz, a);
    const uint64_t next = align_up(desc_at + descsz, a);
    if (name_at + namesz > size || desc_at + descsz > size) {
      return fail("malformed ELF note at offset {:#x}: namesz {:#x} / descsz {:#x} run past the note segment "
                  "({:#x} bytes)", at, namesz, descsz, size);
    }
    const bool is_xen = namesz == 4 && std::memcmp(notes.data() + name_at, "Xen", 4) == 0;
    if (is_xen && type == kXenElfNotePhys32Entry) {
      // Linux emits the address as _ASM_PTR (8 bytes on x86-64); 32-bit guests as 4 bytes.
      if (descsz == 4) return load_le<uint32_t>(notes, desc_at);
      if (descsz == 8) {
        const uint64_t entry = load_le<uint64_t>(notes, desc_at);
        if (entry > UINT32_MAX) return fail("Xen PHYS32_ENTRY note: entry {:#x} is above 4 GiB", entry);
        return static_cast<uint32_t>(entry);
      }
      return fail("Xen PHYS32_ENTRY note: descsz {} is not 4 or 8", descsz);
    }
    if (next >= size) break;
    at = next;
  }
  return std::optional<uint32_t>{};
}

Result<LoadedKernel> load_elf(const GuestMemory& memory, const ImageFile& file) {
  auto header = read_header(file);
  if (!header) return std::unexpected(header.error());
  auto segments = read_segments(file, *header);
  if (!segments) return std::unexpected(segments.error());

  std::optional<uint32_t> pvh_entry;
  uint64_t kernel_end = 0;
  size_t loads = 0;
  for (size_t i = 0; i < segments->size(); ++i) {
    const Segment& s = (*segments)[i];
    if (s.type == PT_LOAD) {
      if (s.memsz == 0) continue;
      if (auto r = check_load(memory, file, i, s); !r) return std::unexpected(r.error());
      // The boot page tables map the first 4 GiB (x86_boot.cpp) and a PVH entry is 32-bit: a kernel
      // loaded above could not be entered (its guest faulted at once, a "triple fault").
      if (s.paddr + s.memsz > layout::kMmioHoleEnd) {  // no overflow: inside RAM
        return file.error("ELF program header {}: loaded at {:#x} ({:#x} bytes), above 4 GiB: a kernel must load below 4 GiB",
                          i, s.paddr, s.memsz);
      }
      kernel_end = std::max(kernel_end, s.paddr + s.memsz);  // no overflow: inside RAM
      ++loads;
    } else if (s.type == PT_NOTE && !pvh_entry) {
      if (!file.contains(s.offset, s.filesz)) {
        return file.error("truncated: ELF program header {}: notes at offset {:#x} ({:#x} bytes) run past the end "
                          "of the file ({:#x} bytes)", i, s.offset, s.filesz, file.size());
      }
      if (s.filesz > kMaxNoteSegment) {
        return file.error("ELF program header {}: note segment of {:#x} bytes is implausibly large", i, s.filesz);
      }
      auto notes = file.read_vector(s.offset, s.filesz, "ELF notes");
      if (!notes) return std::unexpected(notes.error());
      auto found = find_pvh_entry(*notes, s.align);
      if (!found) return file.error("ELF program header {}: {}", i, found.error().message());
      pvh_entry = *found;
    }
  }
  if (loads == 0) return file.error("ELF file has no loadable (PT_LOAD) segment");
  if (!header->is64 && !pvh_entry) {
    return file.error("32-bit ELF without a PVH entry note (Xen PHYS32_ENTRY): only PVH is supported for ELF32");
  }

  const uint64_t entry = pvh_entry ? *pvh_entry : header->entry;
  const bool entry_loaded = std::ranges::any_of(*segments, [&](const Segment& s) {
    return s.type == PT_LOAD && s.memsz != 0 && entry >= s.paddr && entry - s.paddr < s.memsz;
  });
  if (!entry_loaded) {
    return file.error("{} entry point {:#x} is outside every loadable segment", pvh_entry ? "PVH" : "ELF", entry);
  }

  for (size_t i = 0; i < segments->size(); ++i) {
    const Segment& s = (*segments)[i];
    if (s.type != PT_LOAD || s.memsz == 0) continue;
    if (auto r = file.read_into(memory, Gpa(s.paddr), s.offset, s.filesz, "ELF segment"); !r) {
      return std::unexpected(r.error());
    }
    if (auto r = memory.fill_zero(Gpa(s.paddr + s.filesz), s.memsz - s.filesz); !r) {
      return file.error("ELF program header {}: {}", i, r.error().message());
    }
  }

  return LoadedKernel{
      .mode = pvh_entry ? EntryMode::Pvh32 : EntryMode::Linux64,
      .entry = entry,
      .end = kernel_end,
      .initrd_end_max = memory.low_end(),
      .cmdline_max = layout::kCmdlineMax - 1,
      .setup_header = {},
  };
}

}  // namespace vmm::boot
