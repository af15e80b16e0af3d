// The control API's transport (vmm-http.so, vmm/api/http.hpp) through raw sockets: many clients at
// once, a stalled client, malformed and oversized requests; and the registry of running VMs
// (STATE/run) while other processes list it. (At its limits, and the CLI's client:
// test_api_http_limits.cpp.)
#include "api_http_test.hpp"

namespace fs = std::filesystem;
using namespace vmm;
using namespace api_http_test;

TEST_CASE("http: 100 clients that keep their connections open are all answered at once") {
  TestServer t;
  if (t.skipped()) return;
  // Every client sends its request and keeps its connection open (keep-alive) while the others
  // wait: a server serving fewer connections than that at once answers the rest only when an idle
  // one times out (api::kIdleTimeoutS), after this test's deadline.
  std::vector<Fd> clients;
  for (int i = 0; i < 100; ++i) {
    clients.push_back(connect_to(t.path));
    send_all(clients.back().get(), kGet);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(api::kIdleTimeoutS - 1);
  int answered = 0;
  for (auto& c : clients) {
    const std::string r = read_response(c.get(), deadline);
    if (r.starts_with("HTTP/1.1 200") && r.ends_with(R"({"ok":true})")) ++answered;
  }
  CHECK(answered == 100);
  CHECK(t.requests == 100);
}

TEST_CASE("http: connections one after another are served by the thread that served the last, and the server's end waits for no idle one") {
  std::mutex mu;
  std::vector<pid_t> tids;
  auto server = std::make_unique<TestServer>([&](const api::HttpRequest&) {
    std::lock_guard lock(mu);
    tids.push_back(static_cast<pid_t>(::syscall(SYS_gettid)));
    return api::HttpResponse{.status = 200, .body = R"({"ok":true})", .allow = {}};
  });
  if (server->skipped()) return;
  // Each on a connection of its own, closed before the next (as a pool's clients and `vmm fork`
  // make them): kernel thread ids are not reused at once, so a new thread each time would show.
  for (int i = 0; i < 10; ++i) {
    Fd c = connect_to(server->path);
    send_all(c.get(), "GET /vm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    const std::string r = read_response(c.get(), std::chrono::steady_clock::now() + std::chrono::seconds(5));
    REQUIRE(r.starts_with("HTTP/1.1 200"));
    // The thread is back waiting before the next connection comes (it may take a moment after
    // the answer): the handoff is what is tested, not a race with it.
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  REQUIRE(tids.size() == 10);
  CHECK(std::count(tids.begin(), tids.end(), tids.front()) == 10);
  // Its end does not wait out the idle thread's linger.
  const auto t0 = std::chrono::steady_clock::now();
  server.reset();
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(500));
}

TEST_CASE("http: a client that sends half a request and stalls holds up no one") {
  TestServer t;
  if (t.skipped()) return;
  Fd stalled = connect_to(t.path);
  send_all(stalled.get(), "PUT /vm/pause HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{\"");
  Fd other = connect_to(t.path);
  send_all(other.get(), kGet);
  const std::string r = read_response(other.get(), std::chrono::steady_clock::now() + std::chrono::seconds(api::kIdleTimeoutS - 1));
  CHECK(r.starts_with("HTTP/1.1 200"));
  CHECK(t.requests == 1);  // the stalled one was not handed on
}

TEST_CASE("http: malformed and oversized requests get a 4xx with a JSON fault, and reach no handler") {
  TestServer t;
  if (t.skipped()) return;
  struct Case {
    std::string what;
    std::string request;
    const char* status;
  };
  const std::vector<Case> cases = {
      {"a request line that is not HTTP", "NOT A REQUEST\r\n\r\n", "HTTP/1.1 400"},
      {"a body over the limit", "PUT /vm/pause HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(api::kMaxBody + 1) + "\r\n\r\n" +
                                    std::string(api::kMaxBody + 1, ' '),
       "HTTP/1.1 413"},
      {"a Content-Length that is no number", "PUT /vm/pause HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n{}", "HTTP/1.1 400"},
      {"a Content-Length with a number and more", "PUT /vm/pause HTTP/1.1\r\nHost: x\r\nContent-Length: 2x\r\n\r\n{}", "HTTP/1.1 400"},
      {"two Content-Lengths", "PUT /vm/pause HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 0\r\n\r\n{}",
       "HTTP/1.1 400"},
      // httplib 0.11.4 has no limit on a chunked body, nor on a compressed one once inflated.
      {"a chunked body", "PUT /vm/pause HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
       "HTTP/1.1 411"},
      {"a compressed body", "PUT /vm/pause HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}",
       "HTTP/1.1 415"},
      // httplib reads no body for a GET: it was read as the next request (a PUT smuggled in a GET).
      {"a GET with a body", "GET /vm HTTP/1.1\r\nHost: x\r\nContent-Length: 37\r\n\r\nPUT /vm/pause HTTP/1.1\r\nHost: x\r\n\r\n",
       "HTTP/1.1 400"},
      // httplib takes a multipart body apart and hands on an empty one: a fork with default settings.
      {"a multipart body", "PUT /vm/fork HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 0\r\n\r\n",
       "HTTP/1.1 415"},
      {"a path over 1 KiB", "GET /" + std::string(2000, 'a') + " HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", "HTTP/1.1 414"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    Fd fd = connect_to(t.path);
    send_all(fd.get(), c.request);
    const std::string r = read_response(fd.get(), std::chrono::steady_clock::now() + std::chrono::seconds(api::kIdleTimeoutS - 1));
    CAPTURE(r);
    CHECK(r.starts_with(c.status));
    CHECK(r.find(R"({"fault_message":)") != std::string::npos);
  }
  CHECK(t.requests == 0);
}

TEST_CASE("http: Range and Accept-Encoding are ignored: every answer is a whole JSON document, as it is") {
  // httplib cuts a 2xx body to the range a client asks for (206 with `{"` for bytes=0-1), and the
  // fault of its own 416 too after a Range it parsed in part; and it compresses a body for a client
  // that accepts gzip or brotli (found by tests/fuzz/http_fuzz.cpp).
  TestServer t;
  if (t.skipped()) return;
  const std::vector<std::string> headers = {"Range: bytes=0-1", "Range: bytes=3-", "Range: bytes=-2", "Range: bytes=0-0,5-6",
                                            "Accept-Encoding: gzip", "accept-encoding: br, gzip;q=0.5"};
  for (const auto& h : headers) {
    CAPTURE(h);
    Fd fd = connect_to(t.path);
    send_all(fd.get(), "GET /vm HTTP/1.1\r\nHost: x\r\n" + h + "\r\n\r\n");
    const std::string r = read_response(fd.get(), std::chrono::steady_clock::now() + std::chrono::seconds(api::kIdleTimeoutS - 1));
    CAPTURE(r);
    CHECK(r.starts_with("HTTP/1.1 200"));
    CHECK(r.ends_with("\r\n\r\n" R"({"ok":true})"));
    CHECK(r.find("Content-Encoding") == std::string::npos);
  }
  CHECK(t.requests == headers.size());
  // A Range httplib cannot parse is its 416, with the whole fault.
  Fd fd = connect_to(t.path);
  send_all(fd.get(), "GET /vm HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1,3-2\r\n\r\n");
  const std::string r = read_response(fd.get(), std::chrono::steady_clock::now() + std::chrono::seconds(api::kIdleTimeoutS - 1));
  CAPTURE(r);
  CHECK(r.starts_with("HTTP/1.1 416"));
  CHECK(r.ends_with(R"({"fault_message":"HTTP error 416"})"));
  CHECK(t.requests == headers.size());
}

TEST_CASE("registry: a VM registering while another process lists the running VMs is never taken for a stale entry") {
  vmm::test::TempDir tmp("vmm-registry");
  const std::filesystem::path& dir = tmp.path;
  // A lister (as `vmm ps`, `vmm clone ls` are while clones start): it removes what it finds stale.
  const pid_t lister = ::fork();
  if (lister == 0) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (std::chrono::steady_clock::now() < end) (void)vmm::api::running_vms(dir);
    ::_exit(0);
  }
  REQUIRE(lister > 0);
  int failures = 0, rounds = 0;
  std::string first;
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(1800);
  while (std::chrono::steady_clock::now() < end) {
    auto r = vmm::api::Registration::create(dir, "vm" + std::to_string(rounds % 4));
    ++rounds;
    if (!r) {
      if (first.empty()) first = r.error().message();
      ++failures;
    }
  }
  int status = 0;
  ::waitpid(lister, &status, 0);
  CAPTURE(first);
  CAPTURE(rounds);
  CHECK(failures == 0);
}

TEST_CASE("registry: a name is taken once, a second VM is refused and leaves the first one alone, a stale entry is reclaimed") {
  vmm::test::TempDir tmp("vmm-registry");
  const std::filesystem::path& dir = tmp.path;
  {
    auto first = vmm::api::Registration::create(dir, "web");
    REQUIRE(first);
    auto second = vmm::api::Registration::create(dir, "web");
    REQUIRE_FALSE(second);
    CHECK(second.error().message().find("a VM named 'web' is already running") != std::string::npos);
    CHECK(std::filesystem::exists(dir / "run" / "web" / "vm.json"));  // the refused one removed nothing
    auto vms = vmm::api::running_vms(dir);
    REQUIRE(vms.size() == 1);
    CHECK(vms[0].name == "web");
    CHECK(vms[0].pid == ::getpid());
  }
  CHECK_FALSE(std::filesystem::exists(dir / "run" / "web"));
  // Left by a VM killed with -9: its vm.json unlocked. The next VM of that name takes it over; a
  // listing removes one it finds; neither leaves a hidden entry behind.
  for (const char* name : {"old", "older"}) {
    std::filesystem::create_directories(dir / "run" / name);
    std::ofstream(dir / "run" / name / "vm.json") << "{\"name\": \"" << name << "\", \"pid\": 1, \"socket\": \"/nonexistent\"}\n";
  }
  auto again = vmm::api::Registration::create(dir, "old");
  REQUIRE(again);
  auto vms = vmm::api::running_vms(dir);
  REQUIRE(vms.size() == 1);
  CHECK(vms[0].name == "old");
  CHECK(vms[0].pid == ::getpid());
  CHECK_FALSE(std::filesystem::exists(dir / "run" / "older"));
  for (const auto& e : std::filesystem::directory_iterator(dir / "run")) CHECK(e.path().filename().string().front() != '.');
  again->reset();
}

TEST_CASE("registry: a prepared VM (a pool's member) is invisible until published, and its socket, bound ahead, moves into place with it") {
  vmm::test::TempDir tmp("vmm-registry");
  const fs::path& dir = tmp.path;
  auto can_connect = [](const fs::path& path) {
    Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    return ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
  };
  auto hidden_entries = [&dir] {
    int n = 0;
    for (const auto& e : fs::directory_iterator(dir / "run")) n += e.path().filename().string().front() == '.';
    return n;
  };
  {
    auto c = api::ControlPlane::prepare(dir, "pm", {}, /*bind_now=*/true);
    REQUIRE(c);
    const fs::path sock = dir / "run" / "pm" / "api.sock";
    CHECK((*c)->registration().socket() == sock);
    // Nothing under its name: not listed, not found, no socket there; its hidden entry, though old,
    // is not swept while it holds its lock.
    CHECK_FALSE(fs::exists(dir / "run" / "pm"));
    CHECK(api::running_vms(dir).empty());
    CHECK_FALSE(api::find_vm(dir, "pm"));
    REQUIRE(hidden_entries() == 1);
    for (const auto& e : fs::directory_iterator(dir / "run")) {
      fs::last_write_time(e.path(), fs::file_time_type::clock::now() - std::chrono::minutes(5));
      CHECK(fs::is_socket(e.path() / "api.sock"));
    }
    CHECK(api::running_vms(dir).empty());
    CHECK(hidden_entries() == 1);
    // Another VM takes the name meanwhile: the prepared one cannot publish, and leaves it alone.
    {
      auto other = api::Registration::create(dir, "pm");
      REQUIRE(other);
      auto r = (*c)->publish();
      REQUIRE_FALSE(r);
      CHECK(r.error().message().find("a VM named 'pm' is already running") != std::string::npos);
      CHECK(fs::exists(dir / "run" / "pm" / "vm.json"));
    }
    // Published: listed under its name, its socket accepting where vm.json says.
    REQUIRE((*c)->publish());
    auto vms = api::running_vms(dir);
    REQUIRE(vms.size() == 1);
    CHECK(vms[0].name == "pm");
    CHECK(vms[0].socket == sock);
    CHECK(can_connect(sock));
    auto found = api::find_vm(dir, "pm");
    REQUIRE(found);
    CHECK(*found == sock);
    CHECK(hidden_entries() == 0);
  }
  CHECK_FALSE(fs::exists(dir / "run" / "pm"));  // gone with it, socket and all
  // Never published: it leaves nothing behind.
  {
    auto c = api::ControlPlane::prepare(dir, "never", {}, /*bind_now=*/true);
    REQUIRE(c);
    CHECK(hidden_entries() == 1);
  }
  CHECK(hidden_entries() == 0);
  CHECK(fs::is_empty(dir / "run"));
}

TEST_CASE("registry: a prepared VM whose hidden socket path would be too long binds at its start instead of failing") {
  vmm::test::TempDir tmp("vmm-registry");
  // A state directory whose run/NAME/api.sock fits a socket address (107 bytes) while the hidden
  // .NAME.new.PID.N/api.sock does not.
  const size_t want = 86;
  REQUIRE(tmp.path.string().size() + 2 < want);
  const fs::path dir = tmp.path / std::string(want - tmp.path.string().size() - 1, 'd');
  REQUIRE(dir.string().size() == want);
  auto c = api::ControlPlane::prepare(dir, "pm", {}, /*bind_now=*/true);
  REQUIRE_MESSAGE(c.has_value(), (c ? "" : c.error().message()));
  REQUIRE((*c)->registration().socket().string().size() < 108);
  for (const auto& e : fs::directory_iterator(dir / "run")) CHECK_FALSE(fs::exists(e.path() / "api.sock"));
  REQUIRE((*c)->publish());
  CHECK(fs::exists(dir / "run" / "pm" / "vm.json"));
}

TEST_CASE("http: a PUT without a Content-Length has an empty body, answered at once (not read until the client closes)") {
  TestServer t;
  if (t.skipped()) return;
  Fd fd = connect_to(t.path);
  const auto t0 = std::chrono::steady_clock::now();
  send_all(fd.get(), "PUT /vm/pause HTTP/1.1\r\nHost: x\r\n\r\n");
  const std::string r = read_response(fd.get(), t0 + std::chrono::seconds(api::kIdleTimeoutS - 1));
  CHECK(r.starts_with("HTTP/1.1 200"));
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));
  CHECK(t.requests == 1);
}

TEST_CASE("http: an exception out of a handler, or text that is not UTF-8, is a 500 with a JSON fault, not the end of the process") {
  // vmm and the plugin have a C++ runtime each: an exception unwinding from one into the other
  // aborted the process (a pool's handler let one out for a path that is not UTF-8).
  TestServer t([](const api::HttpRequest& r) -> api::HttpResponse {
    if (r.path == "/throw") throw std::runtime_error("boom");
    return api::fault(404, "no such path: " + r.path);
  });
  if (t.skipped()) return;
  const std::string& path = t.path;
  for (const char* req : {"GET /throw HTTP/1.1\r\nHost: x\r\n\r\n", "GET /%FF HTTP/1.1\r\nHost: x\r\n\r\n"}) {
    CAPTURE(req);
    Fd fd = connect_to(path);
    send_all(fd.get(), req);
    const std::string r = read_response(fd.get(), std::chrono::steady_clock::now() + std::chrono::seconds(api::kIdleTimeoutS - 1));
    CAPTURE(r);
    CHECK(r.find(R"({"fault_message":)") != std::string::npos);
    if (std::string(req).starts_with("GET /throw")) {
      CHECK(r.starts_with("HTTP/1.1 500"));
      CHECK(r.find("internal error: boom") != std::string::npos);
    } else {
      CHECK(r.starts_with("HTTP/1.1 404"));
      CHECK(r.find("no such path: /\xef\xbf\xbd") != std::string::npos);  // U+FFFD for the byte 0xFF
    }
  }
}

TEST_CASE("http: a request line or header without end, or a request dripped a byte at a time, is dropped, and the server's end waits for neither") {
  TestServer t;
  if (t.skipped()) return;
  using clock = std::chrono::steady_clock;
  // 1 MiB of request line with no end: httplib 0.11.4 would grow its line without bound. The
  // connection is closed once a request has brought kMaxBody + 16 KiB.
  Fd endless = connect_to(t.path);
  const std::string chunk(64 * 1024, 'a');
  bool refused = false;
  for (int i = 0; i < 16 && !refused; ++i) {
    refused = ::send(endless.get(), chunk.data(), chunk.size(), MSG_NOSIGNAL) < 0;
    if (!refused) {
      pollfd p{.fd = endless.get(), .events = POLLIN, .revents = 0};
      char c;
      refused = ::poll(&p, 1, 50) > 0 && ::recv(endless.get(), &c, 1, MSG_DONTWAIT) <= 0;
    }
  }
  CHECK(refused);
  // A request dripped a byte every 400 ms: never idle for kIdleTimeoutS, yet ended (a 400, or the
  // connection closed) once its 10 s are up, not after its 86th byte 34 s later.
  Fd drip = connect_to(t.path);
  const std::string request = std::string("GET /vm HTTP/1.1\r\nX-Slow: ") + std::string(60, 'y');
  const auto t0 = clock::now();
  bool dropped = false;
  for (char c : request) {
    if (::send(drip.get(), &c, 1, MSG_NOSIGNAL) < 0) {
      dropped = true;
      break;
    }
    // The server's answer (a 400 for the headers it could not read) or its close.
    pollfd p{.fd = drip.get(), .events = POLLIN, .revents = 0};
    if (::poll(&p, 1, 400) > 0) {
      dropped = true;
      break;
    }
  }
  const double took = std::chrono::duration<double>(clock::now() - t0).count();
  CHECK(dropped);
  CHECK(took >= 9.5);
  CHECK(took < 13);
  CHECK(t.requests == 0);
  // A client that keeps its connection busy does not hold up the server's end.
  Fd busy = connect_to(t.path);
  send_all(busy.get(), "GET /vm HTTP/1.1\r\nX-Slow: ");
  const auto t1 = clock::now();
  t.server.reset();
  CHECK(clock::now() - t1 < std::chrono::seconds(1));
}

TEST_CASE("http: connections beyond those served and those waiting get a 503 at once: the descriptors a client holds are bounded") {
  TestServer t;
  if (t.skipped()) return;
  // kMaxConnections served (idle: their threads wait for a request) and as many waiting; the next
  // ones are refused.
  std::vector<Fd> idle;
  for (size_t i = 0; i < 2 * api::kMaxConnections; ++i) idle.push_back(connect_to(t.path));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // accepted, in order
  Fd extra = connect_to(t.path);
  const std::string r = read_response(extra.get(), std::chrono::steady_clock::now() + std::chrono::seconds(2));
  CAPTURE(r);
  CHECK(r.starts_with("HTTP/1.1 503"));
  CHECK(r.find(R"({"fault_message":"too many connections)") != std::string::npos);
  // The first ones are still served.
  send_all(idle.front().get(), kGet);
  CHECK(read_response(idle.front().get(), std::chrono::steady_clock::now() + std::chrono::seconds(2)).starts_with("HTTP/1.1 200"));
}

TEST_CASE("http: a request's received time is when its connection was accepted, though it waited for a thread, and a kept-alive one's its first byte") {
  std::mutex mu;
  std::vector<double> waited_ms;  // per request: from `received` to the handler
  TestServer t([&](const api::HttpRequest& r) {
    std::lock_guard lock(mu);
    waited_ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - r.received).count());
    return api::HttpResponse{.status = 200, .body = R"({"ok":true})", .allow = {}};
  });
  if (t.skipped()) return;
  // Every thread held by an idle connection; the next one waits for a thread with its request sent.
  std::vector<Fd> idle;
  for (size_t i = 0; i < api::kMaxConnections; ++i) idle.push_back(connect_to(t.path));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  Fd late = connect_to(t.path);
  send_all(late.get(), kGet);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  {
    std::lock_guard lock(mu);
    CHECK(waited_ms.empty());  // not served yet: no thread
  }
  idle.front() = Fd();  // a thread is free
  CHECK(read_response(late.get(), std::chrono::steady_clock::now() + std::chrono::seconds(5)).starts_with("HTTP/1.1 200"));
  std::this_thread::sleep_for(std::chrono::milliseconds(800));  // the connection idles: the next request's time is its own
  send_all(late.get(), kGet);
  CHECK(read_response(late.get(), std::chrono::steady_clock::now() + std::chrono::seconds(5)).starts_with("HTTP/1.1 200"));
  std::lock_guard lock(mu);
  REQUIRE(waited_ms.size() == 2);
  // (The accept comes a moment after the client's connect returns, the handler a moment after the
  // thread is freed: 100 ms of slack either way, for a loaded host or the sanitizers.)
  CHECK(waited_ms[0] >= 400);
  CHECK(waited_ms[1] < 300);  // (from the accept it would be 1300 and more)
}

TEST_CASE("http: a request being handled when the server ends still gets its response (PUT /vm/stop: the guest powers off at once)") {
  std::atomic<bool> handling{false};
  TestServer t([&](const api::HttpRequest&) {
    handling = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    return api::HttpResponse{.status = 204, .body = {}, .allow = {}};
  });
  if (t.skipped()) return;
  Fd fd = connect_to(t.path);
  send_all(fd.get(), "PUT /vm/stop HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
  while (!handling) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  t.server.reset();  // the VM has stopped: its server ends while the handler still runs
  const std::string r = read_response(fd.get(), std::chrono::steady_clock::now() + std::chrono::seconds(2));
  CHECK(r.starts_with("HTTP/1.1 204"));
}

TEST_CASE("http: a socket is bound in a directory of its own, then renamed into place 0600, and nothing stays beside it") {
  vmm::test::TempDir dir{"vmm-http-test"};
  const std::string path = dir / "api.sock";
  const mode_t umask_was = ::umask(0);  // the mode a socket is bound with: nobody may reach it before its chmod
  auto fd = api::listen_unix(path);
  ::umask(umask_was);
  if (!fd) FAIL(fd.error().message());
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));
  CHECK((st.st_mode & 0777) == 0600);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir.path)) names.push_back(e.path().filename().string());
  CHECK(names == std::vector<std::string>{"api.sock"});
  // Its directory must leave room for the temporary one (DIR/.sXXXXXX/s in 107 bytes).
  const std::string deep = "/tmp/" + std::string(91, 'd') + "/api.sock";  // a directory of 96 bytes
  CHECK(api::check_socket_path(deep));
  const std::string deeper = "/tmp/" + std::string(92, 'd') + "/api.sock";
  auto refused = api::check_socket_path(deeper);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message().find("(107 bytes at most, its directory's 96)") != std::string::npos);
}

TEST_CASE("http: after a refused request the connection is closed: the body it did not read is never taken for a request") {
  TestServer t;
  if (t.skipped()) return;
  const std::string smuggled = "PUT /vm/stop HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
  const std::vector<std::pair<std::string, const char*>> cases = {
      {"PUT /vm/pause HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + smuggled, "HTTP/1.1 411"},
      {"PUT /vm/pause HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n" + smuggled, "HTTP/1.1 415"},
      {"PUT /vm/pause HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(api::kMaxBody + 1) + "\r\n\r\n" +
           std::string(api::kMaxBody + 1, ' ') + smuggled,
       "HTTP/1.1 413"},
  };
  for (const auto& c : cases) {
    const auto& request = c.first;
    const auto& status = c.second;
    CAPTURE(status);
    Fd fd = connect_to(t.path);
    send_all(fd.get(), request);
    std::string all;
    char buf[4096];
    for (;;) {  // everything until the server closes (it must: 2 s at most here)
      pollfd p{.fd = fd.get(), .events = POLLIN, .revents = 0};
      if (::poll(&p, 1, 2000) <= 0) break;
      const ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
      if (n <= 0) break;
      all.append(buf, static_cast<size_t>(n));
    }
    CAPTURE(all);
    CHECK(all.starts_with(status));
    CHECK(all.find("HTTP/1.1", 1) == std::string::npos);  // one response: the smuggled request got none
  }
  CHECK(t.requests == 0);
}

TEST_CASE("http: a server whose backlog is full (stopped, or swamped) still counts as listening, and no connect waits for ever") {
  vmm::test::TempDir dir{"vmm-http-test"};
  const std::string path = dir / "api.sock";
  Fd server(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(server);
  const sockaddr_un addr = address_of(path);
  REQUIRE(::bind(server.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(server.get(), 0) == 0);  // never accepts
  std::vector<Fd> queued;  // fill its backlog
  for (int i = 0; i < 8; ++i) {
    Fd c(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (::connect(c.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
      REQUIRE(errno == EAGAIN);
      break;
    }
    queued.push_back(std::move(c));
  }
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(api::someone_listens(path));
  auto taken = api::listen_unix(path);  // its socket is not replaced
  REQUIRE_FALSE(taken);
  CHECK(taken.error().message().find("another server listens there") != std::string::npos);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(6));
}

// The socket's directory locked by someone else for ever (anyone who can read /tmp can): the
// socket is still bound, within a few seconds, without the lock (renameat2's RENAME_NOREPLACE);
// it waited for ever, the VM out of reach of its API and its process never ending.
TEST_CASE("api: a socket directory someone else keeps locked delays listen_unix, never holds it for ever") {
  vmm::test::TempDir tmp("vmm-api");
  Fd held(::open(tmp.path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  REQUIRE(::flock(held.get(), LOCK_EX) == 0);
  const std::string path = (tmp.path / "vm.sock").string();
  const auto t0 = std::chrono::steady_clock::now();
  auto l = api::listen_unix(path);
  REQUIRE_MESSAGE(l, l.error().message());
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10));
  CHECK(api::someone_listens(path));
}

// nlohmann's dump() throws on text that is not UTF-8: a socket path or state directory of other
// bytes ended vmm with std::terminate as it registered. Now a one-line error.
TEST_CASE("registry: a socket path that is not UTF-8 is refused with an error, not an exception") {
  vmm::test::TempDir tmp("vmm-registry");
  const std::filesystem::path socket = tmp.path / "a\xff.sock";
  vmm::Result<std::unique_ptr<vmm::api::Registration>> r = std::unexpected(vmm::Error("unset"));
  CHECK_NOTHROW(r = vmm::api::Registration::create(tmp.path, "web", socket));
  REQUIRE_FALSE(r);
  CHECK(r.error().message().find("not valid UTF-8") != std::string::npos);
  CHECK(vmm::api::running_vms(tmp.path).empty());
}

// A running VM's record (locked) whose pid is not a number: a listing skips it, never throws.
TEST_CASE("registry: a locked VM record with a pid that is not a number is unreadable, not an exception") {
  vmm::test::TempDir tmp("vmm-registry");
  std::filesystem::create_directories(tmp.path / "run" / "odd");
  const auto info = tmp.path / "run" / "odd" / "vm.json";
  std::ofstream(info) << R"({"name": "odd", "pid": "12", "socket": "/nonexistent"})" << "\n";
  vmm::Fd lock(::open(info.c_str(), O_RDONLY | O_CLOEXEC));
  REQUIRE(lock);
  REQUIRE(::flock(lock.get(), LOCK_EX) == 0);
  std::vector<vmm::api::RunningVm> vms;
  CHECK_NOTHROW(vms = vmm::api::running_vms(tmp.path));
  CHECK(vms.empty());  // skipped as unreadable
}

// The race of a stale entry's removal: a remover checked the entry stale, then moved it aside by its
// path; by then it could be another VM's, which had taken the name in between (a third process
// removed the stale one first). That VM ran on with its directory hidden and its name given to a
// fourth, and at its end removed the fourth's directory. Here processes take one name over and over,
// half of them ending as a VM killed with -9 (its lock released, its entry left), while others
// list: a VM holding the name must find its own record under it for as long as it holds it.
TEST_CASE("registry: VMs taking one name over stale entries while others list: a holder's record stays in place, its end removes only its own") {
  vmm::test::TempDir tmp("vmm-registry");
  const fs::path dir = tmp.path;
  const fs::path info = dir / "run" / "n" / "vm.json";
  auto own_record = [&info] {
    std::ifstream in(info);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return text.find("\"pid\":" + std::to_string(::getpid()) + ",") != std::string::npos;
  };
  constexpr int kTakers = 3, kListers = 2;
  std::vector<pid_t> kids;
  for (int i = 0; i < kTakers + kListers; ++i) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid > 0) {
      kids.push_back(pid);
      continue;
    }
    const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(2500);
    int taken = 0, lost = 0;
    while (std::chrono::steady_clock::now() < end) {
      if (i >= kTakers) {
        (void)api::running_vms(dir);
        continue;
      }
      auto r = api::Registration::create(dir, "n");
      if (!r) continue;
      ++taken;
      for (int k = 0; k < 20; ++k) lost += !own_record();
      if (taken % 2) (*r)->abandon();  // as if killed: its lock freed, its entry left
    }
    // Exit status: 1 = a holder lost its record, 2 = the name was never taken (the test proves nothing).
    ::_exit(lost ? 1 : i < kTakers && taken == 0 ? 2 : 0);
  }
  for (pid_t pid : kids) {
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  // The last entry, if its VM was "killed", goes with the next listing; nothing hidden stays.
  CHECK(api::running_vms(dir).empty());
  CHECK(fs::is_empty(dir / "run"));
}

// What a pool does for a member that was killed as it waited: removes its hidden entry, and only
// its own (a VM named "pm.new.1" makes ".pm.new.1.new.PID.N", which begins as "pm"'s do).
TEST_CASE("registry: a killed pool member's unpublished entry is removed, a held one or another name's is left alone") {
  vmm::test::TempDir tmp("vmm-registry");
  const fs::path& dir = tmp.path;
  auto hidden = [&dir] {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir / "run")) out.push_back(e.path().filename().string());
    std::ranges::sort(out);
    return out;
  };
  auto other = api::Registration::prepare(dir, "pm.new.1");
  REQUIRE(other);
  CHECK(api::remove_unpublished(dir, "pm"));  // nothing of pm's; the other's is held and not pm's
  REQUIRE(hidden().size() == 1);
  {
    auto held = api::Registration::prepare(dir, "pm");
    REQUIRE(held);
    CHECK_FALSE(api::remove_unpublished(dir, "pm"));  // pm's, held
    CHECK(hidden().size() == 2);
    (*held)->abandon();  // as if killed: its lock freed, its entry left
  }
  CHECK(hidden().size() == 2);
  CHECK(api::remove_unpublished(dir, "pm"));
  const auto left = hidden();
  REQUIRE(left.size() == 1);
  CHECK(left[0].starts_with(".pm.new.1.new."));
}

// `vmm pause NAME` asks the socket NAME's registration names who serves it, and sends the verb only
// to the VM of that name: until 2026-12-08 a server that answered GET /vm with an error (another
// program, one of another version) was sent the PUT all the same.
TEST_CASE("vm verbs: a verb by name goes only to a server that answers as that VM") {
  struct Case {
    int status;
    std::string body;
    bool sent;
  };
  for (const Case& c : {Case{200, R"({"name":"web","state":"running"})", true}, Case{200, R"({"name":"db"})", false},
                        Case{404, R"({"fault_message":"no"})", false}, Case{200, "not json", false}}) {
    const int status = c.status;
    const std::string body = c.body;
    const bool sent = c.sent;
    CAPTURE(status);
    CAPTURE(body);
    std::atomic<int> puts{0};
    TestServer t([&](const api::HttpRequest& r) {
      if (r.method == "PUT") {
        ++puts;
        return api::HttpResponse{.status = 204, .body = {}, .allow = {}};
      }
      return api::HttpResponse{.status = status, .body = body, .allow = {}};
    });
    if (t.skipped()) return;
    vmm::test::TempDir state("vmm-verbs");
    auto reg = api::Registration::create(state.path, "web", t.path);
    REQUIRE(reg);
    cli::VmCommand pause;
    pause.verb = "pause";
    pause.target = "web";
    pause.state_dir = state.path.string();
    const int rc = cli::vm_command(pause);
    CHECK((rc == 0) == sent);
    CHECK(puts == (sent ? 1 : 0));
  }
}
