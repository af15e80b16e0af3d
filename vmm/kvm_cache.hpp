// KVM_GET_SUPPORTED_CPUID's answer kept in a file for the next vmm on the same host. On a host that
// is itself a VM every host CPUID the ioctl executes traps: it took ~0.29 ms of each clone's start
// there (a C probe on such a host's /dev/kvm), more than restoring the whole machine state.
//
// The answer belongs to one boot of one kernel, with one KVM module load, on one CPU microcode: the
// file carries a key made of all of them (kvm_host_key) and is used only when the key is this
// host's. Anything else about it (missing, another key, another format, truncated, a bad checksum,
// unwritable) makes vmm ask KVM as if there were no file: it is a cache, never an error.
//
// Format (little-endian): "VMMCPUID", u32 format version, u32 key length + key bytes, u32 entry
// count (at most kMaxCachedCpuid) + that many struct kvm_cpuid_entry2 (40 bytes each), u32 CRC-32C
// of everything before it; nothing after.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "vmm/kvm.hpp"

namespace vmm {

inline constexpr uint32_t kMaxCachedCpuid = 4096;

/// What the supported CPUID depends on, as one string: the boot id; the device node of `kvm_fd`
/// (device number, inode and change time: a reloaded module makes a new node); the inodes of the
/// kvm, kvm_intel and kvm_amd directories in /sys/module (a reload makes new ones); cpu0's
/// microcode revision.
std::string kvm_host_key(int kvm_fd);

std::vector<uint8_t> encode_cpuid_cache(std::string_view key, const CpuidEntries& entries);
/// The entries of `bytes` when it is a well-formed cache file made for `key`; nothing otherwise.
std::optional<CpuidEntries> decode_cpuid_cache(std::span<const uint8_t> bytes, std::string_view key);

/// The cached entries at `path` for `key`, or nothing (see above).
std::optional<CpuidEntries> read_cpuid_cache(const std::filesystem::path& path, std::string_view key);
/// Writes the cache at `path` (its directory made if missing) through a temporary file renamed into
/// place, so that a reader never sees half a file; failures are ignored.
void write_cpuid_cache(const std::filesystem::path& path, std::string_view key, const CpuidEntries& entries);

}  // namespace vmm
