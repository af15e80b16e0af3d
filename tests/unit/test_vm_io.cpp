// KvmVmIo's MSI routes on a real KVM VM: a route reaches KVM only when it changed, and a batch (a
// restore setting every MSI-X vector) reaches it once.
#include <doctest/doctest.h>

#include <sys/ioctl.h>

#include <algorithm>

#include "kvm_helpers.hpp"
#include "vmm/vm_io.hpp"

namespace {

using vmm::KvmVmIo;
using vmm::RouteBatch;

/// A VM with an in-kernel irqchip (KVM routes MSIs only with one).
struct IrqchipVm {
  vmm::Kvm kvm = vmm::test::open_kvm();
  vmm::Fd fd;
  IrqchipVm() {
    fd = vmm::Fd(::ioctl(kvm.fd(), KVM_CREATE_VM, 0));
    REQUIRE(fd);
    REQUIRE(::ioctl(fd.get(), KVM_CREATE_IRQCHIP, 0) == 0);
  }
};

const kvm_irq_routing_entry* msi_route(const KvmVmIo& io, uint32_t gsi) {
  static kvm_irq_routing_entry found;
  const auto table = io.routes();
  auto it = std::ranges::find_if(table, [gsi](const auto& e) { return e.gsi == gsi && e.type == KVM_IRQ_ROUTING_MSI; });
  if (it == table.end()) return nullptr;
  found = *it;
  return &found;
}

}  // namespace

TEST_CASE("vm_io: an MSI route reaches KVM when it changes, and a batch of them once") {
  if (vmm::test::kvm_missing()) return;
  IrqchipVm vm;
  KvmVmIo io(vm.fd.get());
  const uint32_t a = KvmVmIo::kFirstMsiGsi, b = a + 1, c = a + 2;

  // A vector never programmed (all zero) needs no route.
  REQUIRE(io.set_msi_route(a, 0, 0));
  CHECK(io.route_commits() == 0);
  CHECK(msi_route(io, a) == nullptr);

  REQUIRE(io.set_msi_route(a, 0xfee00000, 0x4021));
  CHECK(io.route_commits() == 1);
  // The same message again (a driver masking or unmasking the entry): nothing to tell KVM.
  REQUIRE(io.set_msi_route(a, 0xfee00000, 0x4021));
  CHECK(io.route_commits() == 1);
  REQUIRE(io.set_msi_route(a, 0xfee01000, 0x4021));
  CHECK(io.route_commits() == 2);
  // Back to zero once programmed: KVM must hear of it.
  REQUIRE(io.set_msi_route(a, 0, 0));
  CHECK(io.route_commits() == 3);
  REQUIRE(msi_route(io, a) != nullptr);
  CHECK(msi_route(io, a)->u.msi.address_lo == 0);

  SUBCASE("a batch commits once, with every route in it") {
    {
      RouteBatch batch(io);
      REQUIRE(io.set_msi_route(a, 0xfee00000, 0x4031));
      REQUIRE(io.set_msi_route(b, 0xfee00000, 0x4032));
      {
        RouteBatch inner(io);  // holds nest
        REQUIRE(io.set_msi_route(c, 0xfee00000, 0x4033));
        REQUIRE(inner.commit());
      }
      CHECK(io.route_commits() == 3);
      REQUIRE(batch.commit());
    }
    CHECK(io.route_commits() == 4);
    CHECK(msi_route(io, a)->u.msi.data == 0x4031);
    CHECK(msi_route(io, b)->u.msi.data == 0x4032);
    CHECK(msi_route(io, c)->u.msi.data == 0x4033);
    // A batch in which nothing changed commits nothing.
    {
      RouteBatch batch(io);
      REQUIRE(io.set_msi_route(b, 0xfee00000, 0x4032));
      REQUIRE(batch.commit());
    }
    CHECK(io.route_commits() == 4);
  }

  SUBCASE("a batch left early still commits what it holds") {
    {
      RouteBatch batch(io);
      REQUIRE(io.set_msi_route(b, 0xfee00000, 0x4042));
    }
    CHECK(io.route_commits() == 4);
    REQUIRE(io.set_msi_route(c, 0xfee00000, 0x4043));  // not held any more: at once
    CHECK(io.route_commits() == 5);
  }
}

TEST_CASE("vm_io: after a commit KVM refused, the same route is committed again rather than skipped") {
  // KVM's table may then differ from the one kept here: an unchanged message is no proof that KVM
  // has it. (A VM fd that is none: every KVM_SET_GSI_ROUTING fails.)
  KvmVmIo io(-1);
  const uint32_t a = KvmVmIo::kFirstMsiGsi;
  CHECK_FALSE(io.set_msi_route(a, 0xfee00000, 0x4021));
  auto again = io.set_msi_route(a, 0xfee00000, 0x4021);
  REQUIRE_FALSE(again);
  CHECK(again.error().message().find("KVM_SET_GSI_ROUTING") != std::string::npos);
  {
    RouteBatch batch(io);
    REQUIRE(io.set_msi_route(a, 0xfee00000, 0x4021));  // held: committed by the batch
    CHECK_FALSE(batch.commit());
  }
  CHECK(io.route_commits() == 0);
}
