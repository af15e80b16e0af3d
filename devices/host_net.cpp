#include "devices/host_net.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/if.h>
#include <linux/if_arp.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <set>
#include <thread>

#include "vmm/base/dir_entries.hpp"
#include "vmm/base/fd.hpp"
#include "vmm/base/process.hpp"
#include "vmm/base/thread.hpp"

namespace vmm::devices {

namespace {

// The outside addresses: one /30 per namespace, host end .1, namespace end .2.
constexpr uint32_t kOutsideNet = 0x0ac80000;  // 10.200.0.0/16
constexpr uint32_t kOutsideMask = 0xffff0000;

std::string ipv4(uint32_t a) { return fmt::format("{}.{}.{}.{}", a >> 24, (a >> 16) & 255, (a >> 8) & 255, a & 255); }

Result<> set_flags_up(int sock, const std::string& name) {
  ifreq ifr{};
  std::memcpy(ifr.ifr_name, name.data(), std::min(name.size(), size_t{IFNAMSIZ - 1}));
  if (::ioctl(sock, SIOCGIFFLAGS, &ifr) < 0) return fail("{}: SIOCGIFFLAGS: {}", name, errno_text(errno));
  if (ifr.ifr_flags & IFF_UP) return {};
  ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
  if (::ioctl(sock, SIOCSIFFLAGS, &ifr) < 0) return fail("{}: cannot bring it up: {}", name, errno_text(errno));
  return {};
}

/// The /30 blocks of 10.200.0.0/16 that an address of this namespace's interfaces uses. (Not
/// knowing is an error: a block taken for a free one puts two VMs' namespaces on one address.)
Result<std::set<uint32_t>> used_outside_blocks() {
  std::set<uint32_t> used;
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return fail("the host's interface addresses (getifaddrs): {}", errno_text(errno));
  for (ifaddrs* a = list; a; a = a->ifa_next) {
    if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET) continue;
    const uint32_t addr = ntohl(reinterpret_cast<const sockaddr_in*>(a->ifa_addr)->sin_addr.s_addr);
    if ((addr & kOutsideMask) == kOutsideNet) used.insert(addr & ~3u);
  }
  ::freeifaddrs(list);
  return used;
}

int if_index(int sock, const std::string& name) {
  ifreq ifr{};
  std::memcpy(ifr.ifr_name, name.data(), std::min(name.size(), size_t{IFNAMSIZ - 1}));
  return ::ioctl(sock, SIOCGIFINDEX, &ifr) < 0 ? 0 : ifr.ifr_ifindex;
}

std::string host_if_name(const std::string& netns) {
  if (netns.size() <= 11) return "vmh-" + netns;
  uint32_t h = 2166136261u;  // FNV-1a: a stable short name for a long namespace name
  for (unsigned char c : netns) h = (h ^ c) * 16777619u;
  return fmt::format("vmx-{:08x}", h);  // another prefix: never a short name's ("vmh-1234abcd")
}

}  // namespace

Result<> attach_tap(const std::string& tap, const std::string& bridge, const MacAddress& guest_mac) {
  Fd sock(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!sock) return fail("socket: {}", errno_text(errno));
  if (!bridge.empty()) {
    // The TAP's own address high (fe:, above any NIC's and any random locally administered one),
    // before it joins: so that it never becomes the bridge's. A bridge takes its lowest port's
    // address unless one was set for it, so a clone joining (or leaving) with a random one may change
    // the bridge's under its neighbours' ARP caches: the host's LAN on an uplink, the clones on the
    // bridge. Seen in guest.clone_net: the replies of an arping in flight were addressed to the
    // bridge's former address, and dropped.
    // (A guest's own MAC never starts fe: on a bridge: parse_net_spec refuses it.)
    if (guest_mac[0] == 0xfe) return fail("TAP {}: the guest's MAC starts fe:, the address its bridged TAP takes", tap);
    ifreq hw{};
    std::memcpy(hw.ifr_name, tap.data(), std::min(tap.size(), size_t{IFNAMSIZ - 1}));
    hw.ifr_hwaddr.sa_family = ARPHRD_ETHER;
    hw.ifr_hwaddr.sa_data[0] = static_cast<char>(0xfe);
    for (size_t i = 1; i < 6; ++i) hw.ifr_hwaddr.sa_data[i] = static_cast<char>(guest_mac[i]);
    if (::ioctl(sock.get(), SIOCSIFHWADDR, &hw) < 0) return fail("TAP {}: cannot set its address: {}", tap, errno_text(errno));
    // A bridge's port carries the bridge's traffic, not an address of its own: without this, on a
    // host with IPv6 on, the TAP takes a link-local address once it has carrier and sends its own
    // router solicitations, MLD reports and DAD probes straight into the guest (measured: 12
    // frames in a clone's first 5 s on a bridge of its own, 6 without the TAP's, the rest the
    // bridge's). No IPv6 on the host: nothing to do. A /proc/sys mounted read-only (a container's)
    // leaves it on, with a warning: the TAP still works.
    const std::string v6 = fmt::format("/proc/sys/net/ipv6/conf/{}/disable_ipv6", tap);
    Fd off(::open(v6.c_str(), O_WRONLY | O_CLOEXEC));
    if ((!off && errno != ENOENT) || (off && ::write(off.get(), "1", 1) != 1)) {
      fmt::print(stderr, "vmm: warning: TAP {}: cannot turn IPv6 off on it ({}): its own IPv6 traffic reaches the guest\n", tap,
                 errno_text(errno));
    }
    ifreq ifr{};
    std::memcpy(ifr.ifr_name, bridge.data(), std::min(bridge.size(), size_t{IFNAMSIZ - 1}));
    ifr.ifr_ifindex = if_index(sock.get(), tap);
    if (ifr.ifr_ifindex == 0) return fail("TAP {}: {}", tap, errno_text(errno));
    if (if_index(sock.get(), bridge) == 0) {
      return fail("bridge {} does not exist (make it: ip link add {} type bridge && ip link set {} up)", bridge, bridge, bridge);
    }
    // EBUSY: the TAP has a master already: this bridge (a VM reopening its TAP), or another one
    // (a bond, another bridge: the VM would be on another network than asked, silently).
    if (::ioctl(sock.get(), SIOCBRADDIF, &ifr) < 0) {
      if (errno != EBUSY) return fail("TAP {}: cannot join bridge {}: {}", tap, bridge, errno_text(errno));
      std::error_code ec;
      const auto master = std::filesystem::read_symlink(fmt::format("/sys/class/net/{}/master", tap), ec);
      if (ec || master.filename() != bridge) {
        return fail("TAP {}: a port of {} already, not of bridge {}", tap, ec ? std::string("another device") : master.filename().string(), bridge);
      }
    }
  }
  return set_flags_up(sock.get(), tap);
}

Result<Fd> host_lock(const std::string& name) {
  if (::mkdir(kHostLockDir, 0700) != 0 && errno != EEXIST) return fail("{}: cannot create: {}", kHostLockDir, errno_text(errno));
  Fd dir(::open(kHostLockDir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  struct stat st {};
  if (!dir || ::fstat(dir.get(), &st) != 0) return fail("{}: {}", kHostLockDir, errno_text(errno));
  if (st.st_uid != ::geteuid() || (st.st_mode & 022) != 0) {
    return fail("{}: not this user's alone (owner {}, mode {:o}): its locks could be held by anyone", kHostLockDir, st.st_uid,
                st.st_mode & 07777);
  }
  Fd f(::openat(dir.get(), name.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0600));
  if (!f) return fail("{}/{}: {}", kHostLockDir, name, errno_text(errno));
  return f;
}

static void remove_netns(const std::string& netns, const std::string& host_if) {
  // The veth pair first: a namespace lives on while a TAP fd of it is open, and its veth with it.
  if (!host_if.empty()) (void)run_command({"ip", "link", "del", host_if});
  if (!netns.empty()) (void)run_command({"ip", "netns", "del", netns});
}

namespace {
/// The namespace NAME's identity: this boot's id and the namespace's cookie (SO_NETNS_COOKIE,
/// never reused within a boot; its nsfs inode is: a namespace made right after one was removed took
/// its number), "" when there is no such namespace. From a thread that enters it for the asking.
std::string netns_identity(const std::string& netns) {
#ifndef SO_NETNS_COOKIE
  constexpr int SO_NETNS_COOKIE = 71;
#endif
  static const std::string boot_id = [] {
    std::string id;
    std::ifstream("/proc/sys/kernel/random/boot_id") >> id;
    return id;
  }();
  uint64_t cookie = 0;
  auto t = start_thread("a thread to identify a network namespace", [&] {
    Fd ns(::open(("/run/netns/" + netns).c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (!ns || ::setns(ns.get(), CLONE_NEWNET) != 0) return;
    Fd sock(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    socklen_t len = sizeof cookie;
    if (!sock || ::getsockopt(sock.get(), SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len) != 0) cookie = 0;
  });
  if (!t) return {};
  t->join();
  if (boot_id.empty()) return {};
  if (cookie != 0) return fmt::format("{}/{}", boot_id, cookie);
  // A kernel before 5.14 (no SO_NETNS_COOKIE): its nsfs inode, which a namespace made right after
  // this one was removed may have again (the best there is there).
  struct stat st {};
  if (::stat(("/run/netns/" + netns).c_str(), &st) != 0) return {};
  return fmt::format("{}/ino:{}:{}", boot_id, st.st_dev, st.st_ino);
}

/// Whether `fd` is still the file at `path` (not unlinked or replaced since it was opened).
bool still_at_path(int fd, const std::filesystem::path& path) {
  struct stat a {}, b {};
  return ::fstat(fd, &a) == 0 && ::stat(path.c_str(), &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}
}  // namespace

unsigned release_stale_netns(const std::filesystem::path& records) {
  unsigned removed = 0;
  std::error_code ec;
  for (const auto& e : dir_entries(records)) {
    if (e.path().filename().string().starts_with(".")) continue;
    Fd fd(::open(e.path().c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
    if (!fd || ::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) continue;  // its VM runs
    if (!still_at_path(fd.get(), e.path())) continue;  // removed or remade meanwhile: not this one's to judge
    char buf[160] = {};
    const ssize_t n = ::read(fd.get(), buf, sizeof buf - 1);
    const std::string text(buf, n > 0 ? static_cast<size_t>(n) : 0);
    // "NETNS HOSTIF BOOT/COOKIE\n", the names as this file wrote them (checked before they reach
    // `ip`), and the namespace's identity.
    const std::string netns = e.path().filename().string();
    const std::string line = text.substr(0, text.find('\n'));
    const size_t sp1 = line.find(' '), sp2 = sp1 == std::string::npos ? std::string::npos : line.find(' ', sp1 + 1);
    const std::string id = sp2 == std::string::npos ? "" : line.substr(sp2 + 1);
    // (A record of an earlier vmm has no identity, "NETNS HOSTIF": its namespace is removed as it
    // would have removed it.)
    const size_t end1 = sp2 == std::string::npos ? line.size() : sp2;
    const std::string named_if = sp1 == std::string::npos ? "" : line.substr(sp1 + 1, end1 - sp1 - 1);
    const bool old_record = sp1 != std::string::npos && sp2 == std::string::npos;
    const bool sane = line.starts_with(netns + " ") && (named_if.starts_with("vmh-") || named_if.starts_with("vmx-")) && named_if.size() < IFNAMSIZ &&
                      named_if.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") == std::string::npos;
    // Only the namespace the killed VM made: not one of that name made since (by a VM of another
    // state directory, or by hand after the host rebooted or the admin removed that one), whose
    // removal would cut a running VM off its network.
    if (sane && (old_record || (!id.empty() && id != "-" && netns_identity(netns) == id))) {
      remove_netns(netns, named_if);
      ++removed;
    }
    std::filesystem::remove(e.path(), ec);
  }
  return removed;
}

Result<std::unique_ptr<Netns>> Netns::create(const NetnsConfig& c) {
  std::unique_ptr<Netns> ns(new Netns);
  std::error_code ec;
  std::filesystem::create_directories(c.records, ec);
  if (ec) return fail("{}: cannot create: {}", c.records.string(), ec.message());
  if (const unsigned n = release_stale_netns(c.records)) {
    fmt::print(stderr, "vmm: removed {} network namespace(s) left by VMs that were killed\n", n);
  }
  const std::string prefix = c.guest_ip.substr(c.guest_ip.find('/'));  // "/P"
  const std::string guest = c.guest_ip.substr(0, c.guest_ip.find('/'));
  if (auto r = run_command({"ip", "netns", "add", c.netns}); !r) {
    return fail("netns {}: {} (another VM's, or one a killed VM left: ip netns del {})", c.netns, r.error().message(), c.netns);
  }
  ns->name_ = c.netns;  // from here on, the destructor removes it
  const std::string host_if = host_if_name(c.netns);  // ns->host_if_ once it is ours (made below)
  // Its record, locked for the VM's life (a killed VM's is found unlocked). Locked before it is
  // written, and only once it is still the file at its path: another VM's sweep may take a record
  // being made for a dead one's and remove it (then it is made again).
  const std::filesystem::path record_path = c.records / c.netns;
  for (int tries = 0;; ++tries) {
    // (Waited for: a sweep may hold it for a moment; no running VM can, `ip netns add` made the name ours.)
    Fd f(::open(record_path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600));
    int locked = -1;
    while (f && (locked = ::flock(f.get(), LOCK_EX)) != 0 && errno == EINTR) {
    }
    if (!f || locked != 0) return fail("{}: cannot lock: {}", record_path.string(), errno_text(errno));
    if (still_at_path(f.get(), record_path)) {
      ns->record_lock_ = std::move(f);
      break;
    }
    if (tries == 8) return fail("{}: removed as often as it was made", record_path.string());
  }
  ns->record_ = record_path;  // ours: the destructor removes it
  if (auto r = ns->write_record(netns_identity(c.netns)); !r) return std::unexpected(r.error());

  // The TAP, opened from a thread that entered the namespace: a TAP belongs to the namespace of
  // the task that creates it, and stays there while this process uses its fd from the host's.
  Result<Tap> tap = fail("netns {}: not entered", c.netns);
  auto enter = start_thread("a thread to enter the network namespace", [&] {
    Fd target(::open(("/run/netns/" + c.netns).c_str(), O_RDONLY | O_CLOEXEC));
    if (!target) {
      tap = fail("/run/netns/{}: {}", c.netns, errno_text(errno));
      return;
    }
    if (::setns(target.get(), CLONE_NEWNET) != 0) {
      tap = fail("setns {}: {}", c.netns, errno_text(errno));
      return;
    }
    tap = Tap::open(c.tap);
    // Forwarding between the veth and the TAP (this thread's /proc/sys/net is the namespace's).
    Fd fwd(::open("/proc/sys/net/ipv4/ip_forward", O_WRONLY | O_CLOEXEC));
    if (!fwd || ::write(fwd.get(), "1", 1) != 1) tap = fail("netns {}: cannot enable IPv4 forwarding: {}", c.netns, errno_text(errno));
  });
  if (!enter) return std::unexpected(enter.error());
  enter->join();
  if (!tap) return std::unexpected(tap.error());
  ns->tap_.emplace(std::move(*tap));

  {
    // The outside address: the first free /30, chosen and taken under a lock. The host's: the
    // blocks are the host's, and VMs of two state directories (--state-dir) could take one block
    // at once under each one's own lock (the state directory's where the host's lock directory is
    // not ours to write in).
    // In a directory of root's own: /run/lock is everyone's, and a user who made the lock file
    // first held every namespace VM's start for as long as they liked.
    auto lock = host_lock("outside.lock");
    if (!lock) return std::unexpected(lock.error());
    if (::flock(lock->get(), LOCK_EX) != 0) return fail("{}/outside.lock: cannot lock: {}", kHostLockDir, errno_text(errno));
    const auto used = used_outside_blocks();
    if (!used) return std::unexpected(used.error().context(fmt::format("netns {}", c.netns)));
    uint32_t block = kOutsideNet;
    while (used->contains(block)) block += 4;
    if ((block & kOutsideMask) != kOutsideNet) return fail("netns {}: every /30 of 10.200.0.0/16 is taken", c.netns);
    ns->outside_ = ipv4(block + 2);
    const std::string host = ipv4(block + 1);
    if (auto r = run_command({"ip", "-batch", "-"}, fmt::format("link add {0} type veth peer name veth0 netns {1}\n"
                                                                "addr add {2}/30 dev {0}\n"
                                                                "link set {0} up\n",
                                                                host_if, c.netns, host));
        !r) {
      // Not made (a name another VM's veth has): the destructor leaves that one alone.
      return fail("netns {}: {}", c.netns, r.error().message());
    }
    ns->host_if_ = host_if;
    if (auto r = run_command({"ip", "-n", c.netns, "-batch", "-"}, fmt::format("link set lo up\n"
                                                                               "addr add {0}/30 dev veth0\n"
                                                                               "link set veth0 up\n"
                                                                               "addr add {1}{2} dev {3}\n"
                                                                               "link set dev {3} up\n"
                                                                               "route add default via {4}\n",
                                                                               ns->outside_, c.gateway, prefix, c.tap, host));
        !r) {
      return fail("netns {}: {}", c.netns, r.error().message());
    }
  }
  // NAT: the outside address is the guest's to the host, and the guest's traffic leaves as it.
  const std::string rules = fmt::format(
      "table ip vmm {{\n"
      "  chain pre {{ type nat hook prerouting priority dstnat; policy accept; iifname \"veth0\" ip daddr {0} dnat to {1}; }}\n"
      "  chain post {{ type nat hook postrouting priority srcnat; policy accept; oifname \"veth0\" ip saddr {1} snat to {0}; }}\n"
      "}}\n",
      ns->outside_, guest);
  if (auto r = run_command({"ip", "netns", "exec", c.netns, "nft", "-f", "-"}, rules); !r) {
    return fail("netns {}: {}", c.netns, r.error().message());
  }
  return ns;
}

Result<> Netns::write_record(const std::string& identity) {
  const std::string record = fmt::format("{} {} {}\n", name_, host_if_name(name_), identity.empty() ? "-" : identity);
  if (::ftruncate(record_lock_.get(), 0) != 0 ||
      ::pwrite(record_lock_.get(), record.data(), record.size(), 0) != static_cast<ssize_t>(record.size())) {
    return fail("{}: cannot write: {}", record_.string(), errno_text(errno));
  }
  return {};
}

Netns::~Netns() {
  if (name_.empty()) return;
  remove_netns(name_, host_if_);
  std::error_code ec;
  if (!record_.empty()) std::filesystem::remove(record_, ec);
}

}  // namespace vmm::devices
