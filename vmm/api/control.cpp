#include "vmm/api/control.hpp"

#include <fmt/format.h>

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
  service_ = std::make_unique<VmService>(machine, std::move(info), std::move(ops));
  starter_ = std::thread([this] {
    ::pthread_setname_np(::pthread_self(), "vmm-api");
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
