#!/usr/bin/env bash
# `vmm template create` copies each disk under a shared lock, as a VM reading it holds one: a disk
# another VM writes (locked exclusive; flock(1) holds it here) is refused with status 6 and one line
# before anything boots (it was copied in the middle of that VM's writes), and no template is left.
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
exit $fail
