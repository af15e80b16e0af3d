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
 * Both control files are hidden from MOUNTPOINT.
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

/* BACKING/NAME for a path "/NAME" of the top level; -ENOENT for anything else. */
static int backing_path(const char* path, char* out) {
  if (path[0] != '/' || strchr(path + 1, '/') || !strcmp(path + 1, kControl) || !strcmp(path + 1, kLog))
    return -ENOENT;
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
    if (!strcmp(e->d_name, kControl) || !strcmp(e->d_name, kLog)) continue;
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
  return fallocate((int)fi->fh, mode, off, len) ? -errno : 0;
}

static int ff_fsync(const char* path, int datasync, struct fuse_file_info* fi) {
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
