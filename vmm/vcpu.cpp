#include "vmm/vcpu.hpp"

#include "vmm/base/fault_guard.hpp"
#include "vmm/kvm_abi.hpp"

#include <sys/ioctl.h>
#include <sys/mman.h>

#include <cerrno>

namespace vmm {

Result<std::unique_ptr<Vcpu>> Vcpu::create(const Kvm& kvm, int vm_fd, uint32_t index) {
  const int fd = ::ioctl(vm_fd, KVM_CREATE_VCPU, static_cast<unsigned long>(index));
  if (fd < 0) return fail("KVM_CREATE_VCPU {}: {}", index, errno_text(errno));
  Fd owned(fd);
  // The guest's TSC rate: the host's (KVM_SET_TSC_KHZ with 0 means the host TSC's current rate).
  // KVM gives a new vCPU the rate it measured when it loaded, and the kernel refines its TSC
  // calibration about a second after boot (by up to 1%). Loaded before that, on a host without TSC
  // scaling, KVM finds its own default "below hardware speed" (its log says so), fails to apply it
  // and leaves the vCPU's TSC scaling ratio at 0 (Linux 6.1 kvm_set_tsc_khz): every TSC KVM
  // computes for the vCPU is then a constant, a snapshot records the guest's TSC as 0, and kvmclock
  // after a restore is off by the host's uptime (a Linux clone's clock was tens of seconds ahead,
  // nested lane, 2026-12-05). Setting the host's rate writes a sane ratio; on a sane host it
  // changes nothing. It fails only when the host kernel has no TSC rate (its calibration failed):
  // the vCPU then keeps KVM's default, as before.
  (void)::ioctl(owned.get(), KVM_SET_TSC_KHZ, 0);
  auto run = Mapping::shared(owned.get(), kvm.vcpu_mmap_size(), PROT_READ | PROT_WRITE);
  if (!run) return std::unexpected(run.error().context(fmt::format("mapping kvm_run of vCPU {}", index)));
  // A child fork()ed from this VMM (a live fork, a pool's member) builds VMs of its own and must not
  // hold this one's run page: it is not inherited at all (fork() copies one mapping less).
  if (::madvise(run->data(), run->size(), MADV_DONTFORK) != 0) {
    return fail("madvise(MADV_DONTFORK) of vCPU {}'s kvm_run: {}", index, errno_text(errno));
  }
  auto vcpu = std::unique_ptr<Vcpu>(new Vcpu(index, std::move(owned), std::move(*run)));
  // KVM's statistics file, opened now: every vCPU ioctl waits for the vCPU's mutex, which KVM_RUN
  // holds (a guest idle in HLT would keep KVM_GET_STATS_FD waiting); reading the file does not.
  // Kernels before 5.14 have none: the metrics say so.
  auto stats = open_stats_fd(vcpu->fd_.get());
  if (stats) {
    vcpu->stats_ = std::move(*stats);
  } else {
    vcpu->stats_error_ = stats.error().message();
  }
  return vcpu;
}

Result<std::vector<KvmStat>> Vcpu::stats() const {
  if (!stats_) return fail("vCPU {}: no KVM statistics: {}", index_, stats_error_);
  return read_kvm_stats(stats_.get());
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
  if (auto r = ioctl_set(kvm_abi::kSetCpuid2, buf.data(), "KVM_SET_CPUID2"); !r) return r;
  cpuid_ = entries;
  return {};
}

Result<uint32_t> Vcpu::tsc_khz() const {
  const int khz = ::ioctl(fd_.get(), KVM_GET_TSC_KHZ, 0);
  if (khz < 0) return fail("vCPU {}: KVM_GET_TSC_KHZ: {}", index_, errno_text(errno));
  return static_cast<uint32_t>(khz);
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

namespace {

/// MSRs whose loss would break a restored guest: the syscall entry points, the TSC, TSC_AUX and
/// the deadline timer, PAT, and KVM's paravirtual clock, async page fault, steal time and PV EOI
/// areas. Any other MSR the host refuses (to read at a capture, or to write at a restore) is
/// skipped; one of these is an error either way.
bool msr_matters(uint32_t index) {
  switch (index) {
    case kMsrTsc:
    case 0x174: case 0x175: case 0x176:  // SYSENTER_CS/ESP/EIP
    case 0x1a0:       // IA32_MISC_ENABLE
    case 0x277:       // IA32_PAT
    case 0x6e0:       // IA32_TSC_DEADLINE
    case 0xc0000081: case 0xc0000082: case 0xc0000083: case 0xc0000084:  // STAR, LSTAR, CSTAR, SFMASK
    case 0xc0000102:  // KERNEL_GS_BASE
    case 0xc0000103:  // TSC_AUX: RDTSCP/RDPID's CPU number (Linux's entry code finds its per-CPU
                      // area with it: lost, every CPU would take CPU 0's)
    case 0x4b564d00: case 0x4b564d01:  // MSR_KVM_WALL_CLOCK_NEW, MSR_KVM_SYSTEM_TIME_NEW
    case 0x4b564d02: case 0x4b564d03: case 0x4b564d04:  // async PF, steal time, PV EOI
      return true;
    default:
      return false;
  }
}

}  // namespace

/// KVM reads or writes at most 255 MSRs per call (MAX_IO_MSRS: E2BIG from 256 on).
constexpr size_t kMsrBatch = 255;

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

Result<uint32_t> Vcpu::mp_state() const {
  kvm_mp_state mp{};
  if (auto e = ioctl_get(KVM_GET_MP_STATE, &mp, "KVM_GET_MP_STATE"); !e) return std::unexpected(e.error());
  return mp.mp_state;
}

Result<VcpuState> Vcpu::save(std::span<const uint32_t> msr_indices, size_t xsave_size) const {
  VcpuState s;
  s.xsave.assign(std::max<size_t>(xsave_size, sizeof(kvm_abi::XsaveRegion)), 0);
  const bool xsave2 = s.xsave.size() > sizeof(kvm_abi::XsaveRegion);
  if (auto e = ioctl_get(KVM_GET_MP_STATE, &s.mp_state, "KVM_GET_MP_STATE"); !e) return std::unexpected(e.error());
  if (auto e = ioctl_get(KVM_GET_REGS, &s.regs, "KVM_GET_REGS"); !e) return std::unexpected(e.error());
  if (auto e = ioctl_get(KVM_GET_SREGS, &s.sregs, "KVM_GET_SREGS"); !e) return std::unexpected(e.error());
  if (auto e = ioctl_get(KVM_GET_FPU, &s.fpu, "KVM_GET_FPU"); !e) return std::unexpected(e.error());
  if (auto e = ioctl_get(xsave2 ? kvm_abi::kGetXsave2 : kvm_abi::kGetXsave, s.xsave.data(),
                         xsave2 ? "KVM_GET_XSAVE2" : "KVM_GET_XSAVE");
      !e) {
    return std::unexpected(e.error());
  }
  if (auto e = ioctl_get(KVM_GET_XCRS, &s.xcrs, "KVM_GET_XCRS"); !e) return std::unexpected(e.error());
  if (auto e = ioctl_get(KVM_GET_LAPIC, &s.lapic, "KVM_GET_LAPIC"); !e) return std::unexpected(e.error());
  if (auto e = ioctl_get(KVM_GET_VCPU_EVENTS, &s.events, "KVM_GET_VCPU_EVENTS"); !e) return std::unexpected(e.error());
  if (auto e = ioctl_get(KVM_GET_DEBUGREGS, &s.debugregs, "KVM_GET_DEBUGREGS"); !e) return std::unexpected(e.error());
  // Read MSRs one batch at a time, skipping any KVM refuses (it stops at the first failure) unless
  // a restored guest needs it: a template without its syscall entry points restored "fine", and
  // its guest crashed at its first system call.
  size_t pos = 0;
  while (pos < msr_indices.size()) {
    const auto batch = msr_indices.subspan(pos, std::min(kMsrBatch, msr_indices.size() - pos));
    auto got = get_msrs(batch);
    if (!got) return std::unexpected(got.error());
    s.msrs.insert(s.msrs.end(), got->begin(), got->end());
    pos += got->size();
    if (got->size() < batch.size()) {
      if (msr_matters(msr_indices[pos])) return fail("vCPU {}: KVM_GET_MSRS refused MSR {:#x}, which a restored guest needs", index_, msr_indices[pos]);
      ++pos;  // skip the unreadable one
    }
  }
  auto khz = tsc_khz();
  if (!khz) return std::unexpected(khz.error());
  s.tsc_khz = *khz;
  return s;
}


Result<> Vcpu::restore(const VcpuState& s) {
  // KVM API (Documentation/virt/kvm/api.rst) constraints, in the order Firecracker's vCPU restore
  // and cloud-hypervisor's follow (CPUID was set at creation, before all of this, because several
  // SETs depend on it and on which vCPU is the BSP):
  // - MP state first;
  // - KVM_SET_REGS clears pending exceptions, so it precedes KVM_SET_VCPU_EVENTS;
  // - KVM_SET_SREGS restores the APIC base, so it precedes KVM_SET_LAPIC;
  // - KVM_SET_LAPIC precedes KVM_SET_MSRS: the TSC-deadline MSR only takes with the LAPIC set up
  //   (Firecracker issue #4099: guest processes stuck after restore);
  // - vCPU events last (pending exceptions, NMIs, interrupt shadow).
  if (s.xsave.size() < sizeof(kvm_abi::XsaveRegion)) return fail("vCPU {}: XSAVE area of {} bytes", index_, s.xsave.size());
  // - The TSC rate as saved, before the TSC MSR is written (KVM computes the TSC's offset with the
  //   rate's scaling ratio), as Firecracker's restore sets it. This host's rate differs a little
  //   after a reboot (the kernel's calibration varies from boot to boot: KVM takes a rate within
  //   250 ppm of its own as it is) and a lot on another CPU, which needs TSC scaling (VMX and SVM
  //   have it; without it KVM refuses a slower rate). A clone refused over a kHz of calibration
  //   could never be started from its template again.
  if (s.tsc_khz != 0) {
    auto now = tsc_khz();
    if (!now) return std::unexpected(now.error());
    if (*now != s.tsc_khz && ::ioctl(fd_.get(), KVM_SET_TSC_KHZ, static_cast<unsigned long>(s.tsc_khz)) != 0) {
      return fail("vCPU {}: saved with a {} kHz TSC; this host's runs at {} kHz and KVM cannot give the guest that rate "
                  "(no TSC scaling): KVM_SET_TSC_KHZ: {}", index_, s.tsc_khz, *now, errno_text(errno));
    }
  }
  if (auto e = ioctl_set(KVM_SET_MP_STATE, &s.mp_state, "KVM_SET_MP_STATE"); !e) return e;
  if (auto e = ioctl_set(KVM_SET_REGS, &s.regs, "KVM_SET_REGS"); !e) return e;
  if (auto e = ioctl_set(KVM_SET_SREGS, &s.sregs, "KVM_SET_SREGS"); !e) return e;
  if (auto e = ioctl_set(KVM_SET_FPU, &s.fpu, "KVM_SET_FPU"); !e) return e;
  if (auto e = ioctl_set(kvm_abi::kSetXsave, s.xsave.data(), "KVM_SET_XSAVE"); !e) return e;
  if (auto e = ioctl_set(KVM_SET_XCRS, &s.xcrs, "KVM_SET_XCRS"); !e) return e;
  if (auto e = ioctl_set(KVM_SET_DEBUGREGS, &s.debugregs, "KVM_SET_DEBUGREGS"); !e) return e;
  if (auto e = ioctl_set(KVM_SET_LAPIC, &s.lapic, "KVM_SET_LAPIC"); !e) return e;
  // MSRs: KVM stops at the first one it refuses. One that matters is an error; any other is
  // skipped and the rest written.
  std::span<const kvm_msr_entry> rest(s.msrs);
  while (!rest.empty()) {
    const size_t count = std::min(kMsrBatch, rest.size());
    kvm_abi::FlexBuffer<kvm_abi::MsrsHeader, kvm_msr_entry> buf(count);
    buf.header().nmsrs = static_cast<uint32_t>(count);
    std::copy(rest.begin(), rest.begin() + static_cast<ptrdiff_t>(count), buf.elements());
    const int n = ::ioctl(fd_.get(), kvm_abi::kSetMsrs, buf.data());
    if (n < 0) return fail("vCPU {}: KVM_SET_MSRS: {}", index_, errno_text(errno));
    if (static_cast<size_t>(n) >= count) {
      rest = rest.subspan(count);
      continue;
    }
    const uint32_t refused = rest[static_cast<size_t>(n)].index;
    if (msr_matters(refused)) return fail("vCPU {}: KVM_SET_MSRS refused MSR {:#x}, which the guest needs", index_, refused);
    rest = rest.subspan(static_cast<size_t>(n) + 1);
  }
  // KVM_GET_VCPU_EVENTS fills nmi.pending and sipi_vector but does not flag them valid, and
  // KVM_SET_VCPU_EVENTS reads them only when flagged (KVM API 4.32): an NMI pending at the capture
  // was dropped. (QEMU sets both flags the same way.)
  kvm_vcpu_events events = s.events;
  events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
  return ioctl_set(KVM_SET_VCPU_EVENTS, &events, "KVM_SET_VCPU_EVENTS");
}

namespace {

/// KVM_RUN's EAGAIN on a thread's first run: KVM could not make its own task for the VM.
Error kvm_task_error(uint32_t index, int err) {
  return Error(fmt::format("vCPU {}: KVM_RUN: cannot start KVM's own task for this VM: {} (at the limit on threads and "
                           "processes: 'ulimit -u', or the cgroup's pids.max)",
                           index, errno_text(err)));
}

}  // namespace

Result<> Vcpu::prime() {
  request_immediate_exit();
  const int rc = ::ioctl(fd_.get(), KVM_RUN, 0);
  const int err = errno;
  clear_immediate_exit();
  // (With immediate_exit set, a vCPU with no I/O to complete, as on its thread's first run,
  // returns EINTR before anything else; wait-for-SIPI included: it is not waited in.)
  if (rc != 0 && err == EINTR) return {};
  if (rc == 0) return fail("vCPU {}: its first KVM_RUN returned an exit (reason {}) before the guest ran", index_, run_area().exit_reason);
  if (err == EAGAIN) {
    // An AP still in wait-for-SIPI: older kernels wait there whatever immediate_exit says, and say
    // EAGAIN when it wakes. Primed as far as it can tell: if KVM could not make its task, the
    // VM's vCPU 0 (never in wait-for-SIPI) says so and stops the VM.
    if (auto mp = mp_state(); mp && waits_for_sipi(*mp)) return {};
    return std::unexpected(kvm_task_error(index_, err));
  }
  return fail("vCPU {}: KVM_RUN: {}", index_, errno_text(err));
}

void Vcpu::tell_stopped() const { (void)::ioctl(fd_.get(), KVM_KVMCLOCK_CTRL, 0); }

void Vcpu::preload_mmu() const {
  // The page of the next instruction: RIP through the guest's page tables (KVM_TRANSLATE).
  uint64_t gpa = 0;
  if (auto regs = get_regs()) {
    kvm_translation t{};
    t.linear_address = regs->rip;
    if (::ioctl(fd_.get(), KVM_TRANSLATE, &t) == 0 && t.valid) gpa = t.physical_address & ~uint64_t{0xfff};
  }
  // KVM_PRE_FAULT_MEMORY (Linux 6.10+, arch/x86/kvm/mmu/mmu.c kvm_arch_vcpu_pre_fault_memory)
  // loads the vCPU's MMU (kvm_mmu_reload) before anything else, then maps the range where the MMU
  // maps by guest-physical address (EPT/NPT with the TDP MMU). With shadow paging (a host without
  // two-dimensional paging for its guests, as this project's direct lane, nested under another
  // hypervisor) it fails with EOPNOTSUPP once the MMU is loaded: that load (~0.1 ms there, most of
  // it filling the vCPU's caches of page-table pages) is what a pool's clone then no longer pays
  // after its request. Errors are ignored: the first KVM_RUN does what was not done.
  kvm_abi::PreFaultMemory range{.gpa = gpa, .size = 4096, .flags = 0, .padding = {}};
  (void)::ioctl(fd_.get(), kvm_abi::kPreFaultMemory, &range);
}

Result<bool> Vcpu::run() {
  if (::ioctl(fd_.get(), KVM_RUN, 0) == 0) {
    started_eagains_ = 0;
    return true;
  }
  const int err = errno;
  if (err == EINTR) return false;
  // The guest touched a page its memory file no longer has (KVM cannot fault it in): ends the
  // process as a SIGBUS there would (vmm/base/fault_guard.hpp).
  if (err == EFAULT) FaultGuard::exit_if_shrunk();
  if (err != EAGAIN) return fail("vCPU {}: KVM_RUN: {}", index_, errno_text(err));
  // KVM_RUN says EAGAIN in two cases (arch/x86/kvm/x86.c, virt/kvm/kvm_main.c):
  // - an AP in wait-for-SIPI (KVM_MP_STATE_UNINITIALIZED) woke without being started: its mp_state
  //   is then UNINITIALIZED or INIT_RECEIVED, or RUNNABLE once, when the SIPI came (the next
  //   KVM_RUN runs it);
  // - a thread's first KVM_RUN, when KVM cannot make the task of its own it starts then (recent
  //   Linux, seen on 6.18: the VM's "kvm-nx-lpage-recovery" task, counted against this process's
  //   limit on threads): every KVM_RUN fails so, at once, whatever the vCPU's state (a clone's is
  //   often HALTED). Retried, that was a vCPU thread spinning forever (seen at a cgroup's pids.max on
  //   Linux 6.18).
  // KVM_GET_MP_STATE, on this rare path only, tells them apart.
  if (auto mp = mp_state(); !mp || waits_for_sipi(*mp)) {
    started_eagains_ = 0;
    return false;
  }
  if (++started_eagains_ < 3) return false;
  return std::unexpected(kvm_task_error(index_, err));
}

}  // namespace vmm
