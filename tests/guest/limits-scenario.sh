#!/bin/sh
# vmm at a limit on threads and processes (a cgroup's pids.max, as a sandbox or a dense host sets
# it), through the real binary on whatever KVM is there (the direct lane, or L1 in the nested lane:
# POSIX sh, busybox tools). Every thread vmm cannot make is a one-line error and a non-zero exit, or
# is done without; never std::terminate (until 2026-12-05 every one of them ended the process so).
# Boots, clones and a raw disk's writes and flushes run with pids.max from 1 up to where they succeed;
# a fleet until all its clones run; a pool from 2 up to where it hands out a clone; a running VM
# moved into a cgroup at its limit is forked.
# usage: limits-scenario.sh VMM TESTGUEST [--needs-kvm]
# Exits 77 (skipped) with --needs-kvm when /dev/kvm is missing, or when no pids cgroup can be made.
vmm=$1 guest=$2
[ "${3:-}" = --needs-kvm ] && [ ! -c /dev/kvm ] && { echo "skipped: no /dev/kvm"; exit 77; }
work=$(mktemp -d)
export VMM_STATE_DIR="$work/state"
# An ASan build's LeakSanitizer makes a task of its own at exit to stop the others: at a limit on
# tasks it cannot, and ends the process with a fatal error of its own instead of vmm's status. The
# leak check is every other test's here (ASAN_OPTIONS: the last setting wins; a release build
# ignores it).
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
fail=0
made=""
cleanup() {
  for c in $made; do
    for p in $(cat "$c/cgroup.procs" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  done
  sleep 0.2
  for c in $made; do rmdir "$c" 2>/dev/null; done
  [ -n "${mounted:-}" ] && umount -l "$mounted"
  rm -rf "$work"
}
trap cleanup EXIT
ok() { echo "limits: ok   $1"; }
bad() { echo "limits: FAIL $1"; fail=1; }

# A pids cgroup of our own: cgroup v1's pids hierarchy, or cgroup v2 (mounted here if nothing is,
# as in the nested lane's L1).
if [ -f /sys/fs/cgroup/pids/cgroup.procs ]; then
  base=/sys/fs/cgroup/pids
elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  base=/sys/fs/cgroup
else
  mkdir -p "$work/cgroup" && mount -t cgroup2 none "$work/cgroup" && mounted="$work/cgroup"
  base="$work/cgroup"
fi
[ -f "$base/cgroup.controllers" ] && echo +pids >"$base/cgroup.subtree_control" 2>/dev/null
# fresh_cgroup NAME: $cg, a new one. Each part of the test has its own: processes killed in one
# (orphans, then zombies until an init reaps them: L1's does not) keep counting in it.
fresh_cgroup() {
  cg="$base/vmm-limits-$$-$1"
  mkdir "$cg" 2>/dev/null && [ -f "$cg/pids.max" ] && made="$made $cg"
}
fresh_cgroup boot || { echo "skipped: no pids cgroup can be made under $base"; exit 77; }

# limited MAX OUT ERR ARGS...: runs `vmm ARGS` as the only task of the cgroup, at most MAX tasks
# (the process and its threads), its stdin from $input (default $work/in); sets $status.
limited() {
  max=$1 out=$2 err=$3
  shift 3
  echo "$max" >"$cg/pids.max"
  sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$cg" "$vmm" "$@" <"${input:-$work/in}" >"$out" 2>"$err"
  status=$?
}

# one_error PATTERN: $work/err has one error line ("vmm: error: ..."), matching PATTERN, and nothing
# but warnings and the clone's start line besides (no "terminate called", no sanitizer report).
one_error() {
  [ "$(grep -c "^vmm: error: " "$work/err")" = 1 ] && grep "^vmm: error: " "$work/err" | grep -qE -- "$1" &&
    ! grep -vqE "^vmm: (error|warning): |^vmm: clone .* restored in |^vmm: [^ ]+ forked " "$work/err"
}

# sweep NAME WANT PATTERN ARGS...: pids.max from 1 up; each run either succeeds (status WANT, a
# console line matching PATTERN) or fails with one error line that names the thread and the limit,
# and a status that is not a signal's. Passes once a run succeeds after at least one failed.
sweep() {
  name=$1 want=$2 pattern=$3
  shift 3
  failed=0
  for max in 1 2 3 4 5 6 7 8 9 10 11 12; do
    limited "$max" "$work/out" "$work/err" "$@"
    if [ "$status" = "$want" ] && grep -qE -- "$pattern" "$work/out"; then
      [ "$failed" -gt 0 ] && ok "$name: $failed limit(s) refused with one error line each, runs at pids.max=$max" ||
        bad "$name: ran at pids.max=1 (the limit was not applied?)"
      return
    fi
    if [ "$status" -ge 128 ] || [ "$status" = 0 ] || ! one_error "cannot start .*: Resource temporarily unavailable \(at the limit on threads and processes"; then
      bad "$name at pids.max=$max: status $status, $(wc -c <"$work/out") bytes of output"
      sed 's/^/  err: /' "$work/err"
      sed 's/^/  out: /' "$work/out" | head -5
      return
    fi
    failed=$((failed + 1))
  done
  bad "$name: did not run even at pids.max=12"
  sed 's/^/  err: /' "$work/err"
}

: >"$work/in"
sweep "vmm run, 2 vCPUs" 1 "^vmm-testguest: ready cpus=2 scenario=hello" run --kernel "$guest" --cmdline hello --cpus 2

# A raw disk written and flushed at the lowest limit the VM runs at: no room for io_uring's worker
# threads, so io_uring cancels the requests it would hand them (the flush; large writes); vmm does
# them itself (the guest saw an I/O error before) and says so once.
head -c 1048576 /dev/zero >"$work/raw.img"
# Its console's input stays open (a FIFO this script holds): the input thread lives on, as with a
# terminal, instead of ending at an EOF and leaving its room to io_uring.
mkfifo "$work/hold"
exec 4<>"$work/hold"
input="$work/hold"
for scenario in blk-write:"128 sectors written" blk-flush:ok; do
  sweep "a raw disk, ${scenario%%:*}" 1 "^${scenario%%:*}: ${scenario#*:}" run --kernel "$guest" --cmdline "${scenario%%:*}" \
    --disk path="$work/raw.img"
  [ "$status" = 1 ] && grep -q "^vmm: warning: io_uring cancelled a disk request for want of a worker thread" "$work/err" &&
    ok "  ... its requests that io_uring cancelled were done synchronously" || bad "  ... no sign of a request io_uring cancelled"
done
input=""
exec 4>&-

# A template with a disk (no limit), then its clones under the limit: each clone's disk is a qcow2
# overlay, served by a worker thread of its own.
head -c 1048576 /dev/zero >"$work/base.img"
"$vmm" template create counter --kernel "$guest" --cmdline counter --ready-on "counter: ready" --timeout 30 \
  --console none --disk path="$work/base.img" >"$work/tc.out" 2>"$work/tc.err" && ok "template create" || { bad "template create"; cat "$work/tc.err"; }
printf 'get\nquit\n' >"$work/in"
sweep "vmm run --clone-of" 1 "^counter: value=" run --clone-of counter --console stdio

# A fleet under the limit (`--count 3 --detach`: the launcher and its clones in one cgroup), from
# pids.max 1 up until all three run: each clone that could not start has a line that names it and
# says why (its process not forked, or the thread it could not make), the summary counts them, the
# status is 10 while any failed, and each clone said to run does (the clones start at once and
# share the room: which of them fail at a limit varies). Before 2026-12-05 a clone whose thread
# could not be made could be announced as running (and then end), and one that could not be forked
# had no line.
refused=0 all_ran=0
for max in 1 3 5 7 9 11 13 15 17 19 21 23 25 27 29 31 33 35; do
  fresh_cgroup "fleet$max" || bad "cgroup fleet$max"
  echo "$max" >"$cg/pids.max"
  sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$cg" "$vmm" run --clone-of counter --count 3 --detach \
    --name "fl$max" </dev/null >"$work/fleet.out" 2>"$work/fleet.err"
  status=$?
  running=$(grep -cE "^fl$max-[123] [0-9]+ [0-9.]+ ms\$" "$work/fleet.out")
  failed=$(grep -cE "^fl$max-[123] failed: (cannot fork its process: Resource temporarily unavailable|.*: Resource temporarily unavailable \(at the limit on threads and processes.* \(exit status [0-9]+\))\$" "$work/fleet.out")
  alive=0
  for pid in $(grep -E "^fl$max-[123] [0-9]+ " "$work/fleet.out" | cut -d' ' -f2); do
    kill -0 "$pid" 2>/dev/null && [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null)" != Z ] && alive=$((alive + 1))
  done
  if [ $((running + failed)) != 3 ] || [ "$alive" != "$running" ] || grep -vqE "^vmm: warning: |^vmm: fleet " "$work/fleet.err" ||
     ! grep -q "^vmm: fleet fl$max: $running of 3 clones running" "$work/fleet.err" ||
     { [ "$failed" = 0 ] && [ "$status" != 0 ]; } || { [ "$failed" != 0 ] && [ "$status" != 10 ]; }; then
    bad "a fleet at pids.max=$max: status $status, $running running ($alive alive), $failed failed with a cause"
    sed 's/^/  out: /' "$work/fleet.out"
    sed 's/^/  err: /' "$work/fleet.err"
    break
  fi
  for t in $(cat "$cg/cgroup.procs"); do kill -9 "$t" 2>/dev/null; done
  if [ "$failed" = 0 ]; then
    all_ran=$max
    break
  fi
  refused=$((refused + 1))
  echo "limits: (fleet at pids.max=$max: $running running; $(grep -m1 " failed: " "$work/fleet.out"))"
done
[ "$all_ran" != 0 ] && [ "$refused" -gt 0 ] &&
  ok "vmm run --count 3: each clone that could not start said why ($refused limit(s)), all ran at pids.max=$all_ran" ||
  bad "vmm run --count 3: $refused limit(s) with failures, all ran at pids.max=$all_ran"

# A warm pool under the limit (the pool, its zygote, its members and their clones all in the
# cgroup), from pids.max 2 up until a clone is handed out: at each limit the pool refuses to start
# (one error line), or runs and says why each member could not be prepared (the thread or process
# that could not be made: before, a member whose vCPU thread failed was only "it ended"), or a
# request gets a clone (or one error line).
handed=0 causes=0
for max in 2 3 4 5 6 7 8 9 10 11 12 13 14; do
  fresh_cgroup "pool$max" || bad "cgroup pool$max"
  echo "$max" >"$cg/pids.max"
  : >"$work/pool.err"  # now: the background shell truncates it only when it gets to run
  sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' sh "$cg" "$vmm" pool counter --size 1 --name "pl$max" \
    </dev/null >"$work/pool.out" 2>"$work/pool.err" &
  pool=$!
  n=0
  while kill -0 "$pool" 2>/dev/null && ! grep -qE "vmm: pool: | serving " "$work/pool.err" && [ $n -lt 100 ]; do
    sleep 0.1
    n=$((n + 1))
  done
  if ! kill -0 "$pool" 2>/dev/null; then
    wait "$pool"
    status=$?
    cp "$work/pool.err" "$work/err"
    if [ "$status" -ge 128 ] || [ "$status" = 0 ] || ! one_error "Resource temporarily unavailable"; then
      bad "vmm pool at pids.max=$max: status $status"
      sed 's/^/  err: /' "$work/pool.err"
      break
    fi
    echo "limits: (pool at pids.max=$max: $(grep "^vmm: error: " "$work/pool.err"))"
  else
    # A request once a member is ready (`vmm ps`), unless one failed first.
    n=0
    while ! grep -q "vmm: pool: " "$work/pool.err" && ! "$vmm" ps --json 2>/dev/null | grep -q '"ready": *1' && [ $n -lt 50 ]; do
      sleep 0.1
      n=$((n + 1))
    done
    status=1
    if ! grep -q "vmm: pool: " "$work/pool.err"; then
      "$vmm" run --clone-of counter --pool "$VMM_STATE_DIR/run/pl$max/api.sock" >"$work/req.out" 2>"$work/req.err"
      status=$?
    fi
    if [ "$status" = 0 ]; then
      handed=$max
    elif grep -q "vmm: pool: " "$work/pool.err" && ! grep "vmm: pool: " "$work/pool.err" | grep -qv "Resource temporarily unavailable"; then
      causes=$((causes + 1))
      echo "limits: (pool at pids.max=$max: $(grep -m1 "vmm: pool: " "$work/pool.err"))"
    else
      bad "vmm pool at pids.max=$max: no clone (status $status), and no member's failure with its cause"
      sed 's/^/  err: /' "$work/req.err" "$work/pool.err"
      for t in /proc/"$pool"/task/*; do
        echo "  pool thread $(cat "$t/comm") wchan=$(cat "$t/wchan" 2>/dev/null) state=$(cut -d' ' -f3 "$t/stat")"
        sed 's/^/    /' "$t/stack" 2>/dev/null | head -8
      done
      echo "  cgroup: $(cat "$cg/pids.current") tasks: $(cat "$cg/cgroup.procs" | tr '\n' ' ')"
      break
    fi
  fi
  for t in $(cat "$cg/cgroup.procs"); do kill -9 "$t" 2>/dev/null; done
  wait "$pool" 2>/dev/null
  [ "$handed" != 0 ] && break
done
[ "$handed" != 0 ] && [ "$causes" -gt 0 ] &&
  ok "vmm pool: members that could not be prepared said why ($causes limit(s)); a clone handed out at pids.max=$handed" ||
  bad "vmm pool: $causes limit(s) with a member's cause, a clone handed out at pids.max=$handed"

# A running VM moved into the cgroup (the limit is checked only when a task is made) with no room or
# little: `vmm fork` gets a one-line error (the fork() refused, or a thread of the child that could
# not be made), and the VM runs on; with room, the fork works.
# zombies_of PID: the pids of its children that ended and were not reaped.
zombies_of() {
  for st in /proc/[0-9]*/status; do
    grep -q "^PPid:[[:space:]]*$1\$" "$st" 2>/dev/null && grep -q "^State:[[:space:]]*Z" "$st" 2>/dev/null && echo "${st%/status}"
  done
}
mkfifo "$work/p.in"
"$vmm" run --name p --kernel "$guest" --cmdline counter --console stdio <"$work/p.in" >"$work/p.out" 2>"$work/p.err" &
ppid=$!
exec 3>"$work/p.in"
n=0
while ! grep -q "counter: ready" "$work/p.out" 2>/dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
# Its API serving already (its server's threads are made by the first request).
"$vmm" pause p && "$vmm" resume p || bad "pause and resume of p"
sleep 2.5  # the request's connection thread ends (it lingers 2 s for another connection)
fresh_cgroup fork || bad "cgroup fork"
echo "$ppid" >"$cg/cgroup.procs"
tasks=$(ls "/proc/$ppid/task" | wc -l)
refused=0
for extra in 0 1 2 3 4 5 6 7 8 9 10 11 12; do
  echo $((tasks + extra)) >"$cg/pids.max"
  "$vmm" fork p >"$work/f.out" 2>"$work/f.err"
  status=$?
  [ "$status" = 0 ] && break
  cp "$work/f.err" "$work/err"
  if ! one_error "Resource temporarily unavailable" || ! grep -q "^vmm: p forked 0 of 1 time(s)" "$work/f.err"; then
    bad "vmm fork of a VM with room for $extra more task(s): status $status"
    sed 's/^/  err: /' "$work/f.err"
    break
  fi
  refused=$((refused + 1))
  echo "limits: (room for $extra: $(grep "^vmm: error: " "$work/f.err"))"
  # A child that could not start has ended: p reaps it (a zombie would hold a pid of the cgroup's).
  n=0
  while [ -n "$(zombies_of "$ppid")" ] && [ $n -lt 30 ]; do sleep 0.1; n=$((n + 1)); done
  [ -z "$(zombies_of "$ppid")" ] || { bad "p left its ended child as a zombie: $(zombies_of "$ppid")"; break; }
done
[ "$status" = 0 ] && [ $refused -gt 1 ] && ok "vmm fork: refused with one error line with room for 0..$((refused - 1)) more tasks, forked with $refused" ||
  bad "vmm fork: $refused refusals, last status $status"
echo get >&3
n=0
while ! grep -q "^counter: value=" "$work/p.out" && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
kill -0 "$ppid" 2>/dev/null && grep -q "^counter: value=" "$work/p.out" && ok "the parent runs on and answers" ||
  { bad "the parent after the refused fork"; sed 's/^/  err: /' "$work/p.err"; }
echo quit >&3
exec 3>&-
wait "$ppid"
# The test guest ends a wait a broken CPU interrupted inside its check, and says so: only the nested lane's may (README).
grep -q "vmm_nested\." /proc/cmdline || ! find "$work" -type f -size -10M -exec grep -l "^testguest: the CPU delivered" {} + 2>/dev/null | grep -q . ||
  bad "a test guest met an interrupt inside its wait's check on a CPU that must hold it"
[ $fail = 0 ] && echo "limits: PASS"
exit $fail
