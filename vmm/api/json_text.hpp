// JSON text that never throws. nlohmann's dump() throws json::type_error on a string that is not
// valid UTF-8 (a path, a name or a command line of other bytes): uncaught, that ended vmm
// (std::terminate) half-way through starting a VM or writing a template.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "vmm/base/error.hpp"

namespace vmm::api {

/// The JSON text of `j` (`indent` as dump's), or an error naming `what` when a string in it is not
/// valid UTF-8: for text that is read back and must mean what it said (a record's paths).
inline Result<std::string> json_text(const nlohmann::json& j, std::string_view what, int indent = -1) {
  try {
    return j.dump(indent);
  } catch (const nlohmann::json::type_error&) {
    return fail("{}: holds text that is not valid UTF-8 (a path or name of other bytes): not supported", what);
  }
}

/// The JSON text of `j`, bytes that are not UTF-8 shown as U+FFFD: for what is only read by people
/// or is informational (a listing, an answer's message, a template's kernel command line).
inline std::string json_display(const nlohmann::json& j, int indent = -1) {
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace vmm::api
