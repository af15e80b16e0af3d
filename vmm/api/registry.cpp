#include "vmm/api/registry.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "vmm/api/json_text.hpp"
#include "vmm/base/dir_entries.hpp"
#include "vmm/base/read_file.hpp"

namespace vmm::api {

namespace fs = std::filesystem;

namespace {

constexpr const char* kInfoFile = "vm.json";

/// True when the directory belongs to no running VM (its lock is free, or it has no lock file).
bool stale(const fs::path& dir) {
  Fd fd(::open((dir / kInfoFile).c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return errno == ENOENT;
  if (::flock(fd.get(), LOCK_SH | LOCK_NB) == 0) return true;
  return false;
}

/// A hidden entry beside the VMs' (".NAME.new.PID.N"): one being made.
fs::path hidden(const fs::path& run, const std::string& name) {
  static std::atomic<unsigned> serial{0};
  return run / fmt::format(".{}.new.{}.{}", name, ::getpid(), serial.fetch_add(1));
}

/// Removes what is in the directory `dfd` (recursively, through the descriptor, never by a path
/// that another VM's directory could take), its vm.json last.
void empty_dir(int dfd) {
  Fd copy(::dup(dfd));
  DIR* d = copy ? ::fdopendir(copy.get()) : nullptr;
  if (d == nullptr) return;
  (void)copy.release();  // the DIR owns it now
  std::vector<std::string> names;
  while (const dirent* e = ::readdir(d)) {
    const std::string_view n = e->d_name;
    if (n != "." && n != ".." && n != kInfoFile) names.emplace_back(n);
  }
  ::closedir(d);
  for (const auto& n : names) {
    if (::unlinkat(dfd, n.c_str(), 0) == 0 || errno != EISDIR) continue;
    if (Fd sub(::openat(dfd, n.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)); sub) empty_dir(sub.get());
    (void)::unlinkat(dfd, n.c_str(), AT_REMOVEDIR);
  }
  (void)::unlinkat(dfd, kInfoFile, 0);
}

/// Removes the entry `dir` if it belongs to no running VM (left by one killed with -9, or one
/// still removing itself). Returns whether the name is free.
///
/// An entry under a VM's name is made only by renaming a whole directory there with
/// RENAME_NOREPLACE (publish), its vm.json written and locked, and is removed only by emptying it
/// and then rmdir, which removes nothing but an empty directory: it is never moved or replaced.
/// So a remover that holds the lock of the vm.json it found in the directory it opened knows that
/// the directory is the dead VM's and stays so, and empties it through its descriptor. Until
/// 2026-12-08 a remover checked the entry's lock, then moved it aside by its path: a third process
/// could remove the stale entry in between and a new VM take the name, whose directory was then
/// moved aside; it ran on hidden, its name given to a fourth, whose directory it removed at its end
/// (the unit test "registry: VMs taking one name over stale entries ...": ~2% of holds, every run).
bool reclaim(const fs::path& dir) {
  Fd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!d) return errno == ENOENT;
  // Removers one at a time (only they lock the directory itself, and only while they remove): a
  // second one waits, then finds the vm.json gone and the directory empty.
  if (::flock(d.get(), LOCK_EX) != 0) return false;
  Fd info(::openat(d.get(), kInfoFile, O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!info && errno != ENOENT) return false;
  // Held: its VM runs (or is removing its own entry, vm.json last).
  if (info && ::flock(info.get(), LOCK_EX | LOCK_NB) != 0) return false;
  empty_dir(d.get());
  // rmdir removes only an empty directory: this one, or none if a VM has taken the name since.
  return ::rmdir(dir.c_str()) == 0 || errno == ENOENT;
}

/// Hidden entries older than a minute that no VM holds: left by a process killed while it
/// registered, or while it removed a stale entry.
void sweep_hidden(const fs::path& run) {
  std::error_code ec;
  const auto now = fs::file_time_type::clock::now();
  for (const auto& e : dir_entries(run)) {
    if (e.path().filename().string().front() != '.' || !e.is_directory(ec)) continue;
    const auto mtime = fs::last_write_time(e.path(), ec);
    if (!ec && now - mtime > std::chrono::minutes(1) && stale(e.path())) (void)reclaim(e.path());
  }
}

Result<RunningVm> read_info(const fs::path& dir) {
  auto text = read_file(dir / kInfoFile, 64 * 1024, "VM record");
  if (!text) return std::unexpected(text.error());
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.value("socket", nlohmann::json()).is_string() ||
      !j.value("pid", nlohmann::json(0)).is_number_integer()) {
    return fail("{}: unreadable", (dir / kInfoFile).string());
  }
  return RunningVm{.name = dir.filename().string(), .socket = j["socket"].get<std::string>(), .pid = j.value("pid", int64_t{0})};
}

}  // namespace

Result<std::unique_ptr<Registration>> Registration::create(const fs::path& state_dir, const std::string& name, const fs::path& socket) {
  auto r = prepare(state_dir, name, socket);
  if (!r) return r;
  if (auto p = (*r)->publish(); !p) return std::unexpected(p.error());
  return r;
}

Result<std::unique_ptr<Registration>> Registration::prepare(const fs::path& state_dir, const std::string& name, const fs::path& socket) {
  const fs::path run = state_dir / "run";
  std::error_code ec;
  fs::create_directories(run, ec);
  if (ec) return fail("{}: cannot create: {}", run.string(), ec.message());
  const fs::path dir = run / name;
  std::unique_ptr<Registration> r(new Registration);
  r->name_ = name;
  r->socket_ = socket.empty() ? dir / "api.sock" : fs::absolute(socket);  // (dir_ once the directory is ours)
  // Made whole under a hidden name, its vm.json written and locked, then renamed into place
  // (publish): a directory under a VM's name always holds its lock. Until 2026-12-05 the directory
  // was made in place and the lock taken after, and a lister (`vmm ps`, `vmm clone ls`) in between
  // either took it for a stale entry and removed it, or held its probing lock just as the VM took
  // its own: the VM failed to start ("cannot lock", 1 to 17 of ~4000 registrations in 2 s while
  // another process listed, the unit test "registry: a VM registering while ...").
  const fs::path tmp = hidden(run, name);
  if (::mkdir(tmp.c_str(), 0700) != 0) return fail("{}: cannot create: {}", tmp.string(), errno_text(errno));
  r->staged_ = tmp;  // removed with the registration from here on
  const fs::path info = tmp / kInfoFile;
  r->lock_ = Fd(::open(info.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!r->lock_) return fail("{}: cannot create: {}", info.string(), errno_text(errno));
  if (::flock(r->lock_.get(), LOCK_EX | LOCK_NB) != 0) return fail("{}: cannot lock: {}", info.string(), errno_text(errno));
  auto json = json_text(nlohmann::json{{"name", name}, {"pid", ::getpid()}, {"socket", r->socket_.string()}}, r->socket_.string());
  if (!json) return std::unexpected(json.error());
  const std::string text = *json + "\n";
  if (::write(r->lock_.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    return fail("{}: cannot write: {}", info.string(), errno_text(errno));
  }
  return r;
}

fs::path Registration::staged_socket() const {
  return !staged_.empty() && socket_.parent_path() == staged_.parent_path() / name_ ? staged_ / socket_.filename() : socket_;
}

Result<> Registration::publish() {
  if (staged_.empty()) return {};
  const fs::path dir = staged_.parent_path() / name_;
  for (int attempt = 0;; ++attempt) {
    // Never onto an entry that is there (a rename replaces an empty directory): see reclaim. A
    // file system without RENAME_NOREPLACE gets a rename, which replaces only an empty directory,
    // never a VM's.
    int done = ::renameat2(AT_FDCWD, staged_.c_str(), AT_FDCWD, dir.c_str(), RENAME_NOREPLACE);
    if (done != 0 && errno == EINVAL) done = ::rename(staged_.c_str(), dir.c_str());
    if (done == 0) break;
    const int err = errno;
    if (err != EEXIST && err != ENOTEMPTY) return fail("{}: cannot create: {}", dir.string(), errno_text(err));
    if (attempt > 0 || !reclaim(dir)) return fail("a VM named '{}' is already running ({})", name_, dir.string());
  }
  staged_.clear();
  dir_ = dir;
  return {};
}

void Registration::abandon() {
  abandoned_ = true;
  lock_ = Fd();  // closing a duplicate does not unlock: flock belongs to the open file description, the parent's too
}

void Registration::socket_bound() {
  struct stat st {};
  if (::lstat(staged_socket().c_str(), &st) == 0) bound_ = {static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
}

void Registration::socket_bound(std::pair<uint64_t, uint64_t> id) { bound_ = id; }

Registration::~Registration() {
  if (abandoned_) return;
  std::error_code ec;
  if (!staged_.empty()) {
    fs::remove_all(staged_, ec);  // never published: its socket, if bound, is in there
    return;
  }
  if (dir_.empty()) return;
  // A socket given by path (--api-socket) is removed only if it is still the one this VM bound:
  // one it never bound belongs to whoever listens there.
  struct stat st {};
  if (socket_.parent_path() != dir_ && bound_ && ::lstat(socket_.c_str(), &st) == 0 &&
      std::pair{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)} == *bound_) {
    fs::remove(socket_, ec);
  }
  // Emptied through its descriptor, vm.json last and while locked, then removed if still empty
  // (see reclaim): never removed by its path, which another VM's directory takes once it is gone.
  if (Fd d(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)); d) empty_dir(d.get());
  (void)::rmdir(dir_.c_str());
}

bool remove_unpublished(const fs::path& state_dir, const std::string& name) {
  std::error_code ec;
  const std::string prefix = "." + name + ".new.";
  bool held = false;
  for (const auto& e : dir_entries(state_dir / "run")) {
    // ".NAME.new.PID.N" exactly: not ".NAME.new.x.new.PID.N", made by a VM named "NAME.new.x".
    const std::string entry = e.path().filename().string();
    if (!entry.starts_with(prefix)) continue;
    const std::string_view rest = std::string_view(entry).substr(prefix.size());
    const size_t dot = rest.find('.');
    auto digits = [](std::string_view v) { return !v.empty() && std::ranges::all_of(v, [](char c) { return c >= '0' && c <= '9'; }); };
    if (dot == std::string_view::npos || !digits(rest.substr(0, dot)) || !digits(rest.substr(dot + 1))) continue;
    if (!stale(e.path()) || !reclaim(e.path())) held = true;
  }
  return !held;
}

std::vector<RunningVm> running_vms(const fs::path& state_dir) {
  std::vector<RunningVm> out;
  std::error_code ec;
  sweep_hidden(state_dir / "run");
  for (const auto& e : dir_entries(state_dir / "run")) {
    if (e.path().filename().string().front() == '.' || !e.is_directory(ec)) continue;
    if (stale(e.path())) {
      (void)reclaim(e.path());
      continue;
    }
    if (auto vm = read_info(e.path())) out.push_back(std::move(*vm));
  }
  std::ranges::sort(out, {}, &RunningVm::name);
  return out;
}

Result<fs::path> find_vm(const fs::path& state_dir, const std::string& name_or_socket) {
  if (name_or_socket.find('/') != std::string::npos) return fs::path(name_or_socket);
  const fs::path dir = state_dir / "run" / name_or_socket;
  std::error_code ec;
  if (!fs::is_directory(dir, ec) || stale(dir)) return fail("no VM named '{}' is running in {}", name_or_socket, state_dir.string());
  auto vm = read_info(dir);
  if (!vm) return std::unexpected(vm.error());
  // A VM registers before its guest runs and serves its API a moment later, on a thread of its own
  // (a fork's children and a fleet's clones are reported running before their API is up): wait for
  // the socket while the VM is still registered, at most kApiStartS.
  constexpr auto kApiStartS = std::chrono::seconds(5);
  const auto deadline = std::chrono::steady_clock::now() + kApiStartS;
  while (!fs::is_socket(vm->socket, ec)) {
    if (std::chrono::steady_clock::now() > deadline || stale(dir)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return vm->socket;
}

}  // namespace vmm::api
