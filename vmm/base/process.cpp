#include "vmm/base/process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>

#include "vmm/base/fd.hpp"

extern char** environ;

namespace vmm {

namespace {

std::string joined(const std::vector<std::string>& argv) {
  std::string s;
  for (const auto& a : argv) s += (s.empty() ? "" : " ") + a;
  return s;
}

}  // namespace

Result<> run_command(const std::vector<std::string>& argv, std::string_view input) {
  if (argv.empty()) return fail("run_command: no program");
  int in[2], err[2];
  if (::pipe2(in, O_CLOEXEC) != 0) return fail("pipe: {}", errno_text(errno));
  Fd in_r(in[0]), in_w(in[1]);
  if (::pipe2(err, O_CLOEXEC) != 0) return fail("pipe: {}", errno_text(errno));
  Fd err_r(err[0]), err_w(err[1]);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in_r.get(), 0);
  posix_spawn_file_actions_adddup2(&fa, err_w.get(), 2);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);  // the VMM's blocked signals are not the tool's
  sigset_t defaults;  // nor its ignored SIGPIPE (main)
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  const int rc = ::posix_spawnp(&pid, args[0], &fa, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return fail("{}: cannot run: {}", argv[0], errno_text(rc));
  in_r = Fd();
  err_w = Fd();
  // The input is small (a few commands): written whole before its stderr is read, which a tool
  // that reads all its input first (ip -batch, nft -f) allows. A tool that exits first makes the
  // write fail with EPIPE: its SIGPIPE (sent to this thread) is blocked here and taken back.
  sigset_t pipe_set, old_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  ::pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
  for (size_t off = 0; off < input.size();) {
    const ssize_t n = ::write(in_w.get(), input.data() + off, input.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  const timespec now{};
  while (::sigtimedwait(&pipe_set, nullptr, &now) > 0) {
  }
  ::pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
  in_w = Fd();
  std::string errors;
  char buf[1024];
  for (;;) {
    const ssize_t n = ::read(err_r.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (errors.size() < 4096) errors.append(buf, static_cast<size_t>(n));
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return {};
  while (!errors.empty() && (errors.back() == '\n' || errors.back() == ' ')) errors.pop_back();
  if (auto nl = errors.find('\n'); nl != std::string::npos) errors.resize(nl);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 127 && errors.empty()) errors = "not found";
  return fail("`{}` failed: {}", joined(argv), errors.empty() ? fmt::format("status {}", status) : errors);
}

Result<> wait_exit(const Fd& pidfd, double timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) return fail("still running after {:.0f} s", timeout_s);
    pollfd p{.fd = pidfd.get(), .events = POLLIN, .revents = 0};
    const int n = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 1000)));
    if (n > 0) return {};
    if (n < 0 && errno != EINTR) return fail("poll: {}", errno_text(errno));
  }
}

void unblock_stop_signals() {
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  ::pthread_sigmask(SIG_UNBLOCK, &stop_signals, nullptr);
}

int pending_stop_signal() {
  sigset_t pending;
  sigemptyset(&pending);
  if (::sigpending(&pending) != 0) return 0;
  for (int sig : {SIGINT, SIGTERM}) {
    if (sigismember(&pending, sig) == 1) return sig;
  }
  return 0;
}

}  // namespace vmm
