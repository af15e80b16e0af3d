// At a limit on threads (RLIMIT_NPROC, a cgroup's pids.max: a sandbox's or a big fleet's), a thread
// that cannot be made is an error that says so, not std::system_error ending the process in
// std::terminate (what every std::thread of vmm did until 2026-12-05). Each case runs its subject in a
// fork()ed child that can make no thread (tests/unit/child_helpers.hpp).
#include <doctest/doctest.h>

#include <fcntl.h>
#include <stdlib.h>
#include <sys/uio.h>

#include <filesystem>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "child_helpers.hpp"
#include "disk/qcow2.hpp"
#include "disk/qcow2_image.hpp"
#include "temp_dir.hpp"
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
  const vmm::test::TempDir dir("vmm-thread-limit");
  const std::filesystem::path img = dir / "a.qcow2";
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
  CHECK(said.starts_with("cannot start the worker thread of " + img.string() + ": Resource temporarily unavailable"));
}

TEST_CASE("event loop: file requests io_uring cancels for want of a worker thread are done synchronously") {
  // io_uring runs a request it cannot complete inline (a large buffered transfer flagged
  // IOSQE_ASYNC, every fsync) on a worker thread of the submitting task; where none can be made it
  // completes the request with -ECANCELED (seen on 6.1 and 6.18), which a guest saw as an I/O error.
  const vmm::test::TempDir dir("vmm-thread-limit");
  const std::string path = dir / "disk.img";
  const std::string said = test_child::run([&] {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    auto loop = vmm::EventLoop::create();
    if (fd < 0 || !loop) return std::string("cannot set up");
    auto file = (*loop)->register_file(fd);
    if (!file) return file.error().message();
    if (!test_child::forbid_threads()) return std::string("cannot forbid threads");
    std::vector<uint8_t> out(128 << 10), in(out.size());
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<uint8_t>(i * 7 + 3);
    iovec wv{out.data(), out.size()}, rv{in.data(), in.size()};
    int32_t w = 1, s = 1, r = 1, f = 1;
    unsigned pending = 0;
    auto run = [&](vmm::Result<> submitted) {
      if (!submitted) return false;
      for (++pending; pending > 0;) {
        if (auto n = (*loop)->run_once(std::chrono::seconds(10)); !n || *n == 0) return false;
      }
      return true;
    };
    const bool ok = run((*loop)->writev(*file, &wv, 1, 0, [&](int32_t res) { w = res, --pending; })) &&
                    run((*loop)->fdatasync(*file, [&](int32_t res) { s = res, --pending; })) &&
                    run((*loop)->readv(*file, &rv, 1, 0, [&](int32_t res) { r = res, --pending; })) &&
                    run((*loop)->fallocate(*file, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096, [&](int32_t res) { f = res, --pending; }));
    return fmt::format("{} w={} s={} r={} same={} f={} redone={}", ok ? "done" : "stuck", w, s, r, in == out, f,
                       vmm::EventLoop::redone_synchronously() > 0 ? "yes" : "no");
  });
  CHECK(said == "done w=131072 s=0 r=131072 same=true f=0 redone=yes");
}
