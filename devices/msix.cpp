#include "devices/msix.hpp"

#include <algorithm>
#include <cstring>

namespace vmm::devices {

namespace {
constexpr uint16_t kControlEnable = 1u << 15;
constexpr uint16_t kControlFunctionMask = 1u << 14;
constexpr uint32_t kEntryMasked = 1u;
}  // namespace

Msix::Msix(std::vector<std::unique_ptr<MsiVector>> vectors)
    : vectors_(std::move(vectors)), table_(vectors_.size()), pending_((vectors_.size() + 63) / 64) {}

uint8_t Msix::add_capability(PciConfig& config, uint8_t bir, uint32_t table_offset, uint32_t pba_offset) {
  const uint16_t control = static_cast<uint16_t>(size() - 1);  // table size - 1, N-1 encoded
  const uint32_t table = table_offset | bir;
  const uint32_t pba = pba_offset | bir;
  const uint8_t body[10] = {
      static_cast<uint8_t>(control), static_cast<uint8_t>(control >> 8),
      static_cast<uint8_t>(table), static_cast<uint8_t>(table >> 8), static_cast<uint8_t>(table >> 16),
      static_cast<uint8_t>(table >> 24),
      static_cast<uint8_t>(pba), static_cast<uint8_t>(pba >> 8), static_cast<uint8_t>(pba >> 16),
      static_cast<uint8_t>(pba >> 24),
  };
  cap_ = config.add_capability(kPciCapMsix, body);
  const uint8_t writable[1] = {static_cast<uint8_t>((kControlEnable | kControlFunctionMask) >> 8)};
  config.set_writable(static_cast<uint8_t>(cap_ + 3), writable);
  return cap_;
}

void Msix::update_control(const PciConfig& config) {
  if (cap_ == 0) return;
  const uint8_t hi = config.byte(static_cast<uint8_t>(cap_ + 3));
  std::lock_guard lock(mutex_);
  enabled_ = hi & (kControlEnable >> 8);
  function_masked_ = hi & (kControlFunctionMask >> 8);
  bus_master_ = config.command() & kPciCommandMaster;
  deliver_pending_locked();
}

bool Msix::enabled() const {
  std::lock_guard lock(mutex_);
  return enabled_;
}

void Msix::table_read(uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), 0);
  std::lock_guard lock(mutex_);
  // Accesses are dword or qword aligned within one entry (§6.8.2): others read zero.
  if ((data.size() != 4 && data.size() != 8) || offset % data.size() != 0 || offset + data.size() > table_bytes()) {
    return;
  }
  const Entry& e = table_[offset / 16];
  const uint32_t words[4] = {e.addr_lo, e.addr_hi, e.data, e.control};
  std::memcpy(data.data(), reinterpret_cast<const uint8_t*>(words) + offset % 16, data.size());
}

void Msix::table_write(uint64_t offset, std::span<const uint8_t> data) {
  std::lock_guard lock(mutex_);
  if ((data.size() != 4 && data.size() != 8) || offset % data.size() != 0 || offset + data.size() > table_bytes()) {
    return;
  }
  const unsigned v = static_cast<unsigned>(offset / 16);
  Entry& e = table_[v];
  uint32_t words[4] = {e.addr_lo, e.addr_hi, e.data, e.control};
  std::memcpy(reinterpret_cast<uint8_t*>(words) + offset % 16, data.data(), data.size());
  e = Entry{.addr_lo = words[0], .addr_hi = words[1], .data = words[2], .control = words[3] & kEntryMasked};
  vectors_[v]->set_message(uint64_t{e.addr_hi} << 32 | e.addr_lo, e.data);
  deliver_pending_locked();
}

void Msix::pba_read(uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), 0);
  std::lock_guard lock(mutex_);
  if ((data.size() != 4 && data.size() != 8) || offset % data.size() != 0 || offset + data.size() > pba_bytes()) {
    return;
  }
  std::memcpy(data.data(), reinterpret_cast<const uint8_t*>(pending_.data()) + offset, data.size());
}

bool Msix::masked_locked(unsigned v) const {
  // An MSI-X message is the function's write to memory: without bus mastering it waits, pending,
  // as behind a mask (sent once the driver turns bus mastering on, not lost).
  return !enabled_ || function_masked_ || !bus_master_ || (table_[v].control & kEntryMasked);
}

void Msix::signal(uint16_t vector) {
  std::lock_guard lock(mutex_);
  if (vector >= vectors_.size()) return;
  if (masked_locked(vector)) {
    pending_[vector / 64] |= 1ull << (vector % 64);
    return;
  }
  vectors_[vector]->trigger();
}

void Msix::deliver_pending_locked() {
  for (unsigned v = 0; v < vectors_.size(); ++v) {
    const uint64_t bit = 1ull << (v % 64);
    if ((pending_[v / 64] & bit) && !masked_locked(v)) {
      pending_[v / 64] &= ~bit;
      vectors_[v]->trigger();
    }
  }
}

Msix::State Msix::save() const {
  std::lock_guard lock(mutex_);
  return State{.enabled = enabled_, .function_masked = function_masked_, .table = table_, .pending = pending_};
}

void Msix::restore(const State& state) {
  std::lock_guard lock(mutex_);
  enabled_ = state.enabled;
  function_masked_ = state.function_masked;
  for (size_t v = 0; v < table_.size(); ++v) {
    table_[v] = v < state.table.size() ? state.table[v] : Entry{};
    vectors_[v]->set_message(uint64_t{table_[v].addr_hi} << 32 | table_[v].addr_lo, table_[v].data);
  }
  for (size_t i = 0; i < pending_.size(); ++i) pending_[i] = i < state.pending.size() ? state.pending[i] : 0;
}

}  // namespace vmm::devices
