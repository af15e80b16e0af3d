// At a limit on threads (RLIMIT_NPROC, a cgroup's pids.max: a sandbox's or a big fleet's), a thread
// that cannot be made is an error that says so, not std::system_error ending the process in
// std::terminate (what every std::thread of vmm did until 2026-12-05). Each case runs its subject in a
// fork()ed child that can make no thread (tests/unit/child_helpers.hpp).
#include <doctest/doctest.h>

#include <stdlib.h>

#include <filesystem>
#include <string>

#include "child_helpers.hpp"
#include "disk/qcow2.hpp"
#include "disk/qcow2_image.hpp"
#include "vmm/base/event_loop.hpp"
#include "vmm/base/thread.hpp"

TEST_CASE("base: a thread that cannot be made is an error naming it and the limit") {
  // Where threads can be made, it is one.
  auto t = vmm::start_thread("a thread", [] {});
  REQUIRE(t);
  t->join();
  const std::string said = test_child::run([] {
    if (!test_child::forbid_threads()) return std::string("cannot forbid threads");
    auto u = vmm::start_thread("the test's thread", [] {});
    if (u) {
      u->join();
      return std::string("made");
    }
    return u.error().message();
  });
  CHECK(said ==
        "cannot start the test's thread: Resource temporarily unavailable (at the limit on threads and processes: 'ulimit -u', or the "
        "cgroup's pids.max)");
}

TEST_CASE("qcow2: an image whose worker thread cannot be made does not open, with an error") {
  std::string dir = (std::filesystem::temp_directory_path() / "vmm-thread-limit-XXXXXX").string();
  REQUIRE(::mkdtemp(dir.data()) != nullptr);
  const std::filesystem::path img = std::filesystem::path(dir) / "a.qcow2";
  REQUIRE(vmm::disk::Qcow2::create(img, {.size = 1 << 20}));
  const std::string said = test_child::run([&] {
    auto loop = vmm::EventLoop::create();
    if (!loop) return loop.error().message();
    auto q = vmm::disk::Qcow2::open(img, {});
    if (!q) return q.error().message();
    if (!test_child::forbid_threads()) return std::string("cannot forbid threads");
    auto image = vmm::disk::Qcow2Image::create(**loop, std::move(*q));
    if (image) return std::string("opened");
    return image.error().message();
  });
  std::filesystem::remove_all(dir);
  CHECK(said.starts_with("cannot start the worker thread of " + img.string() + ": Resource temporarily unavailable"));
}
