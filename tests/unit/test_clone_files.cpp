// Reading and copying a template's files: read_file (vmm/base/read_file.hpp), which every manifest
// and state file goes through, with the files a bad template could hold; copy_sparse with its
// progress (a full clone's copies); utc_now's form.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <ctime>
#include <functional>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "clone/memory_file.hpp"
#include "clone/template.hpp"
#include "vmm/base/crc32c.hpp"
#include "vmm/base/fault_guard.hpp"
#include "vmm/base/fd.hpp"
#include "vmm/base/read_file.hpp"
#include "temp_dir.hpp"

namespace {

namespace fs = std::filesystem;

using vmm::test::TempDir;

void write(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

bool has(const std::string& message, const std::string& part) { return message.find(part) != std::string::npos; }

constexpr uint64_t kPage = 4096;

// A page whose every byte says which page it is and which round wrote it.
void stamp(const vmm::GuestMemory& m, uint64_t page, uint8_t round) {
  std::vector<uint8_t> b(kPage, static_cast<uint8_t>(page * 7 + round));
  REQUIRE(m.write(vmm::Gpa(page * kPage), b));
}

// The file's pages, read with pread (through the page cache, not a mapping).
std::vector<uint8_t> file_page(const fs::path& p, uint64_t page) {
  std::vector<uint8_t> b(kPage);
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::pread(fd, b.data(), kPage, static_cast<off_t>(page * kPage)) == static_cast<ssize_t>(kPage));
  ::close(fd);
  return b;
}

// How many of the file's pages are in the page cache.
size_t cached_pages(const fs::path& p, uint64_t size) {
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  void* m = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  REQUIRE(m != MAP_FAILED);
  std::vector<unsigned char> v(size / kPage);
  REQUIRE(::mincore(m, size, v.data()) == 0);
  ::munmap(m, size);
  size_t n = 0;
  for (auto c : v) n += c & 1;
  return n;
}

}  // namespace

TEST_CASE("read_file: the whole file, sized by the file, refuses what is over the limit, missing or not a file") {
  TempDir d;
  write(d.path / "small", "{\"a\": 1}\n");
  auto ok = vmm::read_file(d.path / "small", 1 << 20, "manifest");
  REQUIRE(ok);
  CHECK(*ok == "{\"a\": 1}\n");
  write(d.path / "empty", "");
  auto empty = vmm::read_file(d.path / "empty", 16, "manifest");
  REQUIRE(empty);
  CHECK(empty->empty());

  write(d.path / "big", std::string((1 << 20) + 1, 'x'));
  auto big = vmm::read_file(d.path / "big", 1 << 20, "manifest");
  REQUIRE_FALSE(big);
  CHECK(has(big.error().message(), "big: 1048577 bytes is over the manifest limit of 1 MiB"));
  // Exactly at the limit is fine.
  write(d.path / "limit", std::string(1 << 20, 'y'));
  CHECK(vmm::read_file(d.path / "limit", 1 << 20, "manifest"));

  auto missing = vmm::read_file(d.path / "nope", 1 << 20, "manifest");
  REQUIRE_FALSE(missing);
  CHECK(has(missing.error().message(), "nope: cannot open"));
  auto dir = vmm::read_file(d.path, 1 << 20, "manifest");
  REQUIRE_FALSE(dir);
  CHECK(has(dir.error().message(), "not a regular file"));
  REQUIRE(::mkfifo((d.path / "fifo").c_str(), 0600) == 0);
  const int keep = ::open((d.path / "fifo").c_str(), O_RDWR | O_NONBLOCK);  // so that opening it does not block
  auto fifo = vmm::read_file(d.path / "fifo", 1 << 20, "manifest");
  REQUIRE_FALSE(fifo);
  CHECK(has(fifo.error().message(), "not a regular file"));
  ::close(keep);
}

TEST_CASE("copy_sparse: data and holes as they were, progress up to the data copied") {
  TempDir d;
  const fs::path from = d.path / "from", to = d.path / "to";
  {
    const int fd = ::open(from.c_str(), O_WRONLY | O_CREAT, 0644);
    REQUIRE(fd >= 0);
    const std::string a(1 << 20, 'a'), b(4096, 'b');
    REQUIRE(::pwrite(fd, a.data(), a.size(), 0) == static_cast<ssize_t>(a.size()));
    REQUIRE(::pwrite(fd, b.data(), b.size(), 64 << 20) == static_cast<ssize_t>(b.size()));
    REQUIRE(::ftruncate(fd, 96 << 20) == 0);
    ::close(fd);
  }
  std::vector<uint64_t> seen;
  REQUIRE(vmm::clone::copy_sparse(from, to, [&](uint64_t n) { seen.push_back(n); }));
  CHECK(fs::file_size(to) == 96u << 20);
  REQUIRE_FALSE(seen.empty());
  for (size_t i = 1; i < seen.size(); ++i) CHECK(seen[i] >= seen[i - 1]);
  CHECK(seen.back() >= (1u << 20) + 4096);
  CHECK(seen.back() <= vmm::clone::data_bytes(from) + (1u << 20));  // a reflink reports its data size
  std::ifstream in(to, std::ios::binary);
  std::string head(1 << 20, '\0');
  in.read(head.data(), static_cast<std::streamsize>(head.size()));
  CHECK(head == std::string(1 << 20, 'a'));
  in.seekg(64 << 20);
  std::string tail(4096, '\0');
  in.read(tail.data(), 4096);
  CHECK(tail == std::string(4096, 'b'));
  // The copy is sparse: far less allocated than its 96 MiB.
  CHECK(vmm::clone::data_bytes(to) < (8u << 20));
  // An existing destination is never overwritten.
  auto again = vmm::clone::copy_sparse(from, to);
  REQUIRE_FALSE(again);
  CHECK(has(again.error().message(), "cannot create"));
}

// Across file systems copy_file_range fails (EXDEV, Linux 5.19 on): the copy reads and writes
// instead (it failed, "Invalid cross-device link", for a disk on another file system). And a block
// device (st_size 0) is copied whole (it was copied as an empty file, and said nothing).
TEST_CASE("copy_sparse: from another file system, and from a block device") {
  TempDir d;
  const fs::path shm = fs::path("/dev/shm") / ("vmm-copy-" + std::to_string(::getpid()));
  std::string data(3 << 20, '\0');
  for (size_t i = 0; i < data.size(); i += 4096) data[i] = static_cast<char>('a' + i / 4096 % 26);
  std::fill(data.begin() + (1 << 20), data.begin() + (2 << 20), '\0');  // a zero MiB in the middle
  {
    std::ofstream(shm, std::ios::binary).write(data.data(), static_cast<std::streamsize>(data.size()));
  }
  auto read_all = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const fs::path to = d.path / "from-shm";
  auto r = vmm::clone::copy_sparse(shm, to);
  CHECK_MESSAGE(r, (r ? "" : r.error().message()));
  CHECK(read_all(to) == data);
  // A loop device over the same bytes (root and losetup only).
  std::string dev;
  if (::geteuid() == 0) {
    if (FILE* p = ::popen(("losetup -f --show " + shm.string() + " 2>/dev/null").c_str(), "r")) {
      char line[128] = {};
      if (std::fgets(line, sizeof line, p)) dev = line;
      ::pclose(p);
      while (!dev.empty() && (dev.back() == '\n' || dev.back() == ' ')) dev.pop_back();
    }
  }
  if (!dev.empty()) {
    const fs::path to_dev = d.path / "from-dev";
    auto b = vmm::clone::copy_sparse(dev, to_dev);
    CHECK_MESSAGE(b, (b ? "" : b.error().message()));
    CHECK(fs::file_size(to_dev) == data.size());
    CHECK(read_all(to_dev) == data);
    CHECK(vmm::clone::data_bytes(to_dev) <= (2u << 20) + (64u << 10));  // the zero MiB stays a hole
    (void)!std::system(("losetup -d " + dev).c_str());
  } else {
    MESSAGE("no loop device here: the block device case is not checked");
  }
  fs::remove(shm);
}

TEST_CASE("copy_sparse: a pending SIGINT (blocked, as main() blocks it for the VM) ends the copy") {
  TempDir d;
  const fs::path from = d.path / "from", to = d.path / "to";
  {
    const int fd = ::open(from.c_str(), O_WRONLY | O_CREAT, 0644);
    REQUIRE(fd >= 0);
    const std::string a(1 << 20, 'a');
    REQUIRE(::pwrite(fd, a.data(), a.size(), 0) == static_cast<ssize_t>(a.size()));
    ::close(fd);
  }
  sigset_t interrupt, old;
  sigemptyset(&interrupt);
  sigaddset(&interrupt, SIGINT);
  REQUIRE(::pthread_sigmask(SIG_BLOCK, &interrupt, &old) == 0);
  REQUIRE(::pthread_kill(::pthread_self(), SIGINT) == 0);
  auto r = vmm::clone::copy_sparse(from, to);
  const timespec now{};
  CHECK(::sigtimedwait(&interrupt, nullptr, &now) == SIGINT);  // taken back before the mask is restored
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  REQUIRE_FALSE(r);
  CHECK(has(r.error().message(), "stopped by Interrupt"));
  // Without the signal the same copy goes through.
  fs::remove(to);
  CHECK(vmm::clone::copy_sparse(from, to));
  CHECK(fs::file_size(to) == 1u << 20);
}

TEST_CASE("memory file: written pages kept, zero and untouched ones holes, and a clone's RAM saved whole whether its template's pages are in the page cache or not") {
  TempDir d;
  constexpr uint64_t kSize = 8 << 20;
  auto ram = vmm::GuestMemory::anonymous(kSize);
  REQUIRE(ram);
  const std::vector<uint64_t> written = {0, 3, 511, 512, 1000, 1001, 2047};
  for (uint64_t p : written) stamp(*ram, p, 1);
  REQUIRE(ram->fill_zero(vmm::Gpa(1500 * kPage), kPage));  // touched, but zero
  const fs::path first = d / "memory.bin";
  auto info = vmm::clone::write_memory_file(*ram, first);
  if (!info) FAIL(info.error().message());
  CHECK(info->size == kSize);
  CHECK(info->data_bytes == written.size() * kPage);
  auto sum = vmm::clone::checksum_memory_file(first);
  REQUIRE(sum);
  CHECK(sum->checksum == info->checksum);
  CHECK(sum->data_bytes == info->data_bytes);
  CHECK(vmm::clone::data_bytes(first) <= written.size() * kPage + (64u << 10));  // sparse
  for (uint64_t p : written) CHECK(file_page(first, p) == std::vector<uint8_t>(kPage, static_cast<uint8_t>(p * 7 + 1)));

  // A clone's RAM maps the file privately. Its template's pages dropped from the page cache (a
  // host that rebooted, memory pressure) are still its RAM and must be saved: they once looked
  // untouched to mincore() and became holes of zeroes.
  const int fd = ::open(first.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  REQUIRE(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0);
  ::close(fd);
  if (cached_pages(first, kSize) != 0) MESSAGE("the page cache kept the file (tmpfs?): the eviction case is not exercised here");
  auto clone = vmm::clone::map_memory_file(first, kSize);
  if (!clone) FAIL(clone.error().message());
  REQUIRE(clone->file());
  stamp(*clone, 3, 2);     // written over a template page
  stamp(*clone, 1200, 2);  // written over a hole
  const fs::path second = d / "snapshot.bin";
  auto again = vmm::clone::write_memory_file(*clone, second);
  if (!again) FAIL(again.error().message());
  CHECK(again->data_bytes == (written.size() + 1) * kPage);
  for (uint64_t p : written) {
    const uint8_t round = p == 3 ? 2 : 1;
    CHECK(file_page(second, p) == std::vector<uint8_t>(kPage, static_cast<uint8_t>(p * 7 + round)));
  }
  CHECK(file_page(second, 1200) == std::vector<uint8_t>(kPage, static_cast<uint8_t>(1200 * 7 + 2)));
  CHECK(vmm::clone::data_bytes(second) <= (written.size() + 1) * kPage + (64u << 10));  // the template's holes stay holes
  auto sum2 = vmm::clone::checksum_memory_file(second);
  REQUIRE(sum2);
  CHECK(sum2->checksum == again->checksum);

  // The template file replaced under the clone (another inode at its path): its holes are no longer
  // known, so every page is read, and the saved RAM is still the clone's.
  fs::rename(first, d / "moved.bin");
  write(first, std::string(kSize, 'x'));
  const fs::path third = d / "third.bin";
  auto moved = vmm::clone::write_memory_file(*clone, third);
  if (!moved) FAIL(moved.error().message());
  CHECK(moved->checksum == again->checksum);
  CHECK(moved->data_bytes == again->data_bytes);
}

TEST_CASE("memory file: written around the page cache where the file system takes O_DIRECT") {
  TempDir d;
  {
    const int probe = ::open((d / "probe").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | O_DIRECT, 0600);
    if (probe < 0) {
      MESSAGE("no O_DIRECT on " << d.path.string() << ": the memory file is written through the page cache there");
      return;
    }
    ::close(probe);
  }
  constexpr uint64_t kSize = 8 << 20;
  auto ram = vmm::GuestMemory::anonymous(kSize);
  REQUIRE(ram);
  uint64_t stamped = 0;
  for (uint64_t p = 0; p < 1024; p += 3) {
    stamp(*ram, p, 1);
    stamped += static_cast<uint8_t>(p * 7 + 1) != 0;  // (page 585's stamp is all zero: a hole)
  }
  const fs::path file = d / "memory.bin";
  auto info = vmm::clone::write_memory_file(*ram, file);
  if (!info) FAIL(info.error().message());
  CHECK(info->data_bytes == stamped * kPage);
  // Not one page of it was copied into the page cache (a large template's save had doubled the
  // memory its guest dirtied, and cost most of its time, in that copy).
  CHECK(cached_pages(file, kSize) == 0);
  for (uint64_t p = 0; p < 1024; p += 3) CHECK(file_page(file, p) == std::vector<uint8_t>(kPage, static_cast<uint8_t>(p * 7 + 1)));
  auto sum = vmm::clone::checksum_memory_file(file);
  REQUIRE(sum);
  CHECK(sum->checksum == info->checksum);
}

TEST_CASE("memory file: not mapped or checked through a FIFO (no hang), a symbolic link or a file of another size") {
  TempDir d;
  const fs::path fifo = d / "fifo.bin", link = d / "link.bin", real = d / "real.bin";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  write(real, std::string(1 << 20, '\0'));
  fs::create_symlink(real, link);
  for (const fs::path& p : {fifo, link}) {
    auto m = vmm::clone::map_memory_file(p, 1 << 20);
    REQUIRE_FALSE(m);
    CHECK(has(m.error().message(), p.string()));
    auto c = vmm::clone::checksum_memory_file(p);
    REQUIRE_FALSE(c);
  }
  auto wrong = vmm::clone::map_memory_file(real, 2 << 20);
  REQUIRE_FALSE(wrong);
  CHECK(has(wrong.error().message(), "truncated or replaced"));
  CHECK(vmm::clone::map_memory_file(real, 1 << 20));
}

namespace {
/// Runs `body` in a child process; its exit status (or 128 + the signal that killed it) and what it
/// wrote to stderr.
std::pair<int, std::string> in_child(const std::function<void()>& body) {
  int pipefd[2];
  REQUIRE(::pipe(pipefd) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::dup2(pipefd[1], STDERR_FILENO);
    ::close(pipefd[0]);
    body();
    ::_exit(0);
  }
  ::close(pipefd[1]);
  std::string err;
  char buf[512];
  for (ssize_t n; (n = ::read(pipefd[0], buf, sizeof buf)) > 0;) err.append(buf, static_cast<size_t>(n));
  ::close(pipefd[0]);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), err};
}
}  // namespace

TEST_CASE("memory file: truncated under its clone, a lost page's first touch ends the process with one line and status 6, not a SIGBUS") {
  TempDir d;
  const fs::path file = d / "memory.bin", other = d / "other.bin";
  constexpr uint64_t kSize = 1 << 20;
  auto fill = [&] {
    write(file, std::string(kSize, 'x'));
    write(other, std::string(kSize, 'y'));
  };
  auto shrink = [](const fs::path& p) { REQUIRE(::truncate(p.c_str(), 8192) == 0); };
  auto touch = [](const vmm::GuestMemory& m, uint64_t page) {
    std::vector<uint8_t> b(kPage);
    (void)m.read(vmm::Gpa(page * kPage), b);
  };
  // The VMM's touch (a device reading a ring): SIGBUS in guest memory.
  fill();
  auto [status, err] = in_child([&] {
    auto m = vmm::clone::map_memory_file(file, kSize);
    if (!m) ::_exit(90);
    touch(*m, 1);  // a page still there
    shrink(file);
    touch(*m, 1);
    touch(*m, 100);
  });
  CHECK(status == 6);
  CHECK(has(err, "vmm: error: " + file.string() + ": the template's memory file shrank under the running VM"));
  CHECK(std::count(err.begin(), err.end(), '\n') == 1);
  // The guest's touch (KVM_RUN's EFAULT): the same, asked once the run failed.
  fill();
  auto [status2, err2] = in_child([&] {
    auto m = vmm::clone::map_memory_file(file, kSize);
    if (!m) ::_exit(90);
    vmm::FaultGuard::exit_if_shrunk();  // nothing shrank: returns
    shrink(file);
    vmm::FaultGuard::exit_if_shrunk();
    ::_exit(91);
  });
  CHECK(status2 == 6);
  CHECK(has(err2, "shrank under the running VM"));
  // A SIGBUS anywhere else keeps its default action (a bug, not a template's fault), and a guard is
  // given back with its memory.
  fill();
  auto [status3, err3] = in_child([&] {
    auto m = vmm::clone::map_memory_file(file, kSize);
    if (!m) ::_exit(90);
    vmm::Fd fd(::open(other.c_str(), O_RDONLY));
    void* p = ::mmap(nullptr, kSize, PROT_READ, MAP_PRIVATE, fd.get(), 0);
    if (p == MAP_FAILED) ::_exit(92);
    shrink(other);
    (void)*static_cast<volatile const uint8_t*>(static_cast<uint8_t*>(p) + 100 * kPage);
    ::_exit(93);
  });
  CHECK(status3 == 128 + SIGBUS);
  CHECK(err3.empty());
  fill();
  auto [status4, err4] = in_child([&] {
    { auto m = vmm::clone::map_memory_file(file, kSize); }
    shrink(file);
    vmm::FaultGuard::exit_if_shrunk();
    ::_exit(94);
  });
  CHECK(status4 == 94);
}

TEST_CASE("template files: a sparse file's checksum is the one of all its bytes, its holes summed without being read") {
  TempDir d;
  const fs::path f = d / "disk.img";
  {
    vmm::Fd fd(::open(f.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    REQUIRE(fd);
    REQUIRE(::ftruncate(fd.get(), 8 << 20) == 0);
    const std::string a(5000, 'a'), b(3, 'b');
    REQUIRE(::pwrite(fd.get(), a.data(), a.size(), 1 << 20) == static_cast<ssize_t>(a.size()));
    REQUIRE(::pwrite(fd.get(), b.data(), b.size(), (5 << 20) + 3) == static_cast<ssize_t>(b.size()));
  }
  const std::string all = vmm::read_file(f, 16 << 20, "disk").value();
  REQUIRE(all.size() == 8u << 20);
  auto sum = vmm::clone::sum_file(d.path, "disk.img");
  REQUIRE(sum);
  CHECK(sum->size == 8u << 20);
  CHECK(sum->checksum == vmm::crc32c(0, std::span(reinterpret_cast<const uint8_t*>(all.data()), all.size())));
  // 1 TiB of hole with a byte at its end: read whole, this took ~25 min here (0.7 GB/s of zeros).
  const fs::path big = d / "big.img";
  {
    vmm::Fd fd(::open(big.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    REQUIRE(fd);
    REQUIRE(::pwrite(fd.get(), "z", 1, (1ll << 40) - 1) == 1);
  }
  auto huge = vmm::clone::sum_file(d.path, "big.img");
  REQUIRE(huge);
  CHECK(huge->size == 1ull << 40);
  CHECK(huge->checksum == vmm::crc32c(vmm::crc32c_zeros(0, (1ull << 40) - 1), std::span(reinterpret_cast<const uint8_t*>("z"), 1)));
}

TEST_CASE("template files: regular files of the template's own with no link out of it, and qcow2 disks that stand alone") {
  TempDir d;
  fs::create_directories(d / "disks");
  write(d / "disks/disk0.img", std::string(4096, 'd'));
  write(d / "outside", "host secret");
  auto ok = vmm::clone::template_file(d.path, "disks/disk0.img");
  REQUIRE(ok);
  CHECK(*ok == 4096);
  auto missing = vmm::clone::template_file(d.path, "disks/nosuch.img");
  REQUIRE_FALSE(missing);
  CHECK(has(missing.error().message(), "nosuch.img: No such file or directory"));
  fs::create_symlink(d / "outside", d / "disks/link.img");
  auto link = vmm::clone::template_file(d.path, "disks/link.img");
  REQUIRE_FALSE(link);
  CHECK(has(link.error().message(), "link.img: not a regular file (a symbolic link)"));
  fs::create_directories(d / "elsewhere");
  write(d / "elsewhere/disk0.img", "x");
  fs::create_directory_symlink(d / "elsewhere", d / "linked");
  auto dir_link = vmm::clone::template_file(d.path, "linked/disk0.img");
  REQUIRE_FALSE(dir_link);
  CHECK(has(dir_link.error().message(), "linked: not a directory of the template's (a symbolic link)"));
  REQUIRE(::mkfifo((d / "fifo").c_str(), 0600) == 0);
  CHECK_FALSE(vmm::clone::template_file(d.path, "fifo"));
  CHECK_FALSE(vmm::clone::template_file(d.path, "disks"));  // a directory
  CHECK_FALSE(vmm::clone::template_file(d.path, "../" + d.path.filename().string() + "/outside"));  // out and back in
  CHECK_FALSE(vmm::clone::template_file(d.path, "/etc/hostname"));
  // Opened: the file checked is the file read (its descriptor, its identity).
  auto opened = vmm::clone::open_template_file(d.path, "disks/disk0.img");
  REQUIRE(opened);
  struct stat st {};
  REQUIRE(::fstat(opened->fd.get(), &st) == 0);
  CHECK(opened->size == 4096);
  CHECK(opened->id == std::pair<uint64_t, uint64_t>(st.st_dev, st.st_ino));
  char c = 0;
  CHECK(::pread(opened->fd.get(), &c, 1, 0) == 1);
  CHECK(c == 'd');

  // qcow2: the header's backing file offset and size must be zero.
  std::string q(512, '\0');
  q[0] = 'Q', q[1] = 'F', q[2] = 'I', q[3] = '\xfb', q[7] = 3;
  write(d / "alone.qcow2", q);
  CHECK(vmm::clone::check_standalone_qcow2(d / "alone.qcow2"));
  q[14] = 2;  // backing_file_offset 0x200
  write(d / "backed.qcow2", q);
  auto backed = vmm::clone::check_standalone_qcow2(d / "backed.qcow2");
  REQUIRE_FALSE(backed);
  CHECK(has(backed.error().message(), "backed.qcow2: has a backing file; a template's disk must stand alone"));
  q[14] = 0, q[19] = 9;  // a name size without an offset: refused too
  write(d / "named.qcow2", q);
  CHECK_FALSE(vmm::clone::check_standalone_qcow2(d / "named.qcow2"));
  auto raw = vmm::clone::check_standalone_qcow2(d / "disks/disk0.img");
  REQUIRE_FALSE(raw);
  CHECK(has(raw.error().message(), "not a qcow2 image"));
  CHECK_FALSE(vmm::clone::check_standalone_qcow2(d / "fifo"));  // no hang
  CHECK_FALSE(vmm::clone::check_standalone_qcow2(d / "disks/link.img"));
}

TEST_CASE("resolve_template: a name is the state directory's template, even beside a directory of that name, and a path has a slash") {
  TempDir state, cwd;
  fs::create_directories(state.path / "templates" / "t");
  fs::create_directories(cwd.path / "t");
  write(cwd.path / "t" / "manifest.json", "{}");
  const fs::path before = fs::current_path();
  fs::current_path(cwd.path);
  auto named = vmm::clone::resolve_template(state.path, "t");
  auto local = vmm::clone::resolve_template(state.path, "./t");
  auto missing = vmm::clone::resolve_template(state.path, "u");
  auto bad = vmm::clone::resolve_template(state.path, "a b");
  fs::current_path(before);
  REQUIRE(named);
  CHECK(*named == state.path / "templates" / "t");
  REQUIRE(local);
  CHECK(fs::equivalent(*local, cwd.path / "t"));
  REQUIRE_FALSE(missing);
  CHECK(has(missing.error().message(), "template 'u': not found in"));
  REQUIRE_FALSE(bad);
  CHECK(has(bad.error().message(), "not a valid name"));
}

TEST_CASE("utc_now: ISO 8601 in UTC") {
  auto gm = [] {  // the C library's view of the same second
    const std::time_t t = std::time(nullptr);
    std::tm tm{};
    ::gmtime_r(&t, &tm);
    char b[32];
    std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return std::string(b);
  };
  const std::string before = gm();
  const std::string now = vmm::clone::utc_now();
  const std::string after = gm();
  CHECK(std::regex_match(now, std::regex(R"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z)")));
  CHECK((now == before || now == after));
}
