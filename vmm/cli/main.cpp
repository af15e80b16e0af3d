#include "vmm/cli/cli.hpp"
#include "vmm/vm.hpp"

int main(int argc, char** argv) {
  // Before any thread exists, so that every thread inherits the mask (see Vm::run()).
  vmm::Vm::block_signals();
  return vmm::cli::main(argc, argv);
}
