#include "vmm/boot/aml.hpp"

namespace vmm::boot::aml {

namespace {

constexpr uint8_t kZeroOp = 0x00;
constexpr uint8_t kOneOp = 0x01;
constexpr uint8_t kNameOp = 0x08;
constexpr uint8_t kBytePrefix = 0x0a;
constexpr uint8_t kWordPrefix = 0x0b;
constexpr uint8_t kDWordPrefix = 0x0c;
constexpr uint8_t kStringPrefix = 0x0d;
constexpr uint8_t kQWordPrefix = 0x0e;
constexpr uint8_t kScopeOp = 0x10;
constexpr uint8_t kBufferOp = 0x11;
constexpr uint8_t kPackageOp = 0x12;
constexpr uint8_t kDualNamePrefix = 0x2e;
constexpr uint8_t kMultiNamePrefix = 0x2f;
constexpr uint8_t kExtOpPrefix = 0x5b;
constexpr uint8_t kDeviceOp = 0x82;  // after kExtOpPrefix
constexpr uint8_t kMethodOp = 0x14;
constexpr uint8_t kArg0Op = 0x68;
constexpr uint8_t kNotifyOp = 0x86;
constexpr uint8_t kLEqualOp = 0x93;
constexpr uint8_t kIfOp = 0xa0;
constexpr uint8_t kRootChar = '\\';
constexpr uint8_t kParentPrefixChar = '^';

// Small resource descriptor tags (§6.4.2): type in bits 6:3, length in bits 2:0.
constexpr uint8_t kIrqTag = 0x22;     // IRQ, 2 bytes (no information byte)
constexpr uint8_t kIoPortTag = 0x47;  // I/O port, 7 bytes
constexpr uint8_t kEndTag = 0x79;     // End Tag, 1 byte (checksum)
// Large resource descriptors (§6.4.3): tag byte, then a 16-bit length of the data that follows.
constexpr uint8_t kExtendedInterruptTag = 0x89;

void append(Bytes& out, std::span<const uint8_t> in) { out.insert(out.end(), in.begin(), in.end()); }

// Opcode(s), PkgLength, then the body (§20.2.4: the length covers itself and the body).
Bytes with_pkg_length(std::initializer_list<uint8_t> opcode, const Bytes& body) {
  Bytes out(opcode);
  append(out, pkg_length(body.size()));
  append(out, body);
  return out;
}

bool lead_char(char c) { return (c >= 'A' && c <= 'Z') || c == '_'; }
bool name_char(char c) { return lead_char(c) || (c >= '0' && c <= '9'); }

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

Bytes pkg_length(size_t body_len) {
  // One byte holds 0..63 (bits 5:0). Otherwise bits 7:6 count the following bytes (1..3), byte 0
  // keeps the low nibble and each following byte 8 more bits.
  for (size_t extra = 0; extra <= 3; ++extra) {
    const size_t total = body_len + 1 + extra;
    const size_t limit = extra == 0 ? 0x3f : (size_t{1} << (4 + 8 * extra)) - 1;
    if (total > limit) continue;
    Bytes out;
    if (extra == 0) {
      out.push_back(static_cast<uint8_t>(total));
    } else {
      out.push_back(static_cast<uint8_t>((extra << 6) | (total & 0x0f)));
      for (size_t i = 0; i < extra; ++i) out.push_back(static_cast<uint8_t>(total >> (4 + 8 * i)));
    }
    return out;
  }
  return {};  // beyond kMaxPkgBody: not representable
}

Bytes name_string(std::string_view path) {
  Bytes out;
  size_t i = 0;
  if (!path.empty() && path[0] == '\\') {
    out.push_back(kRootChar);
    i = 1;
  } else {
    while (i < path.size() && path[i] == '^') {
      out.push_back(kParentPrefixChar);
      ++i;
    }
  }
  std::vector<Bytes> segs;
  std::string_view rest = path.substr(i);
  while (!rest.empty()) {
    const size_t dot = rest.find('.');
    const std::string_view seg = rest.substr(0, dot);
    if (seg.empty() || seg.size() > 4 || !lead_char(seg[0])) return {};
    Bytes s(4, '_');
    for (size_t k = 0; k < seg.size(); ++k) {
      if (!name_char(seg[k])) return {};
      s[k] = static_cast<uint8_t>(seg[k]);
    }
    segs.push_back(std::move(s));
    if (dot == std::string_view::npos) break;
    rest = rest.substr(dot + 1);
    if (rest.empty()) return {};  // trailing dot
  }
  if (segs.empty()) {
    out.push_back(0x00);  // NullName
  } else if (segs.size() == 2) {
    out.push_back(kDualNamePrefix);
  } else if (segs.size() > 2) {
    if (segs.size() > 255) return {};
    out.push_back(kMultiNamePrefix);
    out.push_back(static_cast<uint8_t>(segs.size()));
  }
  for (const auto& s : segs) append(out, s);
  return out;
}

Bytes integer(uint64_t value) {
  if (value == 0) return {kZeroOp};
  if (value == 1) return {kOneOp};
  Bytes out;
  size_t width;
  if (value <= UINT8_MAX) {
    out.push_back(kBytePrefix);
    width = 1;
  } else if (value <= UINT16_MAX) {
    out.push_back(kWordPrefix);
    width = 2;
  } else if (value <= UINT32_MAX) {
    out.push_back(kDWordPrefix);
    width = 4;
  } else {
    out.push_back(kQWordPrefix);
    width = 8;
  }
  for (size_t i = 0; i < width; ++i) out.push_back(static_cast<uint8_t>(value >> (8 * i)));
  return out;
}

Bytes string(std::string_view text) {
  Bytes out{kStringPrefix};
  for (char c : text) out.push_back(static_cast<uint8_t>(c) & 0x7f);
  out.push_back(0);
  return out;
}

Bytes eisa_id(std::string_view id) {
  if (id.size() != 7) return {};
  uint32_t vendor = 0;
  for (size_t i = 0; i < 3; ++i) {
    if (id[i] < 'A' || id[i] > 'Z') return {};
    vendor = (vendor << 5) | static_cast<uint32_t>(id[i] - 'A' + 1);  // 5 bits per letter, 'A' = 1
  }
  uint32_t product = 0;
  for (size_t i = 3; i < 7; ++i) {
    const int d = hex_digit(id[i]);
    if (d < 0) return {};
    product = (product << 4) | static_cast<uint32_t>(d);
  }
  // Stored big-endian byte by byte: vendor (16 bits), then the product (16 bits).
  const uint32_t value = ((vendor >> 8) & 0xff) | ((vendor & 0xff) << 8) | (((product >> 8) & 0xff) << 16) |
                         ((product & 0xff) << 24);
  Bytes out{kDWordPrefix};
  for (size_t i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(value >> (8 * i)));
  return out;
}

Bytes name(std::string_view n, const Bytes& object) {
  Bytes out{kNameOp};
  append(out, name_string(n));
  append(out, object);
  return out;
}

Bytes package(std::span<const Bytes> elements) {
  // NumElements is one byte (ACPI 6.4 §20.2.5.4 DefPackage); larger packages need VarPackage.
  Bytes body{static_cast<uint8_t>(elements.size())};
  for (const auto& e : elements) append(body, e);
  return with_pkg_length({kPackageOp}, body);
}

Bytes package(std::initializer_list<Bytes> elements) {
  return package(std::span<const Bytes>(elements.begin(), elements.size()));
}

Bytes buffer(std::span<const uint8_t> bytes) {
  Bytes body = integer(bytes.size());
  append(body, bytes);
  return with_pkg_length({kBufferOp}, body);
}

Bytes scope(std::string_view n, std::span<const uint8_t> terms) {
  Bytes body = name_string(n);
  append(body, terms);
  return with_pkg_length({kScopeOp}, body);
}

Bytes device(std::string_view n, std::span<const uint8_t> terms) {
  Bytes body = name_string(n);
  append(body, terms);
  return with_pkg_length({kExtOpPrefix, kDeviceOp}, body);
}

Bytes resource_template(std::initializer_list<Bytes> descriptors) {
  Bytes body;
  for (const auto& d : descriptors) append(body, d);
  body.push_back(kEndTag);
  body.push_back(0);  // checksum 0: "treated as if the checksum operation succeeded" (§6.4.2.9)
  return buffer(body);
}

Bytes io_port(uint16_t min, uint16_t max, uint8_t alignment, uint8_t length) {
  return {kIoPortTag,
          0x01,  // information: decodes 16-bit addresses
          static_cast<uint8_t>(min),
          static_cast<uint8_t>(min >> 8),
          static_cast<uint8_t>(max),
          static_cast<uint8_t>(max >> 8),
          alignment,
          length};
}

Bytes irq_no_flags(uint8_t irq) {
  const uint16_t mask = static_cast<uint16_t>(irq < 16 ? 1u << irq : 0u);
  return {kIrqTag, static_cast<uint8_t>(mask), static_cast<uint8_t>(mask >> 8)};
}

namespace {

// ACPI 6.4 §6.4.3.5.2-3: Word and DWord Address Space Descriptors, producer, fixed min and max,
// positive decode (general flags 0x0c), granularity and translation 0.
template <typename T>
Bytes address_space(uint8_t tag, uint8_t type, uint8_t type_flags, T min, T max) {
  constexpr uint8_t kGeneralFlags = 0x0c;
  const uint16_t length = static_cast<uint16_t>(3 + 5 * sizeof(T));
  Bytes out = {tag, static_cast<uint8_t>(length), static_cast<uint8_t>(length >> 8), type, kGeneralFlags, type_flags};
  const uint64_t len = uint64_t{max} - min + 1;
  for (uint64_t v : {uint64_t{0}, uint64_t{min}, uint64_t{max}, uint64_t{0}, len}) {
    for (size_t i = 0; i < sizeof(T); ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  return out;
}

}  // namespace

Bytes word_bus_number(uint16_t min, uint16_t max) { return address_space<uint16_t>(0x88, 2, 0x00, min, max); }

Bytes word_io(uint16_t min, uint16_t max) {
  return address_space<uint16_t>(0x88, 1, 0x03, min, max);  // ISA and non-ISA ranges
}

Bytes dword_memory(uint32_t min, uint32_t max) {
  return address_space<uint32_t>(0x87, 0, 0x01, min, max);  // read-write, non-cacheable
}

Bytes interrupt(uint32_t gsi, Trigger trigger, Polarity polarity, Sharing sharing) {
  // §6.4.3.6: flags bit 0 consumer, bit 1 edge, bit 2 active low, bit 3 shared; then a one-byte
  // table length and the 32-bit interrupt numbers. 6 data bytes for one interrupt.
  const uint8_t flags = static_cast<uint8_t>(0x01 | (static_cast<uint8_t>(trigger) << 1) |
                                             (static_cast<uint8_t>(polarity) << 2) |
                                             (static_cast<uint8_t>(sharing) << 3));
  return {kExtendedInterruptTag, 6, 0, flags, 1,
          static_cast<uint8_t>(gsi), static_cast<uint8_t>(gsi >> 8), static_cast<uint8_t>(gsi >> 16),
          static_cast<uint8_t>(gsi >> 24)};
}

Bytes method(std::string_view n, uint8_t argc, Serialize serialize, std::span<const uint8_t> terms) {
  // MethodFlags: bits 2:0 ArgCount, bit 3 SerializeFlag, bits 7:4 SyncLevel (0).
  if (argc > 7) return {};
  Bytes body = name_string(n);
  body.push_back(static_cast<uint8_t>((argc & 0x07) | (static_cast<uint8_t>(serialize) << 3)));
  append(body, terms);
  return with_pkg_length({kMethodOp}, body);
}

Bytes if_(const Bytes& predicate, std::span<const uint8_t> terms) {
  Bytes body = predicate;
  append(body, terms);
  return with_pkg_length({kIfOp}, body);
}

Bytes lequal(const Bytes& a, const Bytes& b) {
  Bytes out{kLEqualOp};
  append(out, a);
  append(out, b);
  return out;
}

Bytes notify(std::string_view object, const Bytes& value) {
  Bytes out{kNotifyOp};
  append(out, name_string(object));
  append(out, value);
  return out;
}

Bytes arg(uint8_t n) {
  if (n > 6) return {};
  return {static_cast<uint8_t>(kArg0Op + n)};
}

Bytes name_ref(std::string_view path) { return name_string(path); }

Bytes concat(std::initializer_list<Bytes> terms) {
  Bytes out;
  for (const auto& t : terms) append(out, t);
  return out;
}

}  // namespace vmm::boot::aml
