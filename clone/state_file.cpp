// The snapshot state file: encoding, checked parsing, and whole-file read and write.
#include "clone/state_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <unordered_set>

#include "vmm/base/codec.hpp"
#include "vmm/base/crc32c.hpp"
#include "vmm/base/fd.hpp"
#include "vmm/base/read_file.hpp"

namespace vmm::clone {
namespace {

constexpr size_t kCrcSize = 4;
constexpr uint64_t kAlign = 8;

constexpr uint64_t align_up(uint64_t v) { return (v + kAlign - 1) & ~(kAlign - 1); }

/// Bytes one table entry takes.
constexpr uint64_t entry_size(size_t id_length) { return 1 + id_length + 8 + 8; }

bool id_char(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'; }

/// Where each section's data goes: offsets strictly increasing and 8-byte aligned (an empty
/// section still advances by 8, so no two sections share an offset). Returns the offsets and the
/// file length, checksum included.
std::pair<std::vector<uint64_t>, uint64_t> layout(const StateFile& state) {
  uint64_t pos = kStateHeaderSize;
  for (const auto& s : state.sections) pos += entry_size(s.id.size());
  pos = align_up(pos);
  std::vector<uint64_t> offsets;
  offsets.reserve(state.sections.size());
  for (const auto& s : state.sections) {
    offsets.push_back(pos);
    pos = align_up(pos + std::max<uint64_t>(s.data.size(), 1));
  }
  return {std::move(offsets), pos + kCrcSize};
}

/// Refuses what encode_state_file would write but parse_state_file would not read.
Result<> check_writable(const StateFile& state, std::string_view file) {
  if (state.major != kStateMajor || state.minor > kStateMinor) {
    return fail("{}: format version {}.{} cannot be written (this vmm writes {}.{})", file, state.major, state.minor,
                kStateMajor, kStateMinor);
  }
  if (state.sections.size() > kMaxSections) {
    return fail("{}: {} sections is over the limit of {}", file, state.sections.size(), kMaxSections);
  }
  std::unordered_set<std::string_view> seen;
  for (const auto& s : state.sections) {
    if (!valid_section_id(s.id)) {
      return fail("{}: section id '{}' is invalid (1..{} characters of [a-z0-9._-])", file, printable(s.id),
                  kMaxSectionIdLength);
    }
    if (!seen.insert(s.id).second) return fail("{}: section id '{}' appears twice", file, s.id);
    if (s.data.size() > kMaxSectionSize) {
      return fail("{}: section '{}': {} bytes is over the limit of {} MiB", file, s.id, s.data.size(),
                  kMaxSectionSize >> 20);
    }
  }
  if (const uint64_t length = layout(state).second; length > kMaxFileSize) {
    return fail("{}: {} bytes is over the state file limit of {} MiB", file, length, kMaxFileSize >> 20);
  }
  return {};
}

}  // namespace

const StateSection* StateFile::find(std::string_view id) const {
  for (const auto& s : sections) {
    if (s.id == id) return &s;
  }
  return nullptr;
}

Result<std::span<const uint8_t>> StateFile::require(std::string_view id, std::string_view file) const {
  if (const StateSection* s = find(id)) return std::span<const uint8_t>(s->data);
  return fail("{}: section '{}' is missing", file, id);
}

bool valid_section_id(std::string_view id) {
  return !id.empty() && id.size() <= kMaxSectionIdLength && std::ranges::all_of(id, id_char);
}

std::vector<uint8_t> encode_state_file(const StateFile& state) {
  const auto [offsets, length] = layout(state);
  ByteWriter w;
  w.put_bytes(std::span(reinterpret_cast<const uint8_t*>(kStateMagic), sizeof kStateMagic));
  w.put(state.major);
  w.put(state.minor);
  w.put(static_cast<uint32_t>(state.sections.size()));
  w.put(length);
  for (size_t i = 0; i < state.sections.size(); ++i) {
    const auto& s = state.sections[i];
    w.put(static_cast<uint8_t>(s.id.size()));
    w.put_bytes(std::span(reinterpret_cast<const uint8_t*>(s.id.data()), s.id.size()));
    w.put(offsets[i]);
    w.put(static_cast<uint64_t>(s.data.size()));
  }
  std::vector<uint8_t> out = w.take();
  out.resize(length - kCrcSize, 0);  // padding and data area, zeroed
  for (size_t i = 0; i < state.sections.size(); ++i) {
    const auto& d = state.sections[i].data;
    if (!d.empty()) std::memcpy(out.data() + offsets[i], d.data(), d.size());
  }
  const uint32_t crc = crc32c(0, out);
  ByteWriter tail;
  tail.put(crc);
  out.insert(out.end(), tail.bytes().begin(), tail.bytes().end());
  return out;
}

Result<StateFile> parse_state_file(std::span<const uint8_t> bytes, std::string_view file) {
  // The header.
  if (bytes.size() < kStateHeaderSize + kCrcSize) {
    return fail("{}: too short for a state file header ({} bytes, at least {} needed)", file, bytes.size(),
                kStateHeaderSize + kCrcSize);
  }
  ByteReader header(bytes.first(kStateHeaderSize), std::string(file));
  char magic[sizeof kStateMagic];
  if (auto r = header.get_into(std::span(reinterpret_cast<uint8_t*>(magic), sizeof magic), "magic"); !r) {
    return std::unexpected(r.error());
  }
  if (std::memcmp(magic, kStateMagic, sizeof magic) != 0) {
    return fail("{}: bad magic '{}' (not a vmm state file)", file, printable(std::string_view(magic, sizeof magic)));
  }
  auto major = header.get<uint16_t>("major version");
  auto minor = header.get<uint16_t>("minor version");
  auto count = header.get<uint32_t>("section count");
  auto length = header.get<uint64_t>("total length");
  if (!major || !minor || !count || !length) return fail("{}: header unreadable", file);  // sizes checked above
  if (*major != kStateMajor) {
    return fail("{}: format version {}.{} is not supported (this vmm reads {}.x)", file, *major, *minor, kStateMajor);
  }
  if (*minor > kStateMinor) {
    return fail("{}: format version {}.{} is newer than this vmm reads ({}.{}): minor version too new", file, *major,
                *minor, kStateMajor, kStateMinor);
  }
  if (*length != bytes.size()) {
    return fail("{}: total length {} in the header but the file has {} bytes ({})", file, *length, bytes.size(),
                *length > bytes.size() ? "truncated" : "trailing bytes");
  }
  if (*length > kMaxFileSize) {
    return fail("{}: total length {} is over the limit of {} MiB", file, *length, kMaxFileSize >> 20);
  }

  // The checksum, before anything else in the file is believed.
  const size_t body = bytes.size() - kCrcSize;
  ByteReader trailer(bytes.subspan(body), std::string(file));
  const uint32_t stored = trailer.get<uint32_t>("checksum").value_or(0);
  const uint32_t computed = crc32c(0, bytes.first(body));
  if (stored != computed) {
    return fail("{}: checksum mismatch (stored {:#010x}, computed {:#010x}): the file is corrupt", file, stored,
                computed);
  }

  // The section table, then each entry against the data area [table end, body).
  if (*count > kMaxSections) {
    return fail("{}: section count {} is over the limit of {}", file, *count, kMaxSections);
  }
  StateFile out{.major = *major, .minor = *minor, .sections = {}};
  out.sections.reserve(*count);
  ByteReader table(bytes.subspan(kStateHeaderSize, body - kStateHeaderSize), fmt::format("{}: section table", file));
  struct Entry {
    std::string id;
    uint64_t offset, size;
  };
  std::vector<Entry> entries;
  entries.reserve(*count);
  for (uint32_t i = 0; i < *count; ++i) {
    const std::string field = fmt::format("entry {}", i);
    auto id_length = table.get<uint8_t>(field + " id length");
    if (!id_length) return std::unexpected(id_length.error());
    if (*id_length == 0 || *id_length > kMaxSectionIdLength) {
      return std::unexpected(
          table.error(field, fmt::format("id length {} is not in 1..{}", *id_length, kMaxSectionIdLength)));
    }
    std::string id(*id_length, '\0');
    if (auto r = table.get_into(std::span(reinterpret_cast<uint8_t*>(id.data()), id.size()), field + " id"); !r) {
      return std::unexpected(r.error());
    }
    if (!std::ranges::all_of(id, id_char)) {
      return std::unexpected(
          table.error(field, fmt::format("id '{}' has characters outside [a-z0-9._-]", printable(id))));
    }
    auto offset = table.get<uint64_t>(field + " offset");
    if (!offset) return std::unexpected(offset.error());
    auto size = table.get<uint64_t>(field + " size");
    if (!size) return std::unexpected(size.error());
    entries.push_back({std::move(id), *offset, *size});
  }
  const uint64_t data_start = kStateHeaderSize + table.position();
  std::unordered_set<std::string_view> seen;
  seen.reserve(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& [id, offset, size] = entries[i];
    const std::string where = fmt::format("{}: section table: entry {} ('{}')", file, i, id);
    if (!seen.insert(id).second) return fail("{}: duplicate id", where);
    if (size > kMaxSectionSize) {
      return fail("{}: size {} is over the limit of {} MiB", where, size, kMaxSectionSize >> 20);
    }
    if (offset > UINT64_MAX - size) {
      return fail("{}: offset {:#x} + size {:#x} overflows", where, offset, size);
    }
    if (offset % kAlign) return fail("{}: offset {:#x} is not 8-byte aligned", where, offset);
    if (offset < data_start || offset + size > body) {
      return fail("{}: offset {:#x} size {:#x} is outside the data area [{:#x}, {:#x})", where, offset, size,
                  data_start, body);
    }
    if (i > 0) {
      const Entry& prev = entries[i - 1];
      if (offset <= prev.offset) {
        return fail("{}: offset {:#x} is out of order (not above entry {}'s {:#x})", where, offset, i - 1,
                    prev.offset);
      }
      if (offset < prev.offset + prev.size) {
        return fail("{}: offset {:#x} overlaps entry {} (which ends at {:#x})", where, offset, i - 1,
                    prev.offset + prev.size);
      }
    }
  }
  for (auto& e : entries) {
    const auto data = bytes.subspan(e.offset, e.size);
    out.sections.push_back({std::move(e.id), std::vector<uint8_t>(data.begin(), data.end())});
  }
  return out;
}

Result<> write_state_file(const std::filesystem::path& path, const StateFile& state) {
  const std::string name = path.string();
  if (auto r = check_writable(state, name); !r) return r;
  const std::vector<uint8_t> bytes = encode_state_file(state);
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd) return fail("{}: cannot create: {}", name, errno_text(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd.get(), bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail("{}: cannot write: {}", name, n < 0 ? errno_text(errno) : "no progress");
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return fail("{}: cannot fsync: {}", name, errno_text(errno));
  if (::close(fd.release()) != 0) return fail("{}: cannot close: {}", name, errno_text(errno));
  return {};
}

Result<StateFile> read_state_file(const std::filesystem::path& path) {
  auto bytes = read_file(path, kMaxFileSize, "state file");
  if (!bytes) return std::unexpected(bytes.error());
  return parse_state_file(std::span(reinterpret_cast<const uint8_t*>(bytes->data()), bytes->size()), path.string());
}

Result<StateFile> read_state_file(int fd, const std::filesystem::path& path) {
  auto bytes = read_file(fd, path, kMaxFileSize, "state file");
  if (!bytes) return std::unexpected(bytes.error());
  return parse_state_file(std::span(reinterpret_cast<const uint8_t*>(bytes->data()), bytes->size()), path.string());
}

}  // namespace vmm::clone
