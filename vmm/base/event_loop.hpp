// The VMM's I/O thread: one io_uring for everything asynchronous — readiness of eventfds (virtio
// notifications through ioeventfd), TAP devices and timers, and disk reads, writes, flushes and
// fallocates on registered files. Completions run callbacks on the thread that runs the loop.
//
// Threading: everything but stop() is called on the loop's thread (or before it starts); device
// code reached from callbacks submits more work freely. Submissions are batched and reach the
// kernel when the loop next waits.
#pragma once

#include <sys/uio.h>

#include <liburing.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "vmm/base/error.hpp"
#include "vmm/base/fd.hpp"

namespace vmm {

class EventLoop {
 public:
  /// An I/O result: bytes transferred (>= 0) or -errno.
  using Done = std::function<void(int32_t result)>;

  /// A ring of `entries` submission slots and a table of `max_files` registered files.
  static Result<std::unique_ptr<EventLoop>> create(unsigned entries = 256, unsigned max_files = 64);
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  /// Puts `fd` in the registered-file table (the fd stays owned by the caller and must outlive its
  /// use); returns its index for the I/O calls below.
  Result<unsigned> register_file(int fd);
  /// Frees a table slot (no I/O on it may be in flight).
  void unregister_file(unsigned index);

  /// Whose readiness a watch waits for: a device's (a guest's notification, a frame on a TAP),
  /// which may write guest memory and raise interrupts, or the loop's own work (a disk worker's
  /// completions, a stop, a child's end).
  enum class WatchKind { Device, Internal };
  /// Runs `on_ready` on the loop thread each time `fd` becomes readable, until unwatch(). The
  /// callback reads or drains the fd itself. Returns an id for unwatch().
  Result<uint64_t> watch(int fd, WatchKind kind, std::function<void()> on_ready);
  void unwatch(uint64_t id);
  /// While held, the devices' watches are not run (the machine is paused: whoever drives the loop
  /// then, a snapshot reading its disks, must not have a device write guest memory or raise an
  /// interrupt); what became ready meanwhile runs at the first run_once() after the hold ends.
  /// Safe from any thread (a flag).
  void hold_devices(bool hold) { holding_devices_.store(hold, std::memory_order_release); }

  // Asynchronous I/O on a registered file; `done` runs once with the result. The iovecs must stay
  // valid until then. Errors here mean the request could not even be queued.
  Result<> readv(unsigned file, const iovec* iov, unsigned count, uint64_t offset, Done done);
  Result<> writev(unsigned file, const iovec* iov, unsigned count, uint64_t offset, Done done);
  /// fdatasync(2) of the file.
  Result<> fdatasync(unsigned file, Done done);
  /// fallocate(2) with `mode` (e.g. FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE).
  Result<> fallocate(unsigned file, int mode, uint64_t offset, uint64_t length, Done done);
  /// `done(result)` from the loop, as a completion: for a request answered without I/O, whose
  /// caller may hold a lock its completion takes (never called back inside the call).
  Result<> complete_later(int32_t result, Done done);

  /// Processes completions until stop() is called.
  Result<> run();
  /// Submits what is queued, waits up to `timeout` (forever if none) for at least one completion,
  /// runs the callbacks of all that are there; returns how many. For tests and simple callers.
  Result<unsigned> run_once(std::optional<std::chrono::milliseconds> timeout);
  /// Makes run() return soon. The only call that is safe from any thread.
  void stop();
  /// Called by a thread that has run the loop before it ends: cancels the watches' polls it armed
  /// and waits for their last completions (at most `timeout`); the next run_once(), on any
  /// thread, arms them again. Otherwise the kernel cancels an ending thread's requests itself,
  /// apparently completing them a tick later: that thread's exit took 4-6 ms here instead of tens
  /// of microseconds (scripts/bench/uring-exit.c).
  void release_thread(std::chrono::milliseconds timeout = std::chrono::milliseconds(100));

  /// A file request that io_uring cancelled without being asked (it found no worker thread to run
  /// it: at a limit on tasks, a cgroup's pids.max) is done again here, synchronously, so that the
  /// guest sees its data read or written rather than an I/O error. How many were, in this process.
  static uint64_t redone_synchronously();

  /// Operations submitted whose completion has not run yet (watches not counted).
  unsigned in_flight() const { return in_flight_; }

 private:
  struct Op;
  struct Watch;
  struct Completion {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
  };
  EventLoop() = default;
  Result<io_uring_sqe*> next_sqe();
  Result<> arm(Watch& w);
  Result<> submit_op(io_uring_sqe* sqe, Op request);
  static int32_t redo(const Op& op);  ///< see redone_synchronously()
  int fd_of(unsigned file) const { return file < files_.size() ? files_[file] : -1; }
  void complete(const Completion& cqe);
  unsigned reap();  ///< runs the completions that are there; returns how many

  io_uring ring_{};
  bool ring_ok_ = false;
  std::vector<int> files_;  // the fd in each registered-file slot, -1 where free
  std::unordered_map<uint64_t, std::unique_ptr<Watch>> watches_;
  uint64_t next_watch_ = 1;
  unsigned in_flight_ = 0;
  unsigned releasing_ = 0;        // watches whose cancelled poll has not completed yet (release_thread)
  std::vector<Watch*> disarmed_;  // active watches to arm again at the next run_once
  Fd stop_fd_;  // eventfd: written by stop()
  bool stopping_ = false;
  std::atomic<bool> holding_devices_ = false;
  bool missed_devices_ = false;  // a device watch became ready while held
};

}  // namespace vmm
