// From what was asked for to a Machine: the host side of a VM's devices (console, disk images,
// TAPs and network namespaces) opened before KVM is touched, so that a bad path is reported as
// such on any host; a machine built that boots a kernel (a restored one is built by clone/); and
// the configuration GET /vm reports.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "devices/console.hpp"
#include "devices/virtio/net.hpp"
#include "vmm/cpuid.hpp"
#include "vmm/device_spec.hpp"
#include "vmm/exit_status.hpp"
#include "vmm/identity.hpp"
#include "vmm/machine.hpp"

namespace vmm {

/// A VM to boot, as `vmm run` and `vmm template create` were asked for it (validated).
struct BootOptions {
  std::filesystem::path kernel;
  std::optional<std::filesystem::path> initrd;
  std::string cmdline;
  uint64_t memory = 256ull << 20;
  uint32_t vcpus = 1;
  devices::ConsoleSpec console;
  CpuTemplate cpu_template = CpuTemplate::Host;
  std::filesystem::path kvm_device;
  std::vector<DiskSpec> disks;
  std::vector<NetSpec> nets;  ///< mac already checked (or empty: random)
  std::string name;           ///< the VM's name (its identity's name; default generated)
  std::filesystem::path api_socket;  ///< default: STATE_DIR/run/NAME/api.sock
  std::string state_dir;             ///< where the VM registers (run/NAME)
  std::string hostname, ip, gateway; ///< for the identity channel (checked; ip normalised to A.B.C.D/P)
};

/// The host side of the devices, opened before KVM is touched (bad paths are reported on any host).
struct Devices {
  // The loop first: destroyed last, after the disks that unregister from it (a second disk that
  // failed to open destroyed the loop before the first disk: a use after free).
  std::unique_ptr<EventLoop> loop;
  std::unique_ptr<devices::Console> console;
  std::vector<DiskAttachment> disks;
  std::vector<NetAttachment> nets;
};
/// What a VM's interfaces need from the host beyond their specs: the guest's address and gateway
/// (a namespace's TAP is the guest's gateway, its NAT maps to the guest's address), where the
/// namespaces' records go, and whether a clone's source-MAC filter is on (NetOptions).
struct NetHost {
  std::string guest_ip, gateway;
  std::filesystem::path state_dir;
  bool filter_source = false;
};
std::expected<Devices, Failure> open_devices(const devices::ConsoleSpec& console, const std::vector<DiskSpec>& disks,
                                            const std::vector<NetSpec>& nets, const NetHost& host);

/// Builds a machine that boots `options`' kernel (KVM opened into `kvm_holder` unless given); its
/// identity goes to `identity` when given.
std::expected<std::unique_ptr<Machine>, Failure> boot_machine(const Kvm* kvm, const BootOptions& options,
                                                              std::function<void(std::span<const uint8_t>)> console_tap,
                                                              std::optional<Kvm>& kvm_holder, Identity* identity = nullptr);
/// The configuration GET /vm reports.
/// Its nets: tap, mac, bridge, netns and, in a namespace, `outside` (the address the host reaches
/// the guest at); hostname, ip and gateway as its identity carries them.
nlohmann::json config_json(uint64_t memory, uint32_t vcpus, std::string_view cpu_template, const std::vector<DiskSpec>& disks,
                           const std::vector<NetSpec>& nets, const devices::ConsoleSpec& console, const Identity& identity,
                           const Platform& platform);
/// A random locally administered unicast MAC (02:xx:xx:xx:xx:xx), as Cloud Hypervisor gives.
Result<devices::virtio::MacAddress> random_mac();

}  // namespace vmm
