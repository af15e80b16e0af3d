// The control API's client side: one request on a Unix socket, its answer read with a deadline for
// the whole exchange and a limit on its size. Written here rather than taken from cpp-httplib,
// whose client (0.11.4) matched the status line with a std::regex that recursed once per byte (a
// 30 KB line crashed `vmm ps` with a SIGSEGV), timed out only when a single read waited too long
// (a server sending a byte a second held it for ever) and read a body of any size. Whoever
// listens at a socket path a VM's record names (another program since, or a path given on the
// command line) may answer anything: parse_response() is the parser of what it says, and is
// fuzzed (tests/fuzz/http_client_fuzz.cpp).
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "vmm/api/http.hpp"
#include "vmm/base/error.hpp"

namespace vmm::api {

/// The most a response's status line and headers may take, and its body.
inline constexpr size_t kMaxResponseHead = 16 * 1024;
inline constexpr size_t kMaxResponseBody = 1 << 20;

/// The request as sent: HTTP/1.1, its body with a Content-Length (JSON), Connection: close.
std::string request_text(const HttpRequest& request);

/// What `received` holds of a response: nothing yet (more must come), the whole response (the
/// first final one: 1xx interim responses are passed over), or an error (malformed, over the
/// limits, or cut short: `closed`, the server closed its end after these bytes). A response
/// without a Content-Length ends where the server closes.
Result<std::optional<HttpResponse>> parse_response(std::string_view received, bool closed);

}  // namespace vmm::api
