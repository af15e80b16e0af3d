// The KVM system device (/dev/kvm): capability checks, the supported CPUID, VM creation.
#pragma once

#include <linux/kvm.h>

#include <filesystem>
#include <memory>
#include <vector>

#include "vmm/base/error.hpp"
#include "vmm/base/fd.hpp"

namespace vmm {

/// A list of CPUID entries, laid out as struct kvm_cpuid2 wants them.
using CpuidEntries = std::vector<kvm_cpuid_entry2>;

/// An open /dev/kvm. Checked on open: API version 12 and every capability the VMM relies on.
class Kvm {
 public:
  /// Default device path: $VMM_KVM_DEVICE if set, else /dev/kvm.
  static std::filesystem::path default_device();
  /// Opens and checks the device; errors are one line naming the path and what is missing.
  /// `cpuid_cache`: a file keeping KVM_GET_SUPPORTED_CPUID's answer for this boot and this KVM
  /// (vmm/kvm_cache.hpp), read when it is this host's and (re)written when it is not; none if empty.
  static Result<Kvm> open(const std::filesystem::path& device, const std::filesystem::path& cpuid_cache = {});

  /// KVM_CREATE_VM.
  Result<Fd> create_vm() const;
  /// The system fd (for a forked child that keeps it).
  int fd() const { return fd_.get(); }
  /// KVM_CHECK_EXTENSION (on the system fd).
  int check_extension(long cap) const;
  /// Size of each vCPU's kvm_run mapping (KVM_GET_VCPU_MMAP_SIZE).
  size_t vcpu_mmap_size() const { return vcpu_mmap_size_; }
  /// Most vCPUs one VM may have (KVM_CAP_MAX_VCPUS).
  uint32_t max_vcpus() const { return max_vcpus_; }
  /// KVM_GET_SUPPORTED_CPUID, queried once.
  const CpuidEntries& supported_cpuid() const { return supported_cpuid_; }
  /// MSR indices KVM can save and restore (KVM_GET_MSR_INDEX_LIST).
  const std::vector<uint32_t>& msr_index_list() const { return msr_index_list_; }
  /// Bytes of a vCPU's XSAVE area: KVM_CAP_XSAVE2's answer when it is larger than the legacy 4 KiB.
  size_t xsave_size() const { return xsave_size_; }

 private:
  Kvm() = default;
  Fd fd_;
  size_t vcpu_mmap_size_ = 0;
  uint32_t max_vcpus_ = 0;
  CpuidEntries supported_cpuid_;
  std::vector<uint32_t> msr_index_list_;
  size_t xsave_size_ = 4096;
};

}  // namespace vmm
