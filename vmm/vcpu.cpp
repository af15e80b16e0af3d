#include "vmm/vcpu.hpp"

#include "vmm/kvm_abi.hpp"

#include <sys/ioctl.h>
#include <sys/mman.h>

#include <cerrno>

namespace vmm {

Result<std::unique_ptr<Vcpu>> Vcpu::create(const Kvm& kvm, int vm_fd, uint32_t index) {
  const int fd = ::ioctl(vm_fd, KVM_CREATE_VCPU, static_cast<unsigned long>(index));
  if (fd < 0) return fail("KVM_CREATE_VCPU {}: {}", index, errno_text(errno));
  Fd owned(fd);
  auto run = Mapping::shared(owned.get(), kvm.vcpu_mmap_size(), PROT_READ | PROT_WRITE);
  if (!run) return std::unexpected(run.error().context(fmt::format("mapping kvm_run of vCPU {}", index)));
  return std::unique_ptr<Vcpu>(new Vcpu(index, std::move(owned), std::move(*run)));
}

Result<> Vcpu::ioctl_set(unsigned long request, const void* arg, const char* what) const {
  if (::ioctl(fd_.get(), request, arg) < 0) return fail("vCPU {}: {}: {}", index_, what, errno_text(errno));
  return {};
}

Result<> Vcpu::ioctl_get(unsigned long request, void* arg, const char* what) const {
  if (::ioctl(fd_.get(), request, arg) < 0) return fail("vCPU {}: {}: {}", index_, what, errno_text(errno));
  return {};
}

Result<> Vcpu::set_cpuid(const CpuidEntries& entries) {
  kvm_abi::FlexBuffer<kvm_abi::Cpuid2Header, kvm_cpuid_entry2> buf(entries.size());
  buf.header().nent = static_cast<uint32_t>(entries.size());
  std::copy(entries.begin(), entries.end(), buf.elements());
  return ioctl_set(kvm_abi::kSetCpuid2, buf.data(), "KVM_SET_CPUID2");
}

Result<kvm_regs> Vcpu::get_regs() const {
  kvm_regs r{};
  if (auto e = ioctl_get(KVM_GET_REGS, &r, "KVM_GET_REGS"); !e) return std::unexpected(e.error());
  return r;
}
Result<> Vcpu::set_regs(const kvm_regs& regs) { return ioctl_set(KVM_SET_REGS, &regs, "KVM_SET_REGS"); }

Result<kvm_sregs> Vcpu::get_sregs() const {
  kvm_sregs s{};
  if (auto e = ioctl_get(KVM_GET_SREGS, &s, "KVM_GET_SREGS"); !e) return std::unexpected(e.error());
  return s;
}
Result<> Vcpu::set_sregs(const kvm_sregs& sregs) { return ioctl_set(KVM_SET_SREGS, &sregs, "KVM_SET_SREGS"); }
Result<> Vcpu::set_fpu(const kvm_fpu& fpu) { return ioctl_set(KVM_SET_FPU, &fpu, "KVM_SET_FPU"); }

Result<kvm_lapic_state> Vcpu::get_lapic() const {
  kvm_lapic_state l{};
  if (auto e = ioctl_get(KVM_GET_LAPIC, &l, "KVM_GET_LAPIC"); !e) return std::unexpected(e.error());
  return l;
}
Result<> Vcpu::set_lapic(const kvm_lapic_state& lapic) { return ioctl_set(KVM_SET_LAPIC, &lapic, "KVM_SET_LAPIC"); }

Result<> Vcpu::set_msrs(std::span<const kvm_msr_entry> msrs) {
  kvm_abi::FlexBuffer<kvm_abi::MsrsHeader, kvm_msr_entry> buf(msrs.size());
  buf.header().nmsrs = static_cast<uint32_t>(msrs.size());
  std::copy(msrs.begin(), msrs.end(), buf.elements());
  const int n = ::ioctl(fd_.get(), kvm_abi::kSetMsrs, buf.data());
  if (n < 0) return fail("vCPU {}: KVM_SET_MSRS: {}", index_, errno_text(errno));
  if (static_cast<size_t>(n) != msrs.size()) {
    return fail("vCPU {}: KVM_SET_MSRS rejected MSR {:#x}", index_, msrs[static_cast<size_t>(n)].index);
  }
  return {};
}

Result<std::vector<kvm_msr_entry>> Vcpu::get_msrs(std::span<const uint32_t> indices) const {
  kvm_abi::FlexBuffer<kvm_abi::MsrsHeader, kvm_msr_entry> buf(indices.size());
  buf.header().nmsrs = static_cast<uint32_t>(indices.size());
  for (size_t i = 0; i < indices.size(); ++i) buf.elements()[i].index = indices[i];
  const int n = ::ioctl(fd_.get(), kvm_abi::kGetMsrs, buf.data());
  if (n < 0) return fail("vCPU {}: KVM_GET_MSRS: {}", index_, errno_text(errno));
  // KVM stops at the first MSR it cannot read; keep what it read.
  const size_t got = std::min(static_cast<size_t>(n), indices.size());
  return std::vector<kvm_msr_entry>(buf.elements(), buf.elements() + got);
}

Result<VcpuState> Vcpu::save(std::span<const uint32_t> msr_indices) const {
  VcpuState s;
  if (auto e = ioctl_get(KVM_GET_MP_STATE, &s.mp_state, "KVM_GET_MP_STATE"); !e) return std::unexpected(e.error());
  if (auto e = ioctl_get(KVM_GET_REGS, &s.regs, "KVM_GET_REGS"); !e) return std::unexpected(e.error());
  if (auto e = ioctl_get(KVM_GET_SREGS, &s.sregs, "KVM_GET_SREGS"); !e) return std::unexpected(e.error());
  if (auto e = ioctl_get(KVM_GET_FPU, &s.fpu, "KVM_GET_FPU"); !e) return std::unexpected(e.error());
  if (auto e = ioctl_get(kvm_abi::kGetXsave, s.xsave.data(), "KVM_GET_XSAVE"); !e) return std::unexpected(e.error());
  if (auto e = ioctl_get(KVM_GET_XCRS, &s.xcrs, "KVM_GET_XCRS"); !e) return std::unexpected(e.error());
  if (auto e = ioctl_get(KVM_GET_LAPIC, &s.lapic, "KVM_GET_LAPIC"); !e) return std::unexpected(e.error());
  if (auto e = ioctl_get(KVM_GET_VCPU_EVENTS, &s.events, "KVM_GET_VCPU_EVENTS"); !e) return std::unexpected(e.error());
  if (auto e = ioctl_get(KVM_GET_DEBUGREGS, &s.debugregs, "KVM_GET_DEBUGREGS"); !e) return std::unexpected(e.error());
  // Read MSRs one batch at a time, skipping any KVM refuses (it stops at the first failure).
  size_t pos = 0;
  while (pos < msr_indices.size()) {
    auto got = get_msrs(msr_indices.subspan(pos));
    if (!got) return std::unexpected(got.error());
    s.msrs.insert(s.msrs.end(), got->begin(), got->end());
    pos += got->size() + 1;  // skip the unreadable one
  }
  return s;
}

Result<> Vcpu::restore(const VcpuState& s) {
  // Order follows the KVM API notes and established VMMs: MP state and sregs first (mode), then
  // general registers, FPU/XSAVE/XCRs, MSRs, LAPIC, and events last (they may reference the LAPIC).
  if (auto e = ioctl_set(KVM_SET_SREGS, &s.sregs, "KVM_SET_SREGS"); !e) return e;
  if (auto e = ioctl_set(KVM_SET_REGS, &s.regs, "KVM_SET_REGS"); !e) return e;
  if (auto e = ioctl_set(KVM_SET_XCRS, &s.xcrs, "KVM_SET_XCRS"); !e) return e;
  if (auto e = ioctl_set(kvm_abi::kSetXsave, s.xsave.data(), "KVM_SET_XSAVE"); !e) return e;
  if (auto e = ioctl_set(KVM_SET_FPU, &s.fpu, "KVM_SET_FPU"); !e) return e;
  if (auto e = set_msrs(s.msrs); !e) return e;
  if (auto e = ioctl_set(KVM_SET_LAPIC, &s.lapic, "KVM_SET_LAPIC"); !e) return e;
  if (auto e = ioctl_set(KVM_SET_DEBUGREGS, &s.debugregs, "KVM_SET_DEBUGREGS"); !e) return e;
  if (auto e = ioctl_set(KVM_SET_VCPU_EVENTS, &s.events, "KVM_SET_VCPU_EVENTS"); !e) return e;
  return ioctl_set(KVM_SET_MP_STATE, &s.mp_state, "KVM_SET_MP_STATE");
}

Result<bool> Vcpu::run() {
  if (::ioctl(fd_.get(), KVM_RUN, 0) == 0) return true;
  const int err = errno;
  if (err == EINTR || err == EAGAIN) return false;
  return fail("vCPU {}: KVM_RUN: {}", index_, errno_text(err));
}

}  // namespace vmm
