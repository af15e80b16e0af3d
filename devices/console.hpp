// The host side of the serial console: `--console stdio|file:PATH|none`. Output goes to stdout, a
// file or nowhere; in stdio mode a thread feeds stdin to the UART (raw mode when stdin is a TTY,
// restored on shutdown).
#pragma once

#include <termios.h>

#include <atomic>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>

#include "devices/serial.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/fd.hpp"

namespace vmm::devices {

struct ConsoleSpec {
  /// Fd: output to a descriptor the caller owns and keeps open (in-process users such as
  /// `vmm template bench`; not a command-line choice).
  enum class Kind { Stdio, File, None, Fd } kind = Kind::Stdio;
  std::string path;  ///< for File
  int fd = -1;       ///< for Fd
};

/// Parses "stdio", "none" or "file:PATH".
Result<ConsoleSpec> parse_console_spec(std::string_view text);

class Console {
 public:
  /// Opens the output (a file is created or truncated).
  static Result<std::unique_ptr<Console>> open(const ConsoleSpec& spec);
  ~Console();

  /// Writes guest output.
  void write(std::span<const uint8_t> bytes);
  /// Starts forwarding stdin to `serial` (stdio mode only): fails if its thread cannot be made.
  Result<> start_input(std::shared_ptr<Serial> serial);
  /// Stops the input thread and restores the terminal. Idempotent.
  void shutdown();

 private:
  Console() = default;
  void input_loop();

  ConsoleSpec spec_;
  int out_fd_ = -1;
  Fd file_;
  Fd wake_;  // eventfd that ends input_loop
  std::shared_ptr<Serial> serial_;
  std::thread input_;
  bool raw_ = false;
  termios saved_{};
};

}  // namespace vmm::devices
