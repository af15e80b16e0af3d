#!/usr/bin/env bash
# One `vmm disk` test with images: makes the files it needs in DIR (each case its own names, so cases
# run in parallel), checks the setup steps, then runs the command under test through expect.sh with
# the remaining options. Cases that need qemu-img exit 77 (skipped) where it is not installed.
#
# usage: cli-case.sh CASE VMM DIR EXPECT [expect.sh options...]
#        cli-case.sh prepare VMM DIR      (the fixture: DIR afresh with raw.img and data.img)
set -u
case_name=$1 vmm=$2 dir=$3
here=$(cd "$(dirname "$0")" && pwd)
json="$here/info_json.py"

if [[ $case_name == prepare ]]; then
  rm -rf "$dir" && mkdir -p "$dir/adir" || exit 1
  truncate -s 64M "$dir/raw.img" || exit 1                                  # sparse, reads zeroes
  head -c 4M /dev/urandom > "$dir/data.img" || exit 1                       # a backing file with data
  exit 0
fi

expect=$4
shift 4
needs_qemu_img() {
  command -v qemu-img >/dev/null || { echo "SKIP: qemu-img is not installed"; exit 77; }
}
# step DESCRIPTION command...: a setup step that must succeed silently (like `qemu-img create -q`).
step() {
  local what=$1 out
  shift
  if ! out=$("$@" 2>&1) || [[ -n $out ]]; then
    echo "FAIL: setup step '$what' ($*) failed or printed:"
    echo "$out"
    exit 1
  fi
}
fresh() { for f in "$@"; do rm -f "$dir/$f"; done; }
run() { exec "$expect" "$@"; }

case $case_name in
  info_raw) run "$@" -- "$vmm" disk info "$dir/raw.img" ;;
  info_raw_json) run "$@" -- "$json" "$vmm" "$dir/raw.img" format=raw virtual-size=67108864 ;;

  create_plain)
    fresh plain.qcow2
    step "create" "$vmm" disk create "$dir/plain.qcow2" --size 64M
    run "$@" -- "$vmm" disk info "$dir/plain.qcow2" ;;
  create_plain_json)
    fresh plain-json.qcow2
    step "create" "$vmm" disk create "$dir/plain-json.qcow2" --size 1G --cluster-size 4K
    run "$@" -- "$json" "$vmm" "$dir/plain-json.qcow2" format=qcow2 virtual-size=1073741824 cluster-size=4096 \
      refcount-bits=16 dirty-flag=false corrupt=false snapshots=0 incompatible-features=0 backing-filename=- \
      backing-chain=[] ;;
  create_overlay)
    fresh overlay.qcow2
    step "create" "$vmm" disk create "$dir/overlay.qcow2" --backing data.img --backing-format raw
    run "$@" -- "$vmm" disk info "$dir/overlay.qcow2" ;;
  create_overlay_json)
    # No --backing-format: probed. From another directory: the stored path is relative to the image.
    fresh overlay-json.qcow2
    cd "$dir/adir" || exit 1
    step "create" "$vmm" disk create ../overlay-json.qcow2 --backing data.img
    run "$@" -- "$json" "$vmm" ../overlay-json.qcow2 format=qcow2 virtual-size=4194304 backing-filename=data.img \
      backing-filename-format=raw backing-chain.0.format=raw ;;
  create_chain)
    # data.img <- chain-mid.qcow2 (qcow2, bigger) <- chain-top.qcow2
    fresh chain-mid.qcow2 chain-top.qcow2
    step "create mid" "$vmm" disk create "$dir/chain-mid.qcow2" --backing data.img --size 8M
    step "create top" "$vmm" disk create "$dir/chain-top.qcow2" --backing chain-mid.qcow2 --backing-format qcow2
    run "$@" -- "$json" "$vmm" "$dir/chain-top.qcow2" virtual-size=8388608 backing-filename=chain-mid.qcow2 \
      backing-filename-format=qcow2 backing-chain.0.format=qcow2 backing-chain.1.format=raw ;;
  info_broken_chain)
    # The backing file is gone: info still describes the image and says what is wrong with the chain.
    fresh broken.qcow2 broken-base.img
    step "base" cp "$dir/data.img" "$dir/broken-base.img"
    step "create" "$vmm" disk create "$dir/broken.qcow2" --backing broken-base.img
    step "remove base" rm "$dir/broken-base.img"
    run "$@" -- "$vmm" disk info "$dir/broken.qcow2" ;;

  qemu_img_info)
    needs_qemu_img
    fresh qemu.qcow2
    step "qemu-img create" qemu-img create -q -f qcow2 "$dir/qemu.qcow2" 64M
    run "$@" -- "$vmm" disk info "$dir/qemu.qcow2" ;;
  qemu_img_info_json)
    needs_qemu_img
    fresh qemu-overlay.qcow2
    step "qemu-img create" qemu-img create -q -f qcow2 -b data.img -F raw "$dir/qemu-overlay.qcow2"
    run "$@" -- "$json" "$vmm" "$dir/qemu-overlay.qcow2" format=qcow2 virtual-size=4194304 cluster-size=65536 \
      backing-filename=data.img backing-filename-format=raw backing-chain.0.format=raw ;;
  qemu_img_reads_ours)
    # qemu-img sees in our overlay what we do.
    needs_qemu_img
    fresh ours-for-qemu.qcow2
    step "create" "$vmm" disk create "$dir/ours-for-qemu.qcow2" --backing data.img --cluster-size 128K
    run "$@" -- "$json" --qemu-img qemu-img "$dir/ours-for-qemu.qcow2" format=qcow2 virtual-size=4194304 \
      cluster-size=131072 backing-filename=data.img backing-filename-format=raw ;;

  bench_raw) run "$@" -- "$vmm" disk bench -c 2000 -d 16 "$dir/raw.img" ;;
  bench_raw_write)
    fresh bench-raw-w.img
    step "copy" cp "$dir/data.img" "$dir/bench-raw-w.img"
    run "$@" -- "$vmm" disk bench -w --pattern rand -c 2000 --flush-interval 500 "$dir/bench-raw-w.img" ;;
  bench_qcow2)
    fresh bench.qcow2
    step "create" "$vmm" disk create "$dir/bench.qcow2" --size 64M
    "$expect" --status 0 --out "^vmm disk bench: 2000 requests of 4096 bytes in" \
      -- "$vmm" disk bench -w -c 2000 -d 16 --flush-interval 700 "$dir/bench.qcow2" || exit 1
    run "$@" -- "$vmm" disk bench --pattern rand -c 2000 "$dir/bench.qcow2" ;;
  bench_overlay)
    fresh bench-overlay.qcow2
    step "create" "$vmm" disk create "$dir/bench-overlay.qcow2" --backing data.img
    "$expect" --status 0 --out "^vmm disk bench: 300 requests of 1048576 bytes in" \
      -- "$vmm" disk bench -c 300 -s 1M "$dir/bench-overlay.qcow2" || exit 1
    run "$@" -- "$vmm" disk bench -w --pattern rand -c 1000 -s 16K "$dir/bench-overlay.qcow2" ;;
  bench_qcow2_compare)
    # The same random writes on a qcow2 image and a raw file leave the same contents, per qemu-img.
    needs_qemu_img
    fresh compare.qcow2 compare.img
    step "create" "$vmm" disk create "$dir/compare.qcow2" --size 64M --cluster-size 16K
    step "raw" truncate -s 64M "$dir/compare.img"
    for f in compare.qcow2 compare.img; do
      "$expect" --status 0 --out "^vmm disk bench: 3000 requests" \
        -- "$vmm" disk bench -w --pattern rand -c 3000 -s 8K "$dir/$f" || exit 1
    done
    step "qemu-img check" qemu-img check -q "$dir/compare.qcow2"
    run "$@" -- qemu-img compare -f qcow2 -F raw "$dir/compare.qcow2" "$dir/compare.img" ;;

  bench_overlay_shared)
    # Allocating 1 MiB writes on an overlay, every request from one buffer (--shared-buffer): the
    # overlay reads as the backing file's first MiB, then the written bytes (0xa5), per qemu-img.
    needs_qemu_img
    fresh shared.qcow2 shared-want.img
    step "create" "$vmm" disk create "$dir/shared.qcow2" --backing data.img --backing-format raw
    "$expect" --status 0 --out "^vmm disk bench: 3 requests of 1048576 bytes" \
      -- "$vmm" disk bench -w --shared-buffer -c 3 -d 3 -s 1M -o 1M "$dir/shared.qcow2" || exit 1
    head -c 1M "$dir/data.img" >"$dir/shared-want.img"
    head -c 3M /dev/zero | tr '\0' '\245' >>"$dir/shared-want.img"
    step "qemu-img check" qemu-img check -q "$dir/shared.qcow2"
    run "$@" -- qemu-img compare -f qcow2 -F raw "$dir/shared.qcow2" "$dir/shared-want.img" ;;

  *) echo "cli-case.sh: unknown case $case_name" >&2; exit 2 ;;
esac
