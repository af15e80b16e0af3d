#!/usr/bin/env bash
# qcow2 features QEMU can put in an image: our engine either handles them correctly (content equal to
# what qemu reads, qemu-img check clean, snapshots untouched) or refuses the image when opening it,
# with one line and status 1, leaving the file unchanged. Never a misread, never a corruption.
#
# features.sh TOOL WORKDIR FEATURE
#   snapshot        an internal snapshot: clusters shared (refcount 2), writes must copy them
#   lazy_refcounts  lazy_refcounts=on, cleanly closed
#   dirty           lazy_refcounts=on and qemu-io aborted after writing: the dirty bit is set and the
#                   refcounts are stale, so a writer must rebuild them (or refuse)
#   extended_l2     subclusters (extended_l2=on)
#   zstd            compressed clusters with compression_type=zstd
#   data_file       an external data file
#   unknown_incompatible   an incompatible feature bit nobody knows (bit 20)
#   corrupt_bit     the corrupt bit (incompatible bit 1) set: may be read, must not be written
# Environment: QCOW2_INTEROP_OPS (default 1000), QCOW2_SEED (default 1), QCOW2_SCALE (percent).
TOOL=$1
WORK=$2
FEATURE=$3
source "$(dirname "$0")/lib.sh"

OPS=${QCOW2_INTEROP_OPS:-$(scaled 1000)}
SEED=${QCOW2_SEED:-1}

# set_header_u64 IMAGE OFFSET VALUE: writes a big-endian 64-bit header field.
set_header_u64() {
  local hex
  hex=$(printf '%016x' "$3")
  # shellcheck disable=SC2001
  printf '%b' "$(sed 's/../\\x&/g' <<<"$hex")" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# refused_or RESULT_VAR ARGS...: runs qcow2_tool ARGS; "refused" when it failed while opening the
# image (status 1, one line "qcow2_tool: open ..."), "ok" when it succeeded; anything else fails.
refused_or() {
  local -n _out=$1
  shift
  local err rc=0
  echo "+ $TOOL $*"
  err=$("$TOOL" "$@" 2>&1 >/dev/null) || rc=$?
  if [[ $rc -eq 0 ]]; then
    _out=ok
  elif [[ $rc -eq 1 && $(wc -l <<<"$err") -eq 1 && $err == "qcow2_tool: open "* ]]; then
    echo "  refused: $err"
    _out=refused
  else
    echo "$err"
    fail "qcow2_tool $* exited $rc"
  fi
}

# judge IMAGE: our engine reads what qemu reads (or refuses), and writes correctly (or refuses).
judge() {
  local img=$1 result sum
  run qemu-img convert -O raw "$img" ref.raw
  sum=$(md5sum <"$img")
  refused_or result random "$img" ref.raw "$SEED" "$OPS" --read-only
  unchanged "$img" "$sum"
  refused_or result random "$img" ref.raw "$SEED" "$OPS"
  JUDGED=$result
  if [[ $result == refused ]]; then
    unchanged "$img" "$sum"
  else
    check_clean "$img"
    same_content "$img" ref.raw
  fi
}

case $FEATURE in
  snapshot)
    run qemu-img create -q -f qcow2 img.qcow2 32M
    fill_qemu img.qcow2 qcow2 32 1
    run qemu-img snapshot -c s1 img.qcow2
    run qemu-img convert -O raw -l snapshot.name=s1 img.qcow2 snap.raw
    judge img.qcow2
    # The snapshot still holds what it held: shared clusters were copied, never written in place.
    run qemu-img convert -O raw -l snapshot.name=s1 img.qcow2 snap-after.raw
    cmp snap.raw snap-after.raw || fail "our writes changed the internal snapshot s1"
    run qemu-img snapshot -a s1 img.qcow2
    check_clean img.qcow2
    run "$TOOL" compare img.qcow2 snap.raw
    ;;
  lazy_refcounts)
    run qemu-img create -q -f qcow2 -o lazy_refcounts=on img.qcow2 32M
    fill_qemu img.qcow2 qcow2 32 2
    judge img.qcow2
    ;;
  dirty)
    [[ $HAVE_QEMU_IO -eq 1 ]] || { echo "SKIP: qemu-io is missing"; exit 77; }
    run qemu-img create -q -f qcow2 -o lazy_refcounts=on img.qcow2 32M
    echo "+ qemu-io: writes, then abort (a crash with lazy refcounts)"
    qemu-io -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -P 0x22 5M 3M' -c 'abort' img.qcow2 >/dev/null 2>&1 || true
    rc=0
    qemu-img check img.qcow2 >/dev/null 2>&1 || rc=$?
    [[ $rc -eq 2 ]] || fail "expected qemu-img check to see the stale refcounts of a dirty image (got $rc)"
    judge img.qcow2
    ;;
  extended_l2)
    run qemu-img create -q -f qcow2 -o extended_l2=on img.qcow2 32M
    fill_qemu img.qcow2 qcow2 32 3
    judge img.qcow2
    ;;
  zstd)
    run "$TOOL" raw src.raw 16M 4
    { seq 1 2000000 || true; } | head -c 6M | dd of=src.raw bs=1M seek=2 conv=notrunc status=none
    run qemu-img convert -c -O qcow2 -o compression_type=zstd src.raw img.qcow2
    judge img.qcow2
    ;;
  data_file)
    run qemu-img create -q -f qcow2 -o data_file=img.data img.qcow2 32M
    fill_qemu img.qcow2 qcow2 32 5
    data_sum=$(md5sum <img.data)
    judge img.qcow2
    [[ $JUDGED == ok ]] || unchanged img.data "$data_sum"
    ;;
  unknown_incompatible)
    run qemu-img create -q -f qcow2 img.qcow2 32M
    fill_qemu img.qcow2 qcow2 32 6
    run qemu-img convert -O raw img.qcow2 ref.raw
    set_header_u64 img.qcow2 72 $((1 << 20))
    sum=$(md5sum <img.qcow2)
    refused_or result random img.qcow2 ref.raw "$SEED" 10 --read-only
    [[ $result == refused ]] || fail "an image with an unknown incompatible feature was opened"
    refused_or result random img.qcow2 ref.raw "$SEED" 10
    [[ $result == refused ]] || fail "an image with an unknown incompatible feature was opened for writing"
    unchanged img.qcow2 "$sum"
    ;;
  corrupt_bit)
    run qemu-img create -q -f qcow2 img.qcow2 32M
    fill_qemu img.qcow2 qcow2 32 7
    run qemu-img convert -O raw img.qcow2 ref.raw
    set_header_u64 img.qcow2 72 2
    sum=$(md5sum <img.qcow2)
    refused_or result random img.qcow2 ref.raw "$SEED" "$OPS" --read-only
    refused_or result random img.qcow2 ref.raw "$SEED" 10
    [[ $result == refused ]] || fail "an image marked corrupt was opened for writing"
    unchanged img.qcow2 "$sum"
    ;;
  *) fail "unknown feature $FEATURE" ;;
esac
finish
