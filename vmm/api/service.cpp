#include "vmm/api/service.hpp"

#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <set>

#include "vmm/base/thread.hpp"

namespace vmm::api {

using nlohmann::json;

namespace {

HttpResponse ok_json(const json& body) {
  return HttpResponse{.status = 200, .body = json_body(body), .allow = {}};
}
HttpResponse no_content() { return HttpResponse{.status = 204, .body = {}, .allow = {}}; }

template <typename... F>
struct Overloaded : F... {
  using F::operator()...;
};
template <typename... F>
Overloaded(F...) -> Overloaded<F...>;  // (clang 14, the fuzz build's, deduces no aggregate)

/// Private_Dirty and Rss (KiB) of this process, and of the mapping that starts at `guest`.
struct MemoryUse {
  uint64_t private_dirty_kib = 0, rss_kib = 0, guest_private_dirty_kib = 0, guest_rss_kib = 0;
};
MemoryUse memory_use(uintptr_t guest) {
  MemoryUse m;
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool in_guest = false;
  while (std::getline(smaps, line)) {
    uintptr_t lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2 && line.find(':') > line.find(' ')) {
      in_guest = lo == guest;
      continue;
    }
    uint64_t kib = 0;
    if (std::sscanf(line.c_str(), "Private_Dirty: %lu kB", &kib) == 1) {
      m.private_dirty_kib += kib;
      if (in_guest) m.guest_private_dirty_kib += kib;
    } else if (std::sscanf(line.c_str(), "Rss: %lu kB", &kib) == 1) {
      m.rss_kib += kib;
      if (in_guest) m.guest_rss_kib += kib;
    }
  }
  return m;
}

}  // namespace

VmService::VmService(Machine& machine, VmInfo info, VmOperations ops)
    : machine_(machine), info_(std::move(info)), ops_(std::move(ops)), paused_(info_.paused) {}

VmService::~VmService() {
  {
    std::lock_guard lock(stop_mutex_);
    cancelled_ = true;
  }
  stop_cv_.notify_all();
  if (stopper_.joinable()) stopper_.join();
}

void VmService::set_generation(std::string generation) {
  std::lock_guard lock(mutex_);
  info_.generation = std::move(generation);
}

HttpResponse VmService::handle(const HttpRequest& r) noexcept {
  try {
    return route(r);
  } catch (const std::exception& e) {
    try {
      return fault(500, std::string("internal error: ") + e.what());
    } catch (...) {
    }
  } catch (...) {
  }
  return HttpResponse{.status = 500, .body = {}, .allow = {}};
}

HttpResponse VmService::route(const HttpRequest& r) {
  auto request = parse_vm_request(r);
  if (!request) return request.error();
  return std::visit(
      Overloaded{[&](const GetVmRequest&) { return get_vm(); }, [&](const MetricsRequest&) { return metrics(); },
                 [&](const PauseRequest&) { return pause(); }, [&](const ResumeRequest&) { return resume(); },
                 [&](const StopRequest& s) { return stop(s); }, [&](const InputRequest& i) { return input(i.text); },
                 [&](const SnapshotRequest& s) {
                   if (!ops_.snapshot) return fault(400, "this VM does not support that operation");
                   return paused_operation(s.pause, [&](const PauseWindow& w) { return ops_.snapshot(s, w); });
                 },
                 [&](const ForkRequest& f) {
                   if (!ops_.fork) return fault(400, "this VM does not support that operation");
                   return paused_operation(f.pause, [&](const PauseWindow& w) { return ops_.fork(f, w); });
                 }},
      *request);
}

HttpResponse VmService::get_vm() {
  std::lock_guard lock(mutex_);
  const double uptime = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  json j{{"id", info_.id},
         {"name", info_.name},
         {"kind", info_.kind},
         {"state", stopping() ? "stopping" : paused_ ? "paused" : "running"},  // (a guest's power-off, a signal too)
         {"pid", ::getpid()},
         {"generation", info_.generation},
         {"uptime_s", uptime},
         {"config", info_.config},
         {"api_socket", info_.api_socket}};
  if (!info_.template_name.empty()) j["template"] = {{"name", info_.template_name}, {"dir", info_.template_dir}};
  if (info_.requested) {
    // The start, from the request: vCPU 0's first KVM_RUN entered and returned, the first byte on
    // the console (null until it happened).
    auto since = [&](const std::optional<std::chrono::steady_clock::time_point>& t) -> json {
      if (!t) return nullptr;
      return std::chrono::duration<double, std::milli>(*t - *info_.requested).count();
    };
    const auto run = machine_.vm().first_run();
    j["start_ms"] = {{"first_entry", since(run.entered)}, {"first_exit", since(run.exited)},
                     {"first_output", since(machine_.platform().serial().first_output())}};
    for (const auto& [step, at] : info_.steps) j["start_ms"][step] = since(at);
  }
  if (!info_.parent.empty()) j["parent"] = info_.parent;
  return ok_json(j);
}

namespace {

HttpResponse busy() { return fault(409, "another operation (a pause, resume, snapshot or fork) is in progress"); }

}  // namespace

void VmService::resume_for_stop() {
  // The stop sets stopping_ and press_pending_, then tries the lock; an operation releases the
  // lock, then tries it and looks at them, and once it lets go again, looks whether a stop came
  // while it held it (and found it taken): whichever comes last does it. The power button is
  // pressed only into a VM that runs: never into one paused for a snapshot or a fork (the capture
  // kept the press, and every clone of that template shut down as it started).
  for (;;) {
    {
      std::unique_lock op(op_mutex_, std::try_to_lock);
      if (!op.owns_lock()) return;  // its holder does it when it lets go
      if (stopping_) {
        if (paused_) {
          machine_.resume();
          paused_ = false;
          quiesced_ = false;
        }
        if (press_pending_.exchange(false)) machine_.platform().press_power_button();
      }
    }
    if (!(stopping_ && press_pending_)) return;
  }
}

HttpResponse VmService::pause() {
  AfterOperation after{*this};  // (declared first: runs once the lock below is released)
  std::unique_lock op(op_mutex_, std::try_to_lock);
  if (!op.owns_lock()) return busy();
  if (stopping()) return fault(409, "the VM is stopping");
  if (paused_) return fault(409, "the VM is already paused");
  if (auto r = machine_.quiesce(); !r) {
    machine_.resume();
    return fault(stopping() ? 409 : 500, r.error().message());
  }
  paused_ = true;
  quiesced_ = true;
  if (stopping()) return fault(409, "the VM is stopping");  // resumed after, for its power button
  return no_content();
}

HttpResponse VmService::resume() {
  // A stop that came while this held the lock found it taken, and this one then sees it stopping:
  // the VM is resumed for its power button all the same, once the lock is released.
  AfterOperation after{*this};
  std::unique_lock op(op_mutex_, std::try_to_lock);
  if (!op.owns_lock()) return busy();
  if (stopping()) return fault(409, "the VM is stopping");
  if (!paused_) return fault(409, "the VM is not paused");
  machine_.resume();
  paused_ = false;
  quiesced_ = false;
  return no_content();
}

HttpResponse VmService::stop(const StopRequest& request) {
  const double timeout = request.timeout_s;
  auto hard_stop = [this] {
    machine_.vm().request_stop(StopInfo{.reason = devices::StopReason::PowerOff, .status = 0, .message = "stopped through the API"});
  };
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(std::max(timeout, 0.0)));
  if (stopping_.exchange(true)) {
    // Stopping already: this stop's timeout counts if it ends sooner (`vmm stop X --timeout 0`
    // after a stop with a long one is the hard stop it says); the answer is the first stop's.
    if (timeout <= 0) {
      hard_stop();
    } else {
      {
        std::lock_guard l(stop_mutex_);
        stop_deadline_ = std::min(stop_deadline_, deadline);
      }
      stop_cv_.notify_all();
    }
    return no_content();
  }
  if (timeout <= 0) {
    hard_stop();
    return no_content();
  }
  {
    std::lock_guard l(stop_mutex_);
    stop_deadline_ = std::min(stop_deadline_, deadline);
  }
  // The hard stop's timer first: without it the guest is not asked (a 503, nothing changed).
  auto timer = start_thread("the stop's timer thread", [this, hard_stop] {
    std::unique_lock l(stop_mutex_);
    while (!cancelled_ && std::chrono::steady_clock::now() < stop_deadline_) stop_cv_.wait_until(l, stop_deadline_);
    if (!cancelled_) hard_stop();
  });
  if (!timer) {
    stopping_ = false;
    return fault(503, timer.error().message());
  }
  stopper_ = std::move(*timer);
  // The guest is asked first: a paused one could not answer, so it runs again and is asked then
  // (now, or when the operation that paused it ends: never under a snapshot or a fork in progress).
  press_pending_ = true;
  resume_for_stop();
  return no_content();
}

HttpResponse VmService::input(const std::string& text) {
  // Typed into the serial port's receive FIFO (64 bytes) as the guest drains it: a console with no
  // terminal (a clone's, a fork's console.log) can still be driven. A guest that stops reading
  // gets what fitted and the request a 409 after kInputTimeout.
  constexpr auto kInputTimeout = std::chrono::seconds(10);
  if (paused_) return fault(409, "the VM is paused");
  const auto deadline = std::chrono::steady_clock::now() + kInputTimeout;
  // Whole requests in turn: each connection has a thread, and two typing at once as the FIFO
  // drained mixed their bytes (two commands became one garbled line).
  std::unique_lock typing(input_mutex_, std::defer_lock);
  if (!typing.try_lock_until(deadline)) return fault(409, "another input is still being typed: the guest did not read its console");
  devices::Serial& serial = machine_.platform().serial();
  std::span<const uint8_t> rest(reinterpret_cast<const uint8_t*>(text.data()), text.size());
  while (!rest.empty()) {
    rest = rest.subspan(serial.enqueue_input(rest));
    if (rest.empty()) break;
    if (serial.input_held()) return fault(409, "the VM is being paused (for a snapshot or a fork)");
    if (stopping()) return fault(409, "the VM is stopping");  // not holding its end for up to kInputTimeout
    if (std::chrono::steady_clock::now() > deadline) {
      return fault(409, fmt::format("the guest did not read its console: {} of {} bytes typed", text.size() - rest.size(), text.size()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return no_content();
}

HttpResponse VmService::metrics() {
  json memory;
  {
    std::lock_guard lock(metrics_mutex_);
    const auto now = std::chrono::steady_clock::now();
    if (metrics_memory_.is_null() || now - metrics_at_ >= std::chrono::seconds(1)) {
      const MemoryUse m = memory_use(reinterpret_cast<uintptr_t>(machine_.vm().memory().regions().front().host));
      metrics_memory_ = {{"private_dirty_kib", m.private_dirty_kib},
                         {"rss_kib", m.rss_kib},
                         {"guest_dirty_kib", m.guest_private_dirty_kib},
                         {"guest_resident_kib", m.guest_rss_kib}};
      metrics_at_ = std::chrono::steady_clock::now();
    }
    memory = metrics_memory_;
  }
  json j{{"uptime_s", std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count()}, {"memory", memory}};
  json disks = json::array();
  for (const auto& d : machine_.platform().disks()) {
    const auto s = d->stats();
    disks.push_back({{"id", d->id()}, {"reads", s.reads}, {"read_bytes", s.read_bytes}, {"writes", s.writes},
                     {"write_bytes", s.write_bytes}, {"flushes", s.flushes}, {"discards", s.discards}, {"errors", s.errors}});
  }
  json nets = json::array();
  for (const auto& n : machine_.platform().nets()) {
    const auto s = n->stats();
    nets.push_back({{"mac", devices::virtio::format_mac(n->mac())}, {"tap", n->tap().name()}, {"rx_frames", s.rx_frames},
                    {"rx_bytes", s.rx_bytes}, {"tx_frames", s.tx_frames}, {"tx_bytes", s.tx_bytes}, {"errors", s.errors}, {"filtered", s.filtered}});
  }
  // Exits by kind, all vCPUs together, from KVM's own statistics (KVM_GET_STATS_FD): "exits" is
  // every exit, the rest KVM's "<kind>_exits" counters (io, mmio, halt, irq, signal, ...), those
  // handled inside KVM included.
  json exits = json::object();
  Vm& vm = machine_.vm();
  for (size_t i = 0; i < vm.vcpu_count(); ++i) {
    auto stats = vm.vcpu(i).stats();
    if (!stats) {
      exits = {{"error", stats.error().message()}};
      break;
    }
    for (const auto& s : *stats) {
      if (s.name != "exits" && !s.name.ends_with("_exits")) continue;
      const std::string kind = s.name == "exits" ? "total" : s.name.substr(0, s.name.size() - 6);
      exits[kind] = exits.value(kind, uint64_t{0}) + s.value;
    }
  }
  j["exits"] = std::move(exits);
  j["disks"] = std::move(disks);
  j["nets"] = std::move(nets);
  return ok_json(j);
}

HttpResponse VmService::paused_operation(const PauseOptions& options, const std::function<Result<json>(const PauseWindow&)>& op) {
  AfterOperation after{*this};  // (declared first: runs once the lock below is released)
  std::unique_lock op_lock(op_mutex_, std::try_to_lock);
  if (!op_lock.owns_lock()) return busy();
  if (stopping()) return fault(409, "the VM is stopping");
  // A VM paused through the API stays paused; otherwise it runs again when the operation lets it
  // (or at the end), unless the request says "resume": false.
  using clock = std::chrono::steady_clock;
  auto ms = [](clock::time_point from, clock::time_point to) { return std::chrono::duration<double, std::milli>(to - from).count(); };
  const auto requested = clock::now();
  const bool want_resume = !paused_ && options.resume;
  const bool want_rest = options.at_rest;
  std::optional<bool> at_rest;  // with "at_rest": whether the guest was caught idle
  std::optional<clock::time_point> paused_at;  // when this operation paused the VM
  double quiesce_ms = 0, resume_ms = 0;
  double paused_ms = -1;  // how long this request kept the guest from running
  std::optional<Error> pause_error;
  bool began = false;  // the request was checked (PauseWindow::begin, pause): what fails from there is ours
  auto pause = [&]() -> Result<> {
    began = true;
    // A VM that started paused has its vCPUs parked but its I/O thread running: it is quiesced
    // now (an operation drives the event loop itself, which must then be its only user).
    if (paused_ && quiesced_) return {};
    const bool was_paused = paused_;
    paused_at = clock::now();
    // "at_rest": paused when every vCPU idles (HLT), if that comes within Machine::kAtRestGrace,
    // so that a template or a fork does not begin in the middle of the guest's work (a line half
    // printed, which every clone would finish first); a guest already paused is taken as it is.
    // The wait counts in quiesce_ms and paused_ms, though the guest ran during it.
    Result<bool> quiesced = false;
    if (want_rest && !was_paused) {
      quiesced = machine_.quiesce_at_rest(Machine::kAtRestGrace);
      if (quiesced) at_rest = *quiesced;
    } else if (auto q = machine_.quiesce(); !q) {
      quiesced = std::unexpected(q.error());
    }
    if (!quiesced) {
      const Error r = quiesced.error();
      // Its I/O runs again; vCPUs that were paused (a fork's child started paused) stay so.
      if (was_paused) {
        machine_.resume_io();
      } else {
        machine_.resume();
      }
      paused_at.reset();
      pause_error = r;
      return std::unexpected(r);
    }
    paused_ = true;
    quiesced_ = true;
    quiesce_ms = ms(*paused_at, clock::now());
    return {};
  };
  auto resume = [&] {
    if (want_resume && paused_at && paused_) {
      const auto r0 = clock::now();
      machine_.resume();
      paused_ = false;
      quiesced_ = false;
      const auto r1 = clock::now();
      resume_ms = ms(r0, r1);
      paused_ms = ms(*paused_at, r1);
    }
  };
  auto result = op(PauseWindow{.begin = [&] { began = true; }, .pause = pause, .resume = resume});
  resume();
  if (pause_error) return fault(stopping() ? 409 : 500, pause_error->message());
  // Refused before the request was checked (a bad request, a name taken): the client's, 400. Failed
  // while doing it (a full disk, a fork the system refused): the server's, 500. Ended by a stop
  // that came meanwhile: 409, as a pause it ended.
  if (!result) return fault(stopping() ? 409 : began ? 500 : 400, result.error().message());
  if (result->is_object() && paused_ms >= 0) {
    (*result)["prepare_ms"] = ms(requested, *paused_at);
    (*result)["paused_ms"] = paused_ms;
    (*result)["quiesce_ms"] = quiesce_ms;
    (*result)["resume_ms"] = resume_ms;
  }
  if (result->is_object() && at_rest) (*result)["at_rest"] = *at_rest;
  return ok_json(*result);
}

}  // namespace vmm::api
