#include "vmm/api/requests.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <string_view>

#include "vmm/device_spec.hpp"
#include "vmm/identity.hpp"

namespace vmm::api {

using nlohmann::json;

std::string json_body(const json& body) { return body.dump(-1, ' ', false, json::error_handler_t::replace); }

HttpResponse fault(int status, const std::string& message) {
  return HttpResponse{.status = status, .body = json_body(json{{"fault_message", one_line(message)}}), .allow = {}};
}

HttpResponse method_not_allowed(const HttpRequest& request, const std::string& allowed) {
  auto f = fault(405, request.method + " is not allowed on " + request.path + " (use " + allowed + ")");
  f.allow = allowed;
  return f;
}

namespace {

using Refusal = std::unexpected<HttpResponse>;

Refusal bad(const std::string& message) { return Refusal(fault(400, message)); }

/// The body as a JSON object whose keys are all in `allowed` (an empty or blank body is {}).
std::expected<json, HttpResponse> parse_body(const std::string& body, std::initializer_list<std::string_view> allowed) {
  if (body.find_first_not_of(" \t\r\n") == std::string::npos) return json::object();
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return bad("the body is not valid JSON");
  if (!j.is_object()) return bad("the body must be a JSON object");
  for (const auto& [key, value] : j.items()) {
    if (std::ranges::find(allowed, std::string_view(key)) == allowed.end()) return bad("unknown field '" + key + "'");
  }
  return j;
}

/// body[key] as a boolean, or `otherwise` when absent.
std::expected<bool, HttpResponse> flag(const json& body, const char* key, bool otherwise) {
  const auto it = body.find(key);
  if (it == body.end()) return otherwise;
  if (!it->is_boolean()) return bad(fmt::format("'{}' must be true or false", key));
  return it->get<bool>();
}

/// body[key] as a string, or nullopt when absent.
std::expected<std::optional<std::string>, HttpResponse> text(const json& body, const char* key) {
  const auto it = body.find(key);
  if (it == body.end()) return std::nullopt;
  if (!it->is_string()) return bad(fmt::format("'{}' must be a string", key));
  return it->get<std::string>();
}

std::expected<PauseOptions, HttpResponse> pause_options(const json& body) {
  auto resume = flag(body, "resume", true);
  if (!resume) return Refusal(resume.error());
  auto at_rest = flag(body, "at_rest", false);
  if (!at_rest) return Refusal(at_rest.error());
  return PauseOptions{.resume = *resume, .at_rest = *at_rest};
}

std::expected<VmRequest, HttpResponse> stop_request(const json& body) {
  StopRequest s;
  if (const auto it = body.find("timeout_s"); it != body.end()) {
    // (is_number: NaN and infinities are not JSON numbers; the comparisons refuse the rest)
    if (!it->is_number() || !(it->get<double>() >= 0 && it->get<double>() <= 3600)) {
      return bad("'timeout_s' must be a number of seconds from 0 to 3600");
    }
    s.timeout_s = it->get<double>();
  }
  return s;
}

std::expected<VmRequest, HttpResponse> snapshot_request(const json& body) {
  SnapshotRequest s;
  auto dir = text(body, "dir");
  if (!dir) return Refusal(dir.error());
  if (!*dir || (*dir)->empty()) return bad("'dir' (a path for the template) is required");
  s.dir = std::move(**dir);
  auto pause = pause_options(body);
  if (!pause) return Refusal(pause.error());
  s.pause = *pause;
  return s;
}

std::expected<VmRequest, HttpResponse> fork_request(const json& body) {
  ForkRequest f;
  if (const auto it = body.find("count"); it != body.end()) {
    if (!it->is_number_unsigned() || it->get<uint64_t>() < 1 || it->get<uint64_t>() > kMaxForkCount) {
      return bad(fmt::format("'count' must be an integer from 1 to {}", kMaxForkCount));
    }
    f.count = static_cast<unsigned>(it->get<uint64_t>());
  }
  auto children_paused = flag(body, "children_paused", false);
  if (!children_paused) return Refusal(children_paused.error());
  f.children_paused = *children_paused;
  auto pause = pause_options(body);
  if (!pause) return Refusal(pause.error());
  f.pause = *pause;
  if (const auto it = body.find("nets"); it != body.end()) {
    if (!it->is_array() || it->size() > kMaxForkNets || !std::ranges::all_of(*it, [](const json& e) { return e.is_string(); })) {
      return bad(fmt::format("'nets' must be an array of at most {} strings (--net syntax: tap=NAME[,bridge=BR][,netns=NS]), "
                             "one per interface",
                             kMaxForkNets));
    }
    f.nets.emplace();
    for (const auto& e : *it) {
      std::string spec = e.get<std::string>();
      auto n = parse_net_spec(spec);
      if (!n) return bad(n.error().message());
      if (!n->mac.empty()) return bad("--net: mac= cannot be given to a fork (its children would share it)");
      f.nets->push_back(std::move(spec));
    }
  }
  auto hostname = text(body, "hostname");
  if (!hostname) return Refusal(hostname.error());
  f.hostname = std::move(*hostname);
  auto ip = text(body, "ip");
  if (!ip) return Refusal(ip.error());
  if (*ip) {
    auto normal = check_ip(**ip);
    if (!normal) return bad(normal.error().message());
    f.ip = std::move(*normal);
  }
  auto gateway = text(body, "gateway");
  if (!gateway) return Refusal(gateway.error());
  if (*gateway) {
    if (auto r = check_gateway(**gateway); !r) return bad(r.error().message());
    f.gateway = std::move(**gateway);
  }
  return f;
}

}  // namespace

namespace {

template <class Kind>
struct Route {
  std::string_view path, method;
  Kind kind;
};

/// The route of `r`'s path and method (HEAD wherever GET is), or the 404 or 405 that refuses it.
template <class Kind, size_t N>
std::expected<Kind, HttpResponse> route_of(const HttpRequest& r, const Route<Kind> (&routes)[N]) {
  const auto route = std::ranges::find(routes, std::string_view(r.path), &Route<Kind>::path);
  if (route == std::end(routes)) return Refusal(fault(404, "no such path: " + r.path));
  if (route->method != r.method && !(route->method == "GET" && r.method == "HEAD")) {
    return Refusal(method_not_allowed(r, std::string(route->method)));
  }
  return route->kind;
}

}  // namespace

std::expected<VmRequest, HttpResponse> parse_vm_request(const HttpRequest& r) {
  enum class Kind { Vm, Metrics, Pause, Resume, Stop, Input, Snapshot, Fork };
  static constexpr Route<Kind> kRoutes[] = {
      {"/vm", "GET", Kind::Vm},           {"/vm/metrics", "GET", Kind::Metrics},   {"/vm/pause", "PUT", Kind::Pause},
      {"/vm/resume", "PUT", Kind::Resume}, {"/vm/stop", "PUT", Kind::Stop},          {"/vm/input", "PUT", Kind::Input},
      {"/vm/snapshot", "PUT", Kind::Snapshot}, {"/vm/fork", "PUT", Kind::Fork}};
  const auto kind = route_of(r, kRoutes);
  if (!kind) return Refusal(kind.error());
  std::expected<json, HttpResponse> body;
  switch (*kind) {
    case Kind::Vm: return GetVmRequest{};
    case Kind::Metrics: return MetricsRequest{};
    case Kind::Pause:
    case Kind::Resume:
      body = parse_body(r.body, {});
      if (!body) return Refusal(body.error());
      if (*kind == Kind::Pause) return PauseRequest{};
      return ResumeRequest{};
    case Kind::Stop:
      body = parse_body(r.body, {"timeout_s"});
      if (!body) return Refusal(body.error());
      return stop_request(*body);
    case Kind::Input: {
      body = parse_body(r.body, {"text"});
      if (!body) return Refusal(body.error());
      auto t = text(*body, "text");
      if (!t) return Refusal(t.error());
      if (!*t) return bad("'text' (what to type on the console) is required");
      return InputRequest{.text = std::move(**t)};
    }
    case Kind::Snapshot:
      body = parse_body(r.body, {"dir", "resume", "at_rest"});
      if (!body) return Refusal(body.error());
      return snapshot_request(*body);
    case Kind::Fork:
      body = parse_body(r.body, {"count", "resume", "children_paused", "at_rest", "nets", "hostname", "ip", "gateway"});
      if (!body) return Refusal(body.error());
      return fork_request(*body);
  }
  return Refusal(fault(404, "no such path: " + r.path));
}

std::expected<CloneRequest, HttpResponse> parse_clone_request(const std::string& body) {
  auto j = parse_body(body, {"hostname", "ip", "gateway"});
  if (!j) return Refusal(j.error());
  CloneRequest c;
  // Checked here as the command line checks them: the identity channel carries them as given.
  for (const char* key : {"hostname", "ip", "gateway"}) {
    auto t = text(*j, key);
    if (!t) return Refusal(t.error());
  }
  if (j->contains("hostname")) {
    c.hostname = (*j)["hostname"].get<std::string>();
    if (auto r = check_hostname(c.hostname); !r) return bad(r.error().message());
  }
  if (j->contains("ip")) {
    auto ip = check_ip((*j)["ip"].get<std::string>());
    if (!ip) return bad(ip.error().message());
    c.ip = std::move(*ip);
  }
  if (j->contains("gateway")) {
    c.gateway = (*j)["gateway"].get<std::string>();
    if (auto r = check_gateway(c.gateway); !r) return bad(r.error().message());
  }
  return c;
}


std::expected<PoolRequest, HttpResponse> parse_pool_request(const HttpRequest& r) {
  enum class Kind { Info, Clone };
  // GET /vm too: what `vmm ps` asks of everything registered, a pool included.
  static constexpr Route<Kind> kRoutes[] = {{"/pool", "GET", Kind::Info}, {"/vm", "GET", Kind::Info}, {"/clones", "POST", Kind::Clone}};
  const auto kind = route_of(r, kRoutes);
  if (!kind) return Refusal(kind.error());
  if (*kind == Kind::Info) return PoolInfoRequest{};
  auto c = parse_clone_request(r.body);
  if (!c) return Refusal(c.error());
  return *c;
}

}  // namespace vmm::api
