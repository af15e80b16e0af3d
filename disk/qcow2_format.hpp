// The qcow2 on-disk format: header, header extensions and table entries, parsed and validated
// without I/O (QEMU docs/interop/qcow2.txt, "qcow2 Image format"). Everything here is pure so that
// the unit tests and the fuzzer can feed it any bytes.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "vmm/base/error.hpp"

namespace vmm::disk::qcow2 {

inline constexpr uint32_t kMagic = 0x514649fb;  // "QFI\xfb"
inline constexpr unsigned kMinClusterBits = 9;  // the format allows 512 B .. 2 MiB
inline constexpr unsigned kMaxClusterBits = 21;
inline constexpr uint32_t kV2HeaderLength = 72;
inline constexpr uint32_t kV3HeaderLength = 104;
inline constexpr uint32_t kHeaderLengthWithCompression = 112;
inline constexpr uint32_t kMaxBackingNameLength = 1023;
inline constexpr uint64_t kMaxL1Bytes = 32ull << 20;        // QEMU's QCOW_MAX_L1_SIZE
inline constexpr uint64_t kMaxRefcountTableBytes = 8ull << 20;  // QEMU's QCOW_MAX_REFTABLE_SIZE
inline constexpr uint64_t kMaxVirtualSize = 1ull << 55;     // 32 PiB: offsets stay within 56 bits
inline constexpr uint64_t kOffsetMask = 0x00fffffffffffe00ull;  // bits 9..55 of L1/L2 entries

// Feature bits (§ "Header").
inline constexpr uint64_t kIncompatDirty = 1ull << 0;
inline constexpr uint64_t kIncompatCorrupt = 1ull << 1;
inline constexpr uint64_t kIncompatDataFile = 1ull << 2;
inline constexpr uint64_t kIncompatCompressionType = 1ull << 3;
inline constexpr uint64_t kIncompatExtendedL2 = 1ull << 4;

// Table entry bits (§ "Cluster mapping").
inline constexpr uint64_t kEntryCopied = 1ull << 63;      // refcount is exactly one
inline constexpr uint64_t kEntryCompressed = 1ull << 62;  // L2 only
inline constexpr uint64_t kEntryZero = 1ull << 0;         // L2 only, v3: reads as zeroes

// Header extension types.
inline constexpr uint32_t kExtEnd = 0;
inline constexpr uint32_t kExtBackingFormat = 0xe2792aca;
inline constexpr uint32_t kExtFeatureNames = 0x6803f857;
inline constexpr uint32_t kExtBitmaps = 0x23852875;
inline constexpr uint32_t kExtCrypto = 0x0537be77;
inline constexpr uint32_t kExtDataFile = 0x44415441;

/// Field offsets in the header, for in-place updates.
inline constexpr uint64_t kOffBackingFileSize = 16;
inline constexpr uint64_t kOffRefcountTableOffset = 48;
inline constexpr uint64_t kOffIncompatibleFeatures = 72;
inline constexpr uint64_t kOffAutoclearFeatures = 88;

struct Header {
  uint32_t version = 3;
  uint64_t backing_file_offset = 0;
  uint32_t backing_file_size = 0;
  uint32_t cluster_bits = 16;
  uint64_t size = 0;
  uint32_t crypt_method = 0;
  uint32_t l1_size = 0;
  uint64_t l1_table_offset = 0;
  uint64_t refcount_table_offset = 0;
  uint32_t refcount_table_clusters = 0;
  uint32_t nb_snapshots = 0;
  uint64_t snapshots_offset = 0;
  uint64_t incompatible_features = 0;
  uint64_t compatible_features = 0;
  uint64_t autoclear_features = 0;
  uint32_t refcount_order = 4;
  uint32_t header_length = kHeaderLengthWithCompression;
  uint8_t compression_type = 0;  // 0: zlib
  // From the extensions and the name area:
  std::string backing_file;
  std::string backing_format;
  bool has_bitmaps = false;

  uint64_t cluster_size() const { return 1ull << cluster_bits; }
  unsigned l2_bits() const { return cluster_bits - 3; }
  /// log2 of the clusters one refcount block covers.
  unsigned refblock_bits() const { return cluster_bits + 3 - refcount_order; }
};

/// L1 entries needed to map `size` bytes with `cluster_bits` (no overflow for size <= kMaxVirtualSize).
uint64_t l1_entries_for(uint64_t size, unsigned cluster_bits);

/// Parses and validates the first cluster of an image (`head` holds at least min(file size, one
/// cluster) bytes; more is ignored) against a file of `file_size` bytes. Errors name the field.
Result<Header> parse_header(std::span<const uint8_t> head, uint64_t file_size);

/// The first cluster of a new image: the header, its extensions (backing format, feature names) and
/// the backing file name. `h.header_length` etc. are filled in; the result is at most one cluster.
Result<std::vector<uint8_t>> encode_header(const Header& h);

// Big-endian access.
inline uint64_t be64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}
inline uint32_t be32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}
inline uint16_t be16(const uint8_t* p) { return static_cast<uint16_t>((p[0] << 8) | p[1]); }
inline void put_be64(uint8_t* p, uint64_t v) {
  for (int i = 7; i >= 0; --i, v >>= 8) p[i] = static_cast<uint8_t>(v);
}
inline void put_be32(uint8_t* p, uint32_t v) {
  for (int i = 3; i >= 0; --i, v >>= 8) p[i] = static_cast<uint8_t>(v);
}

/// A refcount of `bits` (1..64, a power of two) bits at index `i` of a big-endian refcount block.
uint64_t get_refcount(const uint8_t* block, uint64_t i, unsigned order);
void set_refcount(uint8_t* block, uint64_t i, unsigned order, uint64_t value);

/// A compressed L2 entry decoded: where the deflate stream starts and how many bytes may hold it.
struct CompressedExtent {
  uint64_t offset;
  uint64_t length;
};
CompressedExtent decode_compressed(uint64_t entry, unsigned cluster_bits);

}  // namespace vmm::disk::qcow2
