#include "disk/qcow2_format.hpp"

#include <algorithm>
#include <cstring>

namespace vmm::disk::qcow2 {

uint64_t l1_entries_for(uint64_t size, unsigned cluster_bits) {
  const unsigned shift = cluster_bits + (cluster_bits - 3);  // bytes one L2 table maps
  return (size >> shift) + ((size & ((1ull << shift) - 1)) != 0 ? 1 : 0);
}

namespace {

bool aligned(uint64_t v, unsigned bits) { return (v & ((1ull << bits) - 1)) == 0; }

/// Checks that a table of `bytes` at `offset` is cluster-aligned and inside the file.
Result<> check_table(const char* field, uint64_t offset, uint64_t bytes, unsigned cluster_bits, uint64_t file_size) {
  if (offset == 0 || !aligned(offset, cluster_bits)) {
    return fail("{} {:#x} is not a nonzero multiple of the cluster size", field, offset);
  }
  if (offset > file_size || bytes > file_size - offset) {
    return fail("{} {:#x} (+{:#x} bytes) lies beyond the end of the file ({:#x} bytes)", field, offset, bytes,
                file_size);
  }
  return {};
}

Result<> parse_extensions(Header& h, std::span<const uint8_t> c, uint64_t start, uint64_t end) {
  uint64_t pos = start;
  for (unsigned n = 0;; ++n) {
    if (n > 1024) return fail("more than 1024 header extensions");
    if (pos > end || end - pos < 8) return fail("header extension at {:#x} runs past the first cluster", pos);
    const uint32_t type = be32(&c[pos]);
    const uint32_t len = be32(&c[pos + 4]);
    pos += 8;
    if (type == kExtEnd) return {};
    if (len > end - pos) {
      return fail("header extension {:#x} at {:#x}: length {} runs past the first cluster", type, pos - 8, len);
    }
    const auto data = c.subspan(pos, len);
    switch (type) {
      case kExtBackingFormat:
        if (len == 0 || len > 16) return fail("backing format extension: length {} (expected 1..16)", len);
        h.backing_format.assign(reinterpret_cast<const char*>(data.data()), len);
        if (auto z = h.backing_format.find('\0'); z != std::string::npos) h.backing_format.resize(z);
        break;
      case kExtBitmaps:
        h.has_bitmaps = true;
        break;
      case kExtDataFile:
        return fail("external data files are not supported");
      default:  // feature names, crypto (refused via crypt_method), unknown: ignored as the spec allows
        break;
    }
    const uint64_t padded = (uint64_t{len} + 7) & ~7ull;
    if (padded > end - pos) return fail("header extension {:#x}: padding runs past the first cluster", type);
    pos += padded;
  }
}

}  // namespace

Result<Header> parse_header(std::span<const uint8_t> head, uint64_t file_size) {
  if (head.size() < kV2HeaderLength) return fail("truncated header ({} bytes)", head.size());
  const uint8_t* p = head.data();
  if (be32(p) != kMagic) return fail("bad magic {:#010x} (not a qcow2 image)", be32(p));
  Header h;
  h.version = be32(p + 4);
  if (h.version != 2 && h.version != 3) return fail("version {} is not supported (2 or 3)", h.version);
  h.backing_file_offset = be64(p + 8);
  h.backing_file_size = be32(p + 16);
  h.cluster_bits = be32(p + 20);
  h.size = be64(p + 24);
  h.crypt_method = be32(p + 32);
  h.l1_size = be32(p + 36);
  h.l1_table_offset = be64(p + 40);
  h.refcount_table_offset = be64(p + 48);
  h.refcount_table_clusters = be32(p + 56);
  h.nb_snapshots = be32(p + 60);
  h.snapshots_offset = be64(p + 64);
  if (h.cluster_bits < kMinClusterBits || h.cluster_bits > kMaxClusterBits) {
    return fail("cluster_bits {} is outside {}..{}", h.cluster_bits, kMinClusterBits, kMaxClusterBits);
  }
  const uint64_t cs = h.cluster_size();
  if (h.version == 2) {
    h.header_length = kV2HeaderLength;
    h.refcount_order = 4;
  } else {
    if (head.size() < kV3HeaderLength) return fail("truncated version 3 header ({} bytes)", head.size());
    h.incompatible_features = be64(p + 72);
    h.compatible_features = be64(p + 80);
    h.autoclear_features = be64(p + 88);
    h.refcount_order = be32(p + 96);
    h.header_length = be32(p + 100);
    if (h.header_length < kV3HeaderLength || h.header_length % 8 != 0 || h.header_length > cs) {
      return fail("header_length {} is invalid (a multiple of 8, {}..{})", h.header_length, kV3HeaderLength, cs);
    }
    if (h.header_length > head.size()) return fail("header_length {} is past the end of the file", h.header_length);
    if (h.header_length > kV3HeaderLength) h.compression_type = p[104];
  }
  if (file_size < cs) return fail("the file ({} bytes) is shorter than one cluster ({} bytes)", file_size, cs);
  if (head.size() < cs) return fail("truncated first cluster ({} of {} bytes)", head.size(), cs);
  // Features (§ "Header", bytes 72-95).
  constexpr uint64_t known = kIncompatDirty | kIncompatCorrupt | kIncompatDataFile | kIncompatCompressionType |
                             kIncompatExtendedL2;
  if (const uint64_t unknown = h.incompatible_features & ~known; unknown != 0) {
    return fail("incompatible_features {:#x}: unknown feature bits {:#x}", h.incompatible_features, unknown);
  }
  if (h.incompatible_features & kIncompatDataFile) return fail("incompatible_features: external data files are not supported");
  if (h.incompatible_features & kIncompatExtendedL2) {
    return fail("incompatible_features: extended L2 entries (subclusters) are not supported");
  }
  if ((h.incompatible_features & kIncompatCompressionType) && h.compression_type != 0) {
    return fail("compression_type {} is not supported (only zlib)", h.compression_type);
  }
  if (h.compression_type != 0) return fail("compression_type {} without its feature bit", h.compression_type);
  if (h.refcount_order > 6) return fail("refcount_order {} is outside 0..6", h.refcount_order);
  if (h.crypt_method != 0) return fail("crypt_method {}: encrypted images are not supported", h.crypt_method);
  // Sizes and tables.
  if (h.size > kMaxVirtualSize) return fail("virtual size {:#x} is larger than {:#x}", h.size, kMaxVirtualSize);
  const uint64_t need_l1 = l1_entries_for(h.size, h.cluster_bits);
  if (uint64_t{h.l1_size} * 8 > kMaxL1Bytes) return fail("l1_size {} is larger than {} entries", h.l1_size, kMaxL1Bytes / 8);
  if (h.l1_size < need_l1) return fail("l1_size {} is too small for the virtual size (needs {})", h.l1_size, need_l1);
  if (h.l1_size > 0) {
    if (auto r = check_table("l1_table_offset", h.l1_table_offset, uint64_t{h.l1_size} * 8, h.cluster_bits, file_size); !r) {
      return std::unexpected(r.error());
    }
  }
  if (h.refcount_table_clusters == 0) return fail("refcount_table_clusters is 0");
  if (uint64_t{h.refcount_table_clusters} * cs > kMaxRefcountTableBytes) {
    return fail("refcount_table_clusters {} ({} bytes) is larger than {} bytes", h.refcount_table_clusters,
                uint64_t{h.refcount_table_clusters} * cs, kMaxRefcountTableBytes);
  }
  if (auto r = check_table("refcount_table_offset", h.refcount_table_offset, uint64_t{h.refcount_table_clusters} * cs,
                           h.cluster_bits, file_size);
      !r) {
    return std::unexpected(r.error());
  }
  if (h.nb_snapshots > 65536) return fail("nb_snapshots {} is larger than 65536", h.nb_snapshots);
  if (h.nb_snapshots > 0) {
    if (auto r = check_table("snapshots_offset", h.snapshots_offset, 8, h.cluster_bits, file_size); !r) {
      return std::unexpected(r.error());
    }
  }
  // The backing file name sits in the first cluster, after the header and its extensions.
  uint64_t ext_end = cs;
  if (h.backing_file_offset != 0 || h.backing_file_size != 0) {
    if (h.backing_file_size == 0 || h.backing_file_size > kMaxBackingNameLength) {
      return fail("backing_file_size {} is outside 1..{}", h.backing_file_size, kMaxBackingNameLength);
    }
    if (h.backing_file_offset < h.header_length || h.backing_file_offset > cs ||
        h.backing_file_size > cs - h.backing_file_offset) {
      return fail("backing_file_offset {:#x} (+{}) is outside the first cluster after the header",
                  h.backing_file_offset, h.backing_file_size);
    }
    h.backing_file.assign(reinterpret_cast<const char*>(p + h.backing_file_offset), h.backing_file_size);
    if (auto i = control_char(h.backing_file)) {
      return fail("backing file name has a control character ({:#04x}) at byte {}", static_cast<uint8_t>(h.backing_file[*i]), *i);
    }
    ext_end = h.backing_file_offset;
  }
  if (auto r = parse_extensions(h, head.first(cs), h.header_length, ext_end); !r) return std::unexpected(r.error());
  if (!h.backing_format.empty() && h.backing_format != "raw" && h.backing_format != "qcow2") {
    return fail("backing format '{}' is not supported (raw or qcow2)", printable(h.backing_format));
  }
  return h;
}

Result<std::vector<uint8_t>> encode_header(const Header& h) {
  const uint64_t cs = h.cluster_size();
  std::vector<uint8_t> out(kHeaderLengthWithCompression, 0);
  uint8_t* p = out.data();
  put_be32(p, kMagic);
  put_be32(p + 4, 3);
  put_be32(p + 20, h.cluster_bits);
  put_be64(p + 24, h.size);
  put_be32(p + 36, h.l1_size);
  put_be64(p + 40, h.l1_table_offset);
  put_be64(p + 48, h.refcount_table_offset);
  put_be32(p + 56, h.refcount_table_clusters);
  put_be64(p + 72, h.incompatible_features);
  put_be64(p + 80, h.compatible_features);
  put_be64(p + 88, h.autoclear_features);
  put_be32(p + 96, h.refcount_order);
  put_be32(p + 100, kHeaderLengthWithCompression);
  auto ext = [&](uint32_t type, std::span<const uint8_t> data) {
    const size_t at = out.size();
    out.resize(at + 8 + ((data.size() + 7) & ~size_t{7}), 0);
    put_be32(&out[at], type);
    put_be32(&out[at + 4], static_cast<uint32_t>(data.size()));
    std::copy(data.begin(), data.end(), out.begin() + static_cast<ptrdiff_t>(at + 8));
  };
  if (!h.backing_format.empty()) {
    ext(kExtBackingFormat, {reinterpret_cast<const uint8_t*>(h.backing_format.data()), h.backing_format.size()});
  }
  // Feature name table: what qemu-img prints for the bits (type, bit, 46-byte name).
  struct Name {
    uint8_t type, bit;
    const char* name;
  };
  static constexpr Name names[] = {{0, 0, "dirty bit"},     {0, 1, "corrupt bit"}, {0, 2, "external data file"},
                                   {0, 3, "compression type"}, {0, 4, "extended L2 entries"},
                                   {1, 0, "lazy refcounts"}, {2, 0, "bitmaps"},     {2, 1, "raw external data"}};
  std::vector<uint8_t> table(std::size(names) * 48, 0);
  for (size_t i = 0; i < std::size(names); ++i) {
    table[i * 48] = names[i].type;
    table[i * 48 + 1] = names[i].bit;
    std::memcpy(&table[i * 48 + 2], names[i].name, std::strlen(names[i].name));
  }
  ext(kExtFeatureNames, table);
  ext(kExtEnd, {});
  if (!h.backing_file.empty()) {
    if (h.backing_file.size() > kMaxBackingNameLength) {
      return fail("backing file name is longer than {} bytes", kMaxBackingNameLength);
    }
    // (As parse_header refuses it: an image made so would never open.)
    if (control_char(h.backing_file)) return fail("backing file name '{}' has a control character", printable(h.backing_file));
    put_be64(out.data() + 8, out.size());  // (out has grown: address it afresh)
    put_be32(out.data() + 16, static_cast<uint32_t>(h.backing_file.size()));
    out.insert(out.end(), h.backing_file.begin(), h.backing_file.end());
  }
  if (out.size() > cs) return fail("the header ({} bytes) does not fit in one cluster ({} bytes)", out.size(), cs);
  return out;
}

uint64_t get_refcount(const uint8_t* block, uint64_t i, unsigned order) {
  switch (order) {
    case 6: return be64(block + i * 8);
    case 5: return be32(block + i * 4);
    case 4: return be16(block + i * 2);
    case 3: return block[i];
    default: {  // 1, 2 or 4 bits, packed from each byte's least significant bit (as QEMU does)
      const unsigned bits = 1u << order;
      const uint64_t bit = i * bits;
      return (block[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
    }
  }
}

void set_refcount(uint8_t* block, uint64_t i, unsigned order, uint64_t value) {
  switch (order) {
    case 6: put_be64(block + i * 8, value); return;
    case 5: put_be32(block + i * 4, static_cast<uint32_t>(value)); return;
    case 4:
      block[i * 2] = static_cast<uint8_t>(value >> 8);
      block[i * 2 + 1] = static_cast<uint8_t>(value);
      return;
    case 3: block[i] = static_cast<uint8_t>(value); return;
    default: {
      const unsigned bits = 1u << order;
      const uint64_t bit = i * bits;
      const unsigned mask = ((1u << bits) - 1) << (bit % 8);
      block[bit / 8] = static_cast<uint8_t>((block[bit / 8] & ~mask) | ((value << (bit % 8)) & mask));
      return;
    }
  }
}

CompressedExtent decode_compressed(uint64_t entry, unsigned cluster_bits) {
  const unsigned x = 62 - (cluster_bits - 8);
  const uint64_t offset = entry & ((1ull << x) - 1);
  const uint64_t sectors = ((entry & ~kEntryCopied & ~kEntryCompressed) >> x) + 1;
  return {offset, sectors * 512 - (offset & 511)};
}

}  // namespace vmm::disk::qcow2
