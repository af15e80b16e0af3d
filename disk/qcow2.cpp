// The qcow2 engine's public face (disk/qcow2.hpp): opening with validation of everything read,
// backing chains, the guest-visible operations, creation. The engine itself (cache, allocation,
// mapping, reads and writes, the crash-safe flush) is in disk/qcow2_engine.hpp.
#include "disk/qcow2.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <list>
#include <unordered_map>
#include <unordered_set>

#include <fmt/core.h>

#include "disk/file_io.hpp"
#include "disk/image.hpp"
#include "disk/qcow2_format.hpp"
#include "disk/qcow2_engine.hpp"

namespace vmm::disk {

using namespace qcow2;

namespace {
class RawSource final : public BlockSource {
 public:
  RawSource(Fd fd, std::filesystem::path path, uint64_t size) : fd_(std::move(fd)), path_(std::move(path)), size_(size) {}
  ~RawSource() override { unlock_image(fd_.get()); }
  uint64_t size() const override { return size_; }
  const std::filesystem::path& path() const override { return path_; }
  const char* format() const override { return "raw"; }
  int file() const override { return fd_.get(); }
  Result<> plan_read(uint64_t offset, std::span<const iovec> iov, IoPlan& plan) override {
    plan.push_back({fd_.get(), std::vector<iovec>(iov.begin(), iov.end()), offset});
    return {};
  }

 private:
  Fd fd_;
  std::filesystem::path path_;
  uint64_t size_;
};

Result<std::unique_ptr<BlockSource>> open_chain_member(const std::filesystem::path& path, const std::string& format,
                                                       unsigned depth, std::vector<FileId> above);

}  // namespace

Result<std::unique_ptr<BlockSource>> open_raw_source(const std::filesystem::path& path) {
  auto f = open_locked(path, true);
  if (!f) return std::unexpected(f.error());
  return std::unique_ptr<BlockSource>(new RawSource(std::move(f->fd), path, f->size));
}

Result<bool> Qcow2::probe(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return fail("fstat: {}", errno_text(errno));
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) return false;
  uint8_t m[4];
  if (auto r = pread_full(fd, m, sizeof m, 0); !r) return fail("looking for the qcow2 magic: {}", r.error().message());
  return be32(m) == kMagic;
}


// ---- opening ------------------------------------------------------------------------------------------

namespace {

Result<std::unique_ptr<Qcow2>> open_qcow2(const std::filesystem::path& path, const Qcow2OpenOptions& o,
                                          std::vector<FileId> above);

Result<std::unique_ptr<BlockSource>> open_chain_member(const std::filesystem::path& path, const std::string& format,
                                                       unsigned depth, std::vector<FileId> above) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return fail("{}: cannot open: {}", path.string(), errno_text(errno));
  const FileId id{st.st_dev, st.st_ino};
  if (std::find(above.begin(), above.end(), id) != above.end()) {
    return fail("{}: the backing chain loops back to this file", path.string());
  }
  std::string fmt_name = format;
  if (fmt_name.empty()) {
    Fd probe(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));  // (a FIFO: not waited for)
    if (!probe) return fail("{}: cannot open for reading: {}", path.string(), errno_text(errno));
    auto qcow2 = Qcow2::probe(probe.get());
    if (!qcow2) return std::unexpected(qcow2.error().context(path.string()));
    fmt_name = *qcow2 ? "qcow2" : "raw";
  }
  if (fmt_name == "raw") return open_raw_source(path);
  if (fmt_name != "qcow2") return fail("{}: backing format '{}' is not supported", path.string(), fmt_name);
  Qcow2OpenOptions bo;
  bo.read_only = true;
  bo.depth = depth;
  auto q = open_qcow2(path, bo, std::move(above));
  if (!q) return std::unexpected(q.error());
  return std::unique_ptr<BlockSource>(std::move(*q));
}

}  // namespace

Qcow2::Qcow2(std::unique_ptr<State> state) : s_(std::move(state)) {}

Qcow2::~Qcow2() {
  if (!s_->read_only && s_->broken.empty()) {
    auto r = s_->flush();  // (refcount decrements included: a closed image has no leaked clusters)
    if (!r) fmt::print(stderr, "vmm: {}\n", r.error().message());
  }
  unlock_image(s_->fd.get());
}

Result<std::unique_ptr<Qcow2>> Qcow2::open(const std::filesystem::path& path, const Qcow2OpenOptions& o) {
  return open_qcow2(path, o, {});
}

namespace {

Result<std::unique_ptr<Qcow2>> open_qcow2(const std::filesystem::path& path, const Qcow2OpenOptions& o,
                                          std::vector<FileId> above) {
  auto f = open_locked(path, o.read_only);
  if (!f) return std::unexpected(f.error());
  auto s = std::make_unique<Qcow2::State>();
  s->fd = std::move(f->fd);
  const uint64_t file_size = f->size;
  s->path = path;
  s->name = path.string();
  s->read_only = o.read_only;
  // The first cluster: its size comes from the header's cluster_bits (clamped; parse_header checks it).
  uint8_t start[kV2HeaderLength] = {};
  if (auto r = s->io(pread_full(s->fd.get(), start, sizeof start, 0)); !r) return std::unexpected(r.error());
  const uint32_t bits = std::clamp<uint32_t>(be32(start + 20), kMinClusterBits, kMaxClusterBits);
  std::vector<uint8_t> head(std::min<uint64_t>(file_size, 1ull << bits));
  if (auto r = s->io(pread_full(s->fd.get(), head.data(), head.size(), 0)); !r) return std::unexpected(r.error());
  auto h = parse_header(head, file_size);
  if (!h) return s->err("qcow2 header: {}", h.error().message());
  s->h = *h;
  s->cb = h->cluster_bits;
  s->cs = h->cluster_size();
  s->l2_bits = h->l2_bits();
  s->rb_bits = h->refblock_bits();
  if (!o.read_only) {
    if (h->version < 3) return s->err("version 2 images can only be opened read-only (qemu-img amend -o compat=1.1 upgrades it)");
    if (h->incompatible_features & kIncompatCorrupt) return s->err("the image is marked corrupt; it can only be opened read-only (qemu-img check -r all repairs it)");
    if (h->incompatible_features & kIncompatDirty) return s->err("the dirty bit is set (refcounts may be stale); run 'qemu-img check -r all' first");
    if (h->nb_snapshots > 0) return s->err("the image has {} internal snapshots; writing such images is not supported", h->nb_snapshots);
  }
  // L1 table: every L2 offset cluster-aligned and inside the file.
  s->l1.resize(h->l1_size);
  {
    std::vector<uint8_t> raw(uint64_t{h->l1_size} * 8);
    if (auto r = s->io(pread_full(s->fd.get(), raw.data(), raw.size(), h->l1_table_offset)); !r) return std::unexpected(r.error());
    for (uint64_t i = 0; i < h->l1_size; ++i) {
      const uint64_t e = be64(&raw[i * 8]);
      const uint64_t off = e & kOffsetMask;
      if ((off & (s->cs - 1)) != 0 || (off != 0 && off + s->cs > file_size)) {
        return s->err("L1 entry {}: L2 table offset {:#x} is unaligned or outside the file", i, off);
      }
      if (off == 0 && e != 0 && (e & ~kEntryCopied) != 0) return s->err("L1 entry {}: reserved bits set ({:#x})", i, e);
      s->l1[i] = e;
    }
  }
  // Refcount table: every block offset cluster-aligned and inside the file.
  {
    const uint64_t bytes = uint64_t{h->refcount_table_clusters} * s->cs;
    std::vector<uint8_t> raw(bytes);
    if (auto r = s->io(pread_full(s->fd.get(), raw.data(), raw.size(), h->refcount_table_offset)); !r) return std::unexpected(r.error());
    s->reftable.resize(bytes / 8);
    for (uint64_t i = 0; i < s->reftable.size(); ++i) {
      const uint64_t off = be64(&raw[i * 8]);
      if ((off & (s->cs - 1)) != 0 || (off != 0 && (off >= (1ull << 56) || off + s->cs > file_size))) {
        return s->err("refcount table entry {}: block offset {:#x} is unaligned or outside the file", i, off);
      }
      s->reftable[i] = off;
    }
  }
  // Metadata must not overlap: the header, the L1 table, the refcount table, every refcount block and
  // every L2 table each own their clusters (a table inside another would let a write rewrite it).
  s->meta.insert(0);
  auto claim = [&](uint64_t cluster, std::string_view what) -> Result<> {
    if (!s->meta.insert(cluster).second) return s->err("{} overlaps other metadata at {:#x}", what, cluster << s->cb);
    return {};
  };
  for (uint64_t c = 0; c < h->refcount_table_clusters; ++c) {
    if (auto r = claim((h->refcount_table_offset >> s->cb) + c, "the refcount table"); !r) return std::unexpected(r.error());
  }
  for (uint64_t c = 0; c < ((uint64_t{h->l1_size} * 8 + s->cs - 1) >> s->cb); ++c) {
    if (auto r = claim((h->l1_table_offset >> s->cb) + c, "the L1 table"); !r) return std::unexpected(r.error());
  }
  for (uint64_t i = 0; i < s->reftable.size(); ++i) {
    if (s->reftable[i] == 0) continue;
    if (auto r = claim(s->reftable[i] >> s->cb, fmt::format("refcount table entry {}", i)); !r) return std::unexpected(r.error());
  }
  for (uint64_t i = 0; i < s->l1.size(); ++i) {
    const uint64_t off = s->l1[i] & kOffsetMask;
    if (off == 0) continue;
    if (auto r = claim(off >> s->cb, fmt::format("L1 entry {}", i)); !r) return std::unexpected(r.error());
  }
  s->host_end = (file_size + s->cs - 1) & ~(s->cs - 1);
  s->phys_size = file_size;
  s->cache_max = std::max<size_t>(16, o.cache_bytes >> s->cb);
  // Clusters may be counted past the end of the file (preallocated, never written): new metadata
  // must not land on them. The last refcount block tells.
  for (uint64_t b = s->reftable.size(); b-- > 0;) {
    if (s->reftable[b] == 0) continue;
    auto t = s->load(s->reftable[b], false);
    if (!t) return std::unexpected(t.error());
    for (uint64_t i = 1ull << s->rb_bits; i-- > 0;) {
      if (get_refcount((*t)->data.get(), i, h->refcount_order) != 0) {
        s->host_end = std::max(s->host_end, ((b << s->rb_bits) + i + 1) << s->cb);
        break;
      }
    }
    break;
  }
  // The backing chain.
  struct stat st {};
  if (::fstat(s->fd.get(), &st) == 0) above.push_back({st.st_dev, st.st_ino});
  if (!h->backing_file.empty() && o.open_backing) {
    if (o.depth + 1 > kMaxChainDepth) return s->err("the backing chain is deeper than {} images", kMaxChainDepth);
    std::filesystem::path bp = h->backing_file;
    if (bp.is_relative()) bp = path.parent_path() / bp;
    auto b = open_chain_member(bp, h->backing_format, o.depth + 1, above);
    if (!b) return s->err("backing file: {}", b.error().message());
    if (o.backing_must_be) {
      struct stat bst {};
      if (::fstat((*b)->file(), &bst) != 0 || FileId{bst.st_dev, bst.st_ino} != *o.backing_must_be) {
        return s->err("backing file {}: not the file that was checked before (it was replaced)", bp.string());
      }
    }
    s->backing = std::move(*b);
  }
  // Autoclear bits name features we do not maintain (bitmaps): a writer clears them (§ "Header"),
  // once the image opens whole (an open that fails changes nothing in it).
  if (!o.read_only && h->autoclear_features != 0) {
    uint8_t b[8] = {};
    if (auto r = s->io(pwrite_full(s->fd.get(), b, 8, kOffAutoclearFeatures)); !r) return std::unexpected(r.error());
    s->h.autoclear_features = 0;
  }
  return std::unique_ptr<Qcow2>(new Qcow2(std::move(s)));
}

}  // namespace

Result<std::unique_ptr<BlockSource>> open_backing(const std::filesystem::path& path, const std::string& format,
                                                  unsigned depth) {
  return open_chain_member(path, format, depth, {});
}

// ---- the public operations ---------------------------------------------------------------------------

uint64_t Qcow2::size() const { return s_->h.size; }
int Qcow2::file() const { return s_->fd.get(); }
const std::filesystem::path& Qcow2::path() const { return s_->path; }
bool Qcow2::read_only() const { return s_->read_only; }

Result<> execute(const IoPlan& plan) {
  for (const auto& op : plan) {
    if (auto r = op.write ? pwrite_parallel(op.fd, op.iov, op.offset) : pread_parallel(op.fd, op.iov, op.offset); !r) {
      return r;
    }
  }
  return {};
}

Result<> BlockSource::read(uint64_t offset, std::span<const iovec> iov) {
  IoPlan plan;
  if (auto r = plan_read(offset, iov, plan); !r) return r;
  if (auto r = execute(plan); !r) return std::unexpected(r.error().context(path().string()));
  return {};
}

Result<> Qcow2::plan_read(uint64_t offset, std::span<const iovec> iov, IoPlan& plan) {
  auto n = iov_bytes(iov);
  if (!n) return std::unexpected(n.error());
  if (auto r = check_range(offset, *n, s_->h.size); !r) return std::unexpected(r.error().context(s_->name));
  return s_->plan_read(offset, iov, *n, plan);
}

Result<> Qcow2::write(uint64_t offset, std::span<const iovec> iov) {
  auto n = iov_bytes(iov);
  if (!n) return std::unexpected(n.error());
  if (auto r = check_range(offset, *n, s_->h.size); !r) return std::unexpected(r.error().context(s_->name));
  return s_->write(offset, iov, *n);
}

Result<> Qcow2::plan_write(uint64_t offset, std::span<const iovec> iov, IoPlan& plan) {
  auto n = iov_bytes(iov);
  if (!n) return std::unexpected(n.error());
  if (auto r = check_range(offset, *n, s_->h.size); !r) return std::unexpected(r.error().context(s_->name));
  return s_->write(offset, iov, *n, &plan);
}

Result<> Qcow2::discard(uint64_t offset, uint64_t length) {
  if (auto r = check_range(offset, length, s_->h.size); !r) return std::unexpected(r.error().context(s_->name));
  return s_->zero(offset, length, true);
}

Result<> Qcow2::write_zeroes(uint64_t offset, uint64_t length, bool may_unmap) {
  if (auto r = check_range(offset, length, s_->h.size); !r) return std::unexpected(r.error().context(s_->name));
  return s_->zero(offset, length, may_unmap);
}

Result<> Qcow2::flush() { return s_->flush(); }

Qcow2Info Qcow2::info() const {
  State& s = *s_;
  Qcow2Info i;
  i.version = s.h.version;
  i.virtual_size = s.h.size;
  i.cluster_bits = s.cb;
  i.refcount_bits = 1u << s.h.refcount_order;
  struct stat st {};
  if (::fstat(s.fd.get(), &st) == 0) i.file_size = static_cast<uint64_t>(st.st_blocks) * 512;
  uint64_t used = 0;
  for (uint64_t b = 0; b < s.reftable.size(); ++b) {
    if (s.reftable[b] == 0) continue;
    auto t = s.load(s.reftable[b], false);
    if (!t) break;
    for (uint64_t c = 0; c < (1ull << s.rb_bits); ++c) used += get_refcount((*t)->data.get(), c, s.h.refcount_order) != 0;
    (void)s.trim();
  }
  i.allocated_bytes = used << s.cb;
  i.backing = s.h.backing_file;
  i.backing_format = s.h.backing_format;
  i.incompatible_features = s.h.incompatible_features;
  i.compatible_features = s.h.compatible_features;
  i.autoclear_features = s.h.autoclear_features;
  i.snapshots = s.h.nb_snapshots;
  i.dirty = (s.h.incompatible_features & kIncompatDirty) != 0;
  i.corrupt = (s.h.incompatible_features & kIncompatCorrupt) != 0 || !s.broken.empty();
  for (const BlockSource* b = s.backing.get(); b != nullptr;) {
    i.chain.emplace_back(b->path().string(), b->format());
    const auto* q = dynamic_cast<const Qcow2*>(b);
    b = q ? q->s_->backing.get() : nullptr;
  }
  return i;
}

std::optional<BackingFile> Qcow2::backing_file() const {
  if (!s_->backing) return std::nullopt;
  struct stat st {};
  if (::fstat(s_->backing->file(), &st) != 0) return std::nullopt;
  return BackingFile{.path = s_->backing->path(), .stored = s_->h.backing_file, .id = {st.st_dev, st.st_ino}};
}

Result<> Qcow2::set_backing_name(const std::filesystem::path& path, const std::string& name) {
  Fd fd(::open(path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) return fail("{}: cannot open: {}", path.string(), errno_text(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return fail("{}: stat: {}", path.string(), errno_text(errno));
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  uint8_t start[kV2HeaderLength] = {};
  if (auto r = pread_full(fd.get(), start, std::min<uint64_t>(sizeof start, file_size), 0); !r) return r;
  const uint32_t bits = std::clamp<uint32_t>(be32(start + 20), kMinClusterBits, kMaxClusterBits);
  std::vector<uint8_t> head(std::min<uint64_t>(file_size, 1ull << bits));
  if (auto r = pread_full(fd.get(), head.data(), head.size(), 0); !r) return r;
  auto h = parse_header(head, file_size);
  if (!h) return fail("{}: qcow2 header: {}", path.string(), h.error().message());
  if (h->backing_file_offset == 0) return fail("{}: has no backing file", path.string());
  if (name.empty() || name.size() > kMaxBackingNameLength) {
    return fail("{}: a backing file name of {} bytes (1 to {})", path.string(), name.size(), kMaxBackingNameLength);
  }
  // Where the old name was, after the header and its extensions: the rest of the first cluster is
  // the header's (the tables are in clusters of their own).
  if (name.size() > h->cluster_size() - h->backing_file_offset) {
    return fail("{}: the backing file name '{}' does not fit in the header's cluster", path.string(), printable(name));
  }
  if (control_char(name)) return fail("{}: the backing file name '{}' has a control character", path.string(), printable(name));
  // The length and the name in one write of the header's cluster as it is to be: two writes left,
  // between them (or after a crash with only one on disk), the new name's bytes cut to the old
  // length, a prefix of its path that reads as a valid name of another file.
  if (h->backing_file_offset > head.size()) return fail("{}: qcow2 header: the backing file name lies past the file's end", path.string());
  std::vector<uint8_t> now(head.begin(), head.begin() + static_cast<ptrdiff_t>(h->backing_file_offset));
  now.insert(now.end(), name.begin(), name.end());
  put_be32(now.data() + kOffBackingFileSize, static_cast<uint32_t>(name.size()));
  return pwrite_full(fd.get(), now.data() + kOffBackingFileSize, now.size() - kOffBackingFileSize, kOffBackingFileSize);
}

// ---- creation -----------------------------------------------------------------------------------------

Result<> Qcow2::create(const std::filesystem::path& path, const Qcow2CreateOptions& o) {
  const std::string name = path.string();
  if (o.cluster_bits < 12 || o.cluster_bits > kMaxClusterBits) {
    return fail("{}: cluster size {} is outside 4 KiB..2 MiB", name, 1ull << std::min(o.cluster_bits, 63u));
  }
  Header h;
  h.cluster_bits = o.cluster_bits;
  h.size = o.size;
  if (!o.backing.empty()) {
    std::filesystem::path bp = o.backing;
    if (bp.is_relative()) bp = path.parent_path() / bp;
    auto b = open_chain_member(bp, o.backing_format, 1, {});
    if (!b) return fail("{}: backing file: {}", name, b.error().message());
    if (h.size == 0) h.size = (*b)->size();
    h.backing_file = o.backing;
    h.backing_format = (*b)->format();
  }
  if (h.size == 0 && o.backing.empty()) return fail("{}: a size is needed (or a backing file)", name);
  h.size = (h.size + 511) & ~511ull;
  if (h.size > kMaxVirtualSize) return fail("{}: size {:#x} is larger than {:#x}", name, h.size, kMaxVirtualSize);
  const uint64_t cs = h.cluster_size();
  const uint64_t l1_entries = l1_entries_for(h.size, h.cluster_bits);
  const uint64_t l1_clusters = std::max<uint64_t>(1, (l1_entries * 8 + cs - 1) / cs);
  const uint64_t clusters = 3 + l1_clusters;  // header, refcount table, refcount block, L1
  if (l1_entries * 8 > kMaxL1Bytes || clusters > (1ull << h.refblock_bits())) {
    return fail("{}: size {:#x} is too large for {}-byte clusters", name, h.size, cs);
  }
  h.l1_size = static_cast<uint32_t>(l1_entries);
  h.refcount_table_offset = cs;
  h.refcount_table_clusters = 1;
  h.l1_table_offset = 3 * cs;
  auto hdr = encode_header(h);
  if (!hdr) return fail("{}: {}", name, hdr.error().message());
  Fd fd(::open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!fd) return fail("{}: cannot create: {}", name, errno_text(errno));
  auto undo = [&](const Error& e) -> Result<> {
    ::unlink(name.c_str());
    return std::unexpected(e.context(name));
  };
  uint8_t reftable_entry[8];
  put_be64(reftable_entry, 2 * cs);
  std::vector<uint8_t> counts(clusters * 2);
  for (uint64_t c = 0; c < clusters; ++c) set_refcount(counts.data(), c, 4, 1);
  if (auto r = pwrite_full(fd.get(), hdr->data(), hdr->size(), 0); !r) return undo(r.error());
  if (auto r = pwrite_full(fd.get(), reftable_entry, 8, cs); !r) return undo(r.error());
  if (auto r = pwrite_full(fd.get(), counts.data(), counts.size(), 2 * cs); !r) return undo(r.error());
  if (::ftruncate(fd.get(), static_cast<off_t>(clusters * cs)) != 0) return undo(Error(fmt::format("ftruncate: {}", errno_text(errno))));
  return {};
}

}  // namespace vmm::disk
