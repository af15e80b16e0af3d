#!/usr/bin/env bash
# qcow2 benchmark: `vmm disk bench` (the asynchronous disk::Image path that virtio-blk uses) against
# `qemu-img bench` with the same count, depth, buffer size and offsets, on
#   overlay: an empty qcow2 overlay over a raw backing file full of data (reads go to the backing
#            file, writes allocate clusters and copy the rest of each from the backing file);
#            a fresh copy of the overlay for every run;
#   qcow2:   a fully populated qcow2 image (qemu-img convert of that backing file); each tool gets a
#            fresh copy of its own at the start (overwrites leave a full image as it was);
#   raw:     the raw file itself, for reference (writes on a copy of its own per tool).
# Rows: 4 KiB "random" reads and writes, 1 MiB sequential reads and writes. qemu-img bench has no
# random mode (its --pattern is the byte written), so the 4 KiB rows walk the image with one large
# odd stride (-S, ~0.618 of the image, wrapping) in both tools: every request lands far from the
# previous one, and both tools issue the same offsets in the same order. Writes carry 0xa5 bytes in
# both. Neither tool's time includes its final flush (qemu-img's happens when it closes the image).
# Both tools copy through one buffer: qemu-img bench's requests all use its first I/O vector, so ours
# runs with --shared-buffer (with a buffer per request, its 64 MiB of 1 MiB buffers miss the CPU's
# caches where qemu-img's one stays in them: 0.3-0.5x on the 1 MiB rows from that alone).
# Each measurement starts from the same state, prepared untimed: `sync` (the previous one's dirty
# pages written back) and, where /dev/shm is a tmpfs, twice the image size of memory touched and
# freed just before. That second part is for hosts that are VMs with free page reporting
# (virtio-balloon; this workplace's machines boot with page_reporting.page_reporting_order=11):
# memory that stays free for ~2 s goes back to the hypervisor, and the next 512 MiB of page cache
# costs ~0.45 s of faults to get it back. Whoever ran first in the 1 MiB overlay write row paid for
# it (measured: 500-970 req/s first, 3000-8000 second, for either tool); the issue's "sequence"
# effect was this, not the dirty page cache or the per-request ftruncate.
# Then the cost of creating an overlay: `vmm disk create --backing` vs `qemu-img create -b`.
#
# usage: scripts/bench/qcow2.sh [RUNS]    (default $RUNS, else 5; median req/s of RUNS runs)
# env:   VMM_BENCH_DIR   where the images go (default /var/tmp/vmm-bench; removed afterwards)
#        SIZE            backing file / image size (default 512M)
#        COUNT_4K COUNT_1M DEPTH   requests per 4 KiB run (50000), per 1 MiB run (512), in flight (64)
#        CREATE_RUNS     overlay creations timed per tool (default 25)
#        VMM_BUILD_DIR   build directory (default build/, built if missing)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-${RUNS:-5}}
size=${SIZE:-512M}
count4k=${COUNT_4K:-50000}
count1m=${COUNT_1M:-512}
depth=${DEPTH:-64}
create_runs=${CREATE_RUNS:-25}
dir=${VMM_BUILD_DIR:-$root/build}
[[ -x "$dir/vmm/vmm" ]] || dir=$("$root/scripts/build.sh" release)
vmm=$dir/vmm/vmm
command -v qemu-img >/dev/null || "$root/scripts/setup.sh"

bytes=$(numfmt --from=iec "$size")
(( bytes >= 64 << 20 && bytes % (1 << 20) == 0 )) || { echo "qcow2.sh: SIZE must be a whole number of MiB, at least 64M" >&2; exit 2; }
(( count1m << 20 <= bytes )) || { echo "qcow2.sh: COUNT_1M x 1 MiB is more than SIZE" >&2; exit 2; }
blocks=$(( bytes / 4096 ))
stride=$(( (blocks * 618 / 1000) | 1 ))   # odd: on a power-of-two size, no offset repeats before a wrap
stride=$(( stride * 4096 ))

base_dir=${VMM_BENCH_DIR:-/var/tmp/vmm-bench}
mkdir -p "$base_dir"
work=$(mktemp -d "$base_dir/qcow2.XXXXXX")
cleanup() { rm -rf "$work"; rmdir "$base_dir" 2>/dev/null || true; }
trap cleanup EXIT
cd "$work"

echo "qcow2.sh: preparing $size of images in $work" >&2
dd if=/dev/urandom of=base.raw bs=1M count=$(( bytes >> 20 )) status=none
"$vmm" disk create overlay.qcow2 --backing base.raw --backing-format raw
qemu-img convert -f raw -O qcow2 base.raw full.qcow2
for who in ours qemu; do
  cp full.qcow2 "full-$who.qcow2"
  cp base.raw "raw-$who.raw"
done
sync

# Touches and frees 2 x SIZE of memory (see the top: free page reporting), if /dev/shm is a tmpfs.
warm_memory() {
  [[ $(stat -f -c %T /dev/shm 2>/dev/null) == tmpfs ]] || return 0
  local f
  f=$(mktemp /dev/shm/vmm-bench-warm.XXXXXX)
  head -c $((2 * bytes)) /dev/zero >"$f" 2>/dev/null || true
  rm -f "$f"
}

# bench_once WHO IMAGE WORKLOAD → req/s of one run
bench_once() {
  local who=$1 image=$2 workload=$3 file fmt count write=() opts=() out secs
  case $image in
    overlay) cp overlay.qcow2 "run-$who.qcow2"; file=run-$who.qcow2; fmt=qcow2 ;;
    qcow2) fmt=qcow2; file=full.qcow2 ;;
    raw) fmt=raw; file=base.raw ;;
  esac
  case $workload in
    4k-read|4k-write) count=$count4k opts=(-s 4096 -S "$stride") ;;
    1m-read|1m-write) count=$count1m opts=(-s 1048576 -S 1048576) ;;
  esac
  if [[ $workload == *write ]]; then
    write=(-w)
    [[ $image == qcow2 ]] && file=full-$who.qcow2
    [[ $image == raw ]] && file=raw-$who.raw
  fi
  sync
  warm_memory
  if [[ $who == ours ]]; then
    out=$("$vmm" disk bench --shared-buffer "${write[@]}" -c "$count" -d "$depth" -s "${opts[1]}B" -S "${opts[3]}B" "$file")
    secs=$(sed -n 's/^vmm disk bench: .* in \([0-9.]*\) s: .*/\1/p' <<<"$out")
  else
    [[ -n ${write[*]} ]] && write+=(--pattern=0xa5)
    out=$(qemu-img bench -f "$fmt" "${write[@]}" -c "$count" -d "$depth" "${opts[@]}" "$file")
    secs=$(sed -n 's/^Run completed in \([0-9.]*\) seconds\./\1/p' <<<"$out")
  fi
  [[ -n $secs ]] || { echo "qcow2.sh: $who $image $workload: no time in its output:" >&2; echo "$out" >&2; exit 1; }
  [[ $image == overlay ]] && rm -f "run-$who.qcow2"
  awk -v n="$count" -v s="$secs" 'BEGIN { printf "%.0f\n", n / (s > 0 ? s : 1e-6) }'
}

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR == 0) print 0; else print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

workloads=(4k-read 4k-write 1m-read 1m-write)
images=(overlay qcow2 raw)
: >results
for ((run = 1; run <= runs; run++)); do
  echo "qcow2.sh: run $run of $runs" >&2
  order=(ours qemu)
  ((run % 2)) || order=(qemu ours)  # who goes first alternates (page cache, writeback of the last run)
  for w in "${workloads[@]}"; do
    for img in "${images[@]}"; do
      for who in "${order[@]}"; do
        r=$(bench_once "$who" "$img" "$w")
        echo "$w $img $who $r" >>results
      done
    done
  done
done

# Overlay creation: whole processes (exec included), each tool's bare start (--version), and with
# strace (if installed) our create's own work: from the signal unmask that starts every `vmm disk`
# command (after exec, dynamic linking and option parsing) to exit_group; nothing traced in between.
time_us() {  # command... → microseconds of one run (EPOCHREALTIME: no fork for the clock)
  local t0=${EPOCHREALTIME/./} t1
  "$@" >/dev/null
  t1=${EPOCHREALTIME/./}
  echo $(( t1 - t0 ))
}
inproc_us() {
  strace -f -ttt --seccomp-bpf -e trace=rt_sigprocmask,exit_group -o strace.txt \
    "$vmm" disk create c-ours.qcow2 --backing base.raw --backing-format raw
  awk '/rt_sigprocmask\(SIG_UNBLOCK/ && !t0 { t0 = $2 } /exit_group/ && t0 { printf "%.0f\n", ($2 - t0) * 1e6; exit }' strace.txt
}
have_strace=0
command -v strace >/dev/null && strace -f --seccomp-bpf -e trace=exit_group -o /dev/null true 2>/dev/null && have_strace=1
: >create
for ((i = 0; i < create_runs; i++)); do
  rm -f c-ours.qcow2 c-qemu.qcow2
  echo "create ours $(time_us "$vmm" disk create c-ours.qcow2 --backing base.raw --backing-format raw)" >>create
  echo "create qemu $(time_us qemu-img create -q -f qcow2 -b base.raw -F raw c-qemu.qcow2)" >>create
  echo "start ours $(time_us "$vmm" --version)" >>create
  echo "start qemu $(time_us qemu-img --version)" >>create
  if ((have_strace)); then
    rm -f c-ours.qcow2
    echo "inproc ours $(inproc_us)" >>create
  fi
done
cmed() { grep "^$1 $2 " create | awk '{ print $3 }' | median; }

label() {
  case $1 in
    4k-read) echo "4K rand read" ;; 4k-write) echo "4K rand write" ;;
    1m-read) echo "1M seq read" ;; 1m-write) echo "1M seq write" ;;
  esac
}
echo
echo "qcow2 bench: vmm disk bench vs $(qemu-img --version | head -1 | sed 's/ (.*//') bench, median req/s of $runs runs"
echo "  $size images in $base_dir; depth $depth; 4K rows: $count4k requests, stride $stride bytes; 1M rows: $count1m requests"
printf "%-14s %-8s %12s %12s %8s\n" workload image ours qemu ratio
all_ok=1 qcow2_ok=1 losers=()
for w in "${workloads[@]}"; do
  for img in "${images[@]}"; do
    o=$(grep "^$w $img ours " results | awk '{ print $4 }' | median)
    q=$(grep "^$w $img qemu " results | awk '{ print $4 }' | median)
    ratio=$(awk -v o="$o" -v q="$q" 'BEGIN { printf "%.2f", (q > 0 ? o / q : 0) }')
    printf "%-14s %-8s %12.0f %12.0f %7sx\n" "$(label "$w")" "$img" "$o" "$q" "$ratio"
    if awk -v o="$o" -v q="$q" 'BEGIN { exit !(o < q) }'; then
      all_ok=0
      [[ $img == raw ]] || qcow2_ok=0
      losers+=("$(label "$w")/$img")
    fi
  done
done
co=$(cmed create ours) cq=$(cmed create qemu) so=$(cmed start ours) sq=$(cmed start qemu)
echo
echo "overlay create (median of $create_runs, microseconds per process):"
printf "  %-40s %10s %10s %8s\n" "" ours qemu-img ratio
printf "  %-40s %10.0f %10.0f %7.2fx (qemu / ours)\n" "create --backing (exec to exit)" "$co" "$cq" "$(awk -v o="$co" -v q="$cq" 'BEGIN { print (o > 0 ? q / o : 0) }')"
printf "  %-40s %10.0f %10.0f\n" "process start alone (--version)" "$so" "$sq"
if ((have_strace)); then
  printf "  %-40s %10.0f %10s\n" "ours in-process (strace): create to exit" "$(cmed inproc ours)" "-"
else
  echo "  (install strace to see our create's in-process time)"
fi
echo
echo "every run (req/s): workload image tool value"
sed 's/^/  /' results
echo
echo "qcow2 rows (overlay, qcow2): ours >= qemu on every row: $( ((qcow2_ok)) && echo yes || echo no)"
echo "ours >= qemu on every row: $( ((all_ok)) && echo yes || echo "no (${losers[*]})")"
