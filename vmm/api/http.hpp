// The control API's transport: HTTP/1.1 on a Unix socket, served through Debian's cpp-httplib
// (and called through a client of our own: http_client.hpp). cpp-httplib's library pulls in
// OpenSSL, zlib and brotli, whose loading costs ~4 ms and ~300 page faults per exec on this host
// (measured: an empty program linked to it starts in 5.1 ms against 0.9 ms), more than a whole clone start may take, and ~740 KiB of private dirty
// memory (their relocations; measured with a dlopen probe), more than the rest of an idle clone.
// So the transport is a plugin, vmm-http.so beside the binary, loaded on first use: a VM listens
// on its socket itself (listen_unix, no plugin) and loads the plugin when the first client
// connects (ControlPlane); a fleet's launcher or a pool loads it once before it forks, so that
// their clones share its pages.
//
// The plugin and cpp-httplib use the shared libstdc++, the vmm binary its own static copy (the
// top CMakeLists.txt says why): what crosses between them is this header's plain structs,
// std::string and std::function of one ABI, all allocated through libc's malloc; the handler
// catches its own exceptions (none crosses).
//
// The plugin knows nothing of VMs: it hands every request to one handler (vmm/api/service.hpp
// routes them) and turns transport failures into JSON errors.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "vmm/base/error.hpp"
#include "vmm/base/fd.hpp"

namespace vmm::api {

struct HttpRequest {
  std::string method;  ///< "GET", "PUT", ...
  std::string path;    ///< without the query
  std::string body;
  /// Served: when the request began, as the server saw it: its connection accepted (a connection's
  /// first request, which may have waited for a thread: kMaxConnections) or its first byte (the
  /// next ones). A handler that promises an answer within some time counts from here.
  std::chrono::steady_clock::time_point received{};
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

/// Limits every server applies: a request body over kMaxBody gets 413 (a chunked or compressed one
/// 411 and 415: its size is not known before it is read); a request whose line and headers and
/// body bring more than kMaxBody + 16 KiB is dropped, as is one not all there 10 s after it began,
/// and a client that sends nothing for kIdleTimeoutS seconds (half a request, or an idle
/// keep-alive); at most kMaxConnections connections are served at once, as many more wait in turn,
/// and the next get a 503 at once. A connection holds its thread while it is open, idle keep-alive
/// included: with 16, one curl holding 100 connections open got its answers 16 at a time, 5 s
/// apart (25 s in the nested lane); threads are made only while there are connections, so the cap
/// costs an idle VM nothing. The server's end ends every connection's wait at once.
inline constexpr size_t kMaxBody = 64 * 1024;
inline constexpr int kIdleTimeoutS = 5;
inline constexpr size_t kMaxConnections = 128;

/// The plugin's entry points (C linkage, one table; `abi` must equal kHttpAbi).
struct HttpPlugin {
  uint32_t abi;
  /// Serves `handler` on `listen_fd`, a listening Unix socket (from listen_unix), which the server
  /// owns from then on, even on failure. Returns null and sets `error` on failure.
  HttpServer* (*serve)(int listen_fd, HttpHandler handler, std::string& error);
};
inline constexpr uint32_t kHttpAbi = 4;  // 3: HttpRequest::received; 4: no client (http_client.hpp)

/// The loaded plugin (dlopen of vmm-http.so beside the running binary, once; thread-safe).
Result<const HttpPlugin*> http_plugin();
/// A Unix socket listening at `path` (mode 0600, bound under a temporary name and renamed into
/// place; a socket left there by a VM that was killed is replaced; anything else there is an error).
/// `bound`, if given, gets the socket file's device and inode. Plain system calls: no plugin.
Result<Fd> listen_unix(const std::string& path, std::pair<uint64_t, uint64_t>* bound = nullptr);
/// The same at `path` in a directory that only this process's user can enter and that nobody else
/// makes files in (a VM's hidden STATE/run entry while it is made): bound in place, no temporary
/// directory.
Result<Fd> listen_unix_in_private_dir(const std::string& path);
/// Whether listen_unix can bind at `path`: short enough for a Unix socket with its temporary name.
Result<> check_socket_path(const std::string& path);
/// Whether a server accepts connections at `path` (a Unix socket).
bool someone_listens(const std::string& path);
/// A pidfd of the process that listens at `path`, as the kernel knows it (SO_PEERPIDFD, Linux 6.5;
/// else SO_PEERCRED's pid as this PID namespace sees it): the right process even when its server
/// runs in another PID namespace and says its pid there. An invalid Fd when it has just ended.
Result<Fd> listener_process(const std::string& path);
/// Serves `handler` on `listener` (see HttpPlugin::serve).
Result<std::unique_ptr<HttpServer>> serve(Fd listener, HttpHandler handler);
/// Serves `handler` at `path` (listen_unix, then serve).
Result<std::unique_ptr<HttpServer>> serve(const std::string& path, HttpHandler handler);
/// One request to the server at `path`, answered within `timeout_s` seconds in all, its answer at
/// most kMaxResponseBody bytes (http_client.hpp). No plugin.
Result<HttpResponse> call(const std::string& path, const HttpRequest& request, double timeout_s = 5.0);

}  // namespace vmm::api

extern "C" const vmm::api::HttpPlugin* vmm_http_plugin();
