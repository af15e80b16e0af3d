#include "vmm/api/control.hpp"

#include <fmt/format.h>

#include <chrono>

#include "vmm/machine.hpp"

namespace vmm::api {

Result<std::unique_ptr<ControlPlane>> ControlPlane::create(const std::filesystem::path& state_dir, const std::string& name,
                                                           const std::filesystem::path& socket) {
  auto reg = Registration::create(state_dir, name, socket);
  if (!reg) return std::unexpected(reg.error());
  std::unique_ptr<ControlPlane> c(new ControlPlane);
  c->registration_ = std::move(*reg);
  return c;
}

void ControlPlane::start(Machine& machine, VmInfo info, VmOperations ops) {
  info.api_socket = registration_->socket().string();
  const bool paused = info.paused;
  service_ = std::make_unique<VmService>(machine, std::move(info), std::move(ops));
  starter_ = std::thread([this, &machine, paused] {
    ::pthread_setname_np(::pthread_self(), "vmm-api");
    // The HTTP plugin's loading and the server's start wait until the guest runs: on two CPUs they
    // delayed a clone's first guest instruction (exec → first output 8.5 ms with, 6.6 ms without,
    // medians of 30). A VM started paused, or one that stops first, is not waited for.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(20);
    while (!paused && !machine.vm().first_run().entered && !machine.vm().stopping() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    auto server = serve(registration_->socket().string(), [svc = service_.get()](const HttpRequest& r) { return svc->handle(r); });
    if (!server) {
      fmt::print(stderr, "vmm: warning: no API: {}\n", server.error().message());
      return;
    }
    std::lock_guard lock(mutex_);
    server_ = std::move(*server);
  });
}

void ControlPlane::wait_serving() {
  if (starter_.joinable()) starter_.join();
}

void ControlPlane::abandon() {
  // The parent's threads do not exist here: its server object cannot be stopped or destroyed
  // (its destructor would join a thread that is not ours); it is leaked on purpose.
  if (starter_.joinable()) starter_.detach();
  (void)server_.release();
  if (registration_) registration_->abandon();
  registration_.reset();
}

ControlPlane::~ControlPlane() {
  if (starter_.joinable()) starter_.join();
  {
    std::lock_guard lock(mutex_);
    server_.reset();
  }
  service_.reset();
  registration_.reset();
}

}  // namespace vmm::api
