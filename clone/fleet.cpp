// `vmm run --clone-of TEMPLATE --count N`: a fleet in one command. One launcher opens the template
// once (manifest, state, one copy-on-write mapping of the memory file, the HTTP plugin loaded) and
// fork()s a process per clone; each child starts its clone exactly as `vmm run --clone-of` does
// (own directory, overlays, identity, console log, API socket, TAP from the pattern) over the
// mapping it inherited, reports to the launcher through a pipe, and runs on its own: in its own
// session, independent of the launcher's life. The launcher prints a line per clone as it starts,
// or why it could not (its process not forked, its start failed, or its VM stopped before its guest
// ran). Without --detach it stays, and on SIGINT/SIGTERM stops them all; with --detach it returns
// once every clone runs (or failed).
#include "clone/fleet.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>

#include "clone/live.hpp"
#include "vmm/api/http.hpp"
#include "vmm/api/registry.hpp"
#include "vmm/base/dir_entries.hpp"
#include "vmm/base/dir_lock.hpp"
#include "vmm/exit_status.hpp"

namespace vmm::clone {

namespace fs = std::filesystem;

namespace {

struct Member {
  std::string name;
  pid_t pid = -1;
  int report = -1;     ///< read end of its pipe, until it reported
  std::string result;  ///< its report: "ok MS" or "error WHY"
  std::chrono::steady_clock::time_point forked;
  bool dir_existed = false;  ///< a clone of its name was there before: never the launcher's to remove
  bool ended = false;
  int status = 0;
  /// It reported an error and is tearing down (its TAPs, its namespace: host tools): reaped
  /// without waiting, its line printed then (a blocking wait held every other report, the
  /// start timeout and Ctrl-C).
  bool failing = false;
  std::chrono::steady_clock::time_point failing_since;  ///< when its error was read
};

}  // namespace

int run_fleet(const CloneOptions& o, unsigned count, bool detach) {
  if (o.console_given && o.console.kind == devices::ConsoleSpec::Kind::Stdio) {
    return report_error(exit_code::kUsage, "--console stdio cannot be shared by a fleet: each clone writes its console.log");
  }
  if (o.console_given && o.console.kind == devices::ConsoleSpec::Kind::File && count > 1 &&
      o.console.path.find("{name}") == std::string::npos && o.console.path.find("{i}") == std::string::npos) {
    return report_error(exit_code::kUsage, fmt::format("--console file:{}: one file for every clone of the fleet; put {{name}} or "
                                                       "{{i}} in its path", o.console.path));
  }
  // One MAC for every clone of the fleet: two on a network would take each other's frames (a
  // pool's and a fork's refuse mac= for the same reason). In namespaces of their own they do not meet.
  for (const auto& n : o.nets) {
    // Nor one TAP (or namespace) for all: every clone but the first failed on it.
    if (auto r = check_net_per_vm(n); count > 1 && !r) return report_error(exit_code::kUsage, fmt::format("--net: {}", r.error().message()));
    if (count > 1 && !n.mac.empty() && n.netns.empty()) {
      return report_error(exit_code::kUsage, fmt::format("--net tap={},mac={}: every clone of the fleet would have that MAC; leave "
                                                         "mac= out (each gets its own) or give each its netns=", n.tap, n.mac));
    }
  }
  OpenTemplate t;
  if (auto f = open_template(o, t)) return report_failure(*f);
  // Said once here rather than by every clone.
  if (auto r = check_net_count("fleet", "template", t.manifest.nets.size(), o.nets.size()); !r) {
    return report_error(exit_code::kUsage, r.error().message());
  }
  const std::string prefix = o.name.empty() ? t.manifest.name : o.name;
  // The launcher holds a pipe per clone until it reports: raise the soft limit on open files to
  // the hard one, so that a thousand clones do not need the user's ulimit changed.
  raise_open_file_limit();
  // ... and refuses a fleet whose pipes would not fit under the hard limit, before any clone starts
  // (rather than failing at the first pipe too many, with clones already running).
  if (rlimit nofile{}; ::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY) {
    const auto open_now = static_cast<uint64_t>(dir_entries("/proc/self/fd").size());
    constexpr uint64_t kSpare = 16;  // the plugin's, a console's, what the C library opens
    if (open_now + count + kSpare > nofile.rlim_cur) {
      return report_error(exit_code::kVmmError,
                          fmt::format("--count {}: the launcher holds a pipe per clone and may open {} files (RLIMIT_NOFILE), {} "
                                      "open already: raise the hard limit (ulimit -Hn, LimitNOFILE=) or start fewer",
                                      count, nofile.rlim_cur, open_now));
    }
  }
  // The children inherit the plugin instead of loading it each (a missing plugin is only a warning).
  (void)api::http_plugin();
  // The launcher is the one to stop them all: its signals are handled here, not by a VM.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGHUP);
  sigaddset(&sigs, SIGCHLD);
  ::pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  // A stop asked for while the clones start (Ctrl-C during a thousand, the terminal closed, a
  // service manager's SIGTERM) is seen between two clones: no more start, and those started stop.
  sigset_t stops = sigs;
  sigdelset(&stops, SIGCHLD);
  int interrupted = 0;
  auto check_interrupt = [&] {
    const timespec now{};
    if (interrupted == 0) interrupted = std::max(0, ::sigtimedwait(&stops, nullptr, &now));
    return interrupted != 0;
  };

  if (!o.ip.empty()) {
    // Every clone's address, checked before the first starts.
    if (auto last = ip_plus(o.ip, count - 1); !last) return report_error(exit_code::kUsage, last.error().message());
    const std::string& gateway = o.gateway.empty() ? t.manifest.gateway : o.gateway;
    if (auto r = check_ip_gateway(o.ip, count, gateway); !r) return report_error(exit_code::kUsage, r.error().message());
  } else if (!o.gateway.empty()) {
    // The clones keep the template's address: the gateway must be on its network.
    if (auto r = check_ip_gateway(t.manifest.ip, 1, o.gateway); !r) return report_error(exit_code::kUsage, r.error().message());
  }
  std::vector<Member> members(count);
  for (unsigned i = 0; i < count; ++i) {
    if (check_interrupt()) break;
    Member& mb = members[i];
    mb.name = fmt::format("{}-{}", prefix, i + 1);
    CloneOptions co = o;
    co.name = mb.name;
    co.api_socket.clear();
    co.index = i + 1;  // names from patterns ({name}, {i}) are made by prepare_clone
    if (!o.ip.empty()) {
      auto ip = ip_plus(o.ip, i);  // one address each, from the first
      if (!ip) return report_error(exit_code::kUsage, ip.error().message());
      co.ip = *ip;
    }
    std::error_code ec;
    mb.dir_existed = fs::exists(t.sdir / "clones" / mb.name, ec);
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) {  // (the limit checked above; another limit, memory)
      mb.ended = true;
      fmt::print("{} failed: cannot make its pipe: {}\n", mb.name, errno_text(errno));
      std::fflush(stdout);
      continue;
    }
    co.started = std::chrono::steady_clock::now();
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::setsid();
      sigset_t hup;  // blocked for the launcher only: a clone keeps SIGHUP's default
      sigemptyset(&hup);
      sigaddset(&hup, SIGHUP);
      ::pthread_sigmask(SIG_UNBLOCK, &hup, nullptr);
      ::close(p[0]);
      for (auto& other : members) {
        if (other.report >= 0) ::close(other.report);
      }
      if (detach) {
        // Nothing of the launcher's terminal for input; its output until it runs (a failure to
        // start is reported there too), then the clone's own log.
        const int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null >= 0) ::dup2(null, 0);
      }
      // Its start, or why it could not start, goes to the launcher through the pipe: the launcher
      // prints one line per clone, with its name.
      auto tell = [fd = p[1]](const std::string& line) { (void)!::write(fd, line.data(), line.size()); };
      const int status = start_clone(t, co, mb.name, /*inherited=*/true,
                                     StartReport{.when = Announce::WhenServing,
                                                 .started = [&](const std::string& ms) {
                                                   // (its log first: the launcher's client may look for it once told)
                                                   if (detach) detach_output(t.sdir / "clones" / mb.name / "vmm.log");
                                                   tell("ok " + ms + "\n");
                                                   ::close(p[1]);
                                                 },
                                                 .failed = [&](const Failure& f) { tell("error " + f.message + "\n"); }});
      ::_exit(status);
    }
    ::close(p[1]);
    if (pid < 0) {
      const int err = errno;
      ::close(p[0]);
      mb.ended = true;
      fmt::print("{} failed: cannot fork its process: {}\n", mb.name, errno_text(err));
      std::fflush(stdout);  // before the next fork: a child would inherit what is buffered
      continue;
    }
    mb.pid = pid;
    mb.report = p[0];
    mb.forked = std::chrono::steady_clock::now();
  }

  t.in_use.reset();  // each clone holds the template's lock until its record names the template

  // A clone killed, or ended without a word, before it started could not remove its directory (one
  // that reported an error did): nothing of it stays behind.
  auto remove_unstarted = [&](const Member& m) {
    if (m.dir_existed) return;
    // Under its name in the registry, as `vmm clone rm` removes one: not if a VM of that name runs
    // (another fleet's clone that took the name since), and moved aside before it goes.
    auto taken = api::Registration::create(t.sdir, m.name);
    if (!taken) return;
    const fs::path dir = t.sdir / "clones" / m.name;
    if (auto l = lock_dir(dir, LOCK_EX | LOCK_NB); l && !l->busy) (void)bury(dir, l->fd);
  };
  // Reports: one line per clone, in the order they come.
  auto pending = [&] { return std::ranges::count_if(members, [](const Member& m) { return m.report >= 0 || m.failing; }); };
  auto failed_line = [&](Member& m, int status) {
    m.failing = false;
    m.ended = true;
    m.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    // Why, as the clone said it; a clone that ended without a word (killed) has its status.
    const std::string why = m.result.starts_with("error ") ? m.result.substr(6) : "it ended before it ran";
    if (!m.result.starts_with("error ")) remove_unstarted(m);
    fmt::print("{} failed: {} (exit status {})\n", m.name, why, m.status);
    std::fflush(stdout);
  };
  unsigned ok = 0;
  while (pending() > 0 && !check_interrupt()) {
    std::vector<pollfd> pfds;
    for (auto& m : members) {
      if (m.report >= 0) pfds.push_back(pollfd{.fd = m.report, .events = POLLIN, .revents = 0});
    }
    const int ready = ::poll(pfds.data(), pfds.size(), 100);
    for (auto& m : members) {
      if (ready <= 0 || m.report < 0) continue;
      pollfd probe{.fd = m.report, .events = POLLIN, .revents = 0};
      if (::poll(&probe, 1, 0) <= 0) continue;
      char buf[1024];
      const ssize_t n = ::read(m.report, buf, sizeof buf);
      ::close(m.report);
      m.report = -1;
      m.result = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
      if (const size_t nl = m.result.find('\n'); nl != std::string::npos) m.result.resize(nl);
      if (m.result.starts_with("ok ")) {
        ++ok;
        fmt::print("{} {} {} ms\n", m.name, m.pid, m.result.substr(3));
      } else {
        m.failing = true;  // reaped below
        m.failing_since = std::chrono::steady_clock::now();
      }
      std::fflush(stdout);
    }
    for (auto& m : members) {
      int status = 0;
      if (m.failing && ::waitpid(m.pid, &status, WNOHANG) == m.pid) failed_line(m, status);
    }
    // A clone that has not started in time (stuck opening its console on a FIFO nobody reads, a
    // TAP or a host tool that never answers) is given up: killed, and reported failed.
    const auto now = std::chrono::steady_clock::now();
    for (auto& m : members) {
      // Its clean-up (not its start) is given 30 s from its report: killed in the middle at the
      // start timeout, it left its TAPs, namespace and directory.
      if (m.failing && now - m.failing_since >= std::chrono::seconds(30)) {
        ::kill(m.pid, SIGKILL);  // not reaped yet: the pid is its own
        int status = 0;
        ::waitpid(m.pid, &status, 0);
        failed_line(m, status);
        remove_unstarted(m);  // (its directory, at least)
        continue;
      }
      if (m.report < 0 || o.start_timeout_s <= 0 || now - m.forked < std::chrono::duration<double>(o.start_timeout_s)) continue;
      // What it said (or its end) in the last moment is read first, at the next turn.
      pollfd probe{.fd = m.report, .events = POLLIN, .revents = 0};
      if (::poll(&probe, 1, 0) > 0) continue;
      ::kill(m.pid, SIGKILL);  // its pipe is open: it has not ended, the pid is its own
      int status = 0;
      ::waitpid(m.pid, &status, 0);
      ::close(m.report);
      m.report = -1;
      m.ended = true;
      m.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      remove_unstarted(m);
      fmt::print("{} failed: not started {:g} s after its process was made (killed)\n", m.name, o.start_timeout_s);
      std::fflush(stdout);
    }
  }
  auto running = [&] { return std::ranges::count_if(members, [](const Member& m) { return m.pid > 0 && !m.ended; }); };
  // Stops every clone that runs: SIGTERM (each stops its VM), SIGKILL at a second request.
  int stop_signal = 0;
  auto stop_all = [&](int sig) {
    if (sig == SIGTERM) fmt::print(stderr, "vmm: fleet {}: stopping {} clones\n", prefix, running());
    for (auto& m : members) {
      if (m.pid > 0 && !m.ended) ::kill(m.pid, sig);
    }
    stop_signal = sig;
  };
  const unsigned failed = count - ok;
  if (interrupted) {
    fmt::print(stderr, "vmm: fleet {}: interrupted ({}) while starting, {} of {} clones running\n", prefix,
               ::strsignal(interrupted), running(), count);
    stop_all(SIGTERM);
  } else {
    fmt::print(stderr, "vmm: fleet {}: {} of {} clones running{}\n", prefix, ok, count,
               failed ? fmt::format(", {} failed (see above)", failed) : "");
    if (detach) return failed ? exit_code::kVmmError : exit_code::kOk;
  }

  // Foreground (or a start that was interrupted): wait for the clones; SIGINT, SIGTERM or SIGHUP
  // stops them all, a second one kills them.
  while (running() > 0) {
    siginfo_t si{};
    if (::sigwaitinfo(&sigs, &si) < 0) continue;
    if (si.si_signo == SIGCHLD) {
      for (auto& m : members) {
        int status = 0;
        if (m.pid > 0 && !m.ended && ::waitpid(m.pid, &status, WNOHANG) == m.pid) {
          m.ended = true;
          m.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
          // One whose report was not read (a start interrupted, then stopped or killed): what it
          // said before it ended is there to read; one that ended without a word has its directory
          // removed, as above.
          if (m.report >= 0) {
            char buf[8];
            const ssize_t n = ::read(m.report, buf, sizeof buf);
            ::close(m.report);
            m.report = -1;
            if (n <= 0) remove_unstarted(m);
          }
        }
      }
    } else {
      stop_all(stop_signal == 0 ? SIGTERM : SIGKILL);
    }
  }
  if (interrupted) return 128 + interrupted;
  return failed ? exit_code::kVmmError : exit_code::kOk;
}

}  // namespace vmm::clone
