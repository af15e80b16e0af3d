// virtio-net (virtio 1.2 §5.1) on a TAP interface: one receive and one transmit queue, the MAC in
// the configuration space, link always up. Frames pass between guest buffers and the TAP with no
// copy (readv/writev on the guest's memory). Receive is driven by the TAP's readiness on the event
// loop and by the driver adding buffers; nothing polls.
#pragma once

#include <array>
#include <memory>
#include <vector>
#include <cstdint>
#include <string>

#include "devices/host_net.hpp"
#include "devices/tap.hpp"
#include "devices/virtio/device.hpp"
#include "vmm/base/event_loop.hpp"

namespace vmm::devices::virtio {

inline constexpr uint64_t kNetFMac = 1ull << 5;
inline constexpr uint64_t kNetFStatus = 1ull << 16;
inline constexpr uint16_t kNetSLinkUp = 1;
inline constexpr size_t kNetHdrBytes = 12;  ///< struct virtio_net_hdr with num_buffers (VERSION_1)

using MacAddress = devices::MacAddress;  // (host_net.hpp)

/// Parses "52:54:00:12:34:56"; refuses multicast and all-zero addresses.
Result<MacAddress> parse_mac(std::string_view text);
std::string format_mac(const MacAddress& mac);

struct NetOptions {
  /// Drop frames the guest sends from any source MAC but the device's (a clone's: until its guest
  /// takes the new MAC, nothing leaves it under the template's identity; counted as `filtered`).
  bool filter_source = false;
  /// The network namespace that holds the TAP, removed with the device (devices/host_net.hpp).
  std::unique_ptr<Netns> netns;
};

class Net final : public VirtioDevice {
 public:
  static constexpr uint16_t kQueueSize = 256;
  static constexpr unsigned kRxQueue = 0;
  static constexpr unsigned kTxQueue = 1;

  /// Must be created before `loop` runs (it watches the TAP from construction on) and destroyed
  /// before `loop` is (its watch goes with it).
  static Result<std::shared_ptr<Net>> create(Tap tap, MacAddress mac, EventLoop& loop, NetOptions options = {});
  ~Net() override;

  uint16_t device_type() const override { return 1; }
  uint64_t device_features() const override;
  void read_config(uint64_t offset, std::span<uint8_t> data) override;
  void write_config(uint64_t offset, std::span<const uint8_t> data) override;
  Result<> activate(const GuestMemory& memory, uint64_t features, Interrupt& interrupt) override;
  Result<> process_queue(unsigned queue) override;
  void reset() override;
  void halt() override;

  const MacAddress& mac() const { return mac_; }
  const Tap& tap() const { return tap_; }
  /// The namespace that holds the TAP, or null.
  const Netns* netns() const { return netns_.get(); }
  uint64_t rx_frames() const { return rx_frames_; }
  uint64_t tx_frames() const { return tx_frames_; }
  /// Chains refused (too small for the header), frames the TAP refused, and received frames
  /// longer than the buffer the driver gave for them (dropped).
  uint64_t errors() const { return errors_; }

  /// Counters since the device was created (the metrics endpoint), read under the device's mutex.
  struct Stats {
    uint64_t rx_frames = 0, rx_bytes = 0, tx_frames = 0, tx_bytes = 0, errors = 0, filtered = 0;
  };
  Stats stats();

 private:
  Net(Tap tap, MacAddress mac, NetOptions options);
  /// Sends one frame (virtio-net header first) from guest buffers: the TAP's result, or 0 when the
  /// source filter dropped it.
  ssize_t send(const std::vector<iovec>& guest);
  Result<> receive();
  Result<> transmit();
  Result<> interrupt_if_needed(unsigned queue);
  /// What went wrong, each logged the first time only (a guest can repeat any of them forever).
  enum class Problem : uint8_t { ShortTransmit, TapWrite, BadReceiveChain, TapRead, Oversized };
  void log_once(Problem kind, const std::string& what);

  Tap tap_;
  EventLoop* loop_ = nullptr;
  uint64_t watch_ = 0;  // the TAP's readiness on loop_
  MacAddress mac_;
  const GuestMemory* memory_ = nullptr;
  Interrupt* interrupt_ = nullptr;
  uint64_t rx_frames_ = 0, tx_frames_ = 0, errors_ = 0;
  uint64_t rx_bytes_ = 0, tx_bytes_ = 0;  // frame bytes, without the virtio-net header
  uint64_t filtered_ = 0;
  std::vector<iovec> tx_iov_;  // send()'s
  bool filter_source_ = false;
  std::unique_ptr<Netns> netns_;
  uint8_t logged_ = 0;  // a bit per Problem
};

}  // namespace vmm::devices::virtio
