// One virtual machine: the KVM VM fd, guest memory, in-kernel interrupt controllers, buses, and
// one thread per vCPU running a small state machine (Running, Paused, Stopped) around
// handle_exit().
#pragma once

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "devices/device.hpp"
#include "vmm/boot/boot.hpp"
#include "vmm/cpuid.hpp"
#include "vmm/base/error.hpp"
#include "vmm/exit_handler.hpp"
#include "vmm/base/fd.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/kvm.hpp"
#include "vmm/vcpu.hpp"
#include "vmm/vm_io.hpp"

namespace vmm {

inline constexpr uint32_t kMaxVcpus = 254;  ///< xAPIC ids 0..253; 0xff is broadcast

/// What a VM is made of.
struct VmConfig {
  uint32_t vcpus = 1;
  CpuTemplate cpu_template = CpuTemplate::Host;
  /// Per-vCPU CPUID tables to set instead of deriving them from the template (a restore sets the
  /// tables the snapshot was taken with). Empty: derive.
  std::vector<CpuidEntries> cpuid;
  /// Every vCPU's whole state is about to be restored (a clone, a fork's child, a pool's member):
  /// the defaults a boot needs (MSRs, FPU, LAPIC LINT0/LINT1 modes) are not written first, only to
  /// be overwritten (4 ioctls a vCPU, ~30 us here).
  bool restoring = false;
};

/// KVM's per-VM state outside the vCPUs: the in-kernel PIC pair and IOAPIC, the PIT, kvmclock.
struct VmKernelState {
  kvm_irqchip pic_master{};
  kvm_irqchip pic_slave{};
  kvm_irqchip ioapic{};
  kvm_pit_state2 pit{};
  kvm_clock_data clock{};
};

/// Why and how a VM stopped.
struct StopInfo {
  devices::StopReason reason = devices::StopReason::Error;
  uint32_t status = 0;  ///< debug-exit value or signal number
  std::string message;  ///< for errors: one line
};

/// Run state of the vCPUs (one target state for all of them).
enum class RunState { Running, Paused, Stopped };

class Vm final : public devices::VmControl {
 public:
  /// Creates the VM: memory slots first, then the in-kernel irqchip and PIT (a slot registered
  /// after KVM_CREATE_IRQCHIP costs 6–7 ms on the hosts we measured), then the vCPUs with CPUID.
  static Result<std::unique_ptr<Vm>> create(const Kvm& kvm, const VmConfig& config, GuestMemory memory);
  ~Vm() override;

  const GuestMemory& memory() const { return memory_; }
  /// See GuestMemory::leak.
  void leak_memory() { memory_.leak(); }
  Buses& buses() { return buses_; }
  Vcpu& vcpu(size_t i) { return *vcpus_.at(i); }
  size_t vcpu_count() const { return vcpus_.size(); }
  int fd() const { return vm_fd_.get(); }

  /// MSI vectors and ioeventfds for devices (KVM GSI routing, irqfd, ioeventfd).
  devices::VmIo& io() { return *io_; }
  /// MSI routes set while the batch lives reach KVM together (KvmVmIo::hold_routes).
  RouteBatch batch_routes() { return RouteBatch(*io_); }
  /// An edge-triggered interrupt line to ISA IRQ / GSI `gsi` (KVM_IRQ_LINE).
  std::shared_ptr<devices::IrqLine> irq_line(uint32_t gsi);

  /// Sets the boot vCPU up to enter `entry` (the others wait for INIT/SIPI in the in-kernel LAPIC).
  Result<> prepare_boot(const boot::BootEntry& entry);

  /// Reads KVM's per-VM state (KVM_GET_IRQCHIP ×3, KVM_GET_PIT2, KVM_GET_CLOCK). Paused VM only.
  Result<VmKernelState> save_kernel_state() const;
  /// Writes back its interrupt controllers (the PIC pair and the IOAPIC); restore_timers() the rest.
  Result<> restore_irqchips(const VmKernelState& state);
  /// Its timers: the PIT (counting afresh from now) and kvmclock (stepped to the present with
  /// `clock_to_now`); the interrupt controllers are left as they are, with whatever was raised
  /// since they were restored.
  Result<> restore_timers(const VmKernelState& state, bool clock_to_now);

  /// Starts the vCPU threads and blocks until the VM stops: by a device or an exit (request_stop),
  /// or by SIGINT/SIGTERM. Call from the thread that blocked those signals with block_signals().
  /// `started`, if given, is called on this thread once every vCPU thread is made, while the guest
  /// runs: work that need not come before the guest's first instruction (a fork child's
  /// registration).
  StopInfo run(const std::function<void()>& started = {});

  /// Before run(): its vCPU threads start paused (created, parked) and wait for resume(). A pool's
  /// clone is run this way before it is asked for, so its request does not wait for threads.
  void start_paused();

  /// With start_paused(), before run(): vCPU 0, once parked, calls `gate` on its own thread instead
  /// of waiting for resume(). `gate` returns true to run: the VM resumes from vCPU 0's thread, which
  /// goes straight on into KVM_RUN (no other thread has to wake first: a pool's member takes its
  /// request there); false to wait as usual (for resume(), or a stop that `gate` requested).
  void start_on(std::function<bool()> gate);
  /// Whether a stop was requested (a `gate` that waits checks it).
  bool stopping() const { return stopping_; }

  /// Pauses every vCPU (each completes a pending I/O exit first); returns when all are paused.
  /// Only while run() is running (on another thread).
  void pause();
  /// Resumes paused vCPUs.
  void resume();

  void request_stop(devices::StopReason reason, uint32_t status = 0) override;
  void request_stop(StopInfo info);

  /// Blocks SIGINT, SIGTERM and the internal wake-up signal in the calling thread (call early in
  /// main(), before any thread starts, so that every thread inherits the mask).
  static void block_signals();

  /// When vCPU 0 first entered KVM_RUN, and when it first came back (steady_clock), once it has:
  /// how a clone's start is timed (GET /vm "start").
  struct FirstRun {
    std::optional<std::chrono::steady_clock::time_point> entered, exited;
  };
  FirstRun first_run() const;

 private:
  Vm(const Kvm& kvm, Fd vm_fd, GuestMemory memory) : kvm_(kvm), vm_fd_(std::move(vm_fd)), memory_(std::move(memory)) {}
  Result<> setup_kvm(const VmConfig& config);
  void vcpu_thread(Vcpu& vcpu);
  void kick_all();
  /// Called on a vCPU thread that saw a pause request: finish pending I/O, then wait.
  void park(Vcpu& vcpu);

  const Kvm& kvm_;
  Fd vm_fd_;
  GuestMemory memory_;
  std::unique_ptr<KvmVmIo> io_;  // before buses_: devices on the buses may still use it when destroyed
  Buses buses_;
  std::vector<std::unique_ptr<Vcpu>> vcpus_;
  std::mutex threads_mutex_;  // guards threads_ against kick_all() during start-up
  std::vector<std::thread> threads_;
  std::unique_ptr<std::atomic<bool>[]> vcpu_ended_;  // per vCPU: its thread has ended (run() kicks until all have)
  static constexpr auto kRekick = std::chrono::milliseconds(10);  // a kick not taken is repeated this often

  std::mutex mutex_;
  std::condition_variable cv_;
  RunState target_ = RunState::Running;  // guarded by mutex_
  size_t parked_ = 0;                    // vCPUs waiting in park(); guarded by mutex_
  uint64_t pauses_ = 0;                  // pause()s of a running VM, resume()s of a paused one; guarded by mutex_
  std::optional<StopInfo> stop_;         // first stop request wins; guarded by mutex_
  std::atomic<bool> stopping_{false};
  std::function<bool()> gate_;  // start_on(); set before run(), taken by vCPU 0's thread
  pthread_t waiter_{};
  std::atomic<bool> have_waiter_{false};
  std::atomic<int64_t> first_entry_ns_{0}, first_exit_ns_{0};  // steady_clock; 0: not yet
};

}  // namespace vmm
