// The transport-independent half of a virtio device (virtio 1.2 §2, §3): its type, features,
// configuration space and queues. A transport (virtio-pci) drives it: negotiates features, sets the
// queues up, calls activate() at DRIVER_OK, process_queue() when the driver notifies, reset() on a
// device reset. Queue processing runs on the event loop's thread; every entry point takes the
// device's mutex, so configuration from vCPU threads and I/O completions never interleave.
#pragma once

#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "devices/virtio/queue.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/guest_memory.hpp"

namespace vmm::devices::virtio {

// virtio 1.2 §6: reserved feature bits.
inline constexpr uint64_t kFRingIndirectDesc = 1ull << 28;
inline constexpr uint64_t kFRingEventIdx = 1ull << 29;
inline constexpr uint64_t kFVersion1 = 1ull << 32;
inline constexpr uint64_t kFAccessPlatform = 1ull << 33;

// virtio 1.2 §2.1: device status bits.
inline constexpr uint8_t kStatusAcknowledge = 1;
inline constexpr uint8_t kStatusDriver = 2;
inline constexpr uint8_t kStatusDriverOk = 4;
inline constexpr uint8_t kStatusFeaturesOk = 8;
inline constexpr uint8_t kStatusNeedsReset = 0x40;
inline constexpr uint8_t kStatusFailed = 0x80;

/// How a device tells the driver about used buffers; implemented by the transport.
class Interrupt {
 public:
  virtual ~Interrupt() = default;
  /// Used buffers were added to queue `queue`.
  virtual void signal_used(unsigned queue) = 0;
  /// The device met a driver error on its own, outside process_queue() (a frame arriving for a
  /// receive ring the driver broke): NEEDS_RESET, as for an error process_queue() returns. Called
  /// with the device's mutex held.
  virtual void device_error(const std::string& why) = 0;
  /// The device stopped serving queue `queue` with work perhaps left: a pass serves at most one
  /// ring's worth of chains (Queue::size()), so that a driver that refills its ring as fast as it is
  /// served (a guest's vCPU, or a frame flood on a TAP with the driver reposting buffers) cannot
  /// hold the I/O thread and the device's mutex for ever: the disks' completions, the other
  /// devices, the API's metrics and a pause wait for neither. The transport has process_queue(queue)
  /// called again from the event loop, after what else is ready there. Called with the device's
  /// mutex held.
  virtual void serve_again(unsigned queue) = 0;
};

class VirtioDevice {
 public:
  virtual ~VirtioDevice() = default;

  /// virtio 1.2 §5: 1 network, 2 block.
  virtual uint16_t device_type() const = 0;
  /// Everything the device offers, including the transport-independent bits it supports.
  virtual uint64_t device_features() const = 0;
  /// Reads/writes the device-specific configuration space (out-of-range bytes read as zero, writes
  /// to read-only fields are ignored).
  virtual void read_config(uint64_t offset, std::span<uint8_t> data) = 0;
  virtual void write_config(uint64_t offset, std::span<const uint8_t> data) = 0;

  /// The driver set DRIVER_OK with `features` acknowledged; queues are configured.
  virtual Result<> activate(const GuestMemory& memory, uint64_t features, Interrupt& interrupt) = 0;
  /// The driver notified queue `queue`. An error is a driver violation: the transport sets
  /// NEEDS_RESET and stops serving the device until it is reset.
  virtual Result<> process_queue(unsigned queue) = 0;
  /// Device reset: forget the driver's configuration, drop (not complete) requests in flight.
  virtual void reset() = 0;
  /// The transport set NEEDS_RESET (mutex held): serve nothing on the device's own initiative until
  /// reset() (a device whose only work comes from process_queue() has nothing to do: the transport
  /// no longer calls it).
  virtual void halt() {}
  /// Requests started and not completed yet (mutex held). A paused VM waits for none before a
  /// snapshot; devices that complete everything synchronously have none.
  virtual size_t in_flight() const { return 0; }

  std::vector<Queue>& queues() { return queues_; }
  std::mutex& mutex() { return mutex_; }

 protected:
  explicit VirtioDevice(std::vector<Queue> queues) : queues_(std::move(queues)) {}
  std::vector<Queue> queues_;
  std::mutex mutex_;
};

}  // namespace vmm::devices::virtio
