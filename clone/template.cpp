#include "clone/template.hpp"

#include "vmm/identity.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <charconv>
#include <cstring>
#include <cstdlib>
#include <cstdio>
#include <ctime>
#include <nlohmann/json.hpp>

#include "clone/memory_file.hpp"
#include "disk/file_io.hpp"
#include "disk/qcow2_format.hpp"
#include "vmm/api/json_text.hpp"
#include "vmm/base/crc32c.hpp"
#include "vmm/base/dir_entries.hpp"
#include "vmm/base/fd.hpp"
#include "vmm/base/process.hpp"
#include "vmm/base/read_file.hpp"
#include "vmm/device_spec.hpp"

namespace vmm::clone {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr size_t kMaxManifestBytes = 1 << 20;

json sum_json(const FileSum& f) {
  json j = {{"file", f.name}, {"size", f.size}, {"crc32c", fmt::format("{:08x}", f.checksum)}};
  if (f.data_bytes) j["data_bytes"] = f.data_bytes;
  return j;
}

/// A file name inside the template directory: no absolute paths, no "..".
bool inside(const std::string& name) {
  if (name.empty() || name.front() == '/') return false;
  for (const auto& part : fs::path(name)) {
    if (part == ".." || part == ".") return false;
  }
  return true;
}

/// Every string a manifest or clone record holds ends up in messages and listings (`vmm template ls`
/// prints the name): one with a control character is refused, never printed.
Result<> check_text(std::string_view value, std::string_view field, std::string_view file) {
  if (auto at = control_char(value)) {
    return fail("{}: {} '{}' has a control character at byte {}", file, field, printable(value), *at);
  }
  return {};
}

/// A JSON number that is an unsigned integer no larger than `max` (nlohmann's get<> would wrap a
/// negative one and truncate a large or fractional one without a word).
Result<uint64_t> unsigned_field(const json& j, std::string_view field, uint64_t max, std::string_view file) {
  if (!j.is_number_unsigned() || j.get<uint64_t>() > max) {
    // The value itself only if it is one (a nested array's dump() recursed once per level: a
    // manifest of 400,000 brackets crashed every template command).
    const std::string value = j.is_primitive() ? printable(j.dump()) : std::string("(") + j.type_name() + ")";
    return fail("{}: {} {} is not an integer from 0 to {}", file, field, value, max);
  }
  return j.get<uint64_t>();
}

Result<FileSum> parse_sum(const json& j, std::string_view what, std::string_view file) {
  if (!j.is_object() || !j.contains("file") || !j.contains("size") || !j.contains("crc32c") ||
      !j["file"].is_string() || !j["size"].is_number_unsigned() || !j["crc32c"].is_string()) {
    return fail("{}: {}: needs file, size and crc32c", file, what);
  }
  FileSum f;
  f.name = j["file"].get<std::string>();
  if (!inside(f.name) || control_char(f.name)) {
    return fail("{}: {}: file '{}' is not inside the template", file, what, printable(f.name));
  }
  f.size = j["size"].get<uint64_t>();
  const std::string crc = j["crc32c"].get<std::string>();
  if (crc.size() != 8 || !std::all_of(crc.begin(), crc.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); })) {
    return fail("{}: {}: crc32c '{}' is not 8 hex digits", file, what, printable(crc));
  }
  f.checksum = static_cast<uint32_t>(std::strtoul(crc.c_str(), nullptr, 16));
  if (j.contains("data_bytes")) {
    if (!j["data_bytes"].is_number_unsigned()) return fail("{}: {}: data_bytes is not a number", file, what);
    f.data_bytes = j["data_bytes"].get<uint64_t>();
  }
  return f;
}

}  // namespace

/// Copies `from` to a new file `to`: a reflink where the file system offers one, else a sparse
/// copy (data extents only).
Result<> copy_sparse(const fs::path& from, const fs::path& to, const std::function<void(uint64_t)>& progress, bool sync) {
  Fd in(::open(from.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in) return fail("{}: cannot open: {}", from.string(), errno_text(errno));
  return copy_sparse(in.get(), from, to, progress, sync);
}

namespace {

/// The size of an open regular file or block device (a block device's st_size is 0).
Result<uint64_t> source_size(int fd, const struct stat& st, const fs::path& path) {
  if (S_ISREG(st.st_mode)) return static_cast<uint64_t>(st.st_size);
  if (S_ISBLK(st.st_mode)) {
    uint64_t size = 0;
    if (::ioctl(fd, BLKGETSIZE64, &size) != 0) return fail("{}: BLKGETSIZE64: {}", path.string(), errno_text(errno));
    return size;
  }
  return fail("{}: not a regular file or block device", path.string());
}

}  // namespace

Result<> copy_sparse(int in_fd, const fs::path& from, const fs::path& to, const std::function<void(uint64_t)>& progress, bool sync) {
  // SEEK_DATA/SEEK_HOLE return offsets and move the file position, which a fleet's clones share
  // (the template's files were opened once, before the fork): the copy reads at explicit offsets.
  struct stat st {};
  if (::fstat(in_fd, &st) < 0) return fail("{}: stat: {}", from.string(), errno_text(errno));
  auto size = source_size(in_fd, st, from);
  if (!size) return std::unexpected(size.error());
  const bool regular = S_ISREG(st.st_mode);
  Fd out(::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!out) return fail("{}: cannot create: {}", to.string(), errno_text(errno));
  auto synced = [&]() -> Result<> {
    if (sync && ::fsync(out.get()) < 0) return fail("{}: fsync: {}", to.string(), errno_text(errno));
    return {};
  };
  // Ctrl-C waits, blocked, for the VM's sigwait (main() blocks it): a copy ends at it instead.
  if (regular && pending_stop_signal() == 0 && ::ioctl(out.get(), FICLONE, in_fd) == 0) {
    if (progress) progress(data_bytes(in_fd));
    return synced();  // (the reflink's metadata, durable as a copy's data is)
  }
  if (::ftruncate(out.get(), static_cast<off_t>(*size)) < 0) return fail("{}: ftruncate: {}", to.string(), errno_text(errno));
  constexpr uint64_t kStep = uint64_t{64} << 20;
  uint64_t copied = 0;
  // copy_file_range refuses some pairs of files (EXDEV across file systems since Linux 5.19, and
  // where a file system does not offer it): then a read and a write, skipping zeroes (the copy is
  // sparse already where the source was).
  bool by_hand = !regular;
  std::vector<uint8_t> buf;
  auto copy_by_hand = [&](uint64_t at, uint64_t n) -> Result<> {
    if (buf.empty()) buf.resize(1 << 20);
    while (n > 0) {
      const size_t want = static_cast<size_t>(std::min<uint64_t>(n, buf.size()));
      const ssize_t got = ::pread(in_fd, buf.data(), want, static_cast<off_t>(at));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) return fail("copying {} to {}: read: {}", from.string(), to.string(), got < 0 ? errno_text(errno) : "the file shrank");
      const auto k = static_cast<size_t>(got);
      if (std::any_of(buf.begin(), buf.begin() + static_cast<ptrdiff_t>(k), [](uint8_t b) { return b != 0; })) {
        if (auto w = disk::pwrite_full(out.get(), buf.data(), k, at); !w) return fail("copying {} to {}: {}", from.string(), to.string(), w.error().message());
      }
      at += k, n -= k, copied += k;
      if (progress) progress(copied);
      if (const int sig = pending_stop_signal()) return fail("copying {} to {}: stopped by {}", from.string(), to.string(), ::strsignal(sig));
    }
    return {};
  };
  uint64_t pos = 0;
  while (pos < *size) {
    uint64_t data = pos, hole = *size;
    if (regular) {
      const off_t d = ::lseek(in_fd, static_cast<off_t>(pos), SEEK_DATA);
      if (d < 0) break;  // the rest is a hole
      const off_t h = ::lseek(in_fd, d, SEEK_HOLE);
      data = static_cast<uint64_t>(d);
      hole = h < 0 ? *size : std::min<uint64_t>(static_cast<uint64_t>(h), *size);
    }
    off_t src = static_cast<off_t>(data), dst = static_cast<off_t>(data);
    while (!by_hand && static_cast<uint64_t>(src) < hole) {
      if (const int sig = pending_stop_signal()) {
        return fail("copying {} to {}: stopped by {}", from.string(), to.string(), ::strsignal(sig));
      }
      const ssize_t n = ::copy_file_range(in_fd, &src, out.get(), &dst, static_cast<size_t>(std::min(hole - static_cast<uint64_t>(src), kStep)), 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EXDEV || errno == EOPNOTSUPP || errno == EINVAL || errno == ENOSYS)) {
        by_hand = true;  // (from here on: src is where this extent's copy stands)
        break;
      }
      if (n <= 0) return fail("copying {} to {}: {}", from.string(), to.string(), errno_text(n < 0 ? errno : EIO));
      copied += static_cast<uint64_t>(n);
      if (progress) progress(copied);
    }
    if (by_hand && static_cast<uint64_t>(src) < hole) {
      if (auto r = copy_by_hand(static_cast<uint64_t>(src), hole - static_cast<uint64_t>(src)); !r) return r;
    }
    pos = hole;
  }
  return synced();
}

uint64_t data_bytes(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) < 0) return 0;
  return std::min(static_cast<uint64_t>(st.st_blocks) * 512, static_cast<uint64_t>(st.st_size));
}

uint64_t data_bytes(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) < 0) return 0;
  if (S_ISBLK(st.st_mode)) {  // all of it, as copy_sparse reads it
    uint64_t size = 0;
    return ::ioctl(fd, BLKGETSIZE64, &size) == 0 ? size : 0;
  }
  return std::min(static_cast<uint64_t>(st.st_blocks) * 512, static_cast<uint64_t>(st.st_size));
}

std::string utc_now() {
  // Civil time from the clock by arithmetic (std::chrono's calendar): gmtime_r() and strftime()
  // load the time zone (/etc/localtime) on a process's first use, which every clone's start paid
  // for this UTC string (a pool's member or a fleet's clone is a new process each time).
  const auto now = std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now());
  const auto day = std::chrono::floor<std::chrono::days>(now);
  const std::chrono::year_month_day ymd{day};
  const std::chrono::hh_mm_ss hms{now - day};
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", static_cast<int>(ymd.year()), static_cast<unsigned>(ymd.month()),
                     static_cast<unsigned>(ymd.day()), hms.hours().count(), hms.minutes().count(), hms.seconds().count());
}

std::string manifest_json(const Manifest& m) {
  json disks = json::array();
  for (const auto& d : m.disks) {
    json disk = {{"image", sum_json(d.file)}, {"id", d.id}, {"format", d.format}, {"read_only", d.read_only}};
    if (d.probed) disk["probed"] = true;
    disks.push_back(std::move(disk));
  }
  json nets = json::array();
  for (const auto& n : m.nets) nets.push_back({{"mac", n.mac}, {"tap", n.tap}});
  json j = {
      {"format_version", fmt::format("{}.{}", m.major, m.minor)},
      {"name", m.name},
      {"created", m.created},
      {"vmm_version", m.vmm_version},
      {"config",
       {{"memory", m.memory}, {"vcpus", m.vcpus}, {"cpu_template", m.cpu_template}, {"kernel", m.kernel},
        {"cmdline", m.cmdline}, {"disks", disks}, {"nets", nets}, {"ip", m.ip}, {"gateway", m.gateway}}},
      {"files", {{"state", sum_json(m.state)}, {"memory", sum_json(m.memory_file)}}},
  };
  // Only its name (checked), its files' names (ours) and its formats are read back as they are:
  // its kernel, command line, TAPs and addresses are for information.
  return api::json_display(j, 2) + "\n";
}

Result<Manifest> parse_manifest(std::string_view text, std::string_view file) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return fail("{}: not valid JSON", file);
  Manifest m;
  if (!j.contains("format_version") || !j["format_version"].is_string()) return fail("{}: format_version is missing", file);
  const std::string version = j["format_version"].get<std::string>();
  {
    // MAJOR.MINOR, two decimal numbers and nothing else.
    const char* const end = version.data() + version.size();
    std::from_chars_result r = std::from_chars(version.data(), end, m.major);
    if (r.ec == std::errc() && r.ptr != end && *r.ptr == '.' && r.ptr + 1 != end && *(r.ptr + 1) != '-') {
      r = std::from_chars(r.ptr + 1, end, m.minor);
    } else {
      r.ec = std::errc::invalid_argument;
    }
    if (r.ec != std::errc() || r.ptr != end || version.front() == '-') {
      return fail("{}: format_version '{}' is not MAJOR.MINOR", file, printable(version));
    }
  }
  if (m.major != kManifestMajor) return fail("{}: format version {} is not supported (this vmm reads {}.x)", file, version, kManifestMajor);
  if (m.minor > kManifestMinor) return fail("{}: format version {} is newer than this vmm ({}.{})", file, version, kManifestMajor, kManifestMinor);
  try {
    m.name = j.at("name").get<std::string>();
    // A template's name names its clones (NAME-1...) and pool members: one that is not a name
    // would fail each of them later, a pool's forever.
    if (!valid_name(m.name)) return fail("{}: name '{}': use letters, digits, '.', '_' and '-'", file, printable(m.name));
    m.created = j.at("created").get<std::string>();
    m.vmm_version = j.at("vmm_version").get<std::string>();
    const json& c = j.at("config");
    auto memory = unsigned_field(c.at("memory"), "config.memory", UINT64_MAX, file);
    if (!memory) return std::unexpected(memory.error());
    m.memory = *memory;
    auto vcpus = unsigned_field(c.at("vcpus"), "config.vcpus", 254, file);
    if (!vcpus) return std::unexpected(vcpus.error());
    m.vcpus = static_cast<uint32_t>(*vcpus);
    m.cpu_template = c.at("cpu_template").get<std::string>();
    m.kernel = c.at("kernel").get<std::string>();
    m.cmdline = c.at("cmdline").get<std::string>();
    if (!c.at("disks").is_array() || !c.at("nets").is_array()) return fail("{}: config.disks and config.nets must be arrays", file);
    // As many as a VM can have (each would be opened, and given an overlay, before the machine refused them).
    if (c.at("disks").size() > kMaxDisks) return fail("{}: config.disks: {} disks, at most {} are supported", file, c.at("disks").size(), kMaxDisks);
    if (c.at("nets").size() > kMaxNets) return fail("{}: config.nets: {} interfaces, at most {} are supported", file, c.at("nets").size(), kMaxNets);
    for (const auto& d : c.at("disks")) {
      TemplateDisk td;
      auto f = parse_sum(d.at("image"), "disk image", file);
      if (!f) return std::unexpected(f.error());
      td.file = *f;
      td.id = d.at("id").get<std::string>();
      td.format = d.at("format").get<std::string>();
      td.read_only = d.at("read_only").get<bool>();
      td.probed = d.contains("probed") && d.at("probed").get<bool>();  // 1.2
      if (td.format != "raw" && td.format != "qcow2") return fail("{}: disk format '{}' is not raw or qcow2", file, printable(td.format));
      if (td.probed && td.format != "raw") return fail("{}: disk '{}': only a raw disk can be probed", file, printable(td.id));
      if (auto r = check_text(td.id, "disk id", file); !r) return std::unexpected(r.error());
      m.disks.push_back(std::move(td));
    }
    for (const auto& n : c.at("nets")) {
      TemplateNet tn{.mac = n.at("mac").get<std::string>(), .tap = n.at("tap").get<std::string>()};
      if (auto r = check_text(tn.mac, "net mac", file); !r) return std::unexpected(r.error());
      if (auto r = check_text(tn.tap, "net tap", file); !r) return std::unexpected(r.error());
      m.nets.push_back(std::move(tn));
    }
    m.ip = c.value("ip", "");  // 1.1
    m.gateway = c.value("gateway", "");
    if (!m.ip.empty()) {
      auto ip = check_ip(m.ip);
      if (!ip || *ip != m.ip) return fail("{}: config.ip '{}' is not A.B.C.D/P or dhcp", file, printable(m.ip));
    }
    if (!m.gateway.empty() && !check_gateway(m.gateway)) return fail("{}: config.gateway '{}' is not A.B.C.D", file, printable(m.gateway));
    for (const auto& [field, value] : {std::pair<const char*, const std::string*>{"name", &m.name}, {"created", &m.created},
                                       {"vmm_version", &m.vmm_version}, {"config.cpu_template", &m.cpu_template},
                                       {"config.kernel", &m.kernel}, {"config.cmdline", &m.cmdline}}) {
      if (auto r = check_text(*value, field, file); !r) return std::unexpected(r.error());
    }
    auto s = parse_sum(j.at("files").at("state"), "state file", file);
    if (!s) return std::unexpected(s.error());
    m.state = *s;
    auto mem = parse_sum(j.at("files").at("memory"), "memory file", file);
    if (!mem) return std::unexpected(mem.error());
    m.memory_file = *mem;
  } catch (const json::exception& e) {
    return fail("{}: {}", file, e.what());
  }
  if (m.memory == 0 || m.memory % 4096 != 0 || m.memory != m.memory_file.size) {
    return fail("{}: memory {} does not match the memory file's size {}", file, m.memory, m.memory_file.size);
  }
  if (m.vcpus == 0) return fail("{}: vcpus {} is out of range", file, m.vcpus);
  return m;
}

Result<Manifest> read_manifest(const fs::path& dir) {
  const fs::path p = dir / kManifestFile;
  // A regular file of the template's own, like every file it names (not a link to another file).
  auto file = open_template_file(dir, kManifestFile);
  if (!file) return std::unexpected(file.error());
  auto text = read_file(file->fd.get(), p, kMaxManifestBytes, "manifest");
  if (!text) return std::unexpected(text.error());
  return parse_manifest(*text, p.string());
}

Result<fs::path> resolve_template(const fs::path& sdir, const std::string& name_or_path) {
  std::error_code ec;
  // A path has a '/' ("./t" for one in the working directory); anything else is a name, as
  // `vmm template create NAME` made it: a directory of that name where the command runs is not
  // taken instead (it was, until 2026-12-07, and a clone then ran another template than the one
  // created under that name, without a word).
  if (name_or_path.find('/') != std::string::npos) {
    const fs::path p = fs::absolute(name_or_path, ec);
    if (!fs::is_directory(p, ec)) return fail("template {}: no such directory", name_or_path);
    return p;
  }
  if (!valid_name(name_or_path)) return fail("template '{}': not a valid name", name_or_path);
  const fs::path p = sdir / "templates" / name_or_path;
  if (!fs::is_directory(p, ec)) return fail("template '{}': not found in {}", name_or_path, (sdir / "templates").string());
  return p;
}

namespace {
/// Why `name` under `dir` is not a regular file of the template's own: the first component that is
/// a link, not a directory, missing; or the file that is not a regular one (for the message only:
/// open_template_file decides on the file it opened).
Error describe_template_file(const fs::path& dir, const std::string& name, int open_errno) {
  fs::path at = dir;
  const fs::path rel(name);
  for (auto part = rel.begin(); part != rel.end(); ++part) {
    at /= *part;
    const bool last = std::next(part) == rel.end();
    struct stat st {};
    if (::lstat(at.c_str(), &st) != 0) return Error(fmt::format("{}: {}", at.string(), errno_text(errno)));
    if (last && !S_ISREG(st.st_mode)) {
      return Error(fmt::format("{}: not a regular file{}", at.string(), S_ISLNK(st.st_mode) ? " (a symbolic link)" : ""));
    }
    if (!last && !S_ISDIR(st.st_mode)) {
      return Error(fmt::format("{}: not a directory of the template's{}", at.string(), S_ISLNK(st.st_mode) ? " (a symbolic link)" : ""));
    }
  }
  return Error(fmt::format("{}: not a regular file of the template's own{}", (dir / name).string(),
                           open_errno ? fmt::format(" ({})", errno_text(open_errno)) : std::string()));
}
}  // namespace

Result<TemplateFile> open_template_file(const fs::path& dir, const std::string& name) {
  // One resolution of the whole name, below the template directory and through no symbolic link
  // (openat2: RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), then checked on the file opened: no window
  // between a check of the path and its use in which a writer of the template directory could
  // put a link to another file of the host in its place. Not a FIFO's open (O_NONBLOCK).
  Fd d(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!d) return fail("{}: {}", dir.string(), errno_text(errno));
  open_how how{};
  how.flags = O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  Fd fd(static_cast<int>(::syscall(SYS_openat2, d.get(), name.c_str(), &how, sizeof how)));
  if (!fd) {
    const int e = errno;
    if (e == ENOENT) return fail("{}: {}", (dir / name).string(), errno_text(e));
    return std::unexpected(describe_template_file(dir, name, e));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return fail("{}: stat: {}", (dir / name).string(), errno_text(errno));
  if (!S_ISREG(st.st_mode)) return std::unexpected(describe_template_file(dir, name, 0));
  return TemplateFile{.fd = std::move(fd), .size = static_cast<uint64_t>(st.st_size),
                      .id = {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)}};
}

Result<uint64_t> template_file(const fs::path& dir, const std::string& name) {
  auto f = open_template_file(dir, name);
  if (!f) return std::unexpected(f.error());
  return f->size;
}

Result<> check_standalone_qcow2(const fs::path& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (!fd) return fail("{}: cannot open: {}", path.string(), errno_text(errno));
  return check_standalone_qcow2(fd.get(), path);
}

Result<> check_standalone_qcow2(int fd, const fs::path& path) {
  // magic (4), version (4), backing_file_offset (8), backing_file_size (4)
  uint8_t head[20] = {};
  if (::pread(fd, head, sizeof head, 0) != static_cast<ssize_t>(sizeof head) || disk::qcow2::be32(head) != disk::qcow2::kMagic) {
    return fail("{}: not a qcow2 image", path.string());
  }
  if (disk::qcow2::be64(head + 8) != 0 || disk::qcow2::be32(head + 16) != 0) {
    return fail("{}: has a backing file; a template's disk must stand alone", path.string());
  }
  return {};
}

namespace {

/// Size and CRC-32C of the whole of an open file, read from its start (`p` names it in errors). Its
/// holes are summed without being read (crc32c_zeros): a sparse 10 GiB disk took 15 s to sum, a
/// 1 TiB one would take half an hour, a crafted 16 TiB one days. A pending SIGINT or SIGTERM ends it.
Result<FileSum> sum_open_file(int fd, const fs::path& p, const std::string& name) {
  FileSum f{.name = name, .size = 0, .checksum = 0, .data_bytes = 0};
  struct stat st {};
  if (::fstat(fd, &st) != 0) return fail("{}: stat: {}", p.string(), errno_text(errno));
  const uint64_t end = static_cast<uint64_t>(st.st_size);
  std::vector<uint8_t> buf(1 << 20);
  // [f.size, data): a hole; [data, hole): data, read. Where the file system cannot say, all data.
  bool seekable = S_ISREG(st.st_mode);
  while (f.size < end) {
    uint64_t data = f.size, hole = end;
    if (seekable) {
      const off_t d = ::lseek(fd, static_cast<off_t>(f.size), SEEK_DATA);
      if (d >= 0) {
        data = std::min<uint64_t>(static_cast<uint64_t>(d), end);
      } else if (errno == ENXIO) {
        data = end;  // nothing but a hole to the end
      } else {
        seekable = false;
      }
      if (seekable && data < end) {
        const off_t h = ::lseek(fd, static_cast<off_t>(data), SEEK_HOLE);
        hole = h >= 0 ? std::min<uint64_t>(static_cast<uint64_t>(h), end) : end;
      }
    }
    f.checksum = crc32c_zeros(f.checksum, data - f.size);
    f.size = data;
    while (f.size < hole) {
      if (pending_stop_signal() != 0) return fail("{}: interrupted", p.string());
      const size_t want = static_cast<size_t>(std::min<uint64_t>(buf.size(), hole - f.size));
      const ssize_t n = ::pread(fd, buf.data(), want, static_cast<off_t>(f.size));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return fail("{}: read: {}", p.string(), errno_text(errno));
      if (n == 0) return fail("{}: shorter than its size ({} of {} bytes): changed while it was read", p.string(), f.size, end);
      f.checksum = crc32c(f.checksum, std::span(buf.data(), static_cast<size_t>(n)));
      f.size += static_cast<uint64_t>(n);
    }
  }
  // Grown while it was read: what came after the size it had is not summed, and says so.
  char extra;
  if (::pread(fd, &extra, 1, static_cast<off_t>(end)) == 1) return fail("{}: changed while it was read", p.string());
  return f;
}

}  // namespace

Result<FileSum> sum_file(const fs::path& dir, const std::string& name) {
  auto file = open_template_file(dir, name);
  if (!file) return std::unexpected(file.error());
  return sum_open_file(file->fd.get(), dir / name, name);
}

Result<> verify_template(const fs::path& dir) {
  auto m = read_manifest(dir);
  if (!m) return std::unexpected(m.error());
  // Each file opened once, below the template directory through no link, and checked through that
  // descriptor: what is summed is what was checked.
  auto check = [&](const FileSum& want, bool qcow2 = false) -> Result<> {
    auto file = open_template_file(dir, want.name);
    if (!file) return std::unexpected(file.error());
    if (qcow2) {
      if (auto r = check_standalone_qcow2(file->fd.get(), dir / want.name); !r) return r;
    }
    auto got = sum_open_file(file->fd.get(), dir / want.name, want.name);
    if (!got) return std::unexpected(got.error());
    if (got->size != want.size) return fail("{}: {} bytes, the manifest says {}", (dir / want.name).string(), got->size, want.size);
    if (got->checksum != want.checksum) {
      return fail("{}: checksum {:08x}, the manifest says {:08x}: the file changed", (dir / want.name).string(), got->checksum, want.checksum);
    }
    return {};
  };
  if (auto r = check(m->state); !r) return r;
  for (const auto& d : m->disks) {
    if (auto r = check(d.file, d.format == "qcow2"); !r) return r;
  }
  auto mfile = open_template_file(dir, m->memory_file.name);
  if (!mfile) return std::unexpected(mfile.error());
  auto mem = checksum_memory_file(mfile->fd.get(), dir / m->memory_file.name);
  if (!mem) return std::unexpected(mem.error());
  const std::string p = (dir / m->memory_file.name).string();
  if (mem->size != m->memory_file.size) return fail("{}: {} bytes, the manifest says {}", p, mem->size, m->memory_file.size);
  if (mem->checksum != m->memory_file.checksum) {
    return fail("{}: checksum {:08x}, the manifest says {:08x}: the file changed", p, mem->checksum, m->memory_file.checksum);
  }
  return {};
}

Result<std::string> clone_json(const CloneRecord& c) {
  // Its template's path must read back as it is (`vmm template rm` finds its dependants by it).
  json j = {{"name", c.name}, {"template", c.template_dir}, {"full", c.full}, {"pid", c.pid}, {"created", c.created}};
  auto text = api::json_text(j, fmt::format("clone {}'s record (template {})", c.name, c.template_dir), 2);
  if (!text) return text;
  return *text + "\n";
}

Result<CloneRecord> parse_clone_record(std::string_view text, std::string_view file) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return fail("{}: not valid JSON", file);
  CloneRecord c;
  try {
    c = CloneRecord{.name = j.at("name").get<std::string>(), .template_dir = j.at("template").get<std::string>(),
                    .full = j.at("full").get<bool>(), .pid = 0, .created = j.at("created").get<std::string>()};
    if (!j.at("pid").is_number_integer()) return fail("{}: pid is not an integer", file);
    c.pid = j.at("pid").get<int64_t>();
  } catch (const json::exception& e) {
    return fail("{}: {}", file, e.what());
  }
  for (const auto& [field, value] : {std::pair<const char*, const std::string*>{"name", &c.name}, {"template", &c.template_dir},
                                     {"created", &c.created}}) {
    if (auto r = check_text(*value, field, file); !r) return std::unexpected(r.error());
  }
  return c;
}

Result<CloneRecord> read_clone_record(const fs::path& clone_dir) {
  const fs::path p = clone_dir / "clone.json";
  auto text = read_file(p, 64 * 1024, "clone record");
  if (!text) return std::unexpected(text.error());
  return parse_clone_record(*text, p.string());
}

Result<> stage_clone_record(const fs::path& clone_dir, const CloneRecord& record) {
  const fs::path staged = clone_dir / kStagedCloneRecord;
  auto record_text = clone_json(record);
  if (!record_text) return std::unexpected(record_text.error());
  const std::string& text = *record_text;
  // Written over in place and cut to its length after, never truncated to nothing first: ext4
  // (auto_da_alloc) starts the writeback of a file truncated to zero and written again as it is
  // closed, which was a tenth of a pool's request here (its member rewrites the record staged
  // before the request). A reader meanwhile sees the old record or the new one's bytes over it.
  Fd fd(::open(staged.c_str(), O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644));
  if (!fd) return fail("{}: cannot write: {}", staged.string(), errno_text(errno));
  const ssize_t n = ::pwrite(fd.get(), text.data(), text.size(), 0);
  if (n != static_cast<ssize_t>(text.size())) {
    return fail("{}: cannot write: {}", staged.string(), n < 0 ? errno_text(errno) : std::string("short write"));
  }
  if (::ftruncate(fd.get(), static_cast<off_t>(text.size())) != 0) return fail("{}: cannot write: {}", staged.string(), errno_text(errno));
  return {};
}

Result<> write_clone_record(const fs::path& clone_dir, const CloneRecord& record) {
  if (auto r = stage_clone_record(clone_dir, record); !r) return r;
  const fs::path staged = clone_dir / kStagedCloneRecord, final = clone_dir / "clone.json";
  if (::rename(staged.c_str(), final.c_str()) != 0) return fail("{}: cannot rename: {}", staged.string(), errno_text(errno));
  return {};
}

namespace {

/// Whether a qcow2 overlay in `disk_dir` names a backing file inside `tdir` (read from its header:
/// the overlay may be locked by the clone that runs on it).
bool overlays_back_onto(const fs::path& disk_dir, const fs::path& tdir) {
  std::error_code ec;
  for (const auto& e : dir_entries(disk_dir)) {
    Fd fd(::open(e.path().c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK));
    uint8_t head[20] = {};
    if (!fd || ::pread(fd.get(), head, sizeof head, 0) != static_cast<ssize_t>(sizeof head) || disk::qcow2::be32(head) != disk::qcow2::kMagic) {
      continue;
    }
    const uint64_t at = disk::qcow2::be64(head + 8);
    const uint32_t len = disk::qcow2::be32(head + 16);
    if (at == 0 || len == 0 || len > 1023) continue;
    std::string name(len, '\0');
    if (::pread(fd.get(), name.data(), len, static_cast<off_t>(at)) != static_cast<ssize_t>(len)) continue;
    fs::path backing = name;
    if (backing.is_relative()) backing = disk_dir / backing;
    const fs::path b = fs::weakly_canonical(backing, ec);
    auto [t, in] = std::mismatch(tdir.begin(), tdir.end(), b.begin(), b.end());
    if (t == tdir.end()) return true;
  }
  return false;
}

}  // namespace

std::vector<CloneDependence> clone_dependences(const fs::path& sdir) {
  std::vector<CloneDependence> out;
  std::error_code ec;
  for (const auto& e : dir_entries(sdir / "clones")) {
    if (e.path().filename().string().front() == '.') continue;  // a clone's tomb (being removed)
    auto rec = read_clone_record(e.path());
    // One being made (a pool's member waiting for its request) has its record beside it so far.
    if (!rec && fs::exists(e.path() / kStagedCloneRecord, ec)) {
      auto text = read_file(e.path() / kStagedCloneRecord, 64 * 1024, "clone record");
      if (text) rec = parse_clone_record(*text, (e.path() / kStagedCloneRecord).string());
    }
    if (!rec) {
      out.push_back({.name = e.path().filename().string(), .dir = e.path(), .template_dir = {}, .unreadable = true});
      continue;
    }
    if (rec->full || rec->template_dir.empty()) continue;
    // Named by its directory (a record copied with its directory says the other's name).
    out.push_back({.name = e.path().filename().string(), .dir = e.path(), .template_dir = fs::weakly_canonical(rec->template_dir, ec),
                   .unreadable = false});
  }
  return out;
}

std::vector<std::string> dependants(const std::vector<CloneDependence>& clones, const fs::path& template_dir) {
  std::vector<std::string> out;
  std::error_code ec;
  const fs::path want = fs::weakly_canonical(template_dir, ec);
  for (const auto& c : clones) {
    if (c.unreadable) {
      // No record to read (a crash before its write reached the disk: records are not fsynced,
      // which each clone's start would pay for): its overlays' backing files tell. (Without this a
      // crash could let `template rm` take the disks a linked clone's overlays stand on.)
      if (overlays_back_onto(c.dir / "disk", want)) out.push_back(c.name + " (its record unreadable)");
    } else if (c.template_dir == want || (fs::equivalent(c.template_dir, want, ec) && !ec)) {
      // The same directory by another path too (a bind mount, a state directory reached two ways).
      out.push_back(c.name);
    }
  }
  return out;
}

std::vector<std::string> dependants(const fs::path& sdir, const fs::path& template_dir) {
  return dependants(clone_dependences(sdir), template_dir);
}

}  // namespace vmm::clone
