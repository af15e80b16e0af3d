#include "vmm/boot/reset_vector.hpp"

#include <cstring>

#include "vmm/base/layout.hpp"

namespace vmm::boot {

std::array<uint8_t, 16> reset_vector_code() {
  constexpr uint16_t port = layout::kAcpiResetPort;
  return {
      0xfa,                                                                  // cli
      0xba, static_cast<uint8_t>(port & 0xff), static_cast<uint8_t>(port >> 8),  // mov dx, port
      0xb0, layout::kAcpiResetValue,                                         // mov al, value
      0xee,                                                                  // out dx, al
      0xf4,                                                                  // 1: hlt
      0xeb, 0xfd,                                                            // jmp 1b
      0, 0, 0, 0, 0, 0,
  };
}

Result<> write_reset_vector(const GuestMemory& memory) {
  const auto code = reset_vector_code();
  auto dst = memory.slice(Gpa(layout::kResetVector), code.size());
  if (!dst) return std::unexpected(dst.error().context("writing the reset vector"));
  std::memcpy(dst->data(), code.data(), code.size());
  return {};
}

}  // namespace vmm::boot
