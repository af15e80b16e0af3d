// Error type shared by every module: a short message that says what was wrong and where.
// Paths a guest or a file can reach return Result<T> (std::expected); exceptions are kept for the
// CLI boundary.
#pragma once

#include <expected>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

namespace vmm {

/// `text` with each control character (below 0x20, 0x7f, and the C1 ones in UTF-8: 0xc2 0x80..0x9f)
/// as \xNN, the rest as it is: a message that quotes what a user, a client or a file gave stays one
/// line and drives no terminal. (Inline: the HTTP plugin, which links nothing of vmm's, makes Errors
/// too.)
inline std::string one_line(std::string text) {
  // The length of the control character at `i` (0: none there).
  auto control = [&text](size_t i) -> size_t {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7f) return 1;
    if (c == 0xc2 && i + 1 < text.size() && static_cast<unsigned char>(text[i + 1]) >= 0x80 &&
        static_cast<unsigned char>(text[i + 1]) <= 0x9f) {
      return 2;
    }
    return 0;
  };
  size_t i = 0;
  while (i < text.size() && control(i) == 0) ++i;
  if (i == text.size()) return text;
  std::string out(text, 0, i);
  while (i < text.size()) {
    const size_t n = control(i);
    if (n == 0) {
      out += text[i++];
      continue;
    }
    for (size_t k = 0; k < n; ++k) out += fmt::format("\\x{:02x}", static_cast<unsigned char>(text[i + k]));
    i += n;
  }
  return out;
}

/// One error: a one-line, human-readable message (no trailing newline; control characters, which
/// quoted input may bring, are written \xNN).
class Error {
 public:
  explicit Error(std::string message) : message_(one_line(std::move(message))) {}
  const std::string& message() const { return message_; }

  /// Prefix context ("loading kernel foo: ") while keeping the cause.
  Error context(std::string_view what) const { return Error(fmt::format("{}: {}", what, message_)); }

 private:
  std::string message_;
};

template <typename T = void>
using Result = std::expected<T, Error>;

/// Builds an unexpected Error from a fmt format string: `return fail("bad magic {:#x}", m);`.
template <typename... Args>
std::unexpected<Error> fail(fmt::format_string<Args...> format, Args&&... args) {
  return std::unexpected(Error(fmt::format(format, std::forward<Args>(args)...)));
}

/// Errno text for messages.
std::string errno_text(int err);

/// Untrusted bytes (from a file or a guest) made fit for a one-line message: printable ASCII stays,
/// everything else (and ' and \\) becomes \\xNN.
std::string printable(std::string_view bytes);
/// Where the first control character (below 0x20, 0x7f, or a C1 one in UTF-8) of untrusted text is: a
/// name from a file that would split a message's line or drive a terminal is refused by its parser.
std::optional<size_t> control_char(std::string_view text);

}  // namespace vmm

template <>
struct fmt::formatter<vmm::Error> : fmt::formatter<std::string_view> {
  auto format(const vmm::Error& e, format_context& ctx) const {
    return fmt::formatter<std::string_view>::format(e.message(), ctx);
  }
};
