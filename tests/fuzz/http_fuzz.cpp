// libFuzzer target for the control API's transport (vmm/api/http_plugin.cpp: Debian's cpp-httplib
// 0.11.4 parsing requests, behind the limits and refusals the plugin adds): what any local client
// may send on a VM's API socket. Built by clang only (tests/fuzz/fuzz.cmake, scripts/fuzz-http.sh)
// with -fsanitize=fuzzer,address,undefined; the plugin's source is compiled into the target.
// Debian builds cpp-httplib as a shared library, so its parser is run but not instrumented: the
// coverage that guides the fuzzer is the plugin's (its stream, limits and refusals), and a fault
// inside httplib shows as a crash, a hang or a wrong answer rather than as an ASan report.
//
// One server runs for the whole process on a Unix socket. Each input is what one client sends on
// one connection before it shuts its sending side; the client then reads until the server closes.
// Checked:
//  - the server closes the connection (a hang is libFuzzer's timeout), and answers only with whole
//    HTTP/1.1 responses: a status line, headers, and as many body bytes as Content-Length says;
//  - every body is empty or JSON, and every 4xx or 5xx one is {"fault_message": "..."};
//  - the handler never gets a body over kMaxBody, nor a request without a method.
// (A HEAD request's response has a Content-Length and no body, as HTTP says: an input that holds
// "HEAD" has only its first final response's status line checked. Interim responses, 100 Continue,
// have no body.)
//
// The handler answers by path: /vm 200 with JSON, /empty 204, /method 405 with Allow, /throw throws
// (the plugin answers 500), anything else 404.
//
// VMM_HTTP_FUZZ_MAKE_SEEDS=DIR writes a few requests (well-formed, pipelined, malformed) to DIR and
// exits.
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "vmm/api/http.hpp"

namespace {

using vmm::api::HttpRequest;
using vmm::api::HttpResponse;

[[noreturn]] void die(const char* what, std::string_view detail = {}) {
  std::fprintf(stderr, "http_fuzz: %s%s%.*s\n", what, detail.empty() ? "" : ": ", static_cast<int>(detail.size()),
               detail.data());
  std::abort();
}

std::string socket_path;
std::unique_ptr<vmm::api::HttpServer> server;

HttpResponse handle(const HttpRequest& r) {
  if (r.body.size() > vmm::api::kMaxBody) die("the handler got a body over kMaxBody");
  if (r.method.empty()) die("the handler got a request without a method");
  if (r.path == "/vm") return {.status = 200, .body = nlohmann::json{{"method", r.method}, {"bytes", r.body.size()}}.dump(), .allow = {}};
  if (r.path == "/empty") return {.status = 204, .body = {}, .allow = {}};
  if (r.path == "/method") return {.status = 405, .body = R"({"fault_message":"not that method"})", .allow = "GET"};
  if (r.path == "/throw") throw std::runtime_error("the handler threw");
  return {.status = 404, .body = R"({"fault_message":"no such path"})", .allow = {}};
}

void start_server() {
  char dir[] = "/tmp/vmm-http-fuzz.XXXXXX";
  if (::mkdtemp(dir) == nullptr) die("mkdtemp");
  socket_path = std::string(dir) + "/api.sock";
  auto fd = vmm::api::listen_unix(socket_path);
  if (!fd) die("listen", fd.error().message());
  const vmm::api::HttpPlugin* plugin = vmm_http_plugin();
  std::string error;
  server.reset(plugin->serve(fd->release(), handle, error));
  if (!server) die("serve", error);
}

/// Sends `in` on a new connection, shuts the sending side, returns all the server sent.
std::string exchange(std::string_view in) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket");
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, socket_path.c_str(), socket_path.size() + 1);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0) die("connect");
  std::string out;
  char buf[65536];
  size_t sent = 0;
  bool shut = false;
  for (;;) {
    if (sent == in.size() && !shut) {
      ::shutdown(fd, SHUT_WR);
      shut = true;
    }
    pollfd p{.fd = fd, .events = static_cast<short>(POLLIN | (shut ? 0 : POLLOUT)), .revents = 0};
    // The server's own limit for a connection that sends nothing is kIdleTimeoutS; libFuzzer's
    // timeout is longer than that and catches a server that never closes.
    if (::poll(&p, 1, -1) < 0) continue;
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      if (n <= 0) break;  // closed (or reset: the server may drop a client whose request it refused)
      out.append(buf, static_cast<size_t>(n));
    } else if (p.revents & POLLOUT) {
      const ssize_t n = ::send(fd, in.data() + sent, in.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && errno != EAGAIN && errno != EINTR) {
        sent = in.size();  // the server closed its reading side: it has answered what it will
      } else if (n > 0) {
        sent += static_cast<size_t>(n);
      }
    }
  }
  ::close(fd);
  return out;
}

std::string lower(std::string_view s) {
  std::string r(s);
  for (char& c : r) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return r;
}

/// Checks the server's whole answer; `head_only`: the first response's status line only.
void check_responses(std::string_view out, bool head_only) {
  size_t at = 0;
  while (at < out.size()) {
    const std::string_view rest = out.substr(at);
    if (!rest.starts_with("HTTP/1.1 ") || rest.size() < 12 || !std::isdigit(static_cast<unsigned char>(rest[9])) ||
        !std::isdigit(static_cast<unsigned char>(rest[10])) || !std::isdigit(static_cast<unsigned char>(rest[11]))) {
      die("not an HTTP/1.1 status line", rest.substr(0, 80));
    }
    const int status = std::stoi(std::string(rest.substr(9, 3)));
    if (status < 100 || status > 599) die("a status out of range", rest.substr(0, 20));
    const size_t end = rest.find("\r\n\r\n");
    if (end == std::string_view::npos) die("a response's headers do not end", rest.substr(0, 200));
    if (status < 200) {  // an interim response (100 Continue to an Expect: 100-continue): no body
      at += end + 4;
      continue;
    }
    if (head_only) return;
    size_t length = 0;
    bool has_length = false;
    for (size_t line = rest.find("\r\n") + 2; line < end;) {
      const size_t eol = rest.find("\r\n", line);
      const std::string h = lower(rest.substr(line, eol - line));
      if (h.starts_with("content-length:")) {
        const std::string v = h.substr(15);
        const size_t first = v.find_first_not_of(' ');
        if (first == std::string::npos || v.find_first_not_of("0123456789", first) != std::string::npos) die("a bad Content-Length", h);
        length = std::stoul(v.substr(first));
        has_length = true;
      }
      line = eol + 2;
    }
    if (!has_length && status != 204 && status != 304) die("a response without Content-Length", rest.substr(0, end));
    if (rest.size() - end - 4 < length) die("a response's body is cut short", rest.substr(0, end));
    const std::string_view body = rest.substr(end + 4, length);
    if (!body.empty()) {
      auto j = nlohmann::json::parse(body.begin(), body.end(), nullptr, false);
      if (j.is_discarded()) die("a body that is not JSON", body.substr(0, 200));
      if (status >= 400 && !(j.is_object() && j.contains("fault_message") && j["fault_message"].is_string())) {
        die("an error without fault_message", body.substr(0, 200));
      }
    } else if (status >= 400) {
      die("an error without a body", rest.substr(0, end));
    }
    at += end + 4 + length;
  }
}

void write_seeds(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  const char* seeds[] = {
      "GET /vm HTTP/1.1\r\nHost: localhost\r\n\r\n",
      "PUT /vm HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"count\": 3}\n",
      "GET /vm HTTP/1.1\r\n\r\nGET /empty HTTP/1.1\r\n\r\nPUT /method HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}GET /nosuch HTTP/1.1\r\n\r\n",
      "GET /throw HTTP/1.1\r\nConnection: close\r\n\r\n",
      "POST /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
      "PUT /vm HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
      "PUT /vm HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n{}",
      "PATCH /vm HTTP/1.1\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}",
      "GET /vm?x=1&y=%41 HTTP/1.0\r\n\r\n",
      "GET /vm HTTP/1.1\r\nRange: bytes=0-1\r\n\r\n",
      "GET /nosuch HTTP/1.1\r\nRange: bytes=0-1,3-2\r\n\r\n",
      "GET /vm HTTP/1.1\r\nAccept-Encoding: gzip, br\r\n\r\nGET /nosuch HTTP/1.1\r\nAccept-Encoding: br\r\n\r\n",
      "POST /vm HTTP/1.1\r\nContent-Type: multipart/form-data; boundary=xx\r\nContent-Length: 40\r\n\r\n--xx\r\nContent-Disposition: form-data\r\n\r\n",
      "PUT /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
      "GARBAGE\r\n\r\n",
      "GET /vm HTTP/1.1\r\nX: " /* a header cut short */,
      "OPTIONS * HTTP/1.1\r\n\r\n",
  };
  int n = 0;
  for (const char* s : seeds) std::ofstream(dir / ("seed-" + std::to_string(n++))) << s;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* d = std::getenv("VMM_HTTP_FUZZ_MAKE_SEEDS")) {
    write_seeds(d);
    std::exit(0);
  }
  start_server();
  std::atexit([] {
    server.reset();
    ::unlink(socket_path.c_str());
    ::rmdir(std::filesystem::path(socket_path).parent_path().c_str());
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  check_responses(exchange(in), in.find("HEAD") != std::string_view::npos);
  return 0;
}
