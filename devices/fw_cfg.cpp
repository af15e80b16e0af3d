#include "devices/fw_cfg.hpp"

#include <algorithm>

namespace vmm::devices {

namespace {

constexpr uint16_t kKeyMask = 0x3fff;       // bits 13:0 select the item (fw_cfg.rst)
constexpr uint16_t kArchLocalBit = 0x8000;  // architecture-specific items: none here
constexpr size_t kDirEntrySize = 64;        // be32 size, be16 select, be16 reserved, char name[56]
constexpr size_t kDirNameSize = 56;

void put_be(std::vector<uint8_t>& out, uint64_t value, size_t bytes) {
  for (size_t i = bytes; i-- > 0;) out.push_back(static_cast<uint8_t>(value >> (8 * i)));
}

bool key_char(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'; }

}  // namespace

// ---- Setup --------------------------------------------------------------------------------------

Result<> FwCfg::add_file(std::string name, std::vector<uint8_t> content) {
  if (name.empty() || name.size() > kMaxNameLength) {
    return fail("fw_cfg file {:?}: the name must have 1 to {} characters", name, kMaxNameLength);
  }
  if (name.find('\0') != std::string::npos) return fail("fw_cfg file name contains a NUL byte");
  if (content.size() > UINT32_MAX) return fail("fw_cfg file \"{}\": {} bytes is too large", name, content.size());
  std::lock_guard lock(mutex_);
  if (files_.size() >= kMaxFiles) return fail("fw_cfg file \"{}\": more than {} files", name, kMaxFiles);
  // Sorted by name (strcmp order, as QEMU's fw_cfg_add_file): the directory and the keys follow it.
  const auto at = std::lower_bound(files_.begin(), files_.end(), name,
                                   [](const File& f, const std::string& n) { return f.name < n; });
  if (at != files_.end() && at->name == name) return fail("fw_cfg file \"{}\" added twice", name);
  files_.insert(at, File{.name = std::move(name), .content = std::move(content)});
  directory_stale_ = true;  // rebuilt at the next guest access, not once per file
  return {};
}

Result<> FwCfg::set_file_content(std::string_view name, std::span<const uint8_t> content) {
  std::lock_guard lock(mutex_);
  const auto f = std::find_if(files_.begin(), files_.end(), [&](const File& file) { return file.name == name; });
  if (f == files_.end()) return fail("fw_cfg: no file \"{}\"", name);
  if (content.size() != f->content.size()) {
    return fail("fw_cfg file \"{}\": new content of {} bytes, the file has {} (its size is fixed)", name,
                content.size(), f->content.size());
  }
  std::copy(content.begin(), content.end(), f->content.begin());
  return {};
}

void FwCfg::rebuild_directory() {
  if (!directory_stale_) return;
  directory_stale_ = false;
  // fw_cfg.rst "File Directory": be32 count, then per file be32 size, be16 select, be16 reserved,
  // char name[56] (NUL-terminated, NUL-padded).
  std::vector<uint8_t> dir;
  dir.reserve(4 + files_.size() * kDirEntrySize);
  put_be(dir, files_.size(), 4);
  for (size_t i = 0; i < files_.size(); ++i) {
    put_be(dir, files_[i].content.size(), 4);
    put_be(dir, kFirstFileKey + i, 2);
    put_be(dir, 0, 2);
    const std::string& n = files_[i].name;
    dir.insert(dir.end(), n.begin(), n.end());
    dir.resize(dir.size() + kDirNameSize - n.size(), 0);
  }
  directory_ = std::move(dir);
}

// ---- Guest accesses -----------------------------------------------------------------------------

const std::vector<uint8_t>* FwCfg::item(uint16_t key) const {
  if (key & kArchLocalBit) return nullptr;
  switch (key & kKeyMask) {
    case kSignatureKey: return &signature_;
    case kIdKey: return &id_;
    case kFileDirKey: return &directory_;
    default: break;
  }
  const size_t k = key & kKeyMask;
  if (k >= kFirstFileKey && k - kFirstFileKey < files_.size()) return &files_[k - kFirstFileKey].content;
  return nullptr;
}

void FwCfg::read(uint64_t offset, std::span<uint8_t> data) {
  std::fill(data.begin(), data.end(), 0);
  if (offset != 1) return;  // the selector port reads as 0
  std::lock_guard lock(mutex_);
  rebuild_directory();
  const std::vector<uint8_t>* it = item(key_);
  if (it == nullptr) return;
  // Each byte of the access is the next byte of the item; past the end, 0 (fw_cfg.rst "Data Register").
  for (uint8_t& b : data) {
    if (offset_ >= it->size()) break;
    b = (*it)[offset_++];
  }
}

void FwCfg::write(uint64_t offset, std::span<const uint8_t> data) {
  // The selector is a 16-bit little-endian write at offset 0 (port 0x510); writes to the data port
  // are ignored (no write support since QEMU 2.4), as are other widths.
  if (offset != 0 || data.size() != 2) return;
  const uint16_t key = static_cast<uint16_t>(data[0] | (data[1] << 8));
  std::lock_guard lock(mutex_);
  rebuild_directory();
  key_ = item(key) != nullptr ? static_cast<uint16_t>(key & kKeyMask) : kInvalidKey;
  offset_ = 0;
}

// ---- Snapshots ----------------------------------------------------------------------------------

void FwCfg::save(ByteWriter& out) const {
  std::lock_guard lock(mutex_);
  out.put(key_);
  out.put(offset_);
}

Result<> FwCfg::restore(ByteReader& in) {
  auto key = in.get<uint16_t>("selector");
  if (!key) return std::unexpected(key.error());
  auto offset = in.get<uint32_t>("offset");
  if (!offset) return std::unexpected(offset.error());
  std::lock_guard lock(mutex_);
  rebuild_directory();
  if (*key == kInvalidKey) {
    if (*offset != 0) return std::unexpected(in.error("offset", fmt::format("{} with no item selected", *offset)));
  } else {
    const std::vector<uint8_t>* it = (*key & ~kKeyMask) == 0 ? item(*key) : nullptr;
    if (it == nullptr) return std::unexpected(in.error("selector", fmt::format("{:#x} names no item", *key)));
    if (*offset > it->size()) {
      return std::unexpected(
          in.error("offset", fmt::format("{} is past the end of item {:#x} ({} bytes)", *offset, *key, it->size())));
    }
  }
  key_ = *key;
  offset_ = *offset;
  return {};
}

// ---- Identity file ------------------------------------------------------------------------------

Result<std::vector<uint8_t>> identity_text(const std::vector<std::pair<std::string, std::string>>& kv) {
  std::vector<uint8_t> out;
  for (const auto& [key, value] : kv) {
    if (key.empty() || !std::all_of(key.begin(), key.end(), key_char)) {
      return fail("identity key {:?}: use 1 or more of a-z, 0-9 and _", key);
    }
    if (value.find_first_of(std::string_view("\n\0", 2)) != std::string::npos) {
      return fail("identity value of {:?} contains a newline or NUL", key);
    }
    out.insert(out.end(), key.begin(), key.end());
    out.push_back('=');
    out.insert(out.end(), value.begin(), value.end());
    out.push_back('\n');
    // At least one NUL ends the text (vmm-agent requires it: a file without one was cut short).
    if (out.size() >= kIdentitySize) return fail("identity text is over {} bytes (at key {:?})", kIdentitySize - 1, key);
  }
  out.resize(kIdentitySize, 0);
  return out;
}

}  // namespace vmm::devices
