// libFuzzer target for the snapshot state file (clone/state_file.hpp). Built by clang only
// (tests/fuzz/fuzz.cmake, scripts/fuzz-state.sh) with -fsanitize=fuzzer,address,undefined. Must never
// crash, hang or leak.
//
// Each input is parsed twice: as it is (the header, length and checksum checks), and with its total
// length field and trailing CRC-32C made consistent with the input (a random mutation almost never
// keeps the checksum right, so without this pass nothing behind the checksum would be reached).
// Every parse that succeeds goes to fuzz_sections() and must round-trip: encode, parse again, the
// same StateFile and the same bytes. A parse that fails must say so in one line naming the file.
//
// VMM_STATE_FUZZ_MAKE_SEEDS=DIR writes valid state files of a few shapes to DIR and exits.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include "clone/state_file.hpp"
#include "vmm/base/crc32c.hpp"

namespace {

namespace fs = std::filesystem;
using vmm::clone::StateFile;

constexpr const char* kFile = "fuzz.state";

[[noreturn]] void die(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "state_fuzz: %s%s%s\n", what, detail.empty() ? "" : ": ", detail.c_str());
  std::abort();
}

bool same(const StateFile& a, const StateFile& b) {
  if (a.major != b.major || a.minor != b.minor || a.sections.size() != b.sections.size()) return false;
  for (size_t i = 0; i < a.sections.size(); ++i) {
    if (a.sections[i].id != b.sections[i].id || a.sections[i].data != b.sections[i].data) return false;
  }
  return true;
}

/// Called with every state file that parsed. Device-state decoders get called here: each section a
/// device or vCPU restores from (vcpuN, serial0, virtio-blk.*, ...) goes to its decoder, which must
/// refuse bad bytes with an error, never crash. For now: the lookups agree with the section list.
void fuzz_sections(const StateFile& state) {
  for (const auto& s : state.sections) {
    if (!vmm::clone::valid_section_id(s.id)) die("parsed an invalid section id", s.id);
    if (state.find(s.id) != &s) die("find() does not return the section", s.id);
    auto r = state.require(s.id, kFile);
    if (!r || r->data() != s.data.data() || r->size() != s.data.size()) die("require() disagrees", s.id);
  }
  if (state.find("no-such-section") || state.require("no-such-section", kFile)) die("found a missing section");
}

void check(std::span<const uint8_t> bytes) {
  auto r = vmm::clone::parse_state_file(bytes, kFile);
  if (!r) {
    const std::string& m = r.error().message();
    if (!m.starts_with(std::string(kFile) + ": ") || m.find('\n') != std::string::npos) die("bad error message", m);
    return;
  }
  if (r->sections.size() > vmm::clone::kMaxSections) die("too many sections accepted");
  fuzz_sections(*r);
  const std::vector<uint8_t> encoded = vmm::clone::encode_state_file(*r);
  auto again = vmm::clone::parse_state_file(encoded, kFile);
  if (!again) die("re-encoded file does not parse", again.error().message());
  if (!same(*r, *again)) die("re-encoded file parses to something else");
  if (vmm::clone::encode_state_file(*again) != encoded) die("encoding is not stable");
}

void make_seeds(const fs::path& dir) {
  fs::create_directories(dir);
  const auto bytes = [](size_t n, uint8_t seed) {
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(seed + i * 31);
    return v;
  };
  std::vector<std::pair<std::string, StateFile>> shapes;
  shapes.push_back({"empty", StateFile{}});
  shapes.push_back({"one", StateFile{.sections = {{"vcpu0", bytes(1024, 1)}}}});
  shapes.push_back({"mixed", StateFile{.sections = {{"vcpu0", bytes(40, 2)},
                                                    {"empty", {}},
                                                    {"serial0", bytes(13, 3)},
                                                    {"virtio-blk.disk0", bytes(7, 4)}}}});
  shapes.push_back({"all-empty", StateFile{.sections = {{"a", {}}, {"b", {}}, {"c", {}}}}});
  shapes.push_back({"long-id", StateFile{.sections = {{std::string(63, 'z'), bytes(9, 5)},
                                                      {"0123456789.abcdefghijklmnopqrstuvwxyz_-", bytes(64, 6)}}}});
  StateFile many;
  for (int i = 0; i < 64; ++i) many.sections.push_back({"s" + std::to_string(i), bytes(static_cast<size_t>(i % 5), 7)});
  shapes.push_back({"many", std::move(many)});
  for (const auto& [name, state] : shapes) {
    const auto b = vmm::clone::encode_state_file(state);
    std::ofstream(dir / (name + ".state"), std::ios::binary).write(reinterpret_cast<const char*>(b.data()),
                                                                  static_cast<std::streamsize>(b.size()));
  }
  std::printf("%zu seeds in %s\n", shapes.size(), dir.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* seeds = std::getenv("VMM_STATE_FUZZ_MAKE_SEEDS")) {
    make_seeds(seeds);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::span<const uint8_t> input(data, size);
  check(input);
  // The same bytes with the length field and checksum made consistent.
  if (size >= vmm::clone::kStateHeaderSize + 4) {
    std::vector<uint8_t> fixed(input.begin(), input.end());
    const uint64_t length = size;
    std::memcpy(fixed.data() + 16, &length, sizeof length);
    const uint32_t crc = vmm::crc32c(0, std::span(fixed).first(size - 4));
    std::memcpy(fixed.data() + size - 4, &crc, sizeof crc);
    check(fixed);
  }
  return 0;
}
