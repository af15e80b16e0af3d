// A running VM's control plane: its registration in the state directory (name, API socket) and
// its API server, started on a thread of its own once the VM runs so that loading the HTTP plugin
// never delays the guest.
#pragma once

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
  /// Serves the VM's API from now on (in the background; a failure is printed, the VM runs on).
  void start(Machine& machine, VmInfo info, VmOperations ops = {});
  /// Returns once the API answers at its socket (or failed to start, which start() printed): what
  /// reports a VM as started to a client waits for this, so that the client can use it at once.
  void wait_serving();
  /// Stops serving (requests in progress finish) and gives the name back.
  ~ControlPlane();

  const Registration& registration() const { return *registration_; }
  VmService* service() { return service_.get(); }
  /// In a forked child: drops the parent's server and registration without touching them.
  void abandon();

 private:
  ControlPlane() = default;
  std::unique_ptr<Registration> registration_;
  std::unique_ptr<VmService> service_;
  std::mutex mutex_;
  std::unique_ptr<HttpServer> server_;  // guarded by mutex_
  std::thread starter_;
};

}  // namespace vmm::api
