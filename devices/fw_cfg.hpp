// QEMU's firmware configuration device (fw_cfg), traditional port-I/O interface only (QEMU
// docs/specs/fw_cfg.rst): the guest writes a 16-bit key to the selector port and reads the selected
// item byte by byte from the data port. Items: the signature, the ID (features), the file directory
// and named files. Linux's qemu_fw_cfg driver (found through ACPI, _HID "QEMU0002") reads the
// directory once at probe and exposes each file as /sys/firmware/qemu_fw_cfg/by_name/<name>/raw,
// reading its content on every read: a file of fixed size can carry data that changes per clone.
#pragma once

#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "devices/device.hpp"

namespace vmm::devices {

/// The fw_cfg device. Insert on the port bus at layout::kFwCfgPort with length
/// layout::kFwCfgPortCount (2): offset 0 is the selector (16-bit little-endian writes), offset 1
/// the data port (byte reads). Thread-safe: vCPU threads access it while the VMM sets file content.
class FwCfg final : public BusDevice, public Snapshottable {
 public:
  /// Well-known keys (fw_cfg.rst "Selector Register Behavior" and the key list).
  static constexpr uint16_t kSignatureKey = 0x0000;  ///< "QEMU"
  static constexpr uint16_t kIdKey = 0x0001;         ///< le32 feature bitmap
  static constexpr uint16_t kFileDirKey = 0x0019;    ///< the file directory
  static constexpr uint16_t kFirstFileKey = 0x0020;  ///< files get keys from here, in name order
  /// ID bit 0: the traditional interface. No bit 1: no DMA interface.
  static constexpr uint32_t kIdTraditional = 1u << 0;
  /// Names are at most 55 characters: the directory holds 56 bytes with a terminating NUL.
  static constexpr size_t kMaxNameLength = 55;
  /// Keys are 14 bits (bit 14 is the old write flag, bit 15 architecture-specific).
  static constexpr size_t kMaxFiles = 0x4000 - kFirstFileKey;
  /// The selector state after a write of a key that names no item: data reads return 0.
  static constexpr uint16_t kInvalidKey = 0xffff;

  /// Adds a file at setup. Errors: an empty name, a name over kMaxNameLength characters or with a
  /// NUL, a duplicate name, more than kMaxFiles files, content of 4 GiB or more. Keys are assigned
  /// in name order (as QEMU does), so add every file before the guest runs.
  Result<> add_file(std::string name, std::vector<uint8_t> content);
  /// Replaces the content of the file `name` with bytes of the same size (the guest driver cached
  /// the size at probe). Errors: no such file, a different size.
  Result<> set_file_content(std::string_view name, std::span<const uint8_t> content);

  void read(uint64_t offset, std::span<uint8_t> data) override;
  void write(uint64_t offset, std::span<const uint8_t> data) override;
  std::string_view name() const override { return "fw_cfg"; }

  /// Saves the selected key and the read offset; file contents are not saved (the VMM adds the same
  /// files, with per-clone content, before restoring).
  void save(ByteWriter& out) const override;
  /// Restores the key (a key naming an item, or kInvalidKey) and the offset (at most the item's
  /// size; 0 with kInvalidKey).
  Result<> restore(ByteReader& in) override;

 private:
  struct File {
    std::string name;
    std::vector<uint8_t> content;
  };
  /// The bytes of the item `key`, or nullptr when no item has that key. Caller holds mutex_.
  const std::vector<uint8_t>* item(uint16_t key) const;
  /// Rebuilds directory_ from files_ if a file was added since. Caller holds mutex_.
  void rebuild_directory();

  mutable std::mutex mutex_;
  std::vector<File> files_;  // sorted by name; files_[i] has key kFirstFileKey + i
  std::vector<uint8_t> signature_ = {'Q', 'E', 'M', 'U'};
  std::vector<uint8_t> id_ = {kIdTraditional, 0, 0, 0};
  std::vector<uint8_t> directory_ = {0, 0, 0, 0};
  bool directory_stale_ = false;
  uint16_t key_ = kSignatureKey;  // QEMU selects the signature at reset
  uint32_t offset_ = 0;
};

/// The identity file clones read: this path, exactly kIdentitySize bytes.
inline constexpr std::string_view kIdentityFileName = "opt/vmm/identity";
inline constexpr size_t kIdentitySize = 1024;

/// Renders `kv` as the identity file: one "key=value\n" line per pair, in order, NUL-padded to
/// kIdentitySize bytes. Errors: an empty key or one with characters outside [a-z0-9_], a value
/// with a newline or NUL, or text that does not fit kIdentitySize bytes.
Result<std::vector<uint8_t>> identity_text(const std::vector<std::pair<std::string, std::string>>& kv);

}  // namespace vmm::devices
