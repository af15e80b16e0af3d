#include <fcntl.h>

#include <cerrno>
#include <csignal>
#include <cstdio>

#include "vmm/cli/cli.hpp"
#include "vmm/vm.hpp"

int main(int argc, char** argv) {
  // Descriptors 0, 1 and 2 open before anything else is: started with one closed (`2>&-`, a
  // careless supervisor), the next file opened would take its number, a disk image perhaps, and
  // every warning printed to stderr would be written into it.
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) < 0 && errno == EBADF && ::open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) < 0) return 1;
  }
  // Before any thread exists, so that every thread inherits the mask (see Vm::run()).
  vmm::Vm::block_signals();
  // A console or a listing written to a pipe whose reader has gone (`vmm run ... | head`) is
  // dropped (EPIPE), not the end of the VM: SIGPIPE would kill the process with its terminal raw
  // and its disks unflushed (the HTTP plugin, once loaded, ignored it, so it depended on that).
  ::signal(SIGPIPE, SIG_IGN);
  const int status = vmm::cli::main(argc, argv);
  // Output that could not be written (a listing to a full disk) fails the command (vmm/base/fmt.cpp).
  if ((std::fflush(stdout) != 0 || std::ferror(stdout)) && status == 0) return 1;
  return status;
}
