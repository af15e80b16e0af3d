#include "devices/virtio/pci_transport.hpp"

#include <fmt/core.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace vmm::devices::virtio {

namespace {

constexpr uint16_t kVendorVirtio = 0x1af4;
constexpr uint16_t kDeviceModernBase = 0x1040;
// virtio 1.2 §4.1.4: cfg_type of struct virtio_pci_cap.
constexpr uint8_t kCapCommon = 1;
constexpr uint8_t kCapNotify = 2;
constexpr uint8_t kCapIsr = 3;
constexpr uint8_t kCapDevice = 4;
constexpr uint8_t kCapPciCfg = 5;
// virtio 1.2 §4.1.4.9, struct virtio_pci_cfg_cap: the virtio_pci_cap (bar at +4, offset at +8,
// length at +12, written by the driver) and then pci_cfg_data at +16, a window onto the BARs.
constexpr uint8_t kPciCfgBar = 4, kPciCfgOffset = 8, kPciCfgLength = 12, kPciCfgData = 16;
constexpr uint8_t kIsrQueue = 1;
constexpr uint8_t kIsrConfig = 2;

// virtio 1.2 §4.1.4.3: struct virtio_pci_common_cfg offsets.
enum Common : uint64_t {
  kDeviceFeatureSelect = 0x00,
  kDeviceFeature = 0x04,
  kDriverFeatureSelect = 0x08,
  kDriverFeature = 0x0c,
  kMsixConfig = 0x10,
  kNumQueues = 0x12,
  kDeviceStatus = 0x14,
  kConfigGeneration = 0x15,
  kQueueSelect = 0x16,
  kQueueSize = 0x18,
  kQueueMsixVector = 0x1a,
  kQueueEnable = 0x1c,
  kQueueNotifyOff = 0x1e,
  kQueueDesc = 0x20,
  kQueueDriver = 0x28,
  kQueueDevice = 0x30,
  kCommonSize = 0x38,
};

std::vector<uint8_t> virtio_cap(uint8_t type, uint8_t bar, uint32_t offset, uint32_t length, bool notify) {
  // After cap_vndr and cap_next: cap_len, cfg_type, bar, id, padding[2], offset, length
  // [, notify_off_multiplier].
  std::vector<uint8_t> b = {static_cast<uint8_t>(notify ? 20 : 16), type, bar, 0, 0, 0};
  auto put32 = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
  };
  put32(offset);
  put32(length);
  if (notify) put32(PciTransport::kNotifyMultiplier);
  return b;
}

uint64_t le_value(std::span<const uint8_t> data) {
  uint64_t v = 0;
  std::memcpy(&v, data.data(), std::min<size_t>(data.size(), 8));
  return v;
}

}  // namespace

Result<std::shared_ptr<PciTransport>> PciTransport::create(std::shared_ptr<VirtioDevice> device, std::string name,
                                                           VmIo& vm, EventLoop& loop, const GuestMemory& memory,
                                                           uint64_t mmio_base, uint32_t intx_gsi) {
  if (mmio_base % kBar0Size != 0) return fail("virtio-pci {}: BAR base {:#x} is not aligned", name, mmio_base);
  const unsigned vectors = static_cast<unsigned>(device->queues().size()) + 1;
  std::vector<std::unique_ptr<MsiVector>> msi;
  for (unsigned i = 0; i < vectors; ++i) {
    auto v = vm.allocate_msi();
    if (!v) return std::unexpected(v.error().context(fmt::format("virtio-pci {}", name)));
    msi.push_back(std::move(*v));
  }
  auto msix = std::make_unique<Msix>(std::move(msi));
  auto intx = vm.allocate_intx(intx_gsi);
  if (!intx) return std::unexpected(intx.error().context(fmt::format("virtio-pci {}", name)));
  std::shared_ptr<PciTransport> t(new PciTransport(std::move(device), std::move(name), vm, loop, memory,
                                                   std::move(msix), std::move(*intx), mmio_base, intx_gsi));
  if (auto r = t->watch_notifiers(); !r) return std::unexpected(r.error().context(fmt::format("virtio-pci {}", t->name_)));
  return t;
}

Result<> PciTransport::watch_notifiers() {
  const int resample = intx_->resample_fd();
  auto rw = loop_.watch(resample, EventLoop::WatchKind::Device, [this, resample] {
    uint64_t count;
    while (::read(resample, &count, sizeof count) > 0) {
    }
    intx_resample();
  });
  if (!rw) return std::unexpected(rw.error());
  intx_watch_ = *rw;
  notifiers_.resize(queue_vectors_.size());
  owed_.assign(queue_vectors_.size(), 0);
  for (unsigned q = 0; q < notifiers_.size(); ++q) {
    Notifier& n = notifiers_[q];
    n.fd = Fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
    if (!n.fd) return fail("eventfd: {}", errno_text(errno));
    const int fd = n.fd.get();
    auto w = loop_.watch(fd, EventLoop::WatchKind::Device, [this, fd, q] {
      uint64_t count;
      while (::read(fd, &count, sizeof count) > 0) {
      }
      kick(q);
    });
    if (!w) return std::unexpected(w.error());
    n.watch = *w;
  }
  return {};
}

PciTransport::PciTransport(std::shared_ptr<VirtioDevice> device, std::string name, VmIo& vm, EventLoop& loop,
                           const GuestMemory& memory, std::unique_ptr<Msix> msix, std::unique_ptr<IntxLine> intx,
                           uint64_t mmio_base, uint32_t intx_gsi)
    : device_(std::move(device)),
      name_(std::move(name)),
      vm_(vm),
      loop_(loop),
      memory_(memory),
      msix_(std::move(msix)),
      intx_(std::move(intx)),
      config_(PciConfig::Ids{
          .vendor = kVendorVirtio,
          .device = static_cast<uint16_t>(kDeviceModernBase + device_->device_type()),
          .class_code = device_->device_type() == 1 ? 0x020000u : 0x018000u,  // network / other storage
          .revision = 1,  // modern-only device (virtio 1.2 §4.1.2.1)
          .subsystem_vendor = kVendorVirtio,
          .subsystem = 0x40,
      }),
      queue_vectors_(device_->queues().size(), Msix::kNoVector) {
  config_.add_memory_bar(0, mmio_base, kBar0Size, false);
  config_.add_memory_bar(1, mmio_base + kBar0Size, kBar1Size, false);
  config_.add_capability(kPciCapVendor, virtio_cap(kCapCommon, 0, kCommonOffset, kCommonSize, false));
  config_.add_capability(kPciCapVendor, virtio_cap(kCapNotify, 0, kNotifyOffset,
                                                   kNotifyMultiplier * static_cast<uint32_t>(queue_vectors_.size()), true));
  config_.add_capability(kPciCapVendor, virtio_cap(kCapIsr, 0, kIsrOffset, 1, false));
  config_.add_capability(kPciCapVendor, virtio_cap(kCapDevice, 0, kDeviceOffset, 0x1000, false));
  msix_cap_ = msix_->add_capability(config_, 1, 0, kPbaOffset);
  // Last in the list, so that a state saved before it existed differs only by this capability
  // (with_pci_cfg_cap() adds it).
  {
    std::vector<uint8_t> cfg = virtio_cap(kCapPciCfg, 0, 0, 0, false);
    cfg[0] = 20;  // cap_len: the capability and pci_cfg_data
    cfg.resize(cfg.size() + 4, 0);
    pci_cfg_cap_ = config_.add_capability(kPciCapVendor, cfg);
    const uint8_t all[4] = {0xff, 0xff, 0xff, 0xff};
    config_.set_writable(static_cast<uint8_t>(pci_cfg_cap_ + kPciCfgBar), std::span(all, 1));
    config_.set_writable(static_cast<uint8_t>(pci_cfg_cap_ + kPciCfgOffset), all);
    config_.set_writable(static_cast<uint8_t>(pci_cfg_cap_ + kPciCfgLength), all);
    config_.set_writable(static_cast<uint8_t>(pci_cfg_cap_ + kPciCfgData), all);
  }
  // INTA, routed to `intx_gsi` by the DSDT's _PRT; the interrupt line register says so too.
  config_.set_byte(0x3c, static_cast<uint8_t>(intx_gsi));
  config_.set_byte(0x3d, 1);
}

PciTransport::~PciTransport() {
  std::lock_guard lock(device_->mutex());
  remove_notifiers_locked();
  for (auto& n : notifiers_) {
    if (n.watch) loop_.unwatch(n.watch);
  }
  if (intx_watch_) loop_.unwatch(intx_watch_);
}

uint8_t PciTransport::status() const {
  std::lock_guard lock(device_->mutex());
  return status_;
}

// ---- Configuration space -------------------------------------------------------------------------

uint32_t PciTransport::config_read(uint8_t reg) {
  std::unique_lock lock(device_->mutex());
  if (pci_cfg_cap_ != 0 && (reg & 0xfc) == pci_cfg_cap_ + kPciCfgData) {
    // virtio 1.2 §4.1.4.9.1: a read of pci_cfg_data reads cap.length bytes of the BAR.
    if (const auto w = pci_cfg_window()) {
      std::array<uint8_t, 4> data{};
      bar_read_locked(lock, w->bar, w->offset, std::span(data.data(), w->length));
      if (!lock.owns_lock()) lock.lock();
      for (unsigned i = 0; i < w->length; ++i) config_.set_byte(static_cast<uint8_t>(pci_cfg_cap_ + kPciCfgData + i), data[i]);
    }
  }
  return config_.read(reg);
}

void PciTransport::config_write(uint8_t reg, uint32_t value, uint8_t byte_mask) {
  std::unique_lock lock(device_->mutex());
  const bool was_master = config_.command() & kPciCommandMaster;
  const bool was_intx = !msix_->enabled() && !intx_disabled_;
  const auto effect = config_.write(reg, value, byte_mask);
  msix_->update_control(config_);
  intx_disabled_ = config_.command() & kPciCommandIntxDisable;
  // INTx back on (Interrupt Disable cleared, MSI-X turned off) with an interrupt owed (the ISR
  // not read): the line goes up now (PCI 3.0 §6.2.2), or it would wait for an interrupt that an
  // EOI's resample only follows.
  if (!was_intx && !msix_->enabled() && !intx_disabled_ && isr_ != 0) intx_->assert_line();
  // Bus mastering turned off: the device may no longer touch guest memory (Linux turns it off
  // before a kexec, whose new kernel reuses the rings' memory). A running device stops until
  // reset, as QEMU's, whose DMA then fails.
  if (was_master && !(config_.command() & kPciCommandMaster) && (status_ & kStatusDriverOk) &&
      !(status_ & kStatusNeedsReset)) {
    needs_reset_locked("bus mastering turned off while the device runs");
  }
  // The notify addresses follow BAR 0, and are KVM's only while the BAR decodes (Memory Space on).
  if ((effect.bar == 0 || effect.command) && (status_ & kStatusDriverOk) && !(status_ & kStatusNeedsReset)) {
    remove_notifiers_locked();
    add_notifiers_locked();
  }
  if (pci_cfg_cap_ != 0 && (reg & 0xfc) == pci_cfg_cap_ + kPciCfgData && (byte_mask & 0xf)) {
    // virtio 1.2 §4.1.4.9.1: a write of pci_cfg_data writes its first cap.length bytes to the BAR.
    if (const auto w = pci_cfg_window()) {
      std::array<uint8_t, 4> data{};
      for (unsigned i = 0; i < w->length; ++i) data[i] = config_.byte(static_cast<uint8_t>(pci_cfg_cap_ + kPciCfgData + i));
      bar_write_locked(lock, w->bar, w->offset, std::span<const uint8_t>(data.data(), w->length));
    }
  }
}

PciConfig::State PciTransport::with_pci_cfg_cap(PciConfig::State saved) const {
  // A state saved before 2026-12-08 (state format 1.0) ends its capability list at MSI-X and has
  // zeros where the capability now is (anything else is left to the check that refuses it).
  if (pci_cfg_cap_ == 0 || msix_cap_ == 0 || saved[msix_cap_ + 1] != 0) return saved;
  if (!std::all_of(saved.begin() + pci_cfg_cap_, saved.begin() + pci_cfg_cap_ + 20, [](uint8_t b) { return b == 0; })) {
    return saved;
  }
  saved[msix_cap_ + 1] = pci_cfg_cap_;
  // Its header (id, next, length, type); the window (bar, offset, length, data) and padding zero.
  for (unsigned i = 0; i < 20; ++i) saved[pci_cfg_cap_ + i] = i < kPciCfgBar ? config_.byte(static_cast<uint8_t>(pci_cfg_cap_ + i)) : 0;
  return saved;
}

std::optional<PciTransport::PciCfgWindow> PciTransport::pci_cfg_window() const {
  auto le32 = [&](uint8_t at) {
    uint32_t v = 0;
    for (unsigned i = 0; i < 4; ++i) v |= uint32_t{config_.byte(static_cast<uint8_t>(pci_cfg_cap_ + at + i))} << (8 * i);
    return v;
  };
  const uint8_t bar = config_.byte(static_cast<uint8_t>(pci_cfg_cap_ + kPciCfgBar));
  const uint32_t offset = le32(kPciCfgOffset), length = le32(kPciCfgLength);
  // The driver MUST use a length of 1, 2 or 4 aligned to it, inside one of the device's BARs
  // (§4.1.4.9.2); anything else is ignored, as QEMU does.
  if (length != 1 && length != 2 && length != 4) return std::nullopt;
  if (offset % length != 0) return std::nullopt;
  const uint64_t size = bar == 0 ? kBar0Size : bar == 1 ? kBar1Size : 0;
  if (offset >= size || size - offset < length) return std::nullopt;
  return PciCfgWindow{.bar = bar, .offset = offset, .length = length};
}

// ---- BARs ----------------------------------------------------------------------------------------

std::optional<std::pair<unsigned, uint64_t>> PciTransport::decode_locked(uint64_t addr) const {
  if (!(config_.command() & kPciCommandMemory)) return std::nullopt;
  const uint64_t b0 = bar0(), b1 = bar1();
  if (addr >= b1 && addr - b1 < kBar1Size) return std::pair{1u, addr - b1};
  if (addr >= b0 && addr - b0 < kBar0Size) return std::pair{0u, addr - b0};
  return std::nullopt;
}

bool PciTransport::mmio_read(uint64_t addr, std::span<uint8_t> data) {
  std::unique_lock lock(device_->mutex());
  const auto at = decode_locked(addr);
  if (at) bar_read_locked(lock, at->first, at->second, data);
  return at.has_value();
}

bool PciTransport::mmio_write(uint64_t addr, std::span<const uint8_t> data) {
  std::unique_lock lock(device_->mutex());
  const auto at = decode_locked(addr);
  if (at) bar_write_locked(lock, at->first, at->second, data);
  return at.has_value();
}

void PciTransport::bar_read_locked(std::unique_lock<std::mutex>& lock, unsigned bar, uint64_t off,
                                   std::span<uint8_t> data) {
  if (bar == 1) {
    lock.unlock();  // MSI-X has its own lock
    if (off < kPbaOffset) {
      msix_->table_read(off, data);
    } else {
      msix_->pba_read(off - kPbaOffset, data);
    }
    return;
  }
  std::fill(data.begin(), data.end(), 0);
  if (off < kIsrOffset) {
    common_read(off - kCommonOffset, data);
  } else if (off < kDeviceOffset) {
    // Reading the ISR clears it (virtio 1.2 §4.1.4.5).
    if (off == kIsrOffset && !data.empty()) data[0] = isr_.exchange(0);
  } else if (off < kNotifyOffset) {
    device_->read_config(off - kDeviceOffset, data);
  }
}

void PciTransport::bar_write_locked(std::unique_lock<std::mutex>& lock, unsigned bar, uint64_t off,
                                    std::span<const uint8_t> data) {
  if (bar == 1) {
    lock.unlock();
    if (off < kPbaOffset) msix_->table_write(off, data);  // the PBA is read-only
    return;
  }
  if (off < kIsrOffset) {
    common_write(off - kCommonOffset, data);
  } else if (off >= kDeviceOffset && off < kNotifyOffset) {
    device_->write_config(off - kDeviceOffset, data);
  } else if (off >= kNotifyOffset) {
    // A notification that no ioeventfd caught: hand it to the event loop the same way.
    const uint64_t q = (off - kNotifyOffset) / kNotifyMultiplier;
    if (q < notifiers_.size()) {
      notify_loop(static_cast<unsigned>(q));
    } else {
      log_ignored_notify(fmt::format("notify for queue {}, which does not exist", q));
    }
  }
}

void PciTransport::log_ignored_notify(const std::string& what) {
  // A driver bug, not an attack on the device: reported once, otherwise ignored.
  if (!notify_logged_) fmt::print(stderr, "vmm: {}: ignored {}\n", name_, what);
  notify_logged_ = true;
}

void PciTransport::common_read(uint64_t offset, std::span<uint8_t> data) {
  if (offset >= kCommonSize || data.size() > kCommonSize - offset) return;
  std::array<uint8_t, kCommonSize> r{};
  auto put = [&](uint64_t at, uint64_t v, size_t n) { std::memcpy(&r[at], &v, n); };
  const uint64_t features = device_->device_features();
  put(kDeviceFeatureSelect, device_feature_select_, 4);
  put(kDeviceFeature, device_feature_select_ < 2 ? static_cast<uint32_t>(features >> (32 * device_feature_select_)) : 0, 4);
  put(kDriverFeatureSelect, driver_feature_select_, 4);
  put(kDriverFeature, driver_feature_select_ < 2 ? static_cast<uint32_t>(driver_features_ >> (32 * driver_feature_select_)) : 0, 4);
  put(kMsixConfig, msix_config_, 2);
  put(kNumQueues, queue_vectors_.size(), 2);
  // A reset completes once the device's requests in flight have (virtio 1.2 §4.1.4.3.1: the
  // driver waits for a read of 0 before it reuses the rings and buffers, which a request in
  // flight may still write): until then the status reads NEEDS_RESET.
  put(kDeviceStatus, status_ == 0 && device_->in_flight() > 0 ? kStatusNeedsReset : status_, 1);
  put(kConfigGeneration, config_generation_, 1);
  put(kQueueSelect, queue_select_, 2);
  if (queue_select_ < queue_vectors_.size()) {
    const Queue& q = device_->queues()[queue_select_];
    put(kQueueSize, q.size(), 2);
    put(kQueueMsixVector, queue_vectors_[queue_select_], 2);
    put(kQueueEnable, q.ready() ? 1 : 0, 2);
    put(kQueueNotifyOff, queue_select_, 2);
    put(kQueueDesc, q.desc(), 8);
    put(kQueueDriver, q.avail(), 8);
    put(kQueueDevice, q.used(), 8);
  }  // a queue that does not exist reads size 0 (virtio 1.2 §4.1.4.3.2)
  std::memcpy(data.data(), &r[offset], data.size());
}

void PciTransport::common_write(uint64_t offset, std::span<const uint8_t> data) {
  const uint64_t v = le_value(data);
  const size_t n = data.size();
  Queue* q = queue_select_ < queue_vectors_.size() ? &device_->queues()[queue_select_] : nullptr;
  // Queue fields are frozen once the queue is enabled, and all of them once DRIVER_OK is set.
  const bool queue_writable = q && !q->ready() && !(status_ & kStatusDriverOk);
  // A 64-bit field, written whole or as two 32-bit halves (virtio 1.2 §4.1.3.1: the driver may
  // use either; a whole write was dropped until 2026-12-07, leaving the ring at GPA 0).
  auto set_address = [&](uint64_t base, uint64_t current, auto setter) {
    if (!queue_writable) return;
    if (n == 8 && offset == base) return setter(v);
    if (n != 4) return;
    const bool high = offset == base + 4;
    setter(high ? (current & 0xffffffffull) | (v << 32) : (current & ~0xffffffffull) | v);
  };
  switch (offset) {
    case kDeviceFeatureSelect: if (n == 4) device_feature_select_ = static_cast<uint32_t>(v); break;
    case kDriverFeatureSelect: if (n == 4) driver_feature_select_ = static_cast<uint32_t>(v); break;
    case kDriverFeature:
      // Only before FEATURES_OK (virtio 1.2 §3.1.1).
      if (n == 4 && driver_feature_select_ < 2 && !(status_ & kStatusFeaturesOk)) {
        const unsigned shift = 32 * driver_feature_select_;
        driver_features_ = (driver_features_ & ~(0xffffffffull << shift)) | (v << shift);
      }
      break;
    case kMsixConfig:
      if (n == 2) msix_config_ = v < msix_->size() ? static_cast<uint16_t>(v) : Msix::kNoVector;
      break;
    case kDeviceStatus: if (n == 1) write_status(static_cast<uint8_t>(v)); break;
    case kQueueSelect: if (n == 2) queue_select_ = static_cast<uint16_t>(v); break;
    case kQueueSize: if (queue_writable && n == 2) q->set_size(static_cast<uint16_t>(v)); break;
    case kQueueMsixVector:
      if (q && n == 2) queue_vectors_[queue_select_] = v < msix_->size() ? static_cast<uint16_t>(v) : Msix::kNoVector;
      break;
    case kQueueEnable:
      if (queue_writable && n == 2 && v == 1) {
        if (auto r = q->enable(memory_); !r) needs_reset_locked(fmt::format("queue {}: {}", queue_select_, r.error().message()));
      }
      break;
    case kQueueDesc: case kQueueDesc + 4:
      if (q) set_address(kQueueDesc, q->desc(), [&](uint64_t a) { q->set_desc(a); });
      break;
    case kQueueDriver: case kQueueDriver + 4:
      if (q) set_address(kQueueDriver, q->avail(), [&](uint64_t a) { q->set_avail(a); });
      break;
    case kQueueDevice: case kQueueDevice + 4:
      if (q) set_address(kQueueDevice, q->used(), [&](uint64_t a) { q->set_used(a); });
      break;
    default: break;  // read-only or undefined
  }
}

// ---- Status and life cycle -----------------------------------------------------------------------

void PciTransport::write_status(uint8_t value) {
  if (value == 0) return reset_locked();
  // Only the driver's own bits: DEVICE_NEEDS_RESET is the device's to set (a driver setting it left
  // the device half stopped: kicks dropped while a TAP still delivered, and a later real error
  // never halted it), and bits 4 and 5 mean nothing.
  value &= kStatusAcknowledge | kStatusDriver | kStatusFeaturesOk | kStatusDriverOk | kStatusFailed;
  if (status_ & kStatusNeedsReset) {
    status_ |= value & kStatusFailed;  // only a reset (or FAILED) gets out of NEEDS_RESET
    return;
  }
  // A driver never clears a status bit (virtio 1.2 §2.1.2); one that tries keeps them: a running
  // device cannot be made to look unconfigured (DRIVER_OK without FEATURES_OK, a state no restore
  // takes: the guest-io fuzzer wrote 0x36 over 0x0f) or be activated twice by setting DRIVER_OK again.
  uint8_t next = static_cast<uint8_t>(value | status_);
  if ((next & kStatusFeaturesOk) && !(status_ & kStatusFeaturesOk)) {
    // virtio 1.2 §3.1.1: refuse features we did not offer, and legacy drivers (no VERSION_1).
    const uint64_t offered = device_->device_features();
    if ((driver_features_ & ~offered) || !(driver_features_ & kFVersion1)) next &= static_cast<uint8_t>(~kStatusFeaturesOk);
  }
  const bool activate = (next & kStatusDriverOk) && !(status_ & kStatusDriverOk);
  status_ = next;
  if (activate) activate_locked();
}

void PciTransport::activate_locked() {
  if (!(status_ & kStatusFeaturesOk)) return needs_reset_locked("DRIVER_OK without FEATURES_OK");
  if (auto r = device_->activate(memory_, driver_features_, *this); !r) return needs_reset_locked(r.error().message());
  add_notifiers_locked();
}

void PciTransport::reset_locked() {
  remove_notifiers_locked();
  device_->reset();
  status_ = 0;
  driver_features_ = 0;
  device_feature_select_ = driver_feature_select_ = 0;
  queue_select_ = 0;
  msix_config_ = Msix::kNoVector;
  std::fill(queue_vectors_.begin(), queue_vectors_.end(), Msix::kNoVector);
  isr_ = 0;
}

void PciTransport::needs_reset_locked(const std::string& why) {
  if (!logged_) fmt::print(stderr, "vmm: {}: driver error, device needs reset: {}\n", name_, why);
  logged_ = true;
  remove_notifiers_locked();
  device_->halt();  // nor does it serve the device on its own (a TAP's frames) until the reset
  status_ |= kStatusNeedsReset;
  ++config_generation_;
  // A configuration-change interrupt tells the driver (virtio 1.2 §2.1.2).
  raise(kIsrConfig, msix_config_);
}

void PciTransport::raise(uint8_t isr_bits, uint16_t vector) {
  isr_ |= isr_bits;
  if (msix_->enabled()) {
    msix_->signal(vector);  // (pending while bus mastering is off: Msix)
  } else if (!intx_disabled_) {
    intx_->assert_line();
  }
}

void PciTransport::intx_resample() {
  // The guest acknowledged the interrupt; if it has not read (cleared) the ISR, it is still owed one.
  if (isr_ != 0 && !intx_disabled_ && !msix_->enabled()) intx_->assert_line();
}

void PciTransport::add_notifiers_locked() {
  // None while BAR 0 does not decode (the guest may have given its range to another function
  // meanwhile), nor for a device that needs a reset.
  if (!(config_.command() & kPciCommandMemory) || (status_ & kStatusNeedsReset)) return;
  const uint64_t base = bar0() + kNotifyOffset;
  for (unsigned q = 0; q < notifiers_.size(); ++q) {
    Notifier& n = notifiers_[q];
    if (n.gpa != 0 || !device_->queues()[q].ready()) continue;
    const uint64_t gpa = base + uint64_t{q} * kNotifyMultiplier;
    // If KVM refuses, notify writes exit to the VMM and reach the same eventfd through mmio_write.
    if (vm_.add_ioeventfd(gpa, n.fd.get())) n.gpa = gpa;
  }
}

void PciTransport::remove_notifiers_locked() {
  for (auto& n : notifiers_) {
    if (n.gpa == 0) continue;
    vm_.remove_ioeventfd(n.gpa, n.fd.get());
    n.gpa = 0;
  }
}

void PciTransport::kick(unsigned queue) {
  std::lock_guard lock(device_->mutex());
  const bool owed = std::exchange(owed_[queue], 0) != 0;
  if (status_ & kStatusNeedsReset) return;
  if (!(status_ & kStatusDriverOk) || !device_->queues()[queue].ready()) {
    if (owed) return;  // the device's own pass, after a reset
    return log_ignored_notify(fmt::format("notify for queue {} before it was set up", queue));
  }
  if (auto r = device_->process_queue(queue); !r) {
    needs_reset_locked(fmt::format("queue {}: {}", queue, r.error().message()));
  }
}

void PciTransport::device_error(const std::string& why) {
  if (!(status_ & kStatusNeedsReset)) needs_reset_locked(why);
}

void PciTransport::notify_loop(unsigned queue) {
  const uint64_t one = 1;
  [[maybe_unused]] auto w = ::write(notifiers_[queue].fd.get(), &one, sizeof one);
}

void PciTransport::serve_again(unsigned queue) {
  // Through the queue's notifier, as a notification: the loop serves what else is ready first (its
  // completions come in batches). Marked owed: a pass that finds the device reset meanwhile is no
  // driver's notification to log.
  if (queue >= notifiers_.size()) return;
  owed_[queue] = 1;
  notify_loop(queue);
}

void PciTransport::signal_used(unsigned queue) {
  raise(kIsrQueue, queue < queue_vectors_.size() ? queue_vectors_[queue] : Msix::kNoVector);
}

void PciTransport::signal_all_queues() {
  std::lock_guard lock(device_->mutex());
  if (!(status_ & kStatusDriverOk) || (status_ & kStatusNeedsReset)) return;
  for (unsigned q = 0; q < queue_vectors_.size(); ++q) raise(kIsrQueue, queue_vectors_[q]);
}

// ---- Snapshots ------------------------------------------------------------------------------------

PciTransport::State PciTransport::save() const {
  std::lock_guard lock(device_->mutex());
  State st;
  st.config = config_.save();
  st.msix = msix_->save();
  st.status = status_;
  st.driver_features = driver_features_;
  st.device_feature_select = device_feature_select_;
  st.driver_feature_select = driver_feature_select_;
  st.queue_select = queue_select_;
  st.msix_config = msix_config_;
  st.queue_vectors = queue_vectors_;
  st.config_generation = config_generation_;
  st.isr = isr_;
  for (const auto& q : device_->queues()) st.queues.push_back(q.save());
  return st;
}

Result<> PciTransport::restore(const State& st) {
  std::lock_guard lock(device_->mutex());
  if (st.queues.size() != device_->queues().size() || st.queue_vectors.size() != queue_vectors_.size()) {
    return fail("{}: saved state has {} queues, the device {}", name_, st.queues.size(), device_->queues().size());
  }
  reset_locked();
  config_.restore(st.config);
  msix_->restore(st.msix);
  msix_->update_control(config_);
  for (size_t i = 0; i < st.queues.size(); ++i) {
    if (auto r = device_->queues()[i].restore(memory_, st.queues[i]); !r) {
      reset_locked();
      return std::unexpected(r.error().context(fmt::format("{}: queue {}", name_, i)));
    }
  }
  status_ = st.status;
  driver_features_ = st.driver_features;
  device_feature_select_ = st.device_feature_select;
  driver_feature_select_ = st.driver_feature_select;
  queue_select_ = st.queue_select;
  msix_config_ = st.msix_config;
  queue_vectors_ = st.queue_vectors;
  config_generation_ = st.config_generation;
  isr_ = st.isr;
  intx_disabled_ = config_.command() & kPciCommandIntxDisable;
  if ((status_ & kStatusDriverOk) && !(status_ & kStatusNeedsReset)) {
    // Activation keeps the restored ring positions (devices only read features and start serving).
    // A device that starts serving may find the driver broke the ring rules in guest memory before
    // the pause (an avail idx too far ahead, a bad chain): that is the guest's error, met as a
    // running device meets it, with NEEDS_RESET, not a state that cannot be restored (a template
    // of such a guest still clones).
    activate_locked();
    // Each ready queue is looked at once, as if notified. A notification the guest made just
    // before the pause, or a pass the device still owed (serve_again), lived in the old VMM's
    // eventfd, which a snapshot does not carry; and with EVENT_IDX the driver does not notify again
    // for chains it had made available already, so without this look they would wait for ever.
    for (unsigned q = 0; q < notifiers_.size() && !(status_ & kStatusNeedsReset); ++q) {
      if (device_->queues()[q].ready()) serve_again(q);
    }
  }
  return {};
}

size_t PciTransport::in_flight() const {
  std::lock_guard lock(device_->mutex());
  return device_->in_flight();
}

namespace {

void put_queue(ByteWriter& out, const Queue::State& q) {
  out.put(q.size);
  out.put(q.ready);
  out.put(q.desc);
  out.put(q.avail);
  out.put(q.used);
  out.put(q.next_avail);
  out.put(q.next_used);
  out.put(q.signalled_used);
  out.put(q.signalled_valid);
  out.put(q.event_idx);
}

Result<Queue::State> get_queue(ByteReader& in) {
  auto size = in.get<uint16_t>("queue.size");
  auto ready = size ? in.get<bool>("queue.ready") : std::unexpected(size.error());
  auto desc = ready ? in.get<uint64_t>("queue.desc") : std::unexpected(ready.error());
  auto avail = desc ? in.get<uint64_t>("queue.avail") : std::unexpected(desc.error());
  auto used = avail ? in.get<uint64_t>("queue.used") : std::unexpected(avail.error());
  auto next_avail = used ? in.get<uint16_t>("queue.next_avail") : std::unexpected(used.error());
  auto next_used = next_avail ? in.get<uint16_t>("queue.next_used") : std::unexpected(next_avail.error());
  auto signalled = next_used ? in.get<uint16_t>("queue.signalled_used") : std::unexpected(next_used.error());
  auto valid = signalled ? in.get<bool>("queue.signalled_valid") : std::unexpected(signalled.error());
  auto event_idx = valid ? in.get<bool>("queue.event_idx") : std::unexpected(valid.error());
  if (!event_idx) return std::unexpected(event_idx.error());
  return Queue::State{.size = *size, .ready = *ready, .desc = *desc, .avail = *avail, .used = *used,
                      .next_avail = *next_avail, .next_used = *next_used, .signalled_used = *signalled,
                      .signalled_valid = *valid, .event_idx = *event_idx};
}

}  // namespace

void PciTransport::save(ByteWriter& out) const {
  const State st = save();
  out.put_bytes(st.config);
  out.put(st.msix.enabled);
  out.put(st.msix.function_masked);
  out.put_vector(st.msix.table);
  out.put_vector(st.msix.pending);
  out.put(st.status);
  out.put(st.driver_features);
  out.put(st.device_feature_select);
  out.put(st.driver_feature_select);
  out.put(st.queue_select);
  out.put(st.msix_config);
  out.put_vector(st.queue_vectors);
  out.put(st.config_generation);
  out.put(st.isr);
  out.put(static_cast<uint32_t>(st.queues.size()));
  for (const auto& q : st.queues) put_queue(out, q);
}

Result<> PciTransport::restore(ByteReader& in) {
  State st;
  if (auto r = in.get_into(st.config, "pci_config"); !r) return r;
  // (State format 1.0, before the capability: given it. A later one that lacks it is refused.)
  if (in.format_minor() && *in.format_minor() < 1) st.config = with_pci_cfg_cap(st.config);
  {
    // Read-only bits must be this device's own (another kind of device, or a corrupt file).
    PciConfig probe = config_;
    if (auto r = probe.restore_checked(st.config); !r) return std::unexpected(in.error("pci_config", r.error().message()));
  }
  const size_t vectors = msix_->size();
  auto enabled = in.get<bool>("msix.enabled");
  if (!enabled) return std::unexpected(enabled.error());
  auto masked = in.get<bool>("msix.function_masked");
  if (!masked) return std::unexpected(masked.error());
  auto table = in.get_vector<Msix::Entry>("msix.table", vectors);
  if (!table) return std::unexpected(table.error());
  auto pending = in.get_vector<uint64_t>("msix.pending", (vectors + 63) / 64);
  if (!pending) return std::unexpected(pending.error());
  if (table->size() != vectors) {
    return std::unexpected(in.error("msix.table", fmt::format("{} vectors saved, the device has {}", table->size(), vectors)));
  }
  // An entry's Vector Control keeps only its mask bit when the guest writes it (Msix::table_write).
  for (size_t v = 0; v < table->size(); ++v) {
    if ((*table)[v].control & ~1u) {
      return std::unexpected(in.error("msix.table", fmt::format("vector {}: control {:#x} has bits besides the mask", v, (*table)[v].control)));
    }
  }
  if (pending->size() != (vectors + 63) / 64) {
    return std::unexpected(in.error("msix.pending", fmt::format("{} words saved, the device has {}", pending->size(), (vectors + 63) / 64)));
  }
  if (vectors % 64 != 0 && (pending->back() >> (vectors % 64)) != 0) {
    return std::unexpected(in.error("msix.pending", fmt::format("{:#x} has bits for vectors the device does not have ({})", pending->back(), vectors)));
  }
  st.msix = Msix::State{.enabled = *enabled, .function_masked = *masked, .table = std::move(*table), .pending = std::move(*pending)};
  auto status = in.get<uint8_t>("status");
  if (!status) return std::unexpected(status.error());
  auto features = in.get<uint64_t>("driver_features");
  if (!features) return std::unexpected(features.error());
  // Until FEATURES_OK the driver may have written anything (the device refuses it at FEATURES_OK,
  // and a guest can be paused in between); a device that runs has a subset of what it offers.
  const bool runs = (*status & kStatusDriverOk) && !(*status & kStatusNeedsReset);
  if (runs && !(*status & kStatusFeaturesOk)) {
    return std::unexpected(in.error("status", fmt::format("{:#x}: DRIVER_OK without FEATURES_OK or NEEDS_RESET", *status)));
  }
  if ((*status & kStatusFeaturesOk) && (*features & ~device_->device_features())) {
    return std::unexpected(in.error("driver_features", fmt::format("{:#x} includes features the device does not offer ({:#x})", *features, device_->device_features())));
  }
  // As FEATURES_OK is refused without VERSION_1 when the guest sets it (write_status).
  if ((*status & kStatusFeaturesOk) && !(*features & kFVersion1)) {
    return std::unexpected(in.error("driver_features", fmt::format("{:#x}: FEATURES_OK without VERSION_1", *features)));
  }
  auto dfs = in.get<uint32_t>("device_feature_select");
  if (!dfs) return std::unexpected(dfs.error());
  auto drfs = in.get<uint32_t>("driver_feature_select");
  if (!drfs) return std::unexpected(drfs.error());
  auto qsel = in.get<uint16_t>("queue_select");
  if (!qsel) return std::unexpected(qsel.error());
  auto msix_config = in.get<uint16_t>("msix_config");
  if (!msix_config) return std::unexpected(msix_config.error());
  auto qvec = in.get_vector<uint16_t>("queue_vectors", queue_vectors_.size());
  if (!qvec) return std::unexpected(qvec.error());
  auto bad_vector = [&](uint16_t v) { return v != Msix::kNoVector && v >= vectors; };
  if (bad_vector(*msix_config)) return std::unexpected(in.error("msix_config", fmt::format("vector {} does not exist", *msix_config)));
  for (uint16_t v : *qvec) {
    if (bad_vector(v)) return std::unexpected(in.error("queue_vectors", fmt::format("vector {} does not exist", v)));
  }
  auto generation = in.get<uint8_t>("config_generation");
  if (!generation) return std::unexpected(generation.error());
  auto isr = in.get<uint8_t>("isr");
  if (!isr) return std::unexpected(isr.error());
  auto nqueues = in.get<uint32_t>("queues");
  if (!nqueues) return std::unexpected(nqueues.error());
  if (*nqueues != device_->queues().size() || qvec->size() != *nqueues) {
    return std::unexpected(in.error("queues", fmt::format("{} saved, the device has {}", *nqueues, device_->queues().size())));
  }
  for (uint32_t i = 0; i < *nqueues; ++i) {
    auto q = get_queue(in);
    if (!q) return std::unexpected(q.error());
    // A driver may write any size before it enables the queue (the enable then fails): only a ready
    // queue's size is bounded (the guest-io fuzzer's kind of finding: a state a guest can reach).
    if (q->ready && q->size > device_->queues()[i].max_size()) {
      return std::unexpected(in.error("queue.size", fmt::format("queue {}: size {} is over the maximum {}", i, q->size, device_->queues()[i].max_size())));
    }
    // Saved quiesced (Machine::quiesce: no request in flight, every chain taken given back), so
    // none is in use; and the positions of a queue that is not ready are those of a reset. Other
    // positions would have the device wait for chains the guest never gives back, or refuse the
    // next one (found by reading, 2026-12-08).
    // (A device in NEEDS_RESET may have stopped between a pop and its push: the guest resets it.)
    if (q->ready && q->next_avail != q->next_used && !(*status & kStatusNeedsReset)) {
      return std::unexpected(in.error("queue.next_avail", fmt::format("queue {}: avail position {}, used {}: chains in flight, and a saved device has none",
                                                                      i, q->next_avail, q->next_used)));
    }
    if (!q->ready && (q->next_avail != 0 || q->next_used != 0)) {
      return std::unexpected(in.error("queue.next_avail", fmt::format("queue {}: positions {} and {} on a queue that is not ready", i, q->next_avail, q->next_used)));
    }
    st.queues.push_back(*q);
  }
  st.status = *status;
  st.driver_features = *features;
  st.device_feature_select = *dfs;
  st.driver_feature_select = *drfs;
  st.queue_select = *qsel;
  st.msix_config = *msix_config;
  st.queue_vectors = std::move(*qvec);
  st.config_generation = *generation;
  st.isr = *isr;
  if (auto r = restore(st); !r) return std::unexpected(in.error("queues", r.error().message()));
  return {};
}

}  // namespace vmm::devices::virtio
