// A qcow2 image as the asynchronous disk::Image that virtio-blk uses. The synchronous engine
// (disk/qcow2.hpp) runs on a worker thread of this image's own, which takes requests in order and
// hands completions back to the event loop through an eventfd, so neither vCPU threads nor the
// event loop ever wait on qcow2 metadata or data I/O. A read, or a write into allocated clusters, is
// mapped on the worker and its file transfers run on the shared I/O pool, so several requests copy
// in parallel while the worker maps the next; allocating writes (copy-on-write) finish on the
// worker before it maps anything else; a flush waits for every running transfer (it makes them
// durable, and it may free clusters they use).
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "disk/image.hpp"
#include "disk/qcow2.hpp"

namespace vmm::disk {

class Qcow2Image final : public Image {
 public:
  static Result<std::unique_ptr<Qcow2Image>> create(EventLoop& loop, std::unique_ptr<Qcow2> engine);
  /// Finishes the queued requests and flushes the image (their callbacks are not run).
  ~Qcow2Image() override;

  uint64_t size() const override { return size_; }
  bool read_only() const override { return read_only_; }
  const std::filesystem::path& path() const override { return path_; }
  const char* format() const override { return "qcow2"; }
  FileId file_id() const override;
  std::optional<BackingFile> backing_file() const override { return engine_->backing_file(); }

  Result<> read(uint64_t offset, std::span<const iovec> iov, Done done) override;
  Result<> write(uint64_t offset, std::span<const iovec> iov, Done done) override;
  Result<> flush(Done done) override;
  Result<> discard(uint64_t offset, uint64_t length, Done done) override;
  Result<> write_zeroes(uint64_t offset, uint64_t length, bool may_unmap, Done done) override;

 private:
  struct Job {
    std::function<Result<>(Qcow2&, IoPlan&)> work;  // may leave file transfers in the plan
    int32_t bytes;  // the result on success
    Done done;
    bool barrier;   // wait for every running plan first (flush: it may free clusters they read)
  };
  struct Completion {
    Done done;
    int32_t result;
  };
  Qcow2Image(EventLoop& loop, std::unique_ptr<Qcow2> engine);
  Result<> submit(std::function<Result<>(Qcow2&, IoPlan&)> work, int32_t bytes, Done done, bool barrier = false);
  void worker();
  /// Runs a request's plan on the I/O pool; the request completes when its last part does.
  void dispatch(IoPlan plan, int32_t bytes, Done done);
  void complete(Done done, int32_t result);
  void deliver();

  EventLoop& loop_;
  std::unique_ptr<Qcow2> engine_;
  std::filesystem::path path_;
  uint64_t size_;
  bool read_only_;
  Fd event_;  // eventfd: completions are waiting
  uint64_t watch_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  std::vector<Completion> completions_;
  bool stopping_ = false;
  unsigned plans_running_ = 0;      // dispatched reads not finished yet (guarded by mu_)
  std::condition_variable plans_cv_;
  std::atomic<bool> reported_{false};  // one log line per image for failed requests
  std::thread thread_;
};

}  // namespace vmm::disk
