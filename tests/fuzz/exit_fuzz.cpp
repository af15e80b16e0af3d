// libFuzzer target for the vCPU exit handler (vmm/exit_handler.hpp: handle_exit,
// describe_internal_error): a kvm_run page as a hostile guest and KVM leave it. Built by clang only
// (tests/fuzz/fuzz.cmake, scripts/fuzz-exit.sh) with -fsanitize=fuzzer,address,undefined. Must
// never crash, hang or leak.
//
// Input: 2 bytes of the run mapping's size (clamped to [sizeof(kvm_run), 16 KiB]: the buffer is
// exactly that long, so ASan sees any access past it), then the mapping's bytes (the rest zero),
// with exit_reason taken modulo a list of the exits KVM makes (and an unknown one). Ports and MMIO
// ranges hold devices that check every access reaches them inside their range, with the length the
// guest asked; a stop carries a one-line message.
//
// VMM_EXIT_FUZZ_MAKE_SEEDS=DIR writes a few exits (port in/out, string I/O, MMIO, system events,
// internal error) to DIR and exits.
#include <linux/kvm.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "vmm/exit_handler.hpp"

namespace {

[[noreturn]] void die(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "exit_fuzz: %s %s\n", what, detail.c_str());
  std::abort();
}

// A device of `size` bytes: every access must be inside it, 1 to 8 bytes.
struct Checked final : vmm::devices::BusDevice {
  explicit Checked(uint64_t s) : size(s) {}
  uint64_t size;
  void check(uint64_t offset, size_t n) const {
    if (n == 0 || n > 8 || offset >= size || n > size - offset) die("an access outside a device's range");
  }
  void read(uint64_t offset, std::span<uint8_t> data) override {
    check(offset, data.size());
    std::fill(data.begin(), data.end(), 0xa5);
  }
  void write(uint64_t offset, std::span<const uint8_t> data) override { check(offset, data.size()); }
  std::string_view name() const override { return "checked"; }
};

constexpr uint32_t kReasons[] = {KVM_EXIT_IO,       KVM_EXIT_MMIO,          KVM_EXIT_SYSTEM_EVENT, KVM_EXIT_INTERNAL_ERROR,
                                 KVM_EXIT_SHUTDOWN, KVM_EXIT_FAIL_ENTRY,    KVM_EXIT_HLT,          KVM_EXIT_INTR,
                                 KVM_EXIT_IRQ_WINDOW_OPEN, KVM_EXIT_UNKNOWN, 0x7fff};
constexpr size_t kMaxRun = 16384;

const vmm::Buses& buses() {
  static vmm::Buses* b = [] {
    auto* x = new vmm::Buses;
    // Ports: a UART-sized device, one of a single port beside another (an access straddling the
    // two must reach neither), and one at the top of the port space.
    (void)x->pio.insert(std::make_shared<Checked>(8), 0x3f8, 8);
    (void)x->pio.insert(std::make_shared<Checked>(1), 0x60, 1);
    (void)x->pio.insert(std::make_shared<Checked>(1), 0x61, 1);
    (void)x->pio.insert(std::make_shared<Checked>(4), 0xfffc, 4);
    // MMIO: a BAR-sized range, two adjacent small ones, one at the top of the address space.
    (void)x->mmio.insert(std::make_shared<Checked>(0x4000), 0xc0000000, 0x4000);
    (void)x->mmio.insert(std::make_shared<Checked>(4), 0xfec00000, 4);
    (void)x->mmio.insert(std::make_shared<Checked>(4), 0xfec00004, 4);
    (void)x->mmio.insert(std::make_shared<Checked>(8), UINT64_MAX - 7, 8);
    return x;
  }();
  return *b;
}

void one(const uint8_t* data, size_t size) {
  if (size < 2) return;
  const size_t run_size = std::clamp<size_t>(data[0] | size_t{data[1]} << 8, sizeof(kvm_run), kMaxRun);
  // Exactly run_size bytes, aligned for kvm_run: ASan reports any access past the mapping.
  auto* mem = static_cast<uint8_t*>(std::aligned_alloc(alignof(kvm_run), (run_size + 63) / 64 * 64));
  std::unique_ptr<uint8_t, decltype(&std::free)> hold(mem, &std::free);
  std::memset(mem, 0, run_size);
  std::memcpy(mem, data + 2, std::min(size - 2, run_size));
  auto& run = *reinterpret_cast<kvm_run*>(mem);
  run.exit_reason = kReasons[run.exit_reason % std::size(kReasons)];
  const vmm::ExitOutcome out = vmm::handle_exit(run, run_size, buses());
  if (out.stop && (out.message.empty() || out.message.find('\n') != std::string::npos) &&
      out.reason == vmm::devices::StopReason::Error) {
    die("a stop for an error without a one-line message", out.message);
  }
  const std::string text = vmm::describe_internal_error(run);
  if (text.empty()) die("an internal error described by nothing");
}

void make_seeds(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  int i = 0;
  auto write = [&](auto fill) {
    std::vector<uint8_t> b(2 + 4096 + 64, 0);
    b[0] = 0x00, b[1] = 0x10;  // a 4 KiB mapping
    kvm_run run{};
    fill(run, b);
    std::memcpy(b.data() + 2, &run, sizeof run);
    const auto index = static_cast<uint32_t>(std::find(std::begin(kReasons), std::end(kReasons), run.exit_reason) - kReasons);
    std::memcpy(b.data() + 2 + offsetof(kvm_run, exit_reason), &index, sizeof index);
    std::ofstream(dir / ("seed-" + std::to_string(i++)), std::ios::binary)
        .write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
  };
  for (uint8_t dir_ : {KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT}) {
    write([&](kvm_run& r, std::vector<uint8_t>&) {
      r.exit_reason = KVM_EXIT_IO;
      r.io = {.direction = dir_, .size = 1, .port = 0x3f8, .count = 1, .data_offset = 2048};
    });
    write([&](kvm_run& r, std::vector<uint8_t>&) {  // a string instruction across two ports
      r.exit_reason = KVM_EXIT_IO;
      r.io = {.direction = dir_, .size = 2, .port = 0x60, .count = 16, .data_offset = 3072};
    });
  }
  for (uint8_t w : {0, 1}) {
    write([&](kvm_run& r, std::vector<uint8_t>&) {
      r.exit_reason = KVM_EXIT_MMIO;
      r.mmio.phys_addr = 0xc0003ffc;
      r.mmio.len = 4;
      r.mmio.is_write = w;
    });
  }
  write([](kvm_run& r, std::vector<uint8_t>&) {
    r.exit_reason = KVM_EXIT_SYSTEM_EVENT;
    r.system_event.type = KVM_SYSTEM_EVENT_RESET;
  });
  write([](kvm_run& r, std::vector<uint8_t>&) {
    r.exit_reason = KVM_EXIT_INTERNAL_ERROR;
    r.internal.suberror = KVM_INTERNAL_ERROR_EMULATION;
    r.internal.ndata = 4;
  });
  std::printf("seeds in %s\n", dir.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* seeds = std::getenv("VMM_EXIT_FUZZ_MAKE_SEEDS")) {
    make_seeds(seeds);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  one(data, size);
  return 0;
}
