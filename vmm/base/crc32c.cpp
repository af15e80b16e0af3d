// CRC-32C: the SSE4.2 crc32 instruction in three interleaved streams (its latency is three cycles,
// its throughput one per cycle), combined with precomputed "append N zero bytes" operators; a
// slicing-by-8 table loop where the instruction is missing. After Mark Adler's crc32c.c
// (https://stackoverflow.com/a/17646775), zlib's crc32_combine for the operator matrices.
#include "vmm/base/crc32c.hpp"

#include <nmmintrin.h>

#include <array>
#include <cstring>

// glibc's record of what CPUID said when the process started (glibc >= 2.33,
// <sys/platform/x86.h>, declared here: that header is C only, its inline functions return _Bool).
extern "C" {
struct cpuid_feature {
  unsigned int cpuid_array[4];  // eax, ebx, ecx, edx
  unsigned int active_array[4];
};
const cpuid_feature* __x86_get_cpuid_feature_leaf(unsigned int index) __attribute__((pure));
}

namespace vmm {
namespace {

constexpr uint32_t kPoly = 0x82F63B78;  // reflected Castagnoli polynomial

// ---- Software: slicing-by-8 -------------------------------------------------------------------

using Tables = std::array<std::array<uint32_t, 256>, 8>;

constexpr Tables make_tables() {
  Tables t{};
  for (uint32_t n = 0; n < 256; ++n) {
    uint32_t c = n;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    t[0][n] = c;
  }
  for (uint32_t n = 0; n < 256; ++n) {
    for (size_t k = 1; k < 8; ++k) t[k][n] = (t[k - 1][n] >> 8) ^ t[0][t[k - 1][n] & 0xff];
  }
  return t;
}

constexpr Tables kTables = make_tables();

uint64_t load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// ---- Operators that append zero bytes (GF(2) 32x32 matrices) -----------------------------------

using Matrix = std::array<uint32_t, 32>;

constexpr uint32_t times(const Matrix& m, uint32_t v) {
  uint32_t sum = 0;
  for (size_t i = 0; v; ++i, v >>= 1) {
    if (v & 1) sum ^= m[i];
  }
  return sum;
}

constexpr Matrix square(const Matrix& m) {
  Matrix r{};
  for (size_t n = 0; n < 32; ++n) r[n] = times(m, m[n]);
  return r;
}

/// The operator that appends `len` zero bytes to a raw (uninverted) CRC; `len` a power of two.
constexpr Matrix zeros_operator(size_t len) {
  Matrix op{};  // one zero bit
  op[0] = kPoly;
  for (size_t n = 1; n < 32; ++n) op[n] = uint32_t{1} << (n - 1);
  op = square(square(square(op)));  // one zero byte
  for (; len > 1; len >>= 1) op = square(op);
  return op;
}

/// The operator as four byte-indexed tables, so applying it costs four lookups. Made at compile
/// time: made at the first checksum, it was ~65 µs of every clone's start here.
struct Shift {
  std::array<std::array<uint32_t, 256>, 4> t{};
  constexpr explicit Shift(size_t len) {
    const Matrix op = zeros_operator(len);
    for (uint32_t n = 0; n < 256; ++n) {
      for (size_t k = 0; k < 4; ++k) t[k][n] = times(op, n << (8 * k));
    }
  }
  uint32_t operator()(uint32_t crc) const {
    return t[0][crc & 0xff] ^ t[1][(crc >> 8) & 0xff] ^ t[2][(crc >> 16) & 0xff] ^ t[3][crc >> 24];
  }
};

constexpr size_t kLong = 8192;  // bytes per stream in a long block (3 * 8 KiB per round)
constexpr size_t kShort = 256;  // and in a short one

constexpr Shift kShiftLong(kLong);
constexpr Shift kShiftShort(kShort);

/// Three streams of `block` bytes each from p; crc0 continues, the others start at 0 and are
/// shifted in. Returns past the 3 * block bytes.
__attribute__((target("sse4.2"))) const uint8_t* three_way(uint64_t& crc0, const uint8_t* p, size_t block,
                                                            const Shift& shift) {
  uint64_t crc1 = 0, crc2 = 0;
  const uint8_t* const end = p + block;
  do {
    crc0 = _mm_crc32_u64(crc0, load64(p));
    crc1 = _mm_crc32_u64(crc1, load64(p + block));
    crc2 = _mm_crc32_u64(crc2, load64(p + 2 * block));
    p += 8;
  } while (p < end);
  uint32_t c = shift(static_cast<uint32_t>(crc0)) ^ static_cast<uint32_t>(crc1);
  c = shift(c) ^ static_cast<uint32_t>(crc2);
  crc0 = c;
  return p + 2 * block;
}

}  // namespace

uint32_t crc32c_software(uint32_t crc, std::span<const uint8_t> bytes) {
  const uint8_t* p = bytes.data();
  size_t n = bytes.size();
  uint32_t c = ~crc;
  const auto& t = kTables;
  for (; n >= 8; n -= 8, p += 8) {
    const uint64_t v = load64(p) ^ c;
    c = t[7][v & 0xff] ^ t[6][(v >> 8) & 0xff] ^ t[5][(v >> 16) & 0xff] ^ t[4][(v >> 24) & 0xff] ^
        t[3][(v >> 32) & 0xff] ^ t[2][(v >> 40) & 0xff] ^ t[1][(v >> 48) & 0xff] ^ t[0][v >> 56];
  }
  for (; n; --n, ++p) c = (c >> 8) ^ t[0][(c ^ *p) & 0xff];
  return ~c;
}

__attribute__((target("sse4.2"))) uint32_t crc32c_hardware(uint32_t crc, std::span<const uint8_t> bytes) {
  const uint8_t* p = bytes.data();
  const uint8_t* const end = p + bytes.size();
  uint64_t c = ~crc;
  while (p < end && (reinterpret_cast<uintptr_t>(p) & 7)) c = _mm_crc32_u8(static_cast<uint32_t>(c), *p++);
  if (static_cast<size_t>(end - p) >= 3 * kLong) {
    const Shift& s = kShiftLong;
    while (static_cast<size_t>(end - p) >= 3 * kLong) p = three_way(c, p, kLong, s);
  }
  if (static_cast<size_t>(end - p) >= 3 * kShort) {
    const Shift& s = kShiftShort;
    while (static_cast<size_t>(end - p) >= 3 * kShort) p = three_way(c, p, kShort, s);
  }
  for (; end - p >= 8; p += 8) c = _mm_crc32_u64(c, load64(p));
  while (p < end) c = _mm_crc32_u8(static_cast<uint32_t>(c), *p++);
  return ~static_cast<uint32_t>(c);
}

bool crc32c_has_hardware() {
  // What the dynamic loader read with CPUID at the process's start (glibc >= 2.33): in a VM each
  // CPUID is an exit to the hypervisor, ~15 µs of a clone's start here.
  static const bool has = [] {
    const cpuid_feature* leaf1 = __x86_get_cpuid_feature_leaf(0);  // CPUID_INDEX_1
    return leaf1 != nullptr && (leaf1->active_array[2] & (1u << 20)) != 0;  // ECX bit 20: SSE4.2
  }();
  return has;
}

uint32_t crc32c(uint32_t crc, std::span<const uint8_t> bytes) {
  return crc32c_has_hardware() ? crc32c_hardware(crc, bytes) : crc32c_software(crc, bytes);
}

namespace {
/// The 32x32 matrix over GF(2) `mat` (column n: the image of bit n) times the vector `vec`.
uint32_t gf2_times(const uint32_t* mat, uint32_t vec) {
  uint32_t sum = 0;
  for (; vec; vec >>= 1, ++mat) {
    if (vec & 1) sum ^= *mat;
  }
  return sum;
}
void gf2_square(uint32_t* square, const uint32_t* mat) {
  for (int n = 0; n < 32; ++n) square[n] = gf2_times(mat, mat[n]);
}
}  // namespace

uint32_t crc32c_zeros(uint32_t crc, uint64_t count) {
  if (count == 0) return crc;
  // A zero bit shifts the register (the inverted CRC) right, folding in the polynomial when the bit
  // shifted out is set: a linear map. Squared twice it is four zero bits; the loop squares on (a
  // byte, two, four...) and applies the powers that count's bits select.
  uint32_t even[32], odd[32];
  odd[0] = 0x82F63B78u;
  for (int n = 1; n < 32; ++n) odd[n] = 1u << (n - 1);
  gf2_square(even, odd);
  gf2_square(odd, even);
  uint32_t reg = ~crc;
  for (;;) {
    gf2_square(even, odd);
    if (count & 1) reg = gf2_times(even, reg);
    count >>= 1;
    if (count == 0) break;
    gf2_square(odd, even);
    if (count & 1) reg = gf2_times(odd, reg);
    count >>= 1;
    if (count == 0) break;
  }
  return ~reg;
}

}  // namespace vmm
