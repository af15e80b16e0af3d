#!/usr/bin/env bash
# qcow2 interoperability with QEMU: images made by qemu-img/qemu-io, read and changed by our engine
# (qcow2_tool random against a raw reference made by `qemu-img convert -O raw`), and images made by
# our engine, read and changed by qemu-img (info, check, compare, convert, rebase, commit). qemu-img
# check is the judge of the metadata, qemu-img compare and cmp of the content.
#
# interop.sh TOOL WORKDIR SCENARIO ARGS...
#   qemu CLUSTER plain|raw_backing|qcow2_chain [read-only]   CLUSTER: 512 4k 64k 2m
#   compressed read-only|write
#   v2
#   ours CLUSTER_BITS
#   ours_overlay_raw
#   ours_overlay_qcow2
#   refcount_growth
#   refcount_widths  refcount_bits 1..32, preallocation=metadata|falloc
#   large            sparse 4 TiB (ours) and 1 TiB (qemu's) disks
#   odd_size         virtual sizes ending inside a cluster
# Environment: QCOW2_INTEROP_OPS (random operations per image, default 1000), QCOW2_SEED (default 1),
# QCOW2_SCALE (percent applied to the default counts, default 100).
TOOL=$1
WORK=$2
shift 2
source "$(dirname "$0")/lib.sh"

OPS=${QCOW2_INTEROP_OPS:-$(scaled 1000)}
SEED=${QCOW2_SEED:-1}
MIB=$((1024 * 1024))

# info_has IMAGE TEXT...: every TEXT is a line (prefix) of `qemu-img info IMAGE`.
info_has() {
  local img=$1 out
  shift
  out=$(qemu-img info "$img" 2>&1) || fail "qemu-img info $img: $out"
  for t in "$@"; do
    grep -qxF -- "$t" <<<"$out" || { echo "$out"; fail "qemu-img info $img lacks the line '$t'"; }
  done
  echo "+ qemu-img info $img: has ${*@Q}"
}

scenario_qemu() {
  local cluster=$1 variant=$2 mode=${3:-write}
  local cb
  cb=$(cluster_bytes "$cluster")
  local backing_files=()
  case $variant in
    plain)
      run qemu-img create -q -f qcow2 -o cluster_size="$cb" top.qcow2 64M
      fill_qemu top.qcow2 qcow2 64 1
      ;;
    raw_backing)
      # The backing file is shorter than the overlay and ends mid-cluster: past its end reads zeroes.
      run "$TOOL" raw base.raw $((48 * MIB + 1000)) 7
      run qemu-img create -q -f qcow2 -o cluster_size="$cb" -b base.raw -F raw top.qcow2 64M
      fill_qemu top.qcow2 qcow2 64 2
      backing_files=(base.raw)
      ;;
    qcow2_chain)
      # base.qcow2 <- mid.qcow2 <- top.qcow2, the lower two with other cluster sizes than the top.
      local other=65536
      [[ $cb -eq 65536 ]] && other=4096
      run qemu-img create -q -f qcow2 -o cluster_size=$other base.qcow2 64M
      fill_qemu base.qcow2 qcow2 64 3
      run qemu-img create -q -f qcow2 -o cluster_size=$((other == 4096 ? 65536 : 4096)) -b base.qcow2 -F qcow2 mid.qcow2
      fill_qemu mid.qcow2 qcow2 64 4
      run qemu-img create -q -f qcow2 -o cluster_size="$cb" -b mid.qcow2 -F qcow2 top.qcow2
      fill_qemu top.qcow2 qcow2 64 5
      backing_files=(base.qcow2 mid.qcow2)
      ;;
    *) fail "unknown variant $variant" ;;
  esac
  check_clean top.qcow2
  run qemu-img convert -O raw top.qcow2 ref.raw
  local sums=() f
  for f in "${backing_files[@]}"; do sums+=("$(md5sum <"$f")"); done
  if [[ $mode == read-only ]]; then
    local top_sum
    top_sum=$(md5sum <top.qcow2)
    run "$TOOL" random top.qcow2 ref.raw "$SEED" "$OPS" --read-only
    unchanged top.qcow2 "$top_sum"
  else
    run "$TOOL" random top.qcow2 ref.raw "$SEED" "$OPS" --max-len $((cb * 3 > 262144 ? cb * 3 : 262144))
    check_clean top.qcow2
    same_content top.qcow2 ref.raw
    run qemu-img convert -O raw top.qcow2 out.raw
    run cmp out.raw ref.raw
  fi
  local i=0
  for f in "${backing_files[@]}"; do
    unchanged "$f" "${sums[$i]}"
    i=$((i + 1))
  done
}

# A source with incompressible, compressible (text), pattern and zero regions.
make_mixed_raw() {
  run "$TOOL" raw "$1" 32M 9
  # (seq and yes end by SIGPIPE when head has enough)
  { seq 1 3000000 || true; } | head -c $((6 * MIB)) | dd of="$1" bs=1M seek=2 conv=notrunc status=none
  { yes 'a line of text in a compressed qcow2 cluster' || true; } | head -c $((5 * MIB + 777)) |
    dd of="$1" bs=1M seek=16 conv=notrunc status=none
  dd if=/dev/zero of="$1" bs=1M seek=10 count=3 conv=notrunc status=none
}

scenario_compressed() {
  local mode=$1
  make_mixed_raw src.raw
  local cb
  for cb in 4096 65536 2097152; do
    rm -f comp.qcow2 ref.raw
    run qemu-img convert -c -O qcow2 -o cluster_size=$cb src.raw comp.qcow2
    local out
    out=$(qemu-img check comp.qcow2 2>&1) || { echo "$out"; fail "qemu-img check of qemu's compressed image"; }
    grep -Eq '[1-9][0-9.]*% compressed clusters|[0-9]\.[0-9]*[1-9]% compressed' <<<"$out" ||
      { echo "$out"; fail "qemu made no compressed clusters (cluster size $cb)"; }
    cp --sparse=always src.raw ref.raw
    if [[ $mode == read-only ]]; then
      local sum
      sum=$(md5sum <comp.qcow2)
      run "$TOOL" random comp.qcow2 ref.raw "$SEED" "$OPS" --read-only
      unchanged comp.qcow2 "$sum"
    else
      # Overwriting parts of compressed clusters: copy-on-write out of the compressed data.
      run "$TOOL" random comp.qcow2 ref.raw "$SEED" $((cb > 65536 ? OPS / 2 : OPS)) \
        --max-len $((cb * 3 > 262144 ? cb * 3 : 262144))
      check_clean comp.qcow2
      same_content comp.qcow2 ref.raw
    fi
  done
}

scenario_v2() {
  local cb
  make_mixed_raw src.raw
  run "$TOOL" raw base.raw 32M 13
  local base_sum
  base_sum=$(md5sum <base.raw)
  for cb in 4096 65536; do
    rm -f v2.qcow2 v2o.qcow2 ref.raw
    # Converted (every cluster allocated or zero) ...
    run qemu-img convert -O qcow2 -o compat=0.10,cluster_size=$cb src.raw v2.qcow2
    [[ $(header_u32 v2.qcow2 4) -eq 2 ]] || fail "v2.qcow2 is not version 2"
    cp --sparse=always src.raw ref.raw
    local sum
    sum=$(md5sum <v2.qcow2)
    run "$TOOL" random v2.qcow2 ref.raw "$SEED" "$OPS" --read-only
    unchanged v2.qcow2 "$sum"
    # ... and an overlay on a raw file written by qemu-io (v2 has no zero flag: zero writes allocate).
    if [[ $HAVE_QEMU_IO -eq 1 ]]; then
      run qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=$cb -b base.raw -F raw v2o.qcow2
      fill_qemu v2o.qcow2 qcow2 32 6
      check_clean v2o.qcow2
      run qemu-img convert -O raw v2o.qcow2 ref.raw
      sum=$(md5sum <v2o.qcow2)
      run "$TOOL" random v2o.qcow2 ref.raw "$SEED" "$OPS" --read-only
      unchanged v2o.qcow2 "$sum"
    fi
  done
  unchanged base.raw "$base_sum"
}

scenario_ours() {
  local bits=$1 cb=$((1 << $1))
  run "$TOOL" create ours.qcow2 64M "$bits"
  check_clean ours.qcow2
  info_has ours.qcow2 "file format: qcow2" "virtual size: 64 MiB (67108864 bytes)" "cluster_size: $cb" \
    "    compat: 1.1"
  truncate -s 64M ref.raw
  run "$TOOL" random ours.qcow2 ref.raw "$SEED" "$OPS" --max-len $((cb * 3 > 262144 ? cb * 3 : 262144))
  check_clean ours.qcow2
  same_content ours.qcow2 ref.raw
  run qemu-img convert -O raw ours.qcow2 out.raw
  run cmp out.raw ref.raw
  if [[ $HAVE_QEMU_IO -eq 1 ]]; then
    # QEMU allocates in our image with our refcounts; then our engine goes on over QEMU's changes.
    qemu_io ours.qcow2 qcow2 "write -P 0x5c 1M 300k" "write -z 8M 1M" "write -z -u 20M 4M" "discard 16M 2M" \
      "write -P 0x3d $((40 * MIB + 1234)) 3M"
    check_clean ours.qcow2
    run qemu-img convert -O raw ours.qcow2 ref.raw
    run "$TOOL" random ours.qcow2 ref.raw $((SEED + 1)) $((OPS / 2))
    check_clean ours.qcow2
    same_content ours.qcow2 ref.raw
  fi
}

scenario_ours_overlay_raw() {
  run "$TOOL" raw base.raw 48M 11
  local base_sum
  base_sum=$(md5sum <base.raw)
  run "$TOOL" create-overlay ours.qcow2 base.raw raw
  info_has ours.qcow2 "file format: qcow2" "virtual size: 48 MiB (50331648 bytes)" "backing file: base.raw" \
    "backing file format: raw"
  check_clean ours.qcow2
  run cp --sparse=always base.raw ref.raw
  run "$TOOL" compare ours.qcow2 ref.raw
  run "$TOOL" random ours.qcow2 ref.raw "$SEED" "$OPS"
  unchanged base.raw "$base_sum"
  check_clean ours.qcow2
  same_content ours.qcow2 ref.raw
  run qemu-img convert -O raw ours.qcow2 out.raw
  run cmp out.raw ref.raw

  # Rebase onto other content (safe mode: qemu copies into our image whatever the new base changes).
  run "$TOOL" raw other.raw 48M 12
  run qemu-img rebase -f qcow2 -b other.raw -F raw ours.qcow2
  info_has ours.qcow2 "backing file: other.raw" "backing file format: raw"
  check_clean ours.qcow2
  same_content ours.qcow2 ref.raw
  run "$TOOL" compare ours.qcow2 ref.raw
  run "$TOOL" random ours.qcow2 ref.raw $((SEED + 1)) $((OPS / 2))
  check_clean ours.qcow2
  same_content ours.qcow2 ref.raw
  unchanged base.raw "$base_sum"

  # Commit our overlay into its (new) base: the base then holds the whole disk.
  run qemu-img commit -f qcow2 ours.qcow2
  run cmp other.raw ref.raw
  check_clean ours.qcow2
  run "$TOOL" compare ours.qcow2 ref.raw

  # A backing name is relative to the overlay's directory, not the current one (ours and qemu's).
  mkdir sub
  run "$TOOL" raw sub/b.raw 4M 17
  run "$TOOL" create-overlay sub/o.qcow2 b.raw raw
  qemu-img info sub/o.qcow2 | grep -q "^backing file: b.raw (actual path: sub/b.raw)$" ||
    fail "qemu-img info does not resolve sub/o.qcow2's backing file to sub/b.raw"
  same_content sub/o.qcow2 sub/b.raw
  run "$TOOL" compare sub/o.qcow2 sub/b.raw
  run qemu-img create -q -f qcow2 -b b.raw -F raw sub/q.qcow2
  run "$TOOL" compare sub/q.qcow2 sub/b.raw
}

scenario_ours_overlay_qcow2() {
  # base.qcow2 (64K clusters) <- mid.qcow2 (4K) <- top.qcow2 (2M), all made and filled by our engine.
  run "$TOOL" create base.qcow2 48M 16
  run "$TOOL" write base.qcow2 0 8M 21
  run "$TOOL" write base.qcow2 $((20 * MIB + 123)) 5M 22
  run "$TOOL" zero base.qcow2 1M 512K
  run "$TOOL" zero base.qcow2 $((21 * MIB)) 1M unmap
  check_clean base.qcow2
  run "$TOOL" create-overlay mid.qcow2 base.qcow2 qcow2 12
  run "$TOOL" write mid.qcow2 $((4 * MIB + 7)) 6M 23
  run "$TOOL" discard mid.qcow2 $((22 * MIB)) 2M
  run "$TOOL" zero mid.qcow2 $((6 * MIB + 100)) 70000
  check_clean mid.qcow2
  run "$TOOL" create-overlay top.qcow2 mid.qcow2 qcow2 21
  # The backing format, when not given, is found from the backing file and recorded.
  run "$TOOL" create-overlay probed.qcow2 base.qcow2
  info_has probed.qcow2 "backing file: base.qcow2" "backing file format: qcow2"
  info_has top.qcow2 "virtual size: 48 MiB (50331648 bytes)" "cluster_size: 2097152" "backing file: mid.qcow2" \
    "backing file format: qcow2"
  local chain
  chain=$(qemu-img info --backing-chain top.qcow2 2>&1) || fail "qemu-img info --backing-chain: $chain"
  grep -qx "image: base.qcow2" <<<"$chain" || { echo "$chain"; fail "base.qcow2 missing from the backing chain"; }
  check_clean top.qcow2
  run qemu-img convert -O raw top.qcow2 ref.raw
  run "$TOOL" compare top.qcow2 ref.raw
  local base_sum mid_sum
  base_sum=$(md5sum <base.qcow2)
  mid_sum=$(md5sum <mid.qcow2)
  run "$TOOL" random top.qcow2 ref.raw "$SEED" "$OPS" --max-len 6M
  unchanged base.qcow2 "$base_sum"
  unchanged mid.qcow2 "$mid_sum"
  check_clean top.qcow2
  same_content top.qcow2 ref.raw

  # qemu-img commit writes our top into our mid, then our mid into our base.
  run qemu-img commit -f qcow2 top.qcow2
  check_clean mid.qcow2
  same_content mid.qcow2 ref.raw
  run "$TOOL" compare mid.qcow2 ref.raw
  run "$TOOL" compare top.qcow2 ref.raw
  run qemu-img commit -f qcow2 mid.qcow2
  check_clean base.qcow2
  same_content base.qcow2 ref.raw
  run "$TOOL" compare base.qcow2 ref.raw
  run "$TOOL" compare top.qcow2 ref.raw
}

scenario_refcount_growth() {
  # 512-byte clusters holding 64 refcounts each: one refcount-table cluster covers 64 blocks of 64
  # clusters, 2 MiB of file. Several MiB of writes must grow the table (and move it).
  run qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 rc.qcow2 64M
  local before after
  before=$(header_u32 rc.qcow2 56)
  truncate -s 64M ref.raw
  run "$TOOL" write rc.qcow2 0 6M 31
  run "$TOOL" raw chunk.raw 6M 31
  dd if=chunk.raw of=ref.raw conv=notrunc status=none
  run "$TOOL" write rc.qcow2 $((30 * MIB + 333)) 3M 41
  run "$TOOL" raw chunk.raw 3M 41
  dd if=chunk.raw of=ref.raw bs=1M oflag=seek_bytes seek=$((30 * MIB + 333)) conv=notrunc status=none
  check_clean rc.qcow2
  same_content rc.qcow2 ref.raw
  run "$TOOL" random rc.qcow2 ref.raw "$SEED" $((OPS / 3)) --max-len 1M
  after=$(header_u32 rc.qcow2 56)
  echo "+ refcount table clusters: $before -> $after"
  [[ $after -gt $before ]] || fail "the refcount table did not grow ($before -> $after clusters): test too weak"
  check_clean rc.qcow2
  same_content rc.qcow2 ref.raw
  run qemu-img convert -O raw rc.qcow2 out.raw
  run cmp out.raw ref.raw
}

# pattern_into FILE OFFSET LENGTH OCTAL_BYTE: LENGTH copies of the byte at OFFSET.
pattern_into() {
  head -c "$3" /dev/zero | tr '\0' "$4" | dd of="$1" bs=1M oflag=seek_bytes seek="$2" conv=notrunc status=none
}

scenario_refcount_widths() {
  # Every refcount width qemu offers (bit-packed entries for 1, 2 and 4) and preallocated images.
  local rb
  for rb in 1 2 4 8 32; do
    rm -f rw.qcow2 ref.raw
    run qemu-img create -q -f qcow2 -o cluster_size=4096,refcount_bits=$rb rw.qcow2 24M
    fill_qemu rw.qcow2 qcow2 24 $rb
    run qemu-img convert -O raw rw.qcow2 ref.raw
    run "$TOOL" random rw.qcow2 ref.raw "$SEED" $((OPS / 3))
    check_clean rw.qcow2
    same_content rw.qcow2 ref.raw
  done
  local prealloc
  for prealloc in metadata falloc; do
    rm -f pre.qcow2 ref.raw
    run qemu-img create -q -f qcow2 -o cluster_size=65536,preallocation=$prealloc pre.qcow2 24M
    fill_qemu pre.qcow2 qcow2 24 9
    run qemu-img convert -O raw pre.qcow2 ref.raw
    run "$TOOL" random pre.qcow2 ref.raw "$SEED" $((OPS / 3))
    check_clean pre.qcow2
    same_content pre.qcow2 ref.raw
  done
}

scenario_large() {
  # Sparse terabyte disks (a big L1 table, tables far apart); only touched clusters are compared by
  # us, qemu-img compare skips the holes of both.
  run "$TOOL" create big.qcow2 4T 16
  truncate -s 4T big.raw
  run "$TOOL" random big.qcow2 big.raw "$SEED" $((OPS / 2)) --final-touched
  check_clean big.qcow2
  same_content big.qcow2 big.raw
  rm -f big.raw
  run qemu-img create -q -f qcow2 -o cluster_size=4096 qbig.qcow2 1T
  qemu_io qbig.qcow2 qcow2 "write -P 0x42 0 1M" "write -P 0x43 $(( (1 << 40) - 300000 )) 300000" \
    "write -P 0x44 $(( (1 << 39) + 12345 )) 70000"
  # (qemu-img convert would write all of the terabyte: the reference gets the same patterns instead)
  truncate -s 1T qbig.raw
  pattern_into qbig.raw 0 $MIB '\102'
  pattern_into qbig.raw $(( (1 << 40) - 300000 )) 300000 '\103'
  pattern_into qbig.raw $(( (1 << 39) + 12345 )) 70000 '\104'
  run "$TOOL" compare qbig.qcow2 qbig.raw 0 $MIB $(( (1 << 40) - 300000 )) 300000 \
    $(( (1 << 39) + 12345 )) 70000
  run "$TOOL" random qbig.qcow2 qbig.raw $((SEED + 1)) $((OPS / 2)) --final-touched
  check_clean qbig.qcow2
  same_content qbig.qcow2 qbig.raw
}

scenario_odd_size() {
  # Virtual sizes that end inside a cluster: the last, partial cluster.
  run "$TOOL" create odd.qcow2 $((64 * MIB + 1536)) 16
  info_has odd.qcow2 "virtual size: 64 MiB (67110400 bytes)"
  truncate -s $((64 * MIB + 1536)) ref.raw
  run "$TOOL" random odd.qcow2 ref.raw "$SEED" "$OPS"
  check_clean odd.qcow2
  same_content odd.qcow2 ref.raw
  run qemu-img create -q -f qcow2 -o cluster_size=2M qodd.qcow2 $((33 * MIB + 3584))
  fill_qemu qodd.qcow2 qcow2 33 8
  run qemu-img convert -O raw qodd.qcow2 qref.raw
  run "$TOOL" random qodd.qcow2 qref.raw "$SEED" $((OPS / 2)) --max-len 5M
  check_clean qodd.qcow2
  same_content qodd.qcow2 qref.raw
  # An overlay as long as its raw backing file, which ends mid-cluster.
  run "$TOOL" raw base.raw $((5 * MIB + 2560)) 3
  run "$TOOL" create-overlay ov.qcow2 base.raw raw 16
  cp base.raw oref.raw
  run "$TOOL" random ov.qcow2 oref.raw "$SEED" $((OPS / 2))
  check_clean ov.qcow2
  same_content ov.qcow2 oref.raw
}

scenario=$1
shift
case $scenario in
  qemu) scenario_qemu "$@" ;;
  compressed) scenario_compressed "$@" ;;
  v2) scenario_v2 ;;
  ours) scenario_ours "$@" ;;
  ours_overlay_raw) scenario_ours_overlay_raw ;;
  ours_overlay_qcow2) scenario_ours_overlay_qcow2 ;;
  refcount_growth) scenario_refcount_growth ;;
  large) scenario_large ;;
  refcount_widths) scenario_refcount_widths ;;
  odd_size) scenario_odd_size ;;
  *) fail "unknown scenario $scenario" ;;
esac
finish
