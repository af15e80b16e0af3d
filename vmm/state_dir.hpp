// The state directory: where VMs register while they run (run/NAME: the API socket, vmm ps),
// where templates (templates/NAME) and clones (clones/NAME) live, and what vmm caches for the next
// VM of this host (cache/). --state-dir, else $VMM_STATE_DIR, else /var/lib/vmm for root and
// $XDG_STATE_HOME/vmm or ~/.local/state/vmm for a user.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace vmm {

/// The state directory: `given` if not empty, else $VMM_STATE_DIR, else the default.
std::filesystem::path resolve_state_dir(const std::string& given);
/// A user's default (not root's), from $XDG_STATE_HOME, $HOME and the user database's home
/// directory, the first usable: XDG_STATE_HOME/vmm, then HOME/.local/state/vmm. A relative path is
/// not usable (the XDG rule: it would name another place from each working directory), nor is "/"
/// for a home (a service account's: /.local would be made at the root). Empty when none is.
std::filesystem::path user_state_dir(const char* xdg_state_home, const char* home, const char* passwd_home);
/// Where vmm keeps KVM's supported CPUID for the next VM of this host (vmm/kvm_cache.hpp).
inline std::filesystem::path cpuid_cache(const std::filesystem::path& state_dir) { return state_dir / "cache" / "kvm-cpuid"; }
/// Why `dir` is not a directory only this user can enter (made 0700 when missing): a symbolic
/// link, another user's, open to others; nullopt when it is fine. For a fixed path in a directory
/// every user can write (/tmp).
std::optional<std::string> unsafe_private_dir(const std::filesystem::path& dir);
/// A valid VM, template or clone name: 1..64 of [A-Za-z0-9._-], not starting with '.'.
bool valid_name(std::string_view name);

}  // namespace vmm
