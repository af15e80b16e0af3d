// The VM side of devices for fuzz targets that build devices without KVM: interrupt lines, MSI-X
// vectors and INTx lines that count what they are asked to do, stop requests that are counted, and
// a VmIo that hands those out. Nothing here opens /dev/kvm.
#pragma once

#include <sys/eventfd.h>

#include <cstdint>
#include <memory>

#include "devices/device.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/fd.hpp"

namespace fuzz_vm {

namespace dev = vmm::devices;

struct FakeControl final : dev::VmControl {
  unsigned stops = 0;
  void request_stop(dev::StopReason, uint32_t) override { ++stops; }
};
struct FakeIrq final : dev::IrqLine {
  unsigned triggered = 0;
  void trigger() override { ++triggered; }
};
struct FakeVector final : dev::MsiVector {
  unsigned triggered = 0;
  void set_message(uint64_t, uint32_t) override {}
  void trigger() override { ++triggered; }
};
struct FakeIntx final : dev::IntxLine {
  vmm::Fd resample{::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)};
  unsigned asserted = 0;
  void assert_line() override { ++asserted; }
  int resample_fd() const override { return resample.get(); }
};
/// `ioeventfds`: whether KVM would accept ioeventfds. Without them every queue notification takes
/// the transport's MMIO path (the one a fuzzer can drive).
struct FakeVmIo final : dev::VmIo {
  FakeVmIo(bool accept_ioeventfds = true) : ioeventfds(accept_ioeventfds) {}  // implicit: `{}` makes one
  bool ioeventfds;
  vmm::Result<std::unique_ptr<dev::MsiVector>> allocate_msi() override { return std::make_unique<FakeVector>(); }
  vmm::Result<std::unique_ptr<dev::IntxLine>> allocate_intx(uint32_t) override { return std::make_unique<FakeIntx>(); }
  vmm::Result<> add_ioeventfd(uint64_t, int) override {
    if (!ioeventfds) return vmm::fail("no ioeventfds here");
    return {};
  }
  void remove_ioeventfd(uint64_t, int) override {}
};

}  // namespace fuzz_vm
