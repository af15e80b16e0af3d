// The process-wide I/O pool that runs the qcow2 image's large transfers (disk/file_io.hpp, post_io)
// across fork(): a live fork's child, or a pool's member, inherits the pool object but none of its
// threads. Until 2026-12-05 a task posted there in the child waited forever (a fork's child hung on
// its first large read from its qcow2 overlay).
#include <doctest/doctest.h>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>

#include "child_helpers.hpp"
#include "disk/file_io.hpp"

using namespace std::chrono_literals;

namespace {

/// Posts a task to the pool and waits for it: true if it ran within 10 s.
bool ran_in_time() {
  std::mutex mu;
  std::condition_variable cv;
  bool ran = false;
  vmm::disk::post_io([&] {
    std::lock_guard lock(mu);
    ran = true;
    cv.notify_one();
  });
  std::unique_lock lock(mu);
  return cv.wait_for(lock, 10s, [&] { return ran; });
}

}  // namespace

TEST_CASE("disk: the I/O pool runs tasks in a fork()ed child of a process that used it") {
  REQUIRE(ran_in_time());  // the parent uses the pool: it exists, with its threads
  const std::string said = test_child::run([] { return ran_in_time() ? std::string("ran") : std::string("not run"); });
  CHECK_MESSAGE(said == "ran", "the child's task: ", said);
}

TEST_CASE("disk: the I/O pool runs tasks on the caller in a process that can make no thread") {
  const std::string said = test_child::run([] {
    if (!test_child::forbid_threads()) return std::string("cannot forbid threads");
    return ran_in_time() ? std::string("ran") : std::string("not run");
  });
  CHECK_MESSAGE(said == "ran", "the child's task: ", said);
}
