#include "vmm/device_spec.hpp"

#include <cctype>
#include <map>

namespace vmm {

namespace {

/// Splits "k=v,k=v" into a map; a key may appear once.
Result<std::map<std::string, std::string, std::less<>>> key_values(std::string_view option, std::string_view text) {
  std::map<std::string, std::string, std::less<>> out;
  if (text.empty()) return fail("{}: empty value (expected key=value[,key=value...])", option);
  size_t start = 0;
  while (start <= text.size()) {
    const size_t end = std::min(text.find(',', start), text.size());
    const std::string_view item = text.substr(start, end - start);
    const size_t eq = item.find('=');
    if (eq == std::string_view::npos || eq == 0) return fail("{} {}: '{}' is not key=value", option, text, item);
    const std::string key(item.substr(0, eq));
    if (item.size() == eq + 1) return fail("{} {}: {} has an empty value", option, text, key);
    if (!out.emplace(key, std::string(item.substr(eq + 1))).second) {
      return fail("{} {}: {} is given twice", option, text, key);
    }
    start = end + 1;
  }
  return out;
}

Result<bool> on_off(std::string_view option, std::string_view key, std::string_view value) {
  if (value == "on" || value == "true" || value == "1") return true;
  if (value == "off" || value == "false" || value == "0") return false;
  return fail("{}: {}={}: expected on or off", option, key, value);
}

}  // namespace

Result<DiskSpec> parse_disk_spec(std::string_view text) {
  auto kv = key_values("--disk", text);
  if (!kv) return std::unexpected(kv.error());
  DiskSpec d;
  for (const auto& [key, value] : *kv) {
    if (key == "path") {
      d.path = value;
    } else if (key == "readonly") {
      auto b = on_off("--disk", key, value);
      if (!b) return std::unexpected(b.error());
      d.read_only = *b;
    } else if (key == "id") {
      if (value.size() > 20) return fail("--disk {}: id '{}' is longer than 20 bytes", text, value);
      d.id = value;
    } else if (key == "format") {
      if (value != "raw" && value != "qcow2") return fail("--disk {}: format '{}': expected raw or qcow2", text, value);
      d.format = value;
    } else {
      return fail("--disk {}: unknown key '{}' (expected path, readonly, id, format)", text, key);
    }
  }
  if (d.path.empty()) return fail("--disk {}: path=FILE is required", text);
  return d;
}

Result<NetSpec> parse_net_spec(std::string_view text) {
  auto kv = key_values("--net", text);
  if (!kv) return std::unexpected(kv.error());
  NetSpec n;
  for (const auto& [key, value] : *kv) {
    if (key == "tap") {
      n.tap = value;
    } else if (key == "mac") {
      n.mac = value;
    } else if (key == "bridge") {
      n.bridge = value;
    } else if (key == "netns") {
      n.netns = value;
    } else {
      return fail("--net {}: unknown key '{}' (expected tap, mac, bridge, netns)", text, key);
    }
  }
  if (n.tap.empty()) return fail("--net {}: tap=NAME is required", text);
  if (!n.bridge.empty() && !n.netns.empty()) {
    return fail("--net {}: bridge= and netns= exclude each other (a namespace's TAP is reached through its veth pair)", text);
  }
  // A bridged TAP takes the guest's MAC with fe: as its first byte (devices::attach_tap): a guest
  // with such a MAC would share its TAP's address, which the bridge keeps for itself (the guest's
  // unicast replies would end at the host), or another guest's TAP's.
  auto lower = [](char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); };
  if (!n.bridge.empty() && n.mac.size() >= 2 && lower(n.mac[0]) == 'f' && lower(n.mac[1]) == 'e') {
    return fail("--net {}: a MAC starting fe: is the one a bridged TAP takes itself: give the guest another", text);
  }
  // The names as they will be (the longest expansion is checked when it is known).
  if (auto e = expand_net(n, "n", 1); !e) return fail("--net {}: {}", text, e.error().message());
  return n;
}

std::string expand_pattern(std::string pattern, const std::string& name, unsigned index) {
  for (auto [key, value] : {std::pair<std::string, std::string>{"{name}", name}, {"{i}", std::to_string(index)}}) {
    for (size_t at; (at = pattern.find(key)) != std::string::npos;) pattern.replace(at, key.size(), value);
  }
  return pattern;
}

Result<NetSpec> expand_net(const NetSpec& spec, const std::string& name, unsigned index) {
  NetSpec n = spec;
  for (auto [what, field] : {std::pair<const char*, std::string*>{"tap", &n.tap}, {"bridge", &n.bridge}, {"netns", &n.netns}}) {
    *field = expand_pattern(*field, name, index);
    if (field->size() > 15) return fail("{}={}: an interface or namespace name is at most 15 bytes", what, *field);
    for (char c : *field) {
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') {
        return fail("{}={}: use letters, digits, '-', '_' and '.'", what, *field);
      }
    }
    // Not starting with '.': vmm's own files beside a namespace's record start so (a namespace
    // named ".outside.lock" locked its own allocation lock, and every VM after it waited forever).
    if (!field->empty() && field->front() == '.') return fail("{}={}: a name cannot start with '.'", what, *field);
  }
  return n;
}

Result<> check_net_per_vm(const NetSpec& spec) {
  const bool in_netns = !spec.netns.empty();
  const std::string& pattern = in_netns ? spec.netns : spec.tap;
  if (expand_pattern(pattern, "a", 1) == expand_pattern(pattern, "b", 2)) {
    return fail("{}={}: every VM would make the same {}: put {{i}} or {{name}} in it", in_netns ? "netns" : "tap", pattern,
                in_netns ? "network namespace" : "TAP interface");
  }
  return {};
}

}  // namespace vmm
