#include "vmm/boot/image_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

namespace vmm::boot {

Result<ImageFile> ImageFile::open(const std::filesystem::path& path) {
  std::string name = path.string();
  // O_NONBLOCK: a FIFO's open would wait for a writer, for ever (the CLI's SIGINT and SIGTERM are
  // blocked by then); it is refused below instead, as any file that is not a regular one.
  Fd fd(::open(name.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (!fd) return fail("{}: {}", name, errno_text(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return fail("{}: {}", name, errno_text(errno));
  if (S_ISDIR(st.st_mode)) return fail("{}: is a directory, not a file", name);
  if (!S_ISREG(st.st_mode)) return fail("{}: not a regular file", name);
  return ImageFile(std::move(fd), std::move(name), static_cast<uint64_t>(st.st_size));
}

Result<> ImageFile::read_at(uint64_t offset, std::span<uint8_t> out, std::string_view what) const {
  if (!contains(offset, out.size())) {
    return error("truncated: {} needs {:#x} bytes at offset {:#x} but the file has {:#x} bytes", what,
                 out.size(), offset, size_);
  }
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::pread(fd_.get(), out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return error("reading {} at offset {:#x}: {}", what, offset + done, errno_text(errno));
    }
    if (n == 0) return error("truncated while reading {} at offset {:#x} (file shrank?)", what, offset + done);
    done += static_cast<size_t>(n);
  }
  return {};
}

Result<std::vector<uint8_t>> ImageFile::read_vector(uint64_t offset, uint64_t len, std::string_view what) const {
  if (!contains(offset, len)) {
    return error("truncated: {} needs {:#x} bytes at offset {:#x} but the file has {:#x} bytes", what, len, offset,
                 size_);
  }
  std::vector<uint8_t> buf(static_cast<size_t>(len));
  if (auto r = read_at(offset, buf, what); !r) return std::unexpected(r.error());
  return buf;
}

Result<> ImageFile::read_into(const GuestMemory& memory, Gpa gpa, uint64_t offset, uint64_t len,
                              std::string_view what) const {
  if (!contains(offset, len)) {
    return error("truncated: {} needs {:#x} bytes at offset {:#x} but the file has {:#x} bytes", what, len, offset,
                 size_);
  }
  auto dst = memory.slice(gpa, len);
  if (!dst) return error("{}: {}", what, dst.error().message());
  return read_at(offset, *dst, what);
}

}  // namespace vmm::boot
