#include "vmm/api/registry.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include <nlohmann/json.hpp>

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

Result<RunningVm> read_info(const fs::path& dir) {
  auto text = read_file(dir / kInfoFile, 64 * 1024, "VM record");
  if (!text) return std::unexpected(text.error());
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.value("socket", nlohmann::json()).is_string()) {
    return fail("{}: unreadable", (dir / kInfoFile).string());
  }
  return RunningVm{.name = dir.filename().string(), .socket = j["socket"].get<std::string>(), .pid = j.value("pid", int64_t{0})};
}

}  // namespace

Result<std::unique_ptr<Registration>> Registration::create(const fs::path& state_dir, const std::string& name, const fs::path& socket) {
  const fs::path run = state_dir / "run";
  std::error_code ec;
  fs::create_directories(run, ec);
  if (ec) return fail("{}: cannot create: {}", run.string(), ec.message());
  const fs::path dir = run / name;
  for (int attempt = 0;; ++attempt) {
    if (::mkdir(dir.c_str(), 0700) == 0) break;
    if (errno != EEXIST) return fail("{}: cannot create: {}", dir.string(), errno_text(errno));
    if (attempt > 0 || !stale(dir)) return fail("a VM named '{}' is already running ({})", name, dir.string());
    fs::remove_all(dir, ec);  // left by a VM that was killed
  }
  std::unique_ptr<Registration> r(new Registration);
  r->name_ = name;
  r->dir_ = dir;
  r->socket_ = socket.empty() ? dir / "api.sock" : fs::absolute(socket);
  const fs::path info = dir / kInfoFile;
  r->lock_ = Fd(::open(info.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!r->lock_) return fail("{}: cannot create: {}", info.string(), errno_text(errno));
  if (::flock(r->lock_.get(), LOCK_EX | LOCK_NB) != 0) return fail("{}: cannot lock: {}", info.string(), errno_text(errno));
  const std::string text = nlohmann::json{{"name", name}, {"pid", ::getpid()}, {"socket", r->socket_.string()}}.dump() + "\n";
  if (::write(r->lock_.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    return fail("{}: cannot write: {}", info.string(), errno_text(errno));
  }
  return r;
}

void Registration::abandon() {
  abandoned_ = true;
  lock_ = Fd();  // closing a duplicate does not unlock: flock belongs to the open file description, the parent's too
}

Registration::~Registration() {
  if (abandoned_ || dir_.empty()) return;
  std::error_code ec;
  if (socket_.parent_path() != dir_) fs::remove(socket_, ec);
  fs::remove_all(dir_, ec);
}

std::vector<RunningVm> running_vms(const fs::path& state_dir) {
  std::vector<RunningVm> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(state_dir / "run", ec)) {
    if (!e.is_directory(ec)) continue;
    if (stale(e.path())) {
      fs::remove_all(e.path(), ec);
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
