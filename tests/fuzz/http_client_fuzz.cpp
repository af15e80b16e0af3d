// libFuzzer target for the control API's client (vmm/api/http_client.hpp): what a server at a VM's
// socket path answers `vmm ps`, `vmm pause`, `vmm run --pool` (whoever listens there: another
// program since, or a path given on the command line). Built by clang only (tests/fuzz/fuzz.cmake,
// scripts/fuzz-http-client.sh) with -fsanitize=fuzzer,address,undefined.
//
// Input: byte 0 picks where the bytes are cut (as recv() might have delivered them); the rest is
// what the server sent before it closed. Checked:
//  - parse_response never crashes; an error is one line;
//  - a response is a final one (200..599) whose body is at most kMaxResponseBody bytes and is
//    bytes of the input;
//  - reading is monotonic: what a prefix gives (not closed) stays what the whole gives (a response,
//    the same one; an error, an error), and nothing is complete before its last byte came.
//
// VMM_HTTP_CLIENT_FUZZ_MAKE_SEEDS=DIR writes a few answers to DIR and exits.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "vmm/api/http_client.hpp"

namespace {

namespace fs = std::filesystem;
using vmm::api::HttpResponse;

[[noreturn]] void die(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "http_client_fuzz: %s%s%s\n", what, detail.empty() ? "" : ": ", detail.c_str());
  std::abort();
}

bool same(const HttpResponse& a, const HttpResponse& b) { return a.status == b.status && a.body == b.body && a.allow == b.allow; }

void check_one(const vmm::Result<std::optional<HttpResponse>>& r, std::string_view input) {
  if (!r) {
    if (r.error().message().find('\n') != std::string::npos) die("an error of more than one line", r.error().message());
    return;
  }
  if (!*r) return;
  const HttpResponse& h = **r;
  if (h.status < 200 || h.status > 599) die("a response with an interim or impossible status", std::to_string(h.status));
  if (h.body.size() > vmm::api::kMaxResponseBody) die("a body over the limit");
  if (!h.body.empty() && input.find(h.body) == std::string_view::npos) die("a body that was not sent");
}

void make_seeds(const fs::path& dir) {
  fs::create_directories(dir);
  const char* answers[] = {
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}",
      "HTTP/1.1 204 No Content\r\n\r\n",
      "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\nContent-Length: 30\r\n\r\n{\"fault_message\":\"wrong verb\"}",
      "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}",
      "HTTP/1.0 200 OK\r\n\r\n{\"no\":\"length\"}",
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
  };
  int i = 0;
  for (const char* a : answers) {
    const std::string bytes = std::string(1, static_cast<char>(i * 37)) + a;
    std::ofstream(dir / ("answer-" + std::to_string(i++)), std::ios::binary) << bytes;
  }
  std::printf("%d seeds in %s\n", i, dir.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("VMM_HTTP_CLIENT_FUZZ_MAKE_SEEDS")) {
    make_seeds(dir);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  const size_t cut = input.empty() ? 0 : data[0] % (input.size() + 1);
  const auto whole_open = vmm::api::parse_response(input, false);
  const auto whole_closed = vmm::api::parse_response(input, true);
  const auto prefix = vmm::api::parse_response(input.substr(0, cut), false);
  check_one(whole_open, input);
  check_one(whole_closed, input);
  check_one(prefix, input);
  // Closed, the answer is complete or an error: nothing more can come.
  if (whole_closed && !*whole_closed) die("more awaited after the server closed");
  // A prefix that is an error stays one; a prefix that is complete is the whole's answer.
  if (!prefix && whole_open) die("a prefix was refused, the whole accepted", prefix.error().message());
  if (prefix && *prefix) {
    if (!whole_open || !*whole_open || !same(**prefix, **whole_open)) die("the whole answers otherwise than its complete prefix");
  }
  if (whole_open && *whole_open && whole_closed && *whole_closed && !same(**whole_open, **whole_closed)) {
    die("a complete answer changed when the server closed");
  }
  return 0;
}
