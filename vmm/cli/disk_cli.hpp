// `vmm disk`: create, info and bench of disk images (qcow2, raw), like the matching qemu-img
// commands. Usage errors exit 2, image errors 6 (vmm/exit_codes.hpp), always with one line on stderr.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "vmm/base/error.hpp"

namespace CLI {
class App;
}

namespace vmm::cli {

/// The `disk` subcommand and its subcommands, added to the top-level app; holds what they parse
/// into until run() is called.
class DiskCommand {
 public:
  explicit DiskCommand(CLI::App& app);
  ~DiskCommand();
  DiskCommand(const DiskCommand&) = delete;
  DiskCommand& operator=(const DiskCommand&) = delete;

  /// True after parsing when `vmm disk ...` was given.
  bool parsed() const;
  /// Validates and runs the parsed subcommand; returns the process exit status.
  int run() const;

 private:
  int run_parsed() const;

  struct Options;
  std::unique_ptr<Options> o_;
};

/// `text` with control characters as \xNN, so that a file name from an image stays on one line.
std::string printable(std::string_view text);

/// "vmm: error: MESSAGE" on stderr, on one line (control characters escaped).
void print_disk_error(std::string_view message);

/// A cluster size ("64K", "2M"): a power of two from 4 KiB to 2 MiB; returns its log2.
Result<unsigned> parse_cluster_size(std::string_view text);

/// A size as qemu-img prints it: three significant digits and a binary unit ("64 MiB", "1.5 GiB").
std::string human_size(uint64_t bytes);

/// `vmm disk create`: a new, empty qcow2 image. Returns the exit status (errors printed).
int disk_create(const std::filesystem::path& path, const std::string& size, const std::string& backing,
                const std::string& backing_format, const std::string& cluster_size);

/// `vmm disk info`: what the image is (qcow2 or raw), human-readable or JSON, on stdout.
int disk_info(const std::filesystem::path& path, bool json);

}  // namespace vmm::cli
