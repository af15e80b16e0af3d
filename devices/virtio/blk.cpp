#include "devices/virtio/blk.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <cstddef>
#include <cstring>

namespace vmm::devices::virtio {

namespace {

// virtio 1.2 §5.2.6: struct virtio_blk_req's device-readable header.
struct ReqHeader {
  uint32_t type;
  uint32_t reserved;
  uint64_t sector;
};
static_assert(sizeof(ReqHeader) == 16);

// virtio 1.2 §5.2.6: struct virtio_blk_discard_write_zeroes.
struct RangeSeg {
  uint64_t sector;
  uint32_t num_sectors;
  uint32_t flags;
};
static_assert(sizeof(RangeSeg) == 16);

// virtio 1.2 §5.2.4: struct virtio_blk_config, up to write_zeroes_may_unmap.
struct [[gnu::packed]] BlkConfig {
  uint64_t capacity;
  uint32_t size_max;
  uint32_t seg_max;
  uint16_t cylinders;
  uint8_t heads;
  uint8_t sectors;
  uint32_t blk_size;
  uint8_t physical_block_exp;
  uint8_t alignment_offset;
  uint16_t min_io_size;
  uint32_t opt_io_size;
  uint8_t writeback;
  uint8_t unused0;
  uint16_t num_queues;
  uint32_t max_discard_sectors;
  uint32_t max_discard_seg;
  uint32_t discard_sector_alignment;
  uint32_t max_write_zeroes_sectors;
  uint32_t max_write_zeroes_seg;
  uint8_t write_zeroes_may_unmap;
  uint8_t unused1[3];
};
static_assert(offsetof(BlkConfig, blk_size) == 20 && offsetof(BlkConfig, num_queues) == 34 &&
              offsetof(BlkConfig, max_write_zeroes_seg) == 52 && sizeof(BlkConfig) == 60);

// Checks [sector, sector + count) against the disk, overflow-safe.
bool in_disk(uint64_t sector, uint64_t count, uint64_t capacity) {
  return sector <= capacity && count <= capacity - sector;
}

BlkRequest invalid(BlkRequest r, uint8_t status, std::string why) {
  r.kind = BlkRequest::Kind::Invalid;
  r.status = status;
  r.error = std::move(why);
  return r;
}

}  // namespace

Result<BlkRequest> parse_blk_request(const GuestMemory& memory, const DescriptorChain& chain, uint64_t capacity) {
  // The status byte: the last byte of the device-writable part.
  auto last = std::find_if(chain.writable.rbegin(), chain.writable.rend(), [](const Segment& s) { return s.len > 0; });
  if (last == chain.writable.rend()) return fail("request without a device-writable status byte");
  BlkRequest r;
  r.status_gpa = last->gpa + last->len - 1;
  std::vector<Segment> writable_data(chain.writable.begin(), last.base());
  writable_data.back().len -= 1;
  const uint64_t writable_bytes = chain.writable_bytes - 1;

  Reader reader(memory, chain.readable);
  auto hdr = reader.read_obj<ReqHeader>();
  if (!hdr) return invalid(std::move(r), kBlkSIoErr, "request header shorter than 16 bytes");
  r.type = hdr->type;
  r.sector = hdr->sector;

  // Readable segments after the header (for writes and ranges).
  std::vector<Segment> readable_data;
  {
    uint64_t skip = sizeof(ReqHeader);
    for (const Segment& s : chain.readable) {
      if (skip >= s.len) {
        skip -= s.len;
        continue;
      }
      readable_data.push_back({.gpa = s.gpa + skip, .len = static_cast<uint32_t>(s.len - skip)});
      skip = 0;
    }
  }
  const uint64_t readable_bytes = chain.readable_bytes - sizeof(ReqHeader);

  switch (r.type) {
    case kBlkTIn:
    case kBlkTOut: {
      const bool in = r.type == kBlkTIn;
      r.kind = in ? BlkRequest::Kind::Read : BlkRequest::Kind::Write;
      if (in && readable_bytes != 0) return invalid(std::move(r), kBlkSIoErr, "read request with device-readable data");
      if (!in && writable_bytes != 0) return invalid(std::move(r), kBlkSIoErr, "write request with device-writable data");
      r.data = in ? std::move(writable_data) : std::move(readable_data);
      r.data_bytes = in ? writable_bytes : readable_bytes;
      if (r.data_bytes > kBlkMaxDataBytes) {
        return invalid(std::move(r), kBlkSIoErr, fmt::format("data length {} is more than {}", r.data_bytes, kBlkMaxDataBytes));
      }
      if (r.data_bytes % kSectorSize != 0) {
        return invalid(std::move(r), kBlkSIoErr, fmt::format("data length {} is not a multiple of 512", r.data_bytes));
      }
      if (!in_disk(r.sector, r.data_bytes / kSectorSize, capacity)) {
        return invalid(std::move(r), kBlkSIoErr,
                       fmt::format("sectors {}+{} outside the disk's {}", r.sector, r.data_bytes / kSectorSize, capacity));
      }
      return r;
    }
    case kBlkTFlush:
      r.kind = BlkRequest::Kind::Flush;
      return r;
    case kBlkTGetId:
      r.kind = BlkRequest::Kind::GetId;
      if (readable_bytes != 0) return invalid(std::move(r), kBlkSIoErr, "get-id request with device-readable data");
      r.data = std::move(writable_data);
      r.data_bytes = writable_bytes;
      return r;
    case kBlkTDiscard:
    case kBlkTWriteZeroes: {
      const bool discard = r.type == kBlkTDiscard;
      r.kind = discard ? BlkRequest::Kind::Discard : BlkRequest::Kind::WriteZeroes;
      // We advertise one range per request (max_discard_seg = max_write_zeroes_seg = 1).
      if (readable_bytes != sizeof(RangeSeg) || writable_bytes != 0) {
        return invalid(std::move(r), kBlkSUnsupp, fmt::format("{} readable bytes of ranges, expected one 16-byte range", readable_bytes));
      }
      auto seg = reader.read_obj<RangeSeg>();
      if (!seg) return invalid(std::move(r), kBlkSIoErr, seg.error().message());
      r.range_sector = seg->sector;
      r.range_sectors = seg->num_sectors;
      // §5.2.6.2: discard with the unmap flag, or unknown flags, are unsupported.
      const uint32_t allowed = discard ? 0 : kBlkWriteZeroesFUnmap;
      if (seg->flags & ~allowed) {
        return invalid(std::move(r), kBlkSUnsupp, fmt::format("range flags {:#x} not supported", seg->flags));
      }
      r.unmap = seg->flags & kBlkWriteZeroesFUnmap;
      if (seg->num_sectors > kBlkMaxRangeSectors || !in_disk(seg->sector, seg->num_sectors, capacity)) {
        return invalid(std::move(r), kBlkSIoErr,
                       fmt::format("range {}+{} outside the disk's {} sectors or too long", seg->sector, seg->num_sectors, capacity));
      }
      return r;
    }
    default:
      return invalid(std::move(r), kBlkSUnsupp, fmt::format("request type {} not supported", r.type));
  }
}

// ---- The device ---------------------------------------------------------------------------------

struct Block::InFlight {
  uint16_t head;
  uint64_t status_gpa;
  uint64_t generation;
  uint64_t expect;  // bytes the image must report
  uint32_t written;  // bytes written into the guest on success (data; the status byte is added)
  BlkRequest::Kind kind;
  std::vector<iovec> iov;
};

Block::Block(std::unique_ptr<disk::Image> image, std::string id)
    : VirtioDevice([] {
        std::vector<Queue> q;
        q.emplace_back(kQueueSize);
        return q;
      }()),
      image_(std::move(image)),
      id_(std::move(id)) {}

uint64_t Block::device_features() const {
  uint64_t f = kFVersion1 | kFRingEventIdx | kFRingIndirectDesc | kBlkFSizeMax | kBlkFSegMax | kBlkFBlkSize | kBlkFFlush;
  if (image_->read_only()) {
    f |= kBlkFRo;
  } else {
    f |= kBlkFDiscard | kBlkFWriteZeroes;
  }
  return f;
}

void Block::read_config(uint64_t offset, std::span<uint8_t> data) {
  BlkConfig c{};
  c.capacity = capacity();
  c.size_max = kBlkSizeMax;
  c.seg_max = kQueueSize - 2;  // the header and the status take a descriptor each
  static_assert(uint64_t{kBlkSizeMax} * (kQueueSize - 2) <= kBlkMaxDataBytes, "a request the driver may make is refused");
  c.blk_size = kSectorSize;
  c.num_queues = 1;
  c.max_discard_sectors = kBlkMaxRangeSectors;
  c.max_discard_seg = 1;
  c.discard_sector_alignment = 1;
  c.max_write_zeroes_sectors = kBlkMaxRangeSectors;
  c.max_write_zeroes_seg = 1;
  c.write_zeroes_may_unmap = 1;
  std::fill(data.begin(), data.end(), 0);
  const auto* raw = reinterpret_cast<const uint8_t*>(&c);
  for (size_t i = 0; i < data.size(); ++i) {
    if (offset + i < sizeof c) data[i] = raw[offset + i];
  }
}

void Block::write_config(uint64_t, std::span<const uint8_t>) {
  // Only `writeback` is writable, and only with VIRTIO_BLK_F_CONFIG_WCE, which we do not offer.
}

Result<> Block::activate(const GuestMemory& memory, uint64_t features, Interrupt& interrupt) {
  memory_ = &memory;
  interrupt_ = &interrupt;
  queues_[0].set_event_idx(features & kFRingEventIdx);
  return {};
}

void Block::reset() {
  ++generation_;
  for (auto& q : queues_) q.reset();
  memory_ = nullptr;
  interrupt_ = nullptr;
}

Result<> Block::process_queue(unsigned queue) {
  if (queue != 0 || !memory_) return {};
  Queue& q = queues_[0];
  unsigned budget = q.chains_per_pass();
  for (;;) {
    const uint16_t used_before = q.save().next_used;
    for (; budget > 0; --budget) {
      auto chain = q.pop(*memory_);
      if (!chain) return std::unexpected(chain.error());
      if (!*chain) break;
      auto req = parse_blk_request(*memory_, **chain, capacity());
      if (!req) {
        // Nothing to answer through: give the chain back unanswered.
        ++errors_;
        if (!logged_) fmt::print(stderr, "vmm: virtio-blk {}: {}\n", image_->path().string(), req.error().message());
        logged_ = true;
        if (auto r = q.push_used(*memory_, (*chain)->head, 0); !r) return r;
        continue;
      }
      start(*req, (*chain)->head);
    }
    // Requests answered at once (refused, get-id) may want an interrupt; I/O completions decide later.
    if (q.save().next_used != used_before) {
      auto need = q.needs_interrupt(*memory_);
      if (!need) return std::unexpected(need.error());
      if (*need) interrupt_->signal_used(0);
    }
    if (budget == 0) {
      interrupt_->serve_again(0);
      return {};
    }
    // Ask for the next notification, then look again: a chain made available in between would
    // otherwise wait for the next kick.
    if (auto r = q.enable_notification(*memory_); !r) return r;
    auto more = q.has_available(*memory_);
    if (!more) return std::unexpected(more.error());
    if (!*more) return {};
  }
}

void Block::refuse(const BlkRequest& req, uint16_t head, uint8_t status, const std::string& why) {
  ++errors_;
  if (!logged_) {
    fmt::print(stderr, "vmm: virtio-blk {}: request type {} refused: {}\n", image_->path().string(), req.type, why);
    logged_ = true;
  }
  finish(head, req.status_gpa, status, 0);
}

Block::Stats Block::stats() {
  std::lock_guard lock(mutex());
  Stats s = stats_;
  s.errors = errors_;
  return s;
}

void Block::count(BlkRequest::Kind kind, uint64_t bytes) {
  using Kind = BlkRequest::Kind;
  switch (kind) {
    case Kind::Read: ++stats_.reads; stats_.read_bytes += bytes; break;
    case Kind::Write: ++stats_.writes; stats_.write_bytes += bytes; break;
    case Kind::Flush: ++stats_.flushes; break;
    case Kind::Discard:
    case Kind::WriteZeroes: ++stats_.discards; break;
    default: break;
  }
}

void Block::start(const BlkRequest& req, uint16_t head) {
  using Kind = BlkRequest::Kind;
  if (req.kind == Kind::Invalid) return refuse(req, head, req.status, req.error);
  if (req.kind == Kind::GetId) {
    Writer w(*memory_, req.data);
    const size_t n = std::min<size_t>({id_.size(), kBlkIdBytes, static_cast<size_t>(w.remaining())});
    std::array<uint8_t, kBlkIdBytes> buf{};
    std::memcpy(buf.data(), id_.data(), n);
    // The id is NUL-padded to 20 bytes when there is room (§5.2.6.1).
    const size_t len = std::min<size_t>(kBlkIdBytes, w.remaining());
    if (!w.write(std::span<const uint8_t>(buf.data(), len))) return refuse(req, head, kBlkSIoErr, "get-id buffer");
    return finish(head, req.status_gpa, kBlkSOk, static_cast<uint32_t>(len));
  }

  auto ctx = std::make_shared<InFlight>();
  ctx->head = head;
  ctx->status_gpa = req.status_gpa;
  ctx->generation = generation_;
  ctx->expect = req.data_bytes;
  ctx->kind = req.kind;
  ctx->written = req.kind == Kind::Read ? static_cast<uint32_t>(req.data_bytes) : 0;
  for (const Segment& s : req.data) {
    if (s.len == 0) continue;
    auto host = memory_->slice(Gpa(s.gpa), s.len);  // checked at pop: cannot fail
    if (!host) return refuse(req, head, kBlkSIoErr, host.error().message());
    ctx->iov.push_back(iovec{host->data(), host->size()});
  }
  auto done = [this, ctx](int32_t res) {
    std::lock_guard lock(mutex_);
    --in_flight_;
    if (ctx->generation != generation_ || !memory_) return;  // the device was reset meanwhile
    const bool ok = res >= 0 && static_cast<uint64_t>(res) == ctx->expect;
    if (!ok) {
      ++errors_;
      if (!logged_) {
        fmt::print(stderr, "vmm: virtio-blk {}: I/O error: {}\n", image_->path().string(),
                   res < 0 ? errno_text(-res) : fmt::format("{} of {} bytes", res, ctx->expect));
        logged_ = true;
      }
    }
    if (ok) count(ctx->kind, ctx->expect);
    finish(ctx->head, ctx->status_gpa, ok ? kBlkSOk : kBlkSIoErr, ok ? ctx->written : 0);
    auto need = queues_[0].needs_interrupt(*memory_);
    if (need && *need) interrupt_->signal_used(0);
  };

  Result<> r;
  const uint64_t offset = req.sector * kSectorSize;  // in_disk() bounds it by the image size
  switch (req.kind) {
    case Kind::Read: r = image_->read(offset, ctx->iov, done); break;
    case Kind::Write: r = image_->write(offset, ctx->iov, done); break;
    case Kind::Flush: r = image_->flush(done); break;
    case Kind::Discard:
      r = image_->discard(req.range_sector * kSectorSize, uint64_t{req.range_sectors} * kSectorSize, done);
      break;
    case Kind::WriteZeroes:
      r = image_->write_zeroes(req.range_sector * kSectorSize, uint64_t{req.range_sectors} * kSectorSize, req.unmap,
                               done);
      break;
    default: r = fail("unexpected request kind"); break;
  }
  if (r) {
    ++in_flight_;
  } else {
    refuse(req, head, kBlkSIoErr, r.error().message());
  }
}

void Block::finish(uint16_t head, uint64_t status_gpa, uint8_t status, uint32_t written) {
  // The status byte was checked to be in RAM when the chain was popped.
  (void)memory_->write_obj(Gpa(status_gpa), status);
  (void)queues_[0].push_used(*memory_, head, written + 1);
}

}  // namespace vmm::devices::virtio
