#!/bin/sh
# The network benchmark's measurement (POSIX sh: runs on the host, in a network namespace of its
# own, or inside the nested lane's L1). The test guest's net-bench workload (20000 frames of 1514
# bytes sent one at a time, after the host's first frame) under vmm and under QEMU (virtio-net-pci,
# modern, on a TAP), RUNS times each, interleaved. For each run: the time the guest measured for
# its 20000 frames (TSC), and the CPU time each VMM thread spent meanwhile, split into the device
# path (every thread but the vCPUs) and the vCPUs (inner-lib.sh). Prints medians and ratios.
# usage: net-inner.sh VMM QEMU QEMU_DATA_DIR TESTGUEST RUNS
vmm=$1 qemu=$2 qemu_dir=$3 guest=$4 runs=$5
n=20000 tap=benchtap0
. "$(dirname "$0")/inner-lib.sh"
ours() {
  "$vmm" run --kernel "$guest" --memory 64M --cmdline "$1" --net "tap=$tap" <$bench_in >/tmp/bench.out 2>&1 &
}
# -cpu max,-arch-capabilities rather than host: QEMU dies setting MSR 0x10a on some KVM hosts.
# debug-threads=on: QEMU names its threads ("CPU 0/KVM", "worker", ...) only when asked to.
peer() {
  "$qemu" -L "$qemu_dir" -name bench,debug-threads=on -M pc -accel kvm -cpu max,-arch-capabilities -m 64M -nodefaults \
    -no-user-config -display none -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=4 -kernel "$guest" \
    -append "$1" -netdev "tap,id=n,ifname=$tap,script=no,downscript=no" \
    -device virtio-net-pci,netdev=n,disable-legacy=on,romfile= <$bench_in >/tmp/bench.out 2>&1 &
}
# While the VMM starts (in the background): bring its TAP up without IPv6 (its link-up chatter
# would reach the guest), and once the guest's driver is up (it prints its MAC, then posts receive
# buffers) send a frame a second until the guest starts its work (its first sync).
prepare() {
  i=0
  until ip link show $tap >/dev/null 2>&1; do i=$((i + 1)); [ $i -gt 300 ] && break; sleep 0.05; done
  # IPv6 is off on the TAP by the default net.sh set before it existed (a write to the TAP's own
  # setting would race with its creation).
  ip link set $tap up
  i=0
  until grep -q "net: mac" /tmp/bench.out; do i=$((i + 1)); [ $i -gt 600 ] && break; sleep 0.05; done
  i=0
  until grep -q "net-bench: sync" /tmp/bench.out; do
    i=$((i + 1)); [ $i -gt 30 ] && break
    busybox arping -c 1 -w 1 -I $tap 10.0.2.9 >/dev/null 2>&1
  done
}
run_pairs "$runs" net-bench "net-bench: sent $n"
echo "net benchmark: test guest net-bench, $n frames of 1514 bytes sent one at a time to a TAP, $runs runs each" \
  "(medians; time measured by the guest, CPU per thread between the guest's syncs)"
report $n frame 1514
