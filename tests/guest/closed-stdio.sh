#!/usr/bin/env bash
# vmm started with stdout and stderr closed (`>&- 2>&-`, a careless supervisor): the files it opens
# must not take descriptors 1 and 2 (its messages would be written into them: a disk image), and it
# ends as it would otherwise (here: no KVM device, status 4), not with an abort.
# Through the real binary, without KVM. usage: closed-stdio.sh VMM KERNEL
set -u
vmm=$1 kernel=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -c 1048576 /dev/zero >"$work/disk.img"
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }
( exec >&- 2>&-; "$vmm" run --kernel "$kernel" --disk path="$work/disk.img" --kvm-device /nonexistent/kvm --state-dir "$work/state"
  echo $? >"$work/status" ) </dev/null
check "status 4 (no KVM device), not an abort" '[ "$(cat "$work/status")" = 4 ]'
check "the disk image is untouched" 'cmp -s "$work/disk.img" <(head -c 1048576 /dev/zero)'
( exec >&- 2>&-; "$vmm" disk create "$work/new.qcow2" --size 1M; echo $? >"$work/status" ) </dev/null
check "disk create: status 0" '[ "$(cat "$work/status")" = 0 ]'
check "disk create: the new image holds no message" '! grep -aq "new.qcow2" "$work/new.qcow2" && qemu-img check -q "$work/new.qcow2"'
exit $fail
