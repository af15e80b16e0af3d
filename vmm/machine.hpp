// A whole virtual machine as one object: the KVM VM over its guest memory, the platform devices
// on its buses, and the I/O thread's event loop. The one builder of both paths: a boot loads a
// kernel into a fresh machine; a restore (clone/) loads a saved state into one built the same way.
// It also pauses a running machine into a quiescent state that can be captured, and resumes it.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "vmm/base/event_loop.hpp"
#include "vmm/base/guest_memory.hpp"
#include "vmm/kvm.hpp"
#include "vmm/platform.hpp"
#include "vmm/vm.hpp"

namespace vmm {

class Machine {
 public:
  /// Builds the VM over `memory` (memory slots, irqchip, vCPUs with CPUID) and attaches the
  /// platform (`platform.loop` is ignored: the machine owns its loop, `loop`).
  static Result<std::unique_ptr<Machine>> create(const Kvm& kvm, GuestMemory memory, const VmConfig& vm,
                                                 PlatformConfig platform, std::unique_ptr<EventLoop> loop);
  ~Machine();

  Vm& vm() { return *vm_; }
  Platform& platform() { return *platform_; }
  EventLoop& loop() { return *loop_; }
  const Kvm& kvm() const { return kvm_; }

  /// Starts the I/O thread and the vCPUs; blocks until the VM stops (see Vm::run, and its
  /// `started`), then stops the I/O thread and the console.
  StopInfo run(const std::function<void()>& started = {});

  /// While run() runs, from another thread: pauses every vCPU (a pending I/O exit completes first),
  /// parks the I/O thread, waits until every virtio request in flight has completed (qcow2 worker
  /// jobs included) and flushes every disk (qcow2 metadata written back). Afterwards nothing
  /// writes guest memory or raises an interrupt until resume(). Fails if requests do not drain
  /// within `timeout`.
  Result<> quiesce(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  /// quiesce(), at a moment when every vCPU waits in HLT or for a SIPI (the guest idle) if one comes within
  /// `grace`: while some vCPU is not halted, it resumes and pauses again a little later. Returns
  /// whether the guest was caught idle (false: paused as it was when `grace` ran out).
  Result<bool> quiesce_at_rest(std::chrono::milliseconds grace, std::chrono::milliseconds timeout = std::chrono::seconds(30));
  /// The grace that `template create` (after its ready line) and the API's "at_rest" give a guest.
  static constexpr std::chrono::milliseconds kAtRestGrace{200};
  /// Lets the I/O thread and the vCPUs run on after quiesce().
  void resume();
  /// Lets the I/O thread alone run on (the vCPUs stay paused).
  void resume_io();

  /// The loop, driven by the holder (after quiesce(), on the API's thread) as long as it lives:
  /// run(), ending after a stop, drains the loop only once no one else drives it.
  class LoopLease {
   public:
    explicit LoopLease(Machine& m) : m_(m) {}
    LoopLease(const LoopLease&) = delete;
    LoopLease& operator=(const LoopLease&) = delete;
    ~LoopLease();

   private:
    Machine& m_;
  };
  /// A lease of the loop; fails ("the VM is stopping") once the VM stops.
  Result<std::unique_ptr<LoopLease>> lease_loop();

 private:
  Machine(const Kvm& kvm, std::unique_ptr<EventLoop> loop) : kvm_(kvm), loop_(std::move(loop)) {}
  /// The I/O thread lives as long as run() does: a pause parks it (it leaves the loop and waits)
  /// rather than ending it, because a thread that leaves requests in an io_uring pays for its exit
  /// (the kernel cancels them itself, apparently completing them a tick later: 4-6 ms here against
  /// ~15 us for a park and wake-up, scripts/bench/uring-exit.c; it was most of a live fork's pause).
  Result<> start_io();  ///< creates the thread, or wakes it from a park
  void park_io();   ///< returns once the thread is out of the loop (or has ended on an error)
  void end_io();    ///< ends the thread and joins it
  void io_thread();
  size_t requests_in_flight() const;

  const Kvm& kvm_;
  std::unique_ptr<EventLoop> loop_;  // outlives the devices (declared first, destroyed last)
  std::unique_ptr<Vm> vm_;
  std::unique_ptr<Platform> platform_;
  enum class IoWant { Run, Park, End };
  std::mutex io_mutex_;
  std::condition_variable io_cv_;
  IoWant io_want_ = IoWant::Run;  // guarded by io_mutex_
  bool io_parked_ = false;        // out of the loop, waiting or ended; guarded by io_mutex_
  bool quiescing_ = false;        // a LoopLease is held: run() drains the loop only after; guarded by io_mutex_
  bool io_ended_ = false;         // run() ended the thread and drives the loop: none is started; guarded by io_mutex_
  std::thread io_;
  bool io_started_ = false;  // io_ was started and not yet joined; guarded by io_mutex_
  Result<> io_result_;
  bool io_abandoned_ = false;  // run() left requests in flight: guest memory is not unmapped
};

}  // namespace vmm
