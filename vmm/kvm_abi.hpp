// C-ABI views of the KVM UAPI structs that end in a flexible array, and their ioctl numbers.
//
// Linux 6.1's UAPI headers declare those arrays with __DECLARE_FLEX_ARRAY, which wraps them in a
// struct holding an empty struct. In C that empty struct has size 0; in C++ it has size 1, so under
// g++ `kvm_cpuid2::entries` sits at offset 12 instead of 8 and KVM_GET_SUPPORTED_CPUID encodes
// size 12 — KVM answers EINVAL (seen on this host). Every such struct is therefore used through the
// headers below, with sizes pinned to the C values the kernel expects.
#pragma once

#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace vmm::kvm_abi {

/// struct kvm_cpuid2 without its entries (KVM API 4.46 KVM_GET_SUPPORTED_CPUID).
struct Cpuid2Header {
  uint32_t nent;
  uint32_t padding;
};
/// struct kvm_msrs without its entries (KVM API 4.18 KVM_GET_MSRS).
struct MsrsHeader {
  uint32_t nmsrs;
  uint32_t pad;
};
/// struct kvm_msr_list without its indices (KVM API 4.3 KVM_GET_MSR_INDEX_LIST).
struct MsrListHeader {
  uint32_t nmsrs;
};
/// struct kvm_irq_routing without its entries (KVM API 4.52 KVM_SET_GSI_ROUTING).
struct IrqRoutingHeader {
  uint32_t nr;
  uint32_t flags;
};
/// struct kvm_xsave's fixed 4 KiB region (KVM API 4.42 KVM_GET_XSAVE).
struct XsaveRegion {
  uint32_t region[1024];
};

inline constexpr unsigned long kGetSupportedCpuid = _IOWR(KVMIO, 0x05, Cpuid2Header);
inline constexpr unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, Cpuid2Header);
inline constexpr unsigned long kGetMsrIndexList = _IOWR(KVMIO, 0x02, MsrListHeader);
inline constexpr unsigned long kGetMsrs = _IOWR(KVMIO, 0x88, MsrsHeader);
inline constexpr unsigned long kSetMsrs = _IOW(KVMIO, 0x89, MsrsHeader);
inline constexpr unsigned long kGetXsave = _IOR(KVMIO, 0xa4, XsaveRegion);
inline constexpr unsigned long kSetXsave = _IOW(KVMIO, 0xa5, XsaveRegion);
/// KVM API 4.135 KVM_GET_XSAVE2: the whole area, KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) bytes.
inline constexpr unsigned long kGetXsave2 = _IOR(KVMIO, 0xcf, XsaveRegion);
inline constexpr unsigned long kSetGsiRouting = _IOW(KVMIO, 0x6a, IrqRoutingHeader);
/// struct kvm_pre_fault_memory (KVM API: KVM_PRE_FAULT_MEMORY, Linux 6.10): not in the UAPI
/// headers of every host that builds vmm (Debian 12's are 6.1).
struct PreFaultMemory {
  uint64_t gpa;
  uint64_t size;
  uint64_t flags;
  uint64_t padding[5];
};
inline constexpr unsigned long kPreFaultMemory = _IOWR(KVMIO, 0xd5, PreFaultMemory);

// The values a C compiler computes from <linux/kvm.h> (x86-64).
static_assert(kGetSupportedCpuid == 0xc008ae05);
static_assert(kSetCpuid2 == 0x4008ae90);
static_assert(kGetMsrIndexList == 0xc004ae02);
static_assert(kGetMsrs == 0xc008ae88);
static_assert(kSetMsrs == 0x4008ae89);
static_assert(kPreFaultMemory == 0xc040aed5);
static_assert(kGetXsave == 0x9000aea4);
static_assert(kSetXsave == 0x5000aea5);
static_assert(kGetXsave2 == 0x9000aecf);
static_assert(kSetGsiRouting == 0x4008ae6a);
static_assert(sizeof(kvm_cpuid_entry2) == 40 && sizeof(kvm_msr_entry) == 16 && sizeof(kvm_irq_routing_entry) == 48);

/// A header followed by `n` elements in one suitably aligned buffer, as these ioctls take them.
template <typename Header, typename Element>
class FlexBuffer {
 public:
  explicit FlexBuffer(size_t n) : words_((sizeof(Header) + n * sizeof(Element) + 7) / 8 + 1, 0) {}
  Header& header() { return *reinterpret_cast<Header*>(words_.data()); }
  Element* elements() { return reinterpret_cast<Element*>(reinterpret_cast<uint8_t*>(words_.data()) + sizeof(Header)); }
  void* data() { return words_.data(); }

 private:
  std::vector<uint64_t> words_;
};

}  // namespace vmm::kvm_abi
