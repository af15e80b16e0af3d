#include "vmm/machine.hpp"

#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "vmm/base/thread.hpp"

namespace vmm {

Result<std::unique_ptr<Machine>> Machine::create(const Kvm& kvm, GuestMemory memory, const VmConfig& vm,
                                                 PlatformConfig platform, std::unique_ptr<EventLoop> loop) {
  if (!loop) return fail("a machine needs an event loop");
  std::unique_ptr<Machine> m(new Machine(kvm, std::move(loop)));
  // The devices, declared after the machine that owns their loop: a failure below destroys them
  // first (the parameter would outlive `m`, and its disks unregister from the loop as they go).
  PlatformConfig devices = std::move(platform);
  auto v = Vm::create(kvm, vm, std::move(memory));
  if (!v) return std::unexpected(v.error());
  m->vm_ = std::move(*v);
  devices.loop = m->loop_.get();
  auto p = attach_platform(*m->vm_, std::move(devices));
  if (!p) return std::unexpected(p.error());
  m->platform_ = std::move(*p);
  return m;
}

Machine::~Machine() {
  end_io();
  if (io_abandoned_ && vm_) vm_->leak_memory();
}

void Machine::io_thread() {
  ::pthread_setname_np(::pthread_self(), "vmm-io");
  for (;;) {
    auto r = loop_->run();  // until park_io() or end_io() stops the loop
    if (!r) {
      io_result_ = r;
      vm_->request_stop(StopInfo{.reason = devices::StopReason::Error, .status = 0, .message = "I/O thread: " + r.error().message()});
    }
    std::unique_lock lock(io_mutex_);
    if (!r || io_want_ == IoWant::End) {
      // Ending from the loop, which no other thread drives meanwhile (park_io() waits for
      // io_parked_): its watches are cancelled while it still runs, for a cheap exit.
      lock.unlock();
      if (r) loop_->release_thread();
      lock.lock();
      io_parked_ = true;
      io_cv_.notify_all();
      return;
    }
    io_parked_ = true;
    io_cv_.notify_all();
    io_cv_.wait(lock, [&] { return io_want_ != IoWant::Park; });
    // Ended while parked: the loop is the quiescing thread's now, so it is left alone.
    if (io_want_ == IoWant::End) return;
    io_parked_ = false;
  }
}

Result<> Machine::start_io() {
  std::lock_guard lock(io_mutex_);
  // Ended by run() (which then drives the loop itself): a resume that looked at the VM just before
  // it stopped must not start a second thread on the loop.
  if (io_want_ == IoWant::End || io_ended_) return {};
  io_want_ = IoWant::Run;
  if (!io_started_) {
    io_parked_ = false;
    auto t = start_thread("the I/O thread", [this] { io_thread(); });
    if (!t) return std::unexpected(t.error());
    io_ = std::move(*t);
    io_started_ = true;
  }
  io_cv_.notify_all();
  return {};
}

void Machine::park_io() {
  std::unique_lock lock(io_mutex_);
  if (!io_started_) return;
  // Ending (end_io() ran meanwhile): it still leaves the loop, and the caller may drive the loop
  // only once it has.
  if (io_want_ != IoWant::End) {
    io_want_ = IoWant::Park;
    if (!io_parked_) loop_->stop();  // parked already: a resume it has not woken for yet
  }
  io_cv_.wait(lock, [&] { return io_parked_; });
}

void Machine::end_io() {
  {
    std::lock_guard lock(io_mutex_);
    if (!io_started_) return;
    io_want_ = IoWant::End;
    if (!io_parked_) loop_->stop();
    io_cv_.notify_all();
  }
  io_.join();  // (io_ is this thread's alone meanwhile: the others look at io_started_)
  std::lock_guard lock(io_mutex_);
  io_started_ = false;
  // A later run() starts a new one (io_ended_ until then). io_parked_ stays true (an ended thread
  // counts as parked): a park_io() woken by the thread's end but not yet running would otherwise
  // see it false again and wait forever, holding its lease, and run() with it.
  io_want_ = IoWant::Run;
  io_ended_ = true;
}

StopInfo Machine::run(const std::function<void()>& started) {
  // A thread that cannot be made stops the VM before it runs, as an error of its own would.
  auto not_started = [&](const Error& e) {
    StopInfo stop{.reason = devices::StopReason::Error, .status = 0, .message = e.message()};
    vm_->request_stop(stop);
    return stop;
  };
  if (auto r = platform_->start(); !r) return not_started(r.error());
  {
    std::lock_guard lock(io_mutex_);
    io_ended_ = false;
  }
  if (auto r = start_io(); !r) {
    platform_->shutdown();
    return not_started(r.error());
  }
  StopInfo stop = vm_->run(started);
  end_io();
  {
    // A quiesce (the API's pause, snapshot or fork) that began before the stop drives the loop
    // until it gives up (it sees the stop): two threads must not reap one ring.
    std::unique_lock lock(io_mutex_);
    io_cv_.wait(lock, [&] { return !quiescing_; });
  }
  // Requests still in flight (the guest's last reads and writes, a large one on an io_uring
  // worker) complete before the devices, the image files and their locks, and guest memory go:
  // they write into guest memory and the files. This thread drives the loop now, 5 s at most.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  std::optional<Error> loop_failed;
  while (!loop_failed && requests_in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
    if (auto r = loop_->run_once(std::chrono::milliseconds(100)); !r) loop_failed = r.error();
  }
  // Requests that did not end (a file system that hangs, the loop failed): the guest's last writes
  // may be lost, which the exit status says, and what the kernel may still write into, guest
  // memory, stays mapped until the process ends (~Machine).
  const size_t abandoned = requests_in_flight();
  platform_->shutdown();
  if (abandoned > 0) {
    io_abandoned_ = true;
    if (stop.reason != devices::StopReason::Error) {
      return StopInfo{.reason = devices::StopReason::Error, .status = 0,
                      .message = fmt::format("{} disk request{} still in flight {} after the stop: abandoned (the guest's last writes may be lost)",
                                             abandoned, abandoned == 1 ? "" : "s", loop_failed ? fmt::format("({})", loop_failed->message()) : "5 s")};
    }
  }
  if (!io_result_ && stop.reason != devices::StopReason::Error) {
    return StopInfo{.reason = devices::StopReason::Error, .status = 0, .message = io_result_.error().message()};
  }
  return stop;
}

size_t Machine::requests_in_flight() const {
  size_t n = 0;
  for (const auto& t : platform_->transports()) n += t->in_flight();
  return n;
}

Result<std::unique_ptr<Machine::LoopLease>> Machine::lease_loop() {
  std::lock_guard lock(io_mutex_);
  if (vm_->stopping() || io_want_ == IoWant::End) return fail("the VM is stopping");
  if (quiescing_) return fail("another operation drives the VM's I/O");
  quiescing_ = true;
  return std::make_unique<LoopLease>(*this);
}

Machine::LoopLease::~LoopLease() {
  {
    std::lock_guard lock(m_.io_mutex_);
    m_.quiescing_ = false;
  }
  m_.io_cv_.notify_all();
}

Result<> Machine::quiesce(std::chrono::milliseconds timeout) {
  vm_->pause();
  platform_->serial().hold_input(true);  // taken again at resume
  // A VM that stops is not paused (its vCPUs left without completing their exits, and run() is
  // about to drive the loop to drain it): nothing to capture or fork.
  const auto stopped = [] { return fail("the VM is stopping"); };
  auto lease = lease_loop();
  if (!lease) return std::unexpected(lease.error());
  // The I/O thread parks between two batches of completions; from here on this thread drives the
  // loop, so completions still owed (io_uring, qcow2 workers) land before anything is captured.
  park_io();
  if (vm_->stopping()) return stopped();
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto drive_until = [&](auto done, const char* what) -> Result<> {
    while (!done()) {
      if (vm_->stopping()) return stopped();
      if (std::chrono::steady_clock::now() >= deadline) return fail("pausing: {} still pending after {} ms", what, timeout.count());
      if (auto r = loop_->run_once(std::chrono::milliseconds(100)); !r) return std::unexpected(r.error());
    }
    return {};
  };
  // Notifications the guest made before its vCPUs parked, which the I/O thread had not picked up
  // (their events wait in the loop), are served now too: a request the guest submitted before the
  // pause completes before it, not after a resume that may come much later (a guest that times its
  // wait would see the whole pause go by: the test guest did, forked while writing its disk in the
  // nested lane), and a snapshot or fork never carries a notified request that no one will serve.
  // A few rounds serve them all (each serves every event ready; a device's pass is bounded, and its
  // owed pass comes at the next round): events that keep coming while the guest is paused are not
  // the guest's (frames flooding a TAP, its receive ring full or its device not set up), and must
  // not hold the pause for ever. A restored device looks at its rings once anyway.
  constexpr unsigned kServeRounds = 16;
  for (;;) {
    for (unsigned round = 0;; ++round) {
      auto n = loop_->run_once(std::chrono::milliseconds(0));
      if (!n) return std::unexpected(n.error());
      if (*n > 0 && round < kServeRounds) continue;
      if (requests_in_flight() == 0) break;
      if (auto r = drive_until([&] { return requests_in_flight() == 0; }, "disk requests"); !r) return r;
    }
    // Every disk flushed: a qcow2 image writes its cached metadata back. What the callbacks count
    // lives on the heap: a flush still pending when this returns early (another disk's refused, the
    // deadline) completes later, on the I/O thread, after this frame is gone.
    struct Flushes {
      size_t pending = 0;
      Result<> error;
    };
    auto flushes = std::make_shared<Flushes>();
    for (const auto& d : platform_->disks()) {
      if (d->image().read_only()) continue;
      ++flushes->pending;
      auto r = d->flush_image([flushes, path = d->image().path()](int32_t res) {
        --flushes->pending;
        if (res < 0 && flushes->error) flushes->error = fail("flushing {}: {}", path.string(), errno_text(-res));
      });
      if (!r) {
        --flushes->pending;
        if (flushes->error) flushes->error = std::unexpected(r.error());
      }
    }
    if (auto r = drive_until([&] { return flushes->pending == 0; }, "disk flushes"); !r) return r;
    if (!flushes->error) return flushes->error;
    // Driving the flushes served the loop too: a notification whose event came only then started a
    // request, which must complete, and be flushed, before anything is captured (a snapshot would
    // hold a chain popped and never answered). The guest is paused: there are only so many.
    if (requests_in_flight() == 0) {
      // Quiescent: until the resume, whoever drives the loop (a snapshot reading the disks) serves
      // no device (frames on a TAP would be written into guest memory, interrupts raised).
      loop_->hold_devices(true);
      return {};
    }
  }
}

void Machine::resume_io() {
  loop_->hold_devices(false);
  // A VM stopping has no I/O thread to wake: run() drains the loop and ends.
  if (vm_->stopping()) return;
  platform_->serial().hold_input(false);
  // Only when no I/O thread was running is one made: after a quiesce it is woken.
  if (auto r = start_io(); !r) vm_->request_stop(StopInfo{.reason = devices::StopReason::Error, .status = 0, .message = r.error().message()});
}

Result<bool> Machine::quiesce_at_rest(std::chrono::milliseconds grace, std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + grace;
  auto wait = std::chrono::microseconds(100);
  for (;;) {
    if (auto q = quiesce(timeout); !q) return std::unexpected(q.error());
    bool halted = true;
    for (size_t i = 0; i < vm_->vcpu_count() && halted; ++i) {
      auto mp = vm_->vcpu(i).mp_state();
      if (!mp) return std::unexpected(mp.error());
      // Idle: in HLT, or an AP never started (wait-for-SIPI), which waits as long as its guest wants.
      halted = *mp == KVM_MP_STATE_HALTED || Vcpu::waits_for_sipi(*mp);
    }
    if (halted) return true;
    if (std::chrono::steady_clock::now() + wait >= until) return false;
    resume();
    std::this_thread::sleep_for(wait);
    wait = std::min<std::chrono::microseconds>(wait * 2, std::chrono::milliseconds(10));
  }
}

void Machine::resume() {
  resume_io();
  if (!vm_->stopping()) vm_->resume();
}

}  // namespace vmm
