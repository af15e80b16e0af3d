#include "vmm/base/thread.hpp"

#include <cerrno>

namespace vmm {

Error thread_error(std::string_view what, const std::system_error& e) {
  const int err = e.code().value();
  // pthread_create's EAGAIN: the process or its user is at its limit of tasks.
  const char* hint = err == EAGAIN ? " (at the limit on threads and processes: 'ulimit -u', or the cgroup's pids.max)" : "";
  return Error(fmt::format("cannot start {}: {}{}", what, errno_text(err), hint));
}

}  // namespace vmm
