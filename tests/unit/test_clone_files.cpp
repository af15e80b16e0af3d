// Reading and copying a template's files: read_file (vmm/base/read_file.hpp), which every manifest
// and state file goes through, with the files a bad template could hold; copy_sparse with its
// progress (a full clone's copies); utc_now's form.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "clone/template.hpp"
#include "vmm/base/read_file.hpp"
#include "temp_dir.hpp"

namespace {

namespace fs = std::filesystem;

using vmm::test::TempDir;

void write(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

bool has(const std::string& message, const std::string& part) { return message.find(part) != std::string::npos; }

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

TEST_CASE("utc_now: ISO 8601 in UTC") {
  CHECK(std::regex_match(vmm::clone::utc_now(), std::regex(R"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z)")));
}
