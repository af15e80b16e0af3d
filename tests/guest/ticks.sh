#!/usr/bin/env bash
# The test guest's `ticks` scenario with paced input: waits for `ticks: ready`, sends `get`, waits a
# second, sends `get` again and `quit`. Passes when vmm exits with 1 (the guest's 0) and the second
# count is larger than the first (the PIT keeps interrupting, the UART's interrupt keeps waking it).
# usage: ticks.sh VMM TESTGUEST [vmm run options...]
set -u
vmm=$1 guest=$2
shift 2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkfifo "$work/in"
"$vmm" run --kernel "$guest" --cmdline ticks "$@" < "$work/in" > "$work/out" 2> "$work/err" &
pid=$!
exec 3> "$work/in"
fail=0
bad() { echo "ticks: FAIL: $*"; fail=1; }
# wait_for REGEX COUNT: until stdout has COUNT lines matching REGEX, vmm ended, or 30 s passed.
wait_for() {
  local deadline=$(( $(date +%s) + 30 ))
  while (( $(grep -acE -- "$1" "$work/out") < $2 )); do
    kill -0 $pid 2>/dev/null || return 1
    (( $(date +%s) < deadline )) || return 1
    sleep 0.05
  done
}
if wait_for "^ticks: ready$" 1; then
  echo get >&3
  wait_for "^ticks: n=" 1 || bad "no answer to the first get"
  sleep 1
  echo get >&3
  wait_for "^ticks: n=" 2 || bad "no answer to the second get"
  echo quit >&3
else
  bad "no 'ticks: ready' line"
fi
exec 3>&-
deadline=$(( $(date +%s) + 30 ))
while kill -0 $pid 2>/dev/null && (( $(date +%s) < deadline )); do sleep 0.05; done
kill -0 $pid 2>/dev/null && { bad "vmm still running"; kill -KILL $pid; }
wait $pid
status=$?
[[ $status == 1 ]] || bad "exit status $status, expected 1 (the guest's 0)"
mapfile -t n < <(sed -n 's/^ticks: n=\([0-9]*\)$/\1/p' "$work/out")
if (( ${#n[@]} == 2 )); then
  (( n[0] > 0 && n[1] > n[0] )) || bad "the tick count did not grow: ${n[0]} then ${n[1]}"
  # A second at 100 Hz: at least a few dozen ticks, whatever the host's load.
  (( n[1] - n[0] >= 20 )) || bad "only $(( n[1] - n[0] )) ticks in a second"
  echo "ticks: n=${n[0]} then n=${n[1]} a second later"
fi
echo "--- stdout ---"; cat "$work/out"
echo "--- stderr ---"; cat "$work/err"
exit $fail
