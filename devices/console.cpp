#include "devices/console.hpp"

#include <pthread.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>

#include "vmm/base/process.hpp"
#include "vmm/base/thread.hpp"

namespace vmm::devices {

Result<ConsoleSpec> parse_console_spec(std::string_view text) {
  if (text == "stdio") return ConsoleSpec{.kind = ConsoleSpec::Kind::Stdio, .path = {}};
  if (text == "none") return ConsoleSpec{.kind = ConsoleSpec::Kind::None, .path = {}};
  if (text.starts_with("file:")) {
    if (text.size() == 5) return fail("--console file: needs a path (file:PATH)");
    return ConsoleSpec{.kind = ConsoleSpec::Kind::File, .path = std::string(text.substr(5))};
  }
  return fail("--console {}: expected stdio, none or file:PATH", text);
}

Result<std::unique_ptr<Console>> Console::open(const ConsoleSpec& spec) {
  std::unique_ptr<Console> c(new Console());
  c->spec_ = spec;
  if (spec.kind == ConsoleSpec::Kind::Stdio) {
    c->out_fd_ = STDOUT_FILENO;
  } else if (spec.kind == ConsoleSpec::Kind::File) {
    // A FIFO is waited for until someone reads it, as a plain open() would, but on O_NONBLOCK
    // opens (ENXIO while there is no reader) that SIGINT and SIGTERM end: they are blocked in
    // this process, so a blocking open() waited for ever, out of reach of all but SIGKILL.
    for (;;) {
      c->file_ = Fd(::open(spec.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0644));
      if (c->file_ || errno != ENXIO) break;
      if (const int sig = pending_stop_signal()) {
        return fail("--console file:{}: stopped by signal {} while waiting for the FIFO's reader", spec.path, sig);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!c->file_) return fail("--console file:{}: {}", spec.path, errno_text(errno));
    if (const int fl = ::fcntl(c->file_.get(), F_GETFL); fl < 0 || ::fcntl(c->file_.get(), F_SETFL, fl & ~O_NONBLOCK) != 0) {
      return fail("--console file:{}: fcntl: {}", spec.path, errno_text(errno));
    }
    c->out_fd_ = c->file_.get();
  } else if (spec.kind == ConsoleSpec::Kind::Fd) {
    c->out_fd_ = spec.fd;
  }
  return c;
}

Console::~Console() { shutdown(); }

void Console::write(std::span<const uint8_t> bytes) {
  if (out_fd_ < 0) return;
  while (!bytes.empty()) {
    const ssize_t n = ::write(out_fd_, bytes.data(), bytes.size());
    // Output gone (a closed pipe: EPIPE, SIGPIPE being ignored), or a write blocked on a reader
    // that stopped reading and interrupted by a kick (EINTR: the vCPU is asked to pause or stop;
    // retrying would block it there for good, with the serial port's lock held): dropped, and
    // the guest keeps running.
    if (n <= 0) return;
    bytes = bytes.subspan(static_cast<size_t>(n));
  }
}

Result<> Console::start_input(std::shared_ptr<Serial> serial) {
  if (spec_.kind != ConsoleSpec::Kind::Stdio) return {};
  serial_ = std::move(serial);
  wake_ = Fd(::eventfd(0, EFD_CLOEXEC));
  if (::isatty(STDIN_FILENO) && ::tcgetattr(STDIN_FILENO, &saved_) == 0) {
    termios raw = saved_;
    ::cfmakeraw(&raw);
    raw.c_oflag = saved_.c_oflag;  // keep output post-processing (\n → \r\n)
    if (::tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0) raw_ = true;
  }
  auto t = start_thread("the console's input thread", [this] { input_loop(); });
  if (!t) {
    shutdown();  // the terminal as it was
    return std::unexpected(t.error());
  }
  input_ = std::move(*t);
  return {};
}

void Console::input_loop() {
  ::pthread_setname_np(::pthread_self(), "vmm-console");
  uint8_t buf[256];
  for (;;) {
    pollfd fds[2] = {{.fd = STDIN_FILENO, .events = POLLIN, .revents = 0}, {.fd = wake_.get(), .events = POLLIN, .revents = 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents) return;
    const ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) return;  // EOF: no more input
    std::span<const uint8_t> rest(buf, static_cast<size_t>(n));
    while (!rest.empty()) {
      rest = rest.subspan(serial_->enqueue_input(rest));
      if (rest.empty()) break;
      // FIFO full: wait for the guest to drain it, or for shutdown.
      pollfd w{.fd = wake_.get(), .events = POLLIN, .revents = 0};
      if (::poll(&w, 1, 2) > 0) return;
    }
  }
}

void Console::shutdown() {
  if (input_.joinable()) {
    const uint64_t one = 1;
    (void)!::write(wake_.get(), &one, sizeof one);
    input_.join();
  }
  if (raw_) {
    ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
    raw_ = false;
  }
}

}  // namespace vmm::devices
