// Tests that run their subject in a fork()ed child: a child that inherits a process's state (the
// I/O pool), or one held to a limit the test process must not be (no thread can be made).
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>

namespace test_child {

/// True once every thread of this process but the calling one has been asleep ('S') in three
/// samples 20 ms apart; false after 10 s. fork() only then: a thread that holds a lock at the fork
/// leaves it held in the child. glibc's malloc guards itself across fork(); GCC 12's ASan allocator
/// does not, and a pool thread still starting (or freeing the task it ran) left the child's
/// allocator locked.
inline bool others_asleep() {
  using namespace std::chrono_literals;
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

/// In a child: from here on no thread or process can be made (RLIMIT_NPROC 0; root is not held to
/// it, so as user and group nobody, which also drops every capability). False if that failed.
inline bool forbid_threads() {
  const rlimit none{.rlim_cur = 0, .rlim_max = 0};
  if (::setrlimit(RLIMIT_NPROC, &none) != 0) return false;
  if (::getuid() == 0 && (::setresgid(65534, 65534, 65534) != 0 || ::setresuid(65534, 65534, 65534) != 0)) return false;
  return true;
}

/// Runs `body` in a fork()ed child and returns the text it returned; a child that did not answer
/// within `timeout` or ended otherwise gives a text that says so ("child: ...").
inline std::string run(const std::function<std::string()>& body, std::chrono::seconds timeout = std::chrono::seconds(20)) {
  if (!others_asleep()) return "child: the process's other threads did not all go to sleep within 10 s";
  int p[2];
  if (::pipe(p) != 0) return "child: pipe failed";
  const pid_t pid = ::fork();
  if (pid < 0) return "child: fork failed";
  if (pid == 0) {
    ::close(p[0]);
    const std::string said = body();
    (void)!::write(p[1], said.data(), said.size());
    ::_exit(0);
  }
  ::close(p[1]);
  std::string said;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    pollfd pfd{.fd = p[0], .events = POLLIN, .revents = 0};
    if (left <= 0 || ::poll(&pfd, 1, static_cast<int>(left)) <= 0) {
      said = "child: no answer within " + std::to_string(timeout.count()) + " s (so far: '" + said + "')";
      ::kill(pid, SIGKILL);
      break;
    }
    char buf[512];
    const ssize_t n = ::read(p[0], buf, sizeof buf);
    if (n <= 0) break;
    said.append(buf, static_cast<size_t>(n));
  }
  ::close(p[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (WIFSIGNALED(status) && WTERMSIG(status) != SIGKILL) said = "child: killed by signal " + std::to_string(WTERMSIG(status)) + " ('" + said + "')";
  return said;
}

}  // namespace test_child
