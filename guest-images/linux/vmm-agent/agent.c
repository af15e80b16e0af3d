/* vmm-agent: applies a vmm clone's identity inside a Linux guest.
 *
 * vmm gives every clone a new identity (id, VM generation, MACs, optionally hostname, IPv4 address,
 * default gateway and a random seed) and publishes it through fw_cfg as `opt/vmm/identity`
 * (identity.h describes the file). A clone resumes the template's memory, this agent included:
 * the agent notices the new generation (it polls the file, by default every 100 ms; Linux's vmgenid
 * driver, from 6.8 on, also sends a uevent NEW_VMGENID=1 that makes it look at once) and makes the
 * machine the new one.
 *
 * Mutual distrust. The host may hand us anything, and the guest does not let it run anything:
 * the file is parsed by a strict grammar (identity.c) and rejected as a whole when any of it is
 * off; values are used only as data (ioctl/netlink arguments, file contents); the only programs
 * run are fixed ones (udhcpc, ssh-keygen) with a fixed argv and environment, by fork+execve, never
 * through a shell. Values read from the host are not echoed in error lines.
 *
 * Order of the steps. Entropy first (RNDADDENTROPY of the host's seed, RNDRESEEDCRNG), so DHCP
 * transaction ids and SSH keys below differ from the siblings'. Then hostname, /etc/machine-id
 * and, on a clone (not at boot: a reboot is not a new machine), new SSH host keys: the machine is
 * the new one before anyone can reach it at its new address. The network last, so the clone never
 * answers with the template's identity under its new MAC or address: each virtio-net interface
 * whose MAC changes goes down (which drops its neighbour entries), loses its IPv4 addresses when a
 * new one is given, takes the new MAC and address and comes up; then the default route, the other
 * interfaces' neighbour entries, two gratuitous ARPs per changed interface (peers learn the new
 * MAC at once) and DHCP. (Until then vmm drops every frame the clone sends from the template's
 * MAC.)
 *
 * usage: vmm-agent [--identity PATH] [--dry-run] [--once] [--daemon] [--poll-ms N] [--net-dir DIR]
 *   --dry-run  change nothing, print the plan ("vmm-agent: would ..."); --once: apply once, exit
 *   (0 applied, 1 rejected or unreadable, 2 usage); --daemon: go to the background after the
 *   first application (init then runs on with the machine configured and the boot lines printed);
 *   --poll-ms: default 100; --net-dir: where the interfaces are listed (default /sys/class/net;
 *   tests point it at a fake tree). Without an identity channel (no qemu_fw_cfg) it says so and
 *   exits 0. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/netlink.h>
#include <linux/random.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <net/route.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "identity.h"

#ifndef RNDRESEEDCRNG
#define RNDRESEEDCRNG _IO('R', 0x07)
#endif

#define DEFAULT_IDENTITY "/sys/firmware/qemu_fw_cfg/by_name/opt/vmm/identity/raw"
#define MAX_IFACES 32

static const char *identity_path = DEFAULT_IDENTITY, *net_dir = "/sys/class/net";
static int dry_run, once, daemonize, poll_ms = 100;
static char applied_gen[33];  /* the generation applied last ("" before the first) */
static int ctl = -1, nl = -1; /* an AF_INET socket for ioctls; NETLINK_ROUTE */
static char ifname[MAX_IFACES][IFNAMSIZ];
static int nifs;

static void out(const char *prefix, const char *fmt, va_list ap) {
  char line[512];
  vsnprintf(line, sizeof line, fmt, ap);
  printf("vmm-agent: %s%s\n", prefix, line);
  fflush(stdout);
}
/* A change ("would ..." in a dry run), a note, a failure. */
static void say(const char *fmt, ...) { va_list ap; va_start(ap, fmt); out(dry_run ? "would " : "", fmt, ap); va_end(ap); }
static void note(const char *fmt, ...) { va_list ap; va_start(ap, fmt); out("", fmt, ap); va_end(ap); }
static int failures; /* fail()s so far: a generation whose steps failed is applied again */
static void fail(const char *fmt, ...) { va_list ap; va_start(ap, fmt); out("error: ", fmt, ap); va_end(ap); failures++; }

static double mono_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* Reads at most cap bytes of a file; the byte count, or -1 (errno set). */
static ssize_t read_file(const char *path, char *buf, size_t cap) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  size_t n = 0;
  while (n < cap) {
    ssize_t r = read(fd, buf + n, cap - n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) { int e = errno; close(fd); errno = e; return -1; }
    if (r == 0) break;
    n += (size_t)r;
  }
  close(fd);
  return (ssize_t)n;
}

/* Writes path through a temporary file and rename(): readers see the old or the new content. */
static int write_atomic(const char *path, const char *data, size_t len) {
  char tmp[PATH_MAX];
  snprintf(tmp, sizeof tmp, "%s.vmm-agent", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return -1;
  ssize_t w = write(fd, data, len);
  int e = w == (ssize_t)len ? 0 : (w < 0 ? errno : EIO);
  if (!e && fsync(fd) != 0) e = errno;
  close(fd);
  if (!e && rename(tmp, path) != 0) e = errno;
  if (e) { unlink(tmp); errno = e; return -1; }
  return 0;
}

/* Runs argv[0] with argv and a fixed environment; its exit status, or -1. */
static pid_t spawn(const char *const argv[]) {
  static char *const env[] = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", NULL};
  pid_t pid = fork();
  if (pid == 0) {
    execve(argv[0], (char *const *)argv, env);
    _exit(127);
  }
  return pid;
}

static int exit_status(int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st); }

static int run(const char *const argv[]) {
  pid_t pid = spawn(argv);
  if (pid < 0) return -1;
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR) return -1;
  return exit_status(st);
}

static int identity_changed(void);

/* As run(), but a new identity ends the program (SIGTERM) and returns -2 (a VM forked while the
 * program ran resumes here with an identity of its own: udhcpc asking for the parent's lease from
 * the parent's MAC, which the child's host drops, took ~9 s to give up). */
static int run_watching(const char *const argv[]) {
  pid_t pid = spawn(argv);
  if (pid < 0) return -1;
  int st;
  for (;;) {
    pid_t w = waitpid(pid, &st, WNOHANG);
    if (w == pid) return exit_status(st);
    if (w < 0 && errno != EINTR) return -1;
    if (identity_changed()) {
      kill(pid, SIGTERM);
      while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
      }
      return -2;
    }
    usleep(20000);
  }
}

static const char *first_existing(const char *const *paths) {
  for (; *paths; paths++)
    if (access(*paths, X_OK) == 0) return *paths;
  return NULL;
}

/* ---- Interfaces ------------------------------------------------------------------------------ */

/* Copies an interface name (at most IFNAMSIZ - 1 bytes) with its NUL. */
static void copy_name(char dst[IFNAMSIZ], const char *src) {
  size_t n = strnlen(src, IFNAMSIZ - 1);
  memcpy(dst, src, n);
  dst[n] = '\0';
}

static int by_version(const void *a, const void *b) { return strverscmp(a, b); }

/* The virtio-net interfaces (device/driver -> .../virtio_net), eth2 before eth10. */
static void list_interfaces(void) {
  nifs = 0;
  DIR *d = opendir(net_dir);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d)) && nifs < MAX_IFACES) {
    char path[PATH_MAX], target[PATH_MAX];
    if (e->d_name[0] == '.' || strlen(e->d_name) >= IFNAMSIZ) continue;
    snprintf(path, sizeof path, "%s/%s/device/driver", net_dir, e->d_name);
    ssize_t n = readlink(path, target, sizeof target - 1);
    if (n <= 0) continue;
    target[n] = '\0';
    const char *base = strrchr(target, '/');
    if (strcmp(base ? base + 1 : target, "virtio_net") == 0) copy_name(ifname[nifs++], e->d_name);
  }
  closedir(d);
  qsort(ifname, (size_t)nifs, sizeof ifname[0], by_version);
}

static void fmt_mac(char s[18], const unsigned char m[6]) {
  snprintf(s, 18, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
}
static void fmt_ip(char s[16], const unsigned char a[4]) { snprintf(s, 16, "%u.%u.%u.%u", a[0], a[1], a[2], a[3]); }

/* 1 when the interface's MAC (sysfs `address`) is not `mac`. */
static int mac_differs(const char *ifn, const unsigned char mac[6]) {
  char path[PATH_MAX], cur[64], want[18];
  snprintf(path, sizeof path, "%s/%s/address", net_dir, ifn);
  ssize_t n = read_file(path, cur, sizeof cur - 1);
  if (n < 0) return 1;
  cur[n] = '\0';
  fmt_mac(want, mac);
  return strncmp(cur, want, 17) != 0;
}

static int ifreq_ioctl(const char *ifn, unsigned long req, struct ifreq *r) {
  copy_name(r->ifr_name, ifn);
  return ioctl(ctl, req, r);
}

static int set_up(const char *ifn, int up) {
  struct ifreq r;
  memset(&r, 0, sizeof r);
  if (ifreq_ioctl(ifn, SIOCGIFFLAGS, &r) != 0) return -1;
  if (up) r.ifr_flags |= IFF_UP; else r.ifr_flags &= ~IFF_UP;
  return ifreq_ioctl(ifn, SIOCSIFFLAGS, &r);
}

/* The interface's primary IPv4 address (and prefix), 0 if it has one. */
static int get_addr(const char *ifn, unsigned char a[4], unsigned *prefix) {
  struct ifreq r;
  memset(&r, 0, sizeof r);
  if (ifreq_ioctl(ifn, SIOCGIFADDR, &r) != 0) return -1;
  memcpy(a, &((struct sockaddr_in *)&r.ifr_addr)->sin_addr, 4);
  if (prefix) {
    if (ifreq_ioctl(ifn, SIOCGIFNETMASK, &r) != 0) return -1;
    *prefix = (unsigned)__builtin_popcount(((struct sockaddr_in *)&r.ifr_netmask)->sin_addr.s_addr);
  }
  return 0;
}

/* ---- rtnetlink ---------------------------------------------------------------------------- */

struct nlreq {
  struct nlmsghdr h;
  union { struct ifaddrmsg a; struct rtmsg r; } u;
  char attrs[128];
};

static void nl_init(struct nlreq *q, unsigned short type, unsigned short flags) {
  memset(q, 0, sizeof *q);
  q->h.nlmsg_type = type;
  q->h.nlmsg_flags = (unsigned short)(NLM_F_REQUEST | NLM_F_ACK | flags);
  q->h.nlmsg_len = NLMSG_LENGTH(type == RTM_NEWROUTE ? sizeof(struct rtmsg) : sizeof(struct ifaddrmsg));
}

static void nl_attr(struct nlreq *q, unsigned short type, const void *data, unsigned short len) {
  struct rtattr *a = (struct rtattr *)((char *)q + NLMSG_ALIGN(q->h.nlmsg_len));
  a->rta_type = type;
  a->rta_len = (unsigned short)RTA_LENGTH(len);
  memcpy(RTA_DATA(a), data, len);
  q->h.nlmsg_len = NLMSG_ALIGN(q->h.nlmsg_len) + RTA_ALIGN(a->rta_len);
}

/* Sends the request and waits for its acknowledgement: 0 or -errno. */
static int nl_talk(struct nlreq *q) {
  static unsigned seq;
  static char buf[8192] __attribute__((aligned(NLMSG_ALIGNTO)));
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  q->h.nlmsg_seq = ++seq;
  if (sendto(nl, q, q->h.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) return -errno;
  for (;;) {
    ssize_t n = recv(nl, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n))
      if (h->nlmsg_seq == seq && h->nlmsg_type == NLMSG_ERROR)
        return ((struct nlmsgerr *)NLMSG_DATA(h))->error;
  }
}

/* Deletes every IPv4 address of the interface: an RTM_DELADDR without attributes removes the
 * first address of the interface, until none is left (EADDRNOTAVAIL). */
static void del_addrs(int index) {
  for (int i = 0; i < 256; i++) {
    struct nlreq q;
    nl_init(&q, RTM_DELADDR, 0);
    q.u.a.ifa_family = AF_INET;
    q.u.a.ifa_index = (unsigned)index;
    if (nl_talk(&q) != 0) return;
  }
}

static int add_addr(int index, const unsigned char a[4], unsigned prefix) {
  struct nlreq q;
  nl_init(&q, RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE);
  q.u.a.ifa_family = AF_INET;
  q.u.a.ifa_prefixlen = (unsigned char)prefix;
  q.u.a.ifa_index = (unsigned)index;
  nl_attr(&q, IFA_LOCAL, a, 4);
  nl_attr(&q, IFA_ADDRESS, a, 4);
  if (prefix < 31) {
    uint32_t host = prefix ? htonl((1u << (32 - prefix)) - 1) : 0xffffffffu, brd;
    memcpy(&brd, a, 4);
    brd |= host;
    nl_attr(&q, IFA_BROADCAST, &brd, 4);
  }
  return nl_talk(&q);
}

/* The default route of the main table via gw (replacing the one there is). */
static int set_default_route(const unsigned char gw[4]) {
  struct nlreq q;
  nl_init(&q, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE);
  q.u.r.rtm_family = AF_INET;
  q.u.r.rtm_table = RT_TABLE_MAIN;
  q.u.r.rtm_protocol = RTPROT_BOOT;
  q.u.r.rtm_scope = RT_SCOPE_UNIVERSE;
  q.u.r.rtm_type = RTN_UNICAST;
  nl_attr(&q, RTA_GATEWAY, gw, 4);
  return nl_talk(&q);
}

/* The gateway of a default route through the interface (/proc/net/route), 0 if there is one:
 * taking the link down drops it, and it comes back unless the identity names another. */
static int default_gateway(const char *ifn, unsigned char gw[4]) {
  FILE *f = fopen("/proc/net/route", "re");
  if (!f) return -1;
  char line[256], dev[IFNAMSIZ];
  unsigned dst, gate, flags, mask;
  int found = -1;
  while (found && fgets(line, sizeof line, f))
    if (sscanf(line, "%15s %x %x %x %*d %*d %*d %x", dev, &dst, &gate, &flags, &mask) == 5 &&
        strcmp(dev, ifn) == 0 && dst == 0 && mask == 0 && (flags & RTF_GATEWAY)) {
      memcpy(gw, &gate, 4);  /* printed as the in-memory (network order) u32 */
      found = 0;
    }
  fclose(f);
  return found;
}

/* Deletes the IPv4 neighbour entries (/proc/net/arp) that are not permanent; their count. */
static int flush_arp(void) {
  FILE *f = fopen("/proc/net/arp", "re");
  if (!f) return 0;
  char line[256], ip[16], hw[32], mask[32], dev[IFNAMSIZ];
  unsigned type, flags;
  int n = 0;
  while (fgets(line, sizeof line, f)) {
    struct arpreq r;
    memset(&r, 0, sizeof r);
    struct sockaddr_in *sin = (struct sockaddr_in *)&r.arp_pa;
    if (sscanf(line, "%15s %x %x %31s %31s %15s", ip, &type, &flags, hw, mask, dev) != 6 ||
        (flags & ATF_PERM) || inet_aton(ip, &sin->sin_addr) == 0)
      continue;
    sin->sin_family = AF_INET;
    copy_name(r.arp_dev, dev);
    if (ioctl(ctl, SIOCDARP, &r) == 0) n++;
  }
  fclose(f);
  return n;
}

/* Two gratuitous ARP requests (sender = target = our address) from the interface's new MAC. */
static int garp(int index, const unsigned char mac[6], const unsigned char ip[4]) {
  int s = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ARP));
  if (s < 0) return -1;
  unsigned char f[42] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
  memcpy(f + 6, mac, 6);
  static const unsigned char hdr[] = {0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1};
  memcpy(f + 12, hdr, sizeof hdr);
  memcpy(f + 22, mac, 6);
  memcpy(f + 28, ip, 4);
  memcpy(f + 38, ip, 4);  /* target MAC (32..37) zero */
  struct sockaddr_ll to = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ARP), .sll_ifindex = index, .sll_halen = 6};
  memset(to.sll_addr, 0xff, 6);
  int r = 0;
  for (int i = 0; i < 2 && r == 0; i++)
    if (sendto(s, f, sizeof f, 0, (struct sockaddr *)&to, sizeof to) != (ssize_t)sizeof f) r = -1;
  close(s);
  return r;
}

/* ---- Apply ------------------------------------------------------------------------------------ */

static void apply_entropy(const struct vmm_identity *id) {
  if (!id->has_seed) return;
  if (dry_run) { say("reseed (256 bits)"); return; }
  struct { int entropy_count, buf_size; unsigned char buf[32]; } e = {256, 32, {0}};
  memcpy(e.buf, id->seed, 32);
  int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
  int old = 0;
  if (fd < 0 || ioctl(fd, RNDADDENTROPY, &e) != 0) fail("entropy: %s", strerror(errno));
  else if (ioctl(fd, RNDRESEEDCRNG) != 0 && !(old = errno == ENOTTY || errno == EINVAL)) fail("RNDRESEEDCRNG: %s", strerror(errno));
  else note(old ? "reseeded (256 bits; no RNDRESEEDCRNG on this kernel: at the next reseed)" : "reseeded (256 bits)");
  memset(&e, 0, sizeof e);
  if (fd >= 0) close(fd);
}

/* udhcpc keeping the lease of the first interface: its pid file. */
#define DHCP_PIDFILE "/run/vmm-agent-udhcpc.pid"

/* Ends the udhcpc that keeps a lease, if one does (its pid file names a live udhcpc), and waits a
 * second at most for it to go. */
static void stop_dhcp_client(void) {
  char buf[32], comm[32], path[64];
  ssize_t n = read_file(DHCP_PIDFILE, buf, sizeof buf - 1);
  if (n <= 0) return;
  buf[n] = '\0';
  char *end;
  long pid = strtol(buf, &end, 10);
  if (pid <= 1 || (*end != '\0' && *end != '\n')) return;
  snprintf(path, sizeof path, "/proc/%ld/comm", pid);
  n = read_file(path, comm, sizeof comm - 1);
  if (n <= 0) return;
  comm[n] = '\0';
  if (strcmp(comm, "udhcpc\n") != 0) return;  /* the pid is another process's by now */
  if (kill((pid_t)pid, SIGTERM) != 0) return;
  for (int i = 0; i < 100 && kill((pid_t)pid, 0) == 0; i++) usleep(10000);
  unlink(DHCP_PIDFILE);
  note("udhcpc %ld (the previous lease's) stopped", pid);
}

static int superseded; /* a step saw a new identity arrive: the one being applied is dropped */
static void apply_network(const struct vmm_identity *id) {
  int changed[MAX_IFACES] = {0}, any = 0;
  list_interfaces();
  for (int i = 0; i < VMM_IDENTITY_MAX_MACS; i++)
    if (id->has_mac[i] && i >= nifs) fail("mac%d: there is no virtio-net interface #%d", i, i);
  if (id->ip_mode != VMM_IP_NONE && nifs == 0) fail("ip: there is no virtio-net interface");
  for (int i = 0; i < nifs && i < MAX_IFACES; i++) {
    const char *ifn = ifname[i];
    int index = (int)if_nametoindex(ifn), is_static = i == 0 && id->ip_mode == VMM_IP_STATIC;
    char s[18], a[16];
    unsigned char gw[4], cur[4];
    unsigned cur_prefix;
    changed[i] = i < VMM_IDENTITY_MAX_MACS && id->has_mac[i] && mac_differs(ifn, id->mac[i]);
    any |= changed[i];
    int readdress = is_static && (dry_run || changed[i] || get_addr(ifn, cur, &cur_prefix) != 0 ||
                                  memcmp(cur, id->ip, 4) != 0 || cur_prefix != id->prefix);
    int had_gw = !dry_run && (changed[i] || readdress) && default_gateway(ifn, gw) == 0;
    fmt_mac(s, id->mac[i]);
    fmt_ip(a, id->ip);
    if (dry_run) {
      if (changed[i]) say("%s mac %s", ifn, s);
      if (readdress) say("%s address %s/%u", ifn, a, id->prefix);
      continue;
    }
    if (changed[i] && set_up(ifn, 0) != 0) fail("%s: link down: %s", ifn, strerror(errno));
    if (readdress || (changed[i] && i == 0 && id->ip_mode == VMM_IP_DHCP)) del_addrs(index);
    if (changed[i]) {
      struct ifreq r;
      memset(&r, 0, sizeof r);
      r.ifr_hwaddr.sa_family = ARPHRD_ETHER;
      memcpy(r.ifr_hwaddr.sa_data, id->mac[i], 6);
      if (ifreq_ioctl(ifn, SIOCSIFHWADDR, &r) != 0) fail("%s: set mac: %s", ifn, strerror(errno));
      else say("%s mac %s", ifn, s);
    }
    if (readdress) {
      int e = add_addr(index, id->ip, id->prefix);
      if (e) fail("%s: address %s/%u: %s", ifn, a, id->prefix, strerror(-e));
      else say("%s address %s/%u", ifn, a, id->prefix);
    }
    if ((changed[i] || readdress) && set_up(ifn, 1) != 0) fail("%s: link up: %s", ifn, strerror(errno));
    if (had_gw && !id->has_gateway && id->ip_mode != VMM_IP_DHCP) {
      fmt_ip(a, gw);
      int e = set_default_route(gw);
      if (e) fail("default route via %s: %s", a, strerror(-e));
      else say("default route via %s (restored)", a);
    }
  }
  /* With DHCP the lease's router is the default route (the udhcpc script sets it): a gateway in
   * the identity (a clone keeps its template's) is not reachable before the lease anyway. */
  if (id->has_gateway && id->ip_mode != VMM_IP_DHCP) {
    char a[16];
    fmt_ip(a, id->gateway);
    int e = dry_run ? 0 : set_default_route(id->gateway);
    if (e) fail("default route via %s: %s", a, strerror(-e));
    else say("default route via %s", a);
  }
  if (any) {
    if (dry_run) say("flush the neighbour cache");
    else note("neighbour cache flushed (%d entries of other interfaces)", flush_arp());
  }
  for (int i = 0; i < nifs && i < MAX_IFACES; i++) {
    unsigned char ip[4];
    char a[16];
    if (!changed[i] || (i == 0 && id->ip_mode == VMM_IP_DHCP)) continue;
    if (i == 0 && id->ip_mode == VMM_IP_STATIC) memcpy(ip, id->ip, 4);
    else if (dry_run || get_addr(ifname[i], ip, NULL) != 0) continue;
    fmt_ip(a, ip);
    if (dry_run) say("send gratuitous ARPs for %s on %s", a, ifname[i]);
    else if (garp((int)if_nametoindex(ifname[i]), id->mac[i], ip) != 0) fail("%s: gratuitous ARP: %s", ifname[i], strerror(errno));
    else note("%s gratuitous ARP for %s (2 sent)", ifname[i], a);
  }
  if (nifs > 0 && id->ip_mode == VMM_IP_DHCP) {
    static const char *const udhcpc[] = {"/sbin/udhcpc", "/bin/udhcpc", "/usr/sbin/udhcpc", "/usr/bin/udhcpc", NULL};
    const char *path = first_existing(udhcpc);
    say("%s dhcp", ifname[0]);
    if (dry_run) return;
    if (!path) { fail("%s: dhcp: no udhcpc", ifname[0]); return; }
    /* The lease is kept: udhcpc stays (in the background once it has one) and renews it; with -q it
     * left once it had one, and the address stayed on after the lease ran out, for the server to
     * give to another machine. The one a template (or a fork's parent) left running goes first: it
     * would renew the source's lease from the clone. */
    stop_dhcp_client();
    set_up(ifname[0], 1);
    const char *argv[] = {path, "-i", ifname[0], "-n", "-p", DHCP_PIDFILE, NULL};
    int st = run_watching(argv);
    if (st == -2) {
      note("%s: a new identity arrived while udhcpc ran: stopped it", ifname[0]);
      superseded = 1;
    } else if (st != 0) {
      fail("%s: udhcpc exited with status %d", ifname[0], st);
    }
  }
}

static void apply_hostname(const struct vmm_identity *id) {
  char cur[HOST_NAME_MAX + 1] = "", line[80];
  if (!id->has_hostname) return;
  if (gethostname(cur, sizeof cur) == 0 && strcmp(cur, id->hostname) == 0) return;
  if (dry_run) { say("hostname %s", id->hostname); return; }
  if (sethostname(id->hostname, strlen(id->hostname)) != 0) { fail("sethostname: %s", strerror(errno)); return; }
  say("hostname %s", id->hostname);
  int n = snprintf(line, sizeof line, "%s\n", id->hostname);
  if (access("/etc/hostname", F_OK) == 0 || access("/etc", W_OK) == 0)
    if (write_atomic("/etc/hostname", line, (size_t)n) != 0 && errno != EROFS) fail("/etc/hostname: %s", strerror(errno));
}

static void apply_machine_id(const struct vmm_identity *id) {
  char cur[64], line[34];
  if (!id->has_id) return;
  ssize_t n = read_file("/etc/machine-id", cur, sizeof cur);
  if (n == 33 && memcmp(cur, id->id, 32) == 0 && cur[32] == '\n') return;
  if (dry_run) { say("machine-id %s", id->id); return; }
  snprintf(line, sizeof line, "%s\n", id->id);
  if (write_atomic("/etc/machine-id", line, 33) == 0) say("machine-id %s", id->id);
  else if (errno == EROFS) note("machine-id %s not written: /etc is read-only", id->id);
  else fail("/etc/machine-id: %s", strerror(errno));
}

/* On a clone: the template's SSH host keys go; ssh-keygen -A makes new ones where it exists. */
static void apply_ssh_keys(void) {
  DIR *d = opendir("/etc/ssh");
  if (!d) return;
  struct dirent *e;
  int removed = 0;
  while ((e = readdir(d))) {
    const char *k = strstr(e->d_name, "_key");
    if (strncmp(e->d_name, "ssh_host_", 9) != 0 || !k || (strcmp(k, "_key") != 0 && strcmp(k, "_key.pub") != 0)) continue;
    char path[PATH_MAX];
    snprintf(path, sizeof path, "/etc/ssh/%s", e->d_name);
    if (dry_run || unlinkat(dirfd(d), e->d_name, 0) == 0) removed++;
    else fail("%s: %s", path, strerror(errno));
  }
  closedir(d);
  if (!removed) return;
  static const char *const keygen[] = {"/usr/bin/ssh-keygen", "/bin/ssh-keygen", "/usr/sbin/ssh-keygen", NULL};
  const char *path = first_existing(keygen);
  if (!path) { say("remove the ssh host keys (no ssh-keygen)"); return; }
  if (dry_run) { say("regenerate the ssh host keys"); return; }
  const char *argv[] = {path, "-A", NULL};
  int st = run(argv);
  if (st == 0) note("ssh host keys regenerated");
  else fail("ssh-keygen -A exited with status %d", st);
}

static int retry_pending; /* the last identity read is to be applied again (unchanged since) */
static void apply(const struct vmm_identity *id, double t0, int boot) {
  /* A generation some step of which failed (a MAC the driver refused for a moment: EBUSY) is
   * applied again at the next look, up to kTries times: recorded as applied at once, it left the
   * clone on its template's MAC for good, its every frame dropped by the host. */
  enum { kTries = 5 };
  retry_pending = 0;
  static char tried_gen[33];
  static int tries;
  const int failed_before = failures;
  if (strcmp(tried_gen, id->generation) != 0) {
    memcpy(tried_gen, id->generation, 33);
    tries = 0;
  }
  tries++;
  apply_entropy(id);
  /* Who the machine is before it is reachable at its new address: a request that arrives the
   * moment the address is up must not be answered under the template's hostname (seen in the
   * nested lane with the network first) or keys. */
  apply_hostname(id);
  apply_machine_id(id);
  /* Once per generation: a retry of its other steps made new keys every time (clients saw the
   * host key change up to 5 times). */
  static char keys_gen[33];
  if (!boot && strcmp(keys_gen, id->generation) != 0) {
    const int before = failures;
    apply_ssh_keys();
    if (failures == before) memcpy(keys_gen, id->generation, 33);
  }
  superseded = 0;
  apply_network(id);
  if (superseded) {
    /* Not recorded: the next look reads the new identity and applies that. */
    note("generation %s: dropped for the identity that replaced it", id->generation);
    return;
  }
  if (failures != failed_before && !boot && tries < kTries && !dry_run) {
    note("generation %s: %d step(s) failed: applying it again (try %d of %d)", id->generation, failures - failed_before, tries + 1,
         (int)kTries);
    usleep(200000);  /* (and the next look comes one poll later) */
    retry_pending = 1;
    return;
  }
  memcpy(applied_gen, id->generation, 33);
  if (dry_run) {
    note("would apply generation %s", id->generation);
    return;
  }
  char took[32] = "?", line[34];
  if (id->has_time_ms) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    /* In signed arithmetic only where it fits: time_ms is the host's (up to 19 digits). */
    const unsigned long long ms = (unsigned long long)now.tv_sec * 1000 + (unsigned long long)now.tv_nsec / 1000000;
    if (ms >= id->time_ms) snprintf(took, sizeof took, "%llu", ms - id->time_ms);
    else snprintf(took, sizeof took, "-%llu", id->time_ms - ms);
  }
  snprintf(line, sizeof line, "%s\n", id->generation);
  if (write_atomic("/run/vmm-agent.generation", line, 33) != 0) fail("/run/vmm-agent.generation: %s", strerror(errno));
  note("applied generation %s in %.1f ms (%s ms after the host wrote it)", id->generation, mono_ms() - t0, took);
}

/* ---- Identity and events ---------------------------------------------------------------------- */

static char raw[VMM_IDENTITY_SIZE + 1], last_raw[VMM_IDENTITY_SIZE + 1];
static ssize_t last_len = -1;

static int identity_changed(void) {
  static char now[VMM_IDENTITY_SIZE + 1];
  ssize_t n = read_file(identity_path, now, sizeof now);
  return n >= 0 && (n != last_len || memcmp(now, last_raw, (size_t)n) != 0);
}

/* Reads and parses the identity: 0 parsed, 1 rejected, 2 unreadable, 3 unchanged since the last
 * call (same bytes: nothing to do, nothing to log again). */
static int load(struct vmm_identity *id) {
  char err[160];
  ssize_t n = read_file(identity_path, raw, sizeof raw);
  if (n < 0) return 2;
  if (n == last_len && memcmp(raw, last_raw, (size_t)n) == 0) return 3;
  memcpy(last_raw, raw, (size_t)n);
  last_len = n;
  if (vmm_identity_parse(raw, (size_t)n, id, err, sizeof err) != 0) {
    fail("identity rejected, nothing applied: %s", err);
    return 1;
  }
  return 0;
}

/* 1 when a vmgenid device is bound. Its driver sends a uevent on a clone only from Linux 6.8 on
 * (Debian 12's 6.1 reseeds but sends nothing: seen in the nested lane), so the agent polls anyway;
 * the uevent, where it comes, only makes the check immediate. */
static int vmgenid_bound(void) {
  DIR *d = opendir("/sys/bus/acpi/drivers/vmgenid");
  struct dirent *e;
  int bound = 0;
  while (d && !bound && (e = readdir(d))) bound = strchr(e->d_name, ':') != NULL;
  if (d) closedir(d);
  return bound;
}

/* Drains one uevent: 1 if the kernel sent it and it says NEW_VMGENID=1. */
static int uevent_is_vmgenid(int fd) {
  static char buf[8192];
  struct sockaddr_nl from;
  socklen_t fl = sizeof from;
  ssize_t n = recvfrom(fd, buf, sizeof buf - 1, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
  if (n < 0 && errno == ENOBUFS) return 1;  /* uevents were lost: look anyway */
  if (n <= 0 || from.nl_pid != 0) return 0;
  buf[n] = '\0';
  for (char *p = buf; p < buf + n; p += strlen(p) + 1)
    if (strcmp(p, "NEW_VMGENID=1") == 0) return 1;
  return 0;
}

static int usage(const char *why) {
  fprintf(stderr, "vmm-agent: %s\nusage: vmm-agent [--identity PATH] [--dry-run] [--once] [--daemon] [--poll-ms N] [--net-dir DIR]\n", why);
  return 2;
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--dry-run")) dry_run = 1;
    else if (!strcmp(a, "--once")) once = 1;
    else if (!strcmp(a, "--daemon")) daemonize = 1;
    else if ((!strcmp(a, "--identity") || !strcmp(a, "--poll-ms") || !strcmp(a, "--net-dir")) && i + 1 < argc) {
      const char *v = argv[++i];
      if (!strcmp(a, "--identity")) identity_path = v;
      else if (!strcmp(a, "--net-dir")) net_dir = v;
      else {
        char *end;
        long ms = strtol(v, &end, 10);
        if (*v == '\0' || *end || ms < 1 || ms > 60000) return usage("--poll-ms: expected 1..60000");
        poll_ms = (int)ms;
      }
    } else {
      char why[128];
      int needs = !strcmp(a, "--identity") || !strcmp(a, "--poll-ms") || !strcmp(a, "--net-dir");
      snprintf(why, sizeof why, "%s: %s", a, needs ? "missing value" : "unknown argument");
      return usage(why);
    }
  }
  if (!dry_run) {
    ctl = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    nl = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  }

  struct vmm_identity id;
  double t0 = mono_ms();
  int r = load(&id);
  if (r == 2) {
    int e = errno, channel = strcmp(identity_path, DEFAULT_IDENTITY) == 0;
    if (channel && access("/sys/firmware/qemu_fw_cfg", F_OK) != 0) note("no identity channel (no /sys/firmware/qemu_fw_cfg); exiting");
    else note("no identity (%s: %s); exiting", identity_path, strerror(e));
    return channel && e == ENOENT ? 0 : 1;
  }
  if (r == 0) apply(&id, t0, 1);
  if (once) return r == 0 ? 0 : 1;
  if (daemonize) {
    pid_t pid = fork();
    if (pid < 0) fail("fork: %s", strerror(errno));
    if (pid > 0) return 0;
    setsid();
  }

  int ue = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT);
  struct sockaddr_nl sa = {.nl_family = AF_NETLINK, .nl_groups = 1};
  if (ue >= 0 && bind(ue, (struct sockaddr *)&sa, sizeof sa) != 0) { close(ue); ue = -1; }
  note("watching the generation (polling every %d ms%s)", poll_ms,
       ue < 0 ? "; no uevent socket" : vmgenid_bound() ? ", and vmgenid uevents" : "");
  int unreadable = 0;
  double checked = mono_ms();
  for (;;) {
    struct pollfd p = {.fd = ue, .events = POLLIN};
    int n = poll(&p, ue >= 0 ? 1 : 0, poll_ms);
    if (n < 0) { if (errno != EINTR) { fail("poll: %s", strerror(errno)); sleep(1); } continue; }
    /* Other uevents wake it too, and each restarts the poll's timeout: under a stream of them (a
     * kernel before 6.8 sends no NEW_VMGENID, and polling is all it has) the file is still read
     * every poll_ms. */
    if (n > 0 && !uevent_is_vmgenid(ue) && mono_ms() - checked < poll_ms) continue;
    t0 = checked = mono_ms();
    r = load(&id);
    if (r == 2 && !unreadable++) fail("%s: %s", identity_path, strerror(errno));
    if (r != 2) unreadable = 0;
    if (r == 1) retry_pending = 0;  /* a new file, rejected: what `id` holds is not to be applied */
    if ((r == 0 || (r == 3 && retry_pending)) && strcmp(id.generation, applied_gen) != 0) apply(&id, t0, 0);
  }
}
