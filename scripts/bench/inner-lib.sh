# Shared by disk-inner.sh and net-inner.sh (POSIX sh, sourced; also inside the nested lane). The
# sourcing script defines `ours SCENARIO` and `peer SCENARIO`, which start the VMM in the background
# under `busybox time -f "%e %U %S" -o /tmp/bench.time` with its console in /tmp/bench.out, and may
# define `prepare` (run while the VMM starts, e.g. to bring its TAP up).

# measure WHO SCENARIO → "wall cpu" in seconds (user + system of the VMM process)
measure() {
  $1 "$2"
  pid=$!
  command -v prepare >/dev/null && prepare
  # A watchdog: a run that takes more than 120 s is reported with every thread's state, then killed.
  j=0
  while kill -0 $pid 2>/dev/null && [ $j -lt 1200 ]; do sleep 0.1; j=$((j + 1)); done
  if kill -0 $pid 2>/dev/null; then
    echo "bench: $1 $2 still running after 120 s:" >&2
    cat /tmp/bench.out >&2
    for p in $(pgrep -P $pid) $pid; do
      for t in /proc/$p/task/*; do
        echo "  $(cat "$t/comm") wchan=$(cat "$t/wchan" 2>/dev/null) $(cut -d' ' -f3,14,15 "$t/stat")" >&2
        sed 's/^/    /' "$t/stack" 2>/dev/null | head -12 >&2
      done
    done
    kill -9 $(pgrep -P $pid) $pid 2>/dev/null
  fi
  wait $pid
  st=$?
  [ $st = 1 ] || { echo "bench: $1 $2 failed (status $st):" >&2; cat /tmp/bench.out >&2; exit 1; }
  # The next VMM may take the same TAP name: wait until this one's interface is gone.
  [ -n "${tap:-}" ] && { j=0; while ip link show "$tap" >/dev/null 2>&1 && [ $j -lt 100 ]; do sleep 0.05; j=$((j + 1)); done; }
  tail -n 1 /tmp/bench.time | awk '{ print $1, $2 + $3 }'
}

# run_pairs RUNS WORKLOAD BASELINE DONE-TEXT: RUNS rounds of both VMMs, interleaved; each row is the
# workload minus the baseline (the same boot without the work). DONE-TEXT must be on the console.
run_pairs() {
  : >/tmp/rows
  : >/tmp/raw
  i=0
  while [ $i -lt "$1" ]; do
    for who in ours peer; do
      set -- "$1" "$2" "$3" "$4" $(measure $who "$2")
      [ $# = 6 ] || exit 1
      grep -q "$4" /tmp/bench.out || { echo "bench: $who: the guest did not finish:" >&2; cat /tmp/bench.out >&2; exit 1; }
      w=$5 c=$6
      set -- "$1" "$2" "$3" "$4" $(measure $who "$3")
      [ $# = 6 ] || exit 1
      echo "$who $(awk "BEGIN { print ($w - $5), ($c - $6) }")" >>/tmp/rows
      echo "  run $i $who: workload $w s wall $c s CPU; baseline $5 s wall $6 s CPU" | tee -a /tmp/raw >&2
    done
    i=$((i + 1))
  done
}

median() { grep "^$1 " /tmp/rows | awk -v col="$2" '{ print $col }' | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# report OPS OP-NAME BYTES-PER-OP: medians as ours, qemu, ratio, then the raw runs.
report() {
  awk -v n="$1" -v op="$2" -v bytes="$3" -v ow="$(median ours 2)" -v oc="$(median ours 3)" \
    -v pw="$(median peer 2)" -v pc="$(median peer 3)" 'BEGIN {
    printf "                        %12s %12s %8s\n", "ours", "qemu", "ratio"
    printf "  %-21s %12.0f %12.0f %7.2fx (ours / qemu)\n", op "/s", n / ow, n / pw, pw / ow
    printf "  %-21s %12.2f %12.2f\n", "MiB/s", n * bytes / 1048576 / ow, n * bytes / 1048576 / pw
    printf "  %-21s %12.1f %12.1f %7.2fx (qemu / ours)\n", "host CPU us/" op, oc * 1e6 / n, pc * 1e6 / n, (oc > 0 ? pc / oc : 0)
  }'
  echo "raw runs:"
  cat /tmp/raw
}
