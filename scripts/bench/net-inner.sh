#!/bin/sh
# The network benchmark's measurement (POSIX sh: runs on the host, in a network namespace of its
# own, or inside the nested lane's L1). The test guest's net-bench workload (20000 frames of 1514
# bytes sent one at a time, after the host's first frame) under vmm and under QEMU (virtio-net-pci,
# modern, on a TAP), RUNS times each, interleaved. Wall and CPU time (busybox time) minus the same
# VMM running net-bench0 (the same boot and handshake, no frames). Prints medians and ratios.
# usage: net-inner.sh VMM QEMU QEMU_DATA_DIR TESTGUEST RUNS
vmm=$1 qemu=$2 qemu_dir=$3 guest=$4 runs=$5
n=20000 tap=benchtap0
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
measure() {  # measure WHO SCENARIO → "wall cpu" in seconds
  $1 "$2"
  pid=$!
  i=0
  until ip link show $tap >/dev/null 2>&1; do i=$((i + 1)); [ $i -gt 300 ] && break; sleep 0.05; done
  echo 1 >/proc/sys/net/ipv6/conf/$tap/disable_ipv6 2>/dev/null
  ip link set $tap up
  # Once the guest's driver is up (it prints its MAC, then posts receive buffers), the frames that
  # start it.
  i=0
  until grep -q "net: mac" /tmp/bench.out; do i=$((i + 1)); [ $i -gt 600 ] && break; sleep 0.05; done
  sleep 0.2
  busybox arping -c 3 -w 3 -I $tap 10.0.2.9 >/dev/null 2>&1
  wait $pid
  st=$?
  [ $st = 1 ] || { echo "net bench: $1 $2 failed (status $st):" >&2; cat /tmp/bench.out >&2; exit 1; }
  grep -q "net-bench: sent" /tmp/bench.out || { echo "net bench: $1 $2: the guest did not finish" >&2; exit 1; }
  tail -n 1 /tmp/bench.time | awk '{ print $1, $2 + $3 }'
}
: >/tmp/rows
: >/tmp/raw
i=0
while [ $i -lt "$runs" ]; do
  for who in ours peer; do
    set -- $(measure $who net-bench)
    [ $# = 2 ] || exit 1
    w=$1 c=$2
    set -- $(measure $who net-bench0)
    [ $# = 2 ] || exit 1
    echo "$who $(awk "BEGIN { print ($w - $1), ($c - $2) }")" >>/tmp/rows
    echo "  run $i $who: workload ${w} s wall ${c} s CPU; baseline ${1} s wall ${2} s CPU" >>/tmp/raw
  done
  i=$((i + 1))
done
median() { grep "^$1 " /tmp/rows | awk -v col="$2" '{ print $col }' | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ow=$(median ours 2) oc=$(median ours 3) pw=$(median peer 2) pc=$(median peer 3)
echo "net benchmark: test guest net-bench, $n frames of 1514 bytes sent one at a time to a TAP, $runs runs each (medians; baseline subtracted)"
awk -v n=$n -v ow="$ow" -v oc="$oc" -v pw="$pw" -v pc="$pc" 'BEGIN {
  printf "                      %12s %12s %8s\n", "ours", "qemu", "ratio"
  printf "  frames/s            %12.0f %12.0f %7.2fx (ours / qemu)\n", n / ow, n / pw, pw / ow
  printf "  Mbit/s              %12.1f %12.1f\n", n * 1514 * 8 / 1e6 / ow, n * 1514 * 8 / 1e6 / pw
  printf "  host CPU us/frame   %12.1f %12.1f %7.2fx (qemu / ours)\n", oc * 1e6 / n, pc * 1e6 / n, (oc > 0 ? pc / oc : 0)
}'
echo "raw runs:"
cat /tmp/raw
