#include "vmm/cli/disk_bench.hpp"

#include <fmt/core.h>

#include <bit>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "disk/image.hpp"
#include "vmm/cli/disk_cli.hpp"
#include "vmm/base/event_loop.hpp"
#include "vmm/exit_status.hpp"

namespace vmm::cli {

namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kAlign = 4096;
constexpr uint64_t kMaxBufferBytes = 1ull << 30;  // depth * buffer size, all allocated up front

uint64_t round_up(uint64_t v, uint64_t align) { return (v + align - 1) / align * align; }

/// `depth` page-aligned buffers of one request each, filled with `fill`; with `shared`, one buffer
/// that every request uses (qemu-img bench's way: its requests all name its first I/O vector, so
/// its copies touch 1 buffer where ours touch `depth`: at 1 MiB x 64 that is 64 MiB of memory
/// traffic that stays in the CPU's caches for one tool and not for the other).
class Buffers {
 public:
  Buffers(unsigned depth, uint64_t size, uint8_t fill, bool shared) : stride_(round_up(size, kAlign)) {
    const unsigned count = shared ? 1 : depth;
    mem_.reset(static_cast<uint8_t*>(std::aligned_alloc(kAlign, stride_ * count)));
    if (!mem_) return;
    std::memset(mem_.get(), fill, stride_ * count);
    for (unsigned i = 0; i < depth; ++i) iov_.push_back(iovec{mem_.get() + stride_ * (i % count), size});
  }
  bool ok() const { return mem_ != nullptr; }
  std::span<const iovec> slot(unsigned i) const { return {&iov_[i], 1}; }

 private:
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  uint64_t stride_;
  std::unique_ptr<uint8_t, Free> mem_;
  std::vector<iovec> iov_;
};

/// One run: keeps `depth` requests in flight on the image until `count` have completed, with a
/// drained flush every `flush_interval` requests (like qemu-img bench without --no-drain).
class Bench {
 public:
  Bench(const BenchOptions& o, disk::Image& image, const Buffers& buffers)
      : o_(o), image_(image), buffers_(buffers), offsets_(o, image.size()) {
    for (unsigned i = o.depth; i-- > 0;) free_.push_back(i);
  }

  /// Runs every request; returns the elapsed time of the I/O (the final flush not included).
  Result<double> run(EventLoop& loop) {
    start_ = Clock::now();
    pump();
    while (in_flight_ > 0 || flushing_ || (!error_ && completed_ < o_.count)) {
      if (auto r = loop.run_once(std::nullopt); !r) {
        if (!error_) error_ = r.error().message();
        if (in_flight_ == 0 && !flushing_) break;
      }
    }
    if (error_) return std::unexpected(Error(*error_));
    return std::chrono::duration<double>(end_ - start_).count();
  }

  /// The final flush of a write run: makes everything durable before the image is closed.
  Result<> final_flush(EventLoop& loop) {
    bool done = false;
    int32_t result = 0;
    if (auto r = image_.flush([&](int32_t res) { done = true, result = res; }); !r) return r;
    while (!done) {
      if (auto r = loop.run_once(std::nullopt); !r) return std::unexpected(r.error());
    }
    if (result < 0) return fail("{}: flush: {}", image_.path().string(), errno_text(-result));
    return {};
  }

 private:
  /// Submits requests (or the interval flush) while there is room; reentrant calls are folded in.
  void pump() {
    if (pumping_) {
      repump_ = true;
      return;
    }
    pumping_ = true;
    do {
      repump_ = false;
      submit_some();
    } while (repump_);
    pumping_ = false;
  }

  void submit_some() {
    while (!error_ && !flushing_ && submitted_ < o_.count && in_flight_ < o_.depth) {
      if (o_.flush_interval && submitted_ > 0 && submitted_ % o_.flush_interval == 0 && flushed_at_ != submitted_) {
        if (in_flight_ > 0) return;  // drain first, then flush
        flushed_at_ = submitted_;
        flushing_ = true;
        auto r = image_.flush([this](int32_t res) {
          flushing_ = false;
          if (res < 0 && !error_) error_ = fmt::format("{}: flush: {}", image_.path().string(), errno_text(-res));
          pump();
        });
        if (!r) {
          flushing_ = false;
          error_ = r.error().message();
        }
        return;
      }
      const unsigned slot = free_.back();
      const uint64_t offset = offsets_.next();
      auto done = [this, slot, offset](int32_t res) { complete(slot, offset, res); };
      // Counted before the call, in case an image completes a request at once.
      free_.pop_back();
      ++submitted_;
      ++in_flight_;
      auto r = o_.write ? image_.write(offset, buffers_.slot(slot), std::move(done))
                        : image_.read(offset, buffers_.slot(slot), std::move(done));
      if (!r) {
        free_.push_back(slot);
        --submitted_;
        --in_flight_;
        error_ = r.error().message();
        return;
      }
    }
  }

  void complete(unsigned slot, uint64_t offset, int32_t res) {
    --in_flight_;
    ++completed_;
    free_.push_back(slot);
    if (!error_ && res < 0) {
      error_ = fmt::format("{}: {} of {} bytes at offset {:#x}: {}", image_.path().string(), o_.write ? "write" : "read",
                           o_.buffer_size, offset, errno_text(-res));
    } else if (!error_ && static_cast<uint64_t>(res) != o_.buffer_size) {
      error_ = fmt::format("{}: {} at offset {:#x}: {} of {} bytes transferred", image_.path().string(),
                           o_.write ? "write" : "read", offset, res, o_.buffer_size);
    }
    if (completed_ == o_.count) end_ = Clock::now();
    pump();
  }

  const BenchOptions& o_;
  disk::Image& image_;
  const Buffers& buffers_;
  BenchOffsets offsets_;
  std::vector<unsigned> free_;
  uint64_t submitted_ = 0;
  uint64_t completed_ = 0;
  unsigned in_flight_ = 0;
  bool flushing_ = false;
  uint64_t flushed_at_ = 0;
  bool pumping_ = false;
  bool repump_ = false;
  std::optional<std::string> error_;
  Clock::time_point start_{}, end_{};
};

}  // namespace

Result<> validate_bench_options(const BenchOptions& o) {
  if (o.buffer_size == 0) return fail("--buffer-size: must be at least 1 byte");
  if (o.buffer_size > kMaxBenchBuffer) return fail("--buffer-size: at most {} MiB", kMaxBenchBuffer >> 20);
  if (o.depth == 0 || o.depth > kMaxBenchDepth) return fail("--depth {}: must be between 1 and {}", o.depth, kMaxBenchDepth);
  if (round_up(o.buffer_size, kAlign) * o.depth > kMaxBufferBytes) {
    return fail("--depth {} x --buffer-size {}: more than {} MiB of buffers", o.depth, o.buffer_size,
                kMaxBufferBytes >> 20);
  }
  if (o.count == 0) return fail("--count: must be at least 1");
  if (o.flush_interval && !o.write) return fail("--flush-interval is only available in write tests (-w)");
  if (o.random && o.step) return fail("--step-size applies to --pattern seq only");
  return {};
}

BenchOffsets::BenchOffsets(const BenchOptions& o, uint64_t size)
    : random_(o.random),
      size_(size),
      buffer_(o.buffer_size),
      step_(o.step ? o.step : o.buffer_size),
      base_(o.offset),
      blocks_(size > o.offset ? (size - o.offset) / o.buffer_size : 0),
      cur_(o.offset) {
  if (blocks_ == 0) blocks_ = 1;
}

uint64_t BenchOffsets::next() {
  if (random_) return base_ + rng_() % blocks_ * buffer_;
  const uint64_t offset = cur_;
  cur_ = (cur_ % size_ + step_ % size_) % size_;  // no overflow: both terms are below size_
  if (cur_ + buffer_ > size_) cur_ = 0;
  return offset;
}

int run_bench(const BenchOptions& o) {
  if (auto r = validate_bench_options(o); !r) {
    print_disk_error(r.error().message());
    return exit_code::kUsage;
  }
  // Buffers first: they must outlive the loop, which reaps anything still in flight on the way out.
  Buffers buffers(o.depth, o.buffer_size, o.write ? o.fill : 0, o.shared_buffer);
  if (!buffers.ok()) {
    print_disk_error(fmt::format("cannot allocate {} buffers of {} bytes", o.depth, o.buffer_size));
    return exit_code::kVmmError;
  }
  auto loop = EventLoop::create(std::max(256u, std::bit_ceil(o.depth)));
  if (!loop) {
    print_disk_error(loop.error().message());
    return exit_code::kVmmError;
  }
  auto image = disk::open_image(**loop, {.path = o.path, .read_only = !o.write});
  if (!image) {
    print_disk_error(image.error().message());
    return exit_code::kImage;
  }
  const uint64_t size = (*image)->size();
  if (o.buffer_size > size || o.offset > size - o.buffer_size) {
    print_disk_error(fmt::format("{}: --offset {:#x} + --buffer-size {:#x} does not fit in the image's {:#x} bytes",
                            o.path.string(), o.offset, o.buffer_size, size));
    return exit_code::kUsage;
  }
  Bench bench(o, **image, buffers);
  auto seconds = bench.run(**loop);
  if (!seconds) {
    print_disk_error(seconds.error().message());
    return exit_code::kImage;
  }
  if (o.write) {
    if (auto r = bench.final_flush(**loop); !r) {
      print_disk_error(r.error().message());
      return exit_code::kImage;
    }
  }
  const double t = *seconds > 0 ? *seconds : 1e-9;
  const double rate = static_cast<double>(o.count) / t;
  fmt::print("vmm disk bench: {} requests of {} bytes in {:.3f} s: {:.0f} req/s, {:.1f} MiB/s\n", o.count,
             o.buffer_size, *seconds, rate, rate * static_cast<double>(o.buffer_size) / 1048576.0);
  return exit_code::kOk;
}

}  // namespace vmm::cli
