// Running VMs of a state directory: each has STATE_DIR/run/NAME/ (mode 0700) holding its API
// socket (api.sock, unless --api-socket put it elsewhere) and vm.json (pid, socket), and holds an
// exclusive lock on vm.json for as long as it runs. The directory is made under a hidden name with
// its vm.json locked, then renamed into place without replacing anything, so that one under a VM's
// name always holds its lock while its VM runs; it is never moved, and is removed by emptying it
// (vm.json last, under its lock) and then removing it only if empty. A directory whose lock is free
// belongs to a VM that ended without cleaning up (kill -9): whoever finds it removes it so (see
// reclaim in registry.cpp). The name is taken while the directory exists, so names are unique among
// running VMs.
#pragma once

#include <filesystem>
#include <optional>
#include <memory>
#include <string>
#include <vector>

#include "vmm/base/error.hpp"
#include "vmm/base/fd.hpp"

namespace vmm::api {

class Registration {
 public:
  /// Takes `name` in `state_dir`/run; `socket` empty means the default, run/NAME/api.sock.
  static Result<std::unique_ptr<Registration>> create(const std::filesystem::path& state_dir, const std::string& name,
                                                      const std::filesystem::path& socket = {});
  /// Everything create() does but taking the name: the directory is made whole (vm.json written
  /// and locked) under a hidden name, and publish() renames it into place. What a pool's member
  /// does before the request, so that the request pays for a rename and not for making files
  /// (on this host's ext4 a new inode costs ~250 us, a rename ~20 us).
  static Result<std::unique_ptr<Registration>> prepare(const std::filesystem::path& state_dir, const std::string& name,
                                                       const std::filesystem::path& socket = {});
  /// Takes the name (a stale entry under it is removed as create() removes it); fails if a running
  /// VM has it. Nothing to do for a registration made by create().
  Result<> publish();
  /// Where the API socket is to be bound now: socket() once published; before that, for the
  /// default socket, its place in the hidden directory (a socket bound there moves with it).
  std::filesystem::path staged_socket() const;
  ~Registration();  ///< removes the directory (and the socket) unless released
  Registration(const Registration&) = delete;
  Registration& operator=(const Registration&) = delete;

  const std::string& name() const { return name_; }
  const std::filesystem::path& socket() const { return socket_; }
  const std::filesystem::path& dir() const { return dir_; }
  /// In a forked child: forget the parent's registration without touching its files (the lock
  /// fd is shared with the parent: it is closed, never unlocked).
  void abandon();
  /// The VM listens at socket() now: the socket there is its own, and goes with the registration
  /// (a socket it never bound, or that another server has bound since, is left alone).
  void socket_bound();
  /// The same, for the socket file of device and inode `id` (listen_unix's: an lstat of the path
  /// after it could see another server's socket, moved there since).
  void socket_bound(std::pair<uint64_t, uint64_t> id);

 private:
  Registration() = default;
  std::string name_;
  std::filesystem::path dir_, socket_;
  std::filesystem::path staged_;  ///< the hidden directory until publish()
  Fd lock_;
  bool abandoned_ = false;
  std::optional<std::pair<uint64_t, uint64_t>> bound_;  // the socket file's device and inode
};

struct RunningVm {
  std::string name;
  std::filesystem::path socket;
  int64_t pid = 0;
};
/// Removes what a VM named `name` prepared and never published (Registration::prepare) if no
/// process holds it any more: a pool's member that was killed while it waited. (Any lister sweeps
/// such entries once they are a minute old.) False if one is still held.
bool remove_unpublished(const std::filesystem::path& state_dir, const std::string& name);
/// The VMs running in `state_dir` (stale entries are removed on the way), sorted by name.
std::vector<RunningVm> running_vms(const std::filesystem::path& state_dir);
/// The API socket of `name_or_socket`: a path containing '/' is a socket; otherwise a VM's name.
/// Waits, a few seconds at most, for a VM that has registered but not yet opened its socket.
Result<std::filesystem::path> find_vm(const std::filesystem::path& state_dir, const std::string& name_or_socket);

}  // namespace vmm::api
