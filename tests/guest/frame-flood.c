// frame-flood IFACE: sends Ethernet frames of 3000 bytes (broadcast, EtherType 0x88b5, the local
// experimental one) on IFACE as fast as it can, until it is killed. tests/guest/pause-flood.sh
// floods a VM's TAP with it: frames longer than the test guest's receive buffers, which the device
// must read and drop. (A C program rather than a script: the nested lane's L1 has no Python.)
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: frame-flood IFACE\n");
    return 2;
  }
  const unsigned index = if_nametoindex(argv[1]);
  if (index == 0) {
    perror(argv[1]);
    return 1;
  }
  const int s = socket(AF_PACKET, SOCK_RAW, 0);
  if (s < 0) {
    perror("socket(AF_PACKET)");
    return 1;
  }
  struct sockaddr_ll at = {.sll_family = AF_PACKET, .sll_protocol = 0, .sll_ifindex = (int)index};
  if (bind(s, (struct sockaddr*)&at, sizeof at) != 0) {
    perror("bind");
    return 1;
  }
  static unsigned char frame[3000];
  memset(frame, 0xff, 6);                                            // to: broadcast
  memcpy(frame + 6, "\x02\x00\x00\x00\x00\x01", 6);                  // from: a local address
  frame[12] = 0x88, frame[13] = 0xb5;                                // local experimental EtherType
  for (;;) (void)send(s, frame, sizeof frame, 0);  // (a full queue: ENOBUFS, tried again)
}
