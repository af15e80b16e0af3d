// `vmm template bench TEMPLATE`: the clone path alone, in one process, as a library call: for each
// clone, from mapping the template's memory file to the guest's answer on its console after resume
// (its directory and overlays made, devices opened, KVM VM built, state restored, identity given,
// vCPUs started), then stopped and removed, untimed. What `vmm run --clone-of` adds on top is the
// process (exec, dynamic start, the template's files read, /dev/kvm opened) and its registration.
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <thread>

#include <fmt/format.h>

#include "vmm/identity.hpp"
#include "clone/memory_file.hpp"
#include "vmm/base/thread.hpp"
#include "vmm/exit_status.hpp"
#include "vmm/cli/template_cli.hpp"

namespace vmm::cli {

namespace {

using Clock = std::chrono::steady_clock;

double ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

struct Spread {
  double median, min, max;
};
Spread spread(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return {n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2, v.front(), v.back()};
}

}  // namespace

int template_bench(const clone::CloneOptions& options, unsigned count, const std::string& input, const std::string& expect,
                   double timeout_s) {
  clone::CloneOptions o = options;
  clone::OpenTemplate t;
  if (auto f = clone::open_template(o, t)) return report_failure(*f);
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK) != 0) return report_error(exit_code::kVmmError, fmt::format("pipe: {}", errno_text(errno)));
  const Fd out_read(pipe_fds[0]), out_write(pipe_fds[1]);
  const Fd ended(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));  // a clone's machine stopped
  if (!ended) return report_error(exit_code::kVmmError, fmt::format("eventfd: {}", errno_text(errno)));
  o.console = devices::ConsoleSpec{.kind = devices::ConsoleSpec::Kind::Fd, .path = {}, .fd = out_write.get()};
  o.console_given = true;

  t.memory.reset();  // mapped in each clone's time below, as `vmm run --clone-of` maps it
  std::vector<double> first_output, first_byte, first_exit, resumed;
  std::map<std::string, std::vector<double>> steps;  // each step's time since the previous one
  std::vector<std::string> order;
  for (unsigned i = 0; i < count; ++i) {
    const std::string name = fmt::format("{}-bench-{}-{}", t.manifest.name, random_hex(4), i);
    const auto t0 = Clock::now();
    {  // each clone its own copy-on-write mapping of the memory file
      auto m = clone::map_memory_file(t.memory_file.fd.get(), t.tdir / t.manifest.memory_file.name, t.manifest.memory);
      if (!m) return report_error(exit_code::kImage, m.error().message());
      t.memory.emplace(std::move(*m));
    }
    auto c = clone::prepare_clone(t, o, name, /*inherited=*/false);
    if (!c) return report_failure(c.error());
    Machine& m = *(*c)->machine;
    if (!input.empty()) {
      const auto* bytes = reinterpret_cast<const uint8_t*>(input.data());
      if (m.platform().serial().enqueue_input({bytes, input.size()}) != input.size()) {
        return report_error(exit_code::kUsage, fmt::format("--input: {} bytes do not fit in the UART's receive FIFO", input.size()));
      }
    }
    if (auto r = clone::begin_clone(t, o, **c); !r) return report_error(exit_code::kVmmError, r.error().message());
    const auto t_resume = Clock::now();
    StopInfo stop;
    auto runner = start_thread("the clone's running thread", [&] {
      stop = m.run();
      const uint64_t one = 1;
      (void)!::write(ended.get(), &one, sizeof one);
    });
    if (!runner) return report_error(exit_code::kVmmError, runner.error().message());
    // Until the output holds `expect` (the guest's answer; not merely its first byte, which may be
    // the rest of the line the template was saved on), the clone's machine stops, or the time is up.
    const auto deadline = t_resume + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
    std::string out;
    bool found = false, stopped = false;
    Clock::time_point t_first;
    while (!found && !stopped) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left < 0) break;
      pollfd p[2] = {{.fd = out_read.get(), .events = POLLIN, .revents = 0}, {.fd = ended.get(), .events = POLLIN, .revents = 0}};
      if (::poll(p, 2, static_cast<int>(left) + 1) < 0 && errno != EINTR) break;
      char buf[4096];
      for (ssize_t got; (got = ::read(out_read.get(), buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(got));
      found = out.find(expect) != std::string::npos;
      t_first = Clock::now();
      stopped = p[1].revents & POLLIN;
    }
    m.vm().request_stop(StopInfo{.reason = devices::StopReason::PowerOff, .status = 0, .message = "template bench"});
    runner->join();
    uint64_t n = 0;
    (void)!::read(ended.get(), &n, sizeof n);
    char drain[4096];
    while (::read(out_read.get(), drain, sizeof drain) > 0) {
    }
    if (!found) {
      const std::string line = input.substr(0, input.find('\n'));
      if (stopped) return report_error(exit_code::kVmmError, fmt::format("clone {} stopped before it printed '{}': {}", name, expect, stop.message));
      return report_error(exit_code::kVmmError, fmt::format("clone {}: '{}' not printed within {} s of its resume (does its guest answer '{}'?)",
                                                            name, expect, timeout_s, line));
    }
    first_output.push_back(ms(t_first - t0));
    // The guest's first byte after resume, as the UART took it (a template is saved idle after its
    // ready line: this is the first byte of the answer).
    if (const auto b = m.platform().serial().first_output()) first_byte.push_back(ms(*b - t0));
    // vCPU 0's first return from KVM_RUN after resume: the guest ran (what KVM's own floor,
    // scripts/bench/kvm-floor.c, is timed to; the answer is the guest's own work after it).
    if (const auto e = m.vm().first_run().exited) first_exit.push_back(ms(*e - t0));
    resumed.push_back(ms(t_resume - t0));
    auto prev = t0;
    for (const auto& [what, when] : (*c)->steps) {
      if (!steps.contains(what)) order.push_back(what);
      steps[what].push_back(ms(when - prev));
      prev = when;
    }
    steps["answer"].push_back(ms(t_first - t_resume));
    c->reset();  // the machine and the clone's directory: untimed
  }
  if (count > 0 && std::find(order.begin(), order.end(), "answer") == order.end()) order.push_back("answer");
  const auto f = spread(first_output), r = spread(resumed);
  fmt::print("vmm template bench: {} clones of {} ({} MiB, {} vCPU(s)) in one process\n", count, t.manifest.name,
             t.manifest.memory >> 20, t.manifest.vcpus);
  if (first_byte.size() == first_output.size() && !first_byte.empty()) {
    const auto b = spread(first_byte);
    fmt::print("  to the first byte: median {:.3f} ms (min {:.3f}, max {:.3f})\n", b.median, b.min, b.max);
  }
  fmt::print("  to the answer: median {:.3f} ms (min {:.3f}, max {:.3f})\n", f.median, f.min, f.max);
  if (first_exit.size() == first_output.size() && !first_exit.empty()) {
    const auto e = spread(first_exit);
    fmt::print("  to the guest's first exit: median {:.3f} ms (min {:.3f}, max {:.3f})\n", e.median, e.min, e.max);
  }
  fmt::print("  to resume: median {:.3f} ms (min {:.3f}, max {:.3f})\n", r.median, r.min, r.max);
  fmt::print("  steps (median ms since the previous one):");
  for (const auto& what : order) fmt::print(" {} {:.3f};", what, spread(steps[what]).median);
  fmt::print("\n");
  return exit_code::kOk;
}

}  // namespace vmm::cli
