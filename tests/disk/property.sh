#!/usr/bin/env bash
# Property test: long random operation sequences (qcow2_tool random: reads checked as they go,
# unaligned and cluster-crossing writes, discards, write-zeroes with and without unmap, flushes,
# reopens) on an image made by our engine, compared byte for byte with a raw reference; then
# qemu-img check must be clean and qemu-img compare must agree.
#
# property.sh TOOL WORKDIR CLUSTER_BITS none|raw|qcow2 [small-cache]
# small-cache: a metadata cache of 8 clusters, so tables are evicted (and written back) all the time.
# Environment: QCOW2_PROPERTY_SEEDS (default "1 2 3"), QCOW2_PROPERTY_OPS (default 3000; 600 with
# 2 MiB clusters), QCOW2_SCALE (percent applied to the default count, default 100).
TOOL=$1
WORK=$2
BITS=$3
BACKING=$4
CACHE=()
[[ ${5:-} == small-cache ]] && CACHE=(--cache-bytes $((8 << BITS)))
source "$(dirname "$0")/lib.sh"

SEEDS=${QCOW2_PROPERTY_SEEDS:-1 2 3}
CB=$((1 << BITS))
# 2 MiB clusters: every first write to a cluster copies up to 2 MiB, so fewer, shorter operations.
OPS=${QCOW2_PROPERTY_OPS:-$(scaled $((BITS >= 21 ? 600 : 3000)))}
# (a small cache makes the run short and its bugs show late in a sequence: never scaled down)
[[ ${#CACHE[@]} -gt 0 ]] && OPS=${QCOW2_PROPERTY_OPS:-3000}
MAXLEN=$((BITS >= 21 ? CB * 3 / 2 : (CB * 5 / 2 > 262144 ? CB * 5 / 2 : 262144)))

for seed in $SEEDS; do
  rm -f img.qcow2 ref.raw base.raw base.qcow2
  base=""
  case $BACKING in
    none)
      run "$TOOL" create img.qcow2 32M "$BITS"
      truncate -s 32M ref.raw
      ;;
    raw)
      base=base.raw
      run "$TOOL" raw base.raw 32M $((seed + 100))
      run "$TOOL" create-overlay img.qcow2 base.raw raw "$BITS"
      cp --sparse=always base.raw ref.raw
      ;;
    qcow2)
      # A base made by QEMU (patterns, zero clusters, discards) under our overlay.
      base=base.qcow2
      run qemu-img create -q -f qcow2 base.qcow2 32M
      fill_qemu base.qcow2 qcow2 32 "$seed"
      run "$TOOL" create-overlay img.qcow2 base.qcow2 qcow2 "$BITS"
      run qemu-img convert -O raw img.qcow2 ref.raw
      ;;
    *) fail "unknown backing $BACKING" ;;
  esac
  base_sum=""
  [[ -n $base ]] && base_sum=$(md5sum <"$base")
  run "$TOOL" random img.qcow2 ref.raw "$seed" "$OPS" --max-len "$MAXLEN" "${CACHE[@]}"
  check_clean img.qcow2
  same_content img.qcow2 ref.raw
  [[ -n $base ]] && unchanged "$base" "$base_sum"
done
finish
