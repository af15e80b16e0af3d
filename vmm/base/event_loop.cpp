#include "vmm/base/event_loop.hpp"

#include <limits.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/uio.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <utility>
#include <vector>

namespace vmm {

// Every submission's user_data points at one of these; a zero user_data is a fire-and-forget
// request (poll removal, cancellation) whose completion is ignored.
struct EventLoop::Op {
  bool is_watch = false;
  Done done;
  // A file request, as the synchronous call that does the same (see redone_synchronously()); the
  // iovecs stay valid until `done` runs, as for the request itself.
  enum class File : uint8_t { None, Read, Write, Sync, Fallocate } file = File::None;
  int fd = -1;
  int mode = 0;  // fallocate
  unsigned count = 0;
  const iovec* iov = nullptr;
  uint64_t offset = 0;
  uint64_t length = 0;  // fallocate
};

struct EventLoop::Watch : EventLoop::Op {
  int fd = -1;
  std::function<void()> on_ready;
  uint64_t id = 0;
  bool active = true;  // false after unwatch(): freed when its last completion arrives
  bool releasing = false;  // its poll is being cancelled by release_thread()
  bool device = false;     // WatchKind::Device
  bool missed = false;     // ready while devices were held: runs once they are not
};

Result<std::unique_ptr<EventLoop>> EventLoop::create(unsigned entries, unsigned max_files) {
  std::unique_ptr<EventLoop> loop(new EventLoop());
  if (int r = io_uring_queue_init(entries, &loop->ring_, 0); r < 0) {
    return fail("io_uring_queue_init({} entries): {}", entries, errno_text(-r));
  }
  loop->ring_ok_ = true;
  // Its rings are not inherited by a fork()ed child (which makes loops of its own): a child could
  // otherwise write into a ring its parent still uses.
  if (int r = io_uring_ring_dontfork(&loop->ring_); r < 0) {
    return fail("io_uring: MADV_DONTFORK of its rings: {}", errno_text(-r));
  }
  if (max_files > 0) {
    if (int r = io_uring_register_files_sparse(&loop->ring_, max_files); r < 0) {
      return fail("io_uring: registering a table of {} files: {}", max_files, errno_text(-r));
    }
    loop->files_.assign(max_files, -1);
  }
  loop->stop_fd_ = Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!loop->stop_fd_) return fail("eventfd: {}", errno_text(errno));
  EventLoop* self = loop.get();
  auto w = loop->watch(loop->stop_fd_.get(), WatchKind::Internal, [self] {
    uint64_t v;
    while (::read(self->stop_fd_.get(), &v, sizeof v) > 0) {
    }
    self->stopping_ = true;
  });
  if (!w) return std::unexpected(w.error());
  return loop;
}

EventLoop::~EventLoop() {
  if (!ring_ok_) return;
  for (Watch* w : std::exchange(disarmed_, {})) watches_.erase(w->id);  // nothing of theirs in flight
  // Cancel what is still in flight and reap it without running callbacks (their owners may be
  // gone); the kernel must be done with every buffer before the memory behind them is freed.
  if (io_uring_sqe* sqe = io_uring_get_sqe(&ring_)) {
    io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);  // every request, not only the first
    io_uring_sqe_set_data64(sqe, 0);
  }
  io_uring_submit(&ring_);
  for (int spins = 0; (in_flight_ > 0 || !watches_.empty()) && spins < 1000; ++spins) {
    __kernel_timespec ts{.tv_sec = 0, .tv_nsec = 1'000'000};
    io_uring_cqe* cqe = nullptr;
    if (io_uring_wait_cqe_timeout(&ring_, &cqe, &ts) < 0 || !cqe) continue;
    auto* op = reinterpret_cast<Op*>(io_uring_cqe_get_data(cqe));
    const bool more = cqe->flags & IORING_CQE_F_MORE;
    io_uring_cqe_seen(&ring_, cqe);
    if (!op || more) continue;
    if (op->is_watch) {
      watches_.erase(static_cast<Watch*>(op)->id);
    } else {
      delete op;
      --in_flight_;
    }
  }
  io_uring_queue_exit(&ring_);
}

Result<unsigned> EventLoop::register_file(int fd) {
  for (unsigned i = 0; i < files_.size(); ++i) {
    if (files_[i] >= 0) continue;
    if (int r = io_uring_register_files_update(&ring_, i, &fd, 1); r < 0) {
      return fail("io_uring: registering fd {}: {}", fd, errno_text(-r));
    }
    files_[i] = fd;
    return i;
  }
  return fail("io_uring: all {} registered-file slots are in use", files_.size());
}

void EventLoop::unregister_file(unsigned index) {
  if (index >= files_.size() || files_[index] < 0) return;
  int none = -1;
  io_uring_register_files_update(&ring_, index, &none, 1);
  files_[index] = -1;
}

Result<io_uring_sqe*> EventLoop::next_sqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  if (!sqe) {
    // The submission queue is full: hand it to the kernel and take a fresh slot.
    if (int r = io_uring_submit(&ring_); r < 0) return fail("io_uring_submit: {}", errno_text(-r));
    sqe = io_uring_get_sqe(&ring_);
  }
  if (!sqe) return fail("io_uring: no submission slot free");
  return sqe;
}

Result<> EventLoop::arm(Watch& w) {
  auto sqe = next_sqe();
  if (!sqe) return std::unexpected(sqe.error());
  io_uring_prep_poll_multishot(*sqe, w.fd, POLLIN);
  io_uring_sqe_set_data(*sqe, &w);
  return {};
}

Result<uint64_t> EventLoop::watch(int fd, WatchKind kind, std::function<void()> on_ready) {
  auto w = std::make_unique<Watch>();
  w->is_watch = true;
  w->device = kind == WatchKind::Device;
  w->fd = fd;
  w->on_ready = std::move(on_ready);
  w->id = next_watch_++;
  if (auto r = arm(*w); !r) return std::unexpected(r.error());
  const uint64_t id = w->id;
  watches_.emplace(id, std::move(w));
  return id;
}

void EventLoop::unwatch(uint64_t id) {
  auto it = watches_.find(id);
  if (it == watches_.end() || !it->second->active) return;
  if (auto d = std::ranges::find(disarmed_, it->second.get()); d != disarmed_.end()) {
    disarmed_.erase(d);  // no poll in the kernel to remove
    watches_.erase(it);
    return;
  }
  it->second->active = false;
  if (auto sqe = next_sqe()) {
    io_uring_prep_poll_remove(*sqe, reinterpret_cast<uint64_t>(it->second.get()));
    io_uring_sqe_set_data64(*sqe, 0);
  }
}

Result<> EventLoop::submit_op(io_uring_sqe* sqe, Op request) {
  auto* op = new Op(std::move(request));
  io_uring_sqe_set_data(sqe, op);
  sqe->flags |= IOSQE_FIXED_FILE;
  ++in_flight_;
  return {};
}

namespace {

std::atomic<uint64_t> redone{0};

/// A buffered transfer that hits the page cache completes inline, on the thread that submits it;
/// a large one is sent to io_uring's workers instead, so that several copy in parallel on
/// several CPUs while this thread goes on (small ones stay inline: a worker hop costs more).
void punt_if_large(io_uring_sqe* sqe, const iovec* iov, unsigned count) {
  constexpr uint64_t kInlineLimit = 64 * 1024;
  uint64_t n = 0;
  for (unsigned i = 0; i < count && n < kInlineLimit; ++i) n += iov[i].iov_len;
  if (n >= kInlineLimit) sqe->flags |= IOSQE_ASYNC;
}
}  // namespace

Result<> EventLoop::readv(unsigned file, const iovec* iov, unsigned count, uint64_t offset, Done done) {
  auto sqe = next_sqe();
  if (!sqe) return std::unexpected(sqe.error());
  io_uring_prep_readv(*sqe, static_cast<int>(file), iov, count, offset);
  punt_if_large(*sqe, iov, count);
  return submit_op(*sqe, Op{.is_watch = false, .done = std::move(done), .file = Op::File::Read, .fd = fd_of(file), .count = count,
                            .iov = iov, .offset = offset});
}

Result<> EventLoop::writev(unsigned file, const iovec* iov, unsigned count, uint64_t offset, Done done) {
  auto sqe = next_sqe();
  if (!sqe) return std::unexpected(sqe.error());
  io_uring_prep_writev(*sqe, static_cast<int>(file), iov, count, offset);
  punt_if_large(*sqe, iov, count);
  return submit_op(*sqe, Op{.is_watch = false, .done = std::move(done), .file = Op::File::Write, .fd = fd_of(file), .count = count,
                            .iov = iov, .offset = offset});
}

Result<> EventLoop::fdatasync(unsigned file, Done done) {
  auto sqe = next_sqe();
  if (!sqe) return std::unexpected(sqe.error());
  io_uring_prep_fsync(*sqe, static_cast<int>(file), IORING_FSYNC_DATASYNC);
  return submit_op(*sqe, Op{.is_watch = false, .done = std::move(done), .file = Op::File::Sync, .fd = fd_of(file)});
}

Result<> EventLoop::fallocate(unsigned file, int mode, uint64_t offset, uint64_t length, Done done) {
  auto sqe = next_sqe();
  if (!sqe) return std::unexpected(sqe.error());
  io_uring_prep_fallocate(*sqe, static_cast<int>(file), mode, offset, length);
  return submit_op(*sqe, Op{.is_watch = false, .done = std::move(done), .file = Op::File::Fallocate, .fd = fd_of(file), .mode = mode,
                            .offset = offset, .length = length});
}

Result<> EventLoop::complete_later(int32_t result, Done done) {
  auto sqe = next_sqe();
  if (!sqe) return std::unexpected(sqe.error());
  io_uring_prep_nop(*sqe);
  return submit_op(*sqe, Op{.is_watch = false, .done = [result, done = std::move(done)](int32_t) { done(result); }, .file = Op::File::None});
}

/// `op` done by the system call that does the same, on this thread: -errno or bytes, as io_uring.
int32_t EventLoop::redo(const Op& op) {
  if (redone.fetch_add(1, std::memory_order_relaxed) == 0) {
    fmt::print(stderr, "vmm: warning: io_uring cancelled a disk request for want of a worker thread (at a limit on "
                       "threads and processes?): such requests are done synchronously on the I/O thread\n");
  }
  // A read or write done whole, as io_uring does one on a regular file (a short transfer goes on
  // from where it stopped; a read stops at the end of the file): the device takes a short count
  // for a failure.
  if (op.file == Op::File::Read || op.file == Op::File::Write) {
    std::vector<iovec> rest(op.iov, op.iov + op.count);
    size_t first = 0;
    uint64_t done = 0;
    while (first < rest.size()) {
      const int n_iov = static_cast<int>(std::min<size_t>(rest.size() - first, IOV_MAX));
      const auto at = static_cast<off_t>(op.offset + done);
      const ssize_t r = op.file == Op::File::Read ? ::preadv(op.fd, &rest[first], n_iov, at) : ::pwritev(op.fd, &rest[first], n_iov, at);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return done > 0 ? static_cast<int32_t>(done) : -errno;
      if (r == 0) break;
      done += static_cast<uint64_t>(r);
      for (auto left = static_cast<size_t>(r); left > 0 && first < rest.size();) {
        const size_t k = std::min(left, rest[first].iov_len);
        rest[first].iov_base = static_cast<uint8_t*>(rest[first].iov_base) + k;
        rest[first].iov_len -= k;
        left -= k;
        if (rest[first].iov_len == 0) ++first;
      }
      while (first < rest.size() && rest[first].iov_len == 0) ++first;
    }
    return static_cast<int32_t>(done);
  }
  for (;;) {
    ssize_t r = -1;
    switch (op.file) {
      case Op::File::Sync:
        r = ::fdatasync(op.fd);
        break;
      case Op::File::Fallocate:
        r = ::fallocate(op.fd, op.mode, static_cast<off_t>(op.offset), static_cast<off_t>(op.length));
        break;
      default:
        return -ECANCELED;
    }
    if (r >= 0) return static_cast<int32_t>(r);
    if (errno != EINTR) return -errno;
  }
}

uint64_t EventLoop::redone_synchronously() { return redone.load(std::memory_order_relaxed); }

void EventLoop::complete(const Completion& cqe) {
  auto* op = reinterpret_cast<Op*>(cqe.user_data);
  if (!op) return;
  if (!op->is_watch) {
    --in_flight_;
    std::unique_ptr<Op> owned(op);
    // Nothing here cancels a file request (only the destructor does, and it runs no callbacks):
    // -ECANCELED is io_uring's own, for want of a worker thread (or its submitting thread's end).
    owned->done(cqe.res == -ECANCELED && owned->file != Op::File::None ? redo(*owned) : cqe.res);
    return;
  }
  auto* w = static_cast<Watch*>(op);
  const bool more = cqe.flags & IORING_CQE_F_MORE;
  if (w->active && cqe.res >= 0) {
    if (w->device && holding_devices_.load(std::memory_order_acquire)) {
      w->missed = true;
      missed_devices_ = true;
    } else {
      w->on_ready();
    }
  }
  if (more) return;
  if (w->releasing) {
    w->releasing = false;
    --releasing_;
    if (w->active) {
      disarmed_.push_back(w);
      return;
    }
    watches_.erase(w->id);
    return;
  }
  // The kernel ended this poll: re-arm it, or free it after unwatch().
  if (w->active) {
    if (auto r = arm(*w); r) return;
  }
  watches_.erase(w->id);
}

Result<unsigned> EventLoop::run_once(std::optional<std::chrono::milliseconds> timeout) {
  for (Watch* w : std::exchange(disarmed_, {})) {
    if (auto r = arm(*w); !r) return std::unexpected(r.error());
  }
  if (missed_devices_ && !holding_devices_.load(std::memory_order_acquire)) {
    // What became ready while the devices were held (a multishot poll says so once): served now.
    // By id, looked up again each time: a callback may watch or unwatch.
    missed_devices_ = false;
    std::vector<uint64_t> ids;
    for (const auto& [id, w] : watches_) {
      if (w->missed) ids.push_back(id);
    }
    for (const uint64_t id : ids) {
      auto it = watches_.find(id);
      if (it == watches_.end() || !it->second->missed) continue;
      it->second->missed = false;
      if (it->second->active) it->second->on_ready();
    }
  }
  io_uring_cqe* first = nullptr;
  int r;
  if (timeout) {
    __kernel_timespec ts{.tv_sec = timeout->count() / 1000, .tv_nsec = (timeout->count() % 1000) * 1'000'000};
    r = io_uring_submit_and_wait_timeout(&ring_, &first, 1, &ts, nullptr);
    if (r == -ETIME) return 0u;
  } else {
    r = io_uring_submit_and_wait(&ring_, 1);
  }
  if (r == -EINTR) return 0u;
  if (r < 0) return fail("io_uring wait: {}", errno_text(-r));
  return reap();
}

unsigned EventLoop::reap() {
  // Copy the completions out first: callbacks may submit more work.
  std::vector<Completion> batch;
  unsigned head;
  io_uring_cqe* cqe;
  io_uring_for_each_cqe(&ring_, head, cqe) { batch.push_back({cqe->user_data, cqe->res, cqe->flags}); }
  io_uring_cq_advance(&ring_, static_cast<unsigned>(batch.size()));
  for (const auto& c : batch) complete(c);
  return static_cast<unsigned>(batch.size());
}

Result<> EventLoop::run() {
  stopping_ = false;
  while (!stopping_) {
    if (auto r = run_once(std::nullopt); !r) return std::unexpected(r.error());
  }
  return {};
}

void EventLoop::stop() {
  const uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(stop_fd_.get(), &one, sizeof one);
}

void EventLoop::release_thread(std::chrono::milliseconds timeout) {
  for (auto& [id, w] : watches_) {
    if (w->releasing || std::ranges::find(disarmed_, w.get()) != disarmed_.end()) continue;
    auto sqe = next_sqe();
    if (!sqe) break;
    io_uring_prep_cancel64(*sqe, reinterpret_cast<uint64_t>(w.get()), 0);
    io_uring_sqe_set_data64(*sqe, 0);
    w->releasing = true;
    ++releasing_;
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (releasing_ > 0 && std::chrono::steady_clock::now() < deadline) {
    // Not run_once: that would arm the watches already disarmed.
    __kernel_timespec ts{.tv_sec = 0, .tv_nsec = 10'000'000};
    io_uring_cqe* first = nullptr;
    const int r = io_uring_submit_and_wait_timeout(&ring_, &first, 1, &ts, nullptr);
    if (r < 0 && r != -ETIME && r != -EINTR) break;
    reap();
  }
}

}  // namespace vmm
