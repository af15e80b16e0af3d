#include "vmm/api/control.hpp"

#include <fmt/format.h>
#include <poll.h>
#include <sys/eventfd.h>

#include <cerrno>
#include <chrono>

#include "vmm/base/thread.hpp"
#include "vmm/machine.hpp"

namespace vmm::api {

Result<std::unique_ptr<ControlPlane>> ControlPlane::create(const std::filesystem::path& state_dir, const std::string& name,
                                                           const std::filesystem::path& socket) {
  auto c = prepare(state_dir, name, socket, /*bind_now=*/false);
  if (!c) return c;
  if (auto r = (*c)->publish(); !r) return std::unexpected(r.error());
  return c;
}

Result<std::unique_ptr<ControlPlane>> ControlPlane::prepare(const std::filesystem::path& state_dir, const std::string& name,
                                                            const std::filesystem::path& socket, bool bind_now) {
  // A socket given by path that another server listens on (another VM's --api-socket): this VM
  // would run without an API while its registration named that socket, so that `vmm stop NAME`
  // reached the other VM. Refused before anything starts.
  if (!socket.empty() && someone_listens(socket.string())) {
    return fail("{}: another server listens there (the API socket of another VM?)", socket.string());
  }
  auto reg = Registration::prepare(state_dir, name, socket);
  if (!reg) return std::unexpected(reg.error());
  // A socket that cannot be bound (a long state directory and name) would leave the VM running
  // without an API, out of reach of `vmm stop` and `vmm ps`: refused before anything starts.
  if (auto r = check_socket_path((*reg)->socket().string()); !r) {
    return fail("{}: use a shorter --state-dir or --name, or --api-socket", r.error().message());
  }
  std::unique_ptr<ControlPlane> c(new ControlPlane);
  c->registration_ = std::move(*reg);
  c->name_ = name;
  c->wake_ = Fd(::eventfd(0, EFD_CLOEXEC));
  if (!c->wake_) return fail("eventfd: {}", errno_text(errno));
  // The default socket is bound in the hidden directory, which nobody else can enter, and moves
  // into place with it; one given by path is bound once the VM runs (it would be reachable now),
  // and so is one whose hidden path is too long for a socket (the hidden name is ~16 bytes longer).
  const auto staged = c->registration_->staged_socket();
  if (bind_now && staged != c->registration_->socket() && check_socket_path(staged.string())) {
    auto fd = listen_unix_in_private_dir(staged.string());  // (the hidden directory, mode 0700)
    if (!fd) return std::unexpected(fd.error());
    c->listener_ = std::move(*fd);
    c->registration_->socket_bound();
    c->listening_ = true;  // (nobody else has it yet)
    // Its thread made now too, waiting for start(): a thread made once the guest runs takes the
    // process's memory map for its stack (mmap, mprotect), and a vCPU that faults in a guest page
    // meanwhile waits for it. Seen in a pool's clone (kvm and sched trace): vCPU 0 blocked there,
    // then woken onto the CPU of the thread that made the thread, 0.25 ms before its first output.
    ControlPlane* raw = c.get();
    auto t = start_thread("the API's thread", [raw] { raw->run_starter(); });
    if (!t) return std::unexpected(t.error());
    c->starter_ = std::move(*t);
  }
  return c;
}

Result<> ControlPlane::publish() { return registration_->publish(); }

void ControlPlane::start(Machine& machine, VmInfo info, VmOperations ops) {
  info.api_socket = registration_->socket().string();
  const bool paused = info.paused;
  auto service = std::make_unique<VmService>(machine, std::move(info), std::move(ops));
  {
    std::lock_guard lock(mutex_);  // (a starter made by prepare() may be waiting for them)
    service_ = std::move(service);
    machine_ = &machine;
    paused_ = paused;
  }
  if (starter_.joinable()) {  // made by prepare(), waiting for this
    go_cv_.notify_one();
    return;
  }
  // Without its thread the VM runs on without an API, as when its socket cannot be made.
  auto t = start_thread("the API's thread", [this] { run_starter(); });
  if (!t) {
    fmt::print(stderr, "vmm: warning: {} has no API: {}\n", name_, t.error().message());
    return;
  }
  starter_ = std::move(*t);
}

void ControlPlane::run_starter() {
  ::pthread_setname_np(::pthread_self(), "vmm-api");
  {
    std::unique_lock lock(mutex_);
    go_cv_.wait(lock, [&] { return machine_ != nullptr || stopping_; });
    if (!machine_) return;  // ended before start()
  }
  Machine& machine = *machine_;
  const bool paused = paused_;
  Fd listener = std::move(listener_);
  if (!listener) {
    // Whatever happens below, wait_serving() returns.
    struct Listening {
      ControlPlane& c;
      ~Listening() {
        {
          std::lock_guard lock(c.mutex_);
          c.listening_ = true;
        }
        c.listening_cv_.notify_all();
      }
    } listening{*this};
    // Even the socket waits until the guest runs: on two CPUs the API's start delayed a clone's
    // first guest instruction (exec -> first output 8.5 ms with the plugin loaded here, 6.6 ms
    // without, medians of 30). A VM started paused, or one that stops first, is not waited for.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(20);
    while (!paused && !machine.vm().first_run().entered && !machine.vm().stopping() && !stopping_ &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    // The default socket is bound in place: the VM's own STATE/run entry (mode 0700, nothing else
    // makes files there) needs no temporary directory, which cost a new inode (~0.1-0.25 ms here).
    const std::string& path = registration_->socket().string();
    const bool own_dir = registration_->socket().parent_path() == registration_->dir();
    std::pair<uint64_t, uint64_t> id{};
    auto fd = own_dir ? listen_unix_in_private_dir(path) : listen_unix(path, &id);
    if (!fd) {
      if (!own_dir && someone_listens(path)) {
        // Another VM given the same --api-socket, started at the same moment, bound it first (the
        // check before the start saw nobody there): this one stops rather than run on while its
        // registration names the other's socket (`vmm stop` of it would stop the other).
        machine.vm().request_stop(StopInfo{.reason = devices::StopReason::Error, .status = 0,
                                           .message = fmt::format("{}: another server listens there (the API socket of "
                                                                  "another VM, started at the same time?)", path)});
        return;
      }
      fmt::print(stderr, "vmm: warning: {} has no API: {}\n", name_, fd.error().message());
      return;
    }
    listener = std::move(*fd);
    if (own_dir) {
      registration_->socket_bound();
    } else {
      registration_->socket_bound(id);
    }
  }
  // The first client (or the end). An idle VM nobody asks keeps this thread, in poll(), and none
  // of the plugin.
  pollfd fds[2] = {{.fd = listener.get(), .events = POLLIN, .revents = 0}, {.fd = wake_.get(), .events = POLLIN, .revents = 0}};
  while (::poll(fds, 2, -1) < 0) {
    if (errno != EINTR) {
      fmt::print(stderr, "vmm: warning: {} has no API: poll: {}\n", name_, errno_text(errno));
      return;
    }
  }
  if (fds[1].revents != 0 || stopping_) return;
  auto server = serve(std::move(listener), [svc = service_.get()](const HttpRequest& r) { return svc->handle(r); });
  if (!server) {
    fmt::print(stderr, "vmm: warning: no API: {}\n", server.error().message());
    return;
  }
  std::lock_guard lock(mutex_);
  server_ = std::move(*server);
}

void ControlPlane::wait_serving() {
  if (!starter_.joinable()) return;
  std::unique_lock lock(mutex_);
  listening_cv_.wait(lock, [&] { return listening_; });
}

ControlPlane::~ControlPlane() {
  {
    std::lock_guard lock(mutex_);  // (so that a starter waiting for start() cannot miss it)
    stopping_ = true;
  }
  go_cv_.notify_one();
  const uint64_t one = 1;
  if (wake_) (void)!::write(wake_.get(), &one, sizeof one);
  if (starter_.joinable()) starter_.join();
  {
    std::lock_guard lock(mutex_);
    server_.reset();
  }
  service_.reset();
  registration_.reset();
}

}  // namespace vmm::api
