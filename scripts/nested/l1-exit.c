// Ends the nested lane's L1 guest with a status: writes it to QEMU's isa-debug-exit port (0xf4), so
// that qemu-system-x86_64 exits with (status << 1) | 1, then powers off as a fallback. Linked
// statically and run as root inside L1 (Debian's kernel has no /dev/port).
// usage: l1-exit STATUS   (0..127)
#include <stdio.h>
#include <stdlib.h>
#include <sys/io.h>
#include <sys/reboot.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: l1-exit STATUS\n");
    return 2;
  }
  long status = strtol(argv[1], NULL, 0);
  if (status < 0 || status > 127) status = 127;
  sync();
  if (ioperm(0xf4, 1, 1) == 0) outb((unsigned char)status, 0xf4);
  else perror("l1-exit: ioperm");
  reboot(RB_POWER_OFF);
  perror("l1-exit: reboot");
  return 1;
}
