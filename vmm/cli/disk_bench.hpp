// `vmm disk bench`: a request-rate benchmark of a disk image through the asynchronous disk::Image
// path that virtio-blk uses (raw files on io_uring, qcow2 on its worker thread), modelled on
// `qemu-img bench`: COUNT requests of BUFFER_SIZE bytes, DEPTH of them in flight.
#pragma once

#include <cstdint>
#include <filesystem>
#include <random>

#include "vmm/base/error.hpp"

namespace vmm::cli {

/// What `vmm disk bench` was asked to do (defaults as in qemu-img bench).
struct BenchOptions {
  std::filesystem::path path;
  bool write = false;
  bool random = false;             ///< aligned random offsets (fixed seed) instead of a sequential walk
  uint64_t buffer_size = 4096;     ///< bytes per request
  unsigned depth = 64;             ///< requests in flight
  uint64_t count = 75000;          ///< requests in all
  uint64_t offset = 0;             ///< first offset (sequential); lower bound (random)
  uint64_t step = 0;               ///< sequential stride; 0: the buffer size
  uint64_t flush_interval = 0;     ///< writes only: drain and flush after every N requests
  uint8_t fill = 0xa5;             ///< the byte write buffers are filled with
  bool shared_buffer = false;      ///< every request uses one buffer (as qemu-img bench does)
};

inline constexpr unsigned kMaxBenchDepth = 1024;
inline constexpr uint64_t kMaxBenchBuffer = 64ull << 20;

/// Checks the options that do not depend on the image; returns a message for a usage error.
Result<> validate_bench_options(const BenchOptions& o);

/// The offsets of a run, in submission order: sequential (start at `offset`, add `step`, wrap
/// modulo the image size like qemu-img bench, restart at 0 when a request would cross the end) or
/// random (multiples of the buffer size in [offset, size), std::mt19937_64 with a fixed seed).
class BenchOffsets {
 public:
  /// `size` must hold at least one buffer from `o.offset` (checked by the caller).
  BenchOffsets(const BenchOptions& o, uint64_t size);
  uint64_t next();

 private:
  bool random_;
  uint64_t size_, buffer_, step_, base_, blocks_, cur_;
  std::mt19937_64 rng_{0x766d6d2d62656e63ull};  // "vmm-benc"
};

/// Runs the benchmark and prints its one-line result; errors go to stderr as one line. Returns the
/// exit status: 0, 2 (a value that does not fit the image), 6 (the image could not be opened or a
/// request failed) or 10 (no io_uring).
int run_bench(const BenchOptions& o);

}  // namespace vmm::cli
