#include "devices/bus.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <mutex>
#include <set>

namespace vmm::devices {

namespace {
std::mutex g_log_mutex;
std::set<std::pair<std::string, uint64_t>> g_logged;  // bounded below
constexpr size_t kMaxLogged = 256;
}  // namespace

Result<> Bus::insert(std::shared_ptr<BusDevice> device, uint64_t base, uint64_t len) {
  if (!device) return fail("{} bus: null device", name_);
  if (len == 0) return fail("{} bus: {} at {:#x} has zero length", name_, device->name(), base);
  if (len - 1 > UINT64_MAX - base) return fail("{} bus: {} range {:#x}+{:#x} overflows", name_, device->name(), base, len);
  auto it = std::lower_bound(ranges_.begin(), ranges_.end(), base, [](const Range& r, uint64_t b) { return r.base < b; });
  const uint64_t last = base + (len - 1);  // inclusive: a range may end exactly at 2^64
  if (it != ranges_.end() && it->base <= last) {
    return fail("{} bus: {} range {:#x}+{:#x} overlaps {}", name_, device->name(), base, len, it->device->name());
  }
  if (it != ranges_.begin()) {
    const Range& prev = *(it - 1);
    if (prev.base + (prev.len - 1) >= base) {
      return fail("{} bus: {} range {:#x}+{:#x} overlaps {}", name_, device->name(), base, len, prev.device->name());
    }
  }
  ranges_.insert(it, Range{base, len, std::move(device)});
  return {};
}

const Bus::Range* Bus::find(uint64_t addr, uint64_t size) const {
  auto it = std::upper_bound(ranges_.begin(), ranges_.end(), addr, [](uint64_t a, const Range& r) { return a < r.base; });
  if (it == ranges_.begin()) return nullptr;
  const Range& r = *(it - 1);
  const uint64_t off = addr - r.base;
  if (off >= r.len || size > r.len - off) return nullptr;  // partially covered counts as unclaimed
  return &r;
}

void Bus::log_unclaimed(const char* kind, uint64_t addr, size_t size) const {
  std::lock_guard lock(g_log_mutex);
  if (g_logged.size() >= kMaxLogged) return;
  if (!g_logged.emplace(name_, addr).second) return;
  fmt::print(stderr, "vmm: {} bus: unclaimed {} of {} bytes at {:#x}\n", name_, kind, size, addr);
}

bool Bus::read(uint64_t addr, std::span<uint8_t> data) const {
  if (const Range* r = find(addr, data.size())) {
    r->device->read(addr - r->base, data);
    return true;
  }
  std::fill(data.begin(), data.end(), 0xff);
  log_unclaimed("read", addr, data.size());
  return false;
}

bool Bus::write(uint64_t addr, std::span<const uint8_t> data) const {
  if (const Range* r = find(addr, data.size())) {
    r->device->write(addr - r->base, data);
    return true;
  }
  log_unclaimed("write", addr, data.size());
  return false;
}

}  // namespace vmm::devices
