#!/bin/sh
# The demo's guest runs (POSIX sh, so that it also runs inside the nested lane's busybox L1):
# the bundled test guest with one vCPU, with four, and echoing lines from the host; then a
# template of it and a fleet of clones; a running guest forked live; three clones on a bridge, each
# with its own MAC (where a network namespace can be made); a warm pool handing out clones.
# usage: demo-guest.sh VMM TESTGUEST [--bridge]   (--bridge: only that part, in a namespace)
vmm=$1 guest=$2
failed=0  # what did not go as shown: the demo's status (it said 0 whatever happened)
miss() { echo "demo: FAILED: $*"; failed=1; }
# run STATUS ARGS...: vmm ARGS, which must exit with STATUS (the test guest's exits are odd:
# (value << 1) | 1).
run() {
  want=$1
  shift
  echo "\$ vmm $*"
  start=$(date +%s%N)
  "$vmm" "$@"
  rc=$?
  [ "$rc" = "$want" ] || miss "vmm $1: exit status $rc, not $want"
  end=$(date +%s%N)
  case "$start$end" in
    *N*) echo "(exit status $rc)" ;;  # a date without nanoseconds
    *) echo "(exit status $rc, $(( (end - start) / 1000 )) µs)" ;;
  esac
  echo
  return 0
}
if [ "${3:-}" = --bridge ]; then
  # Clones on a bridge (run by the main part inside a network namespace of its own): a template of
  # the test guest's ARP server, and three clones on br0, each on its own TAP with its own MAC and
  # address. The test guest has no IP stack: it answers for 10.0.2.2, whatever address it is
  # given; what it shows is the MACs (a Linux guest with vmm-agent takes its address too, README).
  ip link set lo up
  ip link add br0 address 02:00:00:00:00:01 type bridge && ip addr add 10.0.2.1/24 dev br0 && ip link set br0 up || exit 0
  echo "\$ vmm template create web --kernel testguest.elf --cmdline net-serve --net tap=tweb,mac=52:54:00:00:00:02 ..."
  "$vmm" template create web --kernel "$guest" --cmdline net-serve --net tap=tweb,mac=52:54:00:00:00:02 --ip 10.0.2.2/24 \
    --ready-on "net-serve: ready" --console none
  echo "\$ vmm run --clone-of web --count 3 --name web --net 'tap=web{i},bridge=br0' --ip 10.0.2.11 --detach"
  "$vmm" run --clone-of web --count 3 --name web --net 'tap=web{i},bridge=br0' --ip 10.0.2.11 --detach
  "$vmm" ps
  echo "\$ arping -I br0 10.0.2.2   (each clone answers from its own MAC, none from the template's)"
  busybox arping -c 2 -w 3 -I br0 10.0.2.2 | grep -i reply | sort -u
  echo "\$ bridge fdb show br br0"
  bridge fdb show br br0 | grep -v permanent
  for n in 1 2 3; do "$vmm" stop --timeout 0 "web-$n" >/dev/null; done
  exit 0
fi

run 1 run --kernel "$guest" --cmdline hello
run 1 run --kernel "$guest" --cmdline smp --cpus 4
printf 'hello from the host\nquit\n' >"${TMPDIR:-/tmp}/demo-echo.$$"
run 1 run --kernel "$guest" --cmdline echo <"${TMPDIR:-/tmp}/demo-echo.$$"
rm -f "${TMPDIR:-/tmp}/demo-echo.$$"

# Cloning: a template of the counter guest (booted once, saved at its ready line), then a fleet of
# clones started from it at once; each is told to add a different amount, and each answers with its
# own value (they share the template's memory copy-on-write, and diverge).
state=$(mktemp -d)
export VMM_STATE_DIR="$state"
run 0 template create counter --kernel "$guest" --cmdline counter --ready-on "counter: ready" --console none
"$vmm" template ls
echo
echo "\$ vmm run --clone-of counter --name clone-N   (5 clones at once; each gets 'inc N*10', 'get', 'quit')"
for n in 1 2 3 4 5; do
  (
    start=$(date +%s%N)
    out=$(printf 'inc %s\nget\nquit\n' $((n * 10)) | "$vmm" run --clone-of counter --name "clone-$n" --console stdio 2>&1)
    end=$(date +%s%N)
    value=$(echo "$out" | grep -o 'value=[0-9]*' | tail -1)
    restored=$(echo "$out" | grep -o 'restored in [0-9.]* ms' | tail -1)
    case "$start$end" in
      *N*) echo "clone-$n: counter $value, $restored" ;;
      *) echo "clone-$n: counter $value, $restored, exec to exit $(( (end - start) / 1000000 )) ms" ;;
    esac
    [ "$value" = "value=$((n * 10))" ] || { echo "demo: FAILED: clone-$n counted $value, not value=$((n * 10))"; exit 1; }
  ) &
  pids="${pids:-} $!"
done
for p in $pids; do wait "$p" || failed=1; done
echo
"$vmm" template ls
echo

# Live fork: a running counter guest (value 5) forked 3 times; each copy is told to add a different
# amount through its API (vmm input: a fork's console is a log file) and diverges; the parent is
# unaffected.
work=$state/demo
mkdir -p "$work"
mkfifo "$work/live.in"
"$vmm" run --kernel "$guest" --cmdline counter --name live --console stdio <"$work/live.in" >"$work/live.out" 2>&1 &
live=$!
exec 3>"$work/live.in"
# wait_for FILE PATTERN: until FILE has a line matching PATTERN (10 s at most)
wait_for() { t=0; while ! grep -q "$2" "$1" 2>/dev/null && [ $t -lt 100 ]; do sleep 0.1; t=$((t + 1)); done; }
wait_for "$work/live.out" "counter: ready"
echo "inc 5" >&3
wait_for "$work/live.out" "value=5"
echo "\$ vmm fork live --count 3"
"$vmm" fork live --count 3 >"$work/forks"
cat "$work/forks"
k=0
for child in $(cut -d' ' -f1 "$work/forks"); do
  k=$((k + 1))
  "$vmm" input "$child" "inc $((k * 100))"
  "$vmm" input "$child" get
  wait_for "$state/clones/$child/console.log" "value=$((5 + k * 100))"
  grep -q "value=$((5 + k * 100))" "$state/clones/$child/console.log" || miss "fork $child did not count to $((5 + k * 100))"
  echo "$child: counter $(grep -o 'value=[0-9]*' "$state/clones/$child/console.log" | tail -1) (it was 5 at the fork, then +$((k * 100)))"
done
echo "get" >&3
sleep 0.2
echo "live (the parent): counter $(grep -o 'value=[0-9]*' "$work/live.out" | tail -1)"
[ "$(grep -o 'value=[0-9]*' "$work/live.out" | tail -1)" = value=5 ] || miss "the forked parent's counter changed"
for child in $(cut -d' ' -f1 "$work/forks"); do "$vmm" stop --timeout 0 "$child"; done
echo "quit" >&3
exec 3>&-
wait "$live"
echo

# Clones on a bridge, where this runs as root with iproute2 (not in the nested lane's busybox L1).
ns=vmmdemo$$
if [ "$(id -u)" = 0 ] && ip netns add $ns 2>/dev/null; then
  ip netns exec $ns sh "$0" "$vmm" "$guest" --bridge
  ip netns del $ns
  echo
else
  echo "(clones on a bridge: skipped here; they need root and iproute2's ip netns)"
  echo
fi

# A warm pool: 3 clones of the template prepared ahead (VM built, state restored, vCPU threads
# parked); each request takes one and the pool refills. Each line: name, pid, request -> answer.
echo "\$ vmm pool counter --size 3 &"
"$vmm" pool counter --size 3 2>"$work/pool.err" &
pool=$!
n=0
while ! "$vmm" ps 2>/dev/null | grep -q "^pool-counter " && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
sleep 1  # filled
sock=$state/run/pool-counter/api.sock
for i in 1 2 3; do
  echo "\$ vmm run --clone-of counter --pool $sock"
  "$vmm" run --clone-of counter --pool "$sock" || miss "a clone from the pool"
done
"$vmm" ps
kill -INT "$pool"
wait "$pool"
for d in "$state"/run/*; do [ -d "$d" ] && "$vmm" stop --timeout 0 "$(basename "$d")" >/dev/null; done
rm -rf "$state"
[ "$failed" = 0 ] && echo "demo: everything above went as shown" || echo "demo: something above failed (FAILED lines)"
exit "$failed"
