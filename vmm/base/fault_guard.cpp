#include "vmm/base/fault_guard.hpp"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>

namespace vmm {

namespace {

struct Slot {
  std::atomic<bool> used{false};
  uintptr_t start = 0, end = 0;
  uint64_t dev = 0, ino = 0;
  char path[4096] = {};
  int status = 0;
  size_t length = 0;
  char message[768] = {};
};

constexpr int kSlots = 16;
Slot g_slots[kSlots];
std::mutex g_mutex;  // taking and giving back slots (never in the handler)

[[noreturn]] void die(const Slot& s) {
  ssize_t ignored = ::write(STDERR_FILENO, s.message, s.length);
  (void)ignored;
  ::_exit(s.status);
}

// Async-signal-safe: reads the slots (each published by its `used` flag, written before it) and
// calls write(2) and _exit(2) only.
void on_sigbus(int, siginfo_t* info, void*) {
  if (info->si_code == BUS_ADRERR) {
    const auto at = reinterpret_cast<uintptr_t>(info->si_addr);
    for (const Slot& s : g_slots) {
      if (s.used.load(std::memory_order_acquire) && at >= s.start && at < s.end) die(s);
    }
  }
  // Not ours: the default action. A fault re-executes its instruction and takes it; a SIGBUS sent
  // by another process is raised again.
  ::signal(SIGBUS, SIG_DFL);
  if (info->si_code <= 0) ::raise(SIGBUS);
}

void install_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    ::sigemptyset(&sa.sa_mask);
    ::sigaction(SIGBUS, &sa, nullptr);
  });
}

}  // namespace

Result<FaultGuard> FaultGuard::watch(const void* start, size_t size, std::string_view path, uint64_t dev, uint64_t ino,
                                     std::string_view message, int status) {
  install_handler();
  std::lock_guard lock(g_mutex);
  for (int i = 0; i < kSlots; ++i) {
    Slot& s = g_slots[i];
    if (s.used.load(std::memory_order_relaxed)) continue;
    s.start = reinterpret_cast<uintptr_t>(start);
    s.end = s.start + size;
    s.dev = dev;
    s.ino = ino;
    const size_t p = std::min(path.size(), sizeof s.path - 1);
    std::memcpy(s.path, path.data(), p);
    s.path[p] = 0;
    s.status = status;
    const size_t n = std::min(message.size(), sizeof s.message - 1);
    std::memcpy(s.message, message.data(), n);
    s.message[n] = '\n';
    s.length = n + 1;
    s.used.store(true, std::memory_order_release);
    return FaultGuard(i);
  }
  return fail("cannot watch the memory file: {} files mapped as guest memory already", kSlots);
}

void FaultGuard::exit_if_shrunk() {
  for (const Slot& s : g_slots) {
    if (!s.used.load(std::memory_order_acquire)) continue;
    struct stat st {};
    if (::stat(s.path, &st) == 0 && st.st_dev == s.dev && st.st_ino == s.ino &&
        static_cast<uint64_t>(st.st_size) < s.end - s.start) {
      die(s);
    }
  }
}

FaultGuard& FaultGuard::operator=(FaultGuard&& o) noexcept {
  if (this != &o) {
    this->~FaultGuard();
    slot_ = o.slot_;
    o.slot_ = -1;
  }
  return *this;
}

FaultGuard::~FaultGuard() {
  if (slot_ < 0) return;
  std::lock_guard lock(g_mutex);
  Slot& s = g_slots[slot_];
  s.used.store(false, std::memory_order_release);
  slot_ = -1;
}

}  // namespace vmm
