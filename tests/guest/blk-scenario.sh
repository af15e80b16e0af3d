#!/bin/sh
# One virtio-blk scenario of the test guest against a fresh copy of a disk image, in either lane
# (POSIX sh: it also runs in the nested lane's busybox). Checks vmm's exit status (1: the guest
# exited with 0), a console line, optionally a line of vmm's stderr, and that the disk ends up
# byte for byte as EXPECTED (for hostile scenarios: unchanged). With BLK_QCOW2=1 the guest's disk is
# a qcow2 overlay (`vmm disk create --backing`) of the copy: then the overlay, flattened by qemu-img,
# must be EXPECTED, qemu-img check must find it clean, and the copy under it must be untouched.
# usage: blk-scenario.sh VMM TESTGUEST BASE EXPECTED SCENARIO CONSOLE-TEXT [STDERR-TEXT] [--needs-kvm]
vmm=$1 guest=$2 base=$3 expected=$4 scenario=$5 want=$6 want_err=${7:-}
if [ "${8:-}" = --needs-kvm ] && ! { [ -r /dev/kvm ] && [ -w /dev/kvm ]; }; then
  echo "SKIP: /dev/kvm is not usable here"
  exit 77
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$base" "$work/disk.img"
disk=$work/disk.img
if [ "${BLK_QCOW2:-0}" = 1 ]; then
  disk=$work/disk.qcow2
  "$vmm" disk create "$disk" --backing "$work/disk.img" --backing-format raw || { echo "blk-scenario: vmm disk create failed"; exit 1; }
fi
"$vmm" run --kernel "$guest" --memory 64M --cmdline "$scenario" --disk "path=$disk,id=tgdisk" \
  </dev/null >"$work/out" 2>"$work/err" &
pid=$!
fail=0
bad() { echo "blk-scenario $scenario: FAIL: $*"; fail=1; }
# A watchdog that shows where every vmm thread is before killing a hung run.
deadline=$(($(date +%s) + 120))  # wall clock: a loaded nested lane stretches every sleep
while kill -0 $pid 2>/dev/null && [ "$(date +%s)" -lt $deadline ]; do sleep 0.1; done
if kill -0 $pid 2>/dev/null; then
  bad "vmm still running after 120 s; its threads:"
  for t in /proc/$pid/task/*; do
    echo "  $(cat "$t/comm") wchan=$(cat "$t/wchan" 2>/dev/null) state/utime/stime=$(cut -d' ' -f3,14,15 "$t/stat")"
    sed 's/^/    /' "$t/stack" 2>/dev/null | head -12
  done
  kill -9 $pid
fi
wait $pid
status=$?
[ $status = 1 ] || bad "exit status $status, expected 1 (the guest's 0)"
grep -q -- "$want" "$work/out" || bad "no console line with '$want'"
[ -z "$want_err" ] || grep -q -- "$want_err" "$work/err" || bad "vmm's stderr has no '$want_err'"
if [ "${BLK_QCOW2:-0}" = 1 ]; then
  qemu-img check -q "$disk" || bad "qemu-img check finds problems in the overlay"
  qemu-img convert -f qcow2 -O raw "$disk" "$work/flat.img" || bad "qemu-img convert failed"
  cmp -s "$work/flat.img" "$expected" || bad "the overlay does not read as a correct device leaves it ($expected)"
  cmp -s "$work/disk.img" "$base" || bad "the backing file changed"
else
  cmp -s "$work/disk.img" "$expected" || bad "the disk is not what a correct device leaves ($expected)"
fi
if [ $fail != 0 ]; then
  echo "--- console ---"; cat "$work/out"; echo "--- stderr ---"; cat "$work/err"
else
  echo "blk-scenario $scenario${BLK_QCOW2:+ (qcow2=$BLK_QCOW2)}: PASS"
fi
exit $fail
