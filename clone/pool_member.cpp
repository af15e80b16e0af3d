// The warm pool's processes that are not the pool (clone/pool.cpp): the zygote, which the pool forks
// before its first thread and which forks a member for each name it is sent, and a member's life:
// its clone prepared, run paused, the request taken, launched. And the messages between them (text,
// with a descriptor at most).
#include "clone/pool_member.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
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
#include "vmm/base/thread.hpp"
#include "vmm/base/wake_hint.hpp"
#include "vmm/exit_status.hpp"

namespace vmm::clone::pool_member {

namespace fs = std::filesystem;
using nlohmann::json;

void send_text(int fd, const std::string& text) { (void)!::send(fd, text.data(), text.size(), MSG_NOSIGNAL); }

/// Sends `text` with a copy of the descriptor `fd` (SCM_RIGHTS) as one message.
/// A message of one buffer with room for one descriptor (SCM_RIGHTS). Not copyable: it points into itself.
struct FdMessage {
  FdMessage(void* data, size_t len) : iov{.iov_base = data, .iov_len = len} {
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf;
    msg.msg_controllen = sizeof cbuf;
  }
  FdMessage(const FdMessage&) = delete;
  FdMessage& operator=(const FdMessage&) = delete;
  iovec iov;
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
};

void send_with_fd(int sock, const std::string& text, int fd) {
  FdMessage m(const_cast<char*>(text.data()), text.size());
  cmsghdr* cm = CMSG_FIRSTHDR(&m.msg);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(cm), &fd, sizeof(int));
  (void)!::sendmsg(sock, &m.msg, MSG_NOSIGNAL);
}

/// One message from `sock`: its text and the descriptor it carried (-1 if none; then the text may
/// say why). Empty text and -1 on EOF.
std::pair<std::string, int> receive_with_fd(int sock) {
  char buf[256];
  FdMessage m(buf, sizeof buf);
  const ssize_t n = ::recvmsg(sock, &m.msg, MSG_CMSG_CLOEXEC);
  if (n <= 0) return {std::string(), -1};
  std::string text(buf, static_cast<size_t>(n));
  const cmsghdr* cm = CMSG_FIRSTHDR(&m.msg);
  if (cm == nullptr || cm->cmsg_type != SCM_RIGHTS || cm->cmsg_len != CMSG_LEN(sizeof(int))) return {std::move(text), -1};
  int fd = -1;
  std::memcpy(&fd, CMSG_DATA(cm), sizeof(int));
  return {std::move(text), fd};
}

/// A member's life after fork(): prepare, run paused, wait for the request, launch. Never returns.
/// The clone is prepared and its machine running with every vCPU thread created and parked before
/// the request, so that the request pays only for what differs between clones: identity, generation
/// and clock, then the vCPUs resume. vCPU 0's thread, parked, takes the request and goes on into the
/// guest itself. Every file of its registration (STATE/run, its API socket bound, clone.json, its
/// log) is made before the request under a hidden name (stage_clone); after the guest runs, another
/// thread renames them into place and starts the API, then answers the pool.
[[noreturn]] void run_member(OpenTemplate& t, CloneOptions o, const std::string& name, int fd) {
  ::setsid();
  ::signal(SIGHUP, SIG_DFL);  // (the zygote ignores it) a clone ends on it, as any VM
  // Nothing of the pool's but the template's mapping, /dev/kvm and this socket: its API socket, the
  // other members' sockets and its clones' fds are not ours.
  drop_inherited({fd, t.kvm->fd()});
  const int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null >= 0) ::dup2(null, 0);
  auto c = prepare_clone(t, o, name, /*inherited=*/true);
  if (!c) {
    send_text(fd, "error " + c.error().message);
    ::_exit(c.error().status);
  }
  auto staged = stage_clone(t, o, **c);
  if (!staged) {
    send_text(fd, "error " + staged.error().message());
    c->reset();  // removes the prepared directory
    ::_exit(exit_code::kVmmError);
  }
  std::unique_ptr<api::ControlPlane> control = std::move(*staged);
  const DetachedOutput output = open_detached_output((*c)->dir / "vmm.log");
  Machine& m = *(*c)->machine;
  // The request is taken on vCPU 0's thread, parked (Vm::start_on): it restores what differs
  // between clones (begin_clone) and goes straight on into the guest; no other thread has to wake
  // before the guest runs. The rest (registration, API, the pool's answer) follows on `finisher`.
  std::mutex mu;
  std::condition_variable cv;
  enum class Phase { Waiting, Launched, Ended } phase = Phase::Waiting;  // guarded by mu
  auto end_wait = [&] {
    {
      std::lock_guard lock(mu);
      if (phase == Phase::Waiting) phase = Phase::Ended;
    }
    cv.notify_one();
  };
  std::optional<OffCpuWake> off_cpu;  // set before vCPU 0's thread may read it
  auto finisher = start_thread("the clone's finishing thread", [&] {
    ::pthread_setname_np(::pthread_self(), "vmm-pool-wait");
    // Its allocator's arena made now, not after the request (glibc makes one per thread at its
    // first allocation: a 64 MiB reservation, trimmed).
    std::string warm(256, ' ');
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return phase != Phase::Waiting; });
      if (phase != Phase::Launched) return;
    }
    off_cpu->allow_all();  // (vCPU 0's thread kept it off its own CPU to wake it: OffCpuWake says why)
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - o.started).count();
    // Published before it is served: a socket not bound ahead (its hidden path too long) is bound
    // by the API's thread, which serve_clone() starts, where publish() has moved it (served first,
    // the thread read the registration's paths while publish() changed them, and could bind where
    // the directory no longer was: a clone reported running without an API).
    if (auto r = publish_clone(t, o, **c, *control); !r) {
      // The guest runs; it has no name in STATE/run nor an API: say so, stop it.
      send_text(fd, "error " + r.error().message());
      m.vm().request_stop(StopInfo{.reason = devices::StopReason::Error, .status = 0, .message = r.error().message()});
      return;
    }
    serve_clone(t, o, **c, *control);
    control->wait_serving();  // (bound before the request: at once)
    detach_output(output);    // it outlives the pool (its log made before it is reported)
    send_text(fd, fmt::format("ok {:.3f}", ms));
  });
  if (!finisher) {
    send_text(fd, "error " + finisher.error().message());
    control.reset();
    c->reset();  // removes the prepared directory
    ::_exit(exit_code::kVmmError);
  }
  off_cpu.emplace(finisher->native_handle());
  m.vm().start_paused();
  bool said_ready = false;  // vCPU 0's, read once run() has joined it
  m.vm().start_on([&]() -> bool {
    // The request's buffer (and this thread's arena) made before it comes.
    std::string request;
    request.reserve(4096);
    off_cpu->avoid_this_cpu();
    // Its vCPUs' MMUs loaded now rather than by their first KVM_RUN after the request (Vcpu::
    // preload_mmu). Measured with a pool of 4 of the identity guest, as fleet.sh's pool row: the
    // clone's first console byte 0.49-0.54 ms after the request, against 0.60-0.63 without (three
    // interleaved rounds of 40 requests, 2026-12-07). The state is final here: restored, and the
    // request changes the clock, the generation and the pending interrupt, not the registers the
    // MMU depends on. (The other vCPUs' threads are at most in an immediate-exit KVM_RUN, which
    // these ioctls wait for.)
    for (size_t i = 0; i < m.vm().vcpu_count(); ++i) m.vm().vcpu(i).preload_mmu();
    send_text(fd, "ready");
    said_ready = true;
    // The request: {"hostname": ..., "ip": ...}, or the end of the pool (EOF: discard). Polled in
    // slices, so that a stop that arrives meanwhile (a signal) is seen.
    for (;;) {
      if (m.vm().stopping()) return false;
      pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
      if (::poll(&p, 1, 200) <= 0) continue;
      char buf[4096];
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        m.vm().request_stop(devices::StopReason::Signal);  // discarded (or the pool ended)
        return false;
      }
      request.assign(buf, static_cast<size_t>(n));
      break;
    }
    o.started = std::chrono::steady_clock::now();
    (*c)->steps.clear();  // the preparation's own steps came before the request
    (*c)->steps.emplace_back("taken", o.started);
    auto j = json::parse(request, nullptr, false);
    if (j.is_object()) {
      o.hostname = j.value("hostname", "");
      o.ip = j.value("ip", "");
      o.gateway = j.value("gateway", "");
      const int64_t at = j.value("requested_ns", int64_t{0});
      if (at > 0 && at <= o.started.time_since_epoch().count()) o.started = std::chrono::steady_clock::time_point(std::chrono::nanoseconds(at));
    }
    if (auto r = begin_clone(t, o, **c); !r) {
      send_text(fd, "error " + r.error().message());
      m.vm().request_stop(StopInfo{.reason = devices::StopReason::Error, .status = 0, .message = r.error().message()});
      return false;
    }
    (*c)->steps.emplace_back("resumed", std::chrono::steady_clock::now());
    off_cpu->avoid_this_cpu();  // (this thread may have woken on the other CPU)
    {
      std::lock_guard lock(mu);
      phase = Phase::Launched;
    }
    cv.notify_one();
    return true;
  });
  const StopInfo stop = m.run();
  end_wait();  // the finisher, if the machine stopped before any request
  finisher->join();
  // Stopped before it was ready (a thread that could not be made): the pool logs why.
  if (!said_ready && stop.reason == devices::StopReason::Error) send_text(fd, "error " + stop.message);
  // Its socket stays open until it has cleaned up (closed by _exit): the pool takes its end of
  // file for "gone, nothing left" (discard), and stops waiting for it then.
  control.reset();  // the API (whose requests use the machine) ends before the machine does
  bool launched = false;
  {
    std::lock_guard lock(mu);
    launched = phase == Phase::Launched;
  }
  if (!launched) {
    c->reset();  // never handed out: removes the prepared directory
    ::_exit(0);
  }
  const int status = stop_status(stop);
  c->reset();
  ::_exit(status);
}

/// The zygote's side: forks a member for each name it receives and sends back "INDEX PID" with the
/// member's socket (or "INDEX error WHY"), INDEX the request's, so that a late answer is never
/// taken for the next request's. Ends when the pool's end closes. Never returns.
[[noreturn]] void run_zygote(OpenTemplate& t, const CloneOptions& o, int control) {
  drop_inherited({control, t.kvm->fd()});
  // In the pool's process group: a terminal's hang-up reaches it too, and killed it (the pool then
  // said its zygote ended and exited 10 after a normal stop). It ends when the pool closes its end.
  ::signal(SIGHUP, SIG_IGN);
  for (;;) {
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {  // members that ended (discarded or clones that stopped)
    }
    pollfd p{.fd = control, .events = POLLIN, .revents = 0};
    if (::poll(&p, 1, 1000) == 0) continue;
    char buf[256];
    const ssize_t n = ::recv(control, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) ::_exit(0);  // the pool ended; its members learn it from their own sockets
    // "INDEX NAME": the member's number ({i} in its TAP names) and its name.
    const std::string text(buf, static_cast<size_t>(n));
    const size_t space = text.find(' ');
    const std::string name = space == std::string::npos ? text : text.substr(space + 1);
    CloneOptions mo = o;
    if (space != std::string::npos) (void)std::from_chars(text.data(), text.data() + space, mo.index);
    const std::string tag = std::to_string(mo.index) + " ";
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
      send_text(control, tag + "error socketpair: " + errno_text(errno));
      continue;
    }
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(sv[0]);
      run_member(t, mo, name, sv[1]);
    }
    ::close(sv[1]);
    if (pid < 0) {
      send_text(control, tag + "error fork: " + errno_text(errno));
      ::close(sv[0]);
      continue;
    }
    send_with_fd(control, tag + std::to_string(pid), sv[0]);
    ::close(sv[0]);
  }
}

}  // namespace vmm::clone::pool_member
