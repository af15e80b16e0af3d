// What the control API's transport tests share (test_api_http.cpp, test_api_http_limits.cpp): a
// server on a socket in a fresh directory, and a client of raw sockets.
#pragma once

#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sys/file.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "temp_dir.hpp"
#include "vmm/api/control.hpp"
#include "vmm/api/http.hpp"
#include "vmm/api/http_client.hpp"
#include "vmm/api/registry.hpp"
#include "vmm/api/service.hpp"
#include "vmm/cli/vm_cli.hpp"


namespace api_http_test {

namespace fs = std::filesystem;
using namespace vmm;

/// A server on a socket in a fresh directory, answering every request 200 {"ok":true}; null (and
/// the test skipped) where the plugin is not built beside the tests (the nested lane's copy).
struct TestServer {
  vmm::test::TempDir dir{"vmm-http-test"};  // (declared first: removed after the server stops)
  std::string path;
  std::unique_ptr<api::HttpServer> server;
  std::atomic<int> requests{0};

  /// With `handler`, or one that counts the requests and answers each 200 {"ok":true}.
  explicit TestServer(api::HttpHandler handler = nullptr) {
    const fs::path plugin = fs::path(VMM_BINARY_DIR) / "vmm" / "vmm-http.so";
    if (!fs::exists(plugin)) return;
    ::setenv("VMM_HTTP_PLUGIN", plugin.c_str(), 1);
    path = dir / "api.sock";
    if (!handler) {
      handler = [this](const api::HttpRequest&) {
        ++requests;
        return api::HttpResponse{.status = 200, .body = R"({"ok":true})", .allow = {}};
      };
    }
    auto s = api::serve(path, std::move(handler));
    REQUIRE_MESSAGE(s.has_value(), (s ? "" : s.error().message()));
    server = std::move(*s);
  }
  bool skipped() const {
    if (server) return false;
    MESSAGE("VMM_SKIP: no vmm-http.so beside the tests");
    return true;
  }
};

inline sockaddr_un address_of(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  REQUIRE(path.size() < sizeof addr.sun_path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

inline Fd connect_to(const std::string& path) {
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(fd);
  const sockaddr_un addr = address_of(path);
  REQUIRE(::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0);
  return fd;
}

inline void send_all(int fd, const std::string& text) {
  for (size_t off = 0; off < text.size();) {
    const ssize_t n = ::send(fd, text.data() + off, text.size() - off, MSG_NOSIGNAL);
    REQUIRE(n > 0);
    off += static_cast<size_t>(n);
  }
}

/// What arrives on `fd` until a whole response (headers and the Content-Length body) is there, the
/// peer closes, or `deadline` passes.
inline std::string read_response(int fd, std::chrono::steady_clock::time_point deadline) {
  std::string got;
  char buf[4096];
  while (std::chrono::steady_clock::now() < deadline) {
    const size_t end = got.find("\r\n\r\n");
    if (end != std::string::npos) {
      size_t length = 0;
      if (const size_t cl = got.find("Content-Length: "); cl != std::string::npos && cl < end) length = std::stoul(got.substr(cl + 16));
      if (got.size() >= end + 4 + length) break;
    }
    pollfd p{.fd = fd, .events = POLLIN, .revents = 0};
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (::poll(&p, 1, static_cast<int>(std::max<long>(left, 1))) <= 0) continue;
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  return got;
}

inline constexpr const char* kGet = "GET /vm HTTP/1.1\r\nHost: x\r\n\r\n";


}  // namespace api_http_test
