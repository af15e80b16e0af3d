#!/bin/sh
# The disk benchmark's measurement (POSIX sh: runs on the host or inside the nested lane's L1).
# The test guest's blk-bench workload (4000 reads of 4 KiB, one at a time) under vmm and under QEMU
# (virtio-blk-pci, modern, on the same raw file through io_uring), RUNS times each, interleaved.
# For each run: wall time and the VMM process's CPU time (user + sys, from busybox time), minus
# the same VMM booting the same guest with the `hello` scenario (boot and teardown), so that what is
# left is the workload's cost. Prints medians per request and the ratios.
# usage: disk-inner.sh VMM QEMU QEMU_DATA_DIR TESTGUEST IMAGE RUNS
vmm=$1 qemu=$2 qemu_dir=$3 guest=$4 img=$5 runs=$6
n=4000
ours() {
  busybox time -f "%e %U %S" -o /tmp/bench.time "$vmm" run --kernel "$guest" --memory 64M --cmdline "$1" --disk "path=$img" </dev/null >/tmp/bench.out 2>&1
}
peer() {
  busybox time -f "%e %U %S" -o /tmp/bench.time "$qemu" -L "$qemu_dir" -M pc -accel kvm -cpu host -m 64M -nodefaults -no-user-config -display none \
    -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=4 -kernel "$guest" -append "$1" \
    -drive "file=$img,if=none,id=d,format=raw,aio=io_uring" -device virtio-blk-pci,drive=d,disable-legacy=on \
    </dev/null >/tmp/bench.out 2>&1
}
measure() {  # measure WHO SCENARIO → "wall cpu" in seconds
  $1 "$2"
  st=$?
  [ $st = 1 ] || { echo "disk bench: $1 $2 failed (status $st):" >&2; cat /tmp/bench.out >&2; exit 1; }
  tail -n 1 /tmp/bench.time | awk '{ print $1, $2 + $3 }'
}
: >/tmp/rows
: >/tmp/raw
i=0
while [ $i -lt "$runs" ]; do
  for who in ours peer; do
    set -- $(measure $who blk-bench)
    [ $# = 2 ] || exit 1
    w=$1 c=$2
    grep -q "blk-bench: $n reads" /tmp/bench.out || { echo "disk bench: $who: the guest did not finish:" >&2; cat /tmp/bench.out >&2; exit 1; }
    set -- $(measure $who hello)
    [ $# = 2 ] || exit 1
    echo "$who $(awk "BEGIN { print ($w - $1), ($c - $2) }")" >>/tmp/rows
    echo "  run $i $who: workload ${w} s wall ${c} s CPU; boot only ${1} s wall ${2} s CPU" >>/tmp/raw
  done
  i=$((i + 1))
done
median() { grep "^$1 " /tmp/rows | awk -v col="$2" '{ print $col }' | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ow=$(median ours 2) oc=$(median ours 3) pw=$(median peer 2) pc=$(median peer 3)
echo "disk benchmark: test guest blk-bench, $n reads of 4 KiB at queue depth 1, $runs runs each (medians; boot cost subtracted)"
awk -v n=$n -v ow="$ow" -v oc="$oc" -v pw="$pw" -v pc="$pc" 'BEGIN {
  printf "                      %12s %12s %8s\n", "ours", "qemu", "ratio"
  printf "  requests/s          %12.0f %12.0f %7.2fx (ours / qemu)\n", n / ow, n / pw, pw / ow
  printf "  MiB/s               %12.2f %12.2f\n", n * 4 / 1024 / ow, n * 4 / 1024 / pw
  printf "  host CPU us/request %12.1f %12.1f %7.2fx (qemu / ours)\n", oc * 1e6 / n, pc * 1e6 / n, (oc > 0 ? pc / oc : 0)
}'
echo "raw runs:"
cat /tmp/raw
