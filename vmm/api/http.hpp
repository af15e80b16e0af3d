// The control API's transport: HTTP/1.1 on a Unix socket, served and called through Debian's
// cpp-httplib. cpp-httplib's library pulls in OpenSSL, zlib and brotli, whose loading costs ~4 ms
// and ~300 page faults per exec on this host (measured: an empty program linked to it starts in
// 5.1 ms against 0.9 ms), more than a whole clone start may take. So the transport is a plugin,
// vmm-http.so beside the binary, loaded on first use off the clone's start path (a VM starts its
// API after its vCPUs run; a fleet's launcher loads it once before it forks).
//
// The plugin and cpp-httplib use the shared libstdc++, the vmm binary its own static copy (the
// top CMakeLists.txt says why): what crosses between them is this header's plain structs,
// std::string and std::function of one ABI, all allocated through libc's malloc; the handler
// catches its own exceptions (none crosses).
//
// The plugin knows nothing of VMs: it hands every request to one handler (vmm/api/service.hpp
// routes them) and turns transport failures into JSON errors.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "vmm/base/error.hpp"

namespace vmm::api {

struct HttpRequest {
  std::string method;  ///< "GET", "PUT", ...
  std::string path;    ///< without the query
  std::string body;
};

struct HttpResponse {
  int status = 200;
  std::string body;   ///< JSON, or empty (204)
  std::string allow;  ///< for 405: the methods the path takes
};

using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

/// A server running on its own threads; destroying it stops it (connections in progress finish).
class HttpServer {
 public:
  virtual ~HttpServer() = default;
};

/// Limits every server applies: a request body over kMaxBody gets 413; a client that sends nothing
/// for kIdleTimeoutS seconds (half a request, or an idle keep-alive) is dropped; at most
/// kMaxConnections connections are served at once, the next wait in turn.
inline constexpr size_t kMaxBody = 64 * 1024;
inline constexpr int kIdleTimeoutS = 5;
inline constexpr size_t kMaxConnections = 16;

/// The plugin's entry points (C linkage, one table; `abi` must equal kHttpAbi).
struct HttpPlugin {
  uint32_t abi;
  /// Serves `handler` on a Unix socket at `path` (created mode 0600; an existing file there is an
  /// error). Returns null and sets `error` on failure.
  HttpServer* (*serve)(const std::string& path, HttpHandler handler, std::string& error);
  /// One request to the server at `path`; false and `error` when it cannot be made.
  bool (*call)(const std::string& path, const HttpRequest& request, double timeout_s, HttpResponse& response,
               std::string& error);
};
inline constexpr uint32_t kHttpAbi = 1;

/// The loaded plugin (dlopen of vmm-http.so beside the running binary, once; thread-safe).
Result<const HttpPlugin*> http_plugin();
/// Serves `handler` at `path` (see HttpPlugin::serve).
Result<std::unique_ptr<HttpServer>> serve(const std::string& path, HttpHandler handler);
/// One request to the server at `path`.
Result<HttpResponse> call(const std::string& path, const HttpRequest& request, double timeout_s = 5.0);

}  // namespace vmm::api

extern "C" const vmm::api::HttpPlugin* vmm_http_plugin();
