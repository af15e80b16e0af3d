// A TAP network interface as a virtio-net backend (Documentation/networking/tuntap.rst): frames
// carry a 12-byte virtio_net_hdr (IFF_VNET_HDR with TUNSETVNETHDRSZ 12), no packet-info prefix
// (IFF_NO_PI), and the fd is non-blocking so the I/O thread never waits on it.
#pragma once

#include <sys/uio.h>

#include <string>

#include "vmm/base/error.hpp"
#include "vmm/base/fd.hpp"

namespace vmm::devices {

class Tap {
 public:
  /// Attaches to the TAP interface `name`, creating it if it does not exist.
  static Result<Tap> open(const std::string& name);
  /// Takes `fd` as a TAP's: it must keep frame boundaries and be non-blocking (tests and fuzz targets
  /// use one end of a SOCK_SEQPACKET socketpair, so no TAP and no privilege is needed).
  static Tap adopt(Fd fd, std::string name) { return Tap(std::move(fd), std::move(name)); }

  int fd() const { return fd_.get(); }
  const std::string& name() const { return name_; }
  /// One frame (header included) out of the guest: bytes written or -errno.
  ssize_t write(const iovec* iov, int count) const;
  /// One frame into the buffers: bytes read, or -errno (-EAGAIN when none is waiting).
  ssize_t read(const iovec* iov, int count) const;

 private:
  Tap(Fd fd, std::string name) : fd_(std::move(fd)), name_(std::move(name)) {}
  Fd fd_;
  std::string name_;
};

}  // namespace vmm::devices
