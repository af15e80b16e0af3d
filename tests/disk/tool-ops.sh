#!/usr/bin/env bash
# qcow2_tool's single operations (write, read, zero, discard) on an image made by qemu-img, checked
# through QEMU's view of the same image, and their failures: one line on stderr, status 1.
#
# tool-ops.sh TOOL WORKDIR
TOOL=$1
WORK=$2
source "$(dirname "$0")/lib.sh"

run qemu-img create -q -f qcow2 -o cluster_size=65536 img.qcow2 16M
run "$TOOL" write img.qcow2 12345 300000 7
run "$TOOL" raw expect.raw 300000 7
want=$("$TOOL" digest expect.raw 0 300000)
got=$("$TOOL" read img.qcow2 12345 300000) || fail "qcow2_tool read failed"
[[ "$got" == "$want" ]] || fail "read digest $got, written $want"
run qemu-img convert -O raw img.qcow2 out.raw
qemu_got=$("$TOOL" digest out.raw 12345 300000)
[[ "$qemu_got" == "$want" ]] || fail "qemu reads digest $qemu_got, written $want"
echo "+ digests agree: $want"

# read_zero OFFSET LENGTH: QEMU reads zeroes there.
read_zero() {
  run qemu-img convert -O raw img.qcow2 out.raw
  local z
  rm -f zeroes.raw
  truncate -s "$2" zeroes.raw
  z=$("$TOOL" digest zeroes.raw 0 "$2")
  [[ $("$TOOL" digest out.raw "$1" "$2") == "$z" ]] || fail "[$1, +$2) does not read back as zeroes"
  [[ $("$TOOL" read img.qcow2 "$1" "$2") == "$z" ]] || fail "our engine: [$1, +$2) is not zero"
  echo "+ [$1, +$2) reads as zeroes"
}
run "$TOOL" zero img.qcow2 20000 1000
read_zero 20000 1000
run "$TOOL" zero img.qcow2 131072 65536 unmap
read_zero 131072 65536
run "$TOOL" discard img.qcow2 196608 65536
read_zero 196608 65536
check_clean img.qcow2
# The written bytes around the zeroed ranges are still there.
for range in "12345 7655" "21000 110072" "262144 50201"; do
  read -r off len <<<"$range"
  got=$("$TOOL" read img.qcow2 "$off" "$len")
  want=$("$TOOL" digest expect.raw $(( off - 12345 )) "$len")
  [[ "$got" == "$want" ]] || fail "written bytes [$off, +$len) changed by the zeroing"
done

# expect_error ARGS...: status 1 and exactly one line on stderr.
expect_error() {
  local err rc=0
  err=$("$TOOL" "$@" 2>&1 >/dev/null) || rc=$?
  [[ $rc -eq 1 ]] || fail "qcow2_tool $* exited $rc, expected 1"
  [[ $(wc -l <<<"$err") -eq 1 && -n "$err" ]] || fail "qcow2_tool $* printed not one line: $err"
  echo "+ qcow2_tool $*: $err"
}
expect_error read img.qcow2 16M 1
expect_error read img.qcow2 $((16 * 1024 * 1024 - 10)) 11
expect_error write img.qcow2 $((16 * 1024 * 1024 - 10)) 20 1
expect_error zero img.qcow2 16M 512
expect_error read missing.qcow2 0 1
expect_error read expect.raw 0 1
expect_error create img.qcow2 1M
expect_error create-overlay over.qcow2 missing.raw raw
expect_error frobnicate
check_clean img.qcow2
finish
