#include "vmm/vm.hpp"

#include <signal.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <ctime>
#include <optional>

#include "vmm/base/layout.hpp"
#include "vmm/base/thread.hpp"
#include "vmm/x86_boot.hpp"

namespace vmm {

namespace {

constexpr int kKickSignal = SIGUSR1;  ///< interrupts a vCPU's KVM_RUN (handler does nothing)
constexpr int kWakeSignal = SIGUSR2;  ///< wakes the thread blocked in Vm::run()
constexpr uint64_t kTssAddr = 0xfffbd000;          ///< 3 pages KVM needs on Intel, inside the MMIO hole
constexpr uint64_t kIdentityMapAddr = 0xfffbc000;  ///< 1 page, just below

void ignore_signal(int) {}

void install_kick_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_handler = ignore_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
    ::sigaction(kKickSignal, &sa, nullptr);
  });
}

sigset_t waited_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, kWakeSignal);
  return set;
}

/// ISA IRQ / GSI line through KVM_IRQ_LINE: a rising then a falling edge.
class KvmIrqLine final : public devices::IrqLine {
 public:
  KvmIrqLine(int vm_fd, uint32_t gsi) : vm_fd_(vm_fd), gsi_(gsi) {}
  void trigger() override {
    kvm_irq_level level{};
    level.irq = gsi_;
    level.level = 1;
    ::ioctl(vm_fd_, KVM_IRQ_LINE, &level);
    level.level = 0;
    ::ioctl(vm_fd_, KVM_IRQ_LINE, &level);
  }

 private:
  int vm_fd_;
  uint32_t gsi_;
};

}  // namespace

void Vm::block_signals() {
  // SIGINT and SIGTERM are taken with sigwait; an ignored signal would be discarded, not queued,
  // and a shell starts background jobs with SIGINT ignored: `vmm run ... &` must still stop on it.
  ::signal(SIGINT, SIG_DFL);
  ::signal(SIGTERM, SIG_DFL);
  sigset_t set = waited_signals();
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
  install_kick_handler();
}

Result<std::unique_ptr<Vm>> Vm::create(const Kvm& kvm, const VmConfig& config, GuestMemory memory) {
  if (!config.cpuid.empty() && config.cpuid.size() != config.vcpus) {
    return fail("{} CPUID tables for {} vCPUs", config.cpuid.size(), config.vcpus);
  }
  if (config.vcpus == 0 || config.vcpus > std::min(kMaxVcpus, kvm.max_vcpus())) {
    return fail("{} vCPUs requested; this host supports 1 to {}", config.vcpus, std::min(kMaxVcpus, kvm.max_vcpus()));
  }
  auto fd = kvm.create_vm();
  if (!fd) return std::unexpected(fd.error());
  std::unique_ptr<Vm> vm(new Vm(kvm, std::move(*fd), std::move(memory)));
  if (auto r = vm->setup_kvm(config); !r) return std::unexpected(r.error());
  return vm;
}

Result<> Vm::setup_kvm(const VmConfig& config) {
  const int fd = vm_fd_.get();
  if (::ioctl(fd, KVM_SET_TSS_ADDR, kTssAddr) < 0) return fail("KVM_SET_TSS_ADDR: {}", errno_text(errno));
  uint64_t identity = kIdentityMapAddr;
  if (::ioctl(fd, KVM_SET_IDENTITY_MAP_ADDR, &identity) < 0) {
    return fail("KVM_SET_IDENTITY_MAP_ADDR: {}", errno_text(errno));
  }
  // Guest memory before the irqchip (see create()).
  uint32_t slot = 0;
  for (const auto& region : memory_.regions()) {
    kvm_userspace_memory_region r{};
    r.slot = slot++;
    r.guest_phys_addr = region.gpa;
    r.memory_size = region.size;
    r.userspace_addr = reinterpret_cast<uint64_t>(region.host);
    if (::ioctl(fd, KVM_SET_USER_MEMORY_REGION, &r) < 0) {
      return fail("KVM_SET_USER_MEMORY_REGION {:#x}+{:#x}: {}", region.gpa, region.size, errno_text(errno));
    }
  }
  if (::ioctl(fd, KVM_CREATE_IRQCHIP, 0) < 0) return fail("KVM_CREATE_IRQCHIP: {}", errno_text(errno));
  io_ = std::make_unique<KvmVmIo>(fd);
  kvm_pit_config pit{};
  pit.flags = KVM_PIT_SPEAKER_DUMMY;
  if (::ioctl(fd, KVM_CREATE_PIT2, &pit) < 0) return fail("KVM_CREATE_PIT2: {}", errno_text(errno));

  for (uint32_t i = 0; i < config.vcpus; ++i) {
    auto vcpu = Vcpu::create(kvm_, fd, i);
    if (!vcpu) return std::unexpected(vcpu.error());
    const CpuidEntries cpuid = config.cpuid.empty() ? make_cpuid(kvm_.supported_cpuid(), config.cpu_template, i, config.vcpus)
                                                    : config.cpuid.at(i);
    if (auto r = (*vcpu)->set_cpuid(cpuid); !r) return r;
    if (!config.restoring) {
      if (auto r = x86::setup_vcpu_common(**vcpu); !r) return r;
    }
    vcpus_.push_back(std::move(*vcpu));
  }
  return {};
}

Vm::~Vm() {
  if (!threads_.empty()) {
    request_stop(StopInfo{.reason = devices::StopReason::Error, .status = 0, .message = "VM destroyed"});
    for (auto& t : threads_) {
      if (t.joinable()) t.join();
    }
  }
}

std::shared_ptr<devices::IrqLine> Vm::irq_line(uint32_t gsi) { return std::make_shared<KvmIrqLine>(vm_fd_.get(), gsi); }

Result<> Vm::prepare_boot(const boot::BootEntry& entry) { return x86::setup_boot_vcpu(*vcpus_.at(0), memory_, entry); }

Result<VmKernelState> Vm::save_kernel_state() const {
  const int fd = vm_fd_.get();
  VmKernelState s;
  s.pic_master.chip_id = KVM_IRQCHIP_PIC_MASTER;
  s.pic_slave.chip_id = KVM_IRQCHIP_PIC_SLAVE;
  s.ioapic.chip_id = KVM_IRQCHIP_IOAPIC;
  for (kvm_irqchip* chip : {&s.pic_master, &s.pic_slave, &s.ioapic}) {
    if (::ioctl(fd, KVM_GET_IRQCHIP, chip) < 0) return fail("KVM_GET_IRQCHIP {}: {}", chip->chip_id, errno_text(errno));
  }
  if (::ioctl(fd, KVM_GET_PIT2, &s.pit) < 0) return fail("KVM_GET_PIT2: {}", errno_text(errno));
  if (::ioctl(fd, KVM_GET_CLOCK, &s.clock) < 0) return fail("KVM_GET_CLOCK: {}", errno_text(errno));
  // KVM stamps the clock with the real time it was read at only when the host's clocksource is the
  // TSC (KVM API, KVM_GET_CLOCK). Without the stamp a restored clock could not be brought to
  // the present, and every clone would read its template's time (found in the nested lane, whose
  // L1 does not run on the TSC): stamp it here, right after the read (microseconds apart).
  if (!(s.clock.flags & KVM_CLOCK_REALTIME)) {
    timespec now{};
    ::clock_gettime(CLOCK_REALTIME, &now);
    s.clock.realtime = static_cast<uint64_t>(now.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(now.tv_nsec);
    s.clock.flags |= KVM_CLOCK_REALTIME;
  }
  return s;
}

Result<> Vm::restore_irqchips(const VmKernelState& state) {
  const int fd = vm_fd_.get();
  for (const kvm_irqchip* chip : {&state.pic_master, &state.pic_slave, &state.ioapic}) {
    if (::ioctl(fd, KVM_SET_IRQCHIP, chip) < 0) return fail("KVM_SET_IRQCHIP {}: {}", chip->chip_id, errno_text(errno));
  }
  return {};
}

Result<> Vm::restore_timers(const VmKernelState& state, bool clock_to_now) {
  const int fd = vm_fd_.get();
  // KVM_SET_PIT2 loads each channel's count as if it were written now (KVM's kvm_pit_load_count):
  // the PIT counts afresh from the start, not from when the state was saved.
  if (::ioctl(fd, KVM_SET_PIT2, &state.pit) < 0) return fail("KVM_SET_PIT2: {}", errno_text(errno));
  // KVM API 4.64 KVM_SET_CLOCK: with KVM_CLOCK_REALTIME set (and the realtime it was read at), KVM
  // advances the clock by the real time elapsed since, whatever the host's clocksource; otherwise
  // it sets it as it was.
  kvm_clock_data clock{};
  clock.clock = state.clock.clock;
  const bool realtime = clock_to_now && (state.clock.flags & KVM_CLOCK_REALTIME) &&
                        (::ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_ADJUST_CLOCK) & KVM_CLOCK_REALTIME);
  if (realtime) {
    clock.flags = KVM_CLOCK_REALTIME;
    clock.realtime = state.clock.realtime;
  }
  if (::ioctl(fd, KVM_SET_CLOCK, &clock) < 0) return fail("KVM_SET_CLOCK: {}", errno_text(errno));
  // A clock stepped to now jumps over the time since the state was saved (a template's age): the
  // guest is told it was stopped (QEMU does the same at every resume), or Linux reports a soft
  // lockup for every CPU once that is more than 20 s. (Called before its vCPUs run, or while they
  // are parked.)
  if (clock_to_now) {
    for (const auto& v : vcpus_) v->tell_stopped();
  }
  return {};
}

void Vm::request_stop(devices::StopReason reason, uint32_t status) {
  request_stop(StopInfo{.reason = reason, .status = status, .message = {}});
}

void Vm::request_stop(StopInfo info) {
  {
    std::lock_guard lock(mutex_);
    if (!stop_) stop_ = std::move(info);
    target_ = RunState::Stopped;
    stopping_ = true;
  }
  cv_.notify_all();
  kick_all();
  if (have_waiter_) ::pthread_kill(waiter_, kWakeSignal);
}

void Vm::kick_all() {
  std::lock_guard lock(threads_mutex_);
  for (size_t i = 0; i < vcpus_.size() && i < threads_.size(); ++i) {
    vcpus_[i]->request_immediate_exit();
    ::pthread_kill(threads_[i].native_handle(), kKickSignal);
  }
}

void Vm::pause() {
  std::unique_lock lock(mutex_);
  if (target_ == RunState::Stopped) return;
  if (target_ == RunState::Running) {
    target_ = RunState::Paused;
    ++pauses_;  // each vCPU tells its guest it was stopped once it runs again (park())
    lock.unlock();
    kick_all();
    lock.lock();
  }
  // Paused already (start_paused, or another pause): returns once every vCPU is parked all the same.
  // Kicked again while one is not: a kick can be spent before it counts (a vCPU waiting for the
  // serial port's lock while another is blocked writing to a console nobody reads takes its signal
  // there, then blocks in the write itself once it has the lock).
  while (!cv_.wait_for(lock, kRekick, [&] { return parked_ == vcpus_.size() || target_ == RunState::Stopped; })) {
    lock.unlock();
    kick_all();
    lock.lock();
  }
}

void Vm::start_paused() {
  std::lock_guard lock(mutex_);
  if (target_ == RunState::Running) target_ = RunState::Paused;
}

void Vm::resume() {
  {
    std::lock_guard lock(mutex_);
    if (target_ == RunState::Paused) {
      target_ = RunState::Running;
      // Started paused (a fork's child to be inspected first): its clock ran on while it waited,
      // for as long as it waited, as through a pause; its guest is told it was stopped too.
      ++pauses_;
    }
  }
  cv_.notify_all();
}

void Vm::start_on(std::function<bool()> gate) { gate_ = std::move(gate); }

void Vm::park(Vcpu& vcpu) {
  // Complete a pending PIO/MMIO exit before the vCPU is considered paused (KVM API, KVM_RUN:
  // "enter KVM_RUN with immediate_exit set so that pending operations complete").
  // Completing one may need another exit (a read-modify-write of an MMIO register: the read's
  // completion leads to the write; a string I/O instruction): KVM then returns that exit rather
  // than EINTR, and it is handled like any other (dropped, a device register write was lost and
  // the saved RIP already past it), until KVM_RUN returns EINTR.
  vcpu.request_immediate_exit();
  for (int more = 0; more < 1024; ++more) {
    auto ran = vcpu.run();
    if (!ran) {
      // KVM could not complete the exit: the vCPU's state is not one to save or run on.
      request_stop(StopInfo{.reason = devices::StopReason::Error, .status = 0, .message = ran.error().message()});
      break;
    }
    if (!*ran) break;
    ExitOutcome out = handle_exit(vcpu.run_area(), vcpu.run_size(), buses_);
    if (out.stop) {
      request_stop(StopInfo{.reason = out.reason, .status = 0, .message = std::move(out.message)});
      break;
    }
  }
  vcpu.clear_immediate_exit();
  std::unique_lock lock(mutex_);
  ++parked_;
  cv_.notify_all();
  if (vcpu.index() == 0 && gate_) {
    auto gate = std::exchange(gate_, nullptr);  // once
    lock.unlock();
    const bool go = gate();
    lock.lock();
    if (go && target_ == RunState::Paused) {
      target_ = RunState::Running;
      lock.unlock();
      cv_.notify_all();  // the other vCPUs
      lock.lock();
    }
  }
  cv_.wait(lock, [&] { return target_ != RunState::Paused; });
  --parked_;
  // Paused, or started paused, then resumed (not a start's gate): its guest's clock went on
  // meanwhile, and the guest is told it was stopped, on this vCPU's own thread, before it runs.
  thread_local uint64_t pauses_seen = 0;
  if (pauses_ != pauses_seen) {
    pauses_seen = pauses_;
    lock.unlock();
    vcpu.tell_stopped();
  }
}

void Vm::vcpu_thread(Vcpu& vcpu) {
  struct Ended {
    std::atomic<bool>& flag;
    ~Ended() { flag.store(true, std::memory_order_release); }
  } ended{vcpu_ended_[vcpu.index()]};
  // Named for ps/top and the tests that measure per-thread CPU time.
  const std::string name = fmt::format("vmm-vcpu{}", vcpu.index());
  ::pthread_setname_np(::pthread_self(), name.c_str());
  sigset_t unblock;
  sigemptyset(&unblock);
  sigaddset(&unblock, kKickSignal);
  ::pthread_sigmask(SIG_UNBLOCK, &unblock, nullptr);
  // Before anything counts as the guest's start (first_entry, a paused start's parking): a VM
  // whose vCPU cannot run at all (KVM's own task not made, at a limit on tasks) fails here, and a
  // clone, a fork child or a pool member is not announced as running, then gone.
  if (auto primed = vcpu.prime(); !primed) {
    request_stop(StopInfo{.reason = devices::StopReason::Error, .status = 0, .message = primed.error().message()});
    return;
  }

  for (;;) {
    if (stopping_) return;
    {
      std::unique_lock lock(mutex_);
      if (target_ == RunState::Paused) {
        lock.unlock();
        park(vcpu);
        continue;
      }
    }
    const bool first = vcpu.index() == 0 && first_exit_ns_.load(std::memory_order_relaxed) == 0;
    if (first) first_entry_ns_.store(std::chrono::steady_clock::now().time_since_epoch().count(), std::memory_order_relaxed);
    auto ran = vcpu.run();
    if (first) first_exit_ns_.store(std::chrono::steady_clock::now().time_since_epoch().count(), std::memory_order_relaxed);
    if (!ran) {
      request_stop(StopInfo{.reason = devices::StopReason::Error, .status = 0, .message = ran.error().message()});
      return;
    }
    if (!*ran) {  // EINTR / EAGAIN: a kick, a signal, or an AP leaving wait-for-SIPI
      vcpu.clear_immediate_exit();
      continue;
    }
    ExitOutcome out = handle_exit(vcpu.run_area(), vcpu.run_size(), buses_);
    if (out.stop) {
      if (out.reason == devices::StopReason::Error || out.reason == devices::StopReason::TripleFault) {
        if (auto regs = vcpu.get_regs()) out.message += fmt::format(" (vCPU {} RIP {:#x})", vcpu.index(), regs->rip);
      }
      request_stop(StopInfo{.reason = out.reason, .status = 0, .message = std::move(out.message)});
      return;
    }
  }
}

Vm::FirstRun Vm::first_run() const {
  auto at = [](const std::atomic<int64_t>& ns) -> std::optional<std::chrono::steady_clock::time_point> {
    const int64_t v = ns.load(std::memory_order_relaxed);
    if (v == 0) return std::nullopt;
    return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(v));
  };
  return FirstRun{.entered = at(first_entry_ns_), .exited = at(first_exit_ns_)};
}

StopInfo Vm::run(const std::function<void()>& started) {
  waiter_ = ::pthread_self();
  have_waiter_ = true;
  // Block the waited signals here too, in case block_signals() was not called first.
  sigset_t set = waited_signals();
  ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
  install_kick_handler();

  std::optional<Error> no_thread;
  vcpu_ended_ = std::make_unique<std::atomic<bool>[]>(vcpus_.size());
  {
    // kick_all() may run on a vCPU thread while later threads are still being started.
    std::lock_guard lock(threads_mutex_);
    threads_.reserve(vcpus_.size());
    for (auto& v : vcpus_) {
      auto t = start_thread(fmt::format("vCPU {}'s thread", v->index()), [this, &v] { vcpu_thread(*v); });
      if (!t) {
        no_thread = t.error();
        break;
      }
      threads_.push_back(std::move(*t));
    }
  }
  // The VM stops as for any error: the threads that started see the stop and end.
  if (no_thread) {
    request_stop(StopInfo{.reason = devices::StopReason::Error, .status = 0, .message = no_thread->message()});
  } else if (started) {
    started();
  }
  for (;;) {
    {
      std::lock_guard lock(mutex_);
      if (stop_) break;
    }
    int sig = 0;
    if (::sigwait(&set, &sig) != 0) continue;
    if (sig == SIGINT || sig == SIGTERM) {
      request_stop(StopInfo{.reason = devices::StopReason::Signal, .status = static_cast<uint32_t>(sig), .message = {}});
    }
  }
  // Joined out of kick_all()'s reach: a stop requested meanwhile (the API's hard-stop timer, an
  // I/O error) would otherwise kick a thread being joined, or one joined (pthread_kill(0): SIGSEGV).
  std::vector<std::thread> ended;
  {
    std::lock_guard lock(threads_mutex_);
    ended.swap(threads_);
  }
  // Kicked again until each has ended: a kick can be spent before it counts (see pause()), and a
  // vCPU blocked in a console write for good kept the process from ending (SIGINT and SIGTERM
  // are no one's to take by now: only SIGKILL ended it).
  for (auto last = std::chrono::steady_clock::now();;) {
    bool all = true;
    for (size_t i = 0; i < ended.size(); ++i) all = all && vcpu_ended_[i].load(std::memory_order_acquire);
    if (all) break;
    if (std::chrono::steady_clock::now() - last >= kRekick) {
      for (size_t i = 0; i < ended.size(); ++i) {
        if (vcpu_ended_[i].load(std::memory_order_acquire)) continue;
        vcpus_[i]->request_immediate_exit();
        ::pthread_kill(ended[i].native_handle(), kKickSignal);  // (valid until joined)
      }
      last = std::chrono::steady_clock::now();
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  for (auto& t : ended) t.join();
  have_waiter_ = false;
  std::lock_guard lock(mutex_);
  return *stop_;
}

}  // namespace vmm
