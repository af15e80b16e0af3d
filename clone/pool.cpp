// `vmm pool TEMPLATE --size K`: a warm pool. The pool process opens the template once (state, one
// copy-on-write mapping of the memory file, the HTTP plugin) and keeps K member processes forked
// from it, each with its clone prepared as far as it can be before anyone asks for it: directory,
// overlays, console log, KVM VM over the inherited mapping, irqchip, vCPUs with their CPUID, the
// whole state restored (prepare_clone). A member then waits on its socket. A request (POST /clones
// on the pool's API socket, or `vmm run --clone-of T --pool SOCKET`) hands one out: it takes its
// hostname and IP, registers under its name, gets a new generation (notified) and the present
// time, starts its API and runs (launch_clone); the pool replaces it in the background. Clones
// handed out live on when the pool stops; members not handed out are discarded with their
// directories.
#include "clone/pool.hpp"
#include "clone/pool_member.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>

#include "clone/live.hpp"
#include "vmm/api/json_text.hpp"
#include "vmm/api/http.hpp"
#include "vmm/api/registry.hpp"
#include "vmm/api/service.hpp"
#include "vmm/base/process.hpp"
#include "vmm/base/thread.hpp"
#include "vmm/base/wake_hint.hpp"
#include "vmm/exit_status.hpp"
#include "vmm/identity.hpp"

namespace vmm::clone {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

using pool_member::receive_with_fd;
using pool_member::run_zygote;
using pool_member::send_text;

/// A member handed to the pool: its pid (a child of the zygote) and the pool's end of its socket.
struct Member {
  pid_t pid = -1;
  int fd = -1;
  std::string name;
};

constexpr std::string_view kZygoteEnded = "the pool's zygote ended";

/// The pool's side of the zygote.
class Zygote {
 public:
  /// Forks the zygote. Call before the process starts any thread.
  static Result<Zygote> start(OpenTemplate& t, const CloneOptions& o) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return fail("pool: socketpair: {}", errno_text(errno));
    const pid_t pid = ::fork();
    if (pid == 0) run_zygote(t, o, sv[1]);
    ::close(sv[1]);
    if (pid < 0) {
      ::close(sv[0]);
      return fail("pool: fork: {}", errno_text(errno));
    }
    return Zygote(pid, sv[0]);
  }
  Zygote(Zygote&& z) noexcept : pid_(std::exchange(z.pid_, -1)), fd_(std::exchange(z.fd_, -1)) {}
  Zygote& operator=(Zygote&&) = delete;
  ~Zygote() {
    if (fd_ >= 0) ::close(fd_);  // the zygote ends on EOF
    if (pid_ > 0) ::waitpid(pid_, nullptr, 0);
  }

  /// A new member named `name`, number `index` (forked, not yet prepared), or an error text.
  std::expected<Member, std::string> spawn(unsigned index, const std::string& name) {
    send_text(fd_, fmt::format("{} {}", index, name));
    const std::string tag = std::to_string(index) + " ";
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      pollfd p{.fd = fd_, .events = POLLIN, .revents = 0};
      if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
        return std::unexpected("the pool's zygote does not answer");
      }
      auto [text, fd] = receive_with_fd(fd_);
      if (text.empty() && fd < 0) return std::unexpected(std::string(kZygoteEnded));
      if (!text.starts_with(tag)) {
        // The answer to an earlier request that was given up on: its member (if one was made)
        // discards itself when its socket closes.
        if (fd >= 0) ::close(fd);
        continue;
      }
      text.erase(0, tag.size());
      if (fd < 0) return std::unexpected(text);
      Member m;
      m.fd = fd;
      if (std::from_chars(text.data(), text.data() + text.size(), m.pid).ec != std::errc()) {
        ::close(fd);
        return std::unexpected("the pool's zygote said: " + text);
      }
      m.name = name;
      return m;
    }
  }

 private:
  Zygote(pid_t pid, int fd) : pid_(pid), fd_(fd) {}
  pid_t pid_;
  int fd_;
};

/// What a member that was not handed out leaves once it has ended: nothing, unless it was killed
/// (its clone's directory, its unpublished entry in STATE/run). A member whose socket closed may
/// hold its entry's lock a moment longer (a process's files close one by one as it exits), one
/// just killed until it is gone: waited for, 200 ms at most.
void forget(const Member& m, const fs::path& state_dir) {
  std::error_code ec;
  fs::remove_all(state_dir / "clones" / m.name, ec);
  for (int i = 0; i < 100 && !api::remove_unpublished(state_dir, m.name); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
}

/// Tells members that were not handed out to discard themselves and waits until they have (each
/// one's end of its socket closes when it exits, once it has cleaned up), all at once, 10 s at
/// most in all; then forgets those that ended. One still running then is left to finish its own
/// clean-up (forgetting it waited 200 ms for a lock it holds: minutes for a large pool).
void discard(const std::deque<Member>& members, const fs::path& state_dir) {
  std::vector<pollfd> open;
  for (const auto& m : members) {
    ::shutdown(m.fd, SHUT_WR);
    open.push_back({.fd = m.fd, .events = POLLIN, .revents = 0});
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!open.empty()) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) break;
    const int n = ::poll(open.data(), open.size(), static_cast<int>(left));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    std::erase_if(open, [](const pollfd& p) {
      if (p.revents == 0) return false;
      char buf[256];
      const ssize_t got = ::recv(p.fd, buf, sizeof buf, MSG_DONTWAIT);
      return got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR);  // its end of file (or an error): gone
    });
  }
  for (const auto& m : members) {
    const bool running = std::ranges::any_of(open, [&](const pollfd& p) { return p.fd == m.fd; });
    ::close(m.fd);
    if (!running) forget(m, state_dir);
  }
}

/// Whether a member waiting in the pool has ended (killed, out of memory): its socket hung up.
bool has_ended(const Member& m) {
  pollfd p{.fd = m.fd, .events = POLLIN, .revents = 0};
  if (::poll(&p, 1, 0) <= 0) return false;
  char c;
  const ssize_t n = ::recv(m.fd, &c, 1, MSG_DONTWAIT | MSG_PEEK);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR);
}

class Pool {
 public:
  /// `needs_ip`: its clones are on a shared network (a bridge or a host TAP), where each request
  /// must give the clone an address of its own.
  Pool(OpenTemplate& t, Zygote& zygote, std::string name, unsigned size, bool needs_ip, bool in_netns, std::vector<NetSpec> nets)
      : t_(t), zygote_(zygote), name_(std::move(name)), size_(size), needs_ip_(needs_ip), in_netns_(in_netns), nets_(std::move(nets)) {}

  Result<> start() {
    auto t = start_thread("the pool's refilling thread", [this] { refill(); });
    if (!t) return std::unexpected(t.error());
    refill_ = std::move(*t);
    return {};
  }

  /// No more members handed out: requests waiting for one get a 503 at once (called before the
  /// API server ends, which waits for them).
  void begin_stop() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    cv_.notify_all();
  }

  void stop() {
    begin_stop();
    if (refill_.joinable()) refill_.join();
    // Members not handed out: their socket's end tells them to discard themselves.
    discard(ready_, t_.sdir);
    ready_.clear();
  }

  /// Whether the zygote ended: the pool can make no more members (status and message at its end).
  bool zygote_lost() const { return zygote_lost_; }

  api::HttpResponse handle(const api::HttpRequest& r) {
    auto request = api::parse_pool_request(r);
    if (!request) return request.error();
    if (auto* clone = std::get_if<api::CloneRequest>(&*request)) return take(r, *clone);
    std::lock_guard lock(mutex_);
    json j{{"name", name_}, {"kind", "pool"}, {"state", "running"}, {"pid", ::getpid()},
           {"template", {{"name", t_.manifest.name}, {"dir", t_.tdir.string()}}},
           {"config", {{"memory_mib", t_.manifest.memory >> 20}, {"vcpus", t_.manifest.vcpus}}},
           {"size", size_}, {"ready", ready_.size()}, {"handed_out", handed_out_}};
    return {.status = 200, .body = api::json_body(j), .allow = {}};
  }

 private:
  api::HttpResponse take(const api::HttpRequest& r, const api::CloneRequest& clone) {
    json req = json::object();
    for (auto [key, value] : {std::pair{"hostname", &clone.hostname}, {"ip", &clone.ip}, {"gateway", &clone.gateway}}) {
      if (!value->empty()) req[key] = *value;
    }
    if (needs_ip_ && !req.contains("ip")) {
      return api::fault(400, "this pool's clones are on a shared network: give each its own 'ip' (the template's would be a duplicate)");
    }
    if (in_netns_ && (req.contains("ip") || req.contains("gateway"))) {
      // Each member's namespace was made for the template's address (its gateway, its NAT):
      // another one in the guest would cut the clone off.
      return api::fault(400, "this pool's clones are each in a network namespace made for the template's address: "
                             "no 'ip' or 'gateway' can be given");
    }
    // Not the gateway's address (the request's, else the template's): the clone would answer ARP
    // for its network's router; and a gateway on the clone's network. As a single clone's, a
    // fleet's and a fork's are checked.
    if (!clone.ip.empty() || !clone.gateway.empty()) {
      if (auto g = check_ip_gateway(clone.ip.empty() ? t_.manifest.ip : clone.ip, 1, clone.gateway.empty() ? t_.manifest.gateway : clone.gateway);
          !g) {
        return api::fault(400, g.error().message());
      }
    }
    const auto t0 = std::chrono::steady_clock::now();
    // The member times the clone's start from here (GET /vm start_ms): steady_clock is one clock
    // for every process.
    req["requested_ns"] = t0.time_since_epoch().count();
    Member m;
    std::string reply;
    // Answered within 20 s of its arrival whatever happens (a client gives up after 30 s: a clone
    // started after that would run with nobody told of it). From its arrival, not from now: with
    // more requests at once than the server has threads (api::kMaxConnections), one waits for a
    // thread, while the others wait for clones.
    const auto deadline = std::min(t0, r.received.time_since_epoch().count() > 0 ? r.received : t0) + std::chrono::seconds(20);
    if (deadline <= t0) return api::fault(503, "the request waited 20 s for the pool's API to take it (too many at once): not served");
    auto left = [&] {
      return std::max(std::chrono::milliseconds(0),
                      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()));
    };
    // A member is handed a request only with a second left to start its clone in: one sent with
    // less was killed for not running in time, its guest started (a 500, a member wasted).
    constexpr auto kStartBudget = std::chrono::milliseconds(1000);
    auto budget = [&] { return std::max(std::chrono::milliseconds(0), left() - kStartBudget); };
    for (int attempt = 0;; ++attempt) {
      if (budget().count() == 0) return api::fault(503, "no clone could be started in time (the request waited too long): not served");
      {
        std::unique_lock lock(mutex_);
        if (!cv_.wait_for(lock, std::min(budget(), std::chrono::milliseconds(10000)), [&] { return !ready_.empty() || stopping_; }) ||
            stopping_) {
          return api::fault(503, stopping_ ? "the pool is stopping" : "no clone ready in the pool (it refills as fast as it can)");
        }
        m = ready_.front();
        ready_.pop_front();
        ++taking_;
      }
      if (has_ended(m)) {
        // Killed while it waited (not counted as an attempt: no request was sent to it).
        ::close(m.fd);
        forget(m, t_.sdir);
        {
          std::lock_guard lock(mutex_);
          --taking_;
        }
        cv_.notify_all();
        --attempt;
        continue;
      }
      send_text(m.fd, req.dump());
      pollfd p{.fd = m.fd, .events = POLLIN, .revents = 0};
      int polled;
      do {
        polled = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left().count(), 10000)));
      } while (polled < 0 && errno == EINTR);
      if (polled < 0) polled = 0;  // treated as no answer in time: stopped, not left running untold
      char buf[512];
      const ssize_t n = polled > 0 ? ::recv(m.fd, buf, sizeof buf, 0) : -1;
      reply = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
      {
        // The refill waits until the clone runs: preparing the next member competes for the CPUs
        // the clone starts on (two here).
        std::lock_guard lock(mutex_);
        --taking_;
        last_take_ = std::chrono::steady_clock::now();
      }
      cv_.notify_all();
      // A member that ended while it waited (killed, out of memory) answers nothing: an end of
      // file, or ECONNRESET when it ended with the request unread (killed as it was sent). The
      // next one takes the request, and its prepared directory goes.
      const bool ended = polled > 0 && n <= 0;
      // Alive but not running in time: it is told no more (killed while its socket is still open,
      // so that the pid is its own), and leaves no clone behind that nobody was told about. One
      // that ended is not killed: the zygote (its parent) has reaped it, and its pid may be
      // another process's by now (until 2026-12-07 the pool killed it all the same).
      if (polled == 0) {
        // Its end waited for (2 s at most) before its directory goes: a process killed in the
        // middle of a write (its record, its entry) finishes that write first, and would leave
        // files behind the removal (as a fork's parent waits for a child it killed).
        Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, m.pid, 0)));
        if (pidfd && ::syscall(SYS_pidfd_send_signal, pidfd.get(), SIGKILL, nullptr, 0) == 0) {
          (void)wait_exit(pidfd, 2);
        } else {
          ::kill(m.pid, SIGKILL);
        }
      }
      ::close(m.fd);
      if (ended) {
        forget(m, t_.sdir);
        if (attempt < 3 && left().count() > 0) continue;
      }
      if (polled == 0) {
        forget(m, t_.sdir);
        return api::fault(500, fmt::format("clone {} did not run in time: stopped", m.name));
      }
      break;
    }
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (!reply.starts_with("ok ")) {
      return api::fault(500, fmt::format("clone {} did not start{}", m.name, reply.empty() ? "" : ": " + reply));
    }
    {
      std::lock_guard lock(mutex_);
      ++handed_out_;
    }
    json j{{"name", m.name}, {"pid", m.pid}, {"api_socket", (t_.sdir / "run" / m.name / "api.sock").string()}, {"request_ms", ms}};
    return {.status = 201, .body = api::json_body(j), .allow = {}};
  }

  /// Keeps `size_` members ready (one prepared at a time). Preparing one costs a few ms of CPU,
  /// which a request's clone, started meanwhile, would wait for on a small host (two CPUs here:
  /// 16 requests back to back from a full pool, a guest idle once started: 576 clones/s refilling
  /// at once, 1009/s refilling in the pauses). So the refill waits while requests come (one being
  /// handed out, or the last less than kQuiet ago), unless the pool is down to a quarter: then it
  /// refills whatever comes, so that a long burst is served at the rate members are prepared
  /// instead of running dry.
  void refill() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      const bool low = ready_.size() <= size_ / 4;
      const auto quiet_from = last_take_ + kQuiet;
      if (ready_.size() >= size_ || (!low && taking_ > 0)) {
        cv_.wait_for(lock, std::chrono::milliseconds(500));
        sweep(lock);
        continue;
      }
      if (!low && std::chrono::steady_clock::now() < quiet_from) {
        cv_.wait_until(lock, quiet_from);
        continue;
      }
      lock.unlock();
      auto m = spawn();
      lock.lock();
      if (m) {
        ready_.push_back(*m);
        cv_.notify_all();
      } else if (zygote_lost_) {
        // Nothing can be made any more: the pool ends (run_pool says why), rather than answering
        // 503 for ever where a supervisor would never restart it.
        ::kill(::getpid(), SIGTERM);
        return;
      } else if (!stopping_) {
        cv_.wait_for(lock, std::chrono::seconds(1));  // a member that failed: do not spin
      }
    }
  }

  /// Takes out members that ended while they waited (killed, out of memory): the count GET /pool
  /// gives is of live ones, and the refill replaces them. (Called with `lock` held; forgetting
  /// them is done without it.)
  void sweep(std::unique_lock<std::mutex>& lock) {
    std::deque<Member> dead;
    for (auto it = ready_.begin(); it != ready_.end();) {
      if (has_ended(*it)) {
        dead.push_back(*it);
        it = ready_.erase(it);
      } else {
        ++it;
      }
    }
    if (dead.empty()) return;
    lock.unlock();
    for (const auto& m : dead) {
      ::close(m.fd);
      forget(m, t_.sdir);
    }
    lock.lock();
  }

  /// Whether a member numbered `index` and named `name` would make an interface or a namespace
  /// that is there already: a clone handed out by this pool before it was restarted, or by another
  /// pool of the same --net pattern, still has it ({i} counts from 1 in every pool process).
  bool interfaces_taken(unsigned index, const std::string& name) const {
    std::error_code ec;
    for (const auto& n : nets_) {
      auto e = expand_net(n, name, index);
      if (!e) return false;  // (said when the member fails)
      if (!e->netns.empty() ? fs::exists(fs::path("/run/netns") / e->netns, ec) : fs::exists(fs::path("/sys/class/net") / e->tap, ec)) {
        return true;
      }
    }
    return false;
  }

  std::optional<Member> spawn() {
    const std::string name = fmt::format("{}-{}", std::string_view(t_.manifest.name).substr(0, 55), random_hex(4));
    // Numbers whose interfaces are taken are passed over (each failed member cost a second: a
    // pool restarted after handing out 1000 clones took ~17 min before its first was ready).
    unsigned index = ++spawned_;
    for (unsigned skipped = 0; skipped < 100000 && interfaces_taken(index, name); ++skipped) index = ++spawned_;
    auto m = zygote_.spawn(index, name);
    if (!m) {
      fmt::print(stderr, "vmm: pool: no member: {}\n", m.error());
      if (m.error() == kZygoteEnded) zygote_lost_ = true;
      return std::nullopt;
    }
    pollfd p{.fd = m->fd, .events = POLLIN, .revents = 0};
    const bool answered = ::poll(&p, 1, 60000) > 0;
    char buf[512];
    const ssize_t n = answered ? ::recv(m->fd, buf, sizeof buf, 0) : -1;
    const std::string said = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
    if (said != "ready") {
      const bool ended = answered && n <= 0;
      fmt::print(stderr, "vmm: pool: a member could not be prepared: {}\n",
                 ended ? "it ended" : !answered ? "not ready within 60 s" : said);
      ::close(m->fd);
      // One that ended as it prepared (killed, crashed) left its directory and its registration;
      // one that said why removed them itself, and one not ready in time does once it sees its
      // socket closed.
      if (ended) forget(*m, t_.sdir);
      return std::nullopt;
    }
    return *m;
  }

  OpenTemplate& t_;
  Zygote& zygote_;
  const std::string name_;
  const unsigned size_;
  const bool needs_ip_;
  const bool in_netns_;  // every interface in a namespace of its own (netns=)
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Member> ready_;  // guarded by mutex_
  unsigned handed_out_ = 0;   // guarded by mutex_
  unsigned taking_ = 0;       // requests being handed a member; guarded by mutex_
  std::chrono::steady_clock::time_point last_take_{};  // the end of the last request; guarded by mutex_
  static constexpr auto kQuiet = std::chrono::milliseconds(50);
  bool stopping_ = false;     // guarded by mutex_
  unsigned spawned_ = 0;      // members made so far (the refill thread's)
  std::atomic<bool> zygote_lost_{false};
  const std::vector<NetSpec> nets_;  // the members' --net patterns
  std::thread refill_;
};

}  // namespace

int run_pool(const CloneOptions& options, unsigned size) {
  CloneOptions o = options;
  if (o.full) return report_error(exit_code::kUsage, "--full cannot be given to a pool: its clones share the template's memory mapping");
  OpenTemplate t;
  if (auto f = open_template(o, t)) return report_failure(*f);
  if (o.name.empty()) o.name = "pool-" + t.manifest.name;
  if (!valid_name(o.name)) return report_error(exit_code::kUsage, fmt::format("--name '{}': use letters, digits, '.', '_' and '-'", o.name));
  raise_open_file_limit();
  // Each member waiting holds a socket in the pool, and the API's connections theirs: a size whose
  // sockets would not fit under the limit on open files refused now (past it the API accepted no
  // connection and the pool could hand nothing out).
  if (rlimit nofile{}; ::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur != RLIM_INFINITY) {
    constexpr uint64_t kSpare = 64;  // the template's files, the registration, the zygote's socket, the C library's
    const uint64_t need = uint64_t{size} + 2 * api::kMaxConnections + kSpare;
    if (need > nofile.rlim_cur) {
      return report_error(exit_code::kUsage,
                          fmt::format("--size {}: the pool would need {} open files (a socket per waiting clone, {} for its API), "
                                      "{} allowed (RLIMIT_NOFILE): raise the hard limit (ulimit -Hn, LimitNOFILE=) or make it smaller",
                                      size, need, 2 * api::kMaxConnections, nofile.rlim_cur));
    }
  }
  // Every member's name must make the interfaces' names: checked with the longest one a member can
  // have (a pool whose every member failed retried for ever, answering 503).
  {
    const std::string longest = fmt::format("{}-ffffffff", std::string_view(t.manifest.name).substr(0, 55));
    for (const auto& n : o.nets) {
      if (auto e = expand_net(n, longest, 99999); !e) {
        return report_error(exit_code::kUsage, fmt::format("--net: {} (for a member named {})", e.error().message(), longest));
      }
      // Nor one name for all (the second member found it taken, and the pool spun for ever).
      if (auto r = check_net_per_vm(n); !r) return report_error(exit_code::kUsage, fmt::format("--net: {}", r.error().message()));
    }
  }
  auto reg = api::Registration::create(t.sdir, o.name, o.api_socket);
  if (!reg) return report_error(exit_code::kUsage, reg.error().message());
  // Members' clones must not register as the pool's name; each clone gets its own API socket.
  CloneOptions member = o;
  member.name.clear();
  member.api_socket.clear();
  member.ip_at_request = true;
  if (auto r = check_net_count("pool", "template", t.manifest.nets.size(), o.nets.size()); !r) {
    return report_error(exit_code::kUsage, r.error().message());
  }
  // The HTTP plugin is loaded once here, so that members inherit it; then the zygote is forked,
  // before the first thread.
  if (auto p = api::http_plugin(); !p) return report_error(exit_code::kVmmError, p.error().message());
  auto zygote = Zygote::start(t, member);
  if (!zygote) return report_error(exit_code::kVmmError, zygote.error().message());
  // A closed terminal stops the pool as Ctrl-C does (by default it killed it, leaving its entry in
  // STATE/run). Blocked after the zygote is forked, so that clones keep SIGHUP's default action,
  // and before the first thread, so that every thread has it blocked.
  sigset_t hup;
  sigemptyset(&hup);
  sigaddset(&hup, SIGHUP);
  ::pthread_sigmask(SIG_BLOCK, &hup, nullptr);
  const bool needs_ip = t.manifest.ip != "dhcp" && std::ranges::any_of(o.nets, [](const NetSpec& n) { return n.netns.empty(); });
  const bool in_netns = !o.nets.empty() && std::ranges::all_of(o.nets, [](const NetSpec& n) { return !n.netns.empty(); });
  Pool pool(t, *zygote, o.name, size, needs_ip, in_netns, o.nets);
  // Bound here and told to the registration, which removes it at the end (one given with
  // --api-socket, outside STATE/run, was left behind).
  std::pair<uint64_t, uint64_t> bound{};
  auto listener = api::listen_unix((*reg)->socket().string(), &bound);
  if (!listener) return report_error(exit_code::kVmmError, listener.error().message());
  (*reg)->socket_bound(bound);
  auto server = api::serve(std::move(*listener), [&pool](const api::HttpRequest& r) { return pool.handle(r); });
  if (!server) return report_error(exit_code::kVmmError, server.error().message());
  if (auto r = pool.start(); !r) {
    server->reset();
    return report_error(exit_code::kVmmError, r.error().message());
  }
  fmt::print(stderr, "vmm: pool {} of {} ({} ready clones) serving {}\n", o.name, t.manifest.name, size, (*reg)->socket().string());
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGHUP);
  int sig = 0;
  ::sigwait(&sigs, &sig);
  if (pool.zygote_lost()) {
    fmt::print(stderr, "vmm: pool {}: stopping: its zygote ended, no more clones can be made (clones handed out run on)\n", o.name);
  } else {
    fmt::print(stderr, "vmm: pool {}: stopping (clones handed out run on)\n", o.name);
  }
  pool.begin_stop();  // requests waiting for a member answered at once, before the server waits for them
  server->reset();
  pool.stop();
  return pool.zygote_lost() ? exit_code::kVmmError : exit_code::kOk;
}

namespace {

int run_from_pool_answered(const std::string& socket, const CloneOptions& o) {
  // The pool must be one of this template.
  auto info = api::call(socket, {.method = "GET", .path = "/pool", .body = {}}, 10);
  if (!info) return report_error(exit_code::kVmmError, fmt::format("{}: {}", socket, info.error().message()));
  auto pj = json::parse(info->body, nullptr, false);
  if (info->status != 200 || !pj.is_object() || !pj.contains("template")) {
    return report_error(exit_code::kUsage, fmt::format("{}: not a vmm pool", socket));
  }
  const std::string tname = pj["template"].value("name", ""), tdir = pj["template"].value("dir", "");
  std::error_code ec;
  if (o.template_name != tname && fs::weakly_canonical(o.template_name, ec) != fs::path(tdir)) {
    return report_error(exit_code::kUsage, fmt::format("{}: a pool of template '{}', not '{}'", socket, tname, o.template_name));
  }
  json body = json::object();
  if (!o.hostname.empty()) body["hostname"] = o.hostname;
  if (!o.ip.empty()) body["ip"] = o.ip;
  if (!o.gateway.empty()) body["gateway"] = o.gateway;
  auto text = api::json_text(body, "--hostname, --ip or --gateway");
  if (!text) return report_error(exit_code::kUsage, text.error().message());
  // (SIGINT and SIGTERM are blocked: looked at before the request, and after it.)
  if (const int sig = pending_stop_signal()) return report_error(exit_code::kSignal, fmt::format("stopped by {} before the request", ::strsignal(sig)));
  auto r = api::call(socket, {.method = "POST", .path = "/clones", .body = std::move(*text)}, 30);
  if (!r) return report_error(exit_code::kVmmError, fmt::format("{}: {}", socket, r.error().message()));
  auto j = json::parse(r->body, nullptr, false);
  if (r->status != 201 || !j.is_object()) {
    const std::string why = j.is_object() && j.contains("fault_message") ? j["fault_message"].get<std::string>() : r->body;
    return report_error(r->status < 500 ? exit_code::kUsage : exit_code::kVmmError, fmt::format("{}: {}", socket, why));
  }
  fmt::print("{} {} {:.3f} ms\n", j.value("name", "?"), j.value("pid", 0), j.value("request_ms", 0.0));
  if (const int sig = pending_stop_signal()) {
    std::fflush(stdout);
    return report_error(exit_code::kSignal, fmt::format("{} came during the request: the clone {} was started and runs on (vmm stop {})",
                                                        ::strsignal(sig), j.value("name", "?"), j.value("name", "?")));
  }
  return exit_code::kOk;
}

}  // namespace

int run_from_pool(const std::string& socket, const CloneOptions& o) {
  // A server that answers JSON of another shape: one line, not an abort (json's accessors throw).
  try {
    return run_from_pool_answered(socket, o);
  } catch (const json::exception& e) {
    return report_error(exit_code::kVmmError, fmt::format("{}: an answer vmm cannot read: {}", socket, e.what()));
  }
}

}  // namespace vmm::clone
