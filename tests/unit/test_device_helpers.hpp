// Helpers shared by the disk and virtio device tests: reading a host file back, guest RAM, and an
// interrupt sink that counts.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "devices/virtio/device.hpp"
#include "vmm/base/guest_memory.hpp"

namespace device_test {

/// `n` bytes of the file at `offset` (fails the test if they cannot be read).
inline std::vector<uint8_t> file_bytes(const std::filesystem::path& p, uint64_t offset, size_t n) {
  std::vector<uint8_t> b(n);
  const int fd = ::open(p.c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  CHECK(::pread(fd, b.data(), n, static_cast<off_t>(offset)) == static_cast<ssize_t>(n));
  ::close(fd);
  return b;
}

/// Anonymous guest RAM of `size` bytes.
inline vmm::GuestMemory ram(uint64_t size) {
  auto m = vmm::GuestMemory::anonymous(size);
  REQUIRE(m);
  return std::move(*m);
}

/// Counts the used-buffer interrupts a device raises.
struct CountingInterrupt final : vmm::devices::virtio::Interrupt {
  int count = 0;
  std::vector<std::string> errors;  // device_error()s
  std::vector<unsigned> served_again;  // serve_again()s, by queue
  std::function<void(unsigned)> on_signal;  // a driver's answer to the interrupt (refilling its ring)
  void signal_used(unsigned queue) override {
    ++count;
    if (on_signal) on_signal(queue);
  }
  void device_error(const std::string& why) override { errors.push_back(why); }
  void serve_again(unsigned queue) override { served_again.push_back(queue); }
};

}  // namespace device_test
