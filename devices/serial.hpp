// 8250/16550A UART (COM1): transmit to a host sink, receive from the host through a FIFO, with
// THR-empty and data-ready interrupts (National Semiconductor PC16550D datasheet).
#pragma once

#include <cstdint>
#include <atomic>
#include <chrono>
#include <deque>
#include <optional>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "devices/device.hpp"

namespace vmm::devices {

class Serial final : public BusDevice, public Snapshottable {
 public:
  /// Receives transmitted bytes (called with the device lock held: must not call back in).
  using Sink = std::function<void(std::span<const uint8_t>)>;
  static constexpr size_t kRxFifoSize = 64;

  /// Register state, for snapshots.
  struct State {
    uint8_t ier = 0, iir = 0x01, lcr = 0x03, mcr = 0x08, lsr = 0x60, msr = 0xb0, scr = 0, dll = 0x0c, dlm = 0;
    bool thre_pending = false;
    std::vector<uint8_t> rx;
  };

  Serial(std::shared_ptr<IrqLine> irq, Sink sink) : irq_(std::move(irq)), sink_(std::move(sink)) {}

  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;
  std::string_view name() const override { return "serial-8250"; }

  /// Queues host input; returns how many bytes fit (the rest is back-pressure). Thread-safe.
  size_t enqueue_input(std::span<const uint8_t> bytes);
  /// True if the RX FIFO has room.
  bool can_accept() const;
  /// While held (the machine quiesced for a snapshot or a fork), input is taken no more: nothing
  /// changes the UART's state or raises its interrupt between its capture and the PIC's. The
  /// console thread waits as for a full FIFO.
  /// Once hold_input(true) returns, no input being taken meanwhile is left half done.
  void hold_input(bool held) {
    std::lock_guard lock(mutex_);
    input_held_ = held;
  }
  bool input_held() const { return input_held_; }
  /// When the guest wrote its first byte out (steady_clock), if it has: how a clone's start is timed.
  std::optional<std::chrono::steady_clock::time_point> first_output() const {
    const int64_t ns = first_output_ns_.load(std::memory_order_relaxed);
    if (ns == 0) return std::nullopt;
    return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(ns));
  }

  State save() const;
  void restore(const State& s);
  void save(ByteWriter& out) const override;
  Result<> restore(ByteReader& in) override;

 private:
  uint8_t read_reg(uint64_t offset);
  void write_reg(uint64_t offset, uint8_t value);
  /// Recomputes IIR; returns true if an interrupt became pending.
  bool update_iir();

  std::shared_ptr<IrqLine> irq_;
  Sink sink_;
  mutable std::mutex mutex_;
  std::atomic<bool> input_held_{false};
  State s_;
  std::deque<uint8_t> rx_;
  std::atomic<int64_t> first_output_ns_{0};
};

}  // namespace vmm::devices
