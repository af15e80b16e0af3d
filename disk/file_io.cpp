#include "disk/file_io.hpp"

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <optional>
#include <system_error>
#include <mutex>
#include <thread>

namespace vmm::disk {

namespace {

/// Drops the first `n` bytes of an iovec array (in place).
void advance(std::vector<iovec>& v, size_t& first, uint64_t n) {
  while (n > 0 && first < v.size()) {
    if (n >= v[first].iov_len) {
      n -= v[first].iov_len;
      ++first;
    } else {
      v[first].iov_base = static_cast<uint8_t*>(v[first].iov_base) + n;
      v[first].iov_len -= n;
      n = 0;
    }
  }
}

uint64_t total(std::span<const iovec> iov) {
  uint64_t n = 0;
  for (const auto& v : iov) n += v.iov_len;
  return n;
}

}  // namespace

Result<> pread_full(int fd, std::span<const iovec> iov, uint64_t offset) {
  std::vector<iovec> v(iov.begin(), iov.end());
  size_t first = 0;
  uint64_t left = total(iov);
  while (left > 0) {
    const int count = static_cast<int>(std::min<size_t>(v.size() - first, IOV_MAX));
    const ssize_t n = ::preadv(fd, &v[first], count, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("read of {:#x} bytes at {:#x}: {}", left, offset, errno_text(errno));
    }
    if (n == 0) {  // end of file: the rest reads as zeroes
      for (size_t i = first; i < v.size(); ++i) std::memset(v[i].iov_base, 0, v[i].iov_len);
      return {};
    }
    advance(v, first, static_cast<uint64_t>(n));
    left -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return {};
}

Result<> pwrite_full(int fd, std::span<const iovec> iov, uint64_t offset) {
  std::vector<iovec> v(iov.begin(), iov.end());
  size_t first = 0;
  uint64_t left = total(iov);
  while (left > 0) {
    const int count = static_cast<int>(std::min<size_t>(v.size() - first, IOV_MAX));
    const ssize_t n = ::pwritev(fd, &v[first], count, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("write of {:#x} bytes at {:#x}: {}", left, offset, errno_text(errno));
    }
    if (n == 0) return fail("write of {:#x} bytes at {:#x}: no progress", left, offset);
    advance(v, first, static_cast<uint64_t>(n));
    left -= static_cast<uint64_t>(n);
    offset += static_cast<uint64_t>(n);
  }
  return {};
}

Result<> pread_full(int fd, void* buf, uint64_t len, uint64_t offset) {
  const iovec v{buf, len};
  return pread_full(fd, std::span(&v, 1), offset);
}

Result<> pwrite_full(int fd, const void* buf, uint64_t len, uint64_t offset) {
  const iovec v{const_cast<void*>(buf), len};
  return pwrite_full(fd, std::span(&v, 1), offset);
}

namespace {

constexpr uint64_t kParallelThreshold = 256 * 1024;

/// Threads that run pieces of large transfers, one pool per process, made on first use.
///
/// A fork()ed child (a live fork, a pool's member) inherits the parent's pool object but none of its
/// threads: a task posted to it would wait forever (a fork's child hung on its first large qcow2
/// read), and its lock may have been held by one of them at the fork. So a child forgets the
/// pool (pthread_atfork) and makes its own on first use. A thread that cannot be made (a pids limit
/// reached) is done without; with none, tasks run on the thread that posts them.
class CopyPool {
 public:
  static CopyPool& get() {
    if (CopyPool* p = current_.load(std::memory_order_acquire)) return *p;
    ::pthread_mutex_lock(&make_mu_);
    CopyPool* p = current_.load(std::memory_order_relaxed);
    if (!p) {
      p = new CopyPool;  // never destroyed: its threads may wait on it at exit
      current_.store(p, std::memory_order_release);
    }
    ::pthread_mutex_unlock(&make_mu_);
    return *p;
  }
  /// In a fork()ed child, before anything else runs there: the pool and the lock that guards its
  /// making are the parent's (the pool object is left behind, unused).
  static void forget_in_child() {
    current_.store(nullptr, std::memory_order_relaxed);
    const pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    std::memcpy(&make_mu_, &fresh, sizeof fresh);
  }
  unsigned helpers() const { return static_cast<unsigned>(threads_.size()); }
  void post(std::function<void()> f) {
    if (threads_.empty()) {
      f();
      return;
    }
    {
      std::lock_guard lock(mu_);
      tasks_.push_back(std::move(f));
    }
    cv_.notify_one();
  }

 private:
  CopyPool() {
    const unsigned cpus = std::max(1u, std::thread::hardware_concurrency());
    for (unsigned i = 0; i < std::min(2 * cpus, 8u); ++i) {
      try {
        threads_.emplace_back([this] { loop(); });
      } catch (const std::system_error&) {
        break;
      }
      pthread_setname_np(threads_.back().native_handle(), "vmm-copy");
      threads_.back().detach();  // idle at exit; never joined
    }
  }
  [[noreturn]] void loop() {
    for (;;) {
      std::function<void()> f;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [this] { return !tasks_.empty(); });
        f = std::move(tasks_.front());
        tasks_.pop_front();
      }
      f();
    }
  }
  static inline std::atomic<CopyPool*> current_{nullptr};
  static inline pthread_mutex_t make_mu_ = PTHREAD_MUTEX_INITIALIZER;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::thread> threads_;
};

/// Registered at start-up, before any fork().
[[maybe_unused]] const int at_fork_registered = ::pthread_atfork(nullptr, nullptr, &CopyPool::forget_in_child);

Result<> transfer_parallel(int fd, std::span<const iovec> iov, uint64_t offset, bool write) {
  auto one = [&](std::span<const iovec> v, uint64_t off) { return write ? pwrite_full(fd, v, off) : pread_full(fd, v, off); };
  const uint64_t n = total(iov);
  CopyPool& pool = CopyPool::get();
  if (n < kParallelThreshold || pool.helpers() < 2) return one(iov, offset);
  const unsigned parts = pool.helpers();  // the caller does one part, the pool the others
  const uint64_t piece = ((n / parts) + 4095) & ~uint64_t{4095};
  std::vector<std::vector<iovec>> slices(parts);
  std::vector<uint64_t> starts(parts);
  unsigned used = 0;
  for (uint64_t at = 0; at < n && used < parts; ++used) {
    const uint64_t len = used + 1 == parts ? n - at : std::min(piece, n - at);
    slice_iov(iov, at, len, slices[used]);
    starts[used] = at;
    at += len;
  }
  std::mutex mu;
  std::condition_variable cv;
  unsigned pending = used - 1;
  std::optional<Error> error;
  for (unsigned i = 1; i < used; ++i) {
    pool.post([&, i] {
      auto r = one(slices[i], offset + starts[i]);
      std::lock_guard lock(mu);
      if (!r && !error) error = r.error();
      if (--pending == 0) cv.notify_one();
    });
  }
  auto r = one(slices[0], offset);
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return pending == 0; });
  if (!r) return r;
  if (error) return std::unexpected(*error);
  return {};
}

}  // namespace

void post_io(std::function<void()> task) { CopyPool::get().post(std::move(task)); }

Result<> pread_parallel(int fd, std::span<const iovec> iov, uint64_t offset) {
  return transfer_parallel(fd, iov, offset, false);
}

Result<> pwrite_parallel(int fd, std::span<const iovec> iov, uint64_t offset) {
  return transfer_parallel(fd, iov, offset, true);
}

void slice_iov(std::span<const iovec> in, uint64_t offset, uint64_t len, std::vector<iovec>& out) {
  for (const auto& v : in) {
    if (len == 0) return;
    if (offset >= v.iov_len) {
      offset -= v.iov_len;
      continue;
    }
    const uint64_t n = std::min<uint64_t>(v.iov_len - offset, len);
    out.push_back({static_cast<uint8_t*>(v.iov_base) + offset, n});
    len -= n;
    offset = 0;
  }
}

namespace {
template <typename F>
void walk(std::span<const iovec> iov, uint64_t offset, uint64_t len, F&& f) {
  uint64_t done = 0;
  for (const auto& v : iov) {
    if (len == 0) return;
    if (offset >= v.iov_len) {
      offset -= v.iov_len;
      continue;
    }
    const uint64_t n = std::min<uint64_t>(v.iov_len - offset, len);
    f(static_cast<uint8_t*>(v.iov_base) + offset, done, n);
    done += n;
    len -= n;
    offset = 0;
  }
}
}  // namespace

void copy_to_iov(std::span<const iovec> iov, uint64_t offset, const void* src, uint64_t len) {
  walk(iov, offset, len, [&](uint8_t* p, uint64_t at, uint64_t n) { std::memcpy(p, static_cast<const uint8_t*>(src) + at, n); });
}

void copy_from_iov(std::span<const iovec> iov, uint64_t offset, void* dst, uint64_t len) {
  walk(iov, offset, len, [&](uint8_t* p, uint64_t at, uint64_t n) { std::memcpy(static_cast<uint8_t*>(dst) + at, p, n); });
}

void zero_iov(std::span<const iovec> iov, uint64_t offset, uint64_t len) {
  walk(iov, offset, len, [](uint8_t* p, uint64_t, uint64_t n) { std::memset(p, 0, n); });
}

}  // namespace vmm::disk
