// The requests of a VM's control API and of a pool's, parsed and checked before anything acts on
// them: what a local client sends (method, path and JSON body) becomes one typed request or a 4xx
// answer ({"fault_message": ...}: 400 malformed, 404 unknown path, 405 wrong method with Allow).
// Nothing here touches a VM, so every refusal is a pure function of the request: unit-tested with
// malformed bodies (tests/unit/test_api_requests.cpp) and fuzzed (tests/fuzz/api_fuzz.cpp).
//
// Bodies: a JSON object whose keys are all known (unknown ones are refused, not ignored: a typo
// must not pass for a default); an empty or all-blank body is {}.
#pragma once

#include <cstdint>
#include <expected>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "vmm/api/http.hpp"

namespace vmm::api {

struct GetVmRequest {};       ///< GET (or HEAD) /vm
struct MetricsRequest {};     ///< GET (or HEAD) /vm/metrics
struct PauseRequest {};       ///< PUT /vm/pause {}
struct ResumeRequest {};      ///< PUT /vm/resume {}
struct StopRequest {          ///< PUT /vm/stop {"timeout_s": 0..3600}
  double timeout_s = 10;
};
struct InputRequest {         ///< PUT /vm/input {"text": "..."}
  std::string text;
};
/// How a paused operation treats the VM: "resume" (default true: runs on once the operation no
/// longer needs it paused; a VM paused through the API stays paused whatever this says), "at_rest"
/// (default false: paused when every vCPU idles, within a grace period).
struct PauseOptions {
  bool resume = true;
  bool at_rest = false;
};
struct SnapshotRequest {      ///< PUT /vm/snapshot {"dir": PATH, "resume", "at_rest"}
  std::string dir;            ///< not empty
  PauseOptions pause;
};
struct ForkRequest {          ///< PUT /vm/fork {"count", "resume", "children_paused", "at_rest", "nets", "hostname", "ip", "gateway"}
  unsigned count = 1;         ///< 1..kMaxForkCount
  bool children_paused = false;
  PauseOptions pause;
  /// "nets": one --net text per interface of the parent (names may hold {name} and {i}); each one
  /// parses as --net does and gives no mac= (children would share it). Absent: the parent's.
  std::optional<std::vector<std::string>> nets;
  std::optional<std::string> hostname;  ///< a pattern ({name}, {i}): checked once expanded
  std::string ip;                       ///< normalised A.B.C.D/P, or empty
  std::string gateway;                  ///< A.B.C.D, or empty
};
inline constexpr unsigned kMaxForkCount = 256;
inline constexpr size_t kMaxForkNets = 16;

using VmRequest = std::variant<GetVmRequest, MetricsRequest, PauseRequest, ResumeRequest, StopRequest, InputRequest,
                               SnapshotRequest, ForkRequest>;

/// A request on a VM's API socket, or the answer that refuses it.
std::expected<VmRequest, HttpResponse> parse_vm_request(const HttpRequest& request);

/// POST /clones on a pool's socket: {"hostname", "ip", "gateway"}, each checked as --hostname,
/// --ip and --gateway are (ip normalised); empty when not given.
struct CloneRequest {
  std::string hostname, ip, gateway;
};
/// The body of POST /clones, or the 400 that refuses it.
std::expected<CloneRequest, HttpResponse> parse_clone_request(const std::string& body);
struct PoolInfoRequest {};  ///< GET (or HEAD) /pool, or /vm
using PoolRequest = std::variant<PoolInfoRequest, CloneRequest>;
/// A request on a pool's socket, or the answer that refuses it.
std::expected<PoolRequest, HttpResponse> parse_pool_request(const HttpRequest& request);

/// A JSON error response.
HttpResponse fault(int status, const std::string& message);
/// A response body: `body` dumped, invalid UTF-8 replaced (a path or name that is not UTF-8 would
/// otherwise make dump() throw).
std::string json_body(const nlohmann::json& body);
/// 405 for `request`, whose path takes only `allowed`.
HttpResponse method_not_allowed(const HttpRequest& request, const std::string& allowed);

}  // namespace vmm::api
