// The driver side of a split virtqueue for tests: lays out a descriptor table, avail and used rings in
// guest memory, and writes chains — well-formed or as malicious as a test wants (raw descriptors,
// any flags and next indices, any avail idx).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "devices/virtio/queue.hpp"
#include "vmm/base/guest_memory.hpp"

namespace vmm::test {

struct RawDesc {
  uint64_t addr = 0;
  uint32_t len = 0;
  uint16_t flags = 0;
  uint16_t next = 0;
};
static_assert(sizeof(RawDesc) == 16);

class VirtqBuilder {
 public:
  /// Rings at `base` (page-aligned): descriptors, then avail, then used (4-aligned).
  VirtqBuilder(const GuestMemory& memory, uint64_t base, uint16_t size)
      : memory_(&memory), size_(size), desc_(base), avail_(base + 16ull * size),
        used_((avail_ + 6 + 2ull * size + 3) & ~3ull) {
    (void)memory_->fill_zero(Gpa(base), used_ + 6 + 8ull * size - base);
  }

  uint16_t size() const { return size_; }
  uint64_t desc() const { return desc_; }
  uint64_t avail() const { return avail_; }
  uint64_t used() const { return used_; }

  /// Configures and enables `q` on these rings.
  Result<> attach(devices::virtio::Queue& q) const {
    q.set_size(size_);
    q.set_desc(desc_);
    q.set_avail(avail_);
    q.set_used(used_);
    return q.enable(*memory_);
  }

  void set_desc(uint16_t index, RawDesc d) const { (void)memory_->write_obj(Gpa(desc_ + 16ull * index), d); }
  /// Writes a raw descriptor at `table + 16 * index` (for indirect tables).
  void set_table_desc(uint64_t table, uint16_t index, RawDesc d) const {
    (void)memory_->write_obj(Gpa(table + 16ull * index), d);
  }

  /// Puts `head` in the next avail slot and publishes it (avail idx + 1).
  void publish(uint16_t head) {
    (void)memory_->write_obj<uint16_t>(Gpa(avail_ + 4 + 2ull * (avail_idx_ % size_)), head);
    set_avail_idx(static_cast<uint16_t>(avail_idx_ + 1));
  }
  void set_avail_idx(uint16_t idx) {
    avail_idx_ = idx;
    (void)memory_->write_obj<uint16_t>(Gpa(avail_ + 2), idx);
  }
  void set_avail_flags(uint16_t flags) const { (void)memory_->write_obj<uint16_t>(Gpa(avail_), flags); }
  void set_used_event(uint16_t v) const { (void)memory_->write_obj<uint16_t>(Gpa(avail_ + 4 + 2ull * size_), v); }

  /// A well-formed chain over buffers {gpa, len, writable}, from descriptor `first` on; publishes it.
  struct Buf {
    uint64_t gpa;
    uint32_t len;
    bool writable;
  };
  uint16_t add_chain(uint16_t first, const std::vector<Buf>& bufs) {
    for (size_t i = 0; i < bufs.size(); ++i) {
      const bool last = i + 1 == bufs.size();
      set_desc(static_cast<uint16_t>((first + i) % size_),
               {.addr = bufs[i].gpa, .len = bufs[i].len,
                .flags = static_cast<uint16_t>((bufs[i].writable ? devices::virtio::kDescFWrite : 0) |
                                               (last ? 0 : devices::virtio::kDescFNext)),
                .next = static_cast<uint16_t>((first + i + 1) % size_)});
    }
    publish(first);
    return first;
  }

  uint16_t used_idx() const { return *memory_->read_obj<uint16_t>(Gpa(used_ + 2)); }
  struct UsedElem {
    uint32_t id, len;
  };
  UsedElem used_elem(uint16_t i) const { return *memory_->read_obj<UsedElem>(Gpa(used_ + 4 + 8ull * (i % size_))); }
  uint16_t avail_event() const { return *memory_->read_obj<uint16_t>(Gpa(used_ + 4 + 8ull * size_)); }

 private:
  const GuestMemory* memory_;
  uint16_t size_;
  uint64_t desc_, avail_, used_;
  uint16_t avail_idx_ = 0;
};

}  // namespace vmm::test
