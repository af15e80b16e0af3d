#include "disk/qcow2_image.hpp"

#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/stat.h>

#include <atomic>
#include <cerrno>

#include "disk/file_io.hpp"
#include "vmm/base/thread.hpp"

#include <fmt/core.h>

namespace vmm::disk {

Qcow2Image::Qcow2Image(EventLoop& loop, std::unique_ptr<Qcow2> engine)
    : loop_(loop),
      engine_(std::move(engine)),
      path_(engine_->path()),
      size_(engine_->size()),
      read_only_(engine_->read_only()) {}

Result<std::unique_ptr<Qcow2Image>> Qcow2Image::create(EventLoop& loop, std::unique_ptr<Qcow2> engine) {
  std::unique_ptr<Qcow2Image> img(new Qcow2Image(loop, std::move(engine)));
  img->event_ = Fd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!img->event_) return fail("{}: eventfd: {}", img->path_.string(), errno_text(errno));
  auto w = loop.watch(img->event_.get(), EventLoop::WatchKind::Internal, [p = img.get()] { p->deliver(); });
  if (!w) return std::unexpected(w.error().context(img->path_.string()));
  img->watch_ = *w;
  auto t = start_thread(fmt::format("the worker thread of {}", img->path_.string()), [p = img.get()] { p->worker(); });
  if (!t) return std::unexpected(t.error());
  img->thread_ = std::move(*t);
  pthread_setname_np(img->thread_.native_handle(), "vmm-qcow2");
  return img;
}

Qcow2Image::~Qcow2Image() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (watch_) loop_.unwatch(watch_);
  engine_.reset();  // flushes
}

Result<> Qcow2Image::submit(std::function<Result<>(Qcow2&, IoPlan&)> work, int32_t bytes, Done done,
                            bool barrier) {
  {
    std::lock_guard lock(mu_);
    jobs_.push_back({std::move(work), bytes, std::move(done), barrier});
  }
  cv_.notify_one();
  return {};
}

void Qcow2Image::complete(Done done, int32_t result) {
  std::lock_guard lock(mu_);
  completions_.push_back({std::move(done), result});
  const uint64_t one = 1;
  (void)!::write(event_.get(), &one, sizeof one);
}

void Qcow2Image::dispatch(IoPlan plan, int32_t bytes, Done done) {
  // Reads in parts of at most 256 KiB, so that even one large request keeps every pool thread
  // copying. Writes stay whole: buffered writes to one file serialize on its inode lock anyway.
  constexpr uint64_t kReadPart = 256 * 1024;
  struct Pending {
    std::vector<FileOp> parts;
    std::atomic<size_t> left{0};
    std::atomic<bool> failed{false};
    Done done;
    int32_t bytes;
  };
  auto p = std::make_shared<Pending>();
  for (auto& op : plan) {
    uint64_t n = 0;
    for (const auto& v : op.iov) n += v.iov_len;
    const uint64_t step = op.write ? std::max<uint64_t>(n, 1) : kReadPart;
    for (uint64_t at = 0; at < n; at += step) {
      FileOp part{op.fd, {}, op.offset + at, op.write};
      slice_iov(op.iov, at, std::min(step, n - at), part.iov);
      p->parts.push_back(std::move(part));
    }
  }
  p->left = p->parts.size();
  p->done = std::move(done);
  p->bytes = bytes;
  {
    std::lock_guard lock(mu_);
    ++plans_running_;
  }
  for (size_t i = 0; i < p->parts.size(); ++i) {
    post_io([this, p, i] {
      const auto& part = p->parts[i];
      if (!(part.write ? pwrite_full(part.fd, part.iov, part.offset) : pread_full(part.fd, part.iov, part.offset))) {
        p->failed = true;
      }
      if (--p->left > 0) return;
      if (p->failed && !reported_.exchange(true)) {
        fmt::print(stderr, "vmm: disk {}: a transfer failed (further errors on this disk are not logged)\n", path_.string());
      }
      complete(std::move(p->done), p->failed ? -EIO : p->bytes);
      std::lock_guard lock(mu_);
      if (--plans_running_ == 0) plans_cv_.notify_all();
    });
  }
}

namespace {
constexpr uint32_t kDispatchMin = 128 * 1024;  // requests at least this large run on the I/O pool
}  // namespace

void Qcow2Image::worker() {
  std::vector<Completion> done;  // this batch's completions, posted together (one eventfd write)
  auto post = [&] {
    if (done.empty()) return;
    std::lock_guard lock(mu_);
    for (auto& c : done) completions_.push_back(std::move(c));
    done.clear();
    const uint64_t one = 1;
    (void)!::write(event_.get(), &one, sizeof one);
  };
  auto report = [&](const Error& e) {
    if (!reported_.exchange(true)) {
      // The engine's errors name the image already: "P: what".
      const std::string& m = e.message();
      const std::string p = path_.string();
      const bool named = m.starts_with(p) && m.compare(p.size(), 2, ": ") == 0;
      fmt::print(stderr, "vmm: disk {}: {} (further errors on this disk are not logged)\n", p, named ? m.substr(p.size() + 2) : m);
    }
  };
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
    if (jobs_.empty()) {  // stopping, and everything queued is done: wait for running transfers too
      plans_cv_.wait(lock, [this] { return plans_running_ == 0; });
      return;
    }
    std::deque<Job> batch;
    batch.swap(jobs_);
    lock.unlock();
    for (auto& job : batch) {
      if (job.barrier) {
        post();
        std::unique_lock wait(mu_);
        plans_cv_.wait(wait, [this] { return plans_running_ == 0; });
      }
      IoPlan plan;
      auto r = job.work(*engine_, plan);
      if (!r) {
        report(r.error());
        done.push_back({std::move(job.done), -EIO});
      } else if (plan.empty()) {
        done.push_back({std::move(job.done), job.bytes});
      } else if (static_cast<uint32_t>(job.bytes) < kDispatchMin) {
        // Small transfers are cheaper here than a hop to the pool and back.
        auto e = execute(plan);
        if (!e) report(e.error());
        done.push_back({std::move(job.done), e ? job.bytes : -EIO});
      } else {
        dispatch(std::move(plan), job.bytes, std::move(job.done));
      }
    }
    post();
    lock.lock();
  }
}

void Qcow2Image::deliver() {
  uint64_t n = 0;
  (void)!::read(event_.get(), &n, sizeof n);
  std::vector<Completion> ready;
  {
    std::lock_guard lock(mu_);
    ready.swap(completions_);
  }
  for (auto& c : ready) c.done(c.result);
}

Result<> Qcow2Image::read(uint64_t offset, std::span<const iovec> iov, Done done) {
  auto n = iov_bytes(iov);
  if (!n) return std::unexpected(n.error());
  if (auto r = check_range(offset, *n, size_); !r) return r;
  if (*n > INT32_MAX) return fail("{}: request of {:#x} bytes is too large", path_.string(), *n);
  return submit([offset, v = std::vector<iovec>(iov.begin(), iov.end())](Qcow2& q, IoPlan& plan) {
                  return q.plan_read(offset, v, plan);
                },
                static_cast<int32_t>(*n), std::move(done));
}

Result<> Qcow2Image::write(uint64_t offset, std::span<const iovec> iov, Done done) {
  if (read_only_) return fail("{}: the image is read-only", path_.string());
  auto n = iov_bytes(iov);
  if (!n) return std::unexpected(n.error());
  if (auto r = check_range(offset, *n, size_); !r) return r;
  if (*n > INT32_MAX) return fail("{}: request of {:#x} bytes is too large", path_.string(), *n);
  return submit([offset, v = std::vector<iovec>(iov.begin(), iov.end())](Qcow2& q, IoPlan& plan) {
                  return q.plan_write(offset, v, plan);
                },
                static_cast<int32_t>(*n), std::move(done));
}

FileId Qcow2Image::file_id() const {
  struct stat st {};
  if (::fstat(engine_->file(), &st) != 0) return {};
  return {st.st_dev, st.st_ino};
}

Result<> Qcow2Image::flush(Done done) {
  return submit([](Qcow2& q, IoPlan&) { return q.flush(); }, 0, std::move(done), true);
}

Result<> Qcow2Image::discard(uint64_t offset, uint64_t length, Done done) {
  if (read_only_) return fail("{}: the image is read-only", path_.string());
  if (auto r = check_range(offset, length, size_); !r) return r;
  return submit([offset, length](Qcow2& q, IoPlan&) { return q.discard(offset, length); }, 0, std::move(done));
}

Result<> Qcow2Image::write_zeroes(uint64_t offset, uint64_t length, bool may_unmap, Done done) {
  if (read_only_) return fail("{}: the image is read-only", path_.string());
  if (auto r = check_range(offset, length, size_); !r) return r;
  return submit([offset, length, may_unmap](Qcow2& q, IoPlan&) { return q.write_zeroes(offset, length, may_unmap); }, 0,
                std::move(done));
}

}  // namespace vmm::disk
