// The io_uring event loop and raw disk images: round trips against host files, many requests in
// flight, flush, discard and write-zeroes, read-only images, bad ranges and bad files.
#include <doctest/doctest.h>
#include <fmt/core.h>

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <atomic>
#include <fstream>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "disk/image.hpp"
#include "failfs_mount.hpp"
#include "test_boot_helpers.hpp"
#include "temp_dir.hpp"
#include "test_device_helpers.hpp"
#include "vmm/base/event_loop.hpp"

namespace {

using boot_test::Bytes;
using boot_test::TempFile;
using vmm::EventLoop;
using namespace std::chrono_literals;

std::unique_ptr<EventLoop> make_loop() {
  auto loop = EventLoop::create();
  REQUIRE_MESSAGE(loop, loop.error().message());
  return std::move(*loop);
}

Bytes pattern(size_t n, uint8_t seed) {
  Bytes b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(i * 7 + seed + (i >> 9));
  return b;
}


// Runs the loop until `pending` reaches zero (bounded).
void drain(EventLoop& loop, const int& pending) {
  for (int i = 0; i < 1000 && pending > 0; ++i) REQUIRE(loop.run_once(100ms));
  REQUIRE(pending == 0);
}

iovec iov(Bytes& b, size_t off, size_t len) { return iovec{b.data() + off, len}; }

/// Reads an eventfd until it is empty (a watch's callback: its poll says so once).
void drain_fd(int fd) {
  uint64_t v;
  while (::read(fd, &v, sizeof v) > 0) {
  }
}

}  // namespace

TEST_CASE("event loop: watches fire on readiness, unwatch stops them, stop() ends run()") {
  auto loop = make_loop();
  vmm::Fd efd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  REQUIRE(efd);
  int fired = 0;
  auto id = loop->watch(efd.get(), vmm::EventLoop::WatchKind::Internal, [&] {
    uint64_t v;
    while (::read(efd.get(), &v, sizeof v) > 0) {
    }
    ++fired;
  });
  REQUIRE(id);
  CHECK(*loop->run_once(20ms) == 0);  // nothing ready: times out
  const uint64_t one = 1;
  for (int round = 1; round <= 3; ++round) {
    REQUIRE(::write(efd.get(), &one, sizeof one) == 8);
    for (int i = 0; i < 50 && fired < round; ++i) REQUIRE(loop->run_once(100ms));
    CHECK(fired == round);
  }
  loop->unwatch(*id);
  REQUIRE(loop->run_once(50ms));
  REQUIRE(::write(efd.get(), &one, sizeof one) == 8);
  REQUIRE(loop->run_once(50ms));
  CHECK(fired == 3);

  std::thread stopper([&] {
    std::this_thread::sleep_for(20ms);
    loop->stop();
  });
  CHECK(loop->run());
  stopper.join();
}

// While the machine is paused, whoever drives its loop (a snapshot reading its disks) must not let a
// device write guest memory or raise an interrupt: the devices' watches wait, the loop's own run.
TEST_CASE("event loop: devices' watches held wait until the hold ends, the loop's own run") {
  auto loop = make_loop();
  vmm::Fd dev(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)), own(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  REQUIRE(dev);
  REQUIRE(own);
  int fired_dev = 0, fired_own = 0;
  REQUIRE(loop->watch(dev.get(), vmm::EventLoop::WatchKind::Device, [&] { drain_fd(dev.get()), ++fired_dev; }));
  REQUIRE(loop->watch(own.get(), vmm::EventLoop::WatchKind::Internal, [&] { drain_fd(own.get()), ++fired_own; }));
  REQUIRE(loop->run_once(0ms));  // armed
  const uint64_t one = 1;
  loop->hold_devices(true);
  REQUIRE(::write(dev.get(), &one, sizeof one) == 8);
  REQUIRE(::write(own.get(), &one, sizeof one) == 8);
  for (int i = 0; i < 50 && fired_own == 0; ++i) REQUIRE(loop->run_once(100ms));
  CHECK(fired_own == 1);
  for (int i = 0; i < 3; ++i) REQUIRE(loop->run_once(20ms));
  CHECK(fired_dev == 0);
  // Released: the readiness that came while held is served at the next run, once (the multishot
  // poll does not say it again).
  loop->hold_devices(false);
  REQUIRE(loop->run_once(0ms));
  CHECK(fired_dev == 1);
  REQUIRE(loop->run_once(20ms));
  CHECK(fired_dev == 1);
  REQUIRE(::write(dev.get(), &one, sizeof one) == 8);
  for (int i = 0; i < 50 && fired_dev < 2; ++i) REQUIRE(loop->run_once(100ms));
  CHECK(fired_dev == 2);
}

// A thread that ran the loop releases it before it ends (Machine's I/O thread does): its watches'
// polls are cancelled, and armed again by whichever thread runs the loop next; a watch removed
// while disarmed is freed at once.
TEST_CASE("event loop: a thread's watches released before it ends are armed again by the next") {
  auto loop = make_loop();
  vmm::Fd a(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)), b(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  REQUIRE(a);
  REQUIRE(b);
  int fired_a = 0, fired_b = 0;
  REQUIRE(loop->watch(a.get(), vmm::EventLoop::WatchKind::Internal, [&] { drain_fd(a.get()), ++fired_a; }));
  auto wb = loop->watch(b.get(), vmm::EventLoop::WatchKind::Internal, [&] { drain_fd(b.get()), ++fired_b; });
  REQUIRE(wb);
  const uint64_t one = 1;
  for (int round = 1; round <= 3; ++round) {
    bool ok = true;
    std::thread t([&] {
      ok = ok && loop->run_once(10ms).has_value();  // submits the polls: this thread's requests
      ok = ok && ::write(a.get(), &one, sizeof one) == 8;
      for (int i = 0; i < 50 && fired_a < 2 * round - 1; ++i) ok = ok && loop->run_once(100ms).has_value();
      loop->release_thread();
    });
    t.join();
    CHECK(ok);
    CHECK(fired_a == 2 * round - 1);
    // Released: nothing of the ended thread's is in the kernel; this thread's run_once arms again.
    REQUIRE(::write(a.get(), &one, sizeof one) == 8);
    for (int i = 0; i < 50 && fired_a < 2 * round; ++i) REQUIRE(loop->run_once(100ms));
    CHECK(fired_a == 2 * round);
    CHECK(fired_b == 0);
    if (round == 2) {
      // Disarmed by a release and removed before anything armed it again: gone for good.
      std::thread u([&] {
        (void)loop->run_once(0ms);
        loop->release_thread();
      });
      u.join();
      loop->unwatch(*wb);
    }
  }
  REQUIRE(::write(b.get(), &one, sizeof one) == 8);
  REQUIRE(loop->run_once(50ms));
  CHECK(fired_b == 0);
}

// What a machine's pause relies on (Machine::quiesce parks its I/O thread rather than ending it):
// requests the I/O thread submitted (a watch, a read) complete for another thread that drives the
// loop while the I/O thread waits out of it, and the I/O thread runs the loop again afterwards.
TEST_CASE("event loop: parked by one thread, driven by another, run again by the first") {
  auto loop = make_loop();
  const Bytes data = pattern(1 << 16, 3);
  TempFile f(data, "vmm-loop-park");
  auto img = vmm::disk::open_image(*loop, {.path = f.path()});
  REQUIRE_MESSAGE(img, img.error().message());
  vmm::Fd efd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  REQUIRE(efd);
  std::atomic<int> fired = 0;
  REQUIRE(loop->watch(efd.get(), vmm::EventLoop::WatchKind::Internal, [&] {
    uint64_t v;
    while (::read(efd.get(), &v, sizeof v) > 0) {
    }
    ++fired;
  }));
  std::mutex mu;
  std::condition_variable cv;
  enum { Run, Park, End } want = Run;
  bool parked = false;
  std::atomic<bool> io_failed = false;  // doctest's assertions belong to the test's thread
  std::thread io([&] {
    for (;;) {
      if (!loop->run()) io_failed = true;
      std::unique_lock lock(mu);
      parked = true;
      cv.notify_all();
      cv.wait(lock, [&] { return want != Park; });
      if (want == End) return;
      parked = false;
    }
  });
  auto park = [&] {
    std::unique_lock lock(mu);
    want = Park;
    loop->stop();
    cv.wait(lock, [&] { return parked; });
  };
  auto wake = [&] {
    std::lock_guard lock(mu);
    want = Run;
    cv.notify_all();
  };
  const uint64_t one = 1;
  for (int round = 0; round < 3; ++round) {
    // On the I/O thread: the watch (armed there) fires; a read is submitted there.
    const int before = fired;
    REQUIRE(::write(efd.get(), &one, sizeof one) == 8);
    for (int i = 0; i < 500 && fired == before; ++i) std::this_thread::sleep_for(1ms);
    REQUIRE(fired == before + 1);
    std::atomic<int> pending = 0;
    Bytes got(4096);
    const iovec v{.iov_base = got.data(), .iov_len = got.size()};
    park();
    // Parked: this thread drives the loop; the I/O thread's watch and a read submitted now complete here.
    pending = 1;
    int32_t res = -1;
    REQUIRE((*img)->read(4096 * static_cast<uint64_t>(round + 1), std::span(&v, 1), [&](int32_t r) { res = r, --pending; }));
    REQUIRE(::write(efd.get(), &one, sizeof one) == 8);
    for (int i = 0; i < 100 && (pending > 0 || fired == before + 1); ++i) REQUIRE(loop->run_once(100ms));
    CHECK(pending == 0);
    CHECK(res == 4096);
    CHECK(Bytes(got.begin(), got.end()) == Bytes(data.begin() + 4096 * (round + 1), data.begin() + 4096 * (round + 2)));
    CHECK(fired == before + 2);
    wake();
  }
  {
    std::lock_guard lock(mu);
    want = End;
    loop->stop();
    cv.notify_all();
  }
  io.join();
  CHECK_FALSE(io_failed);
}

TEST_CASE("disk: raw image round trip, scattered buffers, many requests in flight, flush") {
  const Bytes initial = pattern(1 << 20, 1);
  TempFile f(initial, "vmm-disk-test");
  auto loop = make_loop();
  auto img = vmm::disk::open_image(*loop, {.path = f.path()});
  REQUIRE_MESSAGE(img, img.error().message());
  CHECK((*img)->size() == initial.size());
  CHECK_FALSE((*img)->read_only());

  // A read into two buffers.
  Bytes a(100), b(412);
  const std::array<iovec, 2> rd = {iov(a, 0, 100), iov(b, 0, 412)};
  int pending = 1;
  int32_t got = -1;
  REQUIRE((*img)->read(4096, rd, [&](int32_t r) { got = r, --pending; }));
  drain(*loop, pending);
  CHECK(got == 512);
  CHECK(Bytes(a.begin(), a.end()) == Bytes(initial.begin() + 4096, initial.begin() + 4196));
  CHECK(Bytes(b.begin(), b.end()) == Bytes(initial.begin() + 4196, initial.begin() + 4608));

  // 64 writes in flight at once, then one flush.
  std::vector<Bytes> bufs;
  std::vector<iovec> vecs;
  for (int i = 0; i < 64; ++i) bufs.push_back(pattern(4096, static_cast<uint8_t>(100 + i)));
  for (auto& buf : bufs) vecs.push_back(iov(buf, 0, buf.size()));
  pending = 64;
  int ok = 0;
  for (int i = 0; i < 64; ++i) {
    REQUIRE((*img)->write(static_cast<uint64_t>(i) * 8192, std::span(&vecs[i], 1), [&](int32_t r) {
      ok += r == 4096;
      --pending;
    }));
  }
  CHECK(loop->in_flight() == 64);
  drain(*loop, pending);
  CHECK(ok == 64);
  pending = 1;
  got = -1;
  REQUIRE((*img)->flush([&](int32_t r) { got = r, --pending; }));
  drain(*loop, pending);
  CHECK(got == 0);
  for (int i = 0; i < 64; i += 9) CHECK(device_test::file_bytes(f.path(), static_cast<uint64_t>(i) * 8192, 4096) == bufs[i]);
  CHECK(device_test::file_bytes(f.path(), 4096, 4096) == Bytes(initial.begin() + 4096, initial.begin() + 8192));
}

TEST_CASE("disk: once a raw image's fdatasync has failed, no flush succeeds again, and reads and writes go on") {
  // The kernel reports a write-back error to one fdatasync only and may drop the pages it could not
  // write: a later flush that succeeded would call durable what may be lost. failfs makes the
  // file system's fsync fail as a disk's failed write-back does, through io_uring as in a VM.
  if (auto why = vmm::test::FailFs::unavailable(); !why.empty()) {
    MESSAGE("VMM_SKIP: " << why);
    return;
  }
  vmm::test::TempDir dir("vmm-failfs");
  vmm::test::FailFs fs(dir.path);
  {
    std::ofstream(fs.backing() / "disk.img", std::ios::binary)
        .write(reinterpret_cast<const char*>(pattern(1 << 20, 5).data()), 1 << 20);
  }
  auto loop = make_loop();
  auto img = vmm::disk::open_image(*loop, {.path = fs.mnt() / "disk.img"});
  REQUIRE_MESSAGE(img, img.error().message());
  int pending = 0;
  int32_t got = 1;
  auto flush = [&]() -> vmm::Result<> {
    got = 1;
    pending = 1;
    auto r = (*img)->flush([&](int32_t res) { got = res, --pending; });
    if (r) drain(*loop, pending);
    return r;
  };
  Bytes data = pattern(4096, 9);
  const iovec v = iov(data, 0, data.size());
  auto write_at = [&](uint64_t offset) {
    pending = 1;
    got = 1;
    REQUIRE((*img)->write(offset, std::span(&v, 1), [&](int32_t res) { got = res, --pending; }));
    drain(*loop, pending);
    CHECK(got == 4096);
  };
  write_at(0);
  REQUIRE(flush());
  CHECK(got == 0);  // the file system works

  write_at(8192);
  fs.fail_next_fsyncs(1);
  REQUIRE(flush());  // submitted; the kernel's answer is the error
  CHECK(got == -EIO);
  // The file system would now succeed (failfs failed one fsync only): the image refuses anyway,
  // without asking it, and says why.
  for (int i = 0; i < 2; ++i) {
    auto again = flush();
    REQUIRE_FALSE(again);
    CHECK(again.error().message().find("an earlier flush failed (Input/output error)") != std::string::npos);
    CHECK(again.error().message().find("disk.img") != std::string::npos);
  }
  CHECK(fs.fsync_log() == "ok disk.img\nEIO disk.img\n");
  // Reads and writes go on; what was written is what is read.
  write_at(16384);
  Bytes back(4096);
  const iovec rv = iov(back, 0, back.size());
  pending = 1;
  REQUIRE((*img)->read(8192, std::span(&rv, 1), [&](int32_t res) { got = res, --pending; }));
  drain(*loop, pending);
  CHECK(got == 4096);
  CHECK(back == data);
  img->reset();
}

TEST_CASE("disk: write-zeroes on a file system without ZERO_RANGE (tmpfs) writes zeroes, not an I/O error") {
  // A memfd: shmem as tmpfs is, without /dev/shm's size limit or a file left behind.
  vmm::Fd mem(::memfd_create("vmm-disk-test", MFD_CLOEXEC));
  REQUIRE(mem);
  const std::filesystem::path path = fmt::format("/proc/self/fd/{}", mem.get());
  constexpr uint64_t kSize = 80ull << 20;  // more than one 64 MiB write of zeroes
  const Bytes chunk = pattern(1 << 20, 9);
  for (uint64_t i = 0; i < kSize >> 20; ++i) REQUIRE(::pwrite(mem.get(), chunk.data(), chunk.size(), static_cast<off_t>(i << 20)) == 1 << 20);
  if (::fallocate(mem.get(), FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 0, 4096) == 0 || errno != EOPNOTSUPP) {
    MESSAGE("VMM_SKIP: shmem has ZERO_RANGE on this kernel");
    return;
  }
  auto loop = make_loop();
  auto img = vmm::disk::open_image(*loop, {.path = path});
  REQUIRE_MESSAGE(img, img.error().message());
  const uint64_t at = (1 << 20) + 512, len = 70ull << 20;
  for (int round = 0; round < 2; ++round) {  // the second without trying fallocate again
    CAPTURE(round);
    int pending = 1;
    int32_t res = -1;
    REQUIRE((*img)->write_zeroes(at + static_cast<uint64_t>(round) * 4096, len, false, [&](int32_t r) { res = r, --pending; }));
    drain(*loop, pending);
    CHECK(res == 0);
  }
  CHECK(device_test::file_bytes(path, at, len + 4096) == Bytes(len + 4096, 0));
  CHECK(device_test::file_bytes(path, 0, 1 << 20) == chunk);
  CHECK(device_test::file_bytes(path, 1 << 20, 512) == Bytes(chunk.begin(), chunk.begin() + 512));
  const uint64_t end = at + len + 4096;
  CHECK(device_test::file_bytes(path, end, 4096) == Bytes(chunk.begin() + static_cast<long>(end % (1 << 20)), chunk.begin() + static_cast<long>(end % (1 << 20)) + 4096));
  struct stat st {};
  REQUIRE(::fstat(mem.get(), &st) == 0);
  CHECK(static_cast<uint64_t>(st.st_size) == kSize);
  // Answered without I/O (zero bytes, the mode known missing): still through the loop, never
  // inside the call, whose caller (the device) holds a lock the completion takes (a deadlock).
  bool in_call = true, inside = false;
  int pending = 1;
  int32_t res = -1;
  REQUIRE((*img)->write_zeroes(4096, 0, false, [&](int32_t r) { inside = in_call, res = r, --pending; }));
  in_call = false;
  drain(*loop, pending);
  CHECK_FALSE(inside);
  CHECK(res == 0);
  // Discard (PUNCH_HOLE, which shmem has) still punches.
  pending = 1;
  REQUIRE((*img)->discard(0, 1 << 20, [&](int32_t r) { res = r, --pending; }));
  drain(*loop, pending);
  CHECK(res == 0);
  CHECK(device_test::file_bytes(path, 0, 1 << 20) == Bytes(1 << 20, 0));
}

TEST_CASE("disk: discard punches a hole, write-zeroes zeroes, the size never changes") {
  TempFile f(pattern(1 << 20, 3), "vmm-disk-test");
  auto loop = make_loop();
  auto img = vmm::disk::open_image(*loop, {.path = f.path()});
  REQUIRE(img);
  struct stat before {};
  REQUIRE(::stat(f.path().c_str(), &before) == 0);
  int pending = 2;
  int32_t r1 = -1, r2 = -1;
  REQUIRE((*img)->discard(256 << 10, 512 << 10, [&](int32_t r) { r1 = r, --pending; }));
  REQUIRE((*img)->write_zeroes(4096, 4096, false, [&](int32_t r) { r2 = r, --pending; }));
  drain(*loop, pending);
  CHECK(r1 == 0);
  CHECK(r2 == 0);
  struct stat after {};
  REQUIRE(::stat(f.path().c_str(), &after) == 0);
  CHECK(after.st_size == before.st_size);
  CHECK(after.st_blocks < before.st_blocks);  // the hole released space
  CHECK(device_test::file_bytes(f.path(), 256 << 10, 512 << 10) == Bytes(512 << 10, 0));
  CHECK(device_test::file_bytes(f.path(), 4096, 4096) == Bytes(4096, 0));
  CHECK(device_test::file_bytes(f.path(), 0, 4096) == Bytes(pattern(4096, 3)));

  // Past the end: refused before anything reaches the file.
  Bytes buf(512);
  const iovec v = iov(buf, 0, 512);
  CHECK_FALSE((*img)->write((1 << 20) - 511, std::span(&v, 1), [](int32_t) {}));
  CHECK_FALSE((*img)->read(1 << 20 | 1, std::span(&v, 1), [](int32_t) {}));
  CHECK_FALSE((*img)->discard(~0ull - 1, 4, [](int32_t) {}));
  CHECK_FALSE((*img)->write_zeroes(1 << 19, (1 << 19) + 1, true, [](int32_t) {}));
  CHECK((*img)->read(1 << 20, std::span<const iovec>(), [](int32_t) {}));  // empty, at the end: fine
  CHECK(loop->in_flight() == 1);
  pending = 1;
  REQUIRE((*img)->flush([&](int32_t) { --pending; }));
  for (int i = 0; i < 100 && loop->in_flight() > 0; ++i) REQUIRE(loop->run_once(100ms));
  const Bytes full = pattern(1 << 20, 3);
  CHECK(device_test::file_bytes(f.path(), (1 << 20) - 512, 512) == Bytes(full.end() - 512, full.end()));
}

TEST_CASE("disk: read-only images refuse modification, locks keep writers apart") {
  TempFile f(pattern(64 << 10, 5), "vmm-disk-test");
  auto loop = make_loop();
  {
    auto ro = vmm::disk::open_image(*loop, {.path = f.path(), .read_only = true});
    REQUIRE(ro);
    CHECK((*ro)->read_only());
    Bytes buf(512);
    const iovec v = iov(buf, 0, 512);
    auto w = (*ro)->write(0, std::span(&v, 1), [](int32_t) {});
    REQUIRE_FALSE(w);
    CHECK(w.error().message().find("read-only") != std::string::npos);
    CHECK_FALSE((*ro)->discard(0, 512, [](int32_t) {}));
    CHECK_FALSE((*ro)->write_zeroes(0, 512, false, [](int32_t) {}));
    // Readers share; a writer is refused while they hold the file.
    auto ro2 = vmm::disk::open_image(*loop, {.path = f.path(), .read_only = true});
    CHECK(ro2);
    auto rw = vmm::disk::open_image(*loop, {.path = f.path()});
    REQUIRE_FALSE(rw);
    CHECK(rw.error().message().find("locked") != std::string::npos);
  }
  auto rw = vmm::disk::open_image(*loop, {.path = f.path()});
  REQUIRE(rw);
  auto rw2 = vmm::disk::open_image(*loop, {.path = f.path()});
  CHECK_FALSE(rw2);
}

namespace {
// A command's exit status and output (stdout and stderr).
std::pair<int, std::string> run_command(const std::string& command) {
  std::string out;
  FILE* p = ::popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return {-1, out};
  char buf[512];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  const int st = ::pclose(p);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

// An open-file-description lock request of one byte: `type` at `at`.
struct flock one_byte(short type, off_t at) {
  struct flock l {};
  l.l_type = type;
  l.l_whence = SEEK_SET;
  l.l_start = at;
  l.l_len = 1;
  return l;
}

// Takes QEMU's byte locks (as /proc/locks shows QEMU 7.2 holding them) on a file of its own.
struct QemuLike {
  vmm::Fd fd;
  QemuLike(const std::filesystem::path& path, std::initializer_list<off_t> bytes) : fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    REQUIRE(fd);
    for (off_t b : bytes) {
      struct flock l = one_byte(F_RDLCK, b);
      REQUIRE(::fcntl(fd.get(), F_OFD_SETLK, &l) == 0);
    }
  }
};

bool byte_locked(const std::filesystem::path& path, off_t at) {
  vmm::Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  struct flock l = one_byte(F_WRLCK, at);
  REQUIRE(::fcntl(fd.get(), F_OFD_GETLK, &l) == 0);
  return l.l_type != F_UNLCK;
}
}  // namespace

TEST_CASE("disk: images are locked as QEMU locks them, so QEMU and qemu-img see ours and we see theirs") {
  TempFile f(pattern(64 << 10, 5), "vmm-disk-test");
  const std::string path = f.path().string();
  auto loop = make_loop();
  // QEMU writing it (consistent read, write, resize held; write and resize not shared): refused either way.
  {
    QemuLike qemu(f.path(), {100, 101, 103, 201, 203});
    for (bool ro : {true, false}) {
      auto img = vmm::disk::open_image(*loop, {.path = f.path(), .read_only = ro});
      REQUIRE_FALSE(img);
      CHECK(img.error().message() == path + ": locked by another process (QEMU or qemu-img has it open for write)");
    }
  }
  // QEMU reading it (write and resize not shared): we read along, and may not write.
  {
    QemuLike qemu(f.path(), {100, 201, 203});
    CHECK(vmm::disk::open_image(*loop, {.path = f.path(), .read_only = true}));
    auto rw = vmm::disk::open_image(*loop, {.path = f.path()});
    REQUIRE_FALSE(rw);
    CHECK(rw.error().message() == path + ": locked by another process (QEMU or qemu-img has it open, not sharing write)");
    // A refusal holds nothing: neither flock nor byte locks.
    CHECK_FALSE(byte_locked(f.path(), 101));
  }
  {
    auto rw = vmm::disk::open_image(*loop, {.path = f.path()});
    REQUIRE(rw);
    CHECK(byte_locked(f.path(), 101));
    CHECK(byte_locked(f.path(), 201));
  }
  // Released when the image goes, not when io_uring lets go of the file.
  CHECK_FALSE(byte_locked(f.path(), 100));
  CHECK_FALSE(byte_locked(f.path(), 201));
  if (run_command("qemu-io --version").first != 0) {
    MESSAGE("VMM_SKIP: qemu-io is missing (the byte locks were checked without it)");
    return;
  }
  const std::string write = "qemu-io -f raw -c 'write -P 7 0 512' '" + path + "'";
  {
    auto rw = vmm::disk::open_image(*loop, {.path = f.path()});
    REQUIRE(rw);
    auto [st, out] = run_command(write);
    CHECK(st != 0);
    CHECK(out.find("Failed to get \"write\" lock") != std::string::npos);
    CHECK(pattern(64 << 10, 5) == device_test::file_bytes(f.path(), 0, 64 << 10));
  }
  {  // a qcow2 image a VM writes: qemu-img info refuses, unless told to look without locks (-U)
    vmm::test::TempDir d("vmm-disk-test");
    const std::string q = (d / "a.qcow2").string();
    REQUIRE(run_command("qemu-img create -q -f qcow2 '" + q + "' 1M").first == 0);
    auto rw = vmm::disk::open_image(*loop, {.path = q});
    REQUIRE(rw);
    auto [st, out] = run_command("qemu-img info '" + q + "'");
    CHECK(st != 0);
    CHECK(out.find("Failed to get shared \"write\" lock") != std::string::npos);
    CHECK(run_command("qemu-img info -U '" + q + "'").first == 0);
  }
  {
    auto ro = vmm::disk::open_image(*loop, {.path = f.path(), .read_only = true});
    REQUIRE(ro);
    CHECK(run_command("qemu-io -r -f raw -c 'read 0 512' '" + path + "'").first == 0);  // readers share
    auto [st, out] = run_command(write);
    CHECK(st != 0);
    CHECK(out.find("Failed to get \"write\" lock") != std::string::npos);
    CHECK(pattern(64 << 10, 5) == device_test::file_bytes(f.path(), 0, 64 << 10));
  }
  CHECK(run_command(write).first == 0);  // and nothing is left locked once the images are gone
}

TEST_CASE("disk: bad files are clear errors naming the file") {
  auto loop = make_loop();
  auto missing = vmm::disk::open_image(*loop, {.path = "/nonexistent/vmm-disk.img"});
  REQUIRE_FALSE(missing);
  CHECK(missing.error().message().find("/nonexistent/vmm-disk.img: cannot open") == 0);
  auto dir = vmm::disk::open_image(*loop, {.path = "/tmp", .read_only = true});
  REQUIRE_FALSE(dir);
  CHECK(dir.error().message().find("/tmp: ") == 0);
  Bytes q = {'Q', 'F', 'I', 0xfb, 0, 0, 0, 3};
  q.resize(4096);
  TempFile qcow(q, "vmm-disk-test");
  auto qc = vmm::disk::open_image(*loop, {.path = qcow.path()});
  REQUIRE_FALSE(qc);
  // A qcow2 header is parsed as one (never served as raw): this one has no valid cluster size.
  CHECK(qc.error().message().find(qcow.path().string() + ": qcow2 header: cluster_bits 0") == 0);
  auto chr = vmm::disk::open_image(*loop, {.path = "/dev/null"});
  REQUIRE_FALSE(chr);
  CHECK(chr.error().message() == "/dev/null: not a regular file or block device");
}

TEST_CASE("disk: range and buffer arithmetic is overflow-safe") {
  using vmm::disk::check_range;
  CHECK(check_range(0, 0, 0));
  CHECK(check_range(0, 512, 512));
  CHECK(check_range(512, 0, 512));
  CHECK_FALSE(check_range(513, 0, 512));
  CHECK_FALSE(check_range(1, 512, 512));
  CHECK_FALSE(check_range(~0ull, 2, ~0ull));
  CHECK_FALSE(check_range(2, ~0ull, ~0ull));
  std::array<iovec, 2> big = {iovec{nullptr, ~size_t{0}}, iovec{nullptr, 2}};
  CHECK_FALSE(vmm::disk::iov_bytes(big));
  std::array<iovec, 2> ok = {iovec{nullptr, 3}, iovec{nullptr, 4}};
  CHECK(*vmm::disk::iov_bytes(ok) == 7);
  std::vector<iovec> many(IOV_MAX + 1, iovec{nullptr, 1});
  CHECK_FALSE(vmm::disk::iov_bytes(many));
}

// A guest that writes the qcow2 magic into its raw disk's first sector: were the format guessed at
// the next open, the image would be read as qcow2, with a header (and a backing file, a host file
// of the guest's choosing) that the guest wrote. A raw image whose format was guessed refuses such
// a write, as QEMU's probed raw images do; one opened as raw explicitly takes it and stays raw.
TEST_CASE("disk: a raw image whose format was guessed refuses to be made to look like qcow2") {
  auto loop = make_loop();
  TempFile f(Bytes(1 << 16, 0), "vmm-disk-probe");
  Bytes magic(512, 0);
  magic[0] = 'Q', magic[1] = 'F', magic[2] = 'I', magic[3] = 0xfb;
  int pending = 0;
  int32_t result = 0;
  auto done = [&](int32_t r) {
    result = r;
    --pending;
  };
  {
    auto img = vmm::disk::open_image(*loop, {.path = f.path()});
    REQUIRE_MESSAGE(img, img.error().message());
    CHECK(std::string((*img)->format()) == "raw");
    // A copy (a fork's child's disk) is reopened guessing again, so guarded the same way.
    CHECK((*img)->reopen_format().empty());
    // The magic at the start: refused, synchronously, nothing written.
    iovec whole = iov(magic, 0, 512);
    auto r = (*img)->write(0, {&whole, 1}, done);
    REQUIRE_FALSE(r);
    CHECK(r.error().message().find("look like a qcow2 image") != std::string::npos);
    // Split over buffers of 1, 2 and the rest: the same four bytes, the same answer.
    std::array<iovec, 3> split = {iov(magic, 0, 1), iov(magic, 1, 2), iov(magic, 3, 509)};
    CHECK_FALSE((*img)->write(0, split, done));
    // A write over only part of the first four bytes is refused (whole sectors are not).
    iovec part = iov(magic, 0, 2);
    CHECK_FALSE((*img)->write(2, {&part, 1}, done));
    CHECK_FALSE((*img)->write(0, {&part, 1}, done));
    // The magic elsewhere is data like any other.
    ++pending;
    REQUIRE((*img)->write(512, {&whole, 1}, done));
    drain(*loop, pending);
    CHECK(result == 512);
    // Other data at the start is written; from a copy of its first bytes made at the request (the
    // guest's buffer changing before the write completes changes nothing of them).
    Bytes data = pattern(512, 9);
    iovec d[2] = {iov(data, 0, 3), iov(data, 3, 509)};
    ++pending;
    REQUIRE((*img)->write(0, d, done));
    std::copy(magic.begin(), magic.begin() + 4, data.begin());
    drain(*loop, pending);
    CHECK(result == 512);
    const auto head = device_test::file_bytes(f.path(), 0, 4);
    const Bytes want = pattern(512, 9);
    CHECK(head == std::vector<uint8_t>(want.begin(), want.begin() + 4));
    CHECK(device_test::file_bytes(f.path(), 512, 4) == std::vector<uint8_t>(magic.begin(), magic.begin() + 4));
  }
  {
    // Its format given: raw, and the magic may be written.
    auto img = vmm::disk::open_image(*loop, {.path = f.path(), .format = "raw"});
    REQUIRE_MESSAGE(img, img.error().message());
    CHECK((*img)->reopen_format() == "raw");  // and a copy is raw too, whatever its first bytes
    iovec whole = iov(magic, 0, 512);
    ++pending;
    REQUIRE((*img)->write(0, {&whole, 1}, done));
    drain(*loop, pending);
    CHECK(result == 512);
  }
  // Opened as raw again it is still raw (its size the file's); guessing now finds a (broken) qcow2
  // header, and a qcow2 format given for a raw file is refused.
  auto raw = vmm::disk::open_image(*loop, {.path = f.path(), .read_only = true, .format = "raw"});
  REQUIRE_MESSAGE(raw, raw.error().message());
  CHECK((*raw)->size() == (1u << 16));
  CHECK(std::string((*raw)->format()) == "raw");
  CHECK_FALSE(vmm::disk::open_image(*loop, {.path = f.path(), .read_only = true}));
  TempFile plain(Bytes(4096, 1), "vmm-disk-probe");
  auto q = vmm::disk::open_image(*loop, {.path = plain.path(), .read_only = true, .format = "qcow2"});
  REQUIRE_FALSE(q);
  CHECK(q.error().message() == plain.path().string() + ": not a qcow2 image (no qcow2 magic)");
  auto bad = vmm::disk::open_image(*loop, {.path = plain.path(), .read_only = true, .format = "vmdk"});
  REQUIRE_FALSE(bad);
  CHECK(bad.error().message().find("format 'vmdk' is not raw or qcow2") != std::string::npos);
}
