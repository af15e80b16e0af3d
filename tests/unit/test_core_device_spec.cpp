// --disk option parsing: good values and every kind of malformed one.
#include <doctest/doctest.h>

#include "vmm/cli/device_spec.hpp"

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

  for (const char* bad : {"", "x.img", "path=", "=x", "path=a,path=b", "path=a,readonly=maybe", "path=a,color=red",
                          "readonly=on", "path=a,,id=b", "path=a,id=123456789012345678901", "path=a,"}) {
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
  for (const char* bad : {"", "tap0", "tap=", "mac=52:54:00:12:34:56", "tap=a,tap=b", "tap=a,vhost=on"}) {
    auto r = vmm::parse_net_spec(bad);
    INFO(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().message().starts_with("--net"));
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
