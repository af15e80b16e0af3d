// Helpers for the boot-loader tests: guest memory, temporary files and synthetic ELF / bzImage
// kernels built in memory, so each malformed case is one edit away from a good image.
#pragma once

#include <asm/bootparam.h>
#include <elf.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "vmm/base/guest_memory.hpp"
#include "vmm/boot/boot.hpp"

namespace boot_test {

using Bytes = std::vector<uint8_t>;

/// Anonymous guest memory for a loader to write into (throws where it cannot be had).
inline vmm::GuestMemory loader_memory(uint64_t size) {
  auto m = vmm::GuestMemory::anonymous(size);
  if (!m) throw std::runtime_error("guest memory: " + m.error().message());
  return std::move(*m);
}

/// A file with the given content under the temp directory, removed on destruction.
class TempFile {
 public:
  explicit TempFile(const Bytes& content, const std::string& stem = "vmm-boot-test") {
    std::string tmpl = (std::filesystem::temp_directory_path() / (stem + "-XXXXXX")).string();
    const int fd = ::mkstemp(tmpl.data());
    if (fd >= 0) ::close(fd);
    path_ = tmpl;
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(content.data()), static_cast<std::streamsize>(content.size()));
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  ~TempFile() {
    std::error_code ec;
    std::filesystem::remove(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::string name() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

template <typename T>
void put_at(Bytes& b, size_t offset, const T& v) {
  if (b.size() < offset + sizeof v) b.resize(offset + sizeof v);
  std::memcpy(b.data() + offset, &v, sizeof v);
}
template <typename T>
T get_at(const Bytes& b, size_t offset) {
  T v;
  std::memcpy(&v, b.data() + offset, sizeof v);
  return v;
}

/// One ELF note: namesz/descsz/type, name and desc padded to `align`.
inline Bytes elf_note(const std::string& name, uint32_t type, const Bytes& desc, size_t align = 4) {
  Bytes out;
  const auto pad = [&] { while (out.size() % align) out.push_back(0); };
  put_at(out, 0, static_cast<uint32_t>(name.size() + 1));
  put_at(out, 4, static_cast<uint32_t>(desc.size()));
  put_at(out, 8, type);
  out.insert(out.end(), name.begin(), name.end());
  out.push_back(0);
  pad();
  out.insert(out.end(), desc.begin(), desc.end());
  pad();
  return out;
}

/// The Xen PVH entry note with a 4- or 8-byte address.
inline Bytes pvh_note(uint64_t entry, size_t desc_size = 4) {
  Bytes desc(desc_size);
  std::memcpy(desc.data(), &entry, std::min<size_t>(desc_size, 8));
  return elf_note("Xen", 18, desc);
}

/// A program header to put in a synthetic ELF; `data` goes into the file.
struct SegmentSpec {
  uint32_t type = PT_LOAD;
  uint64_t paddr = 0x100000;
  Bytes data;
  uint64_t memsz = 0;  ///< 0: data.size()
  uint64_t align = 4;
};

/// Builds an ELF (64- or 32-bit, x86) with `segments` in order; data follows the program headers.
/// Program header i is at e_phoff + i * e_phentsize, e_phoff = the ELF header size.
inline Bytes make_elf(const std::vector<SegmentSpec>& segments, uint64_t entry, bool is64 = true) {
  const size_t ehsize = is64 ? sizeof(Elf64_Ehdr) : sizeof(Elf32_Ehdr);
  const size_t phsize = is64 ? sizeof(Elf64_Phdr) : sizeof(Elf32_Phdr);
  Bytes out(ehsize + phsize * segments.size());
  std::vector<uint64_t> offsets;
  for (const auto& s : segments) {
    while (out.size() % 16) out.push_back(0);
    offsets.push_back(out.size());
    out.insert(out.end(), s.data.begin(), s.data.end());
  }
  unsigned char ident[EI_NIDENT] = {0x7f, 'E', 'L', 'F', static_cast<unsigned char>(is64 ? ELFCLASS64 : ELFCLASS32),
                                    ELFDATA2LSB, EV_CURRENT};
  if (is64) {
    Elf64_Ehdr e{};
    std::memcpy(e.e_ident, ident, EI_NIDENT);
    e.e_type = ET_EXEC;
    e.e_machine = EM_X86_64;
    e.e_version = EV_CURRENT;
    e.e_entry = entry;
    e.e_phoff = ehsize;
    e.e_ehsize = static_cast<uint16_t>(ehsize);
    e.e_phentsize = static_cast<uint16_t>(phsize);
    e.e_phnum = static_cast<uint16_t>(segments.size());
    put_at(out, 0, e);
    for (size_t i = 0; i < segments.size(); ++i) {
      const auto& s = segments[i];
      Elf64_Phdr p{};
      p.p_type = s.type;
      p.p_offset = offsets[i];
      p.p_vaddr = p.p_paddr = s.paddr;
      p.p_filesz = s.data.size();
      p.p_memsz = s.memsz ? s.memsz : s.data.size();
      p.p_align = s.align;
      p.p_flags = PF_R | PF_X;
      put_at(out, ehsize + i * phsize, p);
    }
  } else {
    Elf32_Ehdr e{};
    std::memcpy(e.e_ident, ident, EI_NIDENT);
    e.e_type = ET_EXEC;
    e.e_machine = EM_386;
    e.e_version = EV_CURRENT;
    e.e_entry = static_cast<uint32_t>(entry);
    e.e_phoff = static_cast<uint32_t>(ehsize);
    e.e_ehsize = static_cast<uint16_t>(ehsize);
    e.e_phentsize = static_cast<uint16_t>(phsize);
    e.e_phnum = static_cast<uint16_t>(segments.size());
    put_at(out, 0, e);
    for (size_t i = 0; i < segments.size(); ++i) {
      const auto& s = segments[i];
      Elf32_Phdr p{};
      p.p_type = s.type;
      p.p_offset = static_cast<uint32_t>(offsets[i]);
      p.p_vaddr = p.p_paddr = static_cast<uint32_t>(s.paddr);
      p.p_filesz = static_cast<uint32_t>(s.data.size());
      p.p_memsz = static_cast<uint32_t>(s.memsz ? s.memsz : s.data.size());
      p.p_align = static_cast<uint32_t>(s.align);
      p.p_flags = PF_R | PF_X;
      put_at(out, ehsize + i * phsize, p);
    }
  }
  return out;
}

/// Offset of a field of ELF64 program header i in an image from make_elf(…, is64 = true).
inline size_t phdr64_field(size_t i, size_t field_offset) {
  return sizeof(Elf64_Ehdr) + i * sizeof(Elf64_Phdr) + field_offset;
}

/// A packed struct field as a plain value (doctest's CHECK cannot bind references to packed fields).
template <typename T>
T val(T v) {
  return v;
}

/// A boot configuration with every field given (designated initializers warn about missing ones).
inline vmm::boot::BootConfig config(const std::filesystem::path& kernel, std::string cmdline = "",
                                    std::optional<std::filesystem::path> initrd = std::nullopt, uint32_t vcpus = 1) {
  return vmm::boot::BootConfig{.kernel = kernel, .initrd = std::move(initrd), .cmdline = std::move(cmdline),
                               .vcpus = vcpus};
}

/// A bytes pattern that is easy to recognise in guest memory.
inline Bytes pattern(size_t n, uint8_t seed = 1) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(seed + i * 7);
  return b;
}

/// Fields of a synthetic bzImage.
struct BzSpec {
  uint8_t setup_sects = 4;
  uint16_t version = 0x020f;
  uint16_t xloadflags = XLF_KERNEL_64;
  uint8_t loadflags = LOADED_HIGH;
  uint8_t relocatable = 1;
  uint64_t pref_address = 0x1000000;
  uint32_t init_size = 0x200000;
  uint32_t cmdline_size = 2047;
  uint32_t initrd_addr_max = 0x7fffffff;
  uint8_t jump_len = 0x6a;  ///< header ends at 0x202 + jump_len
  Bytes kernel = pattern(0x4000, 3);
};

/// A bzImage: (setup_sects+1) sectors of setup with the header, then the protected-mode kernel.
inline Bytes make_bzimage(const BzSpec& s) {
  const size_t sects = s.setup_sects == 0 ? 4 : s.setup_sects;
  Bytes out((sects + 1) * 512, 0);
  setup_header h{};
  h.setup_sects = s.setup_sects;
  h.syssize = static_cast<uint32_t>(s.kernel.size() / 16);
  h.boot_flag = 0xaa55;
  h.jump = static_cast<uint16_t>(0xeb | (s.jump_len << 8));
  h.header = 0x53726448;
  h.version = s.version;
  h.loadflags = s.loadflags;
  h.initrd_addr_max = s.initrd_addr_max;
  h.kernel_alignment = 0x200000;
  h.relocatable_kernel = s.relocatable;
  h.xloadflags = s.xloadflags;
  h.cmdline_size = s.cmdline_size;
  h.pref_address = s.pref_address;
  h.init_size = s.init_size;
  put_at(out, 0x1f1, h);
  out.insert(out.end(), s.kernel.begin(), s.kernel.end());
  return out;
}

}  // namespace boot_test
