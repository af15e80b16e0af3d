// libFuzzer target for the kernel loaders (vmm/boot: format detection, PVH and 64-bit ELF, bzImage
// and its setup header, the initrd's placement, the command line, the boot information): the files
// a user hands to `vmm run --kernel ... --initrd ...`. Built by clang only (tests/fuzz/fuzz.cmake,
// scripts/fuzz-kernel.sh) with -fsanitize=fuzzer,address,undefined.
//
// An input is four bytes of set-up, then the kernel file: byte 0 picks the guest RAM (16 MiB,
// 64 MiB, 1 GiB, 2 MiB, or 5 GiB: RAM on both sides of the MMIO hole below 4 GiB, reserved and
// touched only where the loaders write) and the vCPU count, byte 1 the command line's length, bytes 2-3 the
// initrd's size in 16-byte units (0: no initrd). boot::load must refuse a bad kernel with one line
// naming the kernel or initrd file, never crash; a kernel it loads has its entry point and boot
// information inside RAM.
//
// VMM_KERNEL_FUZZ_MAKE_SEEDS=DIR writes well-formed kernels of each kind (the unit tests' builders)
// to DIR and exits.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include "../unit/test_boot_helpers.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/boot/boot.hpp"

namespace {

namespace fs = std::filesystem;
using boot_test::Bytes;

[[noreturn]] void die(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "kernel_fuzz: %s%s%s\n", what, detail.empty() ? "" : ": ", detail.c_str());
  std::abort();
}

constexpr uint64_t kMiB = 1 << 20;
constexpr uint64_t kRams[] = {16 * kMiB, 64 * kMiB, 1024 * kMiB, 2 * kMiB, 5120 * kMiB};

/// Guest RAM of each size, made once (the loaders only write; what earlier inputs left is harmless).
const vmm::GuestMemory& ram(unsigned which) {
  static vmm::GuestMemory* rams[std::size(kRams)] = {};
  if (!rams[which]) {
    auto m = vmm::GuestMemory::anonymous(kRams[which]);
    if (!m) die("guest memory", m.error().message());
    rams[which] = new vmm::GuestMemory(std::move(*m));
  }
  return *rams[which];
}

/// The kernel and initrd files, rewritten for each input.
struct Files {
  fs::path kernel, initrd;
  static Files& get() {
    static Files* f = [] {
      auto* files = new Files;
      for (fs::path* p : {&files->kernel, &files->initrd}) {
        char path[] = "/tmp/kernel-fuzz-XXXXXX";
        const int fd = ::mkstemp(path);
        if (fd < 0) die("temporary file");
        ::close(fd);
        *p = path;
      }
      std::atexit([] {
        std::error_code ec;
        fs::remove(get().kernel, ec);
        fs::remove(get().initrd, ec);
      });
      return files;
    }();
    return *f;
  }
};

void write_file(const fs::path& p, std::span<const uint8_t> bytes) {
  const int fd = ::open(p.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
  if (fd < 0 || (!bytes.empty() && ::write(fd, bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size()))) {
    die("writing a temporary file");
  }
  ::close(fd);
}

void run(std::span<const uint8_t> data) {
  if (data.size() < 4) return;
  const unsigned which = data[0] % std::size(kRams);
  const uint32_t vcpus = 1 + (data[0] >> 2) % 4;
  const std::string cmdline(data[1], 'a');
  const size_t initrd_size = 16 * size_t(data[2] | data[3] << 8);
  Files& f = Files::get();
  write_file(f.kernel, data.subspan(4));
  std::optional<fs::path> initrd;
  if (initrd_size) {
    write_file(f.initrd, Bytes(initrd_size, 0x42));
    initrd = f.initrd;
  }
  const vmm::GuestMemory& memory = ram(which);
  auto r = vmm::boot::load(memory, boot_test::config(f.kernel, cmdline, initrd, vcpus));
  if (!r) {
    const std::string& m = r.error().message();
    if (m.find('\n') != std::string::npos) die("an error of more than one line", m);
    if (m.find(f.kernel.string()) == std::string::npos && m.find(f.initrd.string()) == std::string::npos) {
      die("an error that names neither the kernel nor the initrd", m);
    }
    return;
  }
  if (!memory.contains(vmm::Gpa(r->entry), 1)) die("an entry point outside RAM", std::to_string(r->entry));
  if (!memory.contains(vmm::Gpa(r->boot_info), 1)) die("boot information outside RAM", std::to_string(r->boot_info));
}

void make_seeds(const fs::path& dir) {
  using namespace boot_test;
  fs::create_directories(dir);
  const auto with_setup = [](uint8_t ram_vcpus, uint8_t cmdline, uint16_t initrd16, const Bytes& kernel) {
    Bytes b = {ram_vcpus, cmdline, static_cast<uint8_t>(initrd16), static_cast<uint8_t>(initrd16 >> 8)};
    b.insert(b.end(), kernel.begin(), kernel.end());
    return b;
  };
  std::vector<std::pair<std::string, Bytes>> seeds;
  const Bytes pvh64 = make_elf({{.type = PT_LOAD, .paddr = kMiB, .data = pattern(0x3000), .memsz = 0x5000},
                                {.type = PT_NOTE, .paddr = 0, .data = pvh_note(kMiB + 0x10, 8), .align = 4}},
                               kMiB);
  const Bytes pvh32 = make_elf({{.type = PT_LOAD, .paddr = kMiB, .data = pattern(0x1000)},
                                {.type = PT_NOTE, .paddr = 0, .data = pvh_note(kMiB + 0x20, 4), .align = 4}},
                               kMiB, false);
  const Bytes vmlinux = make_elf({{.type = PT_LOAD, .paddr = 2 * kMiB, .data = pattern(0x2000), .memsz = 0x4000},
                                  {.type = PT_LOAD, .paddr = 3 * kMiB, .data = pattern(0x800, 5)}},
                                 2 * kMiB);
  seeds.push_back({"pvh-elf64", with_setup(1, 12, 100, pvh64)});
  seeds.push_back({"pvh-elf32", with_setup(4, 0, 0, pvh32)});
  seeds.push_back({"vmlinux", with_setup(5, 40, 7, vmlinux)});
  seeds.push_back({"bzimage", with_setup(1, 30, 64, make_bzimage({}))});
  seeds.push_back({"bzimage-fixed", with_setup(0, 3, 0, make_bzimage({.relocatable = 0, .pref_address = 0x100000}))});
  seeds.push_back({"bzimage-setup0", with_setup(2, 200, 1, make_bzimage({.setup_sects = 0, .initrd_addr_max = 0x3fffff}))});
  for (const auto& [name, bytes] : seeds) {
    std::ofstream(dir / name, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                                      static_cast<std::streamsize>(bytes.size()));
  }
  std::printf("%zu seeds in %s\n", seeds.size(), dir.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* seeds = std::getenv("VMM_KERNEL_FUZZ_MAKE_SEEDS")) {
    make_seeds(seeds);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  run({data, size});
  return 0;
}
