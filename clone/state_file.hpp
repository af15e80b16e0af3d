// The snapshot STATE FILE: a versioned container of named sections (one per device or vCPU, each an
// opaque blob its owner encodes with ByteWriter) protected by a CRC-32C. Guest memory lives in a
// file of its own; this one is small (at most 256 MiB) and read whole.
//
// Layout (all integers little-endian; offsets from the start of the file):
//
// | offset | size      | field                                                                    |
// | ------ | --------- | ------------------------------------------------------------------------ |
// | 0      | 8         | magic "VMMSTATE"                                                         |
// | 8      | 2         | u16 major version (1): another major is refused                          |
// | 10     | 2         | u16 minor version (1): a newer minor is refused, an older one read       |
// | 12     | 4         | u32 section count (at most kMaxSections = 4096)                          |
// | 16     | 8         | u64 total file length, checksum included (at most kMaxFileSize = 256 MiB) |
// | 24     | per entry | section table, one entry per section, in file order:                     |
// |        | 1         |   u8 id length (1..63)                                                   |
// |        | n         |   id bytes, [a-z0-9._-] only, unique in the file                         |
// |        | 8         |   u64 offset of the section's data                                       |
// |        | 8         |   u64 size of the section's data (at most kMaxSectionSize = 64 MiB)      |
// | ...    | ...       | section data: each section 8-byte aligned, offsets strictly increasing,  |
// |        |           | no overlap, all between the end of the table and the checksum; the      |
// |        |           | bytes between sections (alignment padding) are zero when written         |
// | L - 4  | 4         | u32 CRC-32C (vmm/base/crc32c.hpp) of bytes [0, L - 4)                    |
//
// parse_state_file checks the header, then the length and the checksum, then every table entry,
// and returns a one-line error naming the file and the field for the first thing that is wrong.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "vmm/base/error.hpp"

namespace vmm::clone {

// Minor 1 (2026-12-08): virtio-pci functions have the PCI configuration access capability (a 1.0
// state is read without it and gets it).
inline constexpr uint16_t kStateMajor = 1, kStateMinor = 1;
inline constexpr char kStateMagic[8] = {'V', 'M', 'M', 'S', 'T', 'A', 'T', 'E'};
inline constexpr size_t kStateHeaderSize = 24;  // magic, major, minor, count, length
inline constexpr size_t kMaxSections = 4096;
inline constexpr size_t kMaxSectionIdLength = 63;
inline constexpr uint64_t kMaxSectionSize = uint64_t{64} << 20;
inline constexpr uint64_t kMaxFileSize = uint64_t{256} << 20;

/// One named blob: "vcpu0", "serial0", "virtio-blk.disk0", ... ([a-z0-9._-], 1..63 bytes).
struct StateSection {
  std::string id;
  std::vector<uint8_t> data;
};

/// A whole state file in memory.
struct StateFile {
  uint16_t major = kStateMajor, minor = kStateMinor;
  std::vector<StateSection> sections;

  /// The section called `id`, or nullptr if absent.
  const StateSection* find(std::string_view id) const;
  /// The section or an error "FILE: section 'ID' is missing" (file name passed in)
  Result<std::span<const uint8_t>> require(std::string_view id, std::string_view file) const;
};

/// Whether `id` is a valid section id (1..63 bytes of [a-z0-9._-]).
bool valid_section_id(std::string_view id);

/// The file's bytes. The caller keeps to the limits (ids valid and unique, sizes within bounds);
/// parse_state_file is what enforces them.
std::vector<uint8_t> encode_state_file(const StateFile&);

/// Parses and checks untrusted bytes; `file` names them in error messages. Never reads out of bounds.
Result<StateFile> parse_state_file(std::span<const uint8_t> bytes, std::string_view file);

/// Encodes `state` (refusing invalid ids, duplicates and sizes over the limits), writes it to `path`
/// (created or truncated), fsyncs and closes it. Errors name the path.
Result<> write_state_file(const std::filesystem::path& path, const StateFile& state);

/// Reads `path` (refusing anything larger than kMaxFileSize before reading) and parses it.
Result<StateFile> read_state_file(const std::filesystem::path& path);
/// The same from an open file (`path` names it in messages).
Result<StateFile> read_state_file(int fd, const std::filesystem::path& path);

}  // namespace vmm::clone
