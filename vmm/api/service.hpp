// The control API of one running VM: acts on its requests (parsed and checked by
// vmm/api/requests.hpp) on the machine.
// Conventions follow Firecracker's where they fit: JSON bodies, 204 without a body on success,
// errors as {"fault_message": "..."} with a 4xx status (400 malformed, 404 unknown path, 405 wrong
// method, 409 not possible in the VM's current state, 413 too large).
//
//   GET /vm            what the VM is: id, name, state, pid, template/parent, generation, config, uptime
//   PUT /vm/pause      204; 409 when already paused
//   PUT /vm/resume     204; 409 when running
//   PUT /vm/stop       {"timeout_s": 10} → 204; the ACPI power button is pressed, and the VM is
//                      stopped hard if its guest has not powered off within the timeout (0: at once)
//   PUT /vm/snapshot   {"dir": PATH, "resume": true}  → 200 {"template": PATH}
//   PUT /vm/fork       {"count": N}                   → 200 {"children": [{"name", "pid"}...]}
//   GET /vm/metrics    exits by kind, disk and net counters, memory
#pragma once

#include <chrono>
#include <functional>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>
#include <string>

#include <nlohmann/json.hpp>

#include "vmm/api/http.hpp"
#include "vmm/api/requests.hpp"
#include "vmm/machine.hpp"

namespace vmm::api {

/// What GET /vm reports about where the VM came from; the rest is read live.
struct VmInfo {
  std::string id;
  std::string name;
  std::string kind;            ///< "booted", "clone" or "fork"
  std::string template_name;   ///< clones: the template's name
  std::string template_dir;    ///< clones: the template's directory
  std::string parent;          ///< forks: the parent's name
  std::string generation;      ///< 32 hex digits
  nlohmann::json config;       ///< memory, vcpus, cpu_template, disks, nets, console
  std::string api_socket;
  /// Clones: when the clone was asked for (a pool's request, or the command's start), so that
  /// GET /vm can say how long it took to run and to print (steady_clock, one clock for all processes).
  std::optional<std::chrono::steady_clock::time_point> requested;
  /// Clones: named moments of the start after `requested` (a pool's member "taken", "resumed"),
  /// reported in GET /vm's start_ms beside the first guest entry and output.
  std::vector<std::pair<std::string, std::chrono::steady_clock::time_point>> steps;
  /// The VM starts paused (its vCPUs parked until PUT /vm/resume).
  bool paused = false;
};

/// How an operation holds the VM still: pause() parks and quiesces it (nothing if the API has paused
/// it already; an error leaves it running), resume() lets it run again, if the request asked for
/// that, as soon as the operation no longer needs it paused. The operation prepares what it can
/// before it calls pause(), so that the guest is stopped only for what must see it stopped.
/// What fails before begin() or pause() is the request's (400: a name taken, a bad address); from
/// either on it is the server's (500: a directory or a pipe it could not make, a full disk).
struct PauseWindow {
  std::function<void()> begin;
  std::function<Result<>()> pause;
  std::function<void()> resume;
};

/// An operation that needs the VM paused for part of its work: gets the checked request and the
/// pause window; returns the response body. Called at most once at a time.
template <typename Request>
using PausedOperation = std::function<Result<nlohmann::json>(const Request& request, const PauseWindow& window)>;

/// Operations that need more than the machine (they live in the layers that know templates and
/// processes); a missing one answers 400 "not supported".
struct VmOperations {
  PausedOperation<SnapshotRequest> snapshot;  ///< PUT /vm/snapshot
  PausedOperation<ForkRequest> fork;          ///< PUT /vm/fork
};

class VmService {
 public:
  VmService(Machine& machine, VmInfo info, VmOperations ops = {});
  ~VmService();  ///< cancels a pending hard stop

  /// Routes one request; thread-safe (control operations run one at a time). Throws nothing: what
  /// a route throws (an allocation that failed) is a 500 (http.hpp: nothing crosses to the plugin).
  HttpResponse handle(const HttpRequest& request) noexcept;

  /// The generation after a change of identity (a fork's child).
  void set_generation(std::string generation);

 private:
  HttpResponse route(const HttpRequest& request);
  HttpResponse get_vm();
  HttpResponse pause();
  HttpResponse resume();
  HttpResponse stop(const StopRequest& request);
  HttpResponse metrics();
  HttpResponse input(const std::string& text);
  HttpResponse paused_operation(const PauseOptions& options, const std::function<Result<nlohmann::json>(const PauseWindow&)>& op);
  /// A VM that is to stop and was left paused (by an operation, or through the API) runs again,
  /// to take its power button; unless an operation holds the VM.
  void resume_for_stop();
  struct AfterOperation {
    VmService& s;
    ~AfterOperation() { s.resume_for_stop(); }
  };

  Machine& machine_;
  VmInfo info_;
  VmOperations ops_;
  const std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
  // One operation that changes the VM's state at a time (pause, resume, snapshot, fork); a second
  // meanwhile is a 409 rather than a wait of minutes behind a snapshot, which its client would
  // give up on while the server went on to do it later. GET /vm and stop are never held up.
  std::mutex op_mutex_;
  std::timed_mutex input_mutex_;  // one PUT /vm/input types at a time (two interleaved their text)
  std::mutex mutex_;  // info_ (a fork's child changes its generation)
  std::atomic<bool> paused_{false};    // written under op_mutex_
  std::atomic<bool> quiesced_{false};  // written under op_mutex_: paused with the I/O thread parked too (not so for a VM started paused)
  std::atomic<bool> stopping_{false};
  std::atomic<bool> press_pending_{false};  // a stop's power button, pressed once the VM runs (resume_for_stop)
  /// Stopped through the API, or stopping for any reason (the guest powered off, a signal).
  bool stopping() const { return stopping_ || machine_.vm().stopping(); }
  std::mutex stop_mutex_;
  std::condition_variable stop_cv_;
  bool cancelled_ = false;  // guarded by stop_mutex_
  /// When the stop's timer stops the VM hard (guarded by stop_mutex_): a later stop may bring it
  /// nearer.
  std::chrono::steady_clock::time_point stop_deadline_ = std::chrono::steady_clock::time_point::max();
  std::thread stopper_;     // the hard stop after the timeout
  // GET /vm/metrics's walk of /proc/self/smaps, which holds the process's memory map (a vCPU's
  // page fault can wait behind a writer queued after it: a thread being made): one at a time, and
  // its answer reused for a second, whatever the number of clients asking.
  std::mutex metrics_mutex_;
  std::chrono::steady_clock::time_point metrics_at_{};  // guarded by metrics_mutex_
  nlohmann::json metrics_memory_;                       // guarded by metrics_mutex_
};

}  // namespace vmm::api
