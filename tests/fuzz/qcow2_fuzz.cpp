// libFuzzer target for the qcow2 engine (disk::Qcow2): an image file followed by a short sequence of
// guest operations. Built by clang only (tests/fuzz/fuzz.cmake, scripts/fuzz-qcow2.sh) with
// -fsanitize=fuzzer,address,undefined. Must never crash, hang, leak memory or leak descriptors.
//
// Input layout (all little-endian):
//   u32  word: bits 0..23 image length L (clamped to what follows), bits 24..31 configuration:
//        bit 24 open read-only, bit 25 small metadata cache (64 KiB: constant eviction),
//        bit 26 no read-back oracle for this input
//   L    bytes: the image file
//   then 12-byte operations (at most kMaxOps):
//        u8 kind (read, write, discard, write_zeroes, flush, reopen), u8 flags, u16 length, u64 offset
//
// A backing file is opened only when the header names one of the fixed files in the fuzzer's private
// directory (fuzz-backing.raw, fuzz-backing.qcow2, or image.qcow2 itself: a loop); any other name is
// not followed (open_backing = false), so the fuzzer never opens arbitrary host paths.
//
// Oracles: after a successful write (or write_zeroes / discard) inside one cluster, reading the same
// range must succeed and return what was written (zeroes); and an image that opened must still open
// (read-only) after the session, whatever the session did: the engine may refuse requests and mark
// the image corrupt, never break it. Set VMM_QCOW2_FUZZ_NO_ORACLE=1 to turn both off. VMM_QCOW2_FUZZ_MAKE_SEEDS=DIR writes engine-made images (raw, not wrapped) to DIR and exits.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "disk/qcow2.hpp"

namespace {

namespace fs = std::filesystem;
using vmm::disk::Qcow2;

constexpr size_t kMaxOps = 32;
constexpr size_t kOpBytes = 12;
constexpr uint64_t kMaxIo = 1 << 20;  // bytes per read or write
constexpr uint64_t kBackingSize = 1 << 20;

fs::path g_dir;       // private directory under /dev/shm (or the temp directory)
fs::path g_image;     // g_dir / image.qcow2
bool g_oracle = true;

[[noreturn]] void die(const char* what, const std::string& detail = {}) {
  std::fprintf(stderr, "qcow2_fuzz: %s%s%s\n", what, detail.empty() ? "" : ": ", detail.c_str());
  std::abort();
}

/// A descriptor still open on a file in the fuzzer's directory once the image is closed: a leak.
/// (Only those: libFuzzer's and the sanitizers' own descriptors come and go on other threads.)
std::string leaked_fd() {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc/self/fd", ec)) {
    std::error_code ec2;
    const fs::path target = fs::read_symlink(e.path(), ec2);
    if (!ec2 && target.native().starts_with(g_dir.native() + "/")) return e.path().filename().string() + " -> " + target.string();
  }
  return {};
}

bool write_whole(const fs::path& p, const uint8_t* data, size_t size) {
  const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, data + done, size - done);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return done == size;
}

uint8_t pattern_byte(uint64_t pos, uint32_t seed) { return static_cast<uint8_t>((pos * 2654435761u) >> 13 ^ seed); }

/// The backing name stored in the header, when it is one we allow to be opened.
bool allowed_backing(const uint8_t* img, size_t len) {
  if (len < 20) return false;
  uint64_t off = 0;
  for (int i = 8; i < 16; ++i) off = (off << 8) | img[i];
  const uint32_t size = (uint32_t{img[16]} << 24) | (uint32_t{img[17]} << 16) | (uint32_t{img[18]} << 8) | img[19];
  if (size == 0 || size > 64 || off > len || size > len - off) return false;
  const std::string_view name(reinterpret_cast<const char*>(img + off), size);
  return name == "fuzz-backing.raw" || name == "fuzz-backing.qcow2" || name == "image.qcow2";
}

struct Op {
  uint8_t kind;
  uint8_t flags;
  uint16_t len;
  uint64_t offset;
};

Op decode(const uint8_t* p) {
  Op op{};
  op.kind = p[0];
  op.flags = p[1];
  op.len = static_cast<uint16_t>(p[2] | (p[3] << 8));
  for (int i = 7; i >= 0; --i) op.offset = (op.offset << 8) | p[4 + i];
  return op;
}

/// 1..3 iovecs over `buf[0, n)` (split points from `flags`).
std::vector<iovec> split(uint8_t* buf, size_t n, uint8_t flags) {
  std::vector<iovec> v;
  const unsigned parts = 1 + (flags >> 2) % 3;
  size_t a = parts >= 2 ? n / 3 + (flags & 1) : n;
  size_t b = parts >= 3 ? (2 * n) / 3 : n;
  a = std::min(a, n);
  b = std::clamp(b, a, n);
  v.push_back({buf, a});
  if (parts >= 2) v.push_back({buf + a, b - a});
  if (parts >= 3) v.push_back({buf + b, n - b});
  return v;
}

// Buffers reused by every operation (allocating a fresh MiB per operation dominated the profile).
uint8_t* io_buffer() {
  static const auto buf = std::make_unique<uint8_t[]>(kMaxIo);
  return buf.get();
}
uint8_t* check_buffer() {
  static const auto buf = std::make_unique<uint8_t[]>(kMaxIo);
  return buf.get();
}
const uint8_t* zero_buffer() {
  static const auto buf = std::make_unique<uint8_t[]>(kMaxIo);  // value-initialised: zeroes
  return buf.get();
}

/// Fills `buf[0, n)` with what write number `index` at guest offset `off` puts there: one byte value
/// per write, and the guest offset stamped into every 512-byte sector (so misplaced data shows).
void fill(uint8_t* buf, size_t n, uint64_t off, size_t index) {
  std::memset(buf, static_cast<int>(0x80 | (index & 0x7f)), n);
  for (uint64_t pos = (off + 511) & ~uint64_t{511}; pos + 8 <= off + n; pos += 512) std::memcpy(buf + (pos - off), &pos, 8);
}

void make_backing_files() {
  std::vector<uint8_t> raw(kBackingSize);
  for (size_t i = 0; i < raw.size(); ++i) raw[i] = pattern_byte(i, 0xb5);
  if (!write_whole(g_dir / "fuzz-backing.raw", raw.data(), raw.size())) die("cannot write fuzz-backing.raw");
  // A qcow2 backing file made by the engine itself (if it cannot create one, the raw file still serves).
  const fs::path q = g_dir / "fuzz-backing.qcow2";
  fs::remove(q);
  if (Qcow2::create(q, {.size = kBackingSize, .cluster_bits = 12})) {
    auto img = Qcow2::open(q, {.open_backing = false});
    if (img) {
      std::vector<uint8_t> d(8192);
      for (size_t i = 0; i < d.size(); ++i) d[i] = pattern_byte(i, 0x3c);
      const iovec v{d.data(), d.size()};
      (void)(*img)->write(12288, std::span(&v, 1));
      (void)(*img)->flush();
    }
  }
}

/// Engine-made seed images (VMM_QCOW2_FUZZ_MAKE_SEEDS): several cluster sizes, some data, a backing name.
void make_seeds(const fs::path& out) {
  fs::create_directories(out);
  struct Seed {
    const char* name;
    vmm::disk::Qcow2CreateOptions o;
    bool data;
  };
  const Seed seeds[] = {
      {"engine-c12-empty.qcow2", {.size = 1 << 20, .cluster_bits = 12}, false},
      {"engine-c12-data.qcow2", {.size = 4 << 20, .cluster_bits = 12}, true},
      {"engine-c16-empty.qcow2", {.size = 16 << 20, .cluster_bits = 16}, false},
      {"engine-c12-backing.qcow2",
       {.size = 0, .cluster_bits = 12, .backing = "fuzz-backing.raw", .backing_format = "raw"},
       true},
  };
  for (const auto& s : seeds) {
    const fs::path p = g_dir / s.name;
    fs::remove(p);
    auto c = Qcow2::create(p, s.o);
    if (!c) {
      std::fprintf(stderr, "qcow2_fuzz: seed %s: %s\n", s.name, c.error().message().c_str());
      continue;
    }
    if (s.data) {
      auto img = Qcow2::open(p, {.open_backing = !s.o.backing.empty()});
      if (!img) {
        std::fprintf(stderr, "qcow2_fuzz: seed %s: %s\n", s.name, img.error().message().c_str());
        continue;
      }
      std::vector<uint8_t> d(3 * 4096 + 512);
      fill(d.data(), d.size(), 4096 - 512, 0x11);
      const iovec v{d.data(), d.size()};
      (void)(*img)->write(4096 - 512, std::span(&v, 1));
      (void)(*img)->write_zeroes(8 * 4096, 4096, false);
      (void)(*img)->write(20 * 4096, std::span(&v, 1));
      (void)(*img)->discard(20 * 4096, 4096);
      (void)(*img)->flush();
    }
    std::error_code ec;
    fs::copy_file(p, out / s.name, fs::copy_options::overwrite_existing, ec);
    fs::remove(p);
  }
}

/// One operation; returns false when the image object was dropped (reopen failed).
bool run_op(std::unique_ptr<Qcow2>& img, unsigned& cluster_bits, const Op& op, size_t index,
            const vmm::disk::Qcow2OpenOptions& base_opts, bool oracle) {
  const uint64_t size = img->size();
  const uint64_t cluster = 1ull << cluster_bits;
  uint64_t off = op.offset;
  if (!(op.flags & 0x02)) off = size ? off % size : 0;  // in range, mostly
  if (op.flags & 0x40) off &= ~uint64_t{511};
  uint64_t len = op.len;
  if (op.flags & 0x10) len *= 512;
  if (op.flags & 0x20) len = (len % 64 + 1) * cluster;
  const size_t io_len = static_cast<size_t>(std::min(len, kMaxIo));
  const auto in_one_cluster = [&](uint64_t o, uint64_t n) {
    return n > 0 && n <= kMaxIo && o < size && n <= size - o && o / cluster == (o + n - 1) / cluster;
  };
  // Reads [o, o + n) back and compares with `expect`.
  const auto check_reads = [&](uint64_t o, const uint8_t* expect, size_t n, const char* after) {
    uint8_t* got = check_buffer();
    std::memset(got, 0xee, n);
    const iovec v{got, n};
    auto r = img->read(o, std::span(&v, 1));
    if (!r) die("read-back failed", std::string(after) + " at " + std::to_string(o) + ": " + r.error().message());
    if (std::memcmp(got, expect, n) != 0) {
      die("read-back mismatch", std::string(after) + " at " + std::to_string(o) + " len " + std::to_string(n));
    }
  };

  switch (op.kind % 6) {
    case 0: {  // read
      auto v = split(io_buffer(), io_len, op.flags);
      (void)img->read(off, v);
      break;
    }
    case 1: {  // write
      uint8_t* buf = io_buffer();
      fill(buf, io_len, off, index);
      auto v = split(buf, io_len, op.flags);
      auto r = img->write(off, v);
      if (r && oracle && in_one_cluster(off, io_len)) check_reads(off, buf, io_len, "write");
      break;
    }
    case 2: {  // discard
      auto r = img->discard(off, len);
      if (r && oracle && in_one_cluster(off, len)) check_reads(off, zero_buffer(), len, "discard");
      break;
    }
    case 3: {  // write_zeroes
      auto r = img->write_zeroes(off, len, op.flags & 0x01);
      if (r && oracle && in_one_cluster(off, len)) check_reads(off, zero_buffer(), len, "write_zeroes");
      break;
    }
    case 4:
      (void)img->flush();
      break;
    case 5: {  // close (with its implicit flush) and open again, maybe read-only
      img.reset();
      auto o = base_opts;
      if (op.flags & 0x01) o.read_only = true;
      auto again = Qcow2::open(g_image, o);
      if (!again) return false;
      img = std::move(*again);
      cluster_bits = img->info().cluster_bits;
      break;
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* shm = "/dev/shm";
  const fs::path base = fs::is_directory(shm) ? fs::path(shm) : fs::temp_directory_path();
  // Directories of fuzzer processes that crashed (a crash leaves its directory behind) go first.
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(base, ec)) {
    const std::string n = e.path().filename().string();
    if (!n.starts_with("vmm-qcow2-fuzz-")) continue;
    const long pid = std::strtol(n.c_str() + 15, nullptr, 10);
    if (pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) fs::remove_all(e.path(), ec);
  }
  g_dir = base / ("vmm-qcow2-fuzz-" + std::to_string(::getpid()));
  fs::create_directories(g_dir);
  g_image = g_dir / "image.qcow2";
  g_oracle = std::getenv("VMM_QCOW2_FUZZ_NO_ORACLE") == nullptr;
  make_backing_files();
  if (const char* seeds = std::getenv("VMM_QCOW2_FUZZ_MAKE_SEEDS")) {
    make_seeds(seeds);
    fs::remove_all(g_dir);
    std::exit(0);
  }
  // The directory goes when the fuzzer exits normally; a crash leaves it for inspection.
  std::atexit([] {
    std::error_code ec;
    fs::remove_all(g_dir, ec);
  });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  const uint32_t word = uint32_t{data[0]} | (uint32_t{data[1]} << 8) | (uint32_t{data[2]} << 16) |
                        (uint32_t{data[3]} << 24);
  const uint8_t config = static_cast<uint8_t>(word >> 24);
  const size_t image_len = std::min<size_t>(word & 0xffffff, size - 4);
  const uint8_t* image = data + 4;
  const uint8_t* ops = image + image_len;
  const size_t nops = std::min(kMaxOps, (size - 4 - image_len) / kOpBytes);

  if (!write_whole(g_image, image, image_len)) die("cannot write the image file", g_image.string());
  vmm::disk::Qcow2OpenOptions opts{
      .read_only = (config & 0x01) != 0,
      .open_backing = allowed_backing(image, image_len),
      .cache_bytes = (config & 0x02) ? (64u << 10) : (32ull << 20),
  };
  bool opened = false;
  {
    auto img = Qcow2::open(g_image, opts);
    if (img) {
      opened = true;
      std::unique_ptr<Qcow2> q = std::move(*img);
      // What info() reports must be sane whatever the file said.
      const auto info = q->info();
      if (info.cluster_bits < 9 || info.cluster_bits > 21) die("info: cluster_bits", std::to_string(info.cluster_bits));
      if (q->size() != info.virtual_size) die("info: size");
      const bool oracle = g_oracle && !(config & 0x04);
      unsigned cluster_bits = info.cluster_bits;
      for (size_t i = 0; i < nops && q; ++i) {
        if (!run_op(q, cluster_bits, decode(ops + i * kOpBytes), i, opts, oracle)) break;
      }
    } else if (img.error().message().empty() || img.error().message().find('\n') != std::string::npos) {
      die("open error is empty or more than one line", img.error().message());
    }
  }
  if (const std::string leak = leaked_fd(); !leak.empty()) die("file descriptor leak", leak);
  if (opened && g_oracle && !(config & 0x04)) {
    auto again = Qcow2::open(g_image, {.read_only = true, .open_backing = false});
    if (!again) die("the image no longer opens after the session", again.error().message());
  }
  return 0;
}
