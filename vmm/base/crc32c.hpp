// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of snapshot files. Uses the
// SSE4.2 crc32 instruction when the host has it (three interleaved streams for large buffers), a
// table-driven software loop otherwise; both give the same values. RFC 3720 §B.4 (iSCSI), check
// value crc32c("123456789") = 0xE3069283.
#pragma once

#include <cstdint>
#include <span>

namespace vmm {

/// Extends `crc` (0 to start) over `bytes`: crc32c(crc32c(0, a), b) == crc32c(0, a ++ b).
uint32_t crc32c(uint32_t crc, std::span<const uint8_t> bytes);

/// The same, always with the table-driven software loop (tests, and hosts without SSE4.2).
uint32_t crc32c_software(uint32_t crc, std::span<const uint8_t> bytes);

/// The same, always with the SSE4.2 instruction; only call it when crc32c_has_hardware().
uint32_t crc32c_hardware(uint32_t crc, std::span<const uint8_t> bytes);

/// Extends `crc` over `count` zero bytes without reading them: O(log count) (a sparse file's holes
/// are summed without reading their zeros; the zlib crc32_combine technique, over GF(2)).
uint32_t crc32c_zeros(uint32_t crc, uint64_t count);
/// Whether this CPU has SSE4.2 (cpuid leaf 1, ECX bit 20), i.e. crc32c() uses the instruction.
bool crc32c_has_hardware();

}  // namespace vmm
