#!/bin/sh
# A guest's disk whose flush fails, through the real binary, in either lane (POSIX sh: it also runs
# in the nested lane's busybox). The disk lives on failfs (tests/disk/failfs.c), whose fsync the test
# makes fail once, as a disk's failed write-back makes it fail. The test guest's blk-serve writes and
# flushes on command. Checked: the guest's flush reports the error (VIRTIO_BLK_S_IOERR); so does
# every later flush, although the file system would succeed again (the kernel reports a write-back
# error once and may have dropped the pages: a success would call lost writes durable), and the
# later ones never reach the file system; reads and writes go on; vmm says so in one line and
# exits as the guest asks. With BLK_QCOW2=1 the disk is a qcow2 overlay on failfs (the engine's
# own sync, on its worker thread); qemu-img then checks it.
# usage: blk-flush-error.sh VMM TESTGUEST FAILFS [--needs-kvm]
vmm=$1 guest=$2 failfs=$3
if [ "${4:-}" = --needs-kvm ] && ! { [ -r /dev/kvm ] && [ -w /dev/kvm ]; }; then
  echo "SKIP: /dev/kvm is not usable here"
  exit 77
fi
if [ "$(id -u)" != 0 ] || [ ! -c /dev/fuse ]; then
  echo "SKIP: failfs needs root and /dev/fuse"
  exit 77
fi
name=blk-flush-error
[ "${BLK_QCOW2:-0}" = 1 ] && name="$name (qcow2)"
work=$(mktemp -d)
vmmpid='' fspid=''
cleanup() {
  [ -n "$vmmpid" ] && kill -9 "$vmmpid" 2>/dev/null
  exec 3>&-
  # Unmounted first: the kernel then ends failfs's connection, and its loop (a SIGTERM alone can
  # land just before libfuse reads /dev/fuse and be lost).
  umount -l "$work/mnt" 2>/dev/null
  if [ -n "$fspid" ]; then
    kill "$fspid" 2>/dev/null
    i=0
    while kill -0 "$fspid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    kill -9 "$fspid" 2>/dev/null
    wait "$fspid"
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap '' PIPE  # a vmm that ended early: writes to its input fail rather than end this script
fail=0
bad() { echo "$name: FAIL: $*"; fail=1; }
mkdir "$work/backing" "$work/mnt"
head -c 1048576 /dev/zero >"$work/backing/disk.img"
"$failfs" "$work/backing" "$work/mnt" &
fspid=$!
deadline=$(($(date +%s) + 10))
until grep -q " $work/mnt " /proc/self/mountinfo; do
  [ "$(date +%s)" -lt $deadline ] && kill -0 $fspid 2>/dev/null || { bad "failfs did not mount"; exit 1; }
  sleep 0.05
done
disk=$work/mnt/disk.img
if [ "${BLK_QCOW2:-0}" = 1 ]; then
  disk=$work/mnt/disk.qcow2
  "$vmm" disk create "$disk" --backing "$work/mnt/disk.img" --backing-format raw >/dev/null || { bad "vmm disk create"; exit 1; }
fi
file=${disk##*/}
mkfifo "$work/in"
"$vmm" run --kernel "$guest" --memory 64M --cmdline blk-serve --disk "path=$disk,id=tgdisk" \
  <"$work/in" >"$work/out" 2>"$work/err" &
vmmpid=$!
exec 3>"$work/in"

# until WANT N: waits (wall clock: a loaded nested lane stretches every sleep) until the console has
# N lines matching WANT.
until_lines() {
  deadline=$(($(date +%s) + 60))
  while [ "$(grep -c -- "$1" "$work/out")" -lt "$2" ]; do
    if [ "$(date +%s)" -ge $deadline ] || ! kill -0 $vmmpid 2>/dev/null; then
      bad "no console line '$1' (#$2)"
      return 1
    fi
    sleep 0.05
  done
}
# say LINE WANT: sends LINE to the guest and waits for one more console line matching WANT.
say() {
  n=$(grep -c -- "$2" "$work/out")
  echo "$1" >&3
  until_lines "$2" $((n + 1))
}

until_lines "blk-serve: ready" 1 &&
  say "write 300 51" "blk-serve: wrote 300$" &&
  say flush "blk-serve: flushed$" &&
  echo 1 >"$work/backing/.failfs-fsync" &&
  say "write 301 52" "blk-serve: wrote 301$" &&
  say flush "blk-serve: flush failed$" &&
  say flush "blk-serve: flush failed$" &&
  say "read 301" "blk-serve: sector 301 byte=0x34$" &&
  say "write 302 53" "blk-serve: wrote 302$" &&
  say "read 300" "blk-serve: sector 300 byte=0x33$"
echo quit >&3
exec 3>&-
deadline=$(($(date +%s) + 60))
while kill -0 $vmmpid 2>/dev/null && [ "$(date +%s)" -lt $deadline ]; do sleep 0.05; done
if kill -0 $vmmpid 2>/dev/null; then
  bad "vmm still running 60 s after quit"
  kill -9 $vmmpid
fi
wait $vmmpid
status=$?
vmmpid=''
[ $status = 1 ] || bad "exit status $status, expected 1 (the guest's 0)"
grep -q "blk-serve: flushed$" "$work/out" && [ "$(grep -c "flush failed" "$work/out")" = 2 ] ||
  bad "the guest's flushes: not one success, then two failures"
[ "$(cat "$work/backing/.failfs-fsync")" = 0 ] || bad "failfs did not fail the fsync it was asked to"
# The error in one line of vmm's, naming the disk.
grep -q "^vmm: virtio-blk .*/$file: I/O error: Input/output error$" "$work/err" || bad "no I/O error line naming $file"
if [ "${BLK_QCOW2:-0}" = 1 ]; then
  # The engine's worker says what failed; closing the overlay flushes it once more, which must fail
  # too, and says so.
  grep -q "^vmm: disk .*/$file: fdatasync: Input/output error (further errors on this disk are not logged)$" "$work/err" ||
    bad "no line from the qcow2 worker"
  grep -q "^vmm: .*/$file: an earlier fdatasync failed (Input/output error)" "$work/err" || bad "no close-time line"
  [ "$(wc -l <"$work/err")" = 3 ] || bad "vmm's stderr is not three lines"
else
  [ "$(wc -l <"$work/err")" = 1 ] || bad "vmm's stderr is not one line"
fi
# The file system saw one fsync fail and none after it: later flushes were refused before it.
awk -v f="$file" '$2 == f && seen { late = 1 } $1 == "EIO" && $2 == f { seen = 1 } END { exit late || !seen }' \
  "$work/backing/.failfs-log" || bad "the file system's fsyncs: not one EIO, last"
# What the guest wrote is in the image: 0x33, 0x34, 0x35 in sectors 300-302, zeroes elsewhere.
{
  head -c $((300 * 512)) /dev/zero
  for b in 063 064 065; do head -c 512 /dev/zero | tr '\0' "\\$b"; done
  head -c $(((2048 - 303) * 512)) /dev/zero
} >"$work/expected"
if [ "${BLK_QCOW2:-0}" = 1 ]; then
  qemu-img check -q "$work/backing/disk.qcow2" || bad "qemu-img check finds problems in the overlay"
  qemu-img convert -f qcow2 -O raw "$work/backing/disk.qcow2" "$work/flat" || bad "qemu-img convert failed"
  cmp -s "$work/flat" "$work/expected" || bad "the overlay does not hold what the guest wrote"
  head -c 1048576 /dev/zero >"$work/zero"
  cmp -s "$work/backing/disk.img" "$work/zero" || bad "the overlay's base image changed"
else
  cmp -s "$work/backing/disk.img" "$work/expected" || bad "the image does not hold what the guest wrote"
fi
# A file system that stops answering while the guest's flush waits on it, and the VM told to stop
# (failfs answers nothing for 15 s). Raw: the flush is io_uring's, submitted by the I/O thread,
# whose exit the kernel holds until its requests end: the flush completes, late, and the stop is a
# clean one (status 12). qcow2: the flush is the engine's, on its worker thread: the stop gives it
# 5 s, then says it was abandoned and exits with an error (10), for the guest's last writes may be
# lost (the worker is still joined, once failfs answers, before the process ends).
if [ $fail = 0 ]; then
  : >"$work/err"
  "$vmm" run --kernel "$guest" --memory 64M --cmdline blk-serve --disk "path=$disk,id=tgdisk" \
    <"$work/in" >"$work/out" 2>"$work/err" &
  vmmpid=$!
  exec 3>"$work/in"
  # (Asked for once the guest has written something to flush: opening an image or writing it may
  # sync it too.)
  until_lines "blk-serve: ready" 1 && say "write 310 54" "blk-serve: wrote 310$" &&
    echo 15 >"$work/backing/.failfs-stall" && echo flush >&3
  deadline=$(($(date +%s) + 30))
  until grep -q "^stall $file$" "$work/backing/.failfs-log" || [ "$(date +%s)" -ge $deadline ]; do sleep 0.05; done
  grep -q "^stall $file$" "$work/backing/.failfs-log" || bad "the guest's flush did not reach failfs"
  killed=$(date +%s)
  kill -TERM $vmmpid
  deadline=$(($(date +%s) + 60))
  while kill -0 $vmmpid 2>/dev/null && [ "$(date +%s)" -lt $deadline ]; do sleep 0.05; done
  kill -0 $vmmpid 2>/dev/null && { bad "vmm still running 60 s after SIGTERM"; kill -9 $vmmpid; }
  wait $vmmpid
  status=$?
  vmmpid=''
  exec 3>&-
  took=$(($(date +%s) - killed))
  if [ "${BLK_QCOW2:-0}" = 1 ]; then
    [ $status = 10 ] || bad "a stop that abandoned a request: exit status $status, expected 10 (after ${took} s)"
    grep -q "^vmm: error: 1 disk request still in flight 5 s after the stop: abandoned (the guest's last writes may be lost)$" "$work/err" ||
      bad "no line saying the flush was abandoned"
  else
    [ $status = 12 ] && [ "$(cat "$work/err")" = "vmm: stopped by signal 15 (Terminated)" ] ||
      bad "a stop while the flush hung: exit status $status (after ${took} s), expected 12 and one line"
  fi
  tail -1 "$work/backing/.failfs-log" | grep -q "^ok $file$" || bad "the hung flush did not end in failfs"
fi
if [ $fail != 0 ]; then
  echo "--- console ---"; cat "$work/out"; echo "--- stderr ---"; cat "$work/err"
  echo "--- failfs's fsyncs ---"; cat "$work/backing/.failfs-log"
else
  echo "$name: PASS"
fi
exit $fail
