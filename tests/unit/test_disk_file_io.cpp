// The process-wide I/O pool that runs the qcow2 image's large transfers (disk/file_io.hpp, post_io)
// across fork(): a live fork's child, or a pool's member, inherits the pool object but none of its
// threads. Until 2026-12-05 a task posted there in the child waited forever (a fork's child hung on
// its first large read from its qcow2 overlay).
#include <doctest/doctest.h>

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "disk/file_io.hpp"

using namespace std::chrono_literals;

TEST_CASE("disk: the I/O pool runs tasks in a fork()ed child of a process that used it") {
  {  // the parent uses the pool: it exists, with its threads
    std::mutex mu;
    std::condition_variable cv;
    bool ran = false;
    vmm::disk::post_io([&] {
      std::lock_guard lock(mu);
      ran = true;
      cv.notify_one();
    });
    std::unique_lock lock(mu);
    REQUIRE(cv.wait_for(lock, 10s, [&] { return ran; }));
  }
  int p[2];
  REQUIRE(::pipe(p) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(p[0]);
    const int out = p[1];
    vmm::disk::post_io([out] {
      const char c = 'x';
      (void)!::write(out, &c, 1);
    });
    ::sleep(30);  // the parent kills it
    ::_exit(1);
  }
  ::close(p[1]);
  pollfd pfd{.fd = p[0], .events = POLLIN, .revents = 0};
  const int ready = ::poll(&pfd, 1, 10'000);
  char c = 0;
  const bool got = ready == 1 && ::read(p[0], &c, 1) == 1 && c == 'x';
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  ::close(p[0]);
  CHECK_MESSAGE(got, "the child's task did not run within 10 s");
}
