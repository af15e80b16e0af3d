// A failfs mount for a test (tests/disk/failfs.c): the files of DIR/backing under DIR/mnt, where the
// test can make the next fsyncs fail with EIO, as a disk's failed write-back makes them fail, and
// make the file system full.
// Needs root and /dev/fuse; available() says why not.
#pragma once

#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

extern char** environ;

namespace vmm::test {

class FailFs {
 public:
  static std::filesystem::path tool() { return std::filesystem::path(VMM_BINARY_DIR) / "tests" / "failfs"; }

  /// Empty when a failfs can be mounted here, else why not.
  static std::string unavailable() {
    if (::geteuid() != 0 || !cap_sys_admin()) return "failfs needs root (CAP_SYS_ADMIN) to mount";
    if (::access("/dev/fuse", R_OK | W_OK) != 0) return "/dev/fuse is not usable here";
    if (::access(tool().c_str(), X_OK) != 0) return tool().string() + " is missing";
    return {};
  }

  /// Mounts DIR/backing (made here) on DIR/mnt; throws when the mount does not appear in 10 s.
  explicit FailFs(const std::filesystem::path& dir) : backing_(dir / "backing"), mnt_(dir / "mnt") {
    std::filesystem::create_directories(backing_);
    std::filesystem::create_directories(mnt_);
    struct stat before {};
    ::stat(mnt_.c_str(), &before);
    const std::string t = tool().string(), b = backing_.string(), m = mnt_.string();
    char* argv[] = {const_cast<char*>(t.c_str()), const_cast<char*>(b.c_str()), const_cast<char*>(m.c_str()), nullptr};
    if (::posix_spawn(&pid_, argv[0], nullptr, nullptr, argv, environ) != 0) throw std::runtime_error("cannot start failfs");
    for (int i = 0; i < 1000; ++i) {
      struct stat now {};
      if (::stat(mnt_.c_str(), &now) == 0 && now.st_dev != before.st_dev) return;
      int st;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        throw std::runtime_error("failfs ended before its mount appeared");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    stop();
    throw std::runtime_error("failfs's mount did not appear in 10 s");
  }
  ~FailFs() { stop(); }
  FailFs(const FailFs&) = delete;
  FailFs& operator=(const FailFs&) = delete;

  const std::filesystem::path& backing() const { return backing_; }
  const std::filesystem::path& mnt() const { return mnt_; }

  /// The next n fsync/fdatasync calls on the mount fail with EIO.
  void fail_next_fsyncs(int n) const { std::ofstream(backing_ / ".failfs-fsync") << n << '\n'; }
  /// The file system is full once its files hold `bytes` (writes that need new blocks then fail
  /// with ENOSPC); a negative count: no limit.
  void set_space_limit(long long bytes) const {
    if (bytes < 0) {
      std::filesystem::remove(backing_ / ".failfs-space");
    } else {
      std::ofstream(backing_ / ".failfs-space") << bytes << '\n';
    }
  }
  /// Bytes its files hold now (their blocks, as failfs counts them).
  long long space_used() const {
    long long used = 0;
    for (const auto& e : std::filesystem::directory_iterator(backing_)) {
      if (e.path().filename().string().starts_with(".failfs-")) continue;
      struct stat st {};
      if (::lstat(e.path().c_str(), &st) == 0) used += static_cast<long long>(st.st_blocks) * 512;
    }
    return used;
  }
  /// The fsyncs that reached the file system, one "ok NAME" or "EIO NAME" line each.
  std::string fsync_log() const {
    std::ifstream in(backing_ / ".failfs-log");
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
  }

 private:
  static bool cap_sys_admin() {
    std::ifstream in("/proc/self/status");
    for (std::string line; std::getline(in, line);) {
      if (line.starts_with("CapEff:")) return (std::stoull(line.substr(7), nullptr, 16) >> 21) & 1;  // CAP_SYS_ADMIN
    }
    return false;
  }

  void stop() {
    // Unmounted first: the kernel then ends the file system's connection and failfs's loop with it
    // (a SIGTERM alone can land just before libfuse's read of /dev/fuse and be lost).
    ::umount2(mnt_.c_str(), MNT_DETACH);
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int st;
      for (int i = 0; i < 500 && ::waitpid(pid_, &st, WNOHANG) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      if (::kill(pid_, SIGKILL) == 0) ::waitpid(pid_, &st, 0);
      pid_ = -1;
    }
  }

  std::filesystem::path backing_, mnt_;
  pid_t pid_ = -1;
};

}  // namespace vmm::test
