// The modern virtio-over-PCI transport (virtio 1.2 §4.1): a PCI function (vendor 0x1af4, device
// 0x1040 + type) whose BAR 0 holds the common configuration, ISR, device configuration and notify
// regions, and whose BAR 1 holds the MSI-X table and PBA. Interrupts leave through MSI-X, or, for a
// driver that does not enable it, through the INTx line (INTA, level-triggered, with the ISR saying
// why; re-asserted after the guest's EOI while the ISR is nonzero).
// A driver that breaks the virtqueue rules puts the device in NEEDS_RESET; the VMM runs on.
//
// Notifications: each queue has one eventfd for the transport's lifetime, watched by the event
// loop, so queues are only ever processed on the loop's thread. At DRIVER_OK the eventfds become
// KVM ioeventfds on the notify addresses (no exit to the VMM); a notify write that still exits
// (before DRIVER_OK, or if KVM refused the ioeventfd) signals the same eventfd.
//
// Threading: configuration and BAR accesses come from vCPU threads; the transport must be created
// before the event loop runs and destroyed after it stopped.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "devices/msix.hpp"
#include "devices/pci.hpp"
#include "devices/pci_config.hpp"
#include "devices/virtio/device.hpp"
#include "vmm/base/event_loop.hpp"
#include "vmm/base/fd.hpp"

namespace vmm::devices::virtio {

class PciTransport final : public PciFunction, public Interrupt, public Snapshottable {
 public:
  // BAR 0 layout.
  static constexpr uint64_t kCommonOffset = 0x0000;
  static constexpr uint64_t kIsrOffset = 0x1000;
  static constexpr uint64_t kDeviceOffset = 0x2000;
  static constexpr uint64_t kNotifyOffset = 0x3000;
  static constexpr uint32_t kNotifyMultiplier = 4;
  static constexpr uint64_t kBar0Size = 0x4000;
  // BAR 1: MSI-X table, then the PBA.
  static constexpr uint64_t kPbaOffset = 0x800;
  static constexpr uint64_t kBar1Size = 0x1000;
  /// Bytes of PCI MMIO window one transport needs (BAR 0 then BAR 1).
  static constexpr uint64_t kMmioBytes = kBar0Size + kBar1Size;

  /// A transport for `device` with BARs at `mmio_base` (kMmioBytes, aligned to kBar0Size) and its
  /// INTx line on IOAPIC input `intx_gsi`. `name` names it in log lines.
  static Result<std::shared_ptr<PciTransport>> create(std::shared_ptr<VirtioDevice> device, std::string name,
                                                      VmIo& vm, EventLoop& loop, const GuestMemory& memory,
                                                      uint64_t mmio_base, uint32_t intx_gsi);
  ~PciTransport() override;

  // PciFunction
  uint32_t config_read(uint8_t reg) override;
  void config_write(uint8_t reg, uint32_t value, uint8_t byte_mask) override;
  bool mmio_read(uint64_t addr, std::span<uint8_t> data) override;
  bool mmio_write(uint64_t addr, std::span<const uint8_t> data) override;

  // Interrupt (called by the device with its mutex held)
  void device_error(const std::string& why) override;
  void signal_used(unsigned queue) override;
  void serve_again(unsigned queue) override;
  /// After a restore (takes the device's mutex): one used-buffer interrupt per queue of a running
  /// device. A driver that finds nothing new ignores it; one that waits for an interrupt the
  /// snapshot left owed (our event-index bookkeeping is not saved) runs on.
  void signal_all_queues();

  /// The device status register (virtio 1.2 §2.1).
  uint8_t status() const;

  /// Everything a snapshot needs of the transport (the device's queues are saved by the device).
  struct State {
    PciConfig::State config{};
    Msix::State msix;
    uint8_t status = 0;
    uint64_t driver_features = 0;
    uint32_t device_feature_select = 0, driver_feature_select = 0;
    uint16_t queue_select = 0, msix_config = Msix::kNoVector;
    std::vector<uint16_t> queue_vectors;
    uint8_t config_generation = 0;
    uint8_t isr = 0;
    std::vector<Queue::State> queues;
  };
  State save() const;
  /// Restores a saved state into a transport for the same kind of device. A driver that was
  /// running (DRIVER_OK) is running again: the device is activated and the queues' notifications
  /// are set up. Fails on a state that does not fit (queue count, rings outside RAM).
  Result<> restore(const State& state);
  /// The State above, encoded; restore checks every value against this device (queue count and
  /// sizes, vectors, features offered, read-only configuration bytes) before applying it.
  void save(ByteWriter& out) const override;
  Result<> restore(ByteReader& in) override;
  /// Requests the device has started and not completed (a quiesced VM has none).
  size_t in_flight() const;
  const std::string& name() const { return name_; }
  VirtioDevice& device() { return *device_; }

 private:
  PciTransport(std::shared_ptr<VirtioDevice> device, std::string name, VmIo& vm, EventLoop& loop,
               const GuestMemory& memory, std::unique_ptr<Msix> msix, std::unique_ptr<IntxLine> intx,
               uint64_t mmio_base, uint32_t intx_gsi);
  /// Sets ISR bits and raises the interrupt that goes with them: MSI-X `vector` when MSI-X is on,
  /// else INTx (unless the driver disabled it in the command register).
  void raise(uint8_t isr_bits, uint16_t vector);
  void intx_resample();
  void log_ignored_notify(const std::string& what);
  /// The BAR (0 or 1) and offset in it that `addr` falls in, with memory decoding on.
  std::optional<std::pair<unsigned, uint64_t>> decode_locked(uint64_t addr) const;
  /// An access at `off` in BAR `bar` (0 or 1, off inside it), from the BAR itself or through the
  /// PCI configuration access capability. May unlock `lock` (MSI-X has its own lock).
  void bar_read_locked(std::unique_lock<std::mutex>& lock, unsigned bar, uint64_t off, std::span<uint8_t> data);
  void bar_write_locked(std::unique_lock<std::mutex>& lock, unsigned bar, uint64_t off, std::span<const uint8_t> data);
  /// Where the VIRTIO_PCI_CAP_PCI_CFG capability's window points now, if that is valid.
  struct PciCfgWindow {
    unsigned bar;
    uint32_t offset, length;
  };
  std::optional<PciCfgWindow> pci_cfg_window() const;
  /// `saved` with the PCI configuration access capability added if it was saved without it.
  PciConfig::State with_pci_cfg_cap(PciConfig::State saved) const;
  void common_read(uint64_t offset, std::span<uint8_t> data);
  void common_write(uint64_t offset, std::span<const uint8_t> data);
  void write_status(uint8_t value);
  void reset_locked();
  void activate_locked();
  void needs_reset_locked(const std::string& why);
  /// A notification for `queue`, on the event loop's thread.
  void kick(unsigned queue);
  Result<> watch_notifiers();
  void add_notifiers_locked();
  /// Writes queue `queue`'s notifier eventfd: kick(queue) runs on the event loop.
  void notify_loop(unsigned queue);
  void remove_notifiers_locked();
  uint64_t bar0() const { return config_.bar_address(0); }
  uint64_t bar1() const { return config_.bar_address(1); }

  std::shared_ptr<VirtioDevice> device_;
  std::string name_;
  VmIo& vm_;
  EventLoop& loop_;
  const GuestMemory& memory_;
  std::unique_ptr<Msix> msix_;
  std::unique_ptr<IntxLine> intx_;
  uint64_t intx_watch_ = 0;
  std::atomic<bool> intx_disabled_{false};  // the command register's INTx disable bit
  uint8_t msix_cap_ = 0;     // offset of the MSI-X capability
  uint8_t pci_cfg_cap_ = 0;  // offset of the VIRTIO_PCI_CAP_PCI_CFG capability
  PciConfig config_;  // guarded by device_->mutex(), like every field below
  uint8_t status_ = 0;
  uint64_t driver_features_ = 0;
  uint32_t device_feature_select_ = 0, driver_feature_select_ = 0;
  uint16_t queue_select_ = 0, msix_config_ = Msix::kNoVector;
  std::vector<uint16_t> queue_vectors_;
  uint8_t config_generation_ = 0;
  std::atomic<uint8_t> isr_{0};
  bool logged_ = false;
  bool notify_logged_ = false;
  struct Notifier {
    Fd fd;              // the queue's eventfd, open for the transport's lifetime
    uint64_t watch = 0;  // its event-loop watch
    uint64_t gpa = 0;   // where it is registered as a KVM ioeventfd (0: not registered)
  };
  std::vector<Notifier> notifiers_;
  std::vector<uint8_t> owed_;  // per queue: serve_again() asked for a pass (device mutex held)
};

}  // namespace vmm::devices::virtio
