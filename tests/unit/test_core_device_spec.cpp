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

  for (const char* bad : {"", "x.img", "path=", "=x", "path=a,path=b", "path=a,readonly=maybe", "path=a,color=red",
                          "readonly=on", "path=a,,id=b", "path=a,id=123456789012345678901", "path=a,"}) {
    auto r = vmm::parse_disk_spec(bad);
    INFO(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().message().starts_with("--disk"));
    CHECK(r.error().message().find('\n') == std::string::npos);
  }
}
