// vmm-http.so: the control API's transport over cpp-httplib (see http.hpp for why a plugin).
#include <httplib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "vmm/api/http.hpp"
#include "vmm/base/thread.hpp"

namespace vmm::api {
namespace {

std::string fault(const std::string& message) { return nlohmann::json{{"fault_message", message}}.dump(); }

/// httplib's task queue, one thread per connection while there are connections (up to
/// kMaxConnections, the rest wait in turn) and none when idle: an idle VM keeps no API threads but
/// the listener, and a client that stalls holds only its own thread until the idle timeout.
class ConnectionThreads final : public httplib::TaskQueue {
 public:
  void enqueue(std::function<void()> fn) override {
    std::unique_lock lock(mutex_);
    jobs_.push_back(std::move(fn));
    if (running_ >= kMaxConnections) return;
    ++running_;
    try {
      std::thread([this] { work(); }).detach();
    } catch (const std::system_error&) {
      // No thread to be had (at a pids limit): the connections are served on the accept loop's
      // thread, in turn, rather than the exception ending the process there.
      lock.unlock();
      work();
    }
  }
  void shutdown() override {
    std::unique_lock lock(mutex_);
    done_.wait(lock, [&] { return running_ == 0; });
  }

 private:
  void work() {
    std::unique_lock lock(mutex_);
    while (!jobs_.empty()) {
      auto fn = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      fn();
      lock.lock();
    }
    if (--running_ == 0) done_.notify_all();
  }
  std::mutex mutex_;
  std::condition_variable done_;
  std::deque<std::function<void()>> jobs_;
  size_t running_ = 0;
};

/// httplib's server on a socket it did not make: svr_sock_ is what its accept loop
/// (listen_after_bind) uses and stop() closes.
class AdoptingServer final : public httplib::Server {
 public:
  void adopt(int fd) { svr_sock_ = fd; }
};

class Server final : public HttpServer {
 public:
  explicit Server(HttpHandler handler) : handler_(std::move(handler)) {
    svr_.new_task_queue = [] { return new ConnectionThreads; };
    svr_.set_address_family(AF_UNIX);
    svr_.set_read_timeout(kIdleTimeoutS, 0);
    svr_.set_write_timeout(kIdleTimeoutS, 0);
    svr_.set_keep_alive_timeout(kIdleTimeoutS);
    svr_.set_payload_max_length(kMaxBody);
    auto dispatch = [this](const httplib::Request& req, httplib::Response& res) {
      const HttpResponse r = handler_(HttpRequest{.method = req.method, .path = req.path, .body = req.body});
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
      auto refuse = [&](int status, const std::string& why) {
        res.status = status;
        res.set_header("Connection", "close");
        res.set_content(fault(why), "application/json");
        return httplib::Server::HandlerResponse::Handled;
      };
      if (req.has_header("Transfer-Encoding")) return refuse(411, "send the body with a Content-Length (no Transfer-Encoding)");
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
        return httplib::Server::HandlerResponse::Unhandled;
      }
      return refuse(400, "malformed request: Content-Length");
    });
    // Errors httplib answers itself (a body over the limit, a malformed request line) get a JSON
    // body too; the handler's own errors already have one.
    svr_.set_error_handler([](const httplib::Request&, httplib::Response& res) {
      if (!res.body.empty()) return;
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

  /// Serves on `fd`, a listening socket (listen_unix made it): httplib's accept loop runs on it as
  /// on a socket of its own (listen_after_bind uses svr_sock_, which it then owns and closes).
  void start(int fd) {
    svr_.adopt(fd);
    listener_ = std::thread([this] {
      svr_.listen_after_bind();
      listen_ended_ = true;
    });
    // httplib's stop() does nothing until the listener has marked itself running: a server
    // destroyed before that (a VM that ends right after it started) would wait forever for a
    // listener blocked in accept(). Return only once stop() can reach it.
    while (!svr_.is_running() && !listen_ended_) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }

  ~Server() override {
    svr_.stop();
    if (listener_.joinable()) listener_.join();
  }

 private:
  HttpHandler handler_;
  AdoptingServer svr_;
  std::thread listener_;
  std::atomic<bool> listen_ended_{false};
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

bool call(const std::string& path, const HttpRequest& request, double timeout_s, HttpResponse& response, std::string& error) {
  httplib::Client client(path, 80);
  client.set_address_family(AF_UNIX);
  const auto t = std::chrono::duration<double>(timeout_s);
  client.set_connection_timeout(std::chrono::duration_cast<std::chrono::microseconds>(t));
  client.set_read_timeout(std::chrono::duration_cast<std::chrono::microseconds>(t));
  client.set_write_timeout(std::chrono::duration_cast<std::chrono::microseconds>(t));
  const char* type = "application/json";
  const std::string& m = request.method;
  if (m != "GET" && m != "PUT" && m != "POST" && m != "PATCH" && m != "DELETE") {
    error = "unsupported method " + m;
    return false;
  }
  httplib::Result r = m == "GET"     ? client.Get(request.path)
                      : m == "PUT"   ? client.Put(request.path, request.body, type)
                      : m == "POST"  ? client.Post(request.path, request.body, type)
                      : m == "PATCH" ? client.Patch(request.path, request.body, type)
                                     : client.Delete(request.path, request.body, type);
  if (!r) {
    error = path + ": " + httplib::to_string(r.error());
    if (r.error() == httplib::Error::Connection) error += std::string(" (") + std::strerror(errno) + ")";
    return false;
  }
  response.status = r->status;
  response.body = r->body;
  response.allow = r->get_header_value("Allow");
  return true;
}

constexpr HttpPlugin kPlugin{.abi = kHttpAbi, .serve = serve, .call = call};

}  // namespace
}  // namespace vmm::api

extern "C" __attribute__((visibility("default"))) const vmm::api::HttpPlugin* vmm_http_plugin() { return &vmm::api::kPlugin; }
