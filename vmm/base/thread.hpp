// Threads made without exceptions. At a limit on threads (RLIMIT_NPROC, a cgroup's pids.max: a
// sandbox's, a fleet's) std::thread's constructor throws std::system_error; vmm's errors are values
// and nothing catches it, so it ended the process in std::terminate. start_thread() makes it an
// Error that says which thread could not be made and which limit to look at.
#pragma once

#include <string_view>
#include <system_error>
#include <thread>
#include <utility>

#include "vmm/base/error.hpp"

namespace vmm {

/// The error of a thread that could not be made: "cannot start WHAT: CAUSE (HINT)". (Inline, and
/// without errno_text(): the HTTP plugin, which links nothing of vmm's, uses it too.)
inline Error thread_error(std::string_view what, const std::system_error& e) {
  // pthread_create's EAGAIN: the process or its user is at its limit of tasks.
  const char* hint = e.code() == std::errc::resource_unavailable_try_again
                         ? " (at the limit on threads and processes: 'ulimit -u', or the cgroup's pids.max)"
                         : "";
  return Error(fmt::format("cannot start {}: {}{}", what, e.code().message(), hint));
}

/// Starts a thread running `f`; `what` names it in the error ("the I/O thread").
template <typename F>
Result<std::thread> start_thread(std::string_view what, F&& f) {
  try {
    return std::thread(std::forward<F>(f));
  } catch (const std::system_error& e) {
    return std::unexpected(thread_error(what, e));
  }
}

}  // namespace vmm
