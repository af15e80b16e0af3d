#include "vmm/base/size_parse.hpp"

#include <cctype>
#include <charconv>
#include <string>

namespace vmm {

Result<uint64_t> parse_size(std::string_view text) {
  uint64_t value = 0;
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(begin, end, value);
  if (ec == std::errc::result_out_of_range) return fail("size '{}' is too large", text);
  if (ec != std::errc() || ptr == begin) return fail("size '{}' is not a number with an optional K/M/G/T unit", text);
  std::string unit(ptr, end);
  for (auto& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  unsigned shift = 0;
  if (unit.empty() || unit == "m" || unit == "mib" || unit == "mb") {
    shift = 20;
  } else if (unit == "k" || unit == "kib" || unit == "kb") {
    shift = 10;
  } else if (unit == "g" || unit == "gib" || unit == "gb") {
    shift = 30;
  } else if (unit == "t" || unit == "tib" || unit == "tb") {
    shift = 40;
  } else if (unit == "b") {
    shift = 0;
  } else {
    return fail("size '{}' has an unknown unit '{}' (use K, M, G or T)", text, unit);
  }
  if (shift && value > (UINT64_MAX >> shift)) return fail("size '{}' is too large", text);
  return value << shift;
}

}  // namespace vmm
