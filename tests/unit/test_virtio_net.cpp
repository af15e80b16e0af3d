// virtio-net on a real TAP, inside a network namespace of its own: frames the guest transmits
// appear on the interface, frames sent to the interface land in the guest's receive buffers, and
// malformed chains are refused without losing frames.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <filesystem>
#include <fstream>

#include "devices/virtio/net.hpp"
#include "test_device_helpers.hpp"
#include "virtq_builder.hpp"

namespace {

using vmm::Gpa;
using vmm::GuestMemory;
using namespace vmm::devices::virtio;
using namespace std::chrono_literals;
using vmm::test::VirtqBuilder;

constexpr uint64_t kRam = 4 << 20;
constexpr uint64_t kRxRings = 0x10000;
constexpr uint64_t kTxRings = 0x20000;
constexpr uint64_t kBuf = 0x100000;
constexpr uint16_t kEtherType = 0x88b5;  // IEEE 802 local experimental
const MacAddress kMac = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};


std::vector<uint8_t> frame(uint8_t seed) {
  std::vector<uint8_t> f(60, 0);
  std::fill(f.begin(), f.begin() + 6, 0xff);  // broadcast
  std::copy(kMac.begin(), kMac.end(), f.begin() + 6);
  f[12] = kEtherType >> 8;
  f[13] = kEtherType & 0xff;
  for (size_t i = 14; i < f.size(); ++i) f[i] = static_cast<uint8_t>(seed + i);
  return f;
}

// Turns IPv6 off in this network namespace (`all` and `default`, so every interface made from now
// on starts without it): an interface coming up with IPv6 sends router solicitations and MLD
// reports, which the device would hand to the guest ahead of the test's frames. False if it could
// not be done while IPv6 is there.
bool disable_ipv6() {
  if (!std::filesystem::exists("/proc/sys/net/ipv6")) return true;  // no IPv6 at all
  for (const char* conf : {"all", "default"}) {
    std::ofstream f(std::string("/proc/sys/net/ipv6/conf/") + conf + "/disable_ipv6");
    f << "1\n";
    f.flush();
    if (!f) return false;
  }
  return true;
}

// True if `f` is one of the test's own frames: our EtherType, from our MAC (what frame() builds).
bool is_ours(const std::vector<uint8_t>& f) {
  return f.size() >= 14 && f[12] == (kEtherType >> 8) && f[13] == (kEtherType & 0xff) &&
         std::equal(kMac.begin(), kMac.end(), f.begin() + 6);
}

// The host side: the TAP interface up, and a packet socket on it for our EtherType only.
struct HostSide {
  int sock = -1;
  int ifindex = 0;
  explicit HostSide(const std::string& ifname) {
    const int ctl = ::socket(AF_INET, SOCK_DGRAM, 0);
    REQUIRE(ctl >= 0);
    ifreq ifr{};
    std::snprintf(ifr.ifr_name, IFNAMSIZ, "%s", ifname.c_str());
    REQUIRE(::ioctl(ctl, SIOCGIFFLAGS, &ifr) == 0);
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
    REQUIRE(::ioctl(ctl, SIOCSIFFLAGS, &ifr) == 0);
    ::close(ctl);
    ifindex = static_cast<int>(::if_nametoindex(ifname.c_str()));
    REQUIRE(ifindex > 0);
    sock = ::socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK, htons(kEtherType));
    REQUIRE(sock >= 0);
    sockaddr_ll a{};
    a.sll_family = AF_PACKET;
    a.sll_protocol = htons(kEtherType);
    a.sll_ifindex = ifindex;
    REQUIRE(::bind(sock, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  }
  ~HostSide() { ::close(sock); }
  void send(const std::vector<uint8_t>& f) const {
    sockaddr_ll a{};
    a.sll_family = AF_PACKET;
    a.sll_ifindex = ifindex;
    a.sll_halen = 6;
    REQUIRE(::sendto(sock, f.data(), f.size(), 0, reinterpret_cast<const sockaddr*>(&a), sizeof a) ==
            static_cast<ssize_t>(f.size()));
  }
  // The next frame of ours on the interface (anything else is skipped), or nothing after ~1 s.
  std::vector<uint8_t> receive() const {
    for (int i = 0; i < 100; ++i) {
      std::vector<uint8_t> buf(2048);
      const ssize_t n = ::recv(sock, buf.data(), buf.size(), 0);
      if (n > 0) {
        buf.resize(static_cast<size_t>(n));
        if (is_ours(buf)) return buf;
        continue;
      }
      ::usleep(10'000);
    }
    return {};
  }
};

/// One end of a SOCK_SEQPACKET socketpair standing in for the TAP (Tap::adopt): the test writes
/// and reads what tun would at `peer`.
struct PairedTap {
  vmm::Fd peer;
  vmm::devices::Tap tap;
};
PairedTap paired_tap() {
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
  return PairedTap{.peer = vmm::Fd(sv[1]), .tap = vmm::devices::Tap::adopt(vmm::Fd(sv[0]), "pair0")};
}

}  // namespace

TEST_CASE("virtio-net: frames both ways through a TAP, hostile chains refused") {
  // A network namespace of our own keeps the host's interfaces out of it (and it out of the host).
  if (::unshare(CLONE_NEWNET) != 0) {
    MESSAGE("VMM_SKIP: cannot create a network namespace here");
    return;
  }
  // Before the TAP exists: the kernel's own IPv6 traffic on it would reach the guest's buffers.
  if (!disable_ipv6()) {
    MESSAGE("VMM_SKIP: cannot turn IPv6 off in the test's network namespace (/proc/sys read-only?)");
    return;
  }
  const std::string name = "vmmt" + std::to_string(::getpid() % 100000);
  auto tap = vmm::devices::Tap::open(name);
  if (!tap) {
    MESSAGE("VMM_SKIP: " << tap.error().message());
    return;
  }
  auto mem = GuestMemory::anonymous(kRam);
  REQUIRE(mem);
  auto loop = vmm::EventLoop::create();
  REQUIRE(loop);
  // As a clone's: frames from another source MAC than the device's are dropped.
  auto net = Net::create(std::move(*tap), kMac, **loop, {.filter_source = true, .netns = nullptr});
  REQUIRE(net);
  HostSide host(name);

  std::array<uint8_t, 8> cfg{};
  (*net)->read_config(0, cfg);
  CHECK(std::equal(kMac.begin(), kMac.end(), cfg.begin()));
  CHECK(cfg[6] == kNetSLinkUp);

  VirtqBuilder rx(*mem, kRxRings, 16), tx(*mem, kTxRings, 16);
  REQUIRE(rx.attach((*net)->queues()[Net::kRxQueue]));
  REQUIRE(tx.attach((*net)->queues()[Net::kTxQueue]));
  device_test::CountingInterrupt irq;
  {
    std::lock_guard lock((*net)->mutex());
    REQUIRE((*net)->activate(*mem, kFVersion1, irq));
  }

  SUBCASE("transmit: the frame appears on the interface, header stripped") {
    const auto f = frame(1);
    REQUIRE(mem->fill_zero(Gpa(kBuf), kNetHdrBytes));
    REQUIRE(mem->write(Gpa(kBuf + kNetHdrBytes), f));
    tx.add_chain(0, {{kBuf, static_cast<uint32_t>(kNetHdrBytes), false}, {kBuf + kNetHdrBytes, 60, false}});
    // A chain shorter than the header is returned and counted, not sent.
    tx.add_chain(2, {{kBuf, 4, false}});
    {
      std::lock_guard lock((*net)->mutex());
      REQUIRE((*net)->process_queue(Net::kTxQueue));
    }
    CHECK(tx.used_idx() == 2);
    CHECK(host.receive() == f);
    CHECK((*net)->tx_frames() == 1);
    CHECK((*net)->errors() == 1);
    CHECK(irq.count >= 1);
  }

  SUBCASE("transmit: a driver that refills its ring at every interrupt is served one ring's worth a pass") {
    // Chains too short to hold a header: counted and returned, nothing sent.
    uint16_t made = 0;
    auto fill = [&] {
      while (static_cast<uint16_t>(made - tx.used_idx()) < tx.size() / 2 && made < 2000) {
        tx.add_chain(made % tx.size(), {{kBuf, 4, false}});
        ++made;
      }
    };
    irq.on_signal = [&](unsigned queue) {
      if (queue == Net::kTxQueue) fill();
    };
    fill();
    auto pass = [&] {
      std::lock_guard lock((*net)->mutex());
      REQUIRE((*net)->process_queue(Net::kTxQueue));
    };
    pass();
    CHECK(tx.used_idx() == tx.size());  // one ring's worth, then it yields
    CHECK(irq.served_again == std::vector<unsigned>{Net::kTxQueue});
    for (int i = 0; i < 1000 && irq.served_again.size() > static_cast<size_t>(i); ++i) pass();
    CHECK(tx.used_idx() == 2000);
    CHECK((*net)->errors() == 2000);
    CHECK(host.receive().empty());
  }

  SUBCASE("transmit: the guest's header goes out zeroed (no offload was offered)") {
    // hdr_len past the frame's end with GSO asked for: tun refuses such a header (EINVAL), and a
    // driver must not send one; the device sends none of it.
    const auto f = frame(2);
    std::array<uint8_t, kNetHdrBytes> hdr{};
    hdr[0] = 1;                   // flags: NEEDS_CSUM
    hdr[1] = 1;                   // gso_type: TCPV4
    hdr[2] = hdr[3] = 0xff;       // hdr_len 65535
    hdr[4] = 100;                 // gso_size
    hdr[6] = 14;                  // csum_start
    REQUIRE(mem->write(Gpa(kBuf), hdr));
    REQUIRE(mem->write(Gpa(kBuf + kNetHdrBytes), f));
    tx.add_chain(0, {{kBuf, static_cast<uint32_t>(kNetHdrBytes + f.size()), false}});
    {
      std::lock_guard lock((*net)->mutex());
      REQUIRE((*net)->process_queue(Net::kTxQueue));
    }
    CHECK(tx.used_idx() == 1);
    CHECK(host.receive() == f);
    CHECK((*net)->tx_frames() == 1);
    CHECK((*net)->errors() == 0);
  }

  SUBCASE("transmit: a clone's frame from another source MAC is dropped, wherever the chain splits it") {
    auto foreign = frame(3);
    foreign[11] ^= 1;
    const auto own = frame(4);
    REQUIRE(mem->fill_zero(Gpa(kBuf), kNetHdrBytes));
    REQUIRE(mem->write(Gpa(kBuf + kNetHdrBytes), foreign));
    REQUIRE(mem->fill_zero(Gpa(kBuf + 0x1000), kNetHdrBytes));
    REQUIRE(mem->write(Gpa(kBuf + 0x1000 + kNetHdrBytes), own));
    const uint64_t a = kBuf, b = kBuf + 0x1000;
    tx.add_chain(0, {{a, static_cast<uint32_t>(kNetHdrBytes + foreign.size()), false}});
    // The source address split over three descriptors, the header over two.
    tx.add_chain(2, {{b, 5, false}, {b + 5, kNetHdrBytes + 8 - 5, false}, {b + kNetHdrBytes + 8, 2, false},
                     {b + kNetHdrBytes + 10, static_cast<uint32_t>(own.size() - 10), false}});
    tx.add_chain(6, {{a, kNetHdrBytes + 9, false}});  // too short to hold a source address
    {
      std::lock_guard lock((*net)->mutex());
      REQUIRE((*net)->process_queue(Net::kTxQueue));
    }
    CHECK(tx.used_idx() == 3);
    CHECK(host.receive() == own);
    CHECK(host.receive().empty());
    CHECK((*net)->tx_frames() == 1);
    CHECK((*net)->stats().filtered == 2);
  }

  SUBCASE("receive: a frame longer than the buffer is dropped, the buffer kept") {
    // tun copies what fits and says how much: a frame cut short must not reach the driver as if
    // it were whole. 12 bytes of header and 28 of frame fit; the 60-byte frame does not.
    constexpr uint32_t kSmall = kNetHdrBytes + 28;
    REQUIRE(mem->write(Gpa(kBuf + kSmall), std::array<uint8_t, 4>{0xaa, 0xbb, 0xcc, 0xdd}));
    rx.add_chain(0, {{kBuf, kSmall, true}});
    host.send(frame(5));
    for (int i = 0; i < 100 && (*net)->errors() == 0; ++i) REQUIRE((*loop)->run_once(20ms));
    CHECK((*net)->errors() == 1);
    CHECK(rx.used_idx() == 0);  // still the driver's: nothing was delivered into it
    CHECK((*net)->rx_frames() == 0);
    CHECK(*mem->read_obj<uint32_t>(Gpa(kBuf + kSmall)) == 0xddccbbaa);  // nothing past the buffer
  }

  SUBCASE("receive: a pass reads one ring's worth of frames, then asks to be served again") {
    // Frames longer than the buffer are read and dropped, the buffer kept: a flood of them would
    // keep one pass reading for as long as it lasted.
    constexpr uint32_t kSmall = kNetHdrBytes + 28;
    rx.add_chain(0, {{kBuf, kSmall, true}});
    for (int i = 0; i < 40; ++i) host.send(frame(static_cast<uint8_t>(i)));
    auto pass = [&] {
      std::lock_guard lock((*net)->mutex());
      REQUIRE((*net)->process_queue(Net::kRxQueue));
    };
    pass();
    CHECK((*net)->errors() == rx.size());
    CHECK(irq.served_again == std::vector<unsigned>{Net::kRxQueue});
    pass();
    pass();
    CHECK((*net)->errors() == 40);
    CHECK(irq.served_again.size() == 2);  // the third pass found the TAP empty
    CHECK(rx.used_idx() == 0);
  }

  SUBCASE("receive: a frame lands in a buffer with num_buffers = 1; no buffer, no loss") {
    // A malformed receive chain (device-readable) first: refused with length 0.
    rx.add_chain(0, {{kBuf + 0x8000, 1526, false}});
    rx.add_chain(1, {{kBuf, 1526, true}});
    const auto f = frame(7);
    host.send(f);
    for (int i = 0; i < 100 && rx.used_idx() < 2; ++i) REQUIRE((*loop)->run_once(20ms));
    REQUIRE(rx.used_idx() == 2);
    CHECK(rx.used_elem(0).len == 0);
    CHECK(rx.used_elem(1).id == 1);
    CHECK(rx.used_elem(1).len == kNetHdrBytes + f.size());
    CHECK(*mem->read_obj<uint16_t>(Gpa(kBuf + 10)) == 1);
    std::vector<uint8_t> got(f.size());
    REQUIRE(mem->read(Gpa(kBuf + kNetHdrBytes), got));
    CHECK(got == f);

    // No buffers: the next frame waits in the TAP until the driver adds one and notifies.
    const auto g = frame(9);
    host.send(g);
    for (int i = 0; i < 5; ++i) REQUIRE((*loop)->run_once(20ms));
    CHECK(rx.used_idx() == 2);
    rx.add_chain(2, {{kBuf + 0x1000, 1526, true}});
    {
      std::lock_guard lock((*net)->mutex());
      REQUIRE((*net)->process_queue(Net::kRxQueue));
    }
    REQUIRE(rx.used_idx() == 3);
    REQUIRE(mem->read(Gpa(kBuf + 0x1000 + kNetHdrBytes), got));
    CHECK(got == g);
    CHECK((*net)->rx_frames() == 2);
    CHECK((*net)->errors() == 1);
  }
}

// A device destroyed while its event loop runs on (a snapshot check, a start that failed after the
// device was made) takes its TAP watch with it: the fd's next readiness runs no callback on freed
// memory (the guest-io fuzzer found this; ASan's build sees the use after free without the fix).
// One end of a SOCK_SEQPACKET socketpair stands in for the TAP (Tap::adopt).
TEST_CASE("virtio-net: a device destroyed while its loop runs on leaves no callback behind") {
  auto loop = vmm::EventLoop::create();
  REQUIRE(loop);
  auto [peer, tap] = paired_tap();
  {
    auto net = Net::create(std::move(tap), kMac, **loop);
    REQUIRE(net);
    REQUIRE((*loop)->run_once(0ms));  // the watch is armed
  }
  // The device and its end of the pair are gone; the other end's frame and hang-up reach nothing.
  const auto f = frame(1);
  (void)::send(peer.get(), f.data(), f.size(), MSG_DONTWAIT);
  peer.reset();
  for (int i = 0; i < 5; ++i) REQUIRE((*loop)->run_once(1ms));
}

// tun writes the header of a received frame itself: VIRTIO_NET_HDR_F_DATA_VALID for one whose
// checksum the host checked. Without VIRTIO_NET_F_GUEST_CSUM (not offered) the device must give
// the guest flags of zero (virtio 1.2 §5.1.6.4.1), and no GSO fields. A socketpair stands in for
// the TAP, so the test writes the header tun would.
TEST_CASE("virtio-net: a received frame's header reaches the guest zeroed but for num_buffers, whatever the TAP wrote") {
  auto mem = GuestMemory::anonymous(kRam);
  REQUIRE(mem);
  auto loop = vmm::EventLoop::create();
  REQUIRE(loop);
  auto [peer, tap] = paired_tap();
  auto net = Net::create(std::move(tap), kMac, **loop);
  REQUIRE(net);
  VirtqBuilder rx(*mem, kRxRings, 16), tx(*mem, kTxRings, 16);
  REQUIRE(rx.attach((*net)->queues()[Net::kRxQueue]));
  REQUIRE(tx.attach((*net)->queues()[Net::kTxQueue]));
  device_test::CountingInterrupt irq;
  {
    std::lock_guard lock((*net)->mutex());
    REQUIRE((*net)->activate(*mem, kFVersion1, irq));
  }
  REQUIRE(mem->write(Gpa(kBuf), std::vector<uint8_t>(2048, 0xee)));
  rx.add_chain(0, {{kBuf, 2048, true}});
  // flags DATA_VALID | NEEDS_CSUM, gso_type TCPV4, hdr_len, gso_size, csum_start, csum_offset, and
  // num_buffers 7: all as tun (or anything at its end) might write them.
  std::vector<uint8_t> packet = {0x03, 0x01, 0x36, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00, 0x07, 0x00};
  const auto f = frame(3);
  packet.insert(packet.end(), f.begin(), f.end());
  REQUIRE(::send(peer.get(), packet.data(), packet.size(), 0) == static_cast<ssize_t>(packet.size()));
  {
    std::lock_guard lock((*net)->mutex());
    REQUIRE((*net)->process_queue(Net::kRxQueue));
  }
  REQUIRE(rx.used_idx() == 1);
  std::vector<uint8_t> got(kNetHdrBytes + f.size());
  REQUIRE(mem->read(Gpa(kBuf), got));
  const std::vector<uint8_t> header(got.begin(), got.begin() + kNetHdrBytes);
  CHECK(header == std::vector<uint8_t>{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0});
  CHECK(std::equal(f.begin(), f.end(), got.begin() + kNetHdrBytes));
  CHECK((*net)->rx_frames() == 1);
}
