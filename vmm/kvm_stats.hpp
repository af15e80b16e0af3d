// KVM's binary statistics (KVM API, api.rst "KVM_GET_STATS_FD"): the per-vCPU counters KVM keeps
// (exits, io_exits, mmio_exits, halt_exits, irq_exits, signal_exits, ...), read from the stats fd
// of a vCPU or VM. The file's layout comes from the kernel, but it is parsed as untrusted bytes:
// every offset and size is checked, and a malformed file is a one-line error, never a crash
// (tests/fuzz/kvm_stats_fuzz.cpp).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "vmm/base/error.hpp"

namespace vmm {

/// One single-valued statistic: a cumulative counter or an instant value, raw (KVM's unit and
/// exponent are not applied: the exit counters have neither).
struct KvmStat {
  std::string name;
  uint64_t value;
};

/// Parses the whole content of a stats file (struct kvm_stats_header, the descriptors, the data).
/// Returns the stats of size 1 and type CUMULATIVE or INSTANT in descriptor order; peaks,
/// histograms and types newer than this code are skipped (but still bounds-checked).
Result<std::vector<KvmStat>> parse_kvm_stats(std::span<const uint8_t> buf);

/// The raw bytes of a stats fd, read with pread from offset 0 to EOF (at most 1 MiB).
Result<std::vector<uint8_t>> read_kvm_stats_bytes(int stats_fd);

/// read_kvm_stats_bytes() then parse_kvm_stats().
Result<std::vector<KvmStat>> read_kvm_stats(int stats_fd);

/// The stats of one vCPU: KVM_GET_STATS_FD on its fd, then read_kvm_stats(). Each call reads a
/// fresh snapshot of the counters (the stats fd is opened and closed here).
Result<std::vector<KvmStat>> read_vcpu_stats(int vcpu_fd);

}  // namespace vmm
