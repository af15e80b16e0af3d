#include "clone/make_template.hpp"

#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <string_view>

#include "clone/memory_file.hpp"
#include "clone/snapshot.hpp"
#include "disk/file_io.hpp"
#include "disk/image.hpp"
#include "disk/qcow2.hpp"
#include "vmm/base/dir_lock.hpp"
#include "vmm/base/fd.hpp"
#include "vmm/base/process.hpp"
#include "vmm/base/thread.hpp"
#include "vmm/exit_status.hpp"
#include "vmm/state_dir.hpp"

namespace vmm::clone {

namespace fs = std::filesystem;

namespace {

/// Whether the disk is a qcow2 image (a file that cannot be opened is not: its copy says why).
Result<bool> is_qcow2(const fs::path& p) {
  Fd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));  // (a FIFO: not waited for)
  if (!fd) return false;
  auto q = disk::Qcow2::probe(fd.get());
  if (!q) return std::unexpected(q.error().context(p.string()));
  return *q;
}

/// Makes every file under `dir` read-only (a template is never written again), and its owner's
/// alone: the memory file is the guest's RAM, with whatever secrets it held.
void make_read_only(const fs::path& dir) {
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (fs::is_regular_file(it->symlink_status(ec))) fs::permissions(it->path(), fs::perms::owner_read, ec);
  }
}

}  // namespace

static Result<> fsync_dir(const fs::path& dir) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd || ::fsync(fd.get()) != 0) return fail("{}: fsync: {}", dir.string(), errno_text(errno));
  return {};
}

TemplateDraft::~TemplateDraft() {
  std::error_code e;
  if (!sealed && !tmp.empty()) fs::remove_all(tmp, e);
}

std::expected<std::unique_ptr<TemplateDraft>, Failure> begin_template(const std::string& state_dir, const std::string& dir) {
  auto dest = template_path(state_dir, dir);
  if (!dest) return std::unexpected(Failure{exit_code::kUsage, dest.error().message()});
  std::error_code ec;
  // What drafts and removals cut short left in the state directory's templates (never in a
  // directory of the user's, which may hold anything).
  sweep_tombs(resolve_state_dir(state_dir) / "templates", /*drafts_too=*/true);
  if (fs::exists(*dest, ec)) return std::unexpected(Failure{exit_code::kUsage, fmt::format("{}: already exists", dest->string())});
  fs::create_directories(dest->parent_path(), ec);
  if (ec) {
    return std::unexpected(Failure{exit_code::kVmmError, fmt::format("{}: cannot create: {}", dest->parent_path().string(), ec.message())});
  }
  auto d = std::make_unique<TemplateDraft>();
  d->dest = *dest;
  // A directory of its own, made here (mkdtemp: a new name, mode 0700): never one that someone
  // else made in its place beforehand, with links in it to files of the user's.
  std::string tmp = (dest->parent_path() / fmt::format(".{}.tmp-XXXXXX", dest->filename().string())).string();
  if (::mkdtemp(tmp.data()) == nullptr) {
    return std::unexpected(Failure{exit_code::kVmmError, fmt::format("{}: cannot create: {}", tmp, errno_text(errno))});
  }
  d->tmp = tmp;
  auto lock = lock_dir(d->tmp, LOCK_EX | LOCK_NB);
  if (!lock || lock->busy) {
    return std::unexpected(Failure{exit_code::kVmmError, lock ? fmt::format("{}: locked by another process", tmp) : lock.error().message()});
  }
  d->lock = std::move(lock->fd);
  fs::create_directory(d->tmp / "disks", ec);
  if (ec) return std::unexpected(Failure{exit_code::kVmmError, fmt::format("{}: cannot create: {}", d->tmp.string(), ec.message())});
  return d;
}

Result<> seal_template(TemplateDraft& draft, Manifest& m) {
  const fs::path& tmp = draft.tmp;
  const fs::path& dest = draft.dest;
  for (auto& d : m.disks) {
    auto s = sum_file(tmp, d.file.name);
    if (!s) return std::unexpected(s.error());
    d.file = *s;
  }
  // Durable before it is renamed into place, and the rename too: after a power loss the template
  // is there whole or not at all (its manifest was only flushed to the page cache, and a crash
  // could leave it empty under the template's name, every clone of it refused).
  const fs::path manifest = tmp / kManifestFile;
  {
    Fd out(::open(manifest.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!out) return fail("{}: cannot create: {}", manifest.string(), errno_text(errno));
    const std::string text = manifest_json(m);
    if (auto r = disk::pwrite_full(out.get(), text.data(), text.size(), 0); !r) return fail("{}: cannot write: {}", manifest.string(), r.error().message());
    if (::fsync(out.get()) != 0) return fail("{}: fsync: {}", manifest.string(), errno_text(errno));
  }
  make_read_only(tmp);
  for (const fs::path& d : {tmp / "disks", tmp}) {
    if (auto r = fsync_dir(d); !r) return r;
  }
  // Never onto what is there: another template of that name made meanwhile (a rename would
  // replace an empty directory).
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, dest.c_str(), RENAME_NOREPLACE) != 0) {
    const int err = errno;
    if (err == EEXIST || err == ENOTEMPTY) return fail("{}: already exists (made while this one was being written)", dest.string());
    return fail("{}: rename: {}", dest.string(), errno_text(err));
  }
  draft.sealed = true;
  draft.lock.reset();
  return fsync_dir(dest.parent_path());
}

Result<fs::path> template_path(const std::string& state_dir, const std::string& dir) {
  if (dir.find('/') != std::string::npos) {
    // The directory's name becomes the template's, and its clones' names start with it, which a
    // guest's agent takes only as letters, digits, '.', '_' and '-'.
    fs::path p = fs::path(dir).lexically_normal();
    if (p.filename().empty()) p = p.parent_path();  // "DIR/"
    if (const std::string name = p.filename().string(); !valid_name(name)) {
      return fail("template directory '{}': its name '{}' must be 1 to 64 letters, digits, '.', '_' and '-' (not starting with '.')",
                  printable(dir), printable(name));
    }
    return fs::absolute(p);
  }
  if (!valid_name(dir)) return fail("template name '{}': use letters, digits, '.', '_' and '-'", dir);
  return resolve_state_dir(state_dir) / "templates" / dir;
}

int create_template(const TemplateCreateOptions& o) {
  auto draft = begin_template(o.state_dir, o.dir);
  if (!draft) return report_failure(draft.error());
  const fs::path tmp = (*draft)->tmp;
  const fs::path* dest = &(*draft)->dest;

  // The template owns copies of its disks; the guest boots on those copies.
  Manifest m;
  BootOptions run = o.run;
  run.name = dest->filename().string();
  for (size_t i = 0; i < run.disks.size(); ++i) {
    auto& d = run.disks[i];
    // The format given, else the content's (the manifest then fixes it for every clone).
    auto probed = d.format.empty() ? is_qcow2(d.path) : Result<bool>(d.format == "qcow2");
    if (!probed) return report_error(exit_code::kImage, probed.error().message());
    const bool qcow2 = *probed;
    if (qcow2) {
      // The template owns a copy: an image that depends on a backing file would not be self-contained.
      auto img = disk::Qcow2::open(d.path, disk::Qcow2OpenOptions{.read_only = true});
      if (!img) return report_error(exit_code::kImage, img.error().message());
      if (!(*img)->info().backing.empty()) {
        return report_error(exit_code::kImage, fmt::format("{}: has a backing file; a template's disk must stand alone "
                                                    "(flatten it first: qemu-img convert -O qcow2)", d.path.string()));
      }
    }
    const std::string name = fmt::format("disks/disk{}.{}", i, qcow2 ? "qcow2" : "img");
    // Copied under a shared lock, as a VM reading it would hold: one a VM writes (locked
    // exclusive) is refused, not captured in the middle of its writes.
    auto src = disk::open_locked(d.path, /*read_only=*/true);
    if (!src) return report_error(exit_code::kImage, src.error().message());
    if (auto r = copy_sparse(src->fd.get(), d.path, tmp / name); !r) {
      return report_error(pending_stop_signal() != 0 ? exit_code::kSignal : exit_code::kImage, r.error().message());
    }
    m.disks.push_back({.file = {.name = name}, .id = d.id, .format = qcow2 ? "qcow2" : "raw", .read_only = d.read_only,
                       .probed = d.format.empty() && !qcow2});
    d.path = tmp / name;
  }

  // Ready when the console has printed the text, and the line it is on: saved in the middle of its
  // ready line, every clone would first print the rest of it (the test guest's "counter: ready"
  // was saved before its '\n', which each clone then printed on resume). A line the guest leaves
  // open (a prompt) is waited for briefly (kLineGrace), then saved as it is.
  std::mutex mutex;
  std::condition_variable cv;
  bool ready = false, line_done = false;
  std::string seen;  // the console's last bytes: enough to find the text, and to quote on failure
  constexpr size_t kTail = 160;
  constexpr auto kLineGrace = std::chrono::milliseconds(200);
  constexpr auto kIdleGrace = Machine::kAtRestGrace;
  auto tap = [&, text = o.ready_on](std::span<const uint8_t> bytes) {
    std::lock_guard lock(mutex);
    if (line_done) return;
    const std::string_view in(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    if (ready) {
      if (in.find('\n') != std::string_view::npos) {
        line_done = true;
        cv.notify_all();
      }
      return;
    }
    seen.append(in);
    if (const size_t at = seen.find(text); at != std::string::npos) {
      ready = true;
      line_done = seen.find('\n', at + text.size()) != std::string::npos;
      cv.notify_all();
    } else if (const size_t keep = std::max(text.size(), kTail); seen.size() > keep) {
      seen.erase(0, seen.size() - keep);
    }
  };
  std::optional<Kvm> kvm;
  Identity identity;
  auto machine = boot_machine(nullptr, run, tap, kvm, &identity);
  if (!machine) return report_failure(machine.error());
  Machine& mach = **machine;

  // The controller: waits for the ready text (or the timeout, or the guest's end), then pauses,
  // quiesces, writes the template and stops the VM.
  std::optional<std::string> failure;
  bool written = false;
  bool finished = false;
  bool at_rest = false;
  auto controller = start_thread("the template's controlling thread", [&] {
    std::unique_lock lock(mutex);
    const bool got = cv.wait_for(lock, std::chrono::duration<double>(o.timeout_s), [&] { return ready || finished; });
    if (finished) return;  // the guest stopped first
    if (got) cv.wait_for(lock, kLineGrace, [&] { return line_done || finished; });
    if (finished) {
      failure = fmt::format("the guest stopped right after it printed '{}', before it could be paused", o.ready_on);
      return;
    }
    lock.unlock();
    if (!got) {
      failure = fmt::format("the guest did not print '{}' within {} s", o.ready_on, o.timeout_s);
      mach.vm().request_stop(StopInfo{.reason = devices::StopReason::Error, .status = 0, .message = *failure});
      return;
    }
    auto write = [&]() -> Result<> {
      // Saved at rest: a guest that printed its ready line usually goes idle (HLT) a moment later.
      // Saved before, every clone would first redo the template's last steps: the test guest's
      // identity scenario, caught formatting its line after "identity: ready", had each clone print
      // the template's identity again (~0.4 ms of emulated ring 0 here) before its own first byte.
      // A guest that does not idle within kIdleGrace is saved as it is then.
      auto rest = mach.quiesce_at_rest(kIdleGrace);
      if (!rest) return std::unexpected(rest.error());
      at_rest = *rest;
      auto state = capture(mach, run.cpu_template);
      if (!state) return std::unexpected(state.error());
      auto mem = write_memory_file(mach.vm().memory(), tmp / kMemoryFile);
      if (!mem) return std::unexpected(mem.error());
      if (auto w = write_state_file(tmp / kStateFile, *state); !w) return w;
      m.memory_file = {.name = kMemoryFile, .size = mem->size, .checksum = mem->checksum, .data_bytes = mem->data_bytes};
      auto st = sum_file(tmp, kStateFile);
      if (!st) return std::unexpected(st.error());
      m.state = *st;
      return {};
    };
    if (auto r = write(); !r) {
      failure = r.error().message();
    } else {
      written = true;
    }
    mach.vm().request_stop(StopInfo{.reason = devices::StopReason::PowerOff, .status = 0, .message = {}});
  });
  if (!controller) return report_error(exit_code::kVmmError, fmt::format("template {}: {}", dest->string(), controller.error().message()));
  const StopInfo stop = mach.run();
  {
    std::lock_guard lock(mutex);
    finished = true;
    cv.notify_all();
  }
  controller->join();
  machine->reset();  // the disks are closed (and unlocked) before they are summed and renamed
  if (failure) return report_error(exit_code::kVmmError, fmt::format("template {}: {}", dest->string(), *failure));
  // Ctrl-C (or SIGTERM) while the template was being written stopped the VM then (it returned
  // while the controller wrote), or is pending now: nothing is sealed (it was, status 0).
  if (stop.reason == devices::StopReason::Signal || pending_stop_signal() != 0) {
    return report_error(exit_code::kSignal, fmt::format("template {}: interrupted: nothing written", dest->string()));
  }
  if (!written) {
    // Quote the console's last line(s) as one line: what the guest said before it stopped.
    std::string last;
    for (char c : seen) last += (c == '\n' || c == '\r') ? std::string(" | ") : (c >= 0x20 && c < 0x7f ? std::string(1, c) : "?");
    return report_error(exit_code::kVmmError, fmt::format("template {}: the guest stopped before it printed '{}': {}; its console "
                                                   "ended with \"{}\"", dest->string(), o.ready_on, describe_stop(stop), last));
  }
  // The MACs the guest has (drawn at boot where none was given): a clone in a namespace keeps them.
  for (size_t i = 0; i < run.nets.size(); ++i) m.nets.push_back({.mac = identity.macs.at(i), .tap = run.nets[i].tap});
  m.ip = run.ip;
  m.gateway = run.gateway;
  m.name = dest->filename().string();
  m.created = utc_now();
  m.vmm_version = VMM_VERSION;
  m.memory = run.memory;
  m.vcpus = run.vcpus;
  m.cpu_template = std::string(cpu_template_name(run.cpu_template));
  m.kernel = fs::absolute(run.kernel).string();
  m.cmdline = run.cmdline;
  if (auto r = seal_template(**draft, m); !r) {
    return report_error(pending_stop_signal() != 0 ? exit_code::kSignal : exit_code::kVmmError, r.error().message());
  }
  fmt::print(stderr, "vmm: template {} written ({} MiB of RAM, {} MiB in its memory file{})\n", dest->string(), m.memory >> 20,
             m.memory_file.data_bytes >> 20, at_rest ? "" : fmt::format("; saved busy: a vCPU had not gone idle {} ms after the ready line", kIdleGrace.count()));
  return exit_code::kOk;
}

}  // namespace vmm::clone
