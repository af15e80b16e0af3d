#include "devices/virtio/net.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <vector>

namespace vmm::devices::virtio {

namespace {

constexpr size_t kNumBuffersOffset = 10;  // virtio_net_hdr.num_buffers

Result<std::vector<iovec>> host_iov(const GuestMemory& memory, std::span<const Segment> segments) {
  std::vector<iovec> iov;
  iov.reserve(segments.size() + 1);  // room for one more (receive()'s overflow byte)
  for (const Segment& s : segments) {
    if (s.len == 0) continue;
    auto host = memory.slice(Gpa(s.gpa), s.len);  // checked at pop
    if (!host) return std::unexpected(host.error());
    iov.push_back({host->data(), host->size()});
  }
  return iov;
}

int hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

Result<MacAddress> parse_mac(std::string_view text) {
  MacAddress mac{};
  if (text.size() != 17) return fail("MAC {}: expected six hex bytes separated by ':'", text);
  for (size_t i = 0; i < 6; ++i) {
    const int hi = hex(text[3 * i]), lo = hex(text[3 * i + 1]);
    if (hi < 0 || lo < 0 || (i < 5 && text[3 * i + 2] != ':')) {
      return fail("MAC {}: expected six hex bytes separated by ':'", text);
    }
    mac[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  if (mac[0] & 1) return fail("MAC {}: a multicast address cannot be a NIC's", text);
  if (mac == MacAddress{}) return fail("MAC {}: all zeroes", text);
  return mac;
}

std::string format_mac(const MacAddress& m) {
  return fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5]);
}

Net::Net(Tap tap, MacAddress mac, NetOptions options)
    : VirtioDevice([] {
        std::vector<Queue> q;
        q.emplace_back(kQueueSize);
        q.emplace_back(kQueueSize);
        return q;
      }()),
      tap_(std::move(tap)),
      mac_(mac),
      filter_source_(options.filter_source),
      netns_(std::move(options.netns)) {}

Result<std::shared_ptr<Net>> Net::create(Tap tap, MacAddress mac, EventLoop& loop, NetOptions options) {
  std::shared_ptr<Net> net(new Net(std::move(tap), mac, std::move(options)));
  Net* self = net.get();
  // Frames waiting on the TAP: deliver what the guest has buffers for. Before DRIVER_OK (or after a
  // reset) the frames stay queued in the TAP.
  auto w = loop.watch(net->tap_.fd(), EventLoop::WatchKind::Device, [self] {
    std::lock_guard lock(self->mutex_);
    if (!self->memory_) return;
    // A receive ring the driver broke is its error as a broken ring it notified is: NEEDS_RESET
    // (receiving then stops until the reset; it used to stop without telling the driver).
    if (auto r = self->receive(); !r) self->interrupt_->device_error(fmt::format("queue {}: {}", kRxQueue, r.error().message()));
  });
  if (!w) return std::unexpected(w.error());
  net->loop_ = &loop;
  net->watch_ = *w;
  return net;
}

// A device that goes while the loop runs on (a snapshot check, a failed start) must not leave its
// callback behind: the TAP's next readiness would run it on a freed device.
Net::~Net() {
  if (watch_) loop_->unwatch(watch_);
}

uint64_t Net::device_features() const {
  return kFVersion1 | kFRingEventIdx | kFRingIndirectDesc | kNetFMac | kNetFStatus;
}

void Net::read_config(uint64_t offset, std::span<uint8_t> data) {
  // virtio 1.2 §5.1.4: mac[6], status (le16).
  std::array<uint8_t, 8> c{};
  std::memcpy(c.data(), mac_.data(), 6);
  c[6] = kNetSLinkUp;
  std::fill(data.begin(), data.end(), 0);
  for (size_t i = 0; i < data.size(); ++i) {
    if (offset + i < c.size()) data[i] = c[offset + i];
  }
}

void Net::write_config(uint64_t, std::span<const uint8_t>) {
  // The MAC is writable only with VIRTIO_NET_F_CTRL_MAC_ADDR-less legacy drivers; we are modern-only.
}

Result<> Net::activate(const GuestMemory& memory, uint64_t features, Interrupt& interrupt) {
  memory_ = &memory;
  interrupt_ = &interrupt;
  for (auto& q : queues_) q.set_event_idx(features & kFRingEventIdx);
  // Frames may already be waiting.
  return receive();
}

void Net::reset() {
  for (auto& q : queues_) q.reset();
  memory_ = nullptr;
  interrupt_ = nullptr;
}

void Net::halt() {
  // Frames stay queued in the TAP (as before DRIVER_OK); the rings keep their state for a snapshot.
  memory_ = nullptr;
}

void Net::log_once(Problem kind, const std::string& what) {
  const auto bit = static_cast<uint8_t>(1u << static_cast<unsigned>(kind));
  if ((logged_ & bit) == 0) fmt::print(stderr, "vmm: virtio-net {}: {}\n", tap_.name(), what);
  logged_ |= bit;
}

Result<> Net::process_queue(unsigned queue) {
  if (!memory_) return {};
  if (queue == kRxQueue) return receive();  // the driver added receive buffers
  if (queue == kTxQueue) return transmit();
  return {};
}

Result<> Net::interrupt_if_needed(unsigned queue) {
  auto need = queues_[queue].needs_interrupt(*memory_);
  if (!need) return std::unexpected(need.error());
  if (*need) interrupt_->signal_used(queue);
  return {};
}

Net::Stats Net::stats() {
  std::lock_guard lock(mutex());
  return Stats{.rx_frames = rx_frames_, .rx_bytes = rx_bytes_, .tx_frames = tx_frames_, .tx_bytes = tx_bytes_, .errors = errors_,
               .filtered = filtered_};
}

ssize_t Net::send(const std::vector<iovec>& guest) {
  // What the device looks at is copied out of guest memory once, and the copy is what is sent: the
  // virtio-net header and the Ethernet addresses. A guest that rewrites its buffer meanwhile (another
  // vCPU) cannot slip another source address past the filter. The header goes out zeroed: no
  // checksum or segmentation offload was offered, so the host kernel gets no such request from
  // the guest (a driver must not make one, and tun would act on it).
  constexpr size_t kPrefix = kNetHdrBytes + 12;  // the header, then destination and source MAC
  std::array<uint8_t, kPrefix> prefix{};
  std::vector<iovec>& iov = tx_iov_;  // kept: no allocation per frame
  iov.clear();
  iov.push_back({prefix.data(), 0});
  size_t got = 0;
  for (const iovec& v : guest) {
    auto* p = static_cast<uint8_t*>(v.iov_base);
    const size_t take = std::min(v.iov_len, kPrefix - got);
    std::memcpy(prefix.data() + got, p, take);
    got += take;
    if (take < v.iov_len) iov.push_back({p + take, v.iov_len - take});
  }
  iov[0].iov_len = got;
  std::memset(prefix.data(), 0, std::min(got, kNetHdrBytes));
  // A frame too short to hold a source address is foreign too.
  if (filter_source_ && (got < kPrefix || std::memcmp(prefix.data() + kNetHdrBytes + 6, mac_.data(), mac_.size()) != 0)) {
    ++filtered_;
    return 0;
  }
  return tap_.write(iov.data(), static_cast<int>(iov.size()));
}

Result<> Net::transmit() {
  Queue& q = queues_[kTxQueue];
  unsigned budget = q.chains_per_pass();
  for (;;) {
    bool sent = false;
    for (; budget > 0; --budget) {
      auto chain = q.pop(*memory_);
      if (!chain) return std::unexpected(chain.error());
      if (!*chain) break;
      const DescriptorChain& c = **chain;
      if (c.readable_bytes < kNetHdrBytes) {
        ++errors_;
        log_once(Problem::ShortTransmit, fmt::format("transmit chain of {} bytes, shorter than the {}-byte header", c.readable_bytes, kNetHdrBytes));
      } else {
        auto iov = host_iov(*memory_, c.readable);
        if (!iov) return std::unexpected(iov.error());
        const ssize_t n = send(*iov);
        if (n == 0) {
          // dropped: not from this interface's MAC
        } else if (n < 0) {
          ++errors_;  // the TAP refused the frame (too long, interface down): dropped, like a wire would
          log_once(Problem::TapWrite, fmt::format("TAP write: {}", errno_text(static_cast<int>(-n))));
        } else {
          ++tx_frames_;
          tx_bytes_ += c.readable_bytes - kNetHdrBytes;
        }
      }
      if (auto r = q.push_used(*memory_, c.head, 0); !r) return r;
      sent = true;
    }
    if (sent) {
      if (auto r = interrupt_if_needed(kTxQueue); !r) return r;
    }
    if (budget == 0) {
      interrupt_->serve_again(kTxQueue);
      return {};
    }
    if (auto r = q.enable_notification(*memory_); !r) return r;
    auto more = q.has_available(*memory_);
    if (!more) return std::unexpected(more.error());
    if (!*more) return {};
  }
}

Result<> Net::receive() {
  Queue& q = queues_[kRxQueue];
  if (!q.ready()) return {};
  bool delivered = false;
  for (unsigned budget = q.chains_per_pass();; --budget) {
    if (budget == 0) {
      // Frames may be left on the TAP, whose readiness comes again only with the next frame: the
      // loop comes back for them instead.
      interrupt_->serve_again(kRxQueue);
      break;
    }
    auto chain = q.pop(*memory_);
    if (!chain) return std::unexpected(chain.error());
    if (!*chain) {
      // Out of buffers: ask the driver to notify when it adds some, then look once more.
      if (auto r = q.enable_notification(*memory_); !r) return r;
      auto more = q.has_available(*memory_);
      if (!more) return std::unexpected(more.error());
      if (*more) continue;
      break;
    }
    const DescriptorChain& c = **chain;
    if (c.writable_bytes < kNetHdrBytes || !c.readable.empty()) {
      ++errors_;
      log_once(Problem::BadReceiveChain, fmt::format("receive chain with {} writable and {} readable bytes", c.writable_bytes, c.readable_bytes));
      if (auto r = q.push_used(*memory_, c.head, 0); !r) return r;
      delivered = true;
      continue;
    }
    auto iov = host_iov(*memory_, c.writable);
    if (!iov) return std::unexpected(iov.error());
    // One byte past the guest's buffer: tun copies what fits and says how much, so a frame longer
    // than the buffer shows only as a byte in here.
    uint8_t overflow = 0;
    iov->push_back({&overflow, 1});
    const ssize_t n = tap_.read(iov->data(), static_cast<int>(iov->size()));
    if (n < 0) {
      q.unpop();  // nothing to deliver now (EAGAIN) or the TAP failed: the buffer stays the driver's
      if (n == -EAGAIN) break;
      ++errors_;
      log_once(Problem::TapRead, fmt::format("TAP read: {}", errno_text(static_cast<int>(-n))));
      // EINVAL: tun dropped a frame it could not describe in a virtio-net header; the frames
      // queued behind it make the TAP readable no more than they did, so they are read now (the
      // pass stays bounded by the queue's size). Any other error is the TAP's own: left there.
      if (n == -EINVAL) continue;
      break;
    }
    if (static_cast<uint64_t>(n) > c.writable_bytes) {
      // The frame was longer than the buffer (a driver that posts buffers under the 1526 bytes
      // virtio 1.2 §5.1.6.3.1 asks for, a host MTU above the guest's). Dropped rather than handed
      // over cut short as if whole, as a NIC drops a frame too long for its buffer (and as QEMU
      // does), and the buffer stays the driver's for the next one.
      ++errors_;
      log_once(Problem::Oversized, fmt::format("received a frame of {} bytes (header included) for a buffer of {}: dropped", n,
                           c.writable_bytes));
      q.unpop();
      continue;
    }
    // The header as the device gives it: no flags, no GSO (VIRTIO_NET_F_GUEST_CSUM and the GSO
    // features are not offered: virtio 1.2 §5.1.6.4.1, "the device MUST set flags to zero"; tun
    // writes VIRTIO_NET_HDR_F_DATA_VALID for a frame whose checksum the host checked, and until
    // 2026-12-08 it reached the guest, which then skipped its own check), and one buffer per
    // frame (no VIRTIO_NET_F_MRG_RXBUF): num_buffers is 1.
    std::array<uint8_t, kNetHdrBytes> header{};
    header[kNumBuffersOffset] = 1;
    Writer w(*memory_, c.writable);
    if (auto r = w.write(header); !r) return r;
    ++rx_frames_;
    rx_bytes_ += static_cast<uint64_t>(n) >= kNetHdrBytes ? static_cast<uint64_t>(n) - kNetHdrBytes : 0;
    if (auto r = q.push_used(*memory_, c.head, static_cast<uint32_t>(n)); !r) return r;
    delivered = true;
  }
  if (delivered) return interrupt_if_needed(kRxQueue);
  return {};
}

}  // namespace vmm::devices::virtio
