#include "vmm/cli/vm_cli.hpp"

#include <fmt/format.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "clone/template.hpp"
#include "vmm/api/http.hpp"
#include "vmm/api/json_text.hpp"
#include "vmm/api/registry.hpp"
#include "vmm/base/process.hpp"
#include "vmm/cli/cli.hpp"
#include "vmm/exit_status.hpp"
#include "vmm/machine.hpp"

namespace vmm::cli {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

/// The response's fault_message, or its body.
std::string fault_text(const api::HttpResponse& r) {
  auto j = json::parse(r.body, nullptr, false);
  if (j.is_object() && j.contains("fault_message") && j["fault_message"].is_string()) return j["fault_message"].get<std::string>();
  return fmt::format("HTTP {}", r.status);
}

int ps(const fs::path& sdir, bool as_json) {
  json all = json::array();
  for (const auto& vm : api::running_vms(sdir)) {
    json entry{{"name", vm.name}, {"pid", vm.pid}, {"api_socket", vm.socket.string()}, {"state", "unknown"}};
    auto r = api::call(vm.socket.string(), {.method = "GET", .path = "/vm", .body = {}}, 2.0);
    if (r && r->status == 200) {
      auto j = json::parse(r->body, nullptr, false);
      if (j.is_object()) entry = j;
    }
    auto m = api::call(vm.socket.string(), {.method = "GET", .path = "/vm/metrics", .body = {}}, 2.0);
    if (m && m->status == 200) {
      auto j = json::parse(m->body, nullptr, false);
      if (j.is_object() && j.contains("memory")) entry["memory"] = j["memory"];
    }
    all.push_back(entry);
  }
  if (as_json) {
    fmt::print("{}\n", api::json_display(all, 2));
    return exit_code::kOk;
  }
  fmt::print("{:<24} {:<9} {:>8} {:>8} {:>10} {:<17} {:<15} {}\n", "NAME", "STATE", "PID", "MEMORY", "PRIVATE", "MAC", "IP", "TEMPLATE");
  for (const auto& e : all) {
    // An answer of the wrong shape (a server that is not a vmm, another version) is shown as such,
    // not the end of the listing: json's accessors throw on a type they did not expect.
    try {
      const std::string mem = e.contains("config") ? fmt::format("{}M", e["config"].value("memory_mib", 0)) : "-";
      const std::string priv = e.contains("memory") ? fmt::format("{}K", e["memory"].value("private_dirty_kib", 0)) : "-";
      std::string from = "-";
      if (e.contains("template") && e["template"].is_object()) from = e["template"].value("name", "-");
      if (e.contains("parent") && e["parent"].is_string()) from = "fork of " + e["parent"].get<std::string>();
      // The first interface's MAC, and the guest's IP as the host reaches it (in a namespace: its
      // outside address).
      std::string mac = "-", ip = "-";
      if (e.contains("config") && e["config"].is_object()) {
        const json& c = e["config"];
        ip = c.value("ip", "-");
        if (auto slash = ip.find('/'); slash != std::string::npos) ip.resize(slash);
        const json nets = c.value("nets", json::array());
        if (nets.is_array() && !nets.empty() && nets[0].is_object()) {
          mac = nets[0].value("mac", "-");
          ip = nets[0].value("outside", ip);
        }
      }
      fmt::print("{:<24} {:<9} {:>8} {:>8} {:>10} {:<17} {:<15} {}\n", e.value("name", "?"), e.value("state", "?"), e.value("pid", 0), mem,
                 priv, mac, ip, from);
    } catch (const json::exception&) {
      fmt::print("{:<24} {:<9} {:>8} {:>8} {:>10} {:<17} {:<15} {}\n", "?", "unknown", "?", "-", "-", "-", "-", "(an answer vmm cannot read)");
    }
  }
  return exit_code::kOk;
}

constexpr double kStopGraceS = 10;

int vm_command_answered(const VmCommand& c) {
  const fs::path sdir = resolve_state_dir(c.state_dir);
  if (c.verb == "ps") return ps(sdir, c.json);
  auto socket = api::find_vm(sdir, c.target);
  if (!socket) return report_error(exit_code::kUsage, socket.error().message());
  if (c.target.find('/') == std::string::npos) {
    // By name: the VM that answers on the socket its registration names must be that VM (a socket
    // path given to two VMs, or one that another server has taken since).
    // Asked first, and nothing else is sent unless it answers as that VM: a server that does not
    // (an error, another program) is not told to pause or stop.
    auto who = api::call(socket->string(), api::HttpRequest{.method = "GET", .path = "/vm", .body = {}}, 10);
    if (!who) return report_error(exit_code::kVmmError, fmt::format("{}: {}", c.target, who.error().message()));
    const json j = who->status == 200 ? json::parse(who->body, nullptr, false) : json();
    const std::string name = j.is_object() && j.contains("name") && j["name"].is_string() ? j["name"].get<std::string>() : "";
    if (name != c.target) {
      return report_error(exit_code::kVmmError, fmt::format("{}: its API socket {} is served by {}, not by it", c.target, socket->string(),
                                                            name.empty() ? "another server" : "the VM '" + name + "'"));
    }
  }
  api::HttpRequest req{.method = "PUT", .path = "/vm/" + c.verb, .body = "{}"};
  // Longer than the server may take: a pause waits up to 30 s for the disks' requests in flight
  // (Machine::quiesce) after its vCPUs stopped; at 30 s here the CLI said it failed, and the VM
  // then paused all the same.
  double timeout = 60;
  json body_json;  // a body with the user's text (paths, names, console input): checked for UTF-8
  if (c.verb == "stop") {
    req.body = json{{"timeout_s", c.timeout_s}}.dump();  // (a number)
    timeout = c.timeout_s + 5;
  } else if (c.verb == "snapshot") {
    // A name (no '/') is a template of the state directory, as `vmm template create NAME` makes
    // one; a path is taken from here (it was made absolute even as a bare name, so `vmm snapshot vm
    // t` wrote ./t, not STATE/templates/t).
    const std::string dir = c.dir.find('/') == std::string::npos ? c.dir : fs::absolute(c.dir).string();
    json body{{"dir", dir}, {"resume", !c.stay_paused}};
    if (c.at_rest) body["at_rest"] = true;  // (only when asked: a VM of an older vmm refuses the field)
    body_json = body;
    timeout = 600;
  } else if (c.verb == "fork") {
    json body{{"count", c.count}, {"resume", !c.stay_paused}, {"children_paused", c.children_paused}};
    if (c.at_rest) body["at_rest"] = true;
    if (!c.nets.empty()) body["nets"] = c.nets;
    for (auto [key, value] : {std::pair{"hostname", &c.hostname}, {"ip", &c.ip}, {"gateway", &c.gateway}}) {
      if (!value->empty()) body[key] = *value;
    }
    body_json = body;
    timeout = 120;
  } else if (c.verb == "input") {
    std::string line;
    for (const auto& w : c.text) line += (line.empty() ? "" : " ") + w;
    body_json = json{{"text", line + "\n"}};
  }
  if (!body_json.is_null()) {
    auto text = api::json_text(body_json, fmt::format("vmm {}", c.verb));
    if (!text) return report_error(exit_code::kUsage, text.error().message());
    req.body = std::move(*text);
  }
  // Who is to be stopped, held before it is told: its process's end is what `vmm stop` waits for.
  Fd process;
  if (c.verb == "stop" && !c.no_wait) {
    // The listening socket's owner: each VM listens itself.
    auto p = api::listener_process(socket->string());
    if (!p) return report_error(exit_code::kVmmError, fmt::format("{}: {}", c.target, p.error().message()));
    process = std::move(*p);
  }
  auto r = api::call(socket->string(), req, timeout);
  if (!r) return report_error(exit_code::kVmmError, fmt::format("{}: {}", c.target, r.error().message()));
  // A VM already told to stop (by another stop: the API answers 409): this stop waits for its
  // end as the first does (`vmm stop X && vmm run --name X` no longer raced the first stop).
  const bool already_stopping = c.verb == "stop" && r->status == 409;
  if (already_stopping) {
    r->status = 204;
    r->body.clear();
  }
  if (process && r->status < 300) {
    // Ended once its disks are closed and its TAPs and namespace are gone: the hard stop comes at
    // the timeout, and what follows it (KVM tearing the VM down, the event loop ending) gets 10 s.
    if (auto w = wait_exit(process, c.timeout_s + kStopGraceS); !w) {
      return report_error(exit_code::kVmmError, fmt::format("{}: told to stop, but {}", c.target, w.error().message()));
    }
  }
  // An "at_rest" operation whose guest did not idle in time was done all the same: said on stderr.
  auto say_if_busy = [&c](const json& j, const char* done) {
    if (j.contains("at_rest") && j["at_rest"].is_boolean() && !j["at_rest"].get<bool>()) {
      fmt::print(stderr, "vmm: {}: {} busy: a vCPU had not gone idle within {} ms\n", c.target, done, Machine::kAtRestGrace.count());
    }
  };
  if (r->status >= 300) return report_error(r->status < 500 ? exit_code::kUsage : exit_code::kVmmError, fmt::format("{}: {}", c.target, fault_text(*r)));
  if (!r->body.empty()) {
    auto j = json::parse(r->body, nullptr, false);
    if (c.verb == "fork" && j.is_object() && j.contains("children")) {
      size_t failed = 0;
      for (const auto& ch : j["children"]) {
        if (ch.contains("error")) {
          ++failed;
          (void)report_error(exit_code::kVmmError, fmt::format("{}: fork {}: {}", c.target, ch.value("name", "?"), ch.value("error", "")));
          continue;
        }
        fmt::print("{} {}\n", ch.value("name", "?"), ch.value("pid", 0));
      }
      if (j.contains("paused_ms")) {
        // "forked 2 of 3 time(s)" when some failed (each said why above).
        const size_t asked = j["children"].size();
        const std::string times = failed ? fmt::format("{} of {}", asked - failed, asked) : fmt::format("{}", asked);
        fmt::print(stderr,
                   "vmm: {} forked {} time(s), paused {:.2f} ms (quiesce {:.2f}, capture {:.2f}, disks {:.2f}, fork {:.2f}, resume {:.2f}) "
                   "after {:.2f} ms of preparation\n",
                   c.target, times, j.value("paused_ms", 0.0), j.value("quiesce_ms", 0.0), j.value("capture_ms", 0.0),
                   j.value("disks_ms", 0.0), j.value("fork_ms", 0.0), j.value("resume_ms", 0.0), j.value("prepare_ms", 0.0));
      }
      say_if_busy(j, "forked");
      if (failed) return exit_code::kVmmError;
    } else if (c.verb == "snapshot" && j.is_object() && j.contains("template")) {
      fmt::print("{}\n", j["template"].get<std::string>());
      say_if_busy(j, "saved");
    } else {
      fmt::print("{}\n", r->body);
    }
  }
  return exit_code::kOk;
}

}  // namespace

int vm_command(const VmCommand& c) {
  // A server that answers JSON of another shape (not a vmm, another version): one line, not an
  // abort (json's accessors throw on a type they did not expect).
  try {
    return vm_command_answered(c);
  } catch (const json::exception& e) {
    return report_error(exit_code::kVmmError, fmt::format("{}: an answer vmm cannot read: {}", c.target, e.what()));
  }
}

}  // namespace vmm::cli
