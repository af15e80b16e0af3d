#include <csignal>

#include "vmm/cli/cli.hpp"
#include "vmm/vm.hpp"

int main(int argc, char** argv) {
  // Before any thread exists, so that every thread inherits the mask (see Vm::run()).
  vmm::Vm::block_signals();
  // A console or a listing written to a pipe whose reader has gone (`vmm run ... | head`) is
  // dropped (EPIPE), not the end of the VM: SIGPIPE would kill the process with its terminal raw
  // and its disks unflushed (the HTTP plugin, once loaded, ignored it, so it depended on that).
  ::signal(SIGPIPE, SIG_IGN);
  return vmm::cli::main(argc, argv);
}
