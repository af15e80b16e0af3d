#include "devices/virtio/queue.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>

namespace vmm::devices::virtio {

namespace {

// virtio 1.2 §2.7.5: struct virtq_desc.
struct Desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(Desc) == 16);

constexpr uint16_t kKnownFlags = kDescFNext | kDescFWrite | kDescFIndirect;

// Ring layouts (virtio 1.2 §2.7.6, §2.7.8): avail = flags, idx, ring[size], used_event;
// used = flags, idx, ring[size] of {id u32, len u32}, avail_event.
constexpr uint64_t avail_bytes(uint64_t size) { return 6 + 2 * size; }
constexpr uint64_t used_bytes(uint64_t size) { return 6 + 8 * size; }

// A 16-bit ring field the driver reads or writes concurrently. Its address was checked (in RAM,
// 2-aligned: the rings are aligned and the host mapping is page-aligned).
Result<std::atomic_ref<uint16_t>> ring_u16(const GuestMemory& memory, uint64_t gpa) {
  auto s = memory.slice(Gpa(gpa), 2);
  if (!s) return std::unexpected(s.error());
  return std::atomic_ref<uint16_t>(*reinterpret_cast<uint16_t*>(s->data()));
}

bool is_power_of_two(uint32_t v) { return v != 0 && (v & (v - 1)) == 0; }

// virtio 1.2 §2.7.7.2: vring_need_event.
bool need_event(uint16_t event, uint16_t new_idx, uint16_t old_idx) {
  return static_cast<uint16_t>(new_idx - event - 1) < static_cast<uint16_t>(new_idx - old_idx);
}

}  // namespace

// ---- Reader / Writer ----------------------------------------------------------------------------

namespace {

uint64_t total(std::span<const Segment> segments) {
  uint64_t n = 0;
  for (const auto& s : segments) n += s.len;  // at most 2^16 segments of < 2^32 bytes: no overflow
  return n;
}

// Moves (index, offset) past `n` bytes and past empty segments.
void settle(std::span<const Segment> segments, size_t& index, uint64_t& offset, uint64_t n) {
  offset += n;
  while (index < segments.size() && offset >= segments[index].len) {
    offset -= segments[index].len;
    ++index;
  }
}

}  // namespace

SegmentCursor::SegmentCursor(const GuestMemory& memory, std::span<const Segment> segments)
    : memory_(memory), segments_(segments), remaining_(total(segments)) {
  settle(segments_, index_, offset_, 0);
}

void SegmentCursor::advance(uint64_t n) {
  settle(segments_, index_, offset_, n);
  remaining_ -= n;
}

Result<> SegmentCursor::transfer(std::span<uint8_t> bytes, bool to_guest, const char* what) {
  if (bytes.size() > remaining_) {
    return fail("descriptor chain has {} {} bytes left, {} are needed", remaining_, what, bytes.size());
  }
  size_t at = 0;
  while (at < bytes.size()) {
    const Segment& s = segments_[index_];
    auto span = memory_.slice(Gpa(s.gpa + offset_), s.len - offset_);  // checked at pop
    if (!span) return std::unexpected(span.error());
    const size_t take = std::min<size_t>(bytes.size() - at, span->size());
    if (to_guest) {
      std::memcpy(span->data(), bytes.data() + at, take);
    } else {
      std::memcpy(bytes.data() + at, span->data(), take);
    }
    advance(take);
    at += take;
  }
  return {};
}

Result<> SegmentCursor::skip(uint64_t n) {
  if (n > remaining_) return fail("descriptor chain has {} bytes left, cannot skip {}", remaining_, n);
  while (n > 0) {
    const uint64_t take = std::min<uint64_t>(n, segments_[index_].len - offset_);
    advance(take);
    n -= take;
  }
  return {};
}

// ---- Queue --------------------------------------------------------------------------------------

Queue::Queue(uint16_t max_size) : max_size_(max_size) { reset(); }

void Queue::reset() { state_ = State{.size = max_size_}; }

Result<> Queue::enable(const GuestMemory& memory) {
  if (auto r = validate(memory); !r) return r;
  // Nothing was used yet: the first interrupt decision compares against this position.
  state_.signalled_used = state_.next_used;
  state_.signalled_valid = true;
  return {};
}

Result<> Queue::validate(const GuestMemory& memory) {
  const uint32_t size = state_.size;
  if (!is_power_of_two(size) || size > max_size_) {
    return fail("queue size {} is not a power of two between 1 and {}", size, max_size_);
  }
  if (state_.desc % 16 != 0 || !memory.contains(Gpa(state_.desc), 16ull * size)) {
    return fail("descriptor table at {:#x} ({} entries) is not 16-aligned inside RAM", state_.desc, size);
  }
  if (state_.avail % 2 != 0 || !memory.contains(Gpa(state_.avail), avail_bytes(size))) {
    return fail("avail ring at {:#x} is not 2-aligned inside RAM", state_.avail);
  }
  if (state_.used % 4 != 0 || !memory.contains(Gpa(state_.used), used_bytes(size))) {
    return fail("used ring at {:#x} is not 4-aligned inside RAM", state_.used);
  }
  state_.ready = true;
  return {};
}

Result<> Queue::restore(const GuestMemory& memory, const State& state) {
  state_ = state;
  if (!state_.ready) return {};
  state_.ready = false;
  if (auto r = validate(memory); !r) return r;
  if (const uint16_t in_use = static_cast<uint16_t>(state_.next_avail - state_.next_used); in_use > state_.size) {
    state_.ready = false;
    return fail("{} chains in use (avail position {}, used {}), more than the queue size {}", in_use, state_.next_avail,
                state_.next_used, state_.size);
  }
  return {};
}

Result<uint16_t> Queue::avail_idx(const GuestMemory& memory) const {
  auto idx = ring_u16(memory, state_.avail + 2);
  if (!idx) return std::unexpected(idx.error());
  return idx->load(std::memory_order_acquire);
}

Result<bool> Queue::has_available(const GuestMemory& memory) const {
  if (!state_.ready) return false;
  auto idx = avail_idx(memory);
  if (!idx) return std::unexpected(idx.error());
  return *idx != state_.next_avail;
}

Result<std::optional<DescriptorChain>> Queue::pop(const GuestMemory& memory) {
  if (!state_.ready) return std::nullopt;
  auto idx = avail_idx(memory);
  if (!idx) return std::unexpected(idx.error());
  const uint16_t pending = static_cast<uint16_t>(*idx - state_.next_avail);
  if (pending > state_.size) {
    return fail("avail idx {} is {} entries ahead of the device's {}, more than the queue size {}", *idx, pending,
                state_.next_avail, state_.size);
  }
  if (pending == 0) return std::nullopt;
  // Chains popped and not yet given back: a driver has at most the queue's size of them out (each
  // needs its own head), so more means heads reused while in use. Unchecked, a guest that keeps
  // republishing one head would have the device start requests without bound (QEMU: "Virtqueue
  // size exceeded").
  if (const uint16_t in_use = static_cast<uint16_t>(state_.next_avail - state_.next_used); in_use >= state_.size) {
    return fail("{} chains are in use, the whole queue of {}, and the driver made another available", in_use,
                state_.size);
  }
  // The ring entry is read after the index (acquire above): the driver wrote it before the index.
  auto slot = ring_u16(memory, state_.avail + 4 + 2ull * (state_.next_avail % state_.size));
  if (!slot) return std::unexpected(slot.error());
  const uint16_t head = slot->load(std::memory_order_relaxed);
  DescriptorChain chain;
  chain.head = head;
  if (auto r = walk(memory, state_.desc, state_.size, head, false, chain); !r) {
    return std::unexpected(r.error().context(fmt::format("chain at avail[{}] (head {})", state_.next_avail, head)));
  }
  ++state_.next_avail;
  return chain;
}

Result<> Queue::walk(const GuestMemory& memory, uint64_t table, uint32_t count, uint16_t index, bool indirect,
                     DescriptorChain& chain) const {
  const char* where = indirect ? "indirect table" : "descriptor table";
  for (uint32_t hops = 1;; ++hops) {
    if (index >= count) return fail("descriptor index {} outside the {} of {} entries", index, where, count);
    if (hops > count) return fail("chain longer than the {} entries of the {} (a loop?)", count, where);
    auto d = memory.read_obj<Desc>(Gpa(table + 16ull * index));
    if (!d) return std::unexpected(d.error());
    if (d->flags & ~kKnownFlags) return fail("descriptor {} has unknown flags {:#x}", index, d->flags);
    if (d->flags & kDescFIndirect) {
      // virtio 1.2 §2.7.5.3.1: not nested, not with NEXT, so the chain's last descriptor; and the
      // device "MUST handle the case of zero or more normal chained descriptors followed by a
      // single descriptor with flags&VIRTQ_DESC_F_INDIRECT" (§2.7.5.3.2; until 2026-12-08 only
      // zero was taken, as QEMU does). The device ignores WRITE on it.
      if (indirect) return fail("descriptor {} in an indirect table is itself indirect", index);
      if (d->flags & kDescFNext) return fail("indirect descriptor {} also has NEXT", index);
      if (d->len == 0 || d->len % 16 != 0) return fail("indirect table length {} is not a nonzero multiple of 16", d->len);
      const uint64_t entries = d->len / 16;
      // The whole chain, the descriptors before it and the table's, no longer than the queue: the
      // segments a chain can bring stay bounded by the queue's size.
      if (entries + (hops - 1) > state_.size) {
        return fail("indirect table of {} entries after {} descriptors is longer than the queue size {}", entries, hops - 1,
                    state_.size);
      }
      if (!memory.contains(Gpa(d->addr), d->len)) {
        return fail("indirect table at {:#x}+{:#x} is outside RAM", d->addr, d->len);
      }
      return walk(memory, d->addr, static_cast<uint32_t>(entries), 0, true, chain);
    }
    if (!memory.contains(Gpa(d->addr), d->len)) {
      return fail("descriptor {} buffer {:#x}+{:#x} is outside RAM", index, d->addr, d->len);
    }
    const Segment seg{.gpa = d->addr, .len = d->len};
    if (d->flags & kDescFWrite) {
      chain.writable.push_back(seg);
      chain.writable_bytes += seg.len;
    } else {
      if (!chain.writable.empty()) return fail("device-readable descriptor {} follows a device-writable one", index);
      chain.readable.push_back(seg);
      chain.readable_bytes += seg.len;
    }
    if (!(d->flags & kDescFNext)) return {};
    index = d->next;
  }
}

Result<> Queue::push_used(const GuestMemory& memory, uint16_t head, uint32_t len) {
  if (!state_.ready) return fail("push to a queue that is not ready");
  if (head >= state_.size) return fail("used element for head {} outside a queue of {}", head, state_.size);
  const uint64_t elem = state_.used + 4 + 8ull * (state_.next_used % state_.size);
  const struct {
    uint32_t id, len;
  } e{head, len};
  if (auto r = memory.write_obj(Gpa(elem), e); !r) return r;
  auto idx = ring_u16(memory, state_.used + 2);
  if (!idx) return std::unexpected(idx.error());
  ++state_.next_used;
  idx->store(state_.next_used, std::memory_order_release);  // the element is visible first
  return {};
}

Result<bool> Queue::needs_interrupt(const GuestMemory& memory) {
  if (!state_.ready) return false;
  // The used idx store must be visible before the driver's event index or flags are read
  // (virtio 1.2 §2.7.7.2, the "mb()" before reading used_event).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const uint16_t old_used = state_.signalled_used;
  const bool valid = state_.signalled_valid;
  state_.signalled_used = state_.next_used;
  state_.signalled_valid = true;
  if (state_.event_idx) {
    auto event = ring_u16(memory, state_.avail + 4 + 2ull * state_.size);
    if (!event) return std::unexpected(event.error());
    if (!valid) return true;
    return need_event(event->load(std::memory_order_relaxed), state_.next_used, old_used);
  }
  if (valid && old_used == state_.next_used) return false;
  auto flags = ring_u16(memory, state_.avail);
  if (!flags) return std::unexpected(flags.error());
  return !(flags->load(std::memory_order_relaxed) & kAvailFNoInterrupt);
}

Result<> Queue::enable_notification(const GuestMemory& memory) {
  if (!state_.ready || !state_.event_idx) return {};
  auto event = ring_u16(memory, state_.used + 4 + 8ull * state_.size);
  if (!event) return std::unexpected(event.error());
  // Written only if it changes: in a clone the ring's page is the template's until written, and a
  // write copies it (a restored device's first look finds most rings as they were).
  if (event->load(std::memory_order_relaxed) != state_.next_avail) event->store(state_.next_avail, std::memory_order_relaxed);
  // Published before the caller looks at the avail idx again.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return {};
}

}  // namespace vmm::devices::virtio
