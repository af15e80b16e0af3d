#include "disk/qcow2_image.hpp"

#include <pthread.h>
#include <sys/eventfd.h>

#include <cerrno>

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
  auto w = loop.watch(img->event_.get(), [p = img.get()] { p->deliver(); });
  if (!w) return std::unexpected(w.error().context(img->path_.string()));
  img->watch_ = *w;
  img->thread_ = std::thread([p = img.get()] { p->worker(); });
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

Result<> Qcow2Image::submit(std::function<Result<>(Qcow2&)> work, int32_t bytes, Done done) {
  {
    std::lock_guard lock(mu_);
    jobs_.push_back({std::move(work), bytes, std::move(done)});
  }
  cv_.notify_one();
  return {};
}

void Qcow2Image::worker() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
    if (jobs_.empty()) return;  // stopping, and everything queued is done
    std::deque<Job> batch;
    batch.swap(jobs_);
    lock.unlock();
    std::vector<Completion> done;
    done.reserve(batch.size());
    for (auto& job : batch) {
      auto r = job.work(*engine_);
      int32_t result = job.bytes;
      if (!r) {
        result = -EIO;
        if (!reported_) {
          reported_ = true;
          fmt::print(stderr, "vmm: disk {}: {} (further errors on this disk are not logged)\n", path_.string(),
                     r.error().message());
        }
      }
      done.push_back({std::move(job.done), result});
    }
    lock.lock();
    for (auto& c : done) completions_.push_back(std::move(c));
    const uint64_t one = 1;
    (void)!::write(event_.get(), &one, sizeof one);
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
  return submit([offset, v = std::vector<iovec>(iov.begin(), iov.end())](Qcow2& q) { return q.read(offset, v); },
                static_cast<int32_t>(*n), std::move(done));
}

Result<> Qcow2Image::write(uint64_t offset, std::span<const iovec> iov, Done done) {
  if (read_only_) return fail("{}: the image is read-only", path_.string());
  auto n = iov_bytes(iov);
  if (!n) return std::unexpected(n.error());
  if (auto r = check_range(offset, *n, size_); !r) return r;
  if (*n > INT32_MAX) return fail("{}: request of {:#x} bytes is too large", path_.string(), *n);
  return submit([offset, v = std::vector<iovec>(iov.begin(), iov.end())](Qcow2& q) { return q.write(offset, v); },
                static_cast<int32_t>(*n), std::move(done));
}

Result<> Qcow2Image::flush(Done done) {
  return submit([](Qcow2& q) { return q.flush(); }, 0, std::move(done));
}

Result<> Qcow2Image::discard(uint64_t offset, uint64_t length, Done done) {
  if (read_only_) return fail("{}: the image is read-only", path_.string());
  if (auto r = check_range(offset, length, size_); !r) return r;
  return submit([offset, length](Qcow2& q) { return q.discard(offset, length); }, 0, std::move(done));
}

Result<> Qcow2Image::write_zeroes(uint64_t offset, uint64_t length, bool may_unmap, Done done) {
  if (read_only_) return fail("{}: the image is read-only", path_.string());
  if (auto r = check_range(offset, length, size_); !r) return r;
  return submit([offset, length, may_unmap](Qcow2& q) { return q.write_zeroes(offset, length, may_unmap); }, 0,
                std::move(done));
}

}  // namespace vmm::disk
