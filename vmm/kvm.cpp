#include "vmm/kvm.hpp"

#include "vmm/cpuid.hpp"
#include "vmm/kvm_abi.hpp"
#include "vmm/kvm_cache.hpp"

#include <fcntl.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>

namespace vmm {

namespace {

struct RequiredCap {
  long cap;
  const char* name;
};

// Capabilities the VMM cannot work without (KVM API, Documentation/virt/kvm/api.rst §4 / §8).
constexpr std::array kRequiredCaps = {
    RequiredCap{KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"},
    RequiredCap{KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"},
    RequiredCap{KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR"},
    RequiredCap{KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"},
    RequiredCap{KVM_CAP_PIT2, "KVM_CAP_PIT2"},
    RequiredCap{KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"},
    RequiredCap{KVM_CAP_MP_STATE, "KVM_CAP_MP_STATE"},
};

}  // namespace

std::filesystem::path Kvm::default_device() {
  if (const char* env = std::getenv("VMM_KVM_DEVICE"); env && *env) return env;
  return "/dev/kvm";
}

Result<Kvm> Kvm::open(const std::filesystem::path& device, const std::filesystem::path& cpuid_cache) {
  Kvm kvm;
  kvm.fd_ = Fd(::open(device.c_str(), O_RDWR | O_CLOEXEC));
  if (!kvm.fd_) {
    const int err = errno;
    if (err == ENOENT) return fail("{}: no such device (is the kvm module loaded? is this a VM without nested virtualisation?)", device.string());
    if (err == EACCES || err == EPERM) return fail("{}: permission denied (add the user to the 'kvm' group or run as root)", device.string());
    return fail("{}: {}", device.string(), errno_text(err));
  }
  const int version = ::ioctl(kvm.fd_.get(), KVM_GET_API_VERSION, 0);
  if (version < 0) return fail("{}: not a KVM device (KVM_GET_API_VERSION: {})", device.string(), errno_text(errno));
  if (version != KVM_API_VERSION) return fail("{}: KVM API version {} (need {})", device.string(), version, KVM_API_VERSION);
  for (const auto& c : kRequiredCaps) {
    if (kvm.check_extension(c.cap) <= 0) return fail("{}: KVM lacks required capability {}", device.string(), c.name);
  }
  const int mmap_size = ::ioctl(kvm.fd_.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
  if (mmap_size < static_cast<int>(sizeof(kvm_run))) return fail("{}: bad KVM_GET_VCPU_MMAP_SIZE {}", device.string(), mmap_size);
  kvm.vcpu_mmap_size_ = static_cast<size_t>(mmap_size);
  int max = kvm.check_extension(KVM_CAP_MAX_VCPUS);
  if (max <= 0) max = kvm.check_extension(KVM_CAP_NR_VCPUS);
  if (max <= 0) max = 4;  // KVM API: "assume 4 if KVM_CAP_NR_VCPUS is absent"
  kvm.max_vcpus_ = static_cast<uint32_t>(max);

  std::string key;
  bool from_cache = false;
  if (!cpuid_cache.empty()) {
    key = kvm_host_key(kvm.fd_.get());
    if (auto cached = read_cpuid_cache(cpuid_cache, key)) {
      kvm.supported_cpuid_ = std::move(*cached);
      from_cache = true;
    }
  }
  // KVM_GET_SUPPORTED_CPUID: grow the buffer until E2BIG stops.
  for (uint32_t n = 128; kvm.supported_cpuid_.empty() && n <= kMaxCachedCpuid; n *= 2) {
    kvm_abi::FlexBuffer<kvm_abi::Cpuid2Header, kvm_cpuid_entry2> buf(n);
    buf.header().nent = n;
    if (::ioctl(kvm.fd_.get(), kvm_abi::kGetSupportedCpuid, buf.data()) == 0) {
      kvm.supported_cpuid_.assign(buf.elements(), buf.elements() + std::min(buf.header().nent, n));
      break;
    }
    if (errno != E2BIG) return fail("{}: KVM_GET_SUPPORTED_CPUID: {}", device.string(), errno_text(errno));
  }
  if (kvm.supported_cpuid_.empty()) return fail("{}: KVM_GET_SUPPORTED_CPUID returned nothing", device.string());
  drop_host_apic_ids(kvm.supported_cpuid_);  // (a cache written before they were dropped has them)
  if (!cpuid_cache.empty() && !from_cache) write_cpuid_cache(cpuid_cache, key, kvm.supported_cpuid_);

  if (const int x = kvm.check_extension(KVM_CAP_XSAVE2); x > 4096) kvm.xsave_size_ = static_cast<size_t>(x);

  // KVM_GET_MSR_INDEX_LIST: first call reports the count.
  kvm_abi::MsrListHeader probe{.nmsrs = 0};
  if (::ioctl(kvm.fd_.get(), kvm_abi::kGetMsrIndexList, &probe) < 0 && errno == E2BIG) {
    const uint32_t n = probe.nmsrs;
    kvm_abi::FlexBuffer<kvm_abi::MsrListHeader, uint32_t> buf(n);
    buf.header().nmsrs = n;
    if (::ioctl(kvm.fd_.get(), kvm_abi::kGetMsrIndexList, buf.data()) == 0) {
      kvm.msr_index_list_.assign(buf.elements(), buf.elements() + std::min(buf.header().nmsrs, n));
    }
  }
  // KVM's list leaves out the MTRRs, which it emulates and saves all the same (QEMU adds them):
  // without them a restored guest ran with MTRRdefType 0 (MTRRs off, uncached by default), not as
  // it booted (x86_boot.cpp sets write-back). The default type, the fixed ranges and KVM's eight
  // variable pairs (KVM_NR_VAR_MTRR); one KVM refuses is skipped when saved (Vcpu::save).
  auto add = [&kvm](uint32_t msr) {
    if (std::ranges::find(kvm.msr_index_list_, msr) == kvm.msr_index_list_.end()) kvm.msr_index_list_.push_back(msr);
  };
  for (uint32_t msr : {0x2ffu, 0x250u, 0x258u, 0x259u}) add(msr);
  for (uint32_t msr = 0x268; msr <= 0x26f; ++msr) add(msr);
  for (uint32_t msr = 0x200; msr < 0x210; ++msr) add(msr);
  return kvm;
}

Result<Fd> Kvm::create_vm() const {
  for (int attempt = 0; attempt < 100; ++attempt) {
    const int fd = ::ioctl(fd_.get(), KVM_CREATE_VM, 0);
    if (fd >= 0) return Fd(fd);
    if (errno != EINTR) return fail("KVM_CREATE_VM: {}", errno_text(errno));
  }
  return fail("KVM_CREATE_VM: interrupted too often");
}

int Kvm::check_extension(long cap) const { return ::ioctl(fd_.get(), KVM_CHECK_EXTENSION, cap); }

}  // namespace vmm
