// OffCpuWake (vmm/base/wake_hint.hpp): the affinity a woken thread gets, and gets back.
#include <doctest/doctest.h>
#include <pthread.h>
#include <sched.h>

#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>

#include "vmm/base/wake_hint.hpp"

TEST_CASE("wake hint: a thread kept off the waker's CPU may run on every other one, and anywhere again once it allows itself") {
  cpu_set_t all;
  CPU_ZERO(&all);
  REQUIRE(::sched_getaffinity(0, sizeof all, &all) == 0);
  std::mutex mu;
  std::condition_variable cv;
  bool woken = false;
  cpu_set_t seen_woken, seen_after;
  CPU_ZERO(&seen_woken);
  CPU_ZERO(&seen_after);
  std::optional<vmm::OffCpuWake> hint;
  std::thread t([&] {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return woken; });
    ::pthread_getaffinity_np(::pthread_self(), sizeof seen_woken, &seen_woken);
    hint->allow_all();
    ::pthread_getaffinity_np(::pthread_self(), sizeof seen_after, &seen_after);
  });
  hint.emplace(t.native_handle());
  // Pinned to one CPU, so that the CPU it avoids is known.
  int here = -1;
  for (int cpu = 0; cpu < CPU_SETSIZE && here < 0; ++cpu) here = CPU_ISSET(cpu, &all) ? cpu : -1;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(here, &one);
  REQUIRE(::sched_setaffinity(0, sizeof one, &one) == 0);
  hint->avoid_this_cpu();
  const int avoided = hint->avoided();
  {
    std::lock_guard lock(mu);
    woken = true;
  }
  cv.notify_one();
  t.join();
  REQUIRE(::sched_setaffinity(0, sizeof all, &all) == 0);
  if (CPU_COUNT(&all) < 2) {
    // Nowhere else to go: nothing changed.
    CHECK(avoided == -1);
    CHECK(CPU_EQUAL(&seen_woken, &all));
  } else {
    CHECK(avoided == here);
    cpu_set_t others = all;
    CPU_CLR(here, &others);
    CHECK(CPU_EQUAL(&seen_woken, &others));
  }
  CHECK(CPU_EQUAL(&seen_after, &all));
}
