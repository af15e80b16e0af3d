#include "vmm/base/error.hpp"

#include <cstring>

namespace vmm {

std::string errno_text(int err) {
  char buf[128];
  // GNU strerror_r returns the message pointer (possibly not buf).
  return ::strerror_r(err, buf, sizeof buf);
}

std::optional<size_t> control_char(std::string_view text) {
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7f) return i;
    // A C1 control in UTF-8 (U+0080..U+009F: 0xc2 0x80..0x9f), which some terminals obey (U+009B
    // is CSI, an escape sequence's start).
    if (c == 0xc2 && i + 1 < text.size() && static_cast<unsigned char>(text[i + 1]) >= 0x80 &&
        static_cast<unsigned char>(text[i + 1]) <= 0x9f) {
      return i;
    }
  }
  return std::nullopt;
}

std::string printable(std::string_view bytes) {
  std::string out;
  for (const char c : bytes) {
    if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') {
      out += c;
    } else {
      out += fmt::format("\\x{:02x}", static_cast<uint8_t>(c));
    }
  }
  return out;
}

}  // namespace vmm
