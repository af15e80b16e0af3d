#!/bin/sh
# The disk benchmark's measurement (POSIX sh: runs on the host or inside the nested lane's L1).
# The test guest's blk-bench workload (4000 reads of 4 KiB, one at a time) under vmm and under QEMU
# (virtio-blk-pci, modern, on the same raw file through io_uring), RUNS times each, interleaved.
# For each run: the time the guest measured for its 4000 requests (TSC), and the CPU time each VMM
# thread spent meanwhile, split into the device path (every thread but the vCPUs) and the vCPUs
# (inner-lib.sh). Prints medians per request and the ratios.
# usage: disk-inner.sh VMM QEMU QEMU_DATA_DIR TESTGUEST IMAGE RUNS
vmm=$1 qemu=$2 qemu_dir=$3 guest=$4 img=$5 runs=$6
n=4000
. "$(dirname "$0")/inner-lib.sh"
ours() {
  "$vmm" run --kernel "$guest" --memory 64M --cmdline "$1" --disk "path=$img" <$bench_in >/tmp/bench.out 2>&1 &
}
# -cpu max,-arch-capabilities rather than host: QEMU dies setting MSR 0x10a on some KVM hosts.
# debug-threads=on: QEMU names its threads ("CPU 0/KVM", "worker", ...) only when asked to.
peer() {
  "$qemu" -L "$qemu_dir" -name bench,debug-threads=on -M pc -accel kvm -cpu max,-arch-capabilities -m 64M -nodefaults \
    -no-user-config -display none -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=4 -kernel "$guest" \
    -append "$1" -drive "file=$img,if=none,id=d,format=raw,aio=io_uring" \
    -device virtio-blk-pci,drive=d,disable-legacy=on <$bench_in >/tmp/bench.out 2>&1 &
}
run_pairs "$runs" blk-bench "blk-bench: $n reads"
echo "disk benchmark: test guest blk-bench, $n reads of 4 KiB at queue depth 1, $runs runs each (medians;" \
  "time measured by the guest, CPU per thread between the guest's syncs)"
report $n request 4096
