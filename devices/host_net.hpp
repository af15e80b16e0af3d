// The host side of a VM's network interfaces beyond the TAP itself:
//  - a TAP brought up and, when asked, made a port of a bridge (`--net tap=T,bridge=BR`): clones on
//    one bridge are machines on one LAN, each with its own MAC and IP (applied in the guest by
//    vmm-agent);
//  - a network namespace of the VM's own (`--net tap=T,netns=NS`), the sandbox mode of Firecracker's
//    network-for-clones guide: every clone keeps the template's guest IP; its TAP lives in the
//    namespace with the guest's gateway address, a veth pair joins the namespace to the host, and
//    NAT inside the namespace maps an address of the clone's own (the namespace end of the veth, in
//    10.200.0.0/16, one /30 per VM) to the guest: the host reaches clone N at its own address.
//    Everything the VM set up goes with the namespace when it ends. A record of it, locked while the
//    VM lives, stays in a directory (STATE/netns): one killed with -9 leaves its namespace and veth
//    pair, which the next VM that sets up a namespace there removes (its record is no longer locked).
// The namespace is made with iproute2 (`ip netns add`, `ip -batch`) and its NAT with nftables
// (`nft -f`): both must be installed (scripts/setup.sh does).
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "devices/tap.hpp"
#include "vmm/base/error.hpp"
#include "vmm/base/fd.hpp"

namespace vmm::devices {

/// An Ethernet address: a guest's (virtio-net's configuration) or a host interface's.
using MacAddress = std::array<uint8_t, 6>;

/// Brings `tap` up; with a bridge, makes it the bridge's port first (the bridge must exist), its
/// own (host-side) address fe: and the last five bytes of `guest_mac`: a bridge whose address was
/// not set takes its lowest port's, and a port that joins or leaves below it changes it, under the
/// feet of every neighbour that has it cached (libvirt gives its TAPs fe: for the same reason).
Result<> attach_tap(const std::string& tap, const std::string& bridge, const MacAddress& guest_mac);

struct NetnsConfig {
  std::string netns;         ///< its name (/run/netns/NAME)
  std::string tap;           ///< the TAP's name inside it
  std::string guest_ip;      ///< A.B.C.D/P: the guest's address (the same in every clone)
  std::string gateway;       ///< A.B.C.D: the guest's gateway, given to the TAP (with the guest's prefix)
  std::filesystem::path records;  ///< where the namespaces' records are (STATE/netns)
};

/// A namespace made for one VM, removed (with its veth pair, TAP and rules) when destroyed.
class Netns {
 public:
  /// Makes the namespace and opens the TAP inside it (take_tap hands it over).
  static Result<std::unique_ptr<Netns>> create(const NetnsConfig& config);
  Tap take_tap() { return std::move(*tap_); }
  ~Netns();
  Netns(const Netns&) = delete;
  Netns& operator=(const Netns&) = delete;

  const std::string& name() const { return name_; }
  /// The clone's address as the host reaches it (the namespace end of the veth pair), A.B.C.D.
  const std::string& outside() const { return outside_; }
  /// The host end of the veth pair.
  const std::string& host_if() const { return host_if_; }
  /// Forgets the namespace without removing it (a fork's child: its parent still uses it).
  void abandon() { name_.clear(); }

 private:
  Netns() = default;
  std::string name_, host_if_, outside_;
  std::optional<Tap> tap_;
  /// Its record: "NAME HOSTIF BOOT-ID/NETNS-COOKIE" (release_stale_netns).
  Result<> write_record(const std::string& identity);
  std::filesystem::path record_;
  Fd record_lock_;
};

/// Removes what killed VMs left: each record in `records` that no VM holds locked (its namespace and
/// veth pair, then the record). Best effort; returns how many it removed.
unsigned release_stale_netns(const std::filesystem::path& records);

/// Where host-wide locks live (the outside addresses' /30 blocks): a directory this user owns
/// alone, made if missing.
inline constexpr const char* kHostLockDir = "/run/vmm";
/// The lock file NAME in kHostLockDir, opened (not locked); fails when the directory is not this
/// user's alone (another user could hold its locks for ever).
Result<Fd> host_lock(const std::string& name);

}  // namespace vmm::devices
