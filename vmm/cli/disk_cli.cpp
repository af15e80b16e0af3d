#include "vmm/cli/disk_cli.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include <array>
#include <bit>
#include <cerrno>
#include <charconv>
#include <optional>
#include <utility>
#include <vector>

#include "vmm/base/process.hpp"
#include "disk/qcow2.hpp"
#include "vmm/cli/disk_bench.hpp"
#include "vmm/exit_status.hpp"
#include "vmm/base/fd.hpp"
#include "vmm/base/size_parse.hpp"

namespace vmm::cli {

namespace {

using Json = nlohmann::ordered_json;

// Feature bit names, qcow2 spec (docs/interop/qcow2.txt, header bytes 72-95).
constexpr std::array<const char*, 5> kIncompatible{"dirty", "corrupt", "external-data-file", "compression-type",
                                                   "extended-l2"};
constexpr std::array<const char*, 1> kCompatible{"lazy-refcounts"};
constexpr std::array<const char*, 2> kAutoclear{"bitmaps", "raw-external-data"};

/// "none", or "0x3 (dirty, corrupt)"; bits without a name are shown as "bit N".
template <size_t N>
std::string feature_text(uint64_t bits, const std::array<const char*, N>& names) {
  if (bits == 0) return "none";
  std::string list;
  for (unsigned b = 0; b < 64; ++b) {
    if (!(bits & (1ull << b))) continue;
    if (!list.empty()) list += ", ";
    list += b < N ? std::string(names[b]) : fmt::format("bit {}", b);
  }
  return fmt::format("{:#x} ({})", bits, list);
}

/// Four-space indentation like qemu-img; bytes that are not UTF-8 (a hostile backing file name)
/// become U+FFFD instead of an exception.
std::string dump(const Json& j) { return j.dump(4, ' ', false, Json::error_handler_t::replace); }

/// Bytes the file occupies on its file system (st_blocks), like qemu-img's "disk size".
uint64_t disk_usage(const struct stat& st) { return static_cast<uint64_t>(st.st_blocks) * 512; }

int info_raw(const std::filesystem::path& path, uint64_t size, uint64_t used, bool json) {
  if (json) {
    Json j{{"filename", path.string()}, {"format", "raw"},     {"virtual-size", size},
           {"actual-size", used},       {"dirty-flag", false}, {"backing-chain", Json::array()}};
    fmt::print("{}\n", dump(j));
  } else {
    fmt::print("image: {}\nfile format: raw\nvirtual size: {} ({} bytes)\ndisk size: {}\n", printable(path.string()),
               human_size(size), size, human_size(used));
  }
  return exit_code::kOk;
}

int info_qcow2(const std::filesystem::path& path, uint64_t length, uint64_t used, bool json) {
  // With its backing chain if that opens; otherwise the image alone, and the chain's error.
  std::optional<Error> chain_error;
  auto img = disk::Qcow2::open(path, {.read_only = true});
  if (!img) {
    chain_error = img.error();
    img = disk::Qcow2::open(path, {.read_only = true, .open_backing = false});
    if (!img) {
      print_disk_error(img.error().message());
      return exit_code::kImage;
    }
  }
  const disk::Qcow2Info info = (*img)->info();
  const uint64_t cluster = 1ull << info.cluster_bits;
  const std::string compat = info.version >= 3 ? "1.1" : "0.10";
  if (json) {
    Json j{{"filename", path.string()},
           {"format", "qcow2"},
           {"virtual-size", info.virtual_size},
           {"actual-size", used},
           {"cluster-size", cluster}};
    if (!info.backing.empty()) {
      j["backing-filename"] = info.backing;
      if (!info.chain.empty()) j["full-backing-filename"] = info.chain.front().first;
      if (!info.backing_format.empty()) j["backing-filename-format"] = info.backing_format;
    }
    j["dirty-flag"] = info.dirty;
    j["format-specific"] = {{"type", "qcow2"},
                            {"data",
                             {{"compat", compat},
                              {"lazy-refcounts", (info.compatible_features & 1) != 0},
                              {"refcount-bits", info.refcount_bits},
                              {"corrupt", info.corrupt},
                              {"extended-l2", (info.incompatible_features & (1u << 4)) != 0}}}};
    j["version"] = info.version;
    j["refcount-bits"] = info.refcount_bits;
    j["allocated-size"] = info.allocated_bytes;
    j["file-length"] = length;
    j["corrupt"] = info.corrupt;
    j["snapshots"] = info.snapshots;
    j["incompatible-features"] = info.incompatible_features;
    j["compatible-features"] = info.compatible_features;
    j["autoclear-features"] = info.autoclear_features;
    Json chain = Json::array();
    for (const auto& [file, format] : info.chain) chain.push_back({{"filename", file}, {"format", format}});
    j["backing-chain"] = std::move(chain);
    if (chain_error) j["backing-chain-error"] = chain_error->message();
    fmt::print("{}\n", dump(j));
    return exit_code::kOk;
  }
  std::string out = fmt::format("image: {}\nfile format: qcow2\nvirtual size: {} ({} bytes)\ndisk size: {}\n",
                                printable(path.string()), human_size(info.virtual_size), info.virtual_size, human_size(used));
  out += fmt::format("cluster_size: {}\n", cluster);
  if (!info.backing.empty()) {
    out += fmt::format("backing file: {}\n", printable(info.backing));
    if (!info.backing_format.empty()) out += fmt::format("backing file format: {}\n", printable(info.backing_format));
  }
  out += "Format specific information:\n";
  out += fmt::format("    compat: {} (version {})\n", compat, info.version);
  out += fmt::format("    refcount bits: {}\n", info.refcount_bits);
  out += fmt::format("    allocated: {} ({} clusters)\n", human_size(info.allocated_bytes),
                     info.allocated_bytes / cluster);
  out += fmt::format("    snapshots: {}\n", info.snapshots);
  out += fmt::format("    incompatible features: {}\n", feature_text(info.incompatible_features, kIncompatible));
  out += fmt::format("    compatible features: {}\n", feature_text(info.compatible_features, kCompatible));
  out += fmt::format("    autoclear features: {}\n", feature_text(info.autoclear_features, kAutoclear));
  out += fmt::format("    dirty: {}\n    corrupt: {}\n", info.dirty, info.corrupt);
  if (!info.backing.empty() || !info.chain.empty()) {
    out += "backing chain:\n";
    for (const auto& [file, format] : info.chain) out += fmt::format("    {} ({})\n", printable(file), printable(format));
    if (chain_error) out += fmt::format("    cannot open: {}\n", printable(chain_error->message()));
  }
  fmt::print("{}", out);
  return exit_code::kOk;
}

}  // namespace

std::string printable(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      out += fmt::format("\\x{:02x}", u);
    } else {
      out += c;
    }
  }
  return out;
}

void print_disk_error(std::string_view message) { fmt::print(stderr, "vmm: error: {}\n", printable(message)); }

Result<unsigned> parse_cluster_size(std::string_view text) {
  auto size = parse_size(text);
  if (!size) return std::unexpected(size.error().context("--cluster-size"));
  if (*size < 4096 || *size > (2u << 20) || !std::has_single_bit(*size)) {
    return fail("--cluster-size {}: must be a power of two from 4K to 2M ({} bytes given)", text, *size);
  }
  return static_cast<unsigned>(std::countr_zero(*size));
}

std::string human_size(uint64_t bytes) {
  // qemu's size_to_str(): the unit switches at 1000 of the smaller one (1000 KiB shows 0.977 MiB).
  static constexpr std::array<const char*, 7> kUnits{"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
  unsigned i = 0;
  while (i + 1 < kUnits.size() &&
         static_cast<double>(bytes) >= static_cast<double>(1ull << (10 * (i + 1))) * (1000.0 / 1024.0)) {
    ++i;
  }
  return fmt::format("{:.3g} {}B", static_cast<double>(bytes) / static_cast<double>(1ull << (10 * i)), kUnits[i]);
}

int disk_create(const std::filesystem::path& path, const std::string& size_text, const std::string& backing,
                const std::string& backing_format, const std::string& cluster_size) {
  disk::Qcow2CreateOptions o;
  if (size_text.empty() && backing.empty()) {
    print_disk_error("vmm disk create: --size or --backing (or both) is needed");
    return exit_code::kUsage;
  }
  if (!size_text.empty()) {
    auto size = parse_size(size_text);
    if (!size) {
      print_disk_error(size.error().context("--size").message());
      return exit_code::kUsage;
    }
    if (*size == 0 || *size % 512 != 0) {
      print_disk_error(fmt::format("--size {}: must be a nonzero multiple of 512 bytes ({} given)", size_text, *size));
      return exit_code::kUsage;
    }
    o.size = *size;
  }
  if (!backing_format.empty()) {
    if (backing.empty()) {
      print_disk_error("--backing-format needs --backing");
      return exit_code::kUsage;
    }
    if (backing_format != "raw" && backing_format != "qcow2") {
      print_disk_error(fmt::format("--backing-format {}: must be raw or qcow2", backing_format));
      return exit_code::kUsage;
    }
  }
  if (!cluster_size.empty()) {
    auto bits = parse_cluster_size(cluster_size);
    if (!bits) {
      print_disk_error(bits.error().message());
      return exit_code::kUsage;
    }
    o.cluster_bits = *bits;
  }
  o.backing = backing;
  o.backing_format = backing_format;
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    print_disk_error(fmt::format("{}: already exists (vmm disk create never overwrites a file)", path.string()));
    return exit_code::kImage;
  }
  if (auto r = disk::Qcow2::create(path, o); !r) {
    print_disk_error(r.error().message());
    return exit_code::kImage;
  }
  return exit_code::kOk;
}

int disk_info(const std::filesystem::path& path, bool json) {
  const std::string name = path.string();
  Fd fd(::open(name.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));  // (a FIFO: refused, not waited for)
  if (!fd) {
    print_disk_error(fmt::format("{}: cannot open for reading: {}", name, errno_text(errno)));
    return exit_code::kImage;
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    print_disk_error(fmt::format("{}: fstat: {}", name, errno_text(errno)));
    return exit_code::kImage;
  }
  uint64_t size = 0;
  if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
  } else if (S_ISBLK(st.st_mode)) {
    if (::ioctl(fd.get(), BLKGETSIZE64, &size) != 0) {
      print_disk_error(fmt::format("{}: BLKGETSIZE64: {}", name, errno_text(errno)));
      return exit_code::kImage;
    }
  } else {
    print_disk_error(fmt::format("{}: not a regular file or block device", name));
    return exit_code::kImage;
  }
  const uint64_t used = S_ISREG(st.st_mode) ? disk_usage(st) : 0;
  auto qcow2 = disk::Qcow2::probe(fd.get());
  if (!qcow2) {
    print_disk_error(fmt::format("{}: {}", name, qcow2.error().message()));
    return exit_code::kImage;
  }
  if (!*qcow2) return info_raw(path, size, used, json);
  fd.reset();
  return info_qcow2(path, size, used, json);
}

// ---- CLI wiring -------------------------------------------------------------------------------

struct DiskCommand::Options {
  CLI::App* disk = nullptr;
  CLI::App* create = nullptr;
  CLI::App* info = nullptr;
  CLI::App* bench = nullptr;
  std::filesystem::path file;
  // create
  std::string size, backing, backing_format, cluster_size;
  // info
  bool json = false;
  // bench
  BenchOptions bench_opts;
  std::string pattern = "seq", buffer_size = "4K", offset = "0B", step;
  std::string depth = "64", count = "75000", flush_interval;
};

namespace {

/// A count: decimal digits only (CLI11 would wrap "-5" into a huge unsigned number).
Result<uint64_t> parse_count(const char* option, const std::string& text, uint64_t max) {
  uint64_t v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || ptr != text.data() + text.size() || v > max) {
    return fail("{} {}: not a whole number from 0 to {}", option, text, max);
  }
  return v;
}

}  // namespace

DiskCommand::DiskCommand(CLI::App& app) : o_(std::make_unique<Options>()) {
  Options& o = *o_;
  o.disk = app.add_subcommand("disk", "Create, inspect and benchmark disk images (qcow2, raw)");
  o.disk->require_subcommand(1);
  o.disk->footer("Sizes take a K/M/G/T unit (B for bytes); a bare number means MiB. "
                 "Exit status: 0 success; 2 bad usage; 6 image error.");

  o.create = o.disk->add_subcommand("create", "Create a new qcow2 image (never overwrites a file)");
  o.create->add_option("FILE", o.file, "The new image")->required();
  o.create->add_option("--size", o.size, "Virtual size, e.g. 10G (default with --backing: the backing file's)");
  o.create->add_option("--backing", o.backing,
                       "Backing file, stored as given: a relative path is relative to FILE's directory");
  o.create->add_option("--backing-format", o.backing_format, "Backing file format: raw or qcow2 (default: probed)");
  o.create->add_option("--cluster-size", o.cluster_size, "Cluster size, a power of two from 4K to 2M (default 64K)");

  o.info = o.disk->add_subcommand("info", "Show what an image is: format, sizes, backing chain, qcow2 header");
  o.info->add_option("FILE", o.file, "The image")->required();
  o.info->add_flag("--json", o.json, "JSON output (keys as in qemu-img info --output=json)");

  BenchOptions& b = o.bench_opts;
  o.bench = o.disk->add_subcommand(
      "bench", "Benchmark an image through the asynchronous path virtio-blk uses (like qemu-img bench)");
  o.bench->add_option("FILE", o.file, "The image (raw or qcow2; format from its content)")->required();
  o.bench->add_flag("-w,--write", b.write, "Write test (default: read); the image is written!");
  o.bench->add_option("--pattern", o.pattern, "Offsets: seq (sequential) or rand (random, fixed seed)")
      ->capture_default_str();
  o.bench->add_option("-s,--buffer-size", o.buffer_size, "Bytes per request")->capture_default_str();
  o.bench->add_option("-d,--depth", o.depth, "Requests in flight")->capture_default_str();
  o.bench->add_option("-c,--count", o.count, "Requests in all")->capture_default_str();
  o.bench->add_option("-o,--offset", o.offset, "First offset (seq), lowest offset (rand)")->capture_default_str();
  o.bench->add_option("-S,--step-size", o.step, "Stride of --pattern seq (default: the buffer size)");
  o.bench->add_option("--flush-interval", o.flush_interval, "Write tests: drain and flush every N requests");
  o.bench->add_flag("--shared-buffer", b.shared_buffer,
                    "One buffer for every request in flight, as qemu-img bench uses (default: one each)");
  o.bench->footer(
      "Prints one line: requests, time, req/s, MiB/s. The time ends with the last request; the final flush "
      "of a write test is not timed (as in qemu-img bench). Write buffers hold 0xa5 bytes.");
}

DiskCommand::~DiskCommand() = default;

bool DiskCommand::parsed() const { return o_->disk->parsed(); }

int DiskCommand::run() const {
  // main() blocks SIGINT and SIGTERM for `vmm run`, which waits for them; the disk commands end on
  // them like any other tool (no thread exists yet: the ones started later inherit this mask).
  unblock_stop_signals();

  try {
    return run_parsed();
  } catch (const std::exception& e) {  // a safety net: errors are reported as values everywhere
    print_disk_error(e.what());
    return exit_code::kVmmError;
  }
}

int DiskCommand::run_parsed() const {
  Options& o = *o_;
  if (o.create->parsed()) return disk_create(o.file, o.size, o.backing, o.backing_format, o.cluster_size);
  if (o.info->parsed()) return disk_info(o.file, o.json);
  if (!o.bench->parsed()) return exit_code::kUsage;
  BenchOptions b = o.bench_opts;
  b.path = o.file;
  if (o.pattern != "seq" && o.pattern != "rand") {
    print_disk_error(fmt::format("--pattern {}: must be seq or rand", o.pattern));
    return exit_code::kUsage;
  }
  b.random = o.pattern == "rand";
  const std::array<std::pair<const char*, const std::string*>, 3> sizes{
      {{"--buffer-size", &o.buffer_size}, {"--offset", &o.offset}, {"--step-size", &o.step}}};
  std::array<uint64_t*, 3> targets{&b.buffer_size, &b.offset, &b.step};
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i].second->empty()) continue;
    auto v = parse_size(*sizes[i].second);
    if (!v) {
      print_disk_error(v.error().context(sizes[i].first).message());
      return exit_code::kUsage;
    }
    *targets[i] = *v;
  }
  auto depth = parse_count("--depth", o.depth, UINT32_MAX);
  auto count = parse_count("--count", o.count, UINT64_MAX);
  auto interval = o.flush_interval.empty() ? Result<uint64_t>(0) : parse_count("--flush-interval", o.flush_interval, UINT64_MAX);
  for (const auto* r : {&depth, &count, &interval}) {
    if (!*r) {
      print_disk_error(r->error().message());
      return exit_code::kUsage;
    }
  }
  b.depth = static_cast<unsigned>(*depth);
  b.count = *count;
  b.flush_interval = *interval;
  if (!o.step.empty() && b.step == 0) {
    print_disk_error("--step-size: must be at least 1 byte");
    return exit_code::kUsage;
  }
  return run_bench(b);
}

}  // namespace vmm::cli
