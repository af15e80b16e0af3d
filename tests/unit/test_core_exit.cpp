// The pure exit handler, driven with fabricated kvm_run structures.
#include <doctest/doctest.h>

#include <cstring>
#include <memory>
#include <vector>

#include "vmm/exit_handler.hpp"

namespace {

using vmm::devices::StopReason;

// Records accesses; reads return a fixed pattern.
struct Recorder final : vmm::devices::BusDevice {
  std::vector<std::pair<uint64_t, std::vector<uint8_t>>> writes;
  std::vector<uint64_t> reads;
  void read(uint64_t offset, std::span<uint8_t> data) override {
    reads.push_back(offset);
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(0xa0 + i);
  }
  void write(uint64_t offset, std::span<const uint8_t> data) override {
    writes.emplace_back(offset, std::vector<uint8_t>(data.begin(), data.end()));
  }
  std::string_view name() const override { return "recorder"; }
};

// A kvm_run with a data area behind it, as KVM maps it.
struct FakeRun {
  std::vector<uint8_t> buf = std::vector<uint8_t>(8192);
  kvm_run& run() { return *reinterpret_cast<kvm_run*>(buf.data()); }
};

}  // namespace

TEST_CASE("exit: port write goes to the bus device at its offset") {
  vmm::Buses buses;
  auto dev = std::make_shared<Recorder>();
  REQUIRE(buses.pio.insert(dev, 0x3f8, 8));
  FakeRun f;
  auto& run = f.run();
  run.exit_reason = KVM_EXIT_IO;
  run.io.direction = KVM_EXIT_IO_OUT;
  run.io.size = 1;
  run.io.port = 0x3f9;
  run.io.count = 1;
  run.io.data_offset = 4096;
  f.buf[4096] = 0x5a;
  auto out = vmm::handle_exit(run, f.buf.size(), buses);
  CHECK_FALSE(out.stop);
  REQUIRE(dev->writes.size() == 1);
  CHECK(dev->writes[0].first == 1);
  CHECK(dev->writes[0].second == std::vector<uint8_t>{0x5a});
}

TEST_CASE("exit: string port input fills every element") {
  vmm::Buses buses;
  auto dev = std::make_shared<Recorder>();
  REQUIRE(buses.pio.insert(dev, 0x60, 1));
  FakeRun f;
  auto& run = f.run();
  run.exit_reason = KVM_EXIT_IO;
  run.io.direction = KVM_EXIT_IO_IN;
  run.io.size = 1;
  run.io.port = 0x60;
  run.io.count = 3;
  run.io.data_offset = 4096;
  auto out = vmm::handle_exit(run, f.buf.size(), buses);
  CHECK_FALSE(out.stop);
  CHECK(dev->reads.size() == 3);
  CHECK(f.buf[4096] == 0xa0);
  CHECK(f.buf[4098] == 0xa0);
}

TEST_CASE("exit: malformed PIO exits are errors, not out-of-bounds accesses") {
  vmm::Buses buses;
  FakeRun f;
  auto& run = f.run();
  run.exit_reason = KVM_EXIT_IO;
  run.io.direction = KVM_EXIT_IO_OUT;
  run.io.port = 0x80;
  SUBCASE("data past the mapping") {
    run.io.size = 4;
    run.io.count = 2;
    run.io.data_offset = 8192 - 4;
  }
  SUBCASE("offset beyond the mapping") {
    run.io.size = 1;
    run.io.count = 1;
    run.io.data_offset = 0xffffffffffffull;
  }
  SUBCASE("bad size") {
    run.io.size = 3;
    run.io.count = 1;
    run.io.data_offset = 4096;
  }
  SUBCASE("huge count") {
    run.io.size = 4;
    run.io.count = 0xffffffffu;
    run.io.data_offset = 4096;
  }
  SUBCASE("data over the kvm_run structure itself") {
    // An IN's data would overwrite the count the loop reads (found by fuzz target `exit`: the
    // loop ran on past the mapping). KVM puts the data on the next page.
    run.io.direction = KVM_EXIT_IO_IN;
    run.io.size = 1;
    run.io.count = 64;
    run.io.data_offset = 0;
  }
  auto out = vmm::handle_exit(run, f.buf.size(), buses);
  CHECK(out.stop);
  CHECK(out.reason == StopReason::Error);
  CHECK(out.message.find("malformed KVM_EXIT_IO") != std::string::npos);
}

TEST_CASE("exit: unclaimed port read returns all-ones and keeps running") {
  vmm::Buses buses;
  FakeRun f;
  auto& run = f.run();
  run.exit_reason = KVM_EXIT_IO;
  run.io.direction = KVM_EXIT_IO_IN;
  run.io.size = 2;
  run.io.port = 0x1234;
  run.io.count = 1;
  run.io.data_offset = 4096;
  auto out = vmm::handle_exit(run, f.buf.size(), buses);
  CHECK_FALSE(out.stop);
  CHECK(f.buf[4096] == 0xff);
  CHECK(f.buf[4097] == 0xff);
}

TEST_CASE("exit: MMIO read and write reach the MMIO bus") {
  vmm::Buses buses;
  auto dev = std::make_shared<Recorder>();
  REQUIRE(buses.mmio.insert(dev, 0xd0000000, 0x1000));
  FakeRun f;
  auto& run = f.run();
  run.exit_reason = KVM_EXIT_MMIO;
  run.mmio.phys_addr = 0xd0000010;
  run.mmio.len = 4;
  run.mmio.is_write = 0;
  CHECK_FALSE(vmm::handle_exit(run, f.buf.size(), buses).stop);
  CHECK(run.mmio.data[0] == 0xa0);
  CHECK(run.mmio.data[3] == 0xa3);
  run.mmio.is_write = 1;
  std::memcpy(run.mmio.data, "\x01\x02", 2);
  run.mmio.len = 2;
  CHECK_FALSE(vmm::handle_exit(run, f.buf.size(), buses).stop);
  REQUIRE(dev->writes.size() == 1);
  CHECK(dev->writes[0].first == 0x10);
  run.mmio.len = 9;  // larger than the data array
  CHECK(vmm::handle_exit(run, f.buf.size(), buses).stop);
}

TEST_CASE("exit: shutdown, system events, internal errors and unknown exits") {
  vmm::Buses buses;
  FakeRun f;
  auto& run = f.run();
  run.exit_reason = KVM_EXIT_SHUTDOWN;
  auto out = vmm::handle_exit(run, f.buf.size(), buses);
  CHECK(out.stop);
  CHECK(out.reason == StopReason::TripleFault);

  run.exit_reason = KVM_EXIT_SYSTEM_EVENT;
  run.system_event.type = KVM_SYSTEM_EVENT_RESET;
  CHECK(vmm::handle_exit(run, f.buf.size(), buses).reason == StopReason::Reset);
  run.system_event.type = KVM_SYSTEM_EVENT_SHUTDOWN;
  CHECK(vmm::handle_exit(run, f.buf.size(), buses).reason == StopReason::PowerOff);

  run.exit_reason = KVM_EXIT_INTR;
  CHECK_FALSE(vmm::handle_exit(run, f.buf.size(), buses).stop);

  run.exit_reason = KVM_EXIT_INTERNAL_ERROR;
  run.emulation_failure.suberror = KVM_INTERNAL_ERROR_EMULATION;
  run.emulation_failure.ndata = 4;
  run.emulation_failure.flags = KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES;
  run.emulation_failure.insn_size = 3;
  run.emulation_failure.insn_bytes[0] = 0x0f;
  run.emulation_failure.insn_bytes[1] = 0xae;
  run.emulation_failure.insn_bytes[2] = 0x2f;
  out = vmm::handle_exit(run, f.buf.size(), buses);
  CHECK(out.stop);
  CHECK(out.reason == StopReason::Error);
  CHECK(out.message.find("instruction bytes [0f ae 2f]") != std::string::npos);

  run.exit_reason = KVM_EXIT_FAIL_ENTRY;
  run.fail_entry.hardware_entry_failure_reason = 0x21;
  out = vmm::handle_exit(run, f.buf.size(), buses);
  CHECK(out.stop);
  CHECK(out.message.find("0x21") != std::string::npos);

  run.exit_reason = 9999;
  out = vmm::handle_exit(run, f.buf.size(), buses);
  CHECK(out.stop);
  CHECK(out.message.find("9999") != std::string::npos);
}
