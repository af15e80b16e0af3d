#!/bin/sh
# The network benchmark's measurement (POSIX sh: runs on the host, in a network namespace of its
# own, or inside the nested lane's L1). The test guest's net-bench workload (20000 frames of 1514
# bytes sent one at a time, after the host's first frame) under vmm and under QEMU (virtio-net-pci,
# modern, on a TAP), RUNS times each, interleaved. Wall and CPU time (busybox time) minus the same
# VMM running net-bench0 (the same boot and handshake, no frames). Prints medians and ratios.
# usage: net-inner.sh VMM QEMU QEMU_DATA_DIR TESTGUEST RUNS
vmm=$1 qemu=$2 qemu_dir=$3 guest=$4 runs=$5
n=20000 tap=benchtap0
. "$(dirname "$0")/inner-lib.sh"
ours() {
  busybox time -f "%e %U %S" -o /tmp/bench.time "$vmm" run --kernel "$guest" --memory 64M --cmdline "$1" \
    --net "tap=$tap" </dev/null >/tmp/bench.out 2>&1 &
}
peer() {
  busybox time -f "%e %U %S" -o /tmp/bench.time "$qemu" -L "$qemu_dir" -M pc -accel kvm -cpu host -m 64M -nodefaults \
    -no-user-config -display none -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=4 -kernel "$guest" \
    -append "$1" -netdev "tap,id=n,ifname=$tap,script=no,downscript=no" \
    -device virtio-net-pci,netdev=n,disable-legacy=on,romfile= </dev/null >/tmp/bench.out 2>&1 &
}
# While the VMM starts: bring its TAP up (without IPv6 chatter) and, once the guest's driver is up
# (it prints its MAC, then posts receive buffers), send the frames that start it.
prepare() {
  i=0
  until ip link show $tap >/dev/null 2>&1; do i=$((i + 1)); [ $i -gt 300 ] && break; sleep 0.05; done
  echo 1 >/proc/sys/net/ipv6/conf/$tap/disable_ipv6 2>/dev/null
  ip link set $tap up
  i=0
  until grep -q "net: mac" /tmp/bench.out; do i=$((i + 1)); [ $i -gt 600 ] && break; sleep 0.05; done
  sleep 0.2
  busybox arping -c 3 -w 3 -I $tap 10.0.2.9 >/dev/null 2>&1
}
run_pairs "$runs" net-bench net-bench0 "net-bench: sent $n"
echo "net benchmark: test guest net-bench, $n frames of 1514 bytes sent one at a time to a TAP, $runs runs each (medians; baseline subtracted)"
report $n frame 1514
