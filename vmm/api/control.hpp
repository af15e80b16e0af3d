// A running VM's control plane: its registration in the state directory (name, API socket) and
// its API server. The socket listens from a thread of its own once the VM runs; the HTTP plugin
// is loaded when the first client connects (http.hpp says what it costs), so a VM that nobody
// asks pays nothing for it and a clone's start never waits for it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <memory>
#include <mutex>
#include <thread>

#include "vmm/api/registry.hpp"
#include "vmm/api/service.hpp"

namespace vmm::api {

class ControlPlane {
 public:
  /// Takes the VM's name (fails if a running VM has it); nothing is served yet.
  static Result<std::unique_ptr<ControlPlane>> create(const std::filesystem::path& state_dir, const std::string& name,
                                                      const std::filesystem::path& socket = {});
  /// Everything create() does but taking the name (Registration::prepare); with `bind_now`, the
  /// default socket is bound and listening too, so that start() and wait_serving() wait for
  /// nothing, and the API's thread is made, waiting for start(). publish() takes the name: a pool's
  /// member prepares before the request and publishes at it.
  static Result<std::unique_ptr<ControlPlane>> prepare(const std::filesystem::path& state_dir, const std::string& name,
                                                       const std::filesystem::path& socket, bool bind_now);
  Result<> publish();
  /// Serves the VM's API from now on (in the background; a failure is printed, the VM runs on).
  void start(Machine& machine, VmInfo info, VmOperations ops = {});
  /// Returns once the API's socket accepts connections (or failed to, which start() printed): what
  /// reports a VM as started to a client waits for this, so that the client can use it at once
  /// (its first request is answered once the plugin is loaded, if it was not yet).
  void wait_serving();
  /// Stops serving (requests in progress finish) and gives the name back.
  ~ControlPlane();

  const Registration& registration() const { return *registration_; }
  VmService* service() { return service_.get(); }

 private:
  ControlPlane() = default;
  /// The starter thread: wait for start() (made by prepare(bind_now), it waits), listen, wait for
  /// the first client (or the end), then serve.
  void run_starter();

  std::unique_ptr<Registration> registration_;
  std::string name_;  ///< the VM's, for warnings (a fleet's clones share their launcher's stderr)
  std::unique_ptr<VmService> service_;
  Fd listener_;  ///< bound by prepare(bind_now), until the starter takes it
  Fd wake_;  ///< eventfd: the destructor's "stop" to a starter waiting for a client
  std::atomic<bool> stopping_{false};
  std::mutex mutex_;
  std::condition_variable go_cv_;  ///< start() (or the end) to a starter made ahead
  Machine* machine_ = nullptr;     // guarded by mutex_ until the starter has it
  bool paused_ = false;            // likewise
  std::condition_variable listening_cv_;
  bool listening_ = false;              // guarded by mutex_: the socket listens, or never will
  std::unique_ptr<HttpServer> server_;  // guarded by mutex_
  std::thread starter_;
};

}  // namespace vmm::api
