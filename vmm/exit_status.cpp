#include "vmm/exit_status.hpp"

#include <fmt/core.h>

#include <cstdio>
#include <cstring>

namespace vmm {

int report_error(int status, const std::string& message) {
  fmt::print(stderr, "vmm: error: {}\n", message);
  return status;
}

int report_failure(const Failure& f) { return report_error(f.status, f.message); }

std::string describe_stop(const StopInfo& stop) {
  using devices::StopReason;
  switch (stop.reason) {
    case StopReason::PowerOff:
      return "it powered off";
    case StopReason::Reset:
      return "it reset";
    case StopReason::Panic:
      return fmt::format("it panicked (pvpanic event {:#x})", stop.status);
    case StopReason::DebugExit:
      return fmt::format("it exited through the debug port with value {:#x}", stop.status);
    case StopReason::TripleFault:
      return stop.message;
    case StopReason::Signal:
      return fmt::format("vmm got signal {} ({})", stop.status, ::strsignal(static_cast<int>(stop.status)));
    case StopReason::Error:
      break;
  }
  return stop.message;
}

int exit_status_of(const StopInfo& stop) {
  using devices::StopReason;
  switch (stop.reason) {
    case StopReason::PowerOff:
    case StopReason::Reset:
      return exit_code::kOk;
    case StopReason::Panic:
      return exit_code::kGuestPanic;
    case StopReason::DebugExit:
      return exit_code::debug_exit(stop.status);
    case StopReason::TripleFault:
      return exit_code::kTripleFault;
    case StopReason::Signal:
      return exit_code::kSignal;
    case StopReason::Error:
      break;
  }
  return exit_code::kVmmError;
}

int stop_status(const StopInfo& stop) {
  using devices::StopReason;
  switch (stop.reason) {
    case StopReason::PowerOff:
    case StopReason::DebugExit:
      break;
    case StopReason::Reset:
      fmt::print(stderr, "vmm: guest reset; exiting\n");
      break;
    case StopReason::Panic:
      fmt::print(stderr, "vmm: guest panicked (pvpanic event {:#x})\n", stop.status);
      break;
    case StopReason::TripleFault:
      fmt::print(stderr, "vmm: {}\n", stop.message);
      break;
    case StopReason::Signal:
      fmt::print(stderr, "vmm: stopped by signal {} ({})\n", stop.status, ::strsignal(static_cast<int>(stop.status)));
      break;
    case StopReason::Error:
      fmt::print(stderr, "vmm: error: {}\n", stop.message);
      break;
  }
  return exit_status_of(stop);
}

}  // namespace vmm
