// qcow2_tool: drives the synchronous qcow2 engine (disk::Qcow2) for the scripts in tests/disk/.
// Single operations (create, write, read, discard, zero), random operation sequences checked byte
// for byte against a raw reference file, and the crash test's writer (killed on purpose) with the
// verifier of what it left. Every mode exits 0 on success and prints one line and exits 1 on error.
//
//   qcow2_tool create IMAGE SIZE [CLUSTER_BITS]
//   qcow2_tool create-overlay IMAGE BACKING [raw|qcow2] [CLUSTER_BITS]
//   qcow2_tool info IMAGE
//   qcow2_tool write IMAGE OFFSET LENGTH SEED     the bytes `raw FILE LENGTH SEED` would hold
//   qcow2_tool read IMAGE OFFSET LENGTH           prints the FNV-1a 64 digest of the bytes
//   qcow2_tool digest RAWFILE OFFSET LENGTH       the same digest of a raw file's bytes
//   qcow2_tool discard IMAGE OFFSET LENGTH
//   qcow2_tool zero IMAGE OFFSET LENGTH [unmap]
//     (write, discard and zero flush() before closing; with a last argument --no-flush they leave it
//      to closing the image)
//   qcow2_tool raw FILE SIZE SEED                 writes a raw file of pseudo-random bytes
//   qcow2_tool compare IMAGE RAWFILE [OFFSET LENGTH]...   the whole virtual disk or the ranges given
//   qcow2_tool random IMAGE REFERENCE SEED OPS [--max-len N] [--read-only] [--no-reopen] [--trace]
//                     [--reopen-flush PERCENT] [--cache-bytes N] [--final-touched]
//     PERCENT of the reopens are preceded by flush() (default 70), the others rely on closing;
//     --cache-bytes bounds the engine's metadata cache (small values force evictions);
//     --final-touched ends with a comparison of the touched clusters only (for huge sparse disks).
//   qcow2_tool crash-writer IMAGE LOG SEED [--max-len N] [--cache-bytes N]
//   qcow2_tool verify IMAGE LOG [--backing RAWFILE]
//
// Environment: QCOW2_TOOL_TRACE=1 (random prints each operation), QCOW2_TOOL_REOPEN_FLUSH=PERCENT.
// Numbers take K/M/G/T suffixes (powers of two) and 0x prefixes.
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "disk/qcow2.hpp"

namespace {

using vmm::disk::Qcow2;

/// Prefixed to every error while set (random: "seed S op I: ").
std::string g_context;

template <typename... Args>
[[noreturn]] void die(fmt::format_string<Args...> format, Args&&... args) {
  std::string msg = g_context + fmt::format(format, std::forward<Args>(args)...);
  std::replace(msg.begin(), msg.end(), '\n', ' ');
  fmt::print(stderr, "qcow2_tool: {}\n", msg);
  std::exit(1);
}

uint64_t parse_u64(std::string_view s, const char* what) {
  std::string str(s);
  if (str.empty()) die("{}: empty number", what);
  uint64_t mult = 1;
  switch (str.back()) {
    case 'K': case 'k': mult = 1ull << 10; break;
    case 'M': case 'm': mult = 1ull << 20; break;
    case 'G': case 'g': mult = 1ull << 30; break;
    case 'T': case 't': mult = 1ull << 40; break;
    default: break;
  }
  if (mult != 1) str.pop_back();
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(str.c_str(), &end, 0);
  if (errno != 0 || end == str.c_str() || *end != '\0' || str[0] == '-') die("{}: bad number '{}'", what, s);
  if (v > UINT64_MAX / mult) die("{}: number too large '{}'", what, s);
  return v * mult;
}

/// xoshiro256** seeded through splitmix64: deterministic everywhere, so a seed is a reproducer.
class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (auto& x : s_) {
      seed += 0x9e3779b97f4a7c15ull;
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      x = z ^ (z >> 31);
    }
  }
  uint64_t next() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  /// Uniform in [0, n); n > 0.
  uint64_t below(uint64_t n) { return next() % n; }
  /// Uniform in [lo, hi].
  uint64_t range(uint64_t lo, uint64_t hi) { return lo + below(hi - lo + 1); }
  bool chance(unsigned percent) { return below(100) < percent; }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

/// The bytes a write with `seed` carries: a pure function of the seed and the length.
void fill(uint64_t seed, std::span<uint8_t> out) {
  Rng rng(seed);
  size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    const uint64_t v = rng.next();
    std::memcpy(out.data() + i, &v, 8);
  }
  if (i < out.size()) {
    const uint64_t v = rng.next();
    std::memcpy(out.data() + i, &v, out.size() - i);
  }
}

uint64_t fnv1a(std::span<const uint8_t> data, uint64_t h = 0xcbf29ce484222325ull) {
  for (uint8_t b : data) {
    h ^= b;
    h *= 0x100000001b3ull;
  }
  return h;
}

/// Metadata cache bound for every open (random --cache-bytes): small values exercise eviction.
uint64_t g_cache_bytes = 0;

std::unique_ptr<Qcow2> open_qcow2(const std::string& path, bool read_only) {
  vmm::disk::Qcow2OpenOptions o{.read_only = read_only};
  if (g_cache_bytes) o.cache_bytes = g_cache_bytes;
  auto q = Qcow2::open(path, o);
  if (!q) die("open {}: {}", path, q.error());
  return std::move(*q);
}

/// Splits `buf` into 1..4 iovecs at random points (as a guest's scatter-gather list would), or one.
std::vector<iovec> split(std::span<uint8_t> buf, Rng* rng) {
  std::vector<iovec> iov;
  size_t pieces = rng ? static_cast<size_t>(rng->range(1, 4)) : 1;
  if (buf.size() < pieces) pieces = 1;
  size_t pos = 0;
  for (size_t i = 0; i + 1 < pieces; ++i) {
    const size_t left = buf.size() - pos - (pieces - 1 - i);
    const size_t n = static_cast<size_t>(rng->range(1, std::max<uint64_t>(1, left)));
    iov.push_back({buf.data() + pos, n});
    pos += n;
  }
  iov.push_back({buf.data() + pos, buf.size() - pos});
  return iov;
}

void q_read(Qcow2& q, uint64_t off, std::span<uint8_t> buf, Rng* rng = nullptr) {
  auto iov = split(buf, rng);
  if (auto r = q.read(off, iov); !r) die("read {} at {} length {}: {}", q.path().string(), off, buf.size(), r.error());
}

void q_write(Qcow2& q, uint64_t off, std::span<uint8_t> buf, Rng* rng = nullptr) {
  auto iov = split(buf, rng);
  if (auto r = q.write(off, iov); !r) die("write {} at {} length {}: {}", q.path().string(), off, buf.size(), r.error());
}

void q_flush(Qcow2& q) {
  if (auto r = q.flush(); !r) die("flush {}: {}", q.path().string(), r.error());
}

class RawFile {
 public:
  RawFile(const std::string& path, int flags, mode_t mode = 0644) : path_(path) {
    fd_ = ::open(path.c_str(), flags | O_CLOEXEC, mode);
    if (fd_ < 0) die("{}: cannot open: {}", path, std::strerror(errno));
  }
  ~RawFile() { ::close(fd_); }
  RawFile(const RawFile&) = delete;
  RawFile& operator=(const RawFile&) = delete;
  int fd() const { return fd_; }
  uint64_t size() const {
    struct stat st {};
    if (::fstat(fd_, &st) != 0) die("{}: stat: {}", path_, std::strerror(errno));
    return static_cast<uint64_t>(st.st_size);
  }
  void pread_all(uint64_t off, std::span<uint8_t> buf) const {
    size_t done = 0;
    while (done < buf.size()) {
      const ssize_t n = ::pread(fd_, buf.data() + done, buf.size() - done, static_cast<off_t>(off + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) die("{}: read at {}: {}", path_, off + done, std::strerror(errno));
      if (n == 0) {  // past the end: zeroes
        std::memset(buf.data() + done, 0, buf.size() - done);
        return;
      }
      done += static_cast<size_t>(n);
    }
  }
  void pwrite_all(uint64_t off, std::span<const uint8_t> buf) const {
    size_t done = 0;
    while (done < buf.size()) {
      const ssize_t n = ::pwrite(fd_, buf.data() + done, buf.size() - done, static_cast<off_t>(off + done));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) die("{}: write at {}: {}", path_, off + done, std::strerror(errno));
      done += static_cast<size_t>(n);
    }
  }
  void zero(uint64_t off, uint64_t len) const {
    // Long ranges become holes; short ones are written (cheaper than punching on ext4).
    if (len >= (1 << 20) && ::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
                                        static_cast<off_t>(len)) == 0)
      return;
    std::vector<uint8_t> zeroes(std::min<uint64_t>(len, 1 << 20), 0);
    for (uint64_t pos = 0; pos < len;) {
      const uint64_t n = std::min<uint64_t>(len - pos, zeroes.size());
      pwrite_all(off + pos, std::span<const uint8_t>(zeroes.data(), n));
      pos += n;
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
};

/// First offset in [0, n) where a and b differ, or n.
size_t first_diff(const uint8_t* a, const uint8_t* b, size_t n) {
  if (std::memcmp(a, b, n) == 0) return n;
  size_t i = 0;
  while (a[i] == b[i]) ++i;
  return i;
}

/// Compares [begin, end) of the virtual disk of `q` with `ref`; dies naming the first differing offset.
void compare_range(Qcow2& q, const RawFile& ref, const std::string& what, uint64_t begin, uint64_t end) {
  constexpr size_t kChunk = 1 << 20;
  std::vector<uint8_t> a(kChunk), b(kChunk);
  for (uint64_t off = begin; off < end; off += kChunk) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, end - off));
    q_read(q, off, std::span(a.data(), n));
    ref.pread_all(off, std::span(b.data(), n));
    if (const size_t d = first_diff(a.data(), b.data(), n); d != n)
      die("{}: first difference at offset {} (0x{:x}): image has 0x{:02x}, reference 0x{:02x}", what, off + d,
          off + d, a[d], b[d]);
  }
}

/// Compares the whole virtual disk of `q` with `ref`.
void compare_all(Qcow2& q, const RawFile& ref, const std::string& what) {
  if (ref.size() != q.size()) die("{}: virtual size {} but the reference has {} bytes", what, q.size(), ref.size());
  compare_range(q, ref, what, 0, q.size());
}

// ---- Single operations ---------------------------------------------------------------------------

/// Drops a trailing "--no-flush" from `a`: the operation then relies on closing the image (the
/// destructor) instead of an explicit flush().
bool take_no_flush(std::span<char*>& a) {
  if (!a.empty() && std::string_view(a.back()) == "--no-flush") {
    a = a.first(a.size() - 1);
    return true;
  }
  return false;
}

int cmd_create(std::span<char*> a) {
  if (a.size() < 2 || a.size() > 3) die("usage: create IMAGE SIZE [CLUSTER_BITS]");
  vmm::disk::Qcow2CreateOptions o;
  o.size = parse_u64(a[1], "SIZE");
  if (a.size() == 3) o.cluster_bits = static_cast<unsigned>(parse_u64(a[2], "CLUSTER_BITS"));
  if (auto r = Qcow2::create(a[0], o); !r) die("create {}: {}", a[0], r.error());
  return 0;
}

int cmd_create_overlay(std::span<char*> a) {
  if (a.size() < 2 || a.size() > 4) die("usage: create-overlay IMAGE BACKING [raw|qcow2] [CLUSTER_BITS]");
  vmm::disk::Qcow2CreateOptions o;
  o.backing = a[1];
  if (a.size() >= 3) o.backing_format = a[2];
  if (a.size() == 4) o.cluster_bits = static_cast<unsigned>(parse_u64(a[3], "CLUSTER_BITS"));
  if (auto r = Qcow2::create(a[0], o); !r) die("create {}: {}", a[0], r.error());
  return 0;
}

int cmd_info(std::span<char*> a) {
  if (a.size() != 1) die("usage: info IMAGE");
  auto q = open_qcow2(a[0], true);
  const auto i = q->info();
  fmt::print("version {}\nvirtual_size {}\ncluster_bits {}\nrefcount_bits {}\nfile_size {}\nallocated_bytes {}\n",
             i.version, i.virtual_size, i.cluster_bits, i.refcount_bits, i.file_size, i.allocated_bytes);
  fmt::print("backing {}\nbacking_format {}\ndirty {}\ncorrupt {}\nsnapshots {}\n", i.backing, i.backing_format,
             i.dirty, i.corrupt, i.snapshots);
  for (const auto& [path, format] : i.chain) fmt::print("chain {} {}\n", path, format);
  return 0;
}

int cmd_write(std::span<char*> a) {
  const bool no_flush = take_no_flush(a);
  if (a.size() != 4) die("usage: write IMAGE OFFSET LENGTH SEED [--no-flush]");
  const uint64_t off = parse_u64(a[1], "OFFSET"), len = parse_u64(a[2], "LENGTH"), seed = parse_u64(a[3], "SEED");
  auto q = open_qcow2(a[0], false);
  // Long writes go in 1 MiB pieces with seeds SEED, SEED+1, ...: the bytes `raw FILE LENGTH SEED` makes.
  constexpr uint64_t kChunk = 1 << 20;
  std::vector<uint8_t> buf(static_cast<size_t>(std::min(len, kChunk)));
  for (uint64_t pos = 0; pos < len; pos += kChunk) {
    const size_t n = static_cast<size_t>(std::min(kChunk, len - pos));
    fill(seed + pos / kChunk, std::span(buf.data(), n));
    q_write(*q, off + pos, std::span(buf.data(), n));
  }
  if (!no_flush) q_flush(*q);
  return 0;
}

int cmd_read(std::span<char*> a) {
  if (a.size() != 3) die("usage: read IMAGE OFFSET LENGTH");
  const uint64_t off = parse_u64(a[1], "OFFSET"), len = parse_u64(a[2], "LENGTH");
  auto q = open_qcow2(a[0], true);
  constexpr uint64_t kChunk = 4 << 20;
  std::vector<uint8_t> buf(static_cast<size_t>(std::min(len, kChunk)));
  uint64_t h = 0xcbf29ce484222325ull;
  for (uint64_t pos = 0; pos < len; pos += kChunk) {
    const size_t n = static_cast<size_t>(std::min(kChunk, len - pos));
    q_read(*q, off + pos, std::span(buf.data(), n));
    h = fnv1a(std::span(buf.data(), n), h);
  }
  fmt::print("{:016x}\n", h);
  return 0;
}

int cmd_digest(std::span<char*> a) {
  if (a.size() != 3) die("usage: digest RAWFILE OFFSET LENGTH");
  const uint64_t off = parse_u64(a[1], "OFFSET"), len = parse_u64(a[2], "LENGTH");
  RawFile f(a[0], O_RDONLY);
  constexpr uint64_t kChunk = 4 << 20;
  std::vector<uint8_t> buf(static_cast<size_t>(std::min(len, kChunk)));
  uint64_t h = 0xcbf29ce484222325ull;
  for (uint64_t pos = 0; pos < len; pos += kChunk) {
    const size_t n = static_cast<size_t>(std::min(kChunk, len - pos));
    f.pread_all(off + pos, std::span(buf.data(), n));
    h = fnv1a(std::span(buf.data(), n), h);
  }
  fmt::print("{:016x}\n", h);
  return 0;
}

int cmd_discard(std::span<char*> a) {
  const bool no_flush = take_no_flush(a);
  if (a.size() != 3) die("usage: discard IMAGE OFFSET LENGTH [--no-flush]");
  const uint64_t off = parse_u64(a[1], "OFFSET"), len = parse_u64(a[2], "LENGTH");
  auto q = open_qcow2(a[0], false);
  if (auto r = q->discard(off, len); !r) die("discard {} at {} length {}: {}", a[0], off, len, r.error());
  if (!no_flush) q_flush(*q);
  return 0;
}

int cmd_zero(std::span<char*> a) {
  const bool no_flush = take_no_flush(a);
  if (a.size() != 3 && !(a.size() == 4 && std::string_view(a[3]) == "unmap"))
    die("usage: zero IMAGE OFFSET LENGTH [unmap] [--no-flush]");
  const uint64_t off = parse_u64(a[1], "OFFSET"), len = parse_u64(a[2], "LENGTH");
  auto q = open_qcow2(a[0], false);
  if (auto r = q->write_zeroes(off, len, a.size() == 4); !r)
    die("write_zeroes {} at {} length {}: {}", a[0], off, len, r.error());
  if (!no_flush) q_flush(*q);
  return 0;
}

int cmd_raw(std::span<char*> a) {
  if (a.size() != 3) die("usage: raw FILE SIZE SEED");
  const uint64_t size = parse_u64(a[1], "SIZE"), seed = parse_u64(a[2], "SEED");
  RawFile f(a[0], O_RDWR | O_CREAT | O_TRUNC);
  constexpr uint64_t kChunk = 1 << 20;
  std::vector<uint8_t> buf(kChunk);
  for (uint64_t pos = 0; pos < size; pos += kChunk) {
    const size_t n = static_cast<size_t>(std::min(kChunk, size - pos));
    fill(seed + pos / kChunk, std::span(buf.data(), n));
    f.pwrite_all(pos, std::span(buf.data(), n));
  }
  if (::ftruncate(f.fd(), static_cast<off_t>(size)) != 0) die("{}: truncate: {}", a[0], std::strerror(errno));
  return 0;
}

int cmd_compare(std::span<char*> a) {
  if (a.size() < 2 || a.size() % 2 != 0) die("usage: compare IMAGE RAWFILE [OFFSET LENGTH]...");
  auto q = open_qcow2(a[0], true);
  RawFile ref(a[1], O_RDONLY);
  const std::string what = fmt::format("{} vs {}", a[0], a[1]);
  if (a.size() == 2) {
    compare_all(*q, ref, what);
    return 0;
  }
  if (ref.size() != q->size()) die("{}: virtual size {} but the reference has {} bytes", what, q->size(), ref.size());
  for (size_t i = 2; i < a.size(); i += 2) {
    const uint64_t off = parse_u64(a[i], "OFFSET"), len = parse_u64(a[i + 1], "LENGTH");
    if (off > q->size() || len > q->size() - off) die("{}: range {}+{} outside the disk", what, off, len);
    compare_range(*q, ref, what, off, off + len);
  }
  return 0;
}

// ---- Random operation sequences against a raw reference ----------------------------------------

/// Picks a length: tiny, sector multiples, around the cluster size, or long.
uint64_t pick_length(Rng& rng, uint64_t max_len, uint64_t cluster) {
  uint64_t len = 1;
  switch (rng.below(7)) {
    case 0: len = rng.range(1, 512); break;
    case 1: len = 512 * rng.range(1, 16); break;
    case 2: len = cluster * rng.range(1, 4); break;
    case 3: len = rng.range(1, 2 * cluster); break;
    case 4: len = cluster + rng.range(0, 1024) - std::min<uint64_t>(cluster - 1, 512); break;
    default: len = rng.range(1, max_len); break;
  }
  return std::clamp<uint64_t>(len, 1, max_len);
}

/// Picks an offset for `len` bytes in a disk of `size`: arbitrary, sector- or cluster-aligned, just
/// before a cluster boundary (so the range crosses it), or at the very end.
uint64_t pick_offset(Rng& rng, uint64_t size, uint64_t len, uint64_t cluster) {
  const uint64_t last = size - len;
  uint64_t off = 0;
  switch (rng.below(6)) {
    case 0: case 1: off = rng.range(0, last); break;
    case 2: off = rng.range(0, last) & ~uint64_t{511}; break;
    case 3: off = rng.range(0, last) & ~(cluster - 1); break;
    case 4: {
      const uint64_t boundary = (rng.range(0, last) & ~(cluster - 1)) + cluster;
      off = boundary - std::min<uint64_t>(boundary, rng.range(1, std::min<uint64_t>(len, 4096)));
      break;
    }
    default: off = last - std::min<uint64_t>(last, rng.range(0, cluster)); break;
  }
  return std::min(off, last);
}

struct RandomOptions {
  uint64_t max_len = 256 << 10;
  bool read_only = false;
  bool reopen = true;
  bool trace = false;
  bool final_touched = false;  // final comparison over the ranges operations touched (huge disks)
  int reopen_flush_percent = 70;  // reopens preceded by an explicit flush()
};

int cmd_random(std::span<char*> a) {
  if (a.size() < 4) die("usage: random IMAGE REFERENCE SEED OPS [--max-len N] [--read-only] [--no-reopen] [--trace] "
        "[--reopen-flush PERCENT] [--cache-bytes N] [--final-touched]");
  const std::string image = a[0], refpath = a[1];
  const uint64_t seed = parse_u64(a[2], "SEED"), ops = parse_u64(a[3], "OPS");
  RandomOptions opt;
  for (size_t i = 4; i < a.size(); ++i) {
    const std::string_view arg = a[i];
    if (arg == "--max-len" && i + 1 < a.size()) opt.max_len = parse_u64(a[++i], "--max-len");
    else if (arg == "--read-only") opt.read_only = true;
    else if (arg == "--no-reopen") opt.reopen = false;
    else if (arg == "--final-touched") opt.final_touched = true;
    else if (arg == "--trace") opt.trace = true;
    else if (arg == "--cache-bytes" && i + 1 < a.size()) g_cache_bytes = parse_u64(a[++i], "--cache-bytes");
    else if (arg == "--reopen-flush" && i + 1 < a.size())
      opt.reopen_flush_percent = static_cast<int>(std::min<uint64_t>(100, parse_u64(a[++i], "--reopen-flush")));
    else die("random: unknown option '{}'", arg);
  }
  if (opt.max_len == 0) die("--max-len must be positive");
  const char* env_trace = std::getenv("QCOW2_TOOL_TRACE");
  if (env_trace && *env_trace) opt.trace = true;
  if (const char* env = std::getenv("QCOW2_TOOL_REOPEN_FLUSH"); env && *env)
    opt.reopen_flush_percent = static_cast<int>(std::min<uint64_t>(100, parse_u64(env, "QCOW2_TOOL_REOPEN_FLUSH")));

  auto q = open_qcow2(image, opt.read_only);
  RawFile ref(refpath, opt.read_only ? O_RDONLY : O_RDWR);
  const uint64_t size = q->size();
  if (ref.size() != size) die("{}: virtual size {} but {} has {} bytes", image, size, refpath, ref.size());
  if (size == 0) die("{}: empty image", image);
  const uint64_t cluster = uint64_t{1} << q->info().cluster_bits;
  const uint64_t max_len = std::min(opt.max_len, size);
  Rng rng(seed);
  std::vector<uint8_t> buf, expect;
  uint64_t counts[8] = {};
  auto where = [](uint64_t, const char* what, uint64_t off, uint64_t len) {
    return fmt::format("{} offset {} length {}", what, off, len);
  };

  // A read-only image must refuse writes and leave its contents alone.
  if (opt.read_only) {
    std::vector<uint8_t> one(512, 0x5a);
    auto iov = split(std::span(one), nullptr);
    if (q->write(0, iov)) die("{}: a write to the read-only image succeeded", image);
    if (q->write_zeroes(0, 512, true)) die("{}: write_zeroes on the read-only image succeeded", image);
  }

  std::vector<std::pair<uint64_t, uint64_t>> touched;  // (offset, length) of every operation
  for (uint64_t i = 0; i < ops; ++i) {
    g_context = fmt::format("seed {} op {}: ", seed, i);
    const uint64_t kind = opt.read_only ? 0 : rng.below(100);
    const uint64_t len = pick_length(rng, max_len, cluster);
    const uint64_t off = pick_offset(rng, size, len, cluster);
    if (opt.final_touched && kind < 94) touched.emplace_back(off, len);
    if (kind < 32) {  // read, compared at once
      if (opt.trace) fmt::print(stderr, "{}: read {} {}\n", i, off, len);
      buf.resize(len);
      expect.resize(len);
      q_read(*q, off, std::span(buf), &rng);
      ref.pread_all(off, std::span(expect));
      if (const size_t d = first_diff(buf.data(), expect.data(), len); d != len)
        die("{}: read differs at offset {} (0x{:x}): image 0x{:02x}, reference 0x{:02x}",
            where(i, "read", off, len), off + d, off + d, buf[d], expect[d]);
      ++counts[0];
    } else if (kind < 70) {  // write of fresh random data
      const uint64_t data_seed = rng.next();
      if (opt.trace) fmt::print(stderr, "{}: write {} {} seed {}\n", i, off, len, data_seed);
      buf.resize(len);
      fill(data_seed, std::span(buf));
      ref.pwrite_all(off, std::span(buf));  // first: the engine must not change the caller's buffer
      q_write(*q, off, std::span(buf), &rng);
      ++counts[1];
    } else if (kind < 80) {  // discard: reads back as zeroes
      if (opt.trace) fmt::print(stderr, "{}: discard {} {}\n", i, off, len);
      if (auto r = q->discard(off, len); !r) die("{}: {}", where(i, "discard", off, len), r.error());
      ref.zero(off, len);
      ++counts[2];
    } else if (kind < 94) {  // write_zeroes, half of them allowed to unmap
      const bool unmap = rng.chance(50);
      if (opt.trace) fmt::print(stderr, "{}: zero {} {}{}\n", i, off, len, unmap ? " unmap" : "");
      if (auto r = q->write_zeroes(off, len, unmap); !r) die("{}: {}", where(i, "write_zeroes", off, len), r.error());
      ref.zero(off, len);
      ++counts[unmap ? 3 : 4];
    } else if (kind < 97) {
      if (opt.trace) fmt::print(stderr, "{}: flush\n", i);
      q_flush(*q);
      ++counts[5];
    } else if (kind < 99) {  // out of range: refused, nothing changes
      const uint64_t bad_off = size - std::min<uint64_t>(size, rng.range(0, 511));
      const uint64_t bad_len = rng.range(size - bad_off + 1, size - bad_off + 4096);
      if (opt.trace) fmt::print(stderr, "{}: out-of-range write {} {}\n", i, bad_off, bad_len);
      buf.assign(bad_len, 0xee);
      auto iov = split(std::span(buf), nullptr);
      if (q->write(bad_off, iov)) die("{}: accepted", where(i, "out-of-range write", bad_off, bad_len));
      if (q->read(bad_off, iov)) die("{}: accepted", where(i, "out-of-range read", bad_off, bad_len));
      if (q->write_zeroes(bad_off, bad_len, true)) die("{}: accepted", where(i, "out-of-range zero", bad_off, bad_len));
      ++counts[6];
    } else if (opt.reopen) {  // close and reopen, usually after a flush
      const bool flush_first = rng.below(100) < static_cast<uint64_t>(opt.reopen_flush_percent);
      if (opt.trace) fmt::print(stderr, "{}: reopen{}\n", i, flush_first ? " after flush" : "");
      if (flush_first) q_flush(*q);
      q.reset();
      q = open_qcow2(image, false);
      ++counts[7];
    }
  }
  g_context = fmt::format("seed {} after {} ops: ", seed, ops);
  if (!opt.read_only) q_flush(*q);
  q.reset();
  g_context.clear();
  // The final comparison reads what is on disk, through a fresh, read-only open.
  q = open_qcow2(image, true);
  g_context = fmt::format("seed {} after {} ops: ", seed, ops);
  if (opt.final_touched) {
    // Each touched range, widened to whole clusters (neighbours of a write must be intact too).
    for (const auto& [off, len] : touched) {
      const uint64_t begin = off & ~(cluster - 1);
      const uint64_t end = std::min(size, (off + len + cluster - 1) & ~(cluster - 1));
      compare_range(*q, ref, fmt::format("{} vs {}", image, refpath), begin, end);
    }
    compare_range(*q, ref, fmt::format("{} vs {}", image, refpath), 0, std::min<uint64_t>(size, 8 << 20));
    compare_range(*q, ref, fmt::format("{} vs {}", image, refpath), size - std::min<uint64_t>(size, 8 << 20), size);
  } else {
    compare_all(*q, ref, fmt::format("{} vs {}", image, refpath));
  }
  g_context.clear();
  fmt::print("ok: {} ops (read {} write {} discard {} zero-unmap {} zero {} flush {} out-of-range {} reopen {})\n",
             ops, counts[0], counts[1], counts[2], counts[3], counts[4], counts[5], counts[6], counts[7]);
  return 0;
}

// ---- Crash test: a writer killed at a random moment, and the verifier ---------------------------
//
// Log lines (each written with one write(2) before the operation starts, so that an operation the
// engine may have carried out is always in the log):
//   W offset length seed    a write of fill(seed) bytes
//   Z offset length         write_zeroes or discard: reads back as zeroes
//   F n                     flush() returned; the n operation lines before it are durable

void log_line(int fd, const std::string& line) {
  if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size()))
    die("log write: {}", std::strerror(errno));
}

int cmd_crash_writer(std::span<char*> a) {
  if (a.size() < 3) die("usage: crash-writer IMAGE LOG SEED [--max-len N] [--cache-bytes N]");
  const std::string image = a[0];
  const uint64_t seed = parse_u64(a[2], "SEED");
  uint64_t max_len = 128 << 10;
  for (size_t i = 3; i < a.size(); ++i) {
    if (std::string_view(a[i]) == "--max-len" && i + 1 < a.size()) max_len = parse_u64(a[++i], "--max-len");
    else if (std::string_view(a[i]) == "--cache-bytes" && i + 1 < a.size()) g_cache_bytes = parse_u64(a[++i], "--cache-bytes");
    else die("crash-writer: unknown option '{}'", a[i]);
  }
  RawFile log(a[1], O_WRONLY | O_CREAT | O_TRUNC | O_APPEND);
  auto q = open_qcow2(image, false);
  const uint64_t size = q->size();
  const uint64_t cluster = uint64_t{1} << q->info().cluster_bits;
  max_len = std::clamp<uint64_t>(max_len, 1, size);
  Rng rng(seed);
  std::vector<uint8_t> buf;
  uint64_t lines = 0;
  uint64_t until_flush = rng.range(1, 8);
  for (;;) {
    const uint64_t len = pick_length(rng, max_len, cluster);
    const uint64_t off = pick_offset(rng, size, len, cluster);
    const uint64_t kind = rng.below(100);
    if (kind < 80) {
      const uint64_t data_seed = rng.next();
      buf.resize(len);
      fill(data_seed, std::span(buf));
      log_line(log.fd(), fmt::format("W {} {} {}\n", off, len, data_seed));
      q_write(*q, off, std::span(buf), &rng);
    } else if (kind < 90) {
      log_line(log.fd(), fmt::format("Z {} {}\n", off, len));
      if (auto r = q->write_zeroes(off, len, rng.chance(50)); !r) die("write_zeroes: {}", r.error());
    } else {
      log_line(log.fd(), fmt::format("Z {} {}\n", off, len));
      if (auto r = q->discard(off, len); !r) die("discard: {}", r.error());
    }
    ++lines;
    if (--until_flush == 0) {
      q_flush(*q);
      log_line(log.fd(), fmt::format("F {}\n", lines));
      if (::fsync(log.fd()) != 0) die("log fsync: {}", std::strerror(errno));
      until_flush = rng.range(1, 8);
    }
  }
}

struct LogOp {
  char kind;  // 'W' or 'Z'
  uint64_t off, len, seed;
};

int cmd_verify(std::span<char*> a) {
  if (a.size() != 2 && !(a.size() == 4 && std::string_view(a[2]) == "--backing"))
    die("usage: verify IMAGE LOG [--backing RAWFILE]");
  const std::string image = a[0], logpath = a[1];
  std::ifstream file(logpath, std::ios::binary);
  if (!file) die("{}: cannot open", logpath);
  std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  // A last line without its newline was cut short by the kill: its operation never started.
  if (const auto nl = text.rfind('\n'); nl == std::string::npos) text.clear();
  else text.resize(nl + 1);
  std::istringstream in(text);
  std::vector<LogOp> ops;
  uint64_t durable = 0;  // operation lines covered by the last F
  std::string line;
  while (std::getline(in, line)) {
    char kind = 0;
    unsigned long long x = 0, y = 0, z = 0;
    if (std::sscanf(line.c_str(), "W %llu %llu %llu", &x, &y, &z) == 3) kind = 'W';
    else if (std::sscanf(line.c_str(), "Z %llu %llu", &x, &y) == 2) kind = 'Z';
    else if (std::sscanf(line.c_str(), "F %llu", &x) == 1) {
      if (x != ops.size()) die("{}: F {} after {} operations", logpath, x, ops.size());
      durable = x;
      continue;
    } else {
      die("{}: bad line '{}'", logpath, line);
    }
    ops.push_back({kind, x, y, z});
  }

  auto q = open_qcow2(image, true);
  const uint64_t size = q->size();
  std::vector<uint8_t> expect(size, 0);
  if (a.size() == 4) {
    RawFile base(a[3], O_RDONLY);
    base.pread_all(0, std::span(expect));
  }
  for (const auto& op : ops)
    if (op.off > size || op.len > size - op.off) die("{}: operation outside the disk", logpath);
  auto apply = [&](const LogOp& op, uint8_t* into) {
    if (op.kind == 'Z') std::memset(into, 0, op.len);
    else fill(op.seed, std::span(into, op.len));
  };
  for (uint64_t i = 0; i < durable; ++i) apply(ops[i], expect.data() + ops[i].off);

  auto actual = std::make_unique_for_overwrite<uint8_t[]>(size);  // (page faults are slow on some hosts)
  constexpr uint64_t kChunk = 1 << 20;
  for (uint64_t off = 0; off < size; off += kChunk)
    q_read(*q, off, std::span(actual.get() + off, static_cast<size_t>(std::min(kChunk, size - off))));

  // Bytes touched after the last flush ("unsettled") may hold their durable value or any later
  // operation's; every other byte must be exactly the durable value. Unsettled ranges, merged:
  std::vector<std::pair<uint64_t, uint64_t>> unsettled;  // [begin, end)
  for (uint64_t i = durable; i < ops.size(); ++i) unsettled.emplace_back(ops[i].off, ops[i].off + ops[i].len);
  std::sort(unsettled.begin(), unsettled.end());
  std::vector<std::pair<uint64_t, uint64_t>> merged;
  for (const auto& r : unsettled) {
    if (r.first == r.second) continue;
    if (!merged.empty() && r.first <= merged.back().second) merged.back().second = std::max(merged.back().second, r.second);
    else merged.push_back(r);
  }
  auto report = [&](uint64_t off, const char* how) {
    std::string last = "none (backing file or zero)";
    for (uint64_t i = durable; i-- > 0;)
      if (off >= ops[i].off && off < ops[i].off + ops[i].len) {
        last = fmt::format("operation #{} ({} {} {})", i + 1, ops[i].kind, ops[i].off, ops[i].len);
        break;
      }
    die("{}: byte at offset {} (0x{:x}) is 0x{:02x}, expected 0x{:02x}{}; {} of {} operations durable; last durable "
        "operation there: {}",
        image, off, off, actual[off], expect[off], how, durable, ops.size(), last);
  };
  uint64_t checked = 0, plausible = 0, pos = 0;
  auto check_exact = [&](uint64_t begin, uint64_t end) {
    if (const size_t d = first_diff(actual.get() + begin, expect.data() + begin, end - begin); d != end - begin)
      report(begin + d, "");
    checked += end - begin;
  };
  std::vector<uint8_t> later;
  for (const auto& [begin, end] : merged) {
    check_exact(pos, begin);
    pos = end;
    std::vector<uint8_t> ok(end - begin);
    for (uint64_t i = begin; i < end; ++i) ok[i - begin] = actual[i] == expect[i];
    for (uint64_t i = durable; i < ops.size(); ++i) {
      const auto& op = ops[i];
      if (op.off >= end || op.off + op.len <= begin) continue;
      later.resize(op.len);
      apply(op, later.data());
      for (uint64_t j = 0; j < op.len; ++j) ok[op.off + j - begin] |= actual[op.off + j] == later[j];
    }
    for (uint64_t i = begin; i < end; ++i)
      if (!ok[i - begin]) report(i, " or any later operation's value");
    plausible += end - begin;
  }
  check_exact(pos, size);
  fmt::print("ok: {} operations, {} durable; {} bytes checked exactly, {} unsettled bytes plausible\n", ops.size(),
             durable, checked, plausible);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) die("usage: qcow2_tool MODE ARGS... (see tests/disk/qcow2_tool.cpp)");
  const std::string_view mode = argv[1];
  std::span<char*> args(argv + 2, static_cast<size_t>(argc - 2));
  if (mode == "create") return cmd_create(args);
  if (mode == "create-overlay") return cmd_create_overlay(args);
  if (mode == "info") return cmd_info(args);
  if (mode == "write") return cmd_write(args);
  if (mode == "read") return cmd_read(args);
  if (mode == "digest") return cmd_digest(args);
  if (mode == "discard") return cmd_discard(args);
  if (mode == "zero") return cmd_zero(args);
  if (mode == "raw") return cmd_raw(args);
  if (mode == "compare") return cmd_compare(args);
  if (mode == "random") return cmd_random(args);
  if (mode == "crash-writer") return cmd_crash_writer(args);
  if (mode == "verify") return cmd_verify(args);
  die("unknown mode '{}'", mode);
}
