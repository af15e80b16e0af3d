// boot::load: detect the kernel format, load it, then the command line, initrd, e820 map, ACPI
// tables and the boot information the entry mode needs.
#include "vmm/boot/boot.hpp"

#include <cstring>

#include "vmm/boot/acpi.hpp"
#include "vmm/boot/boot_info.hpp"
#include "vmm/boot/bzimage.hpp"
#include "vmm/boot/e820.hpp"
#include "vmm/boot/elf.hpp"
#include "vmm/boot/initrd.hpp"
#include "vmm/boot/kernel.hpp"
#include "vmm/boot/reset_vector.hpp"
#include "vmm/base/layout.hpp"

namespace vmm::boot {

namespace {

// Writes the NUL-terminated command line at layout::kCmdline.
Result<> write_cmdline(const GuestMemory& memory, const std::string& cmdline, uint64_t max_len) {
  if (cmdline.find('\0') != std::string::npos) return fail("command line contains a NUL byte");
  if (cmdline.size() > max_len) {
    return fail("command line is {} bytes, the kernel accepts at most {}", cmdline.size(), max_len);
  }
  auto dst = memory.slice(Gpa(layout::kCmdline), cmdline.size() + 1);
  if (!dst) return std::unexpected(dst.error().context("writing the command line"));
  std::memcpy(dst->data(), cmdline.data(), cmdline.size());
  (*dst)[cmdline.size()] = 0;
  return {};
}

}  // namespace

Result<BootEntry> load(const GuestMemory& memory, const BootConfig& config) {
  if (memory.low_end() <= layout::kHighMemStart) {
    return fail("guest RAM of {:#x} bytes is too small: kernels load above 1 MiB", memory.size());
  }
  auto file = ImageFile::open(config.kernel);
  if (!file) return std::unexpected(file.error().context("kernel"));
  auto format = detect_format(*file);
  if (!format) return std::unexpected(format.error());
  auto kernel = *format == KernelFormat::Elf ? load_elf(memory, *file) : load_bzimage(memory, *file);
  if (!kernel) return std::unexpected(kernel.error());

  if (auto r = write_cmdline(memory, config.cmdline, kernel->cmdline_max); !r) {
    return std::unexpected(r.error().context(file->name()));
  }

  Initrd initrd;
  if (config.initrd) {
    auto loaded = load_initrd(memory, *config.initrd, kernel->end, kernel->initrd_end_max, kernel->runtime);
    if (!loaded) return std::unexpected(loaded.error());
    initrd = *loaded;
  }

  const auto e820 = build_e820(memory);
  auto rsdp = write_acpi_tables(memory, AcpiConfig{.vcpus = config.vcpus});
  if (!rsdp) return std::unexpected(rsdp.error());
  if (auto r = write_reset_vector(memory); !r) return std::unexpected(r.error());

  const BootInfo info{.cmdline_addr = layout::kCmdline, .cmdline_len = config.cmdline.size(),
                      .initrd_addr = initrd.addr, .initrd_size = initrd.size, .rsdp_addr = *rsdp, .e820 = e820};
  if (kernel->mode == EntryMode::Pvh32) {
    if (auto r = write_pvh_start_info(memory, info); !r) return std::unexpected(r.error());
    return BootEntry{.mode = EntryMode::Pvh32, .entry = kernel->entry, .boot_info = layout::kPvhStartInfo};
  }
  if (auto r = write_zero_page(memory, *kernel, info); !r) return std::unexpected(r.error().context(file->name()));
  return BootEntry{.mode = EntryMode::Linux64, .entry = kernel->entry, .boot_info = layout::kZeroPage};
}

}  // namespace vmm::boot
