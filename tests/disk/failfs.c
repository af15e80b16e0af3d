/* failfs: a FUSE file system over one directory whose fsync can be made to fail, the way a disk's
 * write-back fails under a real file system: tests use it to prove that a flush error reaches the
 * guest and that no later flush succeeds (disk/raw.cpp, the qcow2 engine's sync()).
 *
 * usage: failfs BACKING MOUNTPOINT      (runs in the foreground; SIGTERM unmounts and ends it)
 *
 * Files of BACKING (the top level only) appear under MOUNTPOINT; reads, writes, truncate and
 * fallocate go through to them. The control file BACKING/.failfs-fsync holds a count N: the next
 * N fsync or fdatasync calls on any other file fail with EIO (each takes one from N). Every fsync
 * that reaches failfs, failed or not, adds a line to BACKING/.failfs-log ("ok NAME" or
 * "EIO NAME"), so a test can tell a flush that reached the file system from one refused before it.
 * The control file BACKING/.failfs-space, when it holds a number B, makes the file system full
 * at B bytes: a write or fallocate that needs blocks its file does not have yet (a hole, past the
 * end) fails with ENOSPC when the files of BACKING would then hold more than B bytes in all
 * (st_blocks); writes over blocks already there go through, as on a real full disk.
 * The control file BACKING/.failfs-stall, when it holds a number S, makes the next fsync hang for
 * S seconds (or until the file is removed) before it runs, as a disk or a network file system that
 * stops answering: it logs "stall NAME" as it begins. failfs runs one request at a time, so the
 * file system answers nothing else meanwhile.
 * The control files are hidden from MOUNTPOINT.
 */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

static const char* backing;
static const char kControl[] = ".failfs-fsync";
static const char kLog[] = ".failfs-log";
static const char kSpace[] = ".failfs-space";
static const char kStall[] = ".failfs-stall";

static int is_control(const char* name) {
  return !strcmp(name, kControl) || !strcmp(name, kLog) || !strcmp(name, kSpace) || !strcmp(name, kStall);
}

/* BACKING/NAME for a path "/NAME" of the top level; -ENOENT for anything else. */
static int backing_path(const char* path, char* out) {
  if (path[0] != '/' || strchr(path + 1, '/') || is_control(path + 1)) return -ENOENT;
  if (snprintf(out, PATH_MAX, "%s%s", backing, path) >= PATH_MAX) return -ENAMETOOLONG;
  return 0;
}

/* 1 when this fsync must fail (and the count was taken from), 0 when not. */
static int take_failure(void) {
  char p[PATH_MAX], buf[32] = {0};
  snprintf(p, sizeof p, "%s/%s", backing, kControl);
  FILE* f = fopen(p, "r+");
  if (!f) return 0;
  long n = fgets(buf, sizeof buf, f) ? strtol(buf, NULL, 10) : 0;
  int fail = n > 0;
  if (fail) {
    rewind(f);
    if (ftruncate(fileno(f), 0) == 0) fprintf(f, "%ld\n", n - 1);
  }
  fclose(f);
  return fail;
}

static void log_fsync(const char* result, const char* path) {
  char p[PATH_MAX];
  snprintf(p, sizeof p, "%s/%s", backing, kLog);
  FILE* f = fopen(p, "a");
  if (!f) return;
  fprintf(f, "%s %s\n", result, path + 1);
  fclose(f);
}

/* The limit in BACKING/.failfs-space, or -1 for none. */
static long long space_limit(void) {
  char p[PATH_MAX], buf[32] = {0};
  snprintf(p, sizeof p, "%s/%s", backing, kSpace);
  FILE* f = fopen(p, "r");
  if (!f) return -1;
  long long n = fgets(buf, sizeof buf, f) ? strtoll(buf, NULL, 10) : -1;
  fclose(f);
  return buf[0] ? n : -1;
}

/* Bytes the files of BACKING hold (their blocks). */
static long long space_used(void) {
  long long used = 0;
  DIR* d = opendir(backing);
  if (!d) return 0;
  for (struct dirent* e; (e = readdir(d));) {
    struct stat st;
    if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2]))) continue;
    if (is_control(e->d_name) || fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW)) continue;
    used += (long long)st.st_blocks * 512;
  }
  closedir(d);
  return used;
}

/* Bytes of 4 KiB blocks in [off, off + n) that fd's file has no data for yet. */
static long long unallocated(int fd, off_t off, off_t n) {
  if (off < 0 || n > ((off_t)1 << 50) || off > ((off_t)1 << 50)) return n; /* (no overflow below) */
  const off_t end = (off + n + 4095) & ~(off_t)4095;
  long long missing = 0;
  for (off_t pos = off & ~(off_t)4095; pos < end;) {
    off_t data = lseek(fd, pos, SEEK_DATA);
    if (data < 0 || data >= end) return missing + (end - pos); /* ENXIO: nothing but hole (or EOF) after pos */
    missing += (data & ~(off_t)4095) - pos;
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) return missing + (end - data); /* (cannot tell: counted as needing space) */
    pos = (hole + 4095) & ~(off_t)4095; /* a hole at an unaligned end of file: its last block is there */
  }
  return missing;
}

/* -ENOSPC when giving fd's file [off, off + n) would take the file system past its limit. */
static int check_space(int fd, off_t off, off_t n) {
  long long limit = space_limit();
  if (limit < 0 || n <= 0) return 0;
  long long need = unallocated(fd, off, n);
  return need > 0 && space_used() + need > limit ? -ENOSPC : 0;
}

static void* ff_init(struct fuse_conn_info* conn, struct fuse_config* cfg) {
  (void)conn;
  cfg->use_ino = 0;
  cfg->attr_timeout = 0; /* sizes change under the tests' feet (qemu-img, cmp on BACKING) */
  cfg->entry_timeout = 0;
  cfg->negative_timeout = 0;
  return NULL;
}

static int ff_getattr(const char* path, struct stat* st, struct fuse_file_info* fi) {
  if (fi) return fstat((int)fi->fh, st) ? -errno : 0;
  if (!strcmp(path, "/")) return stat(backing, st) ? -errno : 0;
  char p[PATH_MAX];
  int r = backing_path(path, p);
  if (r) return r;
  return lstat(p, st) ? -errno : 0;
}

static int ff_readdir(const char* path, void* buf, fuse_fill_dir_t fill, off_t off, struct fuse_file_info* fi,
                      enum fuse_readdir_flags flags) {
  (void)off, (void)fi, (void)flags;
  if (strcmp(path, "/")) return -ENOTDIR;
  DIR* d = opendir(backing);
  if (!d) return -errno;
  for (struct dirent* e; (e = readdir(d));) {
    if (is_control(e->d_name)) continue;
    if (fill(buf, e->d_name, NULL, 0, 0)) break;
  }
  closedir(d);
  return 0;
}

static int open_backing(const char* path, int flags, mode_t mode, struct fuse_file_info* fi) {
  char p[PATH_MAX];
  int r = backing_path(path, p);
  if (r) return r;
  int fd = open(p, flags & ~O_DIRECT, mode);
  if (fd < 0) return -errno;
  fi->fh = (uint64_t)fd;
  return 0;
}

static int ff_open(const char* path, struct fuse_file_info* fi) { return open_backing(path, fi->flags, 0, fi); }

static int ff_create(const char* path, mode_t mode, struct fuse_file_info* fi) {
  return open_backing(path, fi->flags | O_CREAT, mode, fi);
}

static int ff_read(const char* path, char* buf, size_t n, off_t off, struct fuse_file_info* fi) {
  (void)path;
  ssize_t r = pread((int)fi->fh, buf, n, off);
  return r < 0 ? -errno : (int)r;
}

static int ff_write(const char* path, const char* buf, size_t n, off_t off, struct fuse_file_info* fi) {
  (void)path;
  int full = check_space((int)fi->fh, off, (off_t)n);
  if (full) return full;
  ssize_t r = pwrite((int)fi->fh, buf, n, off);
  return r < 0 ? -errno : (int)r;
}

static int ff_truncate(const char* path, off_t size, struct fuse_file_info* fi) {
  if (fi) return ftruncate((int)fi->fh, size) ? -errno : 0;
  char p[PATH_MAX];
  int r = backing_path(path, p);
  if (r) return r;
  return truncate(p, size) ? -errno : 0;
}

static int ff_fallocate(const char* path, int mode, off_t off, off_t len, struct fuse_file_info* fi) {
  (void)path;
  if (!(mode & FALLOC_FL_PUNCH_HOLE)) {
    int full = check_space((int)fi->fh, off, len);
    if (full) return full;
  }
  return fallocate((int)fi->fh, mode, off, len) ? -errno : 0;
}

/* Hangs as BACKING/.failfs-stall asks (once: the file is emptied). */
static void stall_if_asked(const char* path) {
  char p[PATH_MAX], buf[32] = {0};
  snprintf(p, sizeof p, "%s/%s", backing, kStall);
  FILE* f = fopen(p, "r+");
  if (!f) return;
  long s = fgets(buf, sizeof buf, f) ? strtol(buf, NULL, 10) : 0;
  if (ftruncate(fileno(f), 0) != 0) s = 0;
  fclose(f);
  if (s <= 0) return;
  log_fsync("stall", path);
  for (long i = 0; i < s * 20 && access(p, F_OK) == 0; i++) usleep(50000);
}

static int ff_fsync(const char* path, int datasync, struct fuse_file_info* fi) {
  stall_if_asked(path);
  if (take_failure()) {
    log_fsync("EIO", path);
    return -EIO;
  }
  int r = datasync ? fdatasync((int)fi->fh) : fsync((int)fi->fh);
  r = r ? -errno : 0;
  log_fsync(r ? "error" : "ok", path);
  return r;
}

static int ff_release(const char* path, struct fuse_file_info* fi) {
  (void)path;
  close((int)fi->fh);
  return 0;
}

static int ff_unlink(const char* path) {
  char p[PATH_MAX];
  int r = backing_path(path, p);
  if (r) return r;
  return unlink(p) ? -errno : 0;
}

static int ff_statfs(const char* path, struct statvfs* st) {
  (void)path;
  return statvfs(backing, st) ? -errno : 0;
}

static const struct fuse_operations ops = {
    .init = ff_init,
    .getattr = ff_getattr,
    .readdir = ff_readdir,
    .open = ff_open,
    .create = ff_create,
    .read = ff_read,
    .write = ff_write,
    .truncate = ff_truncate,
    .fallocate = ff_fallocate,
    .fsync = ff_fsync,
    .release = ff_release,
    .unlink = ff_unlink,
    .statfs = ff_statfs,
};

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: failfs BACKING MOUNTPOINT\n");
    return 2;
  }
  static char real[PATH_MAX];
  if (!realpath(argv[1], real)) {
    fprintf(stderr, "failfs: %s: %s\n", argv[1], strerror(errno));
    return 2;
  }
  backing = real;
  /* Foreground, one thread (the control file's count needs no lock); root mounts with mount(2). */
  char* args[] = {argv[0], "-f", "-s", "-o", "fsname=failfs", argv[2], NULL};
  return fuse_main(6, args, &ops, NULL);
}
