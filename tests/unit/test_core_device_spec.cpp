// --disk option parsing: good values and every kind of malformed one.
#include <doctest/doctest.h>

#include "vmm/device_spec.hpp"

TEST_CASE("cli: --disk specs") {
  auto d = vmm::parse_disk_spec("path=/tmp/a.img");
  REQUIRE(d);
  CHECK(d->path == "/tmp/a.img");
  CHECK_FALSE(d->read_only);
  CHECK(d->id.empty());
  auto e = vmm::parse_disk_spec("id=root,readonly=on,path=x.raw");
  REQUIRE(e);
  CHECK(e->read_only);
  CHECK(e->id == "root");
  CHECK(e->path == "x.raw");
  CHECK_FALSE(vmm::parse_disk_spec("readonly=off,path=x")->read_only);
  CHECK(d->format.empty());  // guessed from the content
  CHECK(vmm::parse_disk_spec("path=x,format=raw")->format == "raw");
  CHECK(vmm::parse_disk_spec("path=x,format=qcow2")->format == "qcow2");

  for (const char* bad : {"", "x.img", "path=", "=x", "path=a,path=b", "path=a,readonly=maybe", "path=a,color=red",
                          "readonly=on", "path=a,,id=b", "path=a,id=123456789012345678901", "path=a,",
                          "path=a,format=vmdk", "path=a,format=", "path=a,format=RAW"}) {
    auto r = vmm::parse_disk_spec(bad);
    INFO(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().message().starts_with("--disk"));
    CHECK(r.error().message().find('\n') == std::string::npos);
  }
}

TEST_CASE("cli: --net specs") {
  auto n = vmm::parse_net_spec("tap=tap0,mac=52:54:00:12:34:56");
  REQUIRE(n);
  CHECK(n->tap == "tap0");
  CHECK(n->mac == "52:54:00:12:34:56");
  CHECK(vmm::parse_net_spec("tap=t")->mac.empty());
  auto b = vmm::parse_net_spec("tap=w{i},bridge=br0");
  REQUIRE(b);
  CHECK(b->bridge == "br0");
  CHECK(b->netns.empty());
  auto x = vmm::parse_net_spec("tap=tap0,netns=ns-{name}");
  REQUIRE(x);
  CHECK(x->netns == "ns-{name}");
  auto e = vmm::expand_net(*x, "web", 7);
  REQUIRE(e);
  CHECK(e->netns == "ns-web");
  CHECK(vmm::expand_net(*b, "web", 12)->tap == "w12");
  // An expansion that no longer fits an interface name, or brings characters a name cannot have.
  CHECK_FALSE(vmm::expand_net(*x, "a-very-long-clone-name", 1));
  CHECK_FALSE(vmm::expand_net(*x, "a/b", 1));
  CHECK(vmm::expand_pattern("{name}-{i}-{i}", "c", 3) == "c-3-3");
  // Many VMs from one spec: each its own TAP, or its own namespace where it has one.
  CHECK(vmm::check_net_per_vm(*b));
  CHECK(vmm::check_net_per_vm(*x));  // tap0 in each VM's own namespace
  CHECK_FALSE(vmm::check_net_per_vm(*n));
  CHECK(vmm::check_net_per_vm(*vmm::parse_net_spec("tap=t-{name}")));
  auto same_ns = vmm::check_net_per_vm(*vmm::parse_net_spec("tap=t{i},netns=ns"));
  REQUIRE_FALSE(same_ns);
  CHECK(same_ns.error().message() == "netns=ns: every VM would make the same network namespace: put {i} or {name} in it");
  for (const char* bad : {"", "tap0", "tap=", "mac=52:54:00:12:34:56", "tap=a,tap=b", "tap=a,vhost=on", "tap=a,bridge=b,netns=c",
                          "tap=0123456789abcdef", "tap=a b", "tap=a,bridge=x/y", "tap=a,netns=ns-{name}{name}{name}{name}{name}{name}{name}{name}{name}{name}{name}{name}{name}"}) {
    auto r = vmm::parse_net_spec(bad);
    INFO(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().message().starts_with("--net"));
  }
  // A namespace, TAP or bridge name starting with '.' (vmm's own files beside a namespace's record
  // start so: ".outside.lock" deadlocked on its own allocation lock).
  for (const char* dot : {"tap=t,netns=.outside.lock", "tap=.t", "tap=t,bridge=.b"}) {
    INFO(dot);
    auto r = vmm::parse_net_spec(dot);
    REQUIRE_FALSE(r);
    CHECK(r.error().message().find("cannot start with '.'") != std::string::npos);
  }
}

#include "devices/virtio/net.hpp"

TEST_CASE("virtio-net: MAC addresses") {
  auto m = vmm::devices::virtio::parse_mac("52:54:00:AB:cd:0f");
  REQUIRE(m);
  CHECK(vmm::devices::virtio::format_mac(*m) == "52:54:00:ab:cd:0f");
  for (const char* bad : {"", "52:54:00:ab:cd", "52:54:00:ab:cd:0f:11", "52-54-00-ab-cd-0f", "52:54:00:ab:cd:0g",
                          "01:00:5e:00:00:01", "00:00:00:00:00:00", "5:54:00:ab:cd:0ff"}) {
    INFO(bad);
    CHECK_FALSE(vmm::devices::virtio::parse_mac(bad));
  }
}

#include <map>

#include "vmm/identity.hpp"

TEST_CASE("identity: --hostname, --ip and --gateway") {
  using namespace vmm;
  for (const char* good : {"web-1", "a", "host.example.org", "x1-2-3", "123", "1.2.3.x4", "10.0.0.300a"}) CHECK(check_hostname(good));
  for (const char* bad : {"", "-web", "web-", "a..b", ".a", "a.", "web_1", "$(reboot)", "a b", "a;b", "h\n", "1.2.3.4", "10.0.0.300", "web.1",
                          "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}) {
    INFO(bad);
    auto r = check_hostname(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().message().starts_with("--hostname"));
  }
  CHECK(*check_ip("10.0.3.11") == "10.0.3.11/24");
  CHECK(*check_ip("10.0.3.11/16") == "10.0.3.11/16");
  CHECK(*check_ip("1.0.0.1/0") == "1.0.0.1/0");
  CHECK(*check_ip("223.255.255.254/32") == "223.255.255.254/32");
  CHECK(*check_ip("dhcp") == "dhcp");
  // Not an interface's address (vmm-agent would refuse the clone's whole identity for it).
  for (const char* bad : {"0.0.0.0/0", "0.1.2.3", "127.0.0.2/8", "224.0.0.1", "255.255.255.255"}) {
    INFO(bad);
    auto r = check_ip(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().message().find("not an address an interface can have") != std::string::npos);
  }
  CHECK_FALSE(vmm::check_gateway("255.255.255.255"));
  CHECK_FALSE(vmm::check_gateway("127.0.0.1"));
  CHECK(vmm::check_gateway("10.0.0.1"));
  for (const char* bad : {"", "1.2.3", "1.2.3.4.5", "256.1.1.1", "01.2.3.4", "1.2.3.4/33", "1.2.3.4/", "1.2.3.4/08", "a.b.c.d",
                          "1.2.3.4 ", "-1.2.3.4", "1..2.3", "DHCP", "1.2.3.4/24/1"}) {
    INFO(bad);
    auto r = check_ip(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().message().starts_with("--ip"));
  }
  CHECK(check_gateway("10.0.3.1"));
  CHECK_FALSE(check_gateway("10.0.3.1/24"));
  CHECK_FALSE(check_gateway("host"));
  CHECK(*ip_plus("10.0.3.11/24", 0) == "10.0.3.11/24");
  CHECK(*ip_plus("10.0.3.11/24", 4) == "10.0.3.15/24");
  CHECK(*ip_plus("10.0.3.250/16", 10) == "10.0.4.4/16");
  CHECK_FALSE(ip_plus("10.0.3.250/24", 10));  // leaves the /24
  CHECK_FALSE(ip_plus("255.255.255.255/0", 1));
  CHECK(*ip_plus("dhcp", 3) == "dhcp");
  // A network's own address and its broadcast are no host's (they were handed to clones, and the
  // guest's agent applied 10.0.0.255/24 and announced it); a /31's and a /32's are.
  for (const char* bad : {"10.0.0.0/24", "10.0.0.255/24", "10.0.0.255", "10.1.0.0/16", "10.1.255.255/16", "10.0.0.4/30", "10.0.0.7/30"}) {
    INFO(bad);
    auto r = check_ip(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().message().starts_with(std::string("--ip ") + bad + ": the "));
  }
  CHECK(*check_ip("10.0.0.5/30") == "10.0.0.5/30");
  CHECK(*check_ip("10.0.0.4/31") == "10.0.0.4/31");
  CHECK(*check_ip("10.0.0.0/32") == "10.0.0.0/32");
  CHECK(*check_ip("10.1.0.255/16") == "10.1.0.255/16");
  CHECK_FALSE(ip_plus("10.0.0.250/24", 5));  // 10.0.0.255: the broadcast
  CHECK(*ip_plus("10.0.0.250/24", 4) == "10.0.0.254/24");
  // A range of clones' addresses that takes in the gateway's.
  CHECK(vmm::check_ip_gateway("10.0.0.100/24", 154, "10.0.0.254"));  // 100..253
  CHECK(vmm::check_ip_gateway("10.0.0.100/24", 155, "10.0.0.99"));
  auto gw = vmm::check_ip_gateway("10.0.0.100/24", 155, "10.0.0.254");
  REQUIRE_FALSE(gw);
  CHECK(gw.error().message() == "--ip 10.0.0.100/24: the 155 addresses from it take in the gateway's address (10.0.0.254)");
  auto one = vmm::check_ip_gateway("10.0.0.1/24", 1, "10.0.0.1");
  REQUIRE_FALSE(one);
  CHECK(one.error().message() == "--ip 10.0.0.1/24: is the gateway's address (10.0.0.1)");
  CHECK(vmm::check_ip_gateway("10.0.0.2/24", 10, "10.0.0.1"));
  CHECK(vmm::check_ip_gateway("dhcp", 10, "10.0.0.1"));
  CHECK(vmm::check_ip_gateway("10.0.0.2/24", 10, ""));
  // A gateway off the addresses' network: no default route can go through it.
  auto off = vmm::check_ip_gateway("10.0.1.5/24", 1, "10.0.0.1");
  REQUIRE_FALSE(off);
  CHECK(off.error().message() == "--gateway 10.0.0.1: not on the /24 network of --ip 10.0.1.5/24 (the guest could not route through it)");
  CHECK_FALSE(vmm::check_ip_gateway("10.0.0.5/32", 1, "10.0.0.1"));
  CHECK(vmm::check_ip_gateway("10.0.1.5/16", 1, "10.0.0.1"));
  CHECK(vmm::check_ip_gateway("10.0.0.4/31", 1, "10.0.0.5"));
  CHECK(vmm::check_ip_gateway("10.0.0.5/0", 1, "192.168.0.1"));
}

TEST_CASE("identity: the channel's keys") {
  auto id = vmm::new_identity("c1");
  id.hostname = "web-1";
  id.ip = "10.0.3.11/24";
  id.gateway = "10.0.3.1";
  CHECK(id.seed.size() == 64);
  std::map<std::string, std::string> kv;
  for (auto& [k, v] : vmm::identity_pairs(id)) kv[k] = v;
  CHECK(kv.at("hostname") == "web-1");
  CHECK(kv.at("ip") == "10.0.3.11/24");
  CHECK(kv.at("gateway") == "10.0.3.1");
  CHECK(kv.at("seed") == id.seed);
  CHECK(kv.at("time_ms").size() >= 13);
  CHECK(vmm::new_identity("c2").seed != id.seed);
}

TEST_CASE("errors stay one line: control characters in what a user or a client gave are written \\xNN") {
  CHECK(vmm::Error("a\nb\tc\x7f" "d é").message() == "a\\x0ab\\x09c\\x7fd é");
  CHECK(vmm::one_line("plain 'text' / é") == "plain 'text' / é");
  // C1 controls in UTF-8 (U+0080..U+009F; U+009B is CSI to some terminals), not other 0xc2 pairs.
  CHECK(vmm::one_line("a\xc2\x9b" "31m \xc2\x85 \xc2\xa0 \xc2") == "a\\xc2\\x9b31m \\xc2\\x85 \xc2\xa0 \xc2");
  CHECK(vmm::control_char("ok \xc2\xa0") == std::nullopt);
  CHECK(vmm::control_char("ok \xc2\x9f") == 3u);
  auto net = vmm::parse_net_spec("tap=a\nb");
  REQUIRE_FALSE(net);
  CHECK(net.error().message().find('\n') == std::string::npos);
  CHECK(net.error().message().find("a\\x0ab") != std::string::npos);
  auto host = vmm::check_hostname("web\r\n1");
  REQUIRE_FALSE(host);
  CHECK(host.error().message() == "--hostname 'web\\x0d\\x0a1': use letters, digits, '-' and '.' (RFC 1123)");
}
