// vmm-http.so: the control API's transport over cpp-httplib (see http.hpp for why a plugin).
#include <httplib.h>
#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>

#include <nlohmann/json.hpp>

#include "vmm/api/http.hpp"
#include "vmm/api/json_text.hpp"
#include "vmm/base/thread.hpp"

namespace vmm::api {
namespace {

std::string fault(const std::string& message) { return json_display(nlohmann::json{{"fault_message", message}}); }

/// Set while a request is answered (on its connection's thread) when what follows it on the
/// connection cannot be trusted to start a request: a body refused unread, a request httplib could
/// not parse. A Connection: close header on the response alone does not close it in httplib.
thread_local bool t_close_connection = false;
/// When the request being answered began (HttpRequest::received), on its connection's thread.
thread_local std::chrono::steady_clock::time_point t_received{};

/// One connection as httplib reads and writes it (its process_request() takes any Stream): the
/// limits httplib 0.11.4 lacks are kept here, where every byte passes. A request (its line, its
/// headers, its body) may bring kMaxBody + kMaxHead bytes and must have arrived kRequestS seconds
/// after it began (httplib reads a line or a header of any length, and a client that sends a
/// byte every few seconds held its thread, and the server's end, forever); nothing arrives for
/// kIdleTimeoutS: dropped; the server's end (stop_fd readable) ends every wait at once.
class ConnectionStream final : public httplib::Stream {
 public:
  /// `accepted`: when the connection was accepted, the first request's beginning.
  ConnectionStream(int fd, int stop_fd, std::chrono::steady_clock::time_point accepted)
      : fd_(fd), stop_fd_(stop_fd), began_(accepted) {}

  /// Waits (kIdleTimeoutS at most) for the next request of a kept-alive connection, and starts
  /// its budget and its clock.
  bool next_request() {
    if (budget_exhausted_) return false;  // the rest of an over-long request is not read as another
    if (pos_ == end_ && !wait(POLLIN, std::chrono::steady_clock::now() + std::chrono::seconds(kIdleTimeoutS))) return false;
    if (!first_) began_ = std::chrono::steady_clock::now();
    first_ = false;
    budget_ = kMaxBody + kMaxHead;
    deadline_ = std::chrono::steady_clock::now() + std::chrono::seconds(kRequestS);
    return true;
  }

  bool is_readable() const override { return pos_ != end_ || wait(POLLIN, read_until()); }
  // A response is written even as the server ends (PUT /vm/stop's 204, the guest powering off at
  // once): only a client that takes none of it for kIdleTimeoutS ends it.
  bool is_writable() const override {
    return wait(POLLOUT, std::chrono::steady_clock::now() + std::chrono::seconds(kIdleTimeoutS), /*until_stop=*/false);
  }

  ssize_t read(char* ptr, size_t size) override {
    if (pos_ == end_) {
      // httplib reads a line a byte at a time: received a buffer at a time here.
      if (budget_ == 0) budget_exhausted_ = true;
      if (budget_ == 0 || !wait(POLLIN, read_until())) return -1;
      ssize_t n;
      do {
        n = ::recv(fd_, buf_, std::min(sizeof buf_, budget_), 0);
      } while (n < 0 && errno == EINTR);
      if (n <= 0) return n;
      budget_ -= static_cast<size_t>(n);
      pos_ = 0;
      end_ = static_cast<size_t>(n);
    }
    const size_t n = std::min(size, end_ - pos_);
    std::memcpy(ptr, buf_ + pos_, n);
    pos_ += n;
    return static_cast<ssize_t>(n);
  }

  ssize_t write(const char* ptr, size_t size) override {
    for (size_t off = 0; off < size;) {
      if (!is_writable()) return -1;
      const ssize_t n = ::send(fd_, ptr + off, size - off, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) return -1;
      off += static_cast<size_t>(n);
    }
    return static_cast<ssize_t>(size);
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override { ip.clear(), port = 0; }
  void get_local_ip_and_port(std::string& ip, int& port) const override { ip.clear(), port = 0; }
  socket_t socket() const override { return fd_; }
  /// When the current request began: its connection's accept (the first), or its first byte.
  std::chrono::steady_clock::time_point began() const { return began_; }

 private:
  static constexpr size_t kMaxHead = 16 * 1024;
  static constexpr int kRequestS = 10;

  std::chrono::steady_clock::time_point read_until() const {
    return std::min(deadline_, std::chrono::steady_clock::now() + std::chrono::seconds(kIdleTimeoutS));
  }
  /// Until `events` on the connection, `until`, or (`until_stop`) the server's end.
  bool wait(short events, std::chrono::steady_clock::time_point until, bool until_stop = true) const {
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now()).count();
      if (left <= 0) return false;
      pollfd p[2] = {{.fd = fd_, .events = events, .revents = 0}, {.fd = until_stop ? stop_fd_ : -1, .events = POLLIN, .revents = 0}};
      const int n = ::poll(p, 2, static_cast<int>(std::min<long>(left, 60000)));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 || p[1].revents != 0) return false;
      if (n > 0) return p[0].revents != 0;
    }
  }

  int fd_, stop_fd_;
  std::chrono::steady_clock::time_point began_;
  bool first_ = true;
  size_t budget_ = 0;
  bool budget_exhausted_ = false;
  std::chrono::steady_clock::time_point deadline_{};
  char buf_[4096];
  size_t pos_ = 0, end_ = 0;
};

/// Every answer is a whole JSON document, as it is: a Range header is ignored (RFC 9110 14.2 lets
/// a server), and so is Accept-Encoding. httplib would otherwise cut a body to the range asked for
/// (`{"` for bytes=0-1; also a 416's fault after a Range it could parse only in part) and gzip or
/// brotli it (Debian's build has both). Found by tests/fuzz/http_fuzz.cpp. Called from the
/// pre-routing and error handlers, before httplib writes the response; the request is
/// process_request()'s own object, not a const one, so changing it is well defined.
void whole_answers(const httplib::Request& req) {
  auto& r = const_cast<httplib::Request&>(req);
  r.ranges.clear();
  r.headers.erase("Accept-Encoding");
}

/// Connection threads' stacks. httplib matches a request's path, and parses its Range header (before
/// any handler of ours can look at it), with std::regex, which recurses once per byte matched:
/// ~0.5 KiB of stack a byte, so a 16 KiB head could need 8 MiB. A thread's default stack follows
/// `ulimit -s` (2 MiB under `ulimit -s unlimited`): one request took the VM down with a SIGSEGV
/// there. Address space only: the pages a thread never touches cost nothing.
constexpr size_t kConnectionStack = 32u << 20;

/// Starts `f` on a thread of its own with a kConnectionStack stack; false if none can be made (at
/// a limit on threads). Joinable threads go to `*joinable`; without it the thread is detached.
template <typename F>
bool start_connection_thread(F f, pthread_t* joinable = nullptr) {
  auto owned = std::make_unique<F>(std::move(f));
  pthread_attr_t attr;
  if (::pthread_attr_init(&attr) != 0) return false;
  ::pthread_attr_setstacksize(&attr, kConnectionStack);
  if (!joinable) ::pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_t t;
  const int rc = ::pthread_create(
      &t, &attr,
      [](void* p) -> void* {
        std::unique_ptr<F> fn(static_cast<F*>(p));
        (*fn)();
        return nullptr;
      },
      owned.get());
  ::pthread_attr_destroy(&attr);
  if (rc != 0) return false;
  (void)owned.release();  // the thread's now
  if (joinable) *joinable = t;
  return true;
}

/// httplib's request processing, on connections this server accepted itself.
class ConnectionServer final : public httplib::Server {
 public:
  bool serve_request(httplib::Stream& s, bool close_connection, bool& closed) { return process_request(s, close_connection, closed, nullptr); }
};

class Server final : public HttpServer {
 public:
  explicit Server(HttpHandler handler) : handler_(std::move(handler)) {
    svr_.set_payload_max_length(kMaxBody);
    svr_.set_keep_alive_max_count(kKeepAliveMax);  // what its Keep-Alive header says: serve() counts
    auto dispatch = [this](const httplib::Request& req, httplib::Response& res) {
      const HttpResponse r = handler_(HttpRequest{.method = req.method, .path = req.path, .body = req.body, .received = t_received});
      res.status = r.status;
      if (!r.allow.empty()) res.set_header("Allow", r.allow);
      if (!r.body.empty()) res.set_content(r.body, "application/json");
    };
    svr_.Get(".*", dispatch);
    svr_.Put(".*", dispatch);
    svr_.Post(".*", dispatch);
    svr_.Patch(".*", dispatch);
    svr_.Delete(".*", dispatch);
    svr_.Options(".*", dispatch);
    // httplib takes a Content-Length it cannot read for 0 and hands the request on without its
    // body (the rest of it then read as the next request); two of them are the classic way to
    // smuggle one request in another. Both are malformed: 400, and the connection closed.
    //
    // It runs before the body is read, and httplib 0.11.4 limits a body only by its Content-Length:
    // a chunked body, or a compressed one (inflated after the check), or one read until the client
    // closes (no Content-Length) could be any size. A body comes with a Content-Length, or there
    // is none (RFC 9112 6.3: no Content-Length and no Transfer-Encoding means an empty body; httplib
    // waited for the client to close, then answered 400).
    svr_.set_pre_routing_handler([dispatch](const httplib::Request& req, httplib::Response& res) {
      whole_answers(req);
      auto refuse = [&](int status, const std::string& why) {
        t_close_connection = true;  // its body, if any, was not read
        res.status = status;
        res.set_header("Connection", "close");
        res.set_content(fault(why), "application/json");
        return httplib::Server::HandlerResponse::Handled;
      };
      // No path of the API is long; a long one only feeds httplib's routing regex (above).
      if (req.path.size() > kMaxPath) return refuse(414, "path too long");
      if (req.has_header("Transfer-Encoding")) return refuse(411, "send the body with a Content-Length (no Transfer-Encoding)");
      // httplib takes a multipart body apart into parts of its own and hands on an empty body.
      if (req.get_header_value("Content-Type").starts_with("multipart/")) return refuse(415, "send a JSON body (not multipart)");
      if (req.has_header("Content-Encoding")) return refuse(415, "a body is sent as it is (no Content-Encoding)");
      const size_t n = req.get_header_value_count("Content-Length");
      const std::string v = req.get_header_value("Content-Length");
      if (n == 0) {
        httplib::Request empty = req;
        empty.body.clear();
        dispatch(empty, res);
        return httplib::Server::HandlerResponse::Handled;
      }
      if (n == 1 && !v.empty() && v.size() <= 19 && v.find_first_not_of("0123456789") == std::string::npos) {
        // httplib reads a body only for the methods that have one: another's would be read as the
        // next request (a GET smuggling a PUT in its body).
        const bool has_body = req.method == "PUT" || req.method == "POST" || req.method == "PATCH" || req.method == "DELETE";
        if (!has_body && v.find_first_not_of('0') != std::string::npos) return refuse(400, "a " + req.method + " request has no body");
        return httplib::Server::HandlerResponse::Unhandled;
      }
      return refuse(400, "malformed request: Content-Length");
    });
    // Errors httplib answers itself (a body over the limit, a malformed request line) get a JSON
    // body too; the handler's own errors already have one.
    svr_.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      whole_answers(req);
      if (!res.body.empty()) return;
      t_close_connection = true;  // httplib's own refusal (413, a malformed request): the rest is not read
      std::string what = "HTTP error " + std::to_string(res.status);
      if (res.status == 413) what = "request body too large (" + std::to_string(kMaxBody) + " bytes at most)";
      if (res.status == 400) what = "malformed request";
      if (res.status == 404) what = "no such path";
      res.set_content(fault(what), "application/json");
    });
    svr_.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr e) {
      std::string what = "internal error";
      try {
        if (e) std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        what = ex.what();
      } catch (...) {
      }
      res.status = 500;
      res.set_content(fault(what), "application/json");
    });
  }

  /// Serves on `fd`, a listening socket (listen_unix made it), which the server owns from here.
  /// Throws (the caller closes `fd`) when it cannot start.
  void start(int fd) {
    stop_fd_ = ::eventfd(0, EFD_CLOEXEC);
    if (stop_fd_ < 0) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
    listen_fd_ = fd;
    // (A kConnectionStack stack: a connection is served on this thread when no other can be made.)
    if (!start_connection_thread([this] { accept_loop(); }, &acceptor_)) {
      listen_fd_ = -1;
      throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again));
    }
    acceptor_started_ = true;
  }

  ~Server() override {
    const uint64_t one = 1;
    if (stop_fd_ >= 0) (void)!::write(stop_fd_, &one, sizeof one);  // readable from now on: every wait ends
    if (acceptor_started_) ::pthread_join(acceptor_, nullptr);
    {
      // A request being handled finishes (the handler may reach what its owner destroys next);
      // threads lingering for the next connection end.
      std::unique_lock lock(mutex_);
      stopping_ = true;
      work_cv_.notify_all();
      idle_.wait(lock, [&] { return running_ == 0; });
      for (const auto& w : waiting_) ::close(w.fd);
    }
    if (listen_fd_ >= 0) ::close(listen_fd_);
    if (stop_fd_ >= 0) ::close(stop_fd_);
  }

 private:
  /// Connections beyond kMaxConnections wait for a thread, up to kMaxWaiting of them; the next
  /// get a 503 at once: the file descriptors a client can hold are bounded.
  static constexpr size_t kMaxWaiting = 128;
  /// An accepted connection, and when.
  struct Waiting {
    int fd;
    std::chrono::steady_clock::time_point at;
  };
  static constexpr size_t kKeepAliveMax = 100;
  static constexpr size_t kMaxPath = 1024;

  void accept_loop() {
    ::pthread_setname_np(::pthread_self(), "vmm-api-accept");
    for (;;) {
      pollfd p[2] = {{.fd = listen_fd_, .events = POLLIN, .revents = 0}, {.fd = stop_fd_, .events = POLLIN, .revents = 0}};
      if (::poll(p, 2, -1) < 0 && errno != EINTR) return;
      if (p[1].revents != 0) return;
      if (p[0].revents == 0) continue;
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      const Waiting accepted{.fd = fd, .at = std::chrono::steady_clock::now()};
      if (fd < 0) {
        // Out of file descriptors or memory: tried again a moment later, the listener kept.
        if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) std::this_thread::sleep_for(std::chrono::milliseconds(10));
        continue;
      }
      std::unique_lock lock(mutex_);
      if (lingering_ > waiting_.size()) {
        // A thread that served a connection before takes it: no thread made, no allocator arena
        // (glibc's, per thread) set up for it.
        waiting_.push_back(accepted);
        work_cv_.notify_one();
      } else if (running_ < kMaxConnections) {
        ++running_;
        if (!start_connection_thread([this, accepted] { work(accepted); })) {
          // No thread to be had (at a pids limit): served here, in turn.
          lock.unlock();
          work(accepted);
        }
      } else if (waiting_.size() < kMaxWaiting) {
        waiting_.push_back(accepted);
      } else {
        lock.unlock();
        refuse(fd);
      }
    }
  }

  static void refuse(int fd) {
    const std::string body = fault("too many connections: try again");
    const std::string r = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: " +
                          std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
    (void)!::send(fd, r.data(), r.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    ::close(fd);
  }

  /// Serves `fd`, then the connections that waited, or that come within kLinger: a client that
  /// makes one request after another (a pool's POST /clones, a harness's forks) gets a thread
  /// that is there already (~0.1-0.2 ms a request on this host: the thread, its stack and its
  /// allocator arena).
  void work(Waiting connection) {
    for (;;) {
      serve(connection);
      std::unique_lock lock(mutex_);
      if (waiting_.empty() && !stopping_) {
        ++lingering_;
        work_cv_.wait_for(lock, kLinger, [&] { return !waiting_.empty() || stopping_; });
        --lingering_;
      }
      if (waiting_.empty() || stopping_) {
        if (--running_ == 0) idle_.notify_all();
        return;
      }
      connection = waiting_.front();
      waiting_.pop_front();
    }
  }

  bool others_waiting() {
    std::lock_guard lock(mutex_);
    return !waiting_.empty();
  }

  void serve(Waiting connection) {
    const int fd = connection.fd;
    ConnectionStream stream(fd, stop_fd_, connection.at);
    for (size_t count = kKeepAliveMax; count > 0 && stream.next_request(); --count) {
      bool closed = false;
      t_close_connection = false;
      t_received = stream.began();
      // With connections waiting for a thread, a kept-alive one is closed after this request (its
      // client connects again, in turn): a few clients that keep theirs busy held every thread.
      const bool last = count == 1 || others_waiting();
      if (!svr_.serve_request(stream, last, closed) || closed || t_close_connection || last) break;
    }
    ::close(fd);
  }

  HttpHandler handler_;
  ConnectionServer svr_;
  int listen_fd_ = -1, stop_fd_ = -1;
  pthread_t acceptor_{};
  bool acceptor_started_ = false;
  std::mutex mutex_;
  std::condition_variable idle_;
  std::condition_variable work_cv_;  // a connection for a lingering thread, or the end
  size_t running_ = 0;       // connection threads; guarded by mutex_
  size_t lingering_ = 0;     // of which waiting for a connection; guarded by mutex_
  bool stopping_ = false;    // guarded by mutex_
  std::deque<Waiting> waiting_;  // accepted connections no thread serves yet; guarded by mutex_
  static constexpr auto kLinger = std::chrono::seconds(2);
};

HttpServer* serve(int listen_fd, HttpHandler handler, std::string& error) {
  try {
    auto server = std::make_unique<Server>(std::move(handler));
    server->start(listen_fd);
    return server.release();
  } catch (const std::system_error& e) {  // a thread that cannot be made
    ::close(listen_fd);
    error = thread_error("the API server's thread", e).message();
    return nullptr;
  } catch (const std::exception& e) {
    ::close(listen_fd);
    error = e.what();
    return nullptr;
  }
}

constexpr HttpPlugin kPlugin{.abi = kHttpAbi, .serve = serve};

}  // namespace
}  // namespace vmm::api

extern "C" __attribute__((visibility("default"))) const vmm::api::HttpPlugin* vmm_http_plugin() { return &vmm::api::kPlugin; }
