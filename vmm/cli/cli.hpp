// The `vmm` command line: subcommands, option parsing and validation, exit statuses.
#pragma once

#include <cstdint>
#include <expected>
#include <functional>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "devices/console.hpp"
#include "vmm/cpuid.hpp"
#include "vmm/cli/device_spec.hpp"
#include "devices/virtio/net.hpp"
#include "clone/identity.hpp"
#include "vmm/machine.hpp"
#include <nlohmann/json.hpp>

namespace vmm::cli {

/// Everything `vmm run` was asked to do, validated.
struct RunOptions {
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

/// A failure before the guest runs: the exit status and one line.
struct CliFailure {
  int status = 0;
  std::string message;
};

/// The host side of the devices, opened before KVM is touched (bad paths are reported on any host).
struct Devices {
  std::unique_ptr<devices::Console> console;
  std::vector<DiskAttachment> disks;
  std::vector<NetAttachment> nets;
  std::unique_ptr<EventLoop> loop;
};
/// What a VM's interfaces need from the host beyond their specs: the guest's address and gateway
/// (a namespace's TAP is the guest's gateway, its NAT maps to the guest's address), where the
/// namespaces' records go, and whether a clone's source-MAC filter is on (NetOptions).
struct NetHost {
  std::string guest_ip, gateway;
  std::filesystem::path state_dir;
  bool filter_source = false;
};
std::expected<Devices, CliFailure> open_devices(const devices::ConsoleSpec& console, const std::vector<DiskSpec>& disks,
                                               const std::vector<NetSpec>& nets, const NetHost& host);

/// Builds a machine that boots `options`' kernel (KVM opened into `kvm_holder` unless given); its
/// identity goes to `identity` when given.
std::expected<std::unique_ptr<Machine>, CliFailure> boot_machine(const Kvm* kvm, const RunOptions& options,
                                                                 std::function<void(std::span<const uint8_t>)> console_tap,
                                                                 std::optional<Kvm>& kvm_holder, clone::Identity* identity = nullptr);
/// The configuration GET /vm reports.
/// Its nets: tap, mac, bridge, netns and, in a namespace, `outside` (the address the host reaches
/// the guest at); hostname, ip and gateway as its identity carries them.
nlohmann::json config_json(uint64_t memory, uint32_t vcpus, std::string_view cpu_template, const std::vector<DiskSpec>& disks,
                           const std::vector<NetSpec>& nets, const devices::ConsoleSpec& console, const clone::Identity& identity,
                           const Platform& platform);
/// A random locally administered unicast MAC (02:xx:xx:xx:xx:xx), as Cloud Hypervisor gives.
Result<devices::virtio::MacAddress> random_mac();

/// What a clone or a fork's child takes its network from: its template, or its parent.
struct NetSource {
  std::string_view kind;      ///< "template" or "VM"
  size_t interfaces = 0;
  std::string ip, gateway;    ///< as configured there ("dhcp", an address, or empty)
};
/// The interfaces and the guest address a clone or a fork's child gets.
struct NetPlan {
  std::vector<NetSpec> nets;
  std::string ip, gateway;
};
/// Fails unless one --net is given per interface of the source (`who`: "clone", "fleet", "pool",
/// "fork"; `source_kind`: NetSource::kind).
Result<> check_net_count(std::string_view who, std::string_view source_kind, size_t interfaces, size_t given);
/// Plans them for the VM `name` (`index`: its number in a fleet, pool or fork): one pattern per
/// interface of the source, names expanded, each with a random MAC unless it gives one. The
/// address: `ip` and `gateway` as asked (checked); else, in a namespace of its own, the source's;
/// on a shared network (a bridge or a host TAP) a VM needs one of its own: refused unless the
/// source uses DHCP or `ip_later` (a pool's member gets it with the request).
Result<NetPlan> plan_nets(std::string_view who, const std::vector<NetSpec>& patterns, const NetSource& source, const std::string& name,
                          unsigned index, const std::string& ip, const std::string& gateway, bool ip_later);
/// Prints "vmm: error: MESSAGE" and returns `status`.
int report_error(int status, const std::string& message);
/// How a VM stopped, as a clause for an error message ("it exited through the debug port ...").
std::string describe_stop(const StopInfo& stop);
/// Prints "vmm: error: ..." and returns the status.
int report_failure(const CliFailure& failure);
/// The exit status for how a VM stopped (prints what the stop needs said).
int stop_status(const StopInfo& stop);

/// Entry point: parses argv, runs the subcommand, returns the process exit status.
int main(int argc, char** argv);

/// Runs a VM to completion; returns the exit status (see exit_codes.hpp).
int run_vm(const RunOptions& options);

}  // namespace vmm::cli
