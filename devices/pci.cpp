#include "devices/pci.hpp"

#include <algorithm>
#include <cstring>

#include <fmt/core.h>

namespace vmm::devices {

namespace {

constexpr uint32_t kEnable = 1u << 31;
constexpr uint8_t kRegCommand = 0x04;
constexpr uint32_t kClassHostBridge = 0x060000;  // base class 06 (bridge), sub-class 00 (host)

// Merges the selected bytes of `value` into `old`.
uint32_t merge(uint32_t old, uint32_t value, uint8_t byte_mask) {
  uint32_t mask = 0;
  for (unsigned i = 0; i < 4; ++i) {
    if (byte_mask & (1u << i)) mask |= 0xffu << (8 * i);
  }
  return (old & ~mask) | (value & mask);
}

}  // namespace

uint32_t PciHostBridge::config_read(uint8_t reg) {
  std::lock_guard lock(mutex_);
  switch (reg) {
    case 0x00: return uint32_t{kDevice} << 16 | kVendor;
    case kRegCommand: return command_;  // status 0: no capabilities list
    case 0x08: return kClassHostBridge << 8;  // revision 0
    case 0x0c: return 0;  // header type 0, single function
    case 0x2c: return uint32_t{kDevice} << 16 | kVendor;  // subsystem
    default: return 0;
  }
}

uint16_t PciHostBridge::command() const {
  std::lock_guard lock(mutex_);
  return command_;
}

void PciHostBridge::set_command(uint16_t command) {
  std::lock_guard lock(mutex_);
  command_ = command & 0x7;
}

void PciHostBridge::config_write(uint8_t reg, uint32_t value, uint8_t byte_mask) {
  if (reg != kRegCommand) return;
  std::lock_guard lock(mutex_);
  // Memory space, I/O space, bus master: the only command bits a host bridge keeps here.
  command_ = static_cast<uint16_t>(merge(command_, value, byte_mask & 0x3) & 0x7);
}

PciRoot::PciRoot() : host_(std::make_shared<PciHostBridge>()) { slots_[0] = host_; }

Result<void> PciRoot::attach(unsigned slot, std::shared_ptr<PciFunction> function) {
  if (slot >= kSlots) return fail("PCI slot {} out of range (0-{})", slot, kSlots - 1);
  if (!function) return fail("PCI slot {}: no function", slot);
  std::lock_guard lock(mutex_);
  if (slots_[slot]) return fail("PCI slot {} is already in use", slot);
  slots_[slot] = std::move(function);
  return {};
}

PciFunction* PciRoot::selected() const {
  if (!(address_ & kEnable)) return nullptr;
  const uint32_t bus = (address_ >> 16) & 0xff, slot = (address_ >> 11) & 0x1f, function = (address_ >> 8) & 0x7;
  if (bus != 0 || function != 0) return nullptr;
  return slots_[slot].get();
}

void PciRoot::access(PciFunction* f, unsigned reg, std::span<uint8_t> data, bool write) {
  const size_t byte = reg & 3;
  if (data.empty() || data.size() > 4 || byte + data.size() > 4) return;
  if (write) {
    if (!f || reg >= 256) return;
    uint32_t v = 0;
    std::memcpy(reinterpret_cast<uint8_t*>(&v) + byte, data.data(), data.size());
    const auto mask = static_cast<uint8_t>(((1u << data.size()) - 1) << byte);
    f->config_write(static_cast<uint8_t>(reg & 0xfc), v, mask);
    return;
  }
  uint32_t dword = 0xffffffff;
  if (f) dword = reg < 256 ? f->config_read(static_cast<uint8_t>(reg & 0xfc)) : 0;
  std::memcpy(data.data(), reinterpret_cast<const uint8_t*>(&dword) + byte, data.size());
}

void PciRoot::read(uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), 0xff);
  if (data.empty() || data.size() > 4 || offset + data.size() > 8) return;
  std::lock_guard lock(mutex_);
  if (offset == 1 && data.size() == 1) {  // 0xCF9, the reset control register
    data[0] = reset_control_;
    return;
  }
  if (offset < 4) {
    // The address register is dword-only (byte accesses at 0xCF8-0xCFB belong to mechanism #2).
    if (offset != 0 || data.size() != 4) return;
    std::memcpy(data.data(), &address_, 4);
    return;
  }
  access(selected(), (address_ & 0xfc) + static_cast<unsigned>(offset - 4), data, false);
}

void PciRoot::write(uint64_t offset, std::span<const uint8_t> data) {
  if (data.empty() || data.size() > 4 || offset + data.size() > 8) return;
  std::lock_guard lock(mutex_);
  // 0xCF9, the reset control register (PIIX/ICH): bit 2 set resets the system, as QEMU's does. It
  // was a claimed port whose writes went nowhere: Linux's reboot=pci fell back to a triple fault,
  // a reboot ending as a crash (status 8).
  if (offset == 1 && data.size() == 1) {
    reset_control_ = data[0] & 0x0a;
    if ((data[0] & 0x04) && reset_target_ != nullptr) reset_target_->request_stop(StopReason::Reset);
    return;
  }
  if (offset < 4) {
    if (offset != 0 || data.size() != 4) return;
    uint32_t v;
    std::memcpy(&v, data.data(), 4);
    address_ = v & 0x80fffffcu;  // reserved bits 30:24 and 1:0 read as zero
    return;
  }
  std::array<uint8_t, 4> buf{};
  std::copy(data.begin(), data.end(), buf.begin());
  access(selected(), (address_ & 0xfc) + static_cast<unsigned>(offset - 4), std::span(buf.data(), data.size()), true);
}

class Ecam final : public BusDevice {
 public:
  explicit Ecam(std::shared_ptr<PciRoot> root) : root_(std::move(root)) {}
  void read(uint64_t offset, std::span<uint8_t> data) override {
    std::fill(data.begin(), data.end(), 0xff);
    std::lock_guard lock(root_->mutex_);
    PciRoot::access(function(offset), static_cast<unsigned>(offset & 0xfff), data, false);
  }
  void write(uint64_t offset, std::span<const uint8_t> data) override {
    std::array<uint8_t, 4> buf{};
    if (data.size() > buf.size()) return;
    std::copy(data.begin(), data.end(), buf.begin());
    std::lock_guard lock(root_->mutex_);
    PciRoot::access(function(offset), static_cast<unsigned>(offset & 0xfff), std::span(buf.data(), data.size()), true);
  }
  std::string_view name() const override { return "pci-ecam"; }

 private:
  PciFunction* function(uint64_t offset) const {
    const uint64_t bus = offset >> 20, slot = (offset >> 15) & 0x1f, fn = (offset >> 12) & 0x7;
    if (bus != 0 || fn != 0) return nullptr;
    return root_->slots_[slot].get();
  }
  std::shared_ptr<PciRoot> root_;
};

std::shared_ptr<BusDevice> PciRoot::ecam() { return std::make_shared<Ecam>(shared_from_this()); }

PciRoot::State PciRoot::save() const {
  std::lock_guard lock(mutex_);
  return State{.address = address_};
}

void PciRoot::restore(const State& state) {
  std::lock_guard lock(mutex_);
  address_ = state.address & 0x80fffffcu;
}

void PciRoot::save(ByteWriter& out) const {
  out.put(save().address);
  out.put(host_->command());
}

Result<> PciRoot::restore(ByteReader& in) {
  auto address = in.get<uint32_t>("config_address");
  if (!address) return std::unexpected(address.error());
  if (*address & ~0x80fffffcu) {
    return std::unexpected(in.error("config_address", fmt::format("{:#x} has reserved bits set (30:24, 1:0)", *address)));
  }
  auto command = in.get<uint16_t>("host_bridge_command");
  if (!command) return std::unexpected(command.error());
  if (*command & ~0x7u) return std::unexpected(in.error("host_bridge_command", fmt::format("{:#x} has bits a host bridge does not keep", *command)));
  restore(State{.address = *address});
  host_->set_command(*command);
  return {};
}

namespace {

class MmioWindow final : public BusDevice {
 public:
  MmioWindow(std::array<std::shared_ptr<PciFunction>, PciRoot::kSlots> slots, uint64_t base)
      : slots_(std::move(slots)), base_(base) {}
  void read(uint64_t offset, std::span<uint8_t> data) override {
    for (auto& f : slots_) {
      if (f && f->mmio_read(base_ + offset, data)) return;
    }
    std::fill(data.begin(), data.end(), 0xff);
  }
  void write(uint64_t offset, std::span<const uint8_t> data) override {
    for (auto& f : slots_) {
      if (f && f->mmio_write(base_ + offset, data)) return;
    }
  }
  std::string_view name() const override { return "pci-mmio"; }

 private:
  std::array<std::shared_ptr<PciFunction>, PciRoot::kSlots> slots_;
  uint64_t base_;
};

}  // namespace

std::shared_ptr<BusDevice> PciRoot::mmio_window(uint64_t base) {
  // The functions attached now (devices are attached before the VM runs).
  std::lock_guard lock(mutex_);
  return std::make_shared<MmioWindow>(slots_, base);
}

}  // namespace vmm::devices
