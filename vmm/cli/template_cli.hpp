// `vmm template create|ls|inspect|rm|verify` and `vmm run --clone-of`.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "clone/snapshot.hpp"
#include "clone/template.hpp"
#include "vmm/api/control.hpp"
#include "vmm/cli/cli.hpp"

namespace vmm::cli {

struct TemplateCreateOptions {
  std::string dir;       ///< a name (state_dir/templates/NAME) or a path
  std::string ready_on;  ///< console text that means "ready"
  double timeout_s = 60;
  RunOptions run;
  std::string state_dir;
};

struct CloneOptions {
  std::string template_name;
  std::string name;
  bool full = false;
  std::string hostname, ip, gateway;  ///< checked; ip normalised (A.B.C.D/P or dhcp); hostname may hold {name}, {i}
  unsigned index = 1;                 ///< a fleet's clone number, a pool member's ({i} in patterns)
  bool ip_at_request = false;         ///< a pool's member: a clone on a shared network gets its ip with the request
  std::string state_dir;
  devices::ConsoleSpec console;
  bool console_given = false;  ///< otherwise the console goes to the clone's console.log
  std::vector<NetSpec> nets;
  std::filesystem::path kvm_device;
  std::filesystem::path api_socket;
  std::chrono::steady_clock::time_point started;  ///< when main() began (for the start-time line)
};

int template_create(const TemplateCreateOptions& options);
int template_ls(const std::string& state_dir, bool json);
int template_inspect(const std::string& state_dir, const std::string& target);
int template_rm(const std::string& state_dir, const std::string& target, bool force);
int template_verify(const std::string& state_dir, const std::string& target);
int run_clone(const CloneOptions& options);
/// A template's directory for DIR given as a name (STATE_DIR/templates/NAME) or as a path.
Result<std::filesystem::path> template_path(const std::string& state_dir, const std::string& dir);
/// A template being written: everything goes into a hidden temporary directory beside the
/// destination, renamed at the end (seal_template), so that a failure leaves no half-written
/// template: the directory is removed unless sealed.
struct TemplateDraft {
  std::filesystem::path dest, tmp;
  bool sealed = false;
  ~TemplateDraft();
};
/// Resolves DIR (a name or a path), refuses an existing destination, makes the temporary directory
/// (with disks/ in it).
std::expected<std::unique_ptr<TemplateDraft>, CliFailure> begin_template(const std::string& state_dir, const std::string& dir);
/// The end of writing a template: sums its disks into `m`, writes manifest.json, makes every file
/// read-only and renames the draft to its destination.
Result<> seal_template(TemplateDraft& draft, clone::Manifest& m);
/// `vmm template bench TEMPLATE [--count N] [--input TEXT] [--expect TEXT]` (vmm/cli/clone_bench.cpp):
/// `count` clones started one after another in this process, each timed from its memory mapping to
/// `expect` on its console (its guest's answer to `input`, given to its UART before resume), then
/// removed.
int template_bench(const CloneOptions& options, unsigned count, const std::string& input, const std::string& expect,
                   double timeout_s);
/// `vmm pool TEMPLATE --size K` (vmm/cli/pool.cpp): serves until SIGINT/SIGTERM.
int run_pool(const CloneOptions& options, unsigned size);
/// `vmm run --clone-of T --pool SOCKET`: a clone from the pool at SOCKET.
int run_from_pool(const std::string& socket, const CloneOptions& options);
/// `vmm run --clone-of T --count N [--detach]` (vmm/cli/fleet.cpp).
int run_fleet(const CloneOptions& options, unsigned count, bool detach);

/// A template opened once, for one clone or for a fleet's or a pool's launcher: its manifest, state
/// and, for linked clones, the one copy-on-write mapping of its memory file; and /dev/kvm, which
/// every clone made from it uses (it must outlive their machines).
struct OpenTemplate {
  std::filesystem::path sdir, tdir;
  clone::Manifest manifest;
  clone::StateFile state;
  clone::MachineShape shape;
  std::string state_path;
  std::optional<GuestMemory> memory;
  std::unique_ptr<Kvm> kvm;
};
/// Opens and checks the template of `options` and opens /dev/kvm (nothing is created); a failure
/// to report. No thread of its own runs once it returns.
std::optional<CliFailure> open_template(const CloneOptions& options, OpenTemplate& t);
/// A clone made ready to start: its directory, overlays and devices, its KVM VM built over the
/// template's memory and restored (all but the clock), its identity drawn. Destroying it without
/// launching removes the directory.
struct PreparedClone {
  std::string name;
  std::filesystem::path dir;
  std::vector<DiskSpec> disks;
  std::vector<NetSpec> nets;
  devices::ConsoleSpec console;
  clone::Identity identity;
  std::unique_ptr<Machine> machine;
  bool keep = false;
  /// Moments of its start (GET /vm start_ms): a pool's member "taken" (the request read), "resumed".
  std::vector<std::pair<std::string, std::chrono::steady_clock::time_point>> steps;
  ~PreparedClone();
};
/// The clone's hostname: --hostname with {name} and {i} expanded, checked (empty if none given).
Result<std::string> clone_hostname(const CloneOptions& options, const std::string& name);
std::expected<std::unique_ptr<PreparedClone>, CliFailure> prepare_clone(OpenTemplate& t, const CloneOptions& options,
                                                                        const std::string& name, bool inherited);
/// The start of a prepared clone, in two parts that a pool runs in the other order:
/// begin_clone gives it hostname and IP from `options`, a new generation (notified) and the present
/// time; register_clone registers it under its name (STATE/run) and writes clone.json, and
/// serve_clone then starts its API (whose server comes up on a thread of its own) with the start's
/// steps so far. The control plane must be destroyed before the clone's machine.
Result<> begin_clone(OpenTemplate& t, const CloneOptions& options, PreparedClone& clone);
Result<std::unique_ptr<api::ControlPlane>> register_clone(OpenTemplate& t, const CloneOptions& options, PreparedClone& clone);
void serve_clone(OpenTemplate& t, const CloneOptions& options, PreparedClone& clone, api::ControlPlane& control);
/// When a clone's start is announced (`started(ms)`, ms from the request to the resume): at once,
/// before its guest runs (a message), or once its API answers (to a launcher whose caller may use
/// the clone at once: the guest runs meanwhile).
enum class Announce { AtStart, WhenServing };
/// Registers the prepared clone (register_clone), begins it (begin_clone), serves its API and runs it until its
/// guest stops.
int launch_clone(OpenTemplate& t, const CloneOptions& options, PreparedClone& clone, Announce when,
                 const std::function<void(const std::string&)>& started);
/// prepare_clone + launch_clone: starts the clone `name` of `t` and runs it until its guest stops;
/// returns the exit status. `inherited`: the memory mapping belongs to a launcher this process was
/// forked from (adopted, not moved).
int start_clone(OpenTemplate& t, const CloneOptions& options, const std::string& name, bool inherited, Announce when,
                const std::function<void(const std::string&)>& started);

}  // namespace vmm::cli
