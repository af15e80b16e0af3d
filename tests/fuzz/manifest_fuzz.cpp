// libFuzzer target for the JSON files of a template and a clone (clone/template.hpp): a template's
// manifest.json (parse_manifest) and a clone's clone.json (parse_clone_record), files a user may be
// handed with a template copied from elsewhere. Built by clang only (tests/fuzz/fuzz.cmake,
// scripts/fuzz-manifest.sh) with -fsanitize=fuzzer,address,undefined.
//
// The first byte picks the parser (even: manifest, odd: clone record), the rest is the file. A
// refusal must be one line naming the file; an accepted file must write back (manifest_json,
// clone_json) to text that parses to the same thing and writes the same text again.
//
// VMM_MANIFEST_FUZZ_MAKE_SEEDS=DIR writes a few well-formed files of each kind to DIR and exits.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "../unit/template_samples.hpp"
#include "clone/template.hpp"

namespace {

namespace fs = std::filesystem;
using namespace vmm::clone;

constexpr const char* kFile = "fuzz/manifest.json";

[[noreturn]] void die(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "manifest_fuzz: %s%s%s\n", what, detail.empty() ? "" : ": ", detail.c_str());
  std::abort();
}

void check_error(const vmm::Error& e) {
  const std::string& m = e.message();
  if (!m.starts_with(std::string(kFile) + ": ") || m.find('\n') != std::string::npos) die("bad error message", m);
}

template <typename T, typename Parse, typename Write>
void round_trip(std::string_view text, Parse parse, Write write) {
  auto r = parse(text, kFile);
  if (!r) return check_error(r.error());
  const std::string once = write(*r);
  auto again = parse(once, kFile);
  if (!again) die("what was written back does not parse", again.error().message());
  if (write(*again) != once) die("writing back is not stable", once);
}

void make_seeds(const fs::path& dir) {
  fs::create_directories(dir);
  std::vector<std::pair<std::string, std::string>> seeds;
  seeds.push_back({"manifest-plain", manifest_json(template_test::sample_manifest(0, 0, false))});
  seeds.push_back({"manifest-disks-nets", manifest_json(template_test::sample_manifest(2, 2, false))});
  seeds.push_back({"manifest-1.0", manifest_json(template_test::sample_manifest(1, 0, true))});
  seeds.push_back({"clone-linked", *clone_json({.name = "web-1", .template_dir = "/var/lib/vmm/templates/web", .full = false,
                                               .pid = 4242, .created = "2026-12-05T01:00:00Z"})});
  seeds.push_back({"clone-full", *clone_json({.name = "web-2", .template_dir = "", .full = true, .pid = -1, .created = "x"})});
  for (const auto& [name, text] : seeds) {
    const char selector = name.starts_with("clone") ? 1 : 0;
    std::ofstream out(dir / name, std::ios::binary);
    out.put(selector);
    out << text;
  }
  std::printf("%zu seeds in %s\n", seeds.size(), dir.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* seeds = std::getenv("VMM_MANIFEST_FUZZ_MAKE_SEEDS")) {
    make_seeds(seeds);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] % 2 == 0) {
    round_trip<Manifest>(text, parse_manifest, manifest_json);
  } else {
    // (A parsed record's text is UTF-8: it writes back.)
    round_trip<CloneRecord>(text, parse_clone_record, [](const CloneRecord& c) {
      auto t = clone_json(c);
      if (!t) die("a parsed record does not write back", t.error().message());
      return *t;
    });
  }
  return 0;
}
