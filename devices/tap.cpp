#include "devices/tap.hpp"

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace vmm::devices {

Result<Tap> Tap::open(const std::string& name) {
  if (name.empty() || name.size() >= IFNAMSIZ) {
    return fail("--net tap={}: an interface name of 1 to {} characters is needed", name, IFNAMSIZ - 1);
  }
  Fd fd(::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC));
  if (!fd) return fail("/dev/net/tun: {} (is the tun module loaded?)", errno_text(errno));
  ifreq ifr{};
  std::memcpy(ifr.ifr_name, name.data(), name.size());
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  if (::ioctl(fd.get(), TUNSETIFF, &ifr) < 0) return fail("TAP {}: TUNSETIFF: {}", name, errno_text(errno));
  int hdr = 12;  // struct virtio_net_hdr_v1 (virtio 1.2 §5.1.6)
  if (::ioctl(fd.get(), TUNSETVNETHDRSZ, &hdr) < 0) return fail("TAP {}: TUNSETVNETHDRSZ: {}", name, errno_text(errno));
  // No offloads: we offer the guest no checksum or segmentation features.
  if (::ioctl(fd.get(), TUNSETOFFLOAD, 0) < 0) return fail("TAP {}: TUNSETOFFLOAD: {}", name, errno_text(errno));
  return Tap(std::move(fd), name);
}

ssize_t Tap::write(const iovec* iov, int count) const {
  const ssize_t n = ::writev(fd_.get(), iov, count);
  return n < 0 ? -errno : n;
}

ssize_t Tap::read(const iovec* iov, int count) const {
  const ssize_t n = ::readv(fd_.get(), iov, count);
  return n < 0 ? -errno : n;
}

}  // namespace vmm::devices
