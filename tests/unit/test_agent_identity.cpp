// vmm-agent's identity parser (guest-images/linux/vmm-agent/identity.{h,c}): the host is untrusted,
// so first every malformed file the parser must reject as a whole (size, padding, bytes, lines,
// keys, each known value's grammar, duplicates, no generation), with *out zeroed and a one-line
// reason; then well-formed files, unknown keys ignored. Decided here: IPv4 parts with leading zeros
// ("01.2.3.4", "1.2.3.4/08") are rejected (some parsers read them as octal); hex is lowercase only.
#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include "vmm-agent/identity.h"

namespace {

constexpr const char* kGen = "generation=00112233445566778899aabbccddeeff\n";

/// `text` NUL-padded to `size` bytes (the file as fw_cfg serves it).
std::string file(const std::string& text, size_t size = VMM_IDENTITY_SIZE) {
  std::string f = text;
  f.resize(size, '\0');
  return f;
}

struct Parsed {
  int status;
  vmm_identity id;
  std::string err;
};

Parsed parse(const std::string& f) {
  Parsed p{};
  char err[200];
  std::memset(&p.id, 0x5a, sizeof p.id);  // must be overwritten either way
  p.status = vmm_identity_parse(f.data(), f.size(), &p.id, err, sizeof err);
  p.err = err;
  return p;
}

bool all_zero(const vmm_identity& id) {
  const auto* b = reinterpret_cast<const unsigned char*>(&id);
  for (size_t i = 0; i < sizeof id; ++i)
    if (b[i]) return false;
  return true;
}

/// Rejected as a whole: -1, nothing in *out, one line of reason containing `why`.
void rejected(const std::string& f, const std::string& why) {
  CAPTURE(f.substr(0, f.find('\0')));
  const auto p = parse(f);
  CHECK(p.status == -1);
  CHECK(all_zero(p.id));
  CHECK(p.err.find('\n') == std::string::npos);
  CHECK_MESSAGE(p.err.find(why) != std::string::npos, p.err);
}

/// A file with the generation and one more line `key=value`.
void value_rejected(const std::string& key, const std::string& value) {
  rejected(file(kGen + key + "=" + value + "\n"), "line 2: bad value for " + key);
}

/// `text` and then unknown-key lines (at most 200 bytes each) up to exactly `size` bytes.
std::string lines_to(std::string text, size_t size) {
  while (size - text.size() > 200) text += "pad=" + std::string(195, 'p') + "\n";
  text += "z=" + std::string(size - text.size() - 3, 'q') + "\n";
  return text;
}

std::string mac_str(const unsigned char m[6]) {
  char s[18];
  std::snprintf(s, sizeof s, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
  return s;
}

}  // namespace

TEST_CASE("agent identity: the file's size and padding") {
  rejected("", "size 0");
  rejected(file(kGen, 1023), "size 1023");          // truncated
  rejected(file(kGen, 1025), "size 1025");
  rejected(file(kGen, 512), "size 512");
  rejected(std::string(kGen), "size");              // no padding at all
  // 1024 bytes of valid lines and no NUL: text that fills the item entirely is not accepted (the
  // text must end with a NUL; vmm's own files are far shorter).
  const std::string full = lines_to(kGen, VMM_IDENTITY_SIZE);
  REQUIRE(full.size() == VMM_IDENTITY_SIZE);
  rejected(full, "no NUL padding");
  rejected(std::string(VMM_IDENTITY_SIZE, 'a'), "no NUL padding");
  // Non-NUL bytes after the first NUL: a NUL mid-line, text after the padding, a stray byte at the end.
  rejected(file(std::string("name=ab\0cd\n", 11) + kGen), "after the first NUL");
  rejected(file(std::string(kGen) + '\0' + "hostname=evil\n"), "after the first NUL");
  std::string tail = file(kGen);
  tail.back() = 'x';
  rejected(tail, "after the first NUL");
  tail.back() = '\n';
  rejected(tail, "after the first NUL");
  // The last line cut off (no newline before the padding).
  rejected(file(std::string(kGen) + "name=web-1"), "last line has no newline");
  rejected(file("generation=00112233445566778899aabbccddeeff"), "last line has no newline");
}

TEST_CASE("agent identity: lines and keys") {
  rejected(file(std::string(kGen) + "no equals sign\n"), "line 2: no '='");
  rejected(file(std::string(kGen) + "\n"), "line 2: no '='");              // empty line
  rejected(file("\n" + std::string(kGen)), "line 1: no '='");
  rejected(file(std::string(kGen) + "=value\n"), "line 2: empty key");
  rejected(file(std::string(kGen) + "Name=web\n"), "line 2: bad key");
  rejected(file(std::string(kGen) + "host-name=web\n"), "line 2: bad key");
  rejected(file(std::string(kGen) + "na me=web\n"), "line 2: bad key");
  // Line length: 255 bytes (without '\n') is the most.
  const std::string ok_line = "x_unknown=" + std::string(255 - 10, 'a');
  CHECK(parse(file(kGen + ok_line + "\n")).status == 0);
  rejected(file(kGen + ok_line + "a\n"), "line 2: 256 bytes");
  rejected(file(std::string(kGen) + "x=" + std::string(600, 'a') + "\n"), "line 2: 602 bytes");
  // Bytes: CR (CRLF files), tab, escape, DEL, bytes >= 0x80, also in unknown keys' values.
  rejected(file("generation=00112233445566778899aabbccddeeff\r\n"), "line 1: byte 0x0d");
  rejected(file(std::string(kGen) + "name=web-1\r\n"), "byte 0x0d");
  rejected(file(std::string(kGen) + "future=a\tb\n"), "byte 0x09");
  rejected(file(std::string(kGen) + "future=\x1b[2J\n"), "byte 0x1b");
  rejected(file(std::string(kGen) + "future=\x7f\n"), "byte 0x7f");
  rejected(file(std::string(kGen) + "future=caf\xc3\xa9\n"), "byte 0xc3");
  // The generation is required.
  rejected(file(""), "no generation");
  rejected(file("id=0123456789abcdef0123456789abcdef\nname=web-1\n"), "no generation");
  rejected(file("generationx=00112233445566778899aabbccddeeff\n"), "no generation");
}

TEST_CASE("agent identity: duplicate known keys") {
  rejected(file(std::string(kGen) + kGen), "line 2: duplicate key generation");
  rejected(file(std::string(kGen) + "hostname=a\nhostname=a\n"), "line 3: duplicate key hostname");
  rejected(file(std::string(kGen) + "mac0=02:00:00:00:00:01\nmac0=02:00:00:00:00:02\n"), "duplicate key mac0");
  rejected(file(std::string(kGen) + "ip=dhcp\nip=10.0.0.2\n"), "duplicate key ip");
  rejected(file(std::string(kGen) + "time=1\ntime=1\n"), "duplicate key time");
  // A duplicate is rejected even when the first value was bad... the first bad value decides.
  rejected(file(std::string(kGen) + "name=a b\nname=a\n"), "line 2: bad value for name");
}

TEST_CASE("agent identity: id, name, generation") {
  value_rejected("id", "");
  value_rejected("id", "0123456789abcdef0123456789abcde");     // 31
  value_rejected("id", "0123456789abcdef0123456789abcdef0");   // 33
  value_rejected("id", "0123456789ABCDEF0123456789abcdef");    // uppercase
  value_rejected("id", "0123456789abcdeg0123456789abcdef");
  value_rejected("id", "00000000000000000000000000000000");    // not a machine id
  value_rejected("id", " 0123456789abcdef0123456789abcdef");
  value_rejected("name", "");
  value_rejected("name", "web 1");
  value_rejected("name", "web/1");
  value_rejected("name", "$(reboot)");
  value_rejected("name", std::string(65, 'a'));
  rejected(file("generation=00112233445566778899AABBCCDDEEFF\n"), "line 1: bad value for generation");
  rejected(file("generation=0011223344556677\n"), "bad value for generation");
  rejected(file("generation=\n"), "bad value for generation");
  CHECK(parse(file(std::string(kGen) + "name=" + std::string(64, 'a') + "\n")).status == 0);
  CHECK(parse(file(std::string(kGen) + "name=Web_1.a-b\n")).status == 0);
}

TEST_CASE("agent identity: hostnames with shell metacharacters and bad labels") {
  for (const char* h : {"$(reboot)", "`reboot`", "web;reboot", "web 1", "web&", "web|x", "web>x", "a'b", "a\"b",
                        "web\\1", "web*", "$HOME", "web_1", "-web", "web-", "a..b", ".web", "web.", "", "web.-a",
                        "a.b-.c", "$(touch /tmp/pwned)", "1.2.3.4", "10.0.0.300", "web.1"}) {
    CAPTURE(h);
    value_rejected("hostname", h);
  }
  value_rejected("hostname", std::string(64, 'a'));                       // a label of 64
  value_rejected("hostname", std::string(63, 'a') + "." + std::string(1, 'b'));  // 65 in all
  CHECK(parse(file(std::string(kGen) + "hostname=" + std::string(63, 'a') + "\n")).status == 0);
  CHECK(parse(file(std::string(kGen) + "hostname=" + std::string(62, 'a') + ".b\n")).status == 0);
  CHECK(parse(file(std::string(kGen) + "hostname=1-2.Web-1.x\n")).status == 0);
  CHECK(parse(file(std::string(kGen) + "hostname=123\n")).status == 0);  // one label all digits: a name still
}

TEST_CASE("agent identity: MACs") {
  for (const char* m : {"", "02:00:00:00:00", "02:00:00:00:00:01:02", "02:00:00:00:00:1", "2:00:00:00:00:01",
                        "02-00-00-00-00-01", "0200.0000.0001", "02:00:00:00:00:0G", "02:AB:00:00:00:01",
                        "02:aB:00:00:00:01", "01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "03:00:00:00:00:01",
                        "00:00:00:00:00:00", "02:00:00:00:00:01 ", " 02:00:00:00:00:01", "02:00:00:00:00:01;x"}) {
    CAPTURE(m);
    value_rejected("mac0", m);
  }
  // Keys: mac<N>, N decimal without leading zeros, below VMM_IDENTITY_MAX_MACS.
  rejected(file(std::string(kGen) + "mac00=02:00:00:00:00:01\n"), "bad MAC key");
  rejected(file(std::string(kGen) + "mac01=02:00:00:00:00:01\n"), "bad MAC key");
  rejected(file(std::string(kGen) + "mac32=02:00:00:00:00:01\n"), "bad MAC key");
  rejected(file(std::string(kGen) + "mac9999=02:00:00:00:00:01\n"), "bad MAC key");
  // "mac" alone or with a non-digit suffix is just an unknown key.
  CHECK(parse(file(std::string(kGen) + "mac=x\nmacs=y\nmac0x=z\n")).status == 0);
  const auto p = parse(file(std::string(kGen) + "mac31=fe:ff:ff:ff:ff:ff\nmac1=00:00:00:00:00:01\n"));
  REQUIRE(p.status == 0);
  CHECK(p.id.has_mac[31]);
  CHECK(mac_str(p.id.mac[31]) == "fe:ff:ff:ff:ff:ff");
  CHECK(p.id.has_mac[1]);
  CHECK_FALSE(p.id.has_mac[0]);
}

TEST_CASE("agent identity: IPv4 addresses, prefixes and gateways") {
  for (const char* ip : {"", "256.1.1.1", "1.2.3", "1.2.3.4.5", "1.2.3.4/33", "01.2.3.4", "1.2.3.04", "1.2.3.4/08",
                         "1.2.3.4/", "1.2.3.4/-1", "1.2.3.4/24/8", "1..3.4", ".1.2.3", "1.2.3.", "1.2.3.4 ",
                         "1.2.3.4;reboot", "0x1.2.3.4", "1.2.3.1000", "DHCP", "dhcp ", "dhcp4", "0.0.0.0",
                         "0.1.2.3", "127.0.0.1", "224.0.0.1", "239.1.1.1", "240.0.0.1", "255.255.255.255",
                         "10.0.0.1/1000", "::1", "fe80::1/64", "+1.2.3.4", "1.2.3.4/+8"}) {
    CAPTURE(ip);
    value_rejected("ip", ip);
  }
  for (const char* gw : {"", "1.2.3.4/24", "256.0.0.1", "01.0.0.1", "dhcp", "127.0.0.1", "10.0.0", "10.0.0.1 "}) {
    CAPTURE(gw);
    value_rejected("gateway", gw);
  }
  auto p = parse(file(std::string(kGen) + "ip=10.0.3.11\n"));
  REQUIRE(p.status == 0);
  CHECK(p.id.ip_mode == VMM_IP_STATIC);
  CHECK(p.id.prefix == 24);  // the default
  CHECK((p.id.ip[0] == 10 && p.id.ip[1] == 0 && p.id.ip[2] == 3 && p.id.ip[3] == 11));
  p = parse(file(std::string(kGen) + "ip=192.168.100.200/32\ngateway=192.168.100.1\n"));
  REQUIRE(p.status == 0);
  CHECK(p.id.prefix == 32);
  CHECK(p.id.has_gateway);
  CHECK(p.id.gateway[3] == 1);
  rejected(file(std::string(kGen) + "ip=192.168.100.1/24\ngateway=192.168.100.1\n"), "ip is the gateway's address");
  p = parse(file(std::string(kGen) + "ip=1.0.0.0/0\n"));
  REQUIRE(p.status == 0);
  CHECK(p.id.prefix == 0);
  p = parse(file(std::string(kGen) + "ip=223.255.255.254/8\n"));
  CHECK(p.status == 0);
  p = parse(file(std::string(kGen) + "ip=dhcp\n"));
  REQUIRE(p.status == 0);
  CHECK(p.id.ip_mode == VMM_IP_DHCP);
  CHECK_FALSE(p.id.has_gateway);
}

TEST_CASE("agent identity: seed and times") {
  value_rejected("seed", "");
  value_rejected("seed", std::string(63, 'a'));
  value_rejected("seed", std::string(65, 'a'));
  value_rejected("seed", std::string(64, 'A'));
  value_rejected("seed", std::string(62, 'a') + "zz");
  for (const char* t : {"", "-1", "+1", "01", "1.5", "1e9", " 1", "1 ", "12345678901234567890", "0x10"}) {
    CAPTURE(t);
    value_rejected("time", t);
    value_rejected("time_ms", t);
  }
  const auto p = parse(file(std::string(kGen) + "time=0\ntime_ms=9999999999999999999\nseed=" +
                            std::string(62, 'f') + "a5\n"));
  REQUIRE(p.status == 0);
  CHECK(p.id.has_time);
  CHECK(p.id.time == 0);
  CHECK(p.id.time_ms == 9999999999999999999ull);
  CHECK(p.id.has_seed);
  CHECK(p.id.seed[0] == 0xff);
  CHECK(p.id.seed[31] == 0xa5);
}

TEST_CASE("agent identity: a rejection anywhere leaves nothing, even after good lines") {
  const std::string good = "id=0123456789abcdef0123456789abcdef\nname=web-1\n" + std::string(kGen) +
                           "mac0=02:00:00:00:00:01\nhostname=web-1\nip=10.0.3.11/24\n";
  REQUIRE(parse(file(good)).status == 0);
  rejected(file(good + "gateway=10.0.3.256\n"), "line 7: bad value for gateway");
  rejected(file(good + "junk\n"), "line 7: no '='");
  // The reason never carries the host's value (it goes to the console).
  const auto p = parse(file(std::string(kGen) + "hostname=$(touch /tmp/pwned)\n"));
  CHECK(p.status == -1);
  CHECK(p.err.find("pwned") == std::string::npos);
  // err may be small or absent.
  char small[8];
  vmm_identity id;
  CHECK(vmm_identity_parse("x", 1, &id, small, sizeof small) == -1);
  CHECK(std::strlen(small) == 7);
  CHECK(vmm_identity_parse("x", 1, &id, nullptr, 0) == -1);
}

TEST_CASE("agent identity: a whole valid file, any order, unknown keys ignored") {
  const std::string text =
      "future_key=anything printable, even $(this) and `that`; it is ignored\n"
      "time_ms=1700000000123\n"
      "mac1=02:aa:bb:cc:dd:ee\n"
      "hostname=web-1.example.com\n"
      "name=tmpl-1a2b3c4d\n"
      "seed=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n"
      "id=0123456789abcdef0123456789abcdef\n"
      "generation=ffeeddccbbaa99887766554433221100\n"
      "mac0=02:00:00:00:00:01\n"
      "ip=10.0.3.11/16\n"
      "gateway=10.0.0.1\n"
      "time=1700000000\n"
      "x=\n";
  const auto p = parse(file(text));
  REQUIRE_MESSAGE(p.status == 0, p.err);
  CHECK(p.err.empty());
  const auto& id = p.id;
  CHECK(id.has_id);
  CHECK(std::string(id.id) == "0123456789abcdef0123456789abcdef");
  CHECK(std::string(id.name) == "tmpl-1a2b3c4d");
  CHECK(std::string(id.generation) == "ffeeddccbbaa99887766554433221100");
  CHECK(std::string(id.hostname) == "web-1.example.com");
  CHECK(mac_str(id.mac[0]) == "02:00:00:00:00:01");
  CHECK(mac_str(id.mac[1]) == "02:aa:bb:cc:dd:ee");
  CHECK_FALSE(id.has_mac[2]);
  CHECK(id.ip_mode == VMM_IP_STATIC);
  CHECK(id.prefix == 16);
  CHECK(id.has_gateway);
  CHECK(id.has_seed);
  CHECK(id.seed[1] == 0x11);
  CHECK(id.time == 1700000000u);
  CHECK(id.time_ms == 1700000000123u);

  // The minimum: a generation alone; nothing else set.
  const auto m = parse(file(kGen));
  REQUIRE(m.status == 0);
  CHECK_FALSE(m.id.has_id);
  CHECK_FALSE(m.id.has_name);
  CHECK_FALSE(m.id.has_hostname);
  CHECK(m.id.ip_mode == VMM_IP_NONE);
  CHECK_FALSE(m.id.has_seed);
  CHECK_FALSE(m.id.has_time_ms);
  // The text may use all of 1023 bytes (one NUL at the end).
  const std::string big = lines_to(kGen, VMM_IDENTITY_SIZE - 1);
  REQUIRE(big.size() == VMM_IDENTITY_SIZE - 1);
  CHECK(parse(file(big)).status == 0);
}

TEST_CASE("agent identity: what vmm writes parses") {
  // The shape of vmm::identity_pairs as devices::identity_text lays it out.
  const auto p = parse(file("id=8c2e3a51d0f94b7e9a0c1d2e3f405162\nname=linux-1a2b3c4d\n"
                            "generation=9f8e7d6c5b4a39281706f5e4d3c2b1a0\nmac0=02:4a:1b:2c:3d:4e\n"
                            "hostname=host-1\nip=10.0.0.11\ntime=1733241600\n"));
  REQUIRE_MESSAGE(p.status == 0, p.err);
  CHECK(p.id.ip[3] == 11);
}
