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
#include "vmm/base/fd.hpp"

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

/// KVM_GET_STATS_FD on a VM or vCPU fd: the statistics file to read with read_kvm_stats() (each
/// read is a fresh snapshot). Open a vCPU's before it runs: every vCPU ioctl waits while KVM_RUN
/// holds the vCPU; reading the file does not.
Result<Fd> open_stats_fd(int kvm_object_fd);

}  // namespace vmm
