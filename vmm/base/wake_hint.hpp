// A hint to the scheduler for a thread that another wakes while it goes on working: keep the
// woken thread off the waker's CPU. Linux places a woken thread on the waker's CPU when it judges
// the other CPUs busy, and a waker that runs on (a vCPU thread entering its guest) then holds it
// off until the next tick moves it: seen on a 2-CPU host, Linux 6.18, HZ=250, where a pool's
// member woke its finishing thread and went into the guest, the other CPU idle: the finisher ran
// 2-4 ms late in 1 request of 3 (`perf sched timehist`). One CPU (or none other allowed): no change.
#pragma once

#include <pthread.h>
#include <sched.h>

namespace vmm {

class OffCpuWake {
 public:
  /// For `thread`, with the CPUs the calling thread may use now as the set it gets back.
  explicit OffCpuWake(pthread_t thread);
  /// From the waker, before it wakes the thread: the thread may run anywhere but on the caller's
  /// CPU (a system call only when the caller has moved since the last time).
  void avoid_this_cpu();
  /// From the woken thread once it runs: anywhere it could before (threads it starts inherit it).
  void allow_all();
  /// The CPU kept free of it, -1 if none.
  int avoided() const { return avoided_; }

 private:
  pthread_t thread_;
  cpu_set_t allowed_;
  int avoided_ = -1;
};

}  // namespace vmm
