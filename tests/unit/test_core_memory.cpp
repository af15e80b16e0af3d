// GuestMemory: bounds and overflow checks, region layout around the MMIO hole.
#include <doctest/doctest.h>

#include <array>
#include <cstdint>

#include "vmm/base/guest_memory.hpp"
#include "vmm/base/layout.hpp"

using vmm::Gpa;
using vmm::GuestMemory;

TEST_CASE("memory: rejects sizes that are zero or not page multiples") {
  CHECK_FALSE(GuestMemory::anonymous(0).has_value());
  CHECK_FALSE(GuestMemory::anonymous(4095).has_value());
  CHECK(GuestMemory::anonymous(4096).has_value());
}

TEST_CASE("memory: slice bounds at the end of RAM") {
  auto mem = GuestMemory::anonymous(1 << 20);
  REQUIRE(mem);
  CHECK(mem->slice(Gpa(0), 1 << 20));
  CHECK(mem->slice(Gpa((1 << 20) - 1), 1));
  CHECK(mem->slice(Gpa(1 << 20), 0));  // empty range at the end is fine
  CHECK_FALSE(mem->slice(Gpa((1 << 20) - 1), 2));
  CHECK_FALSE(mem->slice(Gpa(1 << 20), 1));
  CHECK_FALSE(mem->slice(Gpa((1 << 20) + 1), 0));
  auto err = mem->slice(Gpa(0x100000), 8);
  REQUIRE_FALSE(err);
  CHECK(err.error().message().find("0x100000") != std::string::npos);
}

TEST_CASE("memory: overflow at the top of the address space") {
  auto mem = GuestMemory::anonymous(1 << 20);
  REQUIRE(mem);
  CHECK_FALSE(mem->slice(Gpa(UINT64_MAX), 1));
  CHECK_FALSE(mem->slice(Gpa(UINT64_MAX - 7), 16));
  CHECK_FALSE(mem->slice(Gpa(16), UINT64_MAX));
  CHECK_FALSE(mem->slice(Gpa(UINT64_MAX), UINT64_MAX));
  CHECK_FALSE(mem->contains(Gpa(1), UINT64_MAX));
}

TEST_CASE("memory: read/write objects round trip and refuse out-of-range") {
  auto mem = GuestMemory::anonymous(64 << 10);
  REQUIRE(mem);
  REQUIRE(mem->write_obj(Gpa(0x1000), uint64_t{0x1122334455667788}));
  auto v = mem->read_obj<uint64_t>(Gpa(0x1000));
  REQUIRE(v);
  CHECK(*v == 0x1122334455667788);
  CHECK_FALSE(mem->write_obj(Gpa((64 << 10) - 4), uint64_t{1}));
  CHECK_FALSE(mem->read_obj<uint64_t>(Gpa((64 << 10) - 4)));
  std::array<uint8_t, 4> bytes{1, 2, 3, 4};
  REQUIRE(mem->write(Gpa(10), bytes));
  REQUIRE(mem->fill_zero(Gpa(11), 2));
  std::array<uint8_t, 4> back{};
  REQUIRE(mem->read(Gpa(10), back));
  CHECK(back == std::array<uint8_t, 4>{1, 0, 0, 4});
}

TEST_CASE("memory: RAM above the MMIO hole moves to 4 GiB") {
  const uint64_t size = vmm::layout::kMmioHoleStart + (64ull << 20);
  auto mem = GuestMemory::anonymous(size);
  REQUIRE(mem);
  REQUIRE(mem->regions().size() == 2);
  CHECK(mem->regions()[0].gpa == 0);
  CHECK(mem->regions()[0].size == vmm::layout::kMmioHoleStart);
  CHECK(mem->regions()[1].gpa == vmm::layout::kMmioHoleEnd);
  CHECK(mem->regions()[1].size == 64ull << 20);
  CHECK(mem->low_end() == vmm::layout::kMmioHoleStart);
  // The hole itself is not RAM, and a range may not span the hole.
  CHECK_FALSE(mem->contains(Gpa(vmm::layout::kMmioHoleStart), 1));
  CHECK_FALSE(mem->contains(Gpa(vmm::layout::kIoapicAddr), 4));
  CHECK_FALSE(mem->contains(Gpa(vmm::layout::kMmioHoleStart - 8), 16));
  CHECK(mem->contains(Gpa(vmm::layout::kMmioHoleEnd), 64ull << 20));
  CHECK_FALSE(mem->contains(Gpa(vmm::layout::kMmioHoleEnd), (64ull << 20) + 1));
  // Both regions are distinct host memory.
  REQUIRE(mem->write_obj(Gpa(vmm::layout::kMmioHoleEnd), uint32_t{0xdeadbeef}));
  CHECK(*mem->read_obj<uint32_t>(Gpa(0)) == 0);
}
