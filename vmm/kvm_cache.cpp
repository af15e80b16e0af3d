#include "vmm/kvm_cache.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include <fmt/format.h>

#include "vmm/base/codec.hpp"
#include "vmm/base/crc32c.hpp"
#include "vmm/base/fd.hpp"
#include "vmm/base/read_file.hpp"

namespace vmm {

namespace {

constexpr char kMagic[8] = {'V', 'M', 'M', 'C', 'P', 'U', 'I', 'D'};
constexpr uint32_t kVersion = 1;
constexpr size_t kMaxKey = 1024;
constexpr size_t kMaxFile = 8 + 4 + 4 + kMaxKey + 4 + kMaxCachedCpuid * sizeof(kvm_cpuid_entry2) + 4;

/// The first line of a small proc or sysfs file (whose stat size means nothing), or "-".
std::string first_line(const char* path) {
  Fd fd(::open(path, O_RDONLY | O_CLOEXEC));
  if (!fd) return "-";
  char buf[128];
  const ssize_t n = ::read(fd.get(), buf, sizeof buf);
  if (n <= 0) return "-";
  const std::string text(buf, static_cast<size_t>(n));
  return text.substr(0, text.find('\n'));
}

std::string inode_of(const char* path) {
  struct stat st {};
  if (::stat(path, &st) != 0) return "-";
  return fmt::format("{}", st.st_ino);
}

}  // namespace

std::string kvm_host_key(int kvm_fd) {
  struct stat st {};
  std::string node = "-";
  if (::fstat(kvm_fd, &st) == 0) {
    node = fmt::format("{:x}:{}:{}.{}", st.st_rdev, st.st_ino, st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
  }
  return fmt::format("boot={} node={} modules={},{},{} microcode={}", first_line("/proc/sys/kernel/random/boot_id"), node,
                     inode_of("/sys/module/kvm"), inode_of("/sys/module/kvm_intel"), inode_of("/sys/module/kvm_amd"),
                     first_line("/sys/devices/system/cpu/cpu0/microcode/version"));
}

std::vector<uint8_t> encode_cpuid_cache(std::string_view key, const CpuidEntries& entries) {
  ByteWriter w;
  w.put_bytes(std::span(reinterpret_cast<const uint8_t*>(kMagic), sizeof kMagic));
  w.put(kVersion);
  w.put_string(key);
  w.put_vector(entries);
  w.put(crc32c(0, w.bytes()));
  return w.take();
}

std::optional<CpuidEntries> decode_cpuid_cache(std::span<const uint8_t> bytes, std::string_view key) {
  if (bytes.size() < sizeof kMagic + 4 || bytes.size() > kMaxFile) return std::nullopt;
  const auto body = bytes.first(bytes.size() - 4);
  uint32_t crc = 0;
  std::memcpy(&crc, bytes.data() + body.size(), sizeof crc);
  if (crc32c(0, body) != crc) return std::nullopt;
  ByteReader r(body, "CPUID cache");
  char magic[sizeof kMagic];
  if (!r.get_into(std::span(reinterpret_cast<uint8_t*>(magic), sizeof magic), "magic") ||
      std::memcmp(magic, kMagic, sizeof kMagic) != 0) {
    return std::nullopt;
  }
  auto version = r.get<uint32_t>("version");
  if (!version || *version != kVersion) return std::nullopt;
  auto k = r.get_string("key", kMaxKey);
  if (!k || *k != key) return std::nullopt;
  auto entries = r.get_vector<kvm_cpuid_entry2>("entries", kMaxCachedCpuid);
  if (!entries || entries->empty() || !r.finish()) return std::nullopt;
  return std::move(*entries);
}

std::optional<CpuidEntries> read_cpuid_cache(const std::filesystem::path& path, std::string_view key) {
  auto text = read_file(path, kMaxFile, "CPUID cache");
  if (!text) return std::nullopt;
  return decode_cpuid_cache(std::span(reinterpret_cast<const uint8_t*>(text->data()), text->size()), key);
}

void write_cpuid_cache(const std::filesystem::path& path, std::string_view key, const CpuidEntries& entries) {
  std::error_code ec;
  std::filesystem::create_directories(path.parent_path(), ec);
  const std::filesystem::path tmp = fmt::format("{}.{}.tmp", path.string(), ::getpid());
  const auto bytes = encode_cpuid_cache(key, entries);
  {
    Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!fd) return;
    if (::write(fd.get(), bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) {
      ::unlink(tmp.c_str());
      return;
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) ::unlink(tmp.c_str());
}

}  // namespace vmm
