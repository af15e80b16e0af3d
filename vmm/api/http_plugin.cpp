// vmm-http.so: the control API's transport over cpp-httplib (see http.hpp for why a plugin).
#include <httplib.h>
#include <sys/stat.h>
#include <sys/un.h>
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

namespace vmm::api {
namespace {

std::string fault(const std::string& message) { return nlohmann::json{{"fault_message", message}}.dump(); }

/// httplib's task queue, one thread per connection while there are connections (up to
/// kMaxConnections, the rest wait in turn) and none when idle: an idle VM keeps no API threads but
/// the listener, and a client that stalls holds only its own thread until the idle timeout.
class ConnectionThreads final : public httplib::TaskQueue {
 public:
  void enqueue(std::function<void()> fn) override {
    std::lock_guard lock(mutex_);
    jobs_.push_back(std::move(fn));
    if (running_ < kMaxConnections) {
      ++running_;
      std::thread([this] { work(); }).detach();
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

class Server final : public HttpServer {
 public:
  explicit Server(HttpHandler handler) : handler_(std::move(handler)) {
    svr_.new_task_queue = [] { return new ConnectionThreads; };
    svr_.set_address_family(AF_UNIX);
    svr_.set_read_timeout(kIdleTimeoutS, 0);
    svr_.set_write_timeout(kIdleTimeoutS, 0);
    svr_.set_keep_alive_timeout(kIdleTimeoutS);
    svr_.set_payload_max_length(kMaxBody);
    svr_.set_socket_options([this](int fd) { listen_fd_ = fd; });
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

  bool start(const std::string& path, std::string& error) {
    if (path.size() + 4 >= sizeof(sockaddr_un::sun_path)) {
      error = path + ": too long for a Unix socket path (" + std::to_string(sizeof(sockaddr_un::sun_path) - 5) + " bytes at most)";
      return false;
    }
    // Something at the path: only a socket nobody listens on (left by a VM that was killed) is replaced.
    if (struct stat st {}; ::lstat(path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) {
        error = path + ": exists and is not a socket";
        return false;
      }
      const int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
      const bool live = probe >= 0 && ::connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
      if (probe >= 0) ::close(probe);
      if (live) {
        error = path + ": another server listens there";
        return false;
      }
    }
    // Bound under a temporary name, made 0600, then renamed into place: the socket never appears
    // at its path with the umask's mode (the directory admits its owner only anyway).
    const std::string tmp = path + ".tmp";
    ::unlink(tmp.c_str());
    if (!svr_.bind_to_port(tmp, 80)) {
      error = path + ": cannot listen: " + std::strerror(errno);
      return false;
    }
    // httplib listens with a backlog of 5: the 6th client connecting at once would be refused
    // (EAGAIN on a Unix socket). Listening again only raises the backlog.
    if (::listen(listen_fd_, SOMAXCONN) != 0) {
      error = path + ": listen: " + std::strerror(errno);
      return false;
    }
    if (::chmod(tmp.c_str(), 0600) != 0 || ::rename(tmp.c_str(), path.c_str()) != 0) {
      error = path + ": " + std::strerror(errno);
      ::unlink(tmp.c_str());
      return false;
    }
    path_ = path;
    listener_ = std::thread([this] {
      svr_.listen_after_bind();
      listen_ended_ = true;
    });
    // httplib's stop() does nothing until the listener has marked itself running: a server
    // destroyed before that (a VM that ends right after it started) would wait forever for a
    // listener blocked in accept(). Return only once stop() can reach it.
    while (!svr_.is_running() && !listen_ended_) std::this_thread::sleep_for(std::chrono::microseconds(50));
    return true;
  }

  ~Server() override {
    svr_.stop();
    if (listener_.joinable()) listener_.join();
    if (!path_.empty()) ::unlink(path_.c_str());
  }

 private:
  HttpHandler handler_;
  httplib::Server svr_;
  std::thread listener_;
  std::string path_;
  int listen_fd_ = -1;
  std::atomic<bool> listen_ended_{false};
};

HttpServer* serve(const std::string& path, HttpHandler handler, std::string& error) {
  auto server = std::make_unique<Server>(std::move(handler));
  if (!server->start(path, error)) return nullptr;
  return server.release();
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
