// Helpers for the unit tests that run a few bytes of real-mode guest code on the real /dev/kvm.
// Without a usable /dev/kvm (a VM without nested virtualisation) they skip: CTest sees the marker
// (SKIP_REGULAR_EXPRESSION). The nested lane runs each of them in L1, which has one
// (tests/linux/unit-tests.sh, linux.unit_tests).
#pragma once

#include <doctest/doctest.h>
#include <linux/kvm.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>

#include "vmm/kvm.hpp"
#include "vmm/vcpu.hpp"

namespace vmm::test {

/// True, with the skip marker printed, where /dev/kvm cannot be used.
inline bool kvm_missing() {
  if (::access(Kvm::default_device().c_str(), R_OK | W_OK) == 0) return false;
  std::printf("VMM_SKIP: %s is not usable on this machine\n", Kvm::default_device().c_str());
  return true;
}

inline Kvm open_kvm() {
  auto k = Kvm::open(Kvm::default_device());
  REQUIRE_MESSAGE(k, (k ? "" : k.error().message()));
  return std::move(*k);
}

/// Puts `vcpu` in real mode at CS=0, IP=`code`.
inline void enter_real_mode(Vcpu& vcpu, uint64_t code) {
  auto sregs = vcpu.get_sregs();
  REQUIRE(sregs);
  sregs->cs.base = 0;
  sregs->cs.selector = 0;
  REQUIRE(vcpu.set_sregs(*sregs));
  kvm_regs regs{};
  regs.rip = code;
  regs.rflags = 2;
  REQUIRE(vcpu.set_regs(regs));
}

}  // namespace vmm::test
