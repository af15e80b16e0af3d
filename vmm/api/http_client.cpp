#include "vmm/api/http_client.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <cctype>
#include <charconv>

namespace vmm::api {

namespace {

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y)); });
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool is_token_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

struct Head {
  int status = 0;
  std::optional<size_t> content_length;
  std::string allow;
};

/// The status line and headers, `head` without its blank line.
Result<Head> parse_head(std::string_view head) {
  Head h;
  const size_t eol = head.find("\r\n");
  const std::string_view line = head.substr(0, eol);
  // HTTP/1.x SP 3DIGIT [SP reason]
  if (line.size() < 12 || !line.starts_with("HTTP/1.") || !std::isdigit(static_cast<unsigned char>(line[7])) || line[8] != ' ' ||
      (line.size() > 12 && line[12] != ' ')) {
    return fail("not an HTTP/1.x status line");
  }
  int status = 0;
  if (std::from_chars(line.data() + 9, line.data() + 12, status).ptr != line.data() + 12 || status < 100 || status > 599) {
    return fail("not an HTTP status");
  }
  h.status = status;
  std::string_view rest = eol == std::string_view::npos ? std::string_view() : head.substr(eol + 2);
  while (!rest.empty()) {
    const size_t end = rest.find("\r\n");
    const std::string_view field = rest.substr(0, end);
    rest = end == std::string_view::npos ? std::string_view() : rest.substr(end + 2);
    const size_t colon = field.find(':');
    if (colon == 0 || colon == std::string_view::npos ||
        !std::all_of(field.begin(), field.begin() + static_cast<std::ptrdiff_t>(colon), is_token_char)) {
      return fail("malformed header line");
    }
    const std::string_view name = field.substr(0, colon), value = trim(field.substr(colon + 1));
    if (iequals(name, "Content-Length")) {
      size_t n = 0;
      if (value.empty() || value.size() > 19 || std::from_chars(value.data(), value.data() + value.size(), n).ptr != value.data() + value.size()) {
        return fail("malformed Content-Length");
      }
      if (h.content_length && *h.content_length != n) return fail("two different Content-Lengths");
      h.content_length = n;
    } else if (iequals(name, "Transfer-Encoding")) {
      return fail("a body in a Transfer-Encoding (the API sends it with a Content-Length)");
    } else if (iequals(name, "Allow")) {
      h.allow = std::string(value);
    }
  }
  return h;
}

}  // namespace

std::string request_text(const HttpRequest& request) {
  return fmt::format("{} {} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                     request.method, request.path, request.body.size(), request.body);
}

Result<std::optional<HttpResponse>> parse_response(std::string_view received, bool closed) {
  for (;;) {
    const size_t blank = received.find("\r\n\r\n");
    if (blank == std::string_view::npos) {
      if (received.size() > kMaxResponseHead) return fail("answer's headers over {} bytes", kMaxResponseHead);
      if (closed) return fail("{}", received.empty() ? "closed without an answer" : "closed in the middle of an answer's headers");
      return std::nullopt;
    }
    if (blank > kMaxResponseHead) return fail("answer's headers over {} bytes", kMaxResponseHead);
    auto head = parse_head(received.substr(0, blank));
    if (!head) return fail("malformed answer: {}", head.error().message());
    received.remove_prefix(blank + 4);
    if (head->status < 200) continue;  // 100 Continue and the like: the answer follows
    if (head->content_length && *head->content_length > kMaxResponseBody) {
      return fail("answer's body of {} bytes is over {}", *head->content_length, kMaxResponseBody);
    }
    const bool no_body = head->status == 204 || head->status == 304;
    const size_t want = no_body ? 0 : head->content_length.value_or(received.size());
    if (received.size() > kMaxResponseBody && !head->content_length) return fail("answer's body over {} bytes", kMaxResponseBody);
    if (received.size() < want || (!no_body && !head->content_length && !closed)) {
      if (closed) return fail("closed in the middle of an answer's body ({} of {} bytes)", received.size(), want);
      return std::nullopt;
    }
    return HttpResponse{.status = head->status, .body = std::string(received.substr(0, want)), .allow = std::move(head->allow)};
  }
}

}  // namespace vmm::api
