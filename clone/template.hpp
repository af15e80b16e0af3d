// Templates: a directory that a booted, paused VM was written into once, and that clones start
// from. manifest.json (what the VM was and the checksums of its files), state.bin (the
// machine state, clone/snapshot.hpp), memory.bin (guest RAM, sparse, clone/memory_file.hpp) and
// disks/ (the images it owns). After creation every file in it is read-only and never written.
//
// Templates and clones live in the state directory (vmm/state_dir.hpp), under templates/NAME and
// clones/NAME; a template may also be given by path.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "vmm/base/error.hpp"
#include "vmm/base/fd.hpp"
#include "vmm/state_dir.hpp"

namespace vmm::clone {

// 1.1: config.ip, config.gateway. 1.2: config.disks[].probed.
inline constexpr int kManifestMajor = 1, kManifestMinor = 2;
inline constexpr const char* kManifestFile = "manifest.json";
inline constexpr const char* kStateFile = "state.bin";
inline constexpr const char* kMemoryFile = "memory.bin";

/// A file of a template: its name relative to the template directory, size and CRC-32C.
struct FileSum {
  std::string name;
  uint64_t size = 0;
  uint32_t checksum = 0;
  uint64_t data_bytes = 0;  ///< memory file: bytes of non-zero pages (what it really holds)
};

struct TemplateDisk {
  FileSum file;           ///< disks/diskN.img or .qcow2
  std::string id;         ///< the serial the guest reads
  std::string format;     ///< "raw" or "qcow2"
  bool read_only = false;
  /// A raw disk whose format was read from its content, never given: its copies (a full clone's)
  /// are opened guessing again, so that the guest still cannot make them look like qcow2 images
  /// (see OpenOptions::format).
  bool probed = false;
};

struct TemplateNet {
  std::string mac;  ///< the template's MAC (clones get their own)
  std::string tap;
};

struct Manifest {
  int major = kManifestMajor, minor = kManifestMinor;
  std::string name;
  std::string created;  ///< UTC, ISO 8601
  std::string vmm_version;
  uint64_t memory = 0;
  uint32_t vcpus = 1;
  std::string cpu_template;
  std::string kernel, cmdline;  ///< for information
  std::vector<TemplateDisk> disks;
  std::vector<TemplateNet> nets;
  std::string ip, gateway;  ///< the guest's, as its identity carried them (empty: none); clones in a netns keep them
  FileSum state, memory_file;
};

std::string manifest_json(const Manifest& m);
/// Parses and checks a manifest (version, types, names that stay inside the directory).
Result<Manifest> parse_manifest(std::string_view text, std::string_view file);
Result<Manifest> read_manifest(const std::filesystem::path& dir);

/// A template by path (any argument with a '/': a directory holding a manifest) or by name under
/// state_dir/templates.
Result<std::filesystem::path> resolve_template(const std::filesystem::path& state_dir, const std::string& name_or_path);

/// CRC-32C and size of a whole file.
Result<FileSum> sum_file(const std::filesystem::path& dir, const std::string& name);
/// A file the manifest names, checked before it is used: a regular file (no symbolic link, FIFO or
/// device) under directories of the template's own (none of them a link), so that a template
/// cannot point a clone at another file of the host. Its size.
Result<uint64_t> template_file(const std::filesystem::path& dir, const std::string& name);
/// The same file opened (read-only): what a clone reads is the file that was checked.
struct TemplateFile {
  Fd fd;
  uint64_t size = 0;
  std::pair<uint64_t, uint64_t> id;  ///< (st_dev, st_ino)
};
Result<TemplateFile> open_template_file(const std::filesystem::path& dir, const std::string& name);
/// A template's qcow2 disk stands alone: a backing file named in its header would have clones read
/// that file (any file of the host) as the disk's unwritten clusters.
Result<> check_standalone_qcow2(const std::filesystem::path& path);
Result<> check_standalone_qcow2(int fd, const std::filesystem::path& path);
/// Checks every file of a template against its manifest (the memory file by its pages).
Result<> verify_template(const std::filesystem::path& dir);

/// A clone's record (clones/NAME/clone.json).
struct CloneRecord {
  std::string name;
  std::string template_dir;  ///< absolute; empty for a full clone that no longer depends on it
  bool full = false;
  int64_t pid = 0;
  std::string created;
};
Result<std::string> clone_json(const CloneRecord& c);
/// Parses and checks a clone record (clone.json) read from `file`.
Result<CloneRecord> parse_clone_record(std::string_view text, std::string_view file);
Result<CloneRecord> read_clone_record(const std::filesystem::path& clone_dir);
/// clone.json's name while it is written.
inline constexpr const char* kStagedCloneRecord = ".clone.json";
/// Writes `clone_dir`/clone.json: beside it first (stage_clone_record: .clone.json, a file that may
/// have been made ahead, rewritten rather than created), then renamed, so that a lister never reads
/// half of it.
Result<> stage_clone_record(const std::filesystem::path& clone_dir, const CloneRecord& record);
Result<> write_clone_record(const std::filesystem::path& clone_dir, const CloneRecord& record);
/// Linked clones (under state_dir/clones) whose template is `template_dir`, those still being made
/// (a pool's waiting members: their record not yet in place) included.
std::vector<std::string> dependants(const std::filesystem::path& state_dir, const std::filesystem::path& template_dir);
/// The state directory's linked clones and the template each stands on, read once: for a listing
/// of every template's dependants (reading every record again for each template was quadratic:
/// 1000 templates and 1000 clones took 24 s).
struct CloneDependence {
  std::string name;
  std::filesystem::path dir;           ///< STATE/clones/NAME
  std::filesystem::path template_dir;  ///< canonical
  bool unreadable = false;             ///< no record to read: its overlays tell
};
std::vector<CloneDependence> clone_dependences(const std::filesystem::path& state_dir);
std::vector<std::string> dependants(const std::vector<CloneDependence>& clones, const std::filesystem::path& template_dir);

/// Copies `from` to a new file `to`: a reflink where the file system offers one, else a sparse
/// copy (data extents only, in steps of at most 64 MiB); fsyncs it unless `sync` is false (a fork's
/// child's disk, copied while its parent is paused: durable with its guest's first flush, as any
/// write of the guest's). `progress`, when given, is told the bytes of data copied so far after
/// each step (a reflink is one step of them all).
Result<> copy_sparse(const std::filesystem::path& from, const std::filesystem::path& to,
                     const std::function<void(uint64_t copied)>& progress = {}, bool sync = true);
/// The same from an open file (`from` names it in messages; its file position is not used).
Result<> copy_sparse(int from_fd, const std::filesystem::path& from, const std::filesystem::path& to,
                     const std::function<void(uint64_t copied)>& progress = {}, bool sync = true);
/// Bytes of data in the file at `path` (its allocated blocks, at most its size): what copy_sparse
/// copies when it cannot reflink.
uint64_t data_bytes(const std::filesystem::path& path);
uint64_t data_bytes(int fd);

/// Current UTC time as ISO 8601.
std::string utc_now();

}  // namespace vmm::clone
