// Helpers shared by the disk and virtio device tests: reading a host file back, guest RAM, and an
// interrupt sink that counts.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
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
  void signal_used(unsigned) override { ++count; }
  void device_error(const std::string& why) override { errors.push_back(why); }
};

}  // namespace device_test
