#include "vmm/exit_handler.hpp"

#include <span>

namespace vmm {

using devices::StopReason;

namespace {

ExitOutcome error(std::string message) { return {.stop = true, .reason = StopReason::Error, .message = std::move(message)}; }

ExitOutcome handle_io(kvm_run& run, size_t run_size, const Buses& buses) {
  // Copied once: the data written back by an IN lies in the same mapping, and must not be able to
  // change the loop that writes it (KVM puts it on the page after kvm_run; one that overlapped the
  // structure was refused only by luck of the lengths, found by fuzz target `exit`).
  const auto io = run.io;
  const uint64_t size = io.size;
  const uint64_t total = size * io.count;  // both 32-bit in the ABI: no overflow in 64 bits
  if ((size != 1 && size != 2 && size != 4) || io.count == 0 || io.data_offset < sizeof(kvm_run) || io.data_offset > run_size ||
      total > run_size - io.data_offset) {
    return error(fmt::format("malformed KVM_EXIT_IO: port {:#x} size {} count {} offset {:#x}", io.port, io.size,
                             io.count, io.data_offset));
  }
  auto* data = reinterpret_cast<uint8_t*>(&run) + io.data_offset;
  for (uint32_t i = 0; i < io.count; ++i) {  // string I/O (rep ins/outs) carries count > 1
    std::span<uint8_t> chunk(data + i * size, size);
    if (io.direction == KVM_EXIT_IO_OUT) {
      buses.pio.write(io.port, chunk);
    } else {
      buses.pio.read(io.port, chunk);
    }
  }
  return {};
}

ExitOutcome handle_mmio(kvm_run& run, const Buses& buses) {
  auto& mmio = run.mmio;
  if (mmio.len == 0 || mmio.len > sizeof mmio.data) {
    return error(fmt::format("malformed KVM_EXIT_MMIO: address {:#x} length {}", mmio.phys_addr, mmio.len));
  }
  std::span<uint8_t> data(mmio.data, mmio.len);
  if (mmio.is_write) {
    buses.mmio.write(mmio.phys_addr, data);
  } else {
    buses.mmio.read(mmio.phys_addr, data);
  }
  return {};
}

}  // namespace

std::string describe_internal_error(const kvm_run& run) {
  const auto& ie = run.internal;
  std::string text = fmt::format("KVM internal error, suberror {}", ie.suberror);
  if (ie.suberror == KVM_INTERNAL_ERROR_EMULATION) {
    text = "KVM could not emulate a guest instruction (KVM_INTERNAL_ERROR_EMULATION)";
    const auto& ef = run.emulation_failure;
    if (ef.ndata >= 3 && (ef.flags & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)) {
      const size_t n = std::min<size_t>(ef.insn_size, sizeof ef.insn_bytes);
      text += fmt::format(", instruction bytes [{:02x}]", fmt::join(ef.insn_bytes, ef.insn_bytes + n, " "));
      return text;
    }
  }
  const size_t n = std::min<size_t>(ie.ndata, std::size(ie.data));
  if (n) text += fmt::format(", data [{:#x}]", fmt::join(ie.data, ie.data + n, " "));
  return text;
}

ExitOutcome handle_exit(kvm_run& run, size_t run_size, const Buses& buses) {
  switch (run.exit_reason) {
    case KVM_EXIT_IO:
      return handle_io(run, run_size, buses);
    case KVM_EXIT_MMIO:
      return handle_mmio(run, buses);
    case KVM_EXIT_INTR:
    case KVM_EXIT_IRQ_WINDOW_OPEN:
    case KVM_EXIT_HLT:  // with the in-kernel LAPIC, HLT is handled by KVM; a stray one just resumes
      return {};
    case KVM_EXIT_SHUTDOWN:
      return {.stop = true, .reason = StopReason::TripleFault, .message = "guest triple fault (KVM_EXIT_SHUTDOWN)"};
    case KVM_EXIT_SYSTEM_EVENT:
      switch (run.system_event.type) {
        case KVM_SYSTEM_EVENT_SHUTDOWN:
          return {.stop = true, .reason = StopReason::PowerOff, .message = "guest shut down"};
        case KVM_SYSTEM_EVENT_RESET:
          return {.stop = true, .reason = StopReason::Reset, .message = "guest reset"};
        default:
          return error(fmt::format("unexpected KVM system event {}", run.system_event.type));
      }
    case KVM_EXIT_FAIL_ENTRY:
      return error(fmt::format("KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {:#x} on CPU {}",
                               static_cast<uint64_t>(run.fail_entry.hardware_entry_failure_reason),
                               run.fail_entry.cpu));
    case KVM_EXIT_INTERNAL_ERROR:
      return error(describe_internal_error(run));
    default:
      return error(fmt::format("unhandled KVM exit reason {}", run.exit_reason));
  }
}

}  // namespace vmm
