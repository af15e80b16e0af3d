#include "vmm/api/http.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <string_view>
#include <thread>
#include <nlohmann/json.hpp>

#include "vmm/api/http_client.hpp"

namespace vmm::api {

namespace fs = std::filesystem;

Result<const HttpPlugin*> http_plugin() {
  static std::once_flag once;
  static Result<const HttpPlugin*> loaded = fail("not loaded");
  std::call_once(once, [] {
    // $VMM_HTTP_PLUGIN, or vmm-http.so beside the running binary.
    fs::path path;
    if (const char* env = std::getenv("VMM_HTTP_PLUGIN"); env && *env) {
      path = env;
    } else {
      std::error_code ec;
      const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
      if (ec) {
        loaded = fail("/proc/self/exe: {}", ec.message());
        return;
      }
      path = exe.parent_path() / "vmm-http.so";
    }
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      loaded = fail("the API's HTTP plugin: {}", ::dlerror());
      return;
    }
    auto entry = reinterpret_cast<const HttpPlugin* (*)()>(::dlsym(handle, "vmm_http_plugin"));
    const HttpPlugin* plugin = entry ? entry() : nullptr;
    if (!plugin || plugin->abi != kHttpAbi) {
      loaded = fail("{}: not a vmm HTTP plugin of this version", path.string());
      return;
    }
    loaded = plugin;  // never unloaded: its threads may outlive any one caller
  });
  return loaded;
}

namespace {
sockaddr_un unix_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

/// A socket connected to the server at `path` (which fits sockaddr_un: the callers check), or
/// errno's reason. Non-blocking: a blocking connect to a server whose backlog is full (a VM that
/// is stopped, or swamped) waits for ever; this one tries again for 2 s, then gives up.
Result<Fd> connect_unix(const std::string& path) {
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return fail("socket: {}", errno_text(errno));
  const sockaddr_un addr = unix_address(path);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    if (errno == EINTR) continue;
    if (errno != EAGAIN) return fail("{}: {}", path, errno_text(errno));
    if (std::chrono::steady_clock::now() >= deadline) {
      auto e = fail("{}: its server accepts no connection (its backlog is full)", path);
      errno = EAGAIN;  // for the callers: someone does listen there
      return e;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return fd;
}
}  // namespace

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77  // Linux 6.5; Debian 12's headers predate it
#endif

Result<Fd> listener_process(const std::string& path) {
  if (path.size() >= sizeof(sockaddr_un::sun_path)) return fail("{}: too long for a Unix socket path", path);
  auto s = connect_unix(path);
  if (!s) return std::unexpected(s.error());
  int pidfd = -1;
  socklen_t len = sizeof pidfd;
  if (::getsockopt(s->get(), SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) == 0 && pidfd >= 0) return Fd(pidfd);
  if (errno == ESRCH) return Fd();
  ucred cred{};
  len = sizeof cred;
  if (::getsockopt(s->get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return fail("SO_PEERCRED: {}", errno_text(errno));
  if (cred.pid <= 0) return fail("{}: its server runs in a PID namespace this one cannot see", path);
  const int fd = static_cast<int>(::syscall(SYS_pidfd_open, cred.pid, 0));
  if (fd < 0 && errno == ESRCH) return Fd();
  if (fd < 0) return fail("pidfd_open({}): {}", cred.pid, errno_text(errno));
  return Fd(fd);
}

bool someone_listens(const std::string& path) {
  // A server too busy (or stopped) to accept still listens there.
  return path.size() < sizeof(sockaddr_un::sun_path) && (connect_unix(path).has_value() || errno == EAGAIN);
}

namespace {
/// listen_unix binds first in a directory of its own beside the socket: DIR/.sXXXXXX/s.
constexpr std::string_view kBindDir = "/.sXXXXXX";
/// How long listen_unix waits for the lock of the socket's directory (see move_into_place).
constexpr auto kDirLockWait = std::chrono::seconds(5);
std::string socket_dir(const std::string& path) {
  const std::string dir = fs::path(path).parent_path().string();
  return dir.empty() ? "." : dir;
}
}  // namespace

Result<> check_socket_path(const std::string& path) {
  constexpr size_t kMax = sizeof(sockaddr_un::sun_path) - 1;
  constexpr size_t kMaxDir = kMax - kBindDir.size() - 2;
  if (path.size() > kMax || socket_dir(path).size() > kMaxDir) {
    return fail("{}: too long for a Unix socket path ({} bytes at most, its directory's {})", path, kMax, kMaxDir);
  }
  return {};
}

namespace {
/// A socket bound at `at` and listening, mode 0600 (`path`, where it is going, names it in errors;
/// nothing is left at `at` on failure).
Result<Fd> bind_and_listen(const std::string& at, const std::string& path) {
  auto failed = [&](const char* what) {
    const int err = errno;
    ::unlink(at.c_str());
    return fail("{}: cannot listen: {}{}", path, what, errno_text(err));
  };
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return failed("socket: ");
  const sockaddr_un addr = unix_address(at);
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) return failed("");
  // A backlog of SOMAXCONN: 100 clients connecting at once are all served in turn (with httplib's
  // own 5, the 6th was refused with EAGAIN).
  if (::listen(fd.get(), SOMAXCONN) != 0 || ::chmod(at.c_str(), 0600) != 0) return failed("");
  return fd;
}
}  // namespace

Result<Fd> listen_unix_in_private_dir(const std::string& path) {
  if (auto r = check_socket_path(path); !r) return std::unexpected(r.error());
  return bind_and_listen(path, path);
}

Result<Fd> listen_unix(const std::string& path, std::pair<uint64_t, uint64_t>* bound) {
  if (auto r = check_socket_path(path); !r) return std::unexpected(r.error());
  // Something at the path: only a socket nobody listens on (left by a VM that was killed) is
  // replaced. (Checked again below, where it counts; this is the quick refusal.)
  if (struct stat st {}; ::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return fail("{}: exists and is not a socket", path);
    if (someone_listens(path)) return fail("{}: another server listens there", path);
  }
  // Bound in a directory of its own (mkdtemp: a new name, mode 0700), made 0600 there, then
  // renamed into place: nobody else can reach it while it has the umask's mode, nor take its
  // temporary name first (a fixed one in a shared directory, /tmp, could be), and two VMs starting
  // at once do not share one.
  const std::string parent = socket_dir(path);
  std::string dir = parent + std::string(kBindDir);
  if (::mkdtemp(dir.data()) == nullptr) return fail("{}: cannot listen: {}: {}", path, dir, errno_text(errno));
  const std::string tmp = dir + "/s";
  auto fd = bind_and_listen(tmp, path);
  struct stat made {};
  if (fd && ::lstat(tmp.c_str(), &made) != 0) fd = fail("{}: cannot listen: {}: {}", path, tmp, errno_text(errno));
  // Into place, what is there looked at again and the rename made under a lock of the directory
  // that every vmm takes for it: two VMs given one --api-socket over a stale socket both found it
  // stale above, and the second's rename replaced the first's live socket (which then ran
  // unreachable, and removed the second's at its end). Without the lock's directory (gone, not
  // ours to read), renameat2's RENAME_NOREPLACE alone; so too when the lock is not had within
  // kDirLockWait: a vmm holds it for a rename, but anyone who can read the directory (/tmp) can
  // take it, and held for ever it kept the VM from its API, and its process from ending.
  auto move_into_place = [&] {
    Fd pd(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    const auto deadline = std::chrono::steady_clock::now() + kDirLockWait;
    while (pd && ::flock(pd.get(), LOCK_EX | LOCK_NB) != 0) {
      if ((errno != EWOULDBLOCK && errno != EINTR) || std::chrono::steady_clock::now() >= deadline) {
        pd.reset();
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode) || someone_listens(path) || !pd) {
        errno = EEXIST;
        return -1;
      }
      return ::rename(tmp.c_str(), path.c_str());  // a stale socket, no one else's to keep
    }
    if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE) == 0) return 0;
    if (errno == EINVAL && pd) return ::rename(tmp.c_str(), path.c_str());  // (a file system without it; under the lock)
    return -1;
  };
  if (fd && move_into_place() != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    ::rmdir(dir.c_str());
    if (err == EEXIST) return fail("{}: another server listens there", path);
    return fail("{}: cannot listen: {}", path, errno_text(err));
  }
  ::rmdir(dir.c_str());
  // The inode renamed into place: the one this server's end removes, if it is still there then
  // (an lstat of the path now could already see another's).
  if (fd && bound) *bound = {static_cast<uint64_t>(made.st_dev), static_cast<uint64_t>(made.st_ino)};
  return fd;
}

Result<std::unique_ptr<HttpServer>> serve(Fd listener, HttpHandler handler) {
  auto plugin = http_plugin();
  if (!plugin) return std::unexpected(plugin.error());
  // No exception may leave a handler: vmm and the plugin each have their own C++ runtime (vmm's is
  // linked in), and one unwinding from vmm's frames into the plugin's aborts the process. Caught
  // here, on vmm's side, whatever the handler forgot.
  HttpHandler guarded = [handler = std::move(handler)](const HttpRequest& request) noexcept -> HttpResponse {
    std::string what = "internal error";
    try {
      return handler(request);
    } catch (const std::exception& e) {
      what = fmt::format("internal error: {}", e.what());
    } catch (...) {
    }
    const nlohmann::json body = {{"fault_message", what}};
    return HttpResponse{.status = 500, .body = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), .allow = {}};
  };
  std::string error;
  HttpServer* server = (*plugin)->serve(listener.release(), std::move(guarded), error);
  if (!server) return fail("{}", error);
  return std::unique_ptr<HttpServer>(server);
}

Result<std::unique_ptr<HttpServer>> serve(const std::string& path, HttpHandler handler) {
  auto fd = listen_unix(path);
  if (!fd) return std::unexpected(fd.error());
  return serve(std::move(*fd), std::move(handler));
}

Result<HttpResponse> call(const std::string& path, const HttpRequest& request, double timeout_s) {
  // No plugin: a few system calls and parse_response() (http_client.hpp says why not httplib's).
  const auto deadline = std::chrono::steady_clock::now() +
                        std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(timeout_s));
  auto timed_out = [&](std::string_view doing) { return fail("{}: no answer within {} s ({})", path, timeout_s, doing); };
  /// Until `events` on `fd` or the deadline.
  auto ready = [&](int fd, short events) {
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
      if (left <= 0) return false;
      pollfd p{.fd = fd, .events = events, .revents = 0};
      const int n = ::poll(&p, 1, static_cast<int>(std::min<long>(left, 60000)));
      if (n < 0 && errno == EINTR) continue;
      if (n != 0) return true;  // ready, or an error the next call says
    }
  };
  if (path.size() >= sizeof(sockaddr_un::sun_path)) return fail("{}: too long for a Unix socket path", path);
  auto fd = connect_unix(path);
  if (!fd) return std::unexpected(fd.error());
  const std::string out = request_text(request);
  for (size_t off = 0; off < out.size();) {
    if (!ready(fd->get(), POLLOUT)) return timed_out("sending the request");
    const ssize_t n = ::send(fd->get(), out.data() + off, out.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) break;  // it may have answered before it closed
    if (n < 0) return fail("{}: {}", path, errno_text(errno));
    off += static_cast<size_t>(n);
  }
  std::string in;
  char buf[16384];
  for (;;) {
    if (!ready(fd->get(), POLLIN)) return timed_out("reading its answer");
    const ssize_t n = ::recv(fd->get(), buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    const bool closed = n == 0 || (n < 0 && errno == ECONNRESET);
    if (n < 0 && !closed) return fail("{}: {}", path, errno_text(errno));
    if (n > 0) in.append(buf, static_cast<size_t>(n));
    auto r = parse_response(in, closed);
    if (!r) return fail("{}: {}", path, r.error().message());
    if (*r) return std::move(**r);
  }
}

}  // namespace vmm::api
