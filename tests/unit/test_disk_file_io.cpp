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
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <condition_variable>
#include <mutex>

#include "disk/file_io.hpp"

using namespace std::chrono_literals;

namespace {

/// True once every thread of this process but the calling one has been asleep ('S') in three
/// samples 20 ms apart; false after 10 s.
bool others_asleep() {
  const std::string self = std::to_string(::gettid());
  int quiet = 0;
  for (auto end = std::chrono::steady_clock::now() + 10s; std::chrono::steady_clock::now() < end;) {
    bool all = true;
    for (const auto& t : std::filesystem::directory_iterator("/proc/self/task")) {
      if (t.path().filename() == self) continue;
      std::ifstream stat(t.path() / "stat");
      std::string line;
      std::getline(stat, line);
      const auto paren = line.rfind(')');
      if (paren == std::string::npos || paren + 2 >= line.size() || line[paren + 2] != 'S') all = false;
    }
    quiet = all ? quiet + 1 : 0;
    if (quiet == 3) return true;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

}  // namespace

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
  // fork() only once every other thread sleeps: one that holds a lock at the fork leaves it held
  // in the child. glibc's malloc guards itself across fork(); GCC 12's ASan allocator does not, and
  // a pool thread still starting (or freeing the task it ran) left the child's allocator locked.
  REQUIRE_MESSAGE(others_asleep(), "the process's other threads did not all go to sleep within 10 s");
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
