// libFuzzer target for the requests of the control API (vmm/api/requests.hpp): what any local client
// may ask of a VM (parse_vm_request) or of a pool (parse_pool_request) once the transport has
// delivered it. Built by clang only (tests/fuzz/fuzz.cmake, scripts/fuzz-api.sh) with
// -fsanitize=fuzzer,address,undefined.
//
// Input: byte 0 picks the method, byte 1 the path (from the API's own, plus a few that are not);
// the rest is the body. Checked:
//  - nothing throws; parsing the same request twice gives the same answer;
//  - a refusal is 400, 404 or 405 with {"fault_message": "<one line>"} and nothing else, and an
//    Allow header only on 405 (GET or PUT);
//  - a body that is not a JSON object (blank aside) is never accepted, but on a GET (not read);
//  - what is accepted is checked: the request fits its path, the fork's count is 1..256, its nets
//    parse as --net does and carry no MAC, its ip is normalised (checking it again gives it back),
//    its gateway is an address; a snapshot has a directory; a stop's timeout is 0..3600 s; a pool
//    request's fields pass the command line's checks.
//
// VMM_API_FUZZ_MAKE_SEEDS=DIR writes a few requests of each kind to DIR and exits.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "vmm/api/requests.hpp"
#include "vmm/device_spec.hpp"
#include "vmm/identity.hpp"

namespace {

namespace fs = std::filesystem;
using namespace vmm::api;
using nlohmann::json;

[[noreturn]] void die(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "api_fuzz: %s%s%s\n", what, detail.empty() ? "" : ": ", detail.c_str());
  std::abort();
}

constexpr const char* kMethods[] = {"GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "", "put"};
constexpr const char* kPaths[] = {"/vm",      "/vm/metrics", "/vm/pause", "/vm/resume", "/vm/stop", "/vm/input",
                                  "/vm/snapshot", "/vm/fork", "/clones",   "/vm/",       "",         "/vm/fork/x", "/pool"};

/// `other_method`: what a 405's Allow may name besides GET (PUT for a VM, POST for a pool).
void check_fault(const HttpResponse& r, std::string_view other_method) {
  if (r.status != 400 && r.status != 404 && r.status != 405) die("a refusal that is not 400, 404 or 405", std::to_string(r.status));
  const json j = json::parse(r.body, nullptr, false);
  if (!j.is_object() || j.size() != 1 || !j.contains("fault_message") || !j["fault_message"].is_string()) {
    die("a refusal's body is not {\"fault_message\": ...}", r.body);
  }
  if (j["fault_message"].get<std::string>().find('\n') != std::string::npos) die("a fault_message of more than one line", r.body);
  if ((r.status == 405) != !r.allow.empty()) die("Allow without 405, or 405 without Allow", r.allow);
  if (r.status == 405 && r.allow != "GET" && r.allow != other_method) die("a 405's Allow names another method", r.allow);
}

bool blank(std::string_view body) { return body.find_first_not_of(" \t\r\n") == std::string_view::npos; }

void check_object_body(std::string_view body) {
  if (blank(body)) return;
  const json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) die("a body that is not a JSON object was accepted", std::string(body));
}

void check_ip(const std::string& ip) {
  if (ip.empty()) return;
  auto again = vmm::check_ip(ip);
  if (!again || *again != ip) die("an accepted ip is not normalised", ip);
}

void check_gateway(const std::string& gateway) {
  if (!gateway.empty() && !vmm::check_gateway(gateway)) die("an accepted gateway does not pass --gateway's check", gateway);
}

void check_accepted(const HttpRequest& r, const VmRequest& v) {
  const bool get = r.method == "GET" || r.method == "HEAD";
  if (!get) check_object_body(r.body);  // (a GET's body means nothing: it is not read)
  auto expect = [&](bool ok) {
    if (!ok) die("an accepted request does not fit its path and method", r.method + " " + r.path);
  };
  if (const auto* s = std::get_if<StopRequest>(&v)) {
    expect(r.path == "/vm/stop" && r.method == "PUT");
    if (!(s->timeout_s >= 0 && s->timeout_s <= 3600)) die("a stop timeout outside 0..3600", std::to_string(s->timeout_s));
  } else if (const auto* s = std::get_if<SnapshotRequest>(&v)) {
    expect(r.path == "/vm/snapshot" && r.method == "PUT");
    if (s->dir.empty()) die("a snapshot without a directory");
  } else if (const auto* f = std::get_if<ForkRequest>(&v)) {
    expect(r.path == "/vm/fork" && r.method == "PUT");
    if (f->count < 1 || f->count > kMaxForkCount) die("a fork count outside 1..256", std::to_string(f->count));
    if (f->nets) {
      if (f->nets->size() > kMaxForkNets) die("more nets than a fork takes");
      for (const auto& n : *f->nets) {
        auto spec = vmm::parse_net_spec(n);
        if (!spec) die("an accepted net does not parse", n);
        if (!spec->mac.empty()) die("an accepted net gives a MAC", n);
      }
    }
    check_ip(f->ip);
    check_gateway(f->gateway);
  } else if (std::holds_alternative<InputRequest>(v)) {
    expect(r.path == "/vm/input" && r.method == "PUT");
  } else if (std::holds_alternative<GetVmRequest>(v)) {
    expect(r.path == "/vm" && get);
  } else if (std::holds_alternative<MetricsRequest>(v)) {
    expect(r.path == "/vm/metrics" && get);
  } else if (std::holds_alternative<PauseRequest>(v)) {
    expect(r.path == "/vm/pause" && r.method == "PUT");
  } else if (std::holds_alternative<ResumeRequest>(v)) {
    expect(r.path == "/vm/resume" && r.method == "PUT");
  }
}

void make_seeds(const fs::path& dir) {
  fs::create_directories(dir);
  auto index = [](const char* const* list, size_t n, std::string_view s) {
    for (size_t i = 0; i < n; ++i) {
      if (list[i] == s) return static_cast<char>(i);
    }
    die("a seed with a method or path the target does not pick", std::string(s));
  };
  struct Seed {
    const char *name, *method, *path, *body;
  };
  const Seed seeds[] = {
      {"get-vm", "GET", "/vm", ""},
      {"pause", "PUT", "/vm/pause", "{}"},
      {"stop", "PUT", "/vm/stop", R"({"timeout_s": 2.5})"},
      {"input", "PUT", "/vm/input", R"({"text": "echo hi\n"})"},
      {"snapshot", "PUT", "/vm/snapshot", R"({"dir": "/var/tmp/t", "resume": false, "at_rest": true})"},
      {"fork", "PUT", "/vm/fork",
       R"({"count": 3, "resume": true, "children_paused": false, "at_rest": false, "nets": ["tap=f{i},bridge=br0", "tap={name}-b,netns=ns{i}"],
           "hostname": "web-{i}", "ip": "10.0.0.5/24", "gateway": "10.0.0.1"})"},
      {"fork-bad", "PUT", "/vm/fork", R"({"count": 0, "nets": ["tap=a,mac=02:00:00:00:00:01"]})"},
      {"clone", "POST", "/clones", R"({"hostname": "pooled", "ip": "10.0.2.40", "gateway": "10.0.2.1"})"},
      {"wrong-method", "POST", "/vm/pause", ""},
  };
  constexpr size_t kM = std::size(kMethods), kP = std::size(kPaths);
  for (const auto& s : seeds) {
    std::ofstream out(dir / s.name, std::ios::binary);
    out.put(index(kMethods, kM, s.method));
    out.put(index(kPaths, kP, s.path));
    out << s.body;
  }
  std::printf("%zu seeds in %s\n", std::size(seeds), dir.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* seeds = std::getenv("VMM_API_FUZZ_MAKE_SEEDS")) {
    make_seeds(seeds);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  HttpRequest r{.method = kMethods[data[0] % std::size(kMethods)],
                .path = kPaths[data[1] % std::size(kPaths)],
                .body = std::string(reinterpret_cast<const char*>(data) + 2, size - 2)};
  try {
    auto v = parse_vm_request(r);
    auto again = parse_vm_request(r);
    if (v.has_value() != again.has_value() || (!v && (v.error().status != again.error().status || v.error().body != again.error().body))) {
      die("the same request parsed twice gives two answers");
    }
    if (v) {
      check_accepted(r, *v);
    } else {
      check_fault(v.error(), "PUT");
    }
    auto p = parse_pool_request(r);
    if (p && std::holds_alternative<vmm::api::CloneRequest>(*p)) {
      if (r.method != "POST" || r.path != "/clones") die("a pool took a clone request elsewhere than POST /clones", r.method + " " + r.path);
      const auto& c = std::get<vmm::api::CloneRequest>(*p);
      check_object_body(r.body);
      if (!c.hostname.empty() && !vmm::check_hostname(c.hostname)) die("an accepted hostname does not pass --hostname's check", c.hostname);
      check_ip(c.ip);
      check_gateway(c.gateway);
    } else if (p) {
      if ((r.method != "GET" && r.method != "HEAD") || (r.path != "/pool" && r.path != "/vm")) die("a pool's GET answered", r.method + " " + r.path);
    } else {
      check_fault(p.error(), "POST");
      if (r.method == "POST" && r.path == "/clones" && p.error().status != 400) {
        die("a pool's clone request refused with another status than 400", std::to_string(p.error().status));
      }
    }
  } catch (const std::exception& e) {
    die("a parser threw", e.what());
  }
  return 0;
}
