# Shared by disk-inner.sh and net-inner.sh (POSIX sh, sourced; also inside the nested lane). The
# sourcing script defines `ours SCENARIO` and `peer SCENARIO`, which start the VMM in the background
# (so that $! is the VMM's pid) with its console's input from $bench_in and its output in
# /tmp/bench.out, and may define `prepare`, run in the background while the VMM starts (e.g. to bring
# its TAP up and send the frame that starts the guest).
#
# What is measured: the guest times its own workload with the TSC and prints "... in N us"; around
# that work it prints "NAME: sync" twice and waits for a byte on its serial input. At each sync the
# host reads every thread's CPU time (/proc/PID/task/*/schedstat, nanoseconds; utime + stime from
# .../stat where schedstat is missing), then answers. The difference is the work's CPU time per
# thread, split by thread name: vCPU threads (vmm-vcpuN, QEMU's "CPU N/KVM") against everything else
# (the device path: vmm-io, vmm-qcow2, vmm-copy, io_uring workers, QEMU's main loop, worker threads,
# iothreads). No boot baseline is subtracted: boot and teardown are outside both measurements.
bench_in=/tmp/bench.in

# sample PID → one line per thread: "TID<tab>NS<tab>NAME", CPU time so far in nanoseconds.
sample() {
  awk '
    FILENAME ~ /\/stat$/ {
      tid = $1; n = $0; sub(/^[0-9]+ \(/, "", n); sub(/\) [^)]*$/, "", n); name[tid] = n
      r = $0; sub(/.*\) /, "", r); split(r, f, " "); ticks[tid] = f[12] + f[13]
    }
    FILENAME ~ /\/schedstat$/ { split(FILENAME, p, "/"); ns[p[5]] = $1 }
    END { for (t in name) printf "%s\t%.0f\t%s\n", t, (t in ns) ? ns[t] : ticks[t] * 1e7, name[t] }
  ' /proc/"$1"/task/*/stat /proc/"$1"/task/*/schedstat 2>/dev/null
}

# cpu_delta BEFORE AFTER → "DEVICE_NS VCPU_NS GROUP=NS,..." (threads born in between count from 0;
# thread numbers in names become N, so that io_uring's iou-wrk-1234 and iou-wrk-1235 add up).
cpu_delta() {
  awk 'BEGIN { FS = "\t" } NR == FNR { b[$1] = $2; next }
    { d = $2 - (($1 in b) ? b[$1] : 0); g = $3; sub(/-[0-9]+$/, "-N", g); sub(/^vmm-vcpu[0-9]+$/, "vmm-vcpuN", g); sub(/^CPU [0-9]+/, "CPU N", g)
      if ($3 ~ /^vmm-vcpu[0-9]+$/ || $3 ~ /^CPU [0-9]+\/KVM$/) v += d; else dev += d
      by[g] += d }
    END { s = ""; for (g in by) if (by[g] > 0) s = s (s == "" ? "" : ",") g "=" sprintf("%.1fms", by[g] / 1e6)
          gsub(/ /, "_", s); printf "%.0f %.0f %s\n", dev, v, (s == "" ? "-" : s) }' "$1" "$2"
}

# measure WHO SCENARIO → "WALL_US DEVICE_NS VCPU_NS BREAKDOWN" for the guest's timed work.
measure() {
  rm -f $bench_in /tmp/bench.s1 /tmp/bench.s2
  mkfifo $bench_in
  exec 3<>$bench_in  # held open: the VMM's console never sees end of file
  : >/tmp/bench.out
  $1 "$2"
  pid=$!
  ppid=""
  if command -v prepare >/dev/null; then prepare & ppid=$!; fi
  # Answer the guest's two syncs; a watchdog: a run that takes more than 120 s is reported with
  # every thread's state, then killed.
  syncs=0 j=0
  while kill -0 $pid 2>/dev/null && [ $j -lt 2400 ]; do
    k=$(tr -d '\r' </tmp/bench.out | grep -c ': sync$')
    if [ "$k" -gt $syncs ]; then
      syncs=$((syncs + 1))
      sample $pid >/tmp/bench.s$syncs
      printf g >&3
      continue
    fi
    sleep 0.05
    j=$((j + 1))
  done
  if kill -0 $pid 2>/dev/null; then
    echo "bench: $1 $2 still running after 120 s:" >&2
    cat /tmp/bench.out >&2
    for t in /proc/$pid/task/*; do
      echo "  $(cat "$t/comm") wchan=$(cat "$t/wchan" 2>/dev/null) $(cut -d' ' -f3,14,15 "$t/stat")" >&2
      sed 's/^/    /' "$t/stack" 2>/dev/null | head -12 >&2
    done
    kill -9 $pid 2>/dev/null
  fi
  wait $pid
  st=$?
  [ -n "$ppid" ] && { kill $ppid 2>/dev/null; wait $ppid 2>/dev/null; }
  exec 3>&-
  rm -f $bench_in
  [ $st = 1 ] || { echo "bench: $1 $2 failed (status $st):" >&2; cat /tmp/bench.out >&2; exit 1; }
  if [ $syncs != 2 ] || grep -q "sync timed out" /tmp/bench.out; then
    echo "bench: $1 $2: the guest's syncs were not answered in time ($syncs of 2):" >&2
    cat /tmp/bench.out >&2
    exit 1
  fi
  # The next VMM may take the same TAP name: wait until this one's interface is gone.
  [ -n "${tap:-}" ] && { j=0; while ip link show "$tap" >/dev/null 2>&1 && [ $j -lt 100 ]; do sleep 0.05; j=$((j + 1)); done; }
  us=$(tr -d '\r' </tmp/bench.out | sed -n 's/.* in \([0-9][0-9]*\) us (.*/\1/p' | tail -n 1)
  echo "${us:-0} $(cpu_delta /tmp/bench.s1 /tmp/bench.s2)"
}

# run_pairs RUNS WORKLOAD DONE-TEXT: RUNS rounds of both VMMs, interleaved. DONE-TEXT must be on the
# console.
run_pairs() {
  : >/tmp/rows
  : >/tmp/raw
  i=0
  while [ $i -lt "$1" ]; do
    for who in ours peer; do
      set -- "$1" "$2" "$3" $(measure $who "$2")
      [ $# = 7 ] || exit 1
      grep -q "$3" /tmp/bench.out || { echo "bench: $who: the guest did not finish:" >&2; cat /tmp/bench.out >&2; exit 1; }
      [ "$4" -gt 0 ] || { echo "bench: $who: the guest reported no time:" >&2; cat /tmp/bench.out >&2; exit 1; }
      echo "$who $4 $5 $6" >>/tmp/rows
      echo "  run $i $who: $(awk "BEGIN { print $4 / 1e6 }") s (guest TSC: $(tr -d '\r' </tmp/bench.out |
        sed -n 's/.* us (\(.*\))$/\1/p' | tail -n 1)); device path $(awk "BEGIN { print $5 / 1e6 }") ms CPU," \
        "vCPUs $(awk "BEGIN { print $6 / 1e6 }") ms CPU; by thread: $7" | tee -a /tmp/raw >&2
    done
    i=$((i + 1))
  done
}

median() { grep "^$1 " /tmp/rows | awk -v col="$2" '{ print $col }' | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# report OPS OP-NAME BYTES-PER-OP: medians as ours, qemu, ratio, then the raw runs.
report() {
  awk -v n="$1" -v op="$2" -v bytes="$3" -v ow="$(median ours 2)" -v od="$(median ours 3)" -v ov="$(median ours 4)" \
    -v pw="$(median peer 2)" -v pd="$(median peer 3)" -v pv="$(median peer 4)" 'BEGIN {
    ow /= 1e6; pw /= 1e6
    printf "                        %12s %12s %8s\n", "ours", "qemu", "ratio"
    printf "  %-21s %12.0f %12.0f %7.2fx (ours / qemu)\n", op "/s", n / ow, n / pw, pw / ow
    printf "  %-21s %12.2f %12.2f\n", "MiB/s", n * bytes / 1048576 / ow, n * bytes / 1048576 / pw
    printf "  %-21s %12.1f %12.1f %7.2fx (qemu / ours)\n", "device CPU us/" op, od / 1e3 / n, pd / 1e3 / n, (od > 0 ? pd / od : 0)
    printf "  %-21s %12.1f %12.1f %7.2fx (qemu / ours)\n", "vCPU CPU us/" op, ov / 1e3 / n, pv / 1e3 / n, (ov > 0 ? pv / ov : 0)
  }'
  echo "raw runs:"
  cat /tmp/raw
}
