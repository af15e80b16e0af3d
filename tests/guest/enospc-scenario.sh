#!/bin/sh
# A full file system under a clone, a template and a full clone, through the real binary: the state
# directory is a 2 MiB tmpfs in a mount namespace of this script's own (gone with it).
#  - A linked clone's guest (blk-serve) writes new clusters until its overlay fills the file system:
#    the write that needs space fails (the guest gets an I/O error), and so does a flush; once space
#    is freed a flush succeeds, and every write that went through reads back, the one that failed
#    reads as the template's disk; qemu-img check finds leaked clusters at most.
#  - `vmm template create` and `vmm run --clone-of T --full` that run out of space stop with one line
#    naming the file and leave nothing behind.
# usage: enospc-scenario.sh VMM TESTGUEST [--needs-kvm]
vmm=$1 guest=$2
if [ "${3:-}" = --needs-kvm ] && ! { [ -r /dev/kvm ] && [ -w /dev/kvm ]; }; then
  echo "SKIP: /dev/kvm is not usable here"; exit 77
fi
if [ -z "${VMM_TEST_INSIDE:-}" ]; then  # (set when it runs itself again inside its namespace)
  command -v unshare >/dev/null && unshare --mount --propagation private true 2>/dev/null ||
    { echo "SKIP: cannot make a mount namespace (unshare --mount)"; exit 77; }
  exec unshare --mount --propagation private env VMM_TEST_INSIDE=1 sh "$0" "$vmm" "$guest"
fi

work=$(mktemp -d /var/tmp/vmm-enospc.XXXXXX)
vm=
trap '[ -n "$vm" ] && kill -9 $vm 2>/dev/null; wait; umount "$work/small" 2>/dev/null; chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
mkdir "$work/small"
mount -t tmpfs -o size=2m tmpfs "$work/small" || { echo "SKIP: cannot mount a tmpfs"; exit 77; }
fail=0
ok() { echo "enospc: ok   $1"; }
bad() { echo "enospc: FAIL $1"; fail=1; }

# The template (in a state directory with room): blk-serve on a 64 MiB raw disk of 0x54 bytes.
big="$work/big"
head -c 67108864 /dev/zero | tr '\0' 'T' >"$work/disk.raw"
VMM_STATE_DIR=$big "$vmm" template create "$work/T" --kernel "$guest" --cmdline blk-serve --ready-on "blk-serve: ready" \
  --console none --disk "path=$work/disk.raw,format=raw" >"$work/create.out" 2>&1 || { cat "$work/create.out"; bad "template"; exit 1; }
VMM_STATE_DIR=$big "$vmm" template create "$work/D" --kernel "$guest" --cmdline "dirty 16" --ready-on "dirty: ready" \
  --console none >"$work/create.out" 2>&1 || { cat "$work/create.out"; bad "dirty template"; exit 1; }

export VMM_STATE_DIR="$work/small/state"
# A filler to free later: 512 KiB.
mkdir -p "$VMM_STATE_DIR"
head -c 524288 /dev/zero >"$work/small/filler"

# The clone's console through a FIFO: each command waits for its answer.
mkfifo "$work/in"
"$vmm" run --clone-of "$work/T" --name full1 --console stdio <"$work/in" >"$work/out" 2>"$work/err" &
vm=$!
exec 3>"$work/in"
lines=0
# say COMMAND: sends it and waits (10 s at most) for the next line of output, left in $reply.
say() {
  echo "$1" >&3
  i=0
  while [ "$(wc -l <"$work/out")" -le "$lines" ]; do
    i=$((i + 1)); [ $i -gt 200 ] && { reply="(no answer to '$1')"; return 1; }; sleep 0.05
  done
  lines=$((lines + 1))
  reply=$(sed -n "${lines}p" "$work/out")
}
# (The template was saved after its ready line: the clone's console starts with its first answer.)
i=0
until [ -S "$VMM_STATE_DIR/run/full1/api.sock" ]; do
  i=$((i + 1)); [ $i -gt 200 ] && { cat "$work/err"; bad "the clone did not start"; exit 1; }; sleep 0.05
done
# One sector in each new 64 KiB cluster until a write fails.
n=0 failed_at=
while [ $n -lt 64 ]; do
  say "write $((n * 128)) $((n + 1))"
  case "$reply" in
    "blk-serve: wrote "*) n=$((n + 1)) ;;
    "blk-serve: write failed") failed_at=$n; break ;;
    *) bad "write $n: '$reply'"; break ;;
  esac
done
[ -n "$failed_at" ] && [ "$failed_at" -ge 2 ] && ok "writes went through until the file system was full ($failed_at), then failed" ||
  bad "no write failed, or too few went through (${failed_at:-none} of $n)"
grep -q "No space left on device" "$work/err" && ok "vmm said why (No space left on device)" || bad "no ENOSPC on stderr"
say flush
[ "$reply" = "blk-serve: flush failed" ] && ok "a flush fails while the overlay's metadata has no room" || bad "flush while full: $reply"
rm "$work/small/filler"
say flush
[ "$reply" = "blk-serve: flushed" ] && ok "with space freed, a flush succeeds" || bad "flush after freeing space: $reply"
read_ok=1
for k in 0 1 $((failed_at - 1)); do
  want=$(printf 'blk-serve: sector %d byte=0x%x' $((k * 128)) $((k + 1)))
  say "read $((k * 128))"
  [ "$reply" = "$want" ] || { bad "sector $((k * 128)): '$reply', not '$want'"; read_ok=0; }
done
say "read $((failed_at * 128))"
[ "$reply" = "blk-serve: sector $((failed_at * 128)) byte=0x54" ] && [ $read_ok = 1 ] &&
  ok "what was written reads back, the failed write's sector reads as the template's" || bad "the failed write's sector: $reply"
say "write 9000 7"
w=$reply
say flush
[ "$w" = "blk-serve: wrote 9000" ] && [ "$reply" = "blk-serve: flushed" ] && ok "writes and flushes go on" ||
  bad "a write after freeing space: $w / $reply"
echo quit >&3
exec 3>&-
wait $vm
status=$?
vm=
# (Status 1: the guest's own exit 0 through the debug-exit port, (0 << 1) | 1.)
[ $status = 1 ] && ok "the clone ends as its guest says (quit)" || { bad "the clone ended with status $status"; cat "$work/err"; }
if command -v qemu-img >/dev/null; then
  qemu-img check -q "$VMM_STATE_DIR/clones/full1/disk/disk0.qcow2" >"$work/check" 2>&1
  c=$?
  [ $c = 0 ] || [ $c = 3 ] && ok "qemu-img check: $c (0 clean, 3 leaked clusters only)" || { bad "qemu-img check: $c"; cat "$work/check"; }
fi
"$vmm" clone rm full1 >/dev/null 2>&1

# A template and a full clone that do not fit: one line, nothing left behind.
"$vmm" template create dirty --kernel "$guest" --cmdline "dirty 16" --ready-on "dirty: ready" --console none >"$work/t.out" 2>&1
st=$?
[ $st != 0 ] && grep -q "No space left on device" "$work/t.out" && [ "$(wc -l <"$work/t.out")" = 1 ] &&
  ok "template create on a full file system: status $st, one line" || { bad "template create: status $st"; cat "$work/t.out"; }
[ -z "$(ls -A "$VMM_STATE_DIR/templates" 2>/dev/null)" ] && ok "no template left behind" || { bad "left behind:"; ls -la "$VMM_STATE_DIR/templates"; }
"$vmm" run --clone-of "$work/D" --full --name fc --console none >"$work/f.out" 2>&1 </dev/null
st=$?
[ $st != 0 ] && grep -q "No space left on device" "$work/f.out" && [ "$(wc -l <"$work/f.out")" = 1 ] &&
  ok "a full clone on a full file system: status $st, one line" || { bad "full clone: status $st"; cat "$work/f.out"; }
[ -z "$(ls -A "$VMM_STATE_DIR/clones" 2>/dev/null)" ] && ok "no clone left behind" || { bad "left behind:"; ls -la "$VMM_STATE_DIR/clones"; }
exit $fail
