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
. "$(dirname "$0")/inner-lib.sh"
ours() {
  busybox time -f "%e %U %S" -o /tmp/bench.time "$vmm" run --kernel "$guest" --memory 64M --cmdline "$1" \
    --disk "path=$img" </dev/null >/tmp/bench.out 2>&1 &
}
peer() {
  busybox time -f "%e %U %S" -o /tmp/bench.time "$qemu" -L "$qemu_dir" -M pc -accel kvm -cpu host -m 64M -nodefaults \
    -no-user-config -display none -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=4 -kernel "$guest" \
    -append "$1" -drive "file=$img,if=none,id=d,format=raw,aio=io_uring" \
    -device virtio-blk-pci,drive=d,disable-legacy=on </dev/null >/tmp/bench.out 2>&1 &
}
run_pairs "$runs" blk-bench hello "blk-bench: $n reads"
echo "disk benchmark: test guest blk-bench, $n reads of 4 KiB at queue depth 1, $runs runs each (medians; boot cost subtracted)"
report $n request 4096
