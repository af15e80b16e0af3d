// Clones of a template: the template opened once (its manifest, state and the one copy-on-write
// mapping of its memory file), a clone prepared (its directory, overlays, devices, a KVM VM built
// over the template's memory and restored, a new identity), then launched (registered, its
// generation and clock made new, its API served, run). `vmm run --clone-of`, a fleet's clones
// (clone/fleet.hpp) and a pool's (clone/pool.hpp) all go this way.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "clone/snapshot.hpp"
#include "clone/template.hpp"
#include "vmm/api/control.hpp"
#include "vmm/base/fd.hpp"
#include "vmm/setup.hpp"

namespace vmm::clone {

/// A clone to start, as `vmm run --clone-of`, a fleet or a pool was asked for it (checked).
struct CloneOptions {
  std::string template_name;
  std::string name;
  bool full = false;
  std::string hostname, ip, gateway;  ///< checked; ip normalised (A.B.C.D/P or dhcp); hostname may hold {name}, {i}
  unsigned index = 1;                 ///< a fleet's clone number, a pool member's ({i} in patterns)
  bool ip_at_request = false;         ///< a pool's member: a clone on a shared network gets its ip with the request
  std::string state_dir;
  devices::ConsoleSpec console;  ///< a file's path may hold {name} and {i}
  bool console_given = false;    ///< otherwise the console goes to the clone's console.log
  std::vector<NetSpec> nets;
  std::filesystem::path kvm_device;
  std::filesystem::path api_socket;
  std::chrono::steady_clock::time_point started;  ///< when main() began (for the start-time line)
  double start_timeout_s = 120;  ///< a fleet's: a clone not started this long after its fork is killed; 0: no limit
};

/// `vmm run --clone-of TEMPLATE`: starts one clone and runs it until its guest stops; returns the
/// exit status.
int run_clone(const CloneOptions& options);

/// A template opened once, for one clone or for a fleet's or a pool's launcher: its manifest, state
/// and, for linked clones, the one copy-on-write mapping of its memory file; and /dev/kvm, which
/// every clone made from it uses (it must outlive their machines).
struct OpenTemplate {
  std::filesystem::path sdir, tdir;
  Manifest manifest;
  StateFile state;
  MachineShape shape;
  std::string state_path;
  std::optional<GuestMemory> memory;
  TemplateFile memory_file;              ///< opened and checked (a full clone copies it)
  std::vector<TemplateFile> disk_files;  ///< each of manifest.disks, opened and checked
  std::unique_ptr<Kvm> kvm;
  /// The template directory, locked shared from its reading until the clone's record is written
  /// (launch_clone; a fleet's launcher once its clones are forked, a pool for its life): `vmm
  /// template rm` takes it exclusive, so that it cannot remove a template a clone is being made
  /// from and that no record names yet.
  Fd in_use;
};
/// Opens and checks the template of `options` and opens /dev/kvm (nothing is created); a failure
/// to report. No thread of its own runs once it returns.
std::optional<Failure> open_template(const CloneOptions& options, OpenTemplate& t);
/// A clone made ready to start: its directory, overlays and devices, its KVM VM built over the
/// template's memory and restored (all but the clock), its identity drawn. Destroying it without
/// launching removes the directory.
struct PreparedClone {
  std::string name;
  std::filesystem::path dir;
  std::pair<uint64_t, uint64_t> dir_id{};  ///< its device and inode: the directory this clone made
  std::vector<DiskSpec> disks;
  std::vector<NetSpec> nets;
  devices::ConsoleSpec console;
  Identity identity;
  std::unique_ptr<Machine> machine;
  bool keep = false;
  /// Moments of its start (GET /vm start_ms): a pool's member "taken" (the request read), "resumed".
  std::vector<std::pair<std::string, std::chrono::steady_clock::time_point>> steps;
  ~PreparedClone();
};
/// The clone's hostname: --hostname with {name} and {i} expanded, checked (empty if none given).
Result<std::string> clone_hostname(const CloneOptions& options, const std::string& name);
std::expected<std::unique_ptr<PreparedClone>, Failure> prepare_clone(OpenTemplate& t, const CloneOptions& options,
                                                                        const std::string& name, bool inherited);
/// The start of a prepared clone, in two parts that a pool runs in the other order:
/// begin_clone gives it hostname and IP from `options`, a new generation (notified) and the present
/// time; its registration (a ControlPlane under its name in STATE/run, and clone.json) is made,
/// and serve_clone then starts its API (whose server comes up on a thread of its own) with the
/// start's steps so far. The control plane must be destroyed before the clone's machine.
Result<> begin_clone(OpenTemplate& t, const CloneOptions& options, PreparedClone& clone);
void serve_clone(OpenTemplate& t, const CloneOptions& options, PreparedClone& clone, api::ControlPlane& control);
/// A pool's member makes its registration in two parts: stage_clone makes every file ahead of the
/// request (its STATE/run entry under a hidden name, the API socket bound there, the record's
/// file); publish_clone, at the request, takes the name and writes the record: renames and one
/// write, no new file (a new inode costs ~250 us on this host's ext4). The staged control plane's
/// destruction before publish_clone removes the hidden entry.
Result<std::unique_ptr<api::ControlPlane>> stage_clone(OpenTemplate& t, const CloneOptions& options, PreparedClone& clone);
Result<> publish_clone(OpenTemplate& t, const CloneOptions& options, PreparedClone& clone, api::ControlPlane& control);
/// Writes the clone's clone.json (its template, pid, time of creation); it is kept from then on.
Result<> record_clone(OpenTemplate& t, const CloneOptions& options, PreparedClone& clone);
/// When a clone's start is announced (`started(ms)`, ms from the request to the resume): at once,
/// before its guest runs (a message), or once its API answers and its guest runs (to a launcher
/// whose caller may use the clone at once).
enum class Announce { AtStart, WhenServing };
/// How a clone's start is told to whoever asked for it.
struct StartReport {
  Announce when = Announce::AtStart;
  std::function<void(const std::string& ms)> started;
  /// Called instead, with the status and the one line that says why, when the clone could not
  /// start (with WhenServing: also when its VM stopped before its guest ran); when empty, that line
  /// is printed ("vmm: error: ...").
  std::function<void(const Failure&)> failed;
};
/// Registers the prepared clone (its control plane, clone.json), begins it (begin_clone), serves
/// its API and runs it until its guest stops; returns the exit status.
int launch_clone(OpenTemplate& t, const CloneOptions& options, PreparedClone& clone, const StartReport& report);
/// prepare_clone + launch_clone: starts the clone `name` of `t` and runs it until its guest stops;
/// returns the exit status. `inherited`: the memory mapping belongs to a launcher this process was
/// forked from (adopted, not moved).
int start_clone(OpenTemplate& t, const CloneOptions& options, const std::string& name, bool inherited, const StartReport& report);

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

}  // namespace vmm::clone
