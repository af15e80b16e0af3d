#include "devices/pci_config.hpp"

#include <cstring>

namespace vmm::devices {

namespace {

constexpr uint8_t kRegStatus = 0x06;
constexpr uint8_t kStatusCapList = 1u << 4;
constexpr uint8_t kRegBar0 = 0x10;
constexpr uint8_t kRegCapPtr = 0x34;
constexpr uint8_t kBarMem64 = 0x4;

void put16(std::array<uint8_t, 256>& b, unsigned at, uint16_t v) {
  b[at] = static_cast<uint8_t>(v);
  b[at + 1] = static_cast<uint8_t>(v >> 8);
}
void put32(std::array<uint8_t, 256>& b, unsigned at, uint32_t v) {
  for (unsigned i = 0; i < 4; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}
uint32_t get32(const std::array<uint8_t, 256>& b, unsigned at) {
  uint32_t v = 0;
  for (unsigned i = 0; i < 4; ++i) v |= uint32_t{b[at + i]} << (8 * i);
  return v;
}

}  // namespace

PciConfig::PciConfig(const Ids& ids) {
  put16(bytes_, 0x00, ids.vendor);
  put16(bytes_, 0x02, ids.device);
  bytes_[0x08] = ids.revision;
  bytes_[0x09] = static_cast<uint8_t>(ids.class_code);
  bytes_[0x0a] = static_cast<uint8_t>(ids.class_code >> 8);
  bytes_[0x0b] = static_cast<uint8_t>(ids.class_code >> 16);
  put16(bytes_, 0x2c, ids.subsystem_vendor);
  put16(bytes_, 0x2e, ids.subsystem);
  // Command: I/O, memory, bus master, INTx disable. Cache line size and interrupt line: scratch.
  const uint8_t command[2] = {kPciCommandIo | kPciCommandMemory | kPciCommandMaster, kPciCommandIntxDisable >> 8};
  set_writable(0x04, command);
  const uint8_t scratch[1] = {0xff};
  set_writable(0x0c, scratch);
  set_writable(0x3c, scratch);
}

void PciConfig::set_writable(uint8_t offset, std::span<const uint8_t> mask) {
  for (size_t i = 0; i < mask.size() && offset + i < writable_.size(); ++i) writable_[offset + i] |= mask[i];
}

void PciConfig::add_memory_bar(unsigned index, uint64_t address, uint64_t size, bool is64) {
  if (index + (is64 ? 1 : 0) >= kBars || size < 16 || (size & (size - 1)) != 0) return;
  bars_[index] = Bar{.size = size, .is64 = is64};
  const unsigned reg = kRegBar0 + 4 * index;
  put32(bytes_, reg, static_cast<uint32_t>(address & ~(size - 1)) | (is64 ? kBarMem64 : 0));
  put32(writable_, reg, static_cast<uint32_t>(~(size - 1)) & ~0xfu);
  if (is64) {
    put32(bytes_, reg + 4, static_cast<uint32_t>(address >> 32));
    put32(writable_, reg + 4, static_cast<uint32_t>(~(size - 1) >> 32));
  }
}

uint8_t PciConfig::add_capability(uint8_t id, std::span<const uint8_t> body) {
  const size_t len = (2 + body.size() + 3) & ~size_t{3};
  if (next_cap_ + len > bytes_.size()) return 0;
  const uint8_t at = next_cap_;
  bytes_[at] = id;
  bytes_[at + 1] = 0;
  std::memcpy(&bytes_[at + 2], body.data(), body.size());
  if (last_cap_ == 0) {
    bytes_[kRegCapPtr] = at;
    bytes_[kRegStatus] |= kStatusCapList;
  } else {
    bytes_[last_cap_ + 1] = at;
  }
  last_cap_ = at;
  next_cap_ = static_cast<uint8_t>(at + len);
  return at;
}

Result<> PciConfig::restore_checked(const State& state) {
  for (size_t i = 0; i < bytes_.size(); ++i) {
    const uint8_t fixed = static_cast<uint8_t>(~writable_[i]);
    if ((state[i] & fixed) != (bytes_[i] & fixed)) {
      return fail("PCI configuration byte {:#x} is {:#x}, this device has {:#x} there (read-only)", i, state[i],
                  bytes_[i]);
    }
  }
  bytes_ = state;
  return {};
}

uint32_t PciConfig::read(uint8_t reg) const { return get32(bytes_, reg & 0xfc); }

PciConfig::Effect PciConfig::write(uint8_t reg, uint32_t value, uint8_t byte_mask) {
  reg &= 0xfc;
  const uint32_t before = get32(bytes_, reg);
  for (unsigned i = 0; i < 4; ++i) {
    if (!(byte_mask & (1u << i))) continue;
    const uint8_t m = writable_[reg + i];
    bytes_[reg + i] = static_cast<uint8_t>((bytes_[reg + i] & ~m) | (static_cast<uint8_t>(value >> (8 * i)) & m));
  }
  Effect e;
  if (get32(bytes_, reg) == before) return e;
  if (reg == 0x04) e.command = true;
  if (reg >= kRegBar0 && reg < kRegBar0 + 4 * kBars) {
    unsigned index = (reg - kRegBar0) / 4;
    if (bars_[index].size == 0 && index > 0 && bars_[index - 1].is64) --index;  // the upper half
    if (bars_[index].size != 0) e.bar = static_cast<int>(index);
  }
  return e;
}

uint64_t PciConfig::bar_address(unsigned index) const {
  if (index >= kBars || bars_[index].size == 0) return 0;
  const unsigned reg = kRegBar0 + 4 * index;
  uint64_t a = get32(bytes_, reg) & ~0xfull;
  if (bars_[index].is64) a |= uint64_t{get32(bytes_, reg + 4)} << 32;
  return a;
}

}  // namespace vmm::devices
