// A template's manifest.json and a clone's clone.json are files a user may be handed (a template
// copied from elsewhere): parse_manifest and parse_clone_record refuse every malformed one with one
// line naming the file and the field, and what manifest_json writes parses back to the same.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <string>

#include "clone/template.hpp"
#include "temp_dir.hpp"
#include "template_samples.hpp"
#include "vmm/base/read_file.hpp"

namespace {

using nlohmann::json;
using namespace vmm::clone;

constexpr const char* kFile = "t/manifest.json";

Manifest sample() { return template_test::sample_manifest(); }

json sample_json() { return json::parse(manifest_json(sample())); }

/// The error parse_manifest gives for `j` ("" if it accepts it).
std::string error_of(const json& j) {
  auto r = parse_manifest(j.dump(), kFile);
  return r ? std::string() : r.error().message();
}

void refused(const json& j, std::string_view says) {
  const std::string e = error_of(j);
  REQUIRE_MESSAGE(!e.empty(), "accepted: " << j.dump());
  CHECK_MESSAGE(e.starts_with(std::string(kFile) + ": "), e);
  CHECK_MESSAGE(e.find('\n') == std::string::npos, e);
  CHECK_MESSAGE(e.find(says) != std::string::npos, e << " (wanted: " << says << ")");
}

}  // namespace

TEST_CASE("template manifest: what manifest_json writes parses back to the same") {
  auto r = parse_manifest(manifest_json(sample()), kFile);
  REQUIRE_MESSAGE(r, r.error().message());
  CHECK(manifest_json(*r) == manifest_json(sample()));
  CHECK(r->disks.at(0).file.checksum == 0x1234abcd);
  CHECK(r->memory_file.data_bytes == 4096);
  // 1.0 manifests have no ip and gateway.
  json old = sample_json();
  old["format_version"] = "1.0";
  old["config"].erase("ip");
  old["config"].erase("gateway");
  CHECK(error_of(old) == "");
}

TEST_CASE("template manifest: more disks or interfaces than a VM can have are refused") {
  auto many = [](unsigned disks, unsigned nets) { return json::parse(manifest_json(template_test::sample_manifest(disks, nets))); };
  CHECK(error_of(many(16, 8)) == "");
  refused(many(17, 1), "config.disks: 17 disks, at most 16 are supported");
  refused(many(1, 9), "config.nets: 9 interfaces, at most 8 are supported");
}

TEST_CASE("template manifest: a probed raw disk says so (1.2), and only a raw one can be") {
  Manifest m = sample();
  REQUIRE(m.disks.at(0).format == "raw");
  CHECK(json::parse(manifest_json(m))["config"]["disks"][0].contains("probed") == false);
  m.disks[0].probed = true;
  const json j = json::parse(manifest_json(m));
  CHECK(j["config"]["disks"][0]["probed"] == true);
  auto r = parse_manifest(j.dump(), kFile);
  REQUIRE_MESSAGE(r, r.error().message());
  CHECK(r->disks[0].probed);
  CHECK_FALSE(parse_manifest(sample_json().dump(), kFile)->disks[0].probed);  // absent: given
  json bad = j;
  bad["config"]["disks"][0]["probed"] = "yes";
  refused(bad, "type must be boolean");
  bad = j;
  bad["config"]["disks"][0]["format"] = "qcow2";
  refused(bad, "only a raw disk can be probed");
}

TEST_CASE("template manifest: malformed JSON, versions and missing fields") {
  for (const char* text : {"", "{", "[]", "null", "\"x\"", "{\"format_version\": 1}", "{} garbage"}) {
    auto r = parse_manifest(text, kFile);
    REQUIRE_MESSAGE(!r, text);
    CHECK(r.error().message().starts_with(std::string(kFile) + ": "));
  }
  json j = sample_json();
  for (const char* v : {"1", "1.", ".1", "1.1.1", "x.1", "1.x", " 1.1", "1.1 ", "+1.1", "-1.1", "1.-1", "1.99999999999999999999",
                        "1.1\n"}) {
    j["format_version"] = v;
    refused(j, "format_version");
  }
  j["format_version"] = "2.0";
  refused(j, "is not supported");
  j["format_version"] = "1.3";
  refused(j, "is newer than this vmm");
  for (const char* key : {"name", "created", "vmm_version", "config", "files"}) {
    json k = sample_json();
    k.erase(key);
    refused(k, key);
  }
  for (const char* key : {"memory", "vcpus", "cpu_template", "kernel", "cmdline", "disks", "nets"}) {
    json k = sample_json();
    k["config"].erase(key);
    refused(k, key);
  }
  json wrong = sample_json();
  wrong["name"] = 7;
  refused(wrong, "type must be string");
}

TEST_CASE("template manifest: numbers that are not what they say are refused, not wrapped") {
  json j = sample_json();
  j["config"]["vcpus"] = (1ull << 32) + 1;  // would wrap to 1
  refused(j, "config.vcpus");
  j["config"]["vcpus"] = -1;
  refused(j, "config.vcpus");
  j["config"]["vcpus"] = 1.5;
  refused(j, "config.vcpus");
  j["config"]["vcpus"] = 255;
  refused(j, "config.vcpus");
  j["config"]["vcpus"] = 0;
  refused(j, "vcpus 0 is out of range");
  j = sample_json();
  j["config"]["memory"] = -4096;
  refused(j, "config.memory");
  j["config"]["memory"] = "256M";
  refused(j, "config.memory");
  j = sample_json();
  j["config"]["memory"] = 128ull << 20;  // not the memory file's size
  refused(j, "does not match the memory file's size");
  j = sample_json();
  j["files"]["memory"]["size"] = -1;
  refused(j, "needs file, size and crc32c");
  // A value that is no number is named by its type, not printed: a nested array's dump() recursed
  // once per level, and 400,000 brackets (an 800 KB manifest, under its limit) crashed every
  // template command with a SIGSEGV.
  std::string text = manifest_json(sample());
  const std::string memory_key = "\"memory\": ";
  const size_t at = text.find(memory_key, text.find("\"config\""));
  REQUIRE(at != std::string::npos);
  const size_t value_end = text.find_first_of(",}", at + memory_key.size());
  text = text.substr(0, at + memory_key.size()) + std::string(400000, '[') + std::string(400000, ']') + text.substr(value_end);
  auto deep = parse_manifest(text, kFile);
  REQUIRE_FALSE(deep);
  CHECK(deep.error().message().find("config.memory (array) is not an integer") != std::string::npos);
  j = sample_json();
  j["config"]["memory"] = json::object({{"a", 1}});
  refused(j, "config.memory (object) is not an integer");
}

TEST_CASE("template manifest: file names stay inside the template, checksums are 8 hex digits") {
  for (const char* name : {"/etc/shadow", "../x", "disks/../../x", "./state.bin", "", "state.bin\n", "a\x1b[2Jb"}) {
    json j = sample_json();
    j["files"]["state"]["file"] = name;
    refused(j, "is not inside the template");
    j = sample_json();
    j["config"]["disks"][0]["image"]["file"] = name;
    refused(j, "disk image");
  }
  for (const char* crc : {"", "1234567", "123456789", "0x123456", "+1234567", " 1234567", "-1234567", "1234567g"}) {
    json j = sample_json();
    j["files"]["state"]["crc32c"] = crc;
    refused(j, "is not 8 hex digits");
  }
  json j = sample_json();
  j["files"]["state"]["crc32c"] = "ABCDEF01";
  auto r = parse_manifest(j.dump(), kFile);
  REQUIRE(r);
  CHECK(r->state.checksum == 0xabcdef01);
}

TEST_CASE("template manifest: strings with control characters are refused, and errors stay one line") {
  for (const char* key : {"created", "vmm_version"}) {
    json j = sample_json();
    j[key] = std::string("a\nb");
    refused(j, std::string(key) + " 'a\\x0ab' has a control character at byte 1");
  }
  json n = sample_json();
  n["name"] = std::string("a\nb");
  refused(n, "name 'a\\x0ab': use letters");  // (not a name: shown escaped)
  for (const char* key : {"cpu_template", "kernel", "cmdline"}) {
    json j = sample_json();
    j["config"][key] = std::string("x\x1b[31m");
    refused(j, "has a control character at byte 1");
  }
  json j = sample_json();
  j["config"]["disks"][0]["id"] = "r\too";
  refused(j, "disk id");
  j = sample_json();
  j["config"]["nets"][0]["tap"] = "tap\r0";
  refused(j, "net tap");
  j = sample_json();
  j["config"]["disks"][0]["format"] = "vmdk\nvmm: all is well";
  refused(j, "disk format 'vmdk\\x0avmm: all is well' is not raw or qcow2");
  // A C1 control in UTF-8 (U+009B, CSI: some terminals obey it) is refused too.
  j = sample_json();
  j["config"]["cmdline"] = "console=ttyS0 \xc2\x9b" "31m";
  refused(j, "has a control character at byte 14");
  j = sample_json();
  j["config"]["ip"] = "10.0.0.2/24\n";
  refused(j, "config.ip");
  j = sample_json();
  j["config"]["disks"] = json::object();
  refused(j, "must be arrays");
  j = sample_json();
  j["config"]["nets"] = "tap0";
  refused(j, "must be arrays");
  // Its name names its clones and a pool's members: one that is not a name is refused here, not by
  // each clone later (a pool retried forever).
  for (const char* name : {"a b", "../x", "", ".hidden", "a/b"}) {
    j = sample_json();
    j["name"] = name;
    refused(j, "name '");
  }
}

TEST_CASE("clone record: parsed and checked") {
  const CloneRecord c{.name = "web-1", .template_dir = "/var/lib/vmm/templates/web", .full = false, .pid = 4242,
                      .created = "2026-12-05T01:00:00Z"};
  auto r = parse_clone_record(*clone_json(c), "c/clone.json");
  REQUIRE_MESSAGE(r, r.error().message());
  CHECK(*clone_json(*r) == *clone_json(c));
  auto bad = [](const std::string& text, std::string_view says) {
    auto e = parse_clone_record(text, "c/clone.json");
    REQUIRE_MESSAGE(!e, text);
    CHECK_MESSAGE(e.error().message().starts_with("c/clone.json: "), e.error().message());
    CHECK_MESSAGE(e.error().message().find('\n') == std::string::npos, e.error().message());
    CHECK_MESSAGE(e.error().message().find(says) != std::string::npos, e.error().message());
  };
  bad("", "not valid JSON");
  bad("[1]", "not valid JSON");
  json j = json::parse(*clone_json(c));
  j["pid"] = 1.5;
  bad(j.dump(), "pid is not an integer");
  j = json::parse(*clone_json(c));
  j.erase("template");
  bad(j.dump(), "template");
  j = json::parse(*clone_json(c));
  j["name"] = "a\nb";
  bad(j.dump(), "name 'a\\x0ab' has a control character");
}

TEST_CASE("clone record: staged ahead, then written over with a shorter one, leaves exactly the new record") {
  // A pool's member stages its record before the request and writes it again at the request, in
  // place (never truncated to nothing first: see stage_clone_record).
  vmm::test::TempDir dir("clone-record");
  const CloneRecord staged{.name = "member-with-a-long-name", .template_dir = "/var/lib/vmm/templates/a-long-template-name",
                           .full = false, .pid = 4242, .created = "2026-12-05T01:00:00Z"};
  REQUIRE(stage_clone_record(dir.path, staged));
  CHECK(!read_clone_record(dir.path));  // not clone.json yet
  const CloneRecord final{.name = "m", .template_dir = "/t", .full = true, .pid = 7, .created = "2026-12-06T02:00:00Z"};
  REQUIRE(write_clone_record(dir.path, final));
  auto text = vmm::read_file(dir / "clone.json", 64 * 1024, "clone record");
  REQUIRE_MESSAGE(text, text.error().message());
  CHECK(*text == *clone_json(final));
  CHECK(!std::filesystem::exists(dir / kStagedCloneRecord));
  auto r = read_clone_record(dir.path);
  REQUIRE_MESSAGE(r, r.error().message());
  CHECK(r->name == "m");
}

// Text that is not UTF-8 (nlohmann's dump() throws on it): a clone record, whose template path is
// read back, refuses it with an error; a manifest, whose command line and kernel path are for
// information, shows it as U+FFFD. Neither throws (it ended vmm with std::terminate).
TEST_CASE("clone record and manifest: text that is not UTF-8 is an error or shown replaced, never an exception") {
  const CloneRecord c{.name = "web-1", .template_dir = "/var/lib/caf\xe9/templates/web", .full = false, .pid = 1, .created = "x"};
  vmm::Result<std::string> text = std::string();
  CHECK_NOTHROW(text = clone_json(c));
  REQUIRE_FALSE(text);
  CHECK(text.error().message().find("not valid UTF-8") != std::string::npos);
  Manifest m = sample();
  m.cmdline = "console=ttyS0 x=\xe9";
  m.kernel = "/boot/vmlinuz-\xff";
  std::string mj;
  CHECK_NOTHROW(mj = manifest_json(m));
  auto r = parse_manifest(mj, kFile);
  REQUIRE_MESSAGE(r, r.error().message());
  CHECK(r->cmdline == "console=ttyS0 x=\xef\xbf\xbd");
}
