// The control API's transport at its limits, through raw sockets and a client of its own: a
// thread's stack against httplib's regexes, the CLI's client against hostile servers
// (vmm/api/http_client.hpp), VMs racing for one socket path, connections that keep every thread.
#include "api_http_test.hpp"

namespace fs = std::filesystem;
using namespace vmm;
using namespace api_http_test;

TEST_CASE("http: a long Range header or path is served on a thread whose stack does not follow ulimit -s (httplib's regexes recurse per byte)") {
  // A server in a child process whose threads' default stack is 256 KiB (as `ulimit -s 256`; with
  // `ulimit -s unlimited` glibc's is 2 MiB): httplib parses a Range header with std::regex before
  // any handler of ours sees the request, ~0.5 KiB of stack a byte. It died of a SIGSEGV.
  const fs::path plugin = fs::path(VMM_BINARY_DIR) / "vmm" / "vmm-http.so";
  if (!fs::exists(plugin)) {
    MESSAGE("VMM_SKIP: no vmm-http.so beside the tests");
    return;
  }
  vmm::test::TempDir dir{"vmm-http-stack"};
  const std::string path = dir / "api.sock";
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    pthread_attr_t attr;
    ::pthread_attr_init(&attr);
    ::pthread_attr_setstacksize(&attr, 256 << 10);
    if (::pthread_setattr_default_np(&attr) != 0) ::_exit(70);
    ::setenv("VMM_HTTP_PLUGIN", plugin.c_str(), 1);
    auto s = api::serve(path, [](const api::HttpRequest&) { return api::HttpResponse{.status = 200, .body = "{}", .allow = {}}; });
    if (!s) ::_exit(71);
    std::string range = "Range: bytes=0-0";
    while (range.size() < 12000) range += ",0-0";
    for (const std::string& request : {"GET /vm HTTP/1.1\r\nHost: x\r\n" + range + "\r\nContent-Length: 0\r\n\r\n",
                                       "GET /" + std::string(8000, 'a') + " HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"}) {
      Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
      const sockaddr_un addr = address_of(path);
      if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) ::_exit(72);
      if (::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(request.size())) ::_exit(73);
      const std::string r = read_response(fd.get(), std::chrono::steady_clock::now() + std::chrono::seconds(5));
      if (!r.starts_with("HTTP/1.1 2") && !r.starts_with("HTTP/1.1 4")) ::_exit(74);
    }
    s->reset();
    ::_exit(0);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK_MESSAGE(WIFEXITED(status), "the server's process was killed by signal " << WTERMSIG(status));
  CHECK(WEXITSTATUS(status) == 0);
}

// ---- The client (vmm/api/http_client.hpp) ----------------------------------------------------------

TEST_CASE("http client: an answer is parsed whole, 1xx passed over, and malformed, oversized or cut short ones are errors") {
  using api::parse_response;
  auto whole = [](std::string_view bytes, bool closed = false) {
    auto r = parse_response(bytes, closed);
    REQUIRE_MESSAGE(r, (r ? "" : r.error().message()));
    REQUIRE(r->has_value());
    return **r;
  };
  auto more = [](std::string_view bytes) {
    auto r = parse_response(bytes, false);
    REQUIRE_MESSAGE(r, (r ? "" : r.error().message()));
    CHECK_FALSE(r->has_value());
  };
  auto refused = [](std::string_view bytes, std::string_view part, bool closed = false) {
    auto r = parse_response(bytes, closed);
    REQUIRE_FALSE_MESSAGE(r, "accepted: " << std::string(bytes.substr(0, 80)));
    CHECK_MESSAGE(r.error().message().find(part) != std::string::npos, r.error().message());
  };
  auto a = whole("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}");
  CHECK(a.status == 200);
  CHECK(a.body == R"({"ok":true})");
  auto b = whole("HTTP/1.1 405 Method Not Allowed\r\nAllow:  GET, PUT \r\nContent-Length: 2\r\n\r\n{}");
  CHECK(b.status == 405);
  CHECK(b.allow == "GET, PUT");
  CHECK(whole("HTTP/1.1 204 No Content\r\n\r\n").body.empty());
  CHECK(whole("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201\r\nContent-Length: 0\r\n\r\n").status == 201);
  CHECK(whole("HTTP/1.0 200 OK\r\n\r\n{}", /*closed=*/true).body == "{}");  // no Content-Length: until the close
  more("");
  more("HTTP/1.1 200 OK\r\nContent-Le");
  more("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}");
  more("HTTP/1.1 200 OK\r\n\r\n{}");  // no Content-Length, not closed yet
  refused("", "closed without an answer", true);
  refused("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}", "closed in the middle of an answer's body (2 of 5 bytes)", true);
  refused("HTTP/1.1 200 OK\r\nContent-Le", "closed in the middle of an answer's headers", true);
  // A 30 KB status line crashed httplib's client (std::regex, recursing per byte): an error here.
  refused("HTTP/1.1 200 " + std::string(30000, 'a') + "\r\n\r\n", "headers over 16384 bytes");
  refused("HTTP/1.1 200 " + std::string(30000, 'a'), "headers over 16384 bytes");
  refused("HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n", "body of 100000000 bytes is over 1048576");
  refused("HTTP/1.1 200 OK\r\n\r\n" + std::string(api::kMaxResponseBody + 1, 'x'), "body over 1048576 bytes");
  for (const char* bad : {"HTTP/2 200 OK\r\n\r\n", "HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 2000 OK\r\n\r\n", "HTTP/1.1 099 x\r\n\r\n",
                          "HTTP/1.1 600 x\r\n\r\n", "http/1.1 200 OK\r\n\r\n", "HTTP/1.1 2a0\r\n\r\n", "\r\n\r\n"}) {
    CAPTURE(bad);
    refused(bad, "not an HTTP");
  }
  refused("HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "malformed header line");
  refused("HTTP/1.1 200 OK\r\n: empty name\r\n\r\n", "malformed header line");
  refused("HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "malformed header line");
  refused("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "malformed Content-Length");
  refused("HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n", "malformed Content-Length");
  refused("HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n", "malformed Content-Length");
  refused("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", "two different Content-Lengths");
  refused("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", "Transfer-Encoding");
}

TEST_CASE("http client: a server that answers a byte at a time, never, or too much is given up on within the timeout") {
  vmm::test::TempDir dir{"vmm-http-client"};
  const std::string path = dir / "api.sock";
  auto l = api::listen_unix(path);
  REQUIRE(l);
  std::atomic<bool> stop{false};
  std::atomic<int> mode{0};
  std::thread server([&] {
    while (!stop) {
      pollfd p{.fd = l->get(), .events = POLLIN, .revents = 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      Fd c(::accept4(l->get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!c) continue;
      char buf[4096];
      (void)::recv(c.get(), buf, sizeof buf, 0);
      if (mode == 0) {  // headers promising 100 MB, then a byte every 100 ms
        const std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
        (void)::send(c.get(), head.data(), head.size(), MSG_NOSIGNAL);
        for (int i = 0; i < 40 && !stop; ++i) {
          if (::send(c.get(), "x", 1, MSG_NOSIGNAL) != 1) break;
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
      } else if (mode == 1) {  // never answers (until the client goes)
        for (int i = 0; i < 40 && !stop; ++i) {
          pollfd q{.fd = c.get(), .events = POLLIN, .revents = 0};
          if (::poll(&q, 1, 100) > 0 && ::recv(c.get(), buf, sizeof buf, 0) <= 0) break;
        }
      } else {  // a body with no length, past the limit
        const std::string head = "HTTP/1.1 200 OK\r\n\r\n";
        (void)::send(c.get(), head.data(), head.size(), MSG_NOSIGNAL);
        const std::string chunk(64 * 1024, 'x');
        for (int i = 0; i < 40 && !stop; ++i) {
          if (::send(c.get(), chunk.data(), chunk.size(), MSG_NOSIGNAL) <= 0) break;
        }
      }
    }
  });
  for (int m : {0, 1, 2}) {
    CAPTURE(m);
    mode = m;
    const auto t0 = std::chrono::steady_clock::now();
    auto r = api::call(path, {.method = "GET", .path = "/vm", .body = {}}, 1.0);
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    REQUIRE_FALSE(r);
    CHECK(r.error().message().starts_with(path + ": "));
    CHECK(took < 1.9);
    if (m < 2) CHECK(r.error().message().find("no answer within 1 s") != std::string::npos);
    if (m == 2) CHECK_MESSAGE(r.error().message().find("body over 1048576 bytes") != std::string::npos, r.error().message());
  }
  stop = true;
  server.join();
}

TEST_CASE("http: VMs given one --api-socket over a stale socket, started at once: one takes it, the others are refused") {
  // Each found the stale socket, and each renamed its own over it: all ran, the first ones
  // unreachable (and removing the last one's socket at their end).
  vmm::test::TempDir dir{"vmm-http-stale"};
  const std::string path = dir / "api.sock";
  constexpr int kVms = 4;
  for (int round = 0; round < 10; ++round) {
    CAPTURE(round);
    {
      // A stale socket: bound, never listening, its server gone.
      Fd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
      const sockaddr_un addr = address_of(path);
      ::unlink(path.c_str());
      REQUIRE(::bind(s.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0);
    }
    int go[2], results[2], done[2];
    REQUIRE(::pipe(go) == 0);
    REQUIRE(::pipe(results) == 0);
    REQUIRE(::pipe(done) == 0);
    std::vector<pid_t> pids;
    for (int i = 0; i < kVms; ++i) {
      const pid_t pid = ::fork();
      REQUIRE(pid >= 0);
      if (pid == 0) {
        ::close(go[1]);
        ::close(results[0]);
        ::close(done[1]);
        char c;
        (void)::read(go[0], &c, 1);  // all at once
        auto l = api::listen_unix(path);
        const char r = l ? '1' : '0';
        (void)!::write(results[1], &r, 1);
        (void)::read(done[0], &c, 1);  // listening until the test has looked
        ::_exit(0);
      }
      pids.push_back(pid);
    }
    ::close(go[0]);
    ::close(results[1]);
    ::close(done[0]);
    ::close(go[1]);  // go
    int took = 0;
    for (int i = 0; i < kVms; ++i) {
      char r = 0;
      REQUIRE(::read(results[0], &r, 1) == 1);
      took += r == '1';
    }
    CHECK(took == 1);
    CHECK(api::someone_listens(path));
    ::close(done[1]);
    ::close(results[0]);
    for (pid_t p : pids) ::waitpid(p, nullptr, 0);
  }
}

TEST_CASE("http: with every thread on a busy kept-alive connection, a new client is served after their current requests, not their next hundred") {
  TestServer t([](const api::HttpRequest&) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    return api::HttpResponse{.status = 200, .body = R"({"ok":true})", .allow = {}};
  });
  if (t.skipped()) return;
  // kMaxConnections connections, each with 100 requests sent at once: ~5 s of work each, all the
  // server's threads taken. A connection was served its hundred before a waiting one got its thread.
  std::string burst;
  for (int i = 0; i < 100; ++i) burst += kGet;
  std::vector<Fd> busy;
  for (size_t i = 0; i < api::kMaxConnections; ++i) {
    busy.push_back(connect_to(t.path));
    send_all(busy.back().get(), burst);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const auto t0 = std::chrono::steady_clock::now();
  Fd late = connect_to(t.path);
  send_all(late.get(), kGet);
  const std::string r = read_response(late.get(), t0 + std::chrono::seconds(4));
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(r.starts_with("HTTP/1.1 200"));
  CHECK(took < std::chrono::seconds(2));
  // Each busy connection got an answer to its first request, and was then closed ("Connection: close").
  const std::string first = read_response(busy.front().get(), std::chrono::steady_clock::now() + std::chrono::seconds(4));
  CHECK(first.starts_with("HTTP/1.1 200"));
}
