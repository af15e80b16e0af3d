// The control API's request parsing (vmm/api/requests.hpp): malformed requests of every kind get a
// 4xx with a JSON fault_message, and what is accepted comes out typed and checked.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <string>

#include "vmm/api/requests.hpp"

namespace {

using namespace vmm::api;
using nlohmann::json;

std::expected<VmRequest, HttpResponse> parse(std::string method, std::string path, std::string body = {}) {
  return parse_vm_request(HttpRequest{.method = std::move(method), .path = std::move(path), .body = std::move(body)});
}

/// The refusal's status, after checking its body is {"fault_message": "..."} holding `words`.
int refused(const std::expected<VmRequest, HttpResponse>& r, const std::string& words = {}) {
  REQUIRE_FALSE(r.has_value());
  const json j = json::parse(r.error().body, nullptr, false);
  REQUIRE(j.is_object());
  REQUIRE(j.size() == 1);
  REQUIRE(j.contains("fault_message"));
  REQUIRE(j["fault_message"].is_string());
  INFO(j["fault_message"].get<std::string>());
  CHECK(j["fault_message"].get<std::string>().find(words) != std::string::npos);
  return r.error().status;
}

template <typename T>
T accepted(const std::expected<VmRequest, HttpResponse>& r) {
  if (!r) FAIL_CHECK("refused: " << r.error().status << " " << r.error().body);
  REQUIRE(r.has_value());
  REQUIRE(std::holds_alternative<T>(*r));
  return std::get<T>(*r);
}

ForkRequest fork(const std::string& body) { return accepted<ForkRequest>(parse("PUT", "/vm/fork", body)); }
int fork_refused(const std::string& body, const std::string& words) { return refused(parse("PUT", "/vm/fork", body), words); }

}  // namespace

TEST_CASE("api requests: paths and methods") {
  accepted<GetVmRequest>(parse("GET", "/vm"));
  accepted<GetVmRequest>(parse("HEAD", "/vm"));
  accepted<MetricsRequest>(parse("GET", "/vm/metrics"));
  accepted<PauseRequest>(parse("PUT", "/vm/pause"));
  accepted<ResumeRequest>(parse("PUT", "/vm/resume", " \r\n\t"));
  CHECK(refused(parse("GET", "/vm/nope"), "no such path: /vm/nope") == 404);
  CHECK(refused(parse("GET", "/VM")) == 404);
  CHECK(refused(parse("GET", "/vm/")) == 404);
  CHECK(refused(parse("GET", "")) == 404);
  auto wrong = parse("POST", "/vm/pause");
  CHECK(refused(wrong, "POST is not allowed on /vm/pause (use PUT)") == 405);
  CHECK(wrong.error().allow == "PUT");
  CHECK(refused(parse("HEAD", "/vm/fork")) == 405);  // HEAD only where GET is
  CHECK(refused(parse("PUT", "/vm")) == 405);
  CHECK(refused(parse("", "/vm")) == 405);
}

TEST_CASE("api requests: bodies that are not a JSON object of known fields") {
  CHECK(refused(parse("PUT", "/vm/pause", "{"), "not valid JSON") == 400);
  CHECK(refused(parse("PUT", "/vm/pause", "{} {}"), "not valid JSON") == 400);
  CHECK(refused(parse("PUT", "/vm/pause", "[]"), "must be a JSON object") == 400);
  CHECK(refused(parse("PUT", "/vm/pause", "null"), "must be a JSON object") == 400);
  CHECK(refused(parse("PUT", "/vm/pause", R"({"resume": true})"), "unknown field 'resume'") == 400);
  CHECK(refused(parse("PUT", "/vm/stop", R"({"timeout": 3})"), "unknown field 'timeout'") == 400);
  CHECK(refused(parse("PUT", "/vm/pause", std::string("{\"\xff\": 1}")), "not valid JSON") == 400);
  // A field name that is not UTF-8 inside a valid string escape still gets a JSON answer.
  CHECK(refused(parse("PUT", "/vm/pause", R"({"\udc00": 1})")) == 400);
  // Deep nesting (the whole body limit of it) is refused without recursion.
  const std::string deep = "{\"count\": " + std::string(30000, '[') + std::string(30000, ']') + "}";
  CHECK(refused(parse("PUT", "/vm/fork", deep), "'count'") == 400);
  const std::string unclosed = std::string(60000, '[');
  CHECK(refused(parse("PUT", "/vm/fork", unclosed), "not valid JSON") == 400);
}

TEST_CASE("api requests: stop and input") {
  CHECK(accepted<StopRequest>(parse("PUT", "/vm/stop")).timeout_s == 10);
  CHECK(accepted<StopRequest>(parse("PUT", "/vm/stop", R"({"timeout_s": 0})")).timeout_s == 0);
  CHECK(accepted<StopRequest>(parse("PUT", "/vm/stop", R"({"timeout_s": 2.5})")).timeout_s == 2.5);
  CHECK(accepted<StopRequest>(parse("PUT", "/vm/stop", R"({"timeout_s": 3600})")).timeout_s == 3600);
  for (const char* bad : {R"({"timeout_s": -1})", R"({"timeout_s": 3600.5})", R"({"timeout_s": "5"})",
                          R"({"timeout_s": null})", R"({"timeout_s": true})", R"({"timeout_s": -0.0001})"}) {
    INFO(std::string(bad));
    CHECK(refused(parse("PUT", "/vm/stop", bad), "'timeout_s' must be a number of seconds from 0 to 3600") == 400);
  }
  CHECK(refused(parse("PUT", "/vm/stop", R"({"timeout_s": 1e400})"), "not valid JSON") == 400);  // no infinity
  CHECK(accepted<InputRequest>(parse("PUT", "/vm/input", R"({"text": "ls\n"})")).text == "ls\n");
  CHECK(accepted<InputRequest>(parse("PUT", "/vm/input", R"({"text": ""})")).text.empty());
  CHECK(refused(parse("PUT", "/vm/input", "{}"), "'text' (what to type on the console) is required") == 400);
  CHECK(refused(parse("PUT", "/vm/input", R"({"text": 5})"), "'text' must be a string") == 400);
}

TEST_CASE("api requests: snapshot") {
  auto s = accepted<SnapshotRequest>(parse("PUT", "/vm/snapshot", R"({"dir": "/t/x"})"));
  CHECK(s.dir == "/t/x");
  CHECK(s.pause.resume);
  CHECK_FALSE(s.pause.at_rest);
  s = accepted<SnapshotRequest>(parse("PUT", "/vm/snapshot", R"({"dir": "x", "resume": false, "at_rest": true})"));
  CHECK_FALSE(s.pause.resume);
  CHECK(s.pause.at_rest);
  CHECK(refused(parse("PUT", "/vm/snapshot"), "'dir' (a path for the template) is required") == 400);
  CHECK(refused(parse("PUT", "/vm/snapshot", R"({"dir": ""})"), "'dir' (a path for the template) is required") == 400);
  CHECK(refused(parse("PUT", "/vm/snapshot", R"({"dir": ["x"]})"), "'dir' must be a string") == 400);
  CHECK(refused(parse("PUT", "/vm/snapshot", R"({"dir": "x", "resume": 1})"), "'resume' must be true or false") == 400);
  CHECK(refused(parse("PUT", "/vm/snapshot", R"({"dir": "x", "at_rest": "yes"})"), "'at_rest' must be true or false") == 400);
  CHECK(refused(parse("PUT", "/vm/snapshot", R"({"dir": "x", "count": 1})"), "unknown field 'count'") == 400);
}

TEST_CASE("api requests: fork") {
  auto f = fork("");
  CHECK(f.count == 1);
  CHECK(f.pause.resume);
  CHECK_FALSE(f.pause.at_rest);
  CHECK_FALSE(f.children_paused);
  CHECK_FALSE(f.nets.has_value());
  CHECK_FALSE(f.hostname.has_value());
  CHECK(f.ip.empty());
  CHECK(f.gateway.empty());
  f = fork(R"({"count": 256, "resume": false, "children_paused": true, "at_rest": true, "nets": ["tap=c{i}", "tap={name}-b,bridge=br0"],
               "hostname": "web-{i}", "ip": "10.0.0.5", "gateway": "10.0.0.1"})");
  CHECK(f.count == 256);
  CHECK_FALSE(f.pause.resume);
  CHECK(f.pause.at_rest);
  CHECK(f.children_paused);
  REQUIRE(f.nets.has_value());
  CHECK(*f.nets == std::vector<std::string>{"tap=c{i}", "tap={name}-b,bridge=br0"});
  CHECK(f.hostname == "web-{i}");
  CHECK(f.ip == "10.0.0.5/24");  // normalised
  CHECK(f.gateway == "10.0.0.1");
  CHECK(fork(R"({"nets": []})").nets == std::vector<std::string>{});

  for (const char* bad : {"0", "257", "-1", "1.5", "\"3\"", "true", "null", "18446744073709551616", "4294967297"}) {
    INFO(std::string(bad));
    CHECK(fork_refused(std::string(R"({"count": )") + bad + "}", "'count' must be an integer from 1 to 256") == 400);
  }
  for (const char* flag : {"resume", "children_paused", "at_rest"}) {
    CHECK(fork_refused(std::string("{\"") + flag + "\": 0}", std::string("'") + flag + "' must be true or false") == 400);
  }
  CHECK(fork_refused(R"({"nets": "tap=x"})", "'nets' must be an array of at most 16 strings") == 400);
  CHECK(fork_refused(R"({"nets": [1]})", "'nets' must be an array") == 400);
  std::string many = R"({"nets": [)";
  for (int i = 0; i < 17; ++i) many += std::string(i ? "," : "") + "\"tap=t" + std::to_string(i) + "\"";
  CHECK(fork_refused(many + "]}", "'nets' must be an array") == 400);
  CHECK(fork_refused(R"({"nets": ["tap=a,mac=02:00:00:00:00:01"]})", "mac= cannot be given to a fork") == 400);
  CHECK(fork_refused(R"({"nets": ["bogus=1"]})", "") == 400);
  CHECK(fork_refused(R"({"nets": [""]})", "") == 400);
  CHECK(fork_refused(R"({"hostname": 7})", "'hostname' must be a string") == 400);
  CHECK(fork_refused(R"({"ip": "10.0.0.1/40"})", "") == 400);
  CHECK(fork_refused(R"({"ip": ""})", "") == 400);
  CHECK(fork_refused(R"({"ip": 10})", "'ip' must be a string") == 400);
  CHECK(fork_refused(R"({"gateway": "10.0.0.1/24"})", "") == 400);
  CHECK(fork_refused(R"({"gateway": "010.0.0.1"})", "") == 400);
  CHECK(fork_refused(R"({"children": 1})", "unknown field 'children'") == 400);
}

TEST_CASE("api requests: a pool's POST /clones body") {
  auto c = parse_clone_request("");
  REQUIRE(c);
  CHECK(c->hostname.empty());
  CHECK(c->ip.empty());
  CHECK(c->gateway.empty());
  c = parse_clone_request(R"({"hostname": "pooled", "ip": "10.0.2.40", "gateway": "10.0.2.1"})");
  REQUIRE(c);
  CHECK(c->hostname == "pooled");
  CHECK(c->ip == "10.0.2.40/24");
  CHECK(c->gateway == "10.0.2.1");
  for (const char* bad : {R"({"hostname":"a;reboot"})", R"({"ip":"10.0.0.1/40"})", R"({"gateway":"10.0.0.1/24"})", R"({"ip":""})",
                          R"({"hostname":1})", R"({"name":"x"})", "[]", "{", R"({"hostname":"-x"})"}) {
    INFO(std::string(bad));
    auto r = parse_clone_request(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().status == 400);
    const json j = json::parse(r.error().body, nullptr, false);
    CHECK(j.contains("fault_message"));
  }
}

TEST_CASE("api requests: a fault_message is one line whatever the request quoted") {
  for (const char* body : {R"({"nets": ["tap=a\nb"]})", R"({"hostname": 5, "x\ny": 1})", R"({"ip": "10.0.0.1\r\n"})"}) {
    INFO(std::string(body));
    auto r = parse("PUT", "/vm/fork", body);
    REQUIRE_FALSE(r);
    const json j = json::parse(r.error().body, nullptr, false);
    REQUIRE(j.contains("fault_message"));
    CHECK(j["fault_message"].get<std::string>().find_first_of("\r\n") == std::string::npos);
  }
  auto path = parse("GET", "/vm\n/x");
  REQUIRE_FALSE(path);
  CHECK(path.error().body == R"({"fault_message":"no such path: /vm\\x0a/x"})");
}

TEST_CASE("api requests: a pool's paths and methods") {
  auto pool = [](std::string method, std::string path, std::string body = {}) {
    return parse_pool_request(HttpRequest{.method = std::move(method), .path = std::move(path), .body = std::move(body)});
  };
  for (const char* method : {"GET", "HEAD"}) {
    for (const char* path : {"/pool", "/vm"}) {
      auto r = pool(method, path);
      REQUIRE(r);
      CHECK(std::holds_alternative<PoolInfoRequest>(*r));
    }
  }
  auto c = pool("POST", "/clones", R"({"hostname": "p1"})");
  REQUIRE(c);
  REQUIRE(std::holds_alternative<CloneRequest>(*c));
  CHECK(std::get<CloneRequest>(*c).hostname == "p1");
  struct Refused {
    const char *method, *path, *body;
    int status;
    const char* allow;
  };
  for (const Refused& want :
       {Refused{"GET", "/clones", "", 405, "POST"}, Refused{"HEAD", "/clones", "", 405, "POST"}, Refused{"PUT", "/pool", "", 405, "GET"},
        Refused{"POST", "/vm", "", 405, "GET"}, Refused{"GET", "/vm/pause", "", 404, ""}, Refused{"POST", "/clone", "", 404, ""},
        Refused{"POST", "/clones", "[]", 400, ""}, Refused{"POST", "/clones", R"({"count": 2})", 400, ""}}) {
    INFO(want.method << " " << want.path << " " << want.body);
    auto r = pool(want.method, want.path, want.body);
    REQUIRE_FALSE(r);
    CHECK(r.error().status == want.status);
    CHECK(r.error().allow == want.allow);
    const json j = json::parse(r.error().body, nullptr, false);
    CHECK((j.is_object() && j.size() == 1 && j.contains("fault_message")));
  }
}
