#!/usr/bin/env bash
# `vmm template create` copies each disk under a shared lock, as a VM reading it holds one: a disk
# another VM writes (locked exclusive; flock(1) holds it here) is refused with status 6 and one line
# before anything boots (it was copied in the middle of that VM's writes), and no template is left;
# so is a disk a QEMU writes (its byte-range locks).
# Through the real binary, without KVM. usage: template-disk-lock.sh VMM KERNEL
set -u
vmm=$1 kernel=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export VMM_STATE_DIR="$work/state"
truncate -s 1M "$work/disk.img"
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }
flock -o -x "$work/disk.img" "$vmm" template create t --kernel "$kernel" --disk path="$work/disk.img" --ready-on x \
  >"$work/out" 2>&1; st=$?
check "a disk locked by a writer: status 6" '[ $st = 6 ]'
check "one line naming it" '[ "$(wc -l <"$work/out")" = 1 ] && grep -q "disk.img: locked by another process" "$work/out"'
check "no template left" '[ ! -e "$VMM_STATE_DIR/templates/t" ] && [ -z "$(ls -A "$VMM_STATE_DIR/templates" 2>/dev/null)" ]'
[ $fail = 0 ] || cat "$work/out"

# A disk QEMU writes (QEMU's own byte-range locks, which flock does not see): refused the same way.
if command -v qemu-system-x86_64 >/dev/null; then
  qemu-system-x86_64 -S -display none -monitor none -serial none -nodefaults \
    -drive file="$work/disk.img",format=raw,if=virtio >"$work/qemu.out" 2>&1 &
  qemu=$!
  trap 'kill $qemu 2>/dev/null; wait $qemu 2>/dev/null; rm -rf "$work"' EXIT
  # Until QEMU holds its write lock: an open-file-description lock over byte 101 of the disk's inode
  # in /proc/locks (looked at, not tested by taking a lock, which QEMU's own test could then meet).
  ino=$(stat -c %i "$work/disk.img")
  held() { awk -v ino="$ino" '$2 == "OFDLCK" { split($6, d, ":"); if (d[3] == ino && $7 <= 101 && ($8 == "EOF" || $8 >= 101)) found = 1 } END { exit !found }' /proc/locks; }
  for _ in $(seq 200); do
    held && break
    kill -0 $qemu 2>/dev/null || break
    sleep 0.05
  done
fi
if command -v qemu-system-x86_64 >/dev/null && held; then
  "$vmm" template create t --kernel "$kernel" --disk path="$work/disk.img" --ready-on x >"$work/out" 2>&1; st=$?
  check "a disk QEMU writes: status 6" '[ $st = 6 ]'
  check "one line naming QEMU" '[ "$(wc -l <"$work/out")" = 1 ] && grep -q "disk.img: locked by another process (QEMU or qemu-img has it open for write)" "$work/out"'
  check "no template left" '[ -z "$(ls -A "$VMM_STATE_DIR/templates" 2>/dev/null)" ]'
  [ $fail = 0 ] || cat "$work/out" "$work/qemu.out"
else
  echo "skip QEMU's locks: no qemu-system-x86_64 holding the disk ($(tail -1 "$work/qemu.out" 2>/dev/null))"
fi
exit $fail
