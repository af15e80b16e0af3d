#!/bin/sh
# Fleets through the real binary (`vmm run --clone-of T --count N`), on whatever KVM is there (the
# direct lane, or L1 in the nested lane: POSIX sh, busybox tools).
# usage: fleet-scenario.sh VMM TESTGUEST [--needs-kvm]; $VMM_FLEET_COUNT clones (default 100).
vmm=$1 guest=$2
[ "${3:-}" = --needs-kvm ] && [ ! -c /dev/kvm ] && { echo "skipped: no /dev/kvm"; exit 77; }
count=${VMM_FLEET_COUNT:-100}
work=$(mktemp -d)
export VMM_STATE_DIR="$work/state"
fail=0
cleanup() {
  kill "$watchdog" 2>/dev/null
  for d in "$VMM_STATE_DIR"/run/*/vm.json; do
    [ -f "$d" ] && kill -9 "$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$d")" 2>/dev/null
  done
  rm -rf "$work"
}
trap cleanup EXIT
# The clones run in sessions of their own: if this script were killed at ctest's timeout, they
# would run on. End it (and them) a little before that instead.
limit=${VMM_TEST_LIMIT:-170}
( sleep "$limit"; kill -TERM $$ ) >/dev/null 2>&1 </dev/null &
watchdog=$!
trap 'echo "watchdog: still running after $limit s: the test ends, and its VMs with it"; exit 1' TERM
ok() { echo "fleet: ok   $1"; }
bad() { echo "fleet: FAIL $1"; fail=1; }
running() { "$vmm" ps | grep -c " running "; }

"$vmm" template create idt --kernel "$guest" --cmdline identity --ready-on "identity: ready" --console none >"$work/t" 2>&1 ||
  { bad "template"; cat "$work/t"; exit 1; }

# A detached fleet: every clone its own process, directory, identity and API; the launcher is gone.
mkdir -p "$VMM_STATE_DIR/clones/web-3"  # a name already taken: that clone fails, the others start
"$vmm" run --clone-of idt --count "$count" --name web --detach >"$work/fleet.out" 2>"$work/fleet.err"
st=$?
[ "$st" != 0 ] && grep -q "^web-3 failed: a clone named 'web-3' already exists .* (exit status 2)\$" "$work/fleet.out" &&
  ! grep -q "^vmm: error" "$work/fleet.err" &&
  grep -q "$((count - 1)) of $count clones running, 1 failed" "$work/fleet.err" && ok "one clone failing does not stop the others (status $st)" ||
  { bad "fleet with a taken name: status $st"; sed 's/^/  | /' "$work/fleet.out" "$work/fleet.err" | tail -20; }
# (each clone's API comes up a moment after its guest runs: give them time on a slow host)
t=0
while [ "$(running)" != $((count - 1)) ] && [ $t -lt 30 ]; do sleep 1; t=$((t + 1)); done
n=$(running)
[ "$n" = $((count - 1)) ] && ok "vmm ps: $n clones running after --detach" || { bad "ps shows $n"; "$vmm" ps | grep -v " running "; }
pids=$(grep " ms$" "$work/fleet.out" | cut -d' ' -f2 | sort -u | wc -l)
[ "$pids" = $((count - 1)) ] && ok "$pids distinct processes" || bad "$pids distinct pids"
# Each clone is its own machine: its console shows its own name and a fresh generation.
i=1 seen=0
while [ $i -le "$count" ]; do
  [ $i = 3 ] || { log="$VMM_STATE_DIR/clones/web-$i/console.log"; n=0
    while ! grep -q "name=web-$i .*changes=1$" "$log" 2>/dev/null && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
    grep -q "name=web-$i .*changes=1$" "$log" && seen=$((seen + 1)) && grep -o "generation=[0-9a-f]*" "$log" | tail -1 >>"$work/gens"; }
  i=$((i + 1))
done
# How each noticed: seen=irq, the VMGenID's interrupt (through this guest's 8259), which every clone
# must take (begin_clone raises it before the vCPUs run and nothing drops it since); seen=poll,
# the guest's once-a-second re-read, would mean the edge was lost.
irqs=$(grep -l "name=web-[0-9]* .*seen=irq changes=1$" "$VMM_STATE_DIR"/clones/web-*/console.log | wc -l)
polls=$(grep -l "name=web-[0-9]* .*seen=poll changes=1$" "$VMM_STATE_DIR"/clones/web-*/console.log | wc -l)
[ "$irqs" = $((count - 1)) ] && ok "every clone took the VMGenID interrupt" || bad "VMGenID interrupts: $irqs taken, $polls clones polled"
[ "$seen" = $((count - 1)) ] && [ "$(sort -u "$work/gens" | wc -l)" = $((count - 1)) ] &&
  ok "every clone runs with its own name and generation" || { bad "identities: $seen seen, $(sort -u "$work/gens" | wc -l) distinct generations";
  for l in "$VMM_STATE_DIR"/clones/web-*/console.log; do grep -q "changes=1$" "$l" || { echo "  $l:"; sed 's/^/  | /' "$l"; }; done; }
# A detached fleet's clones hold nothing of the launcher's output: a pipe from it ends when the
# launcher does (they write to STATE/clones/NAME/vmm.log).
start=$(date +%s)
"$vmm" run --clone-of idt --count 2 --name piped --detach 2>&1 | cat >"$work/piped"
[ $(($(date +%s) - start)) -lt 20 ] && [ "$(grep -c "^piped-[12] " "$work/piped")" = 2 ] && [ -f "$VMM_STATE_DIR/clones/piped-1/vmm.log" ] &&
  ok "vmm run --count --detach | cat returns once the clones run" || { bad "detached fleet through a pipe"; cat "$work/piped"; }
"$vmm" stop --timeout 0 piped-1 >/dev/null; "$vmm" stop --timeout 0 piped-2 >/dev/null
# A clone that does not start in time (its console a FIFO nobody reads: its open() waits) is killed,
# reported, and leaves nothing behind; the others run, each with its console file from the pattern.
mkfifo "$work/hang-2.con"
"$vmm" run --clone-of idt --count 3 --name hang --console "file:$work/{name}.con" --start-timeout 12 --detach \
  >"$work/hang.out" 2>"$work/hang.err"
st=$?
n=0
while { [ ! -s "$work/hang-1.con" ] || [ ! -s "$work/hang-3.con" ]; } && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
[ "$st" = 10 ] && grep -q "^hang-2 failed: not started 12 s after its process was made (killed)\$" "$work/hang.out" &&
  grep -q "2 of 3 clones running, 1 failed" "$work/hang.err" && [ ! -e "$VMM_STATE_DIR/clones/hang-2" ] &&
  [ -s "$work/hang-1.con" ] && [ -s "$work/hang-3.con" ] && [ ! -e "$VMM_STATE_DIR/clones/hang-1/console.log" ] &&
  ok "a clone not started in --start-timeout is killed and removed, the others run (console file:{name})" ||
  { bad "fleet start timeout: status $st"; cat "$work/hang.out" "$work/hang.err"; ls -l "$work"; }
"$vmm" stop --timeout 0 hang-1 >/dev/null; "$vmm" stop --timeout 0 hang-3 >/dev/null
# kill -9 of one leaves the rest running.
pid5=$(grep "^web-5 " "$work/fleet.out" | cut -d' ' -f2)
kill -9 "$pid5"
sleep 0.3
n=$(running)
[ "$n" = $((count - 2)) ] && ok "kill -9 of one: $n still running" || bad "after kill -9: $n running"
# Stop them all through their APIs.
stoppers=""
for d in "$VMM_STATE_DIR"/run/*; do "$vmm" stop "$(basename "$d")" >/dev/null 2>&1 & stoppers="$stoppers $!"; done
for p in $stoppers; do wait "$p"; done
n=0
while [ -n "$(ls "$VMM_STATE_DIR/run" 2>/dev/null)" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
[ -z "$(ls "$VMM_STATE_DIR/run" 2>/dev/null)" ] && ok "all stopped" || {
  bad "left running: $(ls "$VMM_STATE_DIR/run" | head -3)"
  for d in "$VMM_STATE_DIR"/run/*; do c=$(basename "$d"); echo "--- $c"; cat "$VMM_STATE_DIR/clones/$c/vmm.log"; tail -3 "$VMM_STATE_DIR/clones/$c/console.log"; cat "$d/vm.json"; done
}

# A foreground fleet: a line per clone, and SIGINT to the launcher stops every clone.
"$vmm" run --clone-of idt --count 5 --name fg >"$work/fg.out" 2>"$work/fg.err" &
launcher=$!
n=0
while [ "$(cat "$work/fg.out" 2>/dev/null | grep -c " ms$")" -lt 5 ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
[ "$(grep -c "^fg-[1-5] [0-9]* [0-9.]* ms$" "$work/fg.out")" = 5 ] && ok "foreground: a line per clone (name, pid, ms)" || { bad "fg lines"; cat "$work/fg.out"; }
kill -INT "$launcher"
wait "$launcher"
st=$?
n=0
while [ -n "$(ls "$VMM_STATE_DIR/run" 2>/dev/null)" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
[ "$st" = 0 ] && [ -z "$(ls "$VMM_STATE_DIR/run" 2>/dev/null)" ] && grep -q "stopping 5 clones" "$work/fg.err" &&
  ok "Ctrl-C to the launcher stops the whole fleet" || { bad "Ctrl-C: status $st"; cat "$work/fg.err"; ls "$VMM_STATE_DIR/run"; }

# Ctrl-C while the fleet starts: no more clones start, those started stop, and the launcher ends
# with 128+SIGINT. (If every clone had started before the signal, it is the foreground stop above.)
"$vmm" run --clone-of idt --count 30 --name int >"$work/int.out" 2>"$work/int.err" &
launcher=$!
n=0
while ! grep -q " ms$" "$work/int.out" 2>/dev/null && [ $n -lt 600 ]; do sleep 0.05; n=$((n + 1)); done
kill -INT "$launcher"
start=$(date +%s)
wait "$launcher"
st=$?
took=$(($(date +%s) - start))
n=0
while [ -n "$(ls "$VMM_STATE_DIR/run" 2>/dev/null)" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
started=$(grep -c " ms$" "$work/int.out")
if grep -q "interrupted (Interrupt) while starting" "$work/int.err"; then
  [ "$st" = 130 ] && [ "$started" -lt 30 ] && [ -z "$(ls "$VMM_STATE_DIR/run" 2>/dev/null)" ] && [ "$took" -le 15 ] &&
    ok "Ctrl-C while the fleet starts: $started of 30 had started, all stopped, status 130 (${took} s)" ||
    { bad "Ctrl-C while starting: status $st, $started started, ${took} s"; cat "$work/int.err"; ls "$VMM_STATE_DIR/run"; }
else
  [ "$st" = 0 ] && grep -q "stopping 30 clones" "$work/int.err" && [ -z "$(ls "$VMM_STATE_DIR/run" 2>/dev/null)" ] &&
    ok "Ctrl-C to a fleet of 30 (all had started before it): all stopped" ||
    { bad "Ctrl-C during a fleet of 30: status $st"; cat "$work/int.err"; ls "$VMM_STATE_DIR/run"; }
fi

# Ctrl-C twice while clones are stuck before their start (consoles on FIFOs nobody reads: the open()
# waits, and SIGTERM, blocked until a clone runs, with it): the second Ctrl-C kills them, and
# nothing of them stays behind (their directories were left until 2026-12-07).
mkfifo "$work/dbl-1.con" "$work/dbl-2.con"
"$vmm" run --clone-of idt --count 2 --name dbl --console "file:$work/{name}.con" >"$work/dbl.out" 2>"$work/dbl.err" &
launcher=$!
n=0
until { [ -d "$VMM_STATE_DIR/clones/dbl-1" ] && [ -d "$VMM_STATE_DIR/clones/dbl-2" ]; } || [ $n -ge 300 ]; do sleep 0.1; n=$((n + 1)); done
sleep 0.2
kill -INT "$launcher"
sleep 0.5
kill -INT "$launcher"
wait "$launcher"
st=$?
[ "$st" = 130 ] && [ ! -e "$VMM_STATE_DIR/clones/dbl-1" ] && [ ! -e "$VMM_STATE_DIR/clones/dbl-2" ] &&
  ok "Ctrl-C twice to a fleet whose clones had not started: killed, status 130, no directory left" ||
  { bad "double Ctrl-C: status $st"; cat "$work/dbl.err"; ls "$VMM_STATE_DIR/clones"; }

# A fleet whose pipes (one per clone, in the launcher) would not fit under the limit on open files
# is refused before any clone starts: one line, nothing made.
(ulimit -n 40 && "$vmm" run --clone-of idt --count 100 --name nofile --detach) >"$work/nofile.out" 2>&1
st=$?
[ "$st" = 10 ] && [ "$(wc -l <"$work/nofile.out")" = 1 ] && grep -q "RLIMIT_NOFILE" "$work/nofile.out" &&
  [ -z "$(ls "$VMM_STATE_DIR/clones" | grep '^nofile-')" ] &&
  ok "a fleet over the limit on open files: refused before it starts (status 10, one line)" ||
  { bad "fleet over RLIMIT_NOFILE: status $st"; cat "$work/nofile.out"; }

# A warm pool: clones prepared ahead (VM built, state restored), handed out on request. (Under
# ASan too: members are forked by the pool's single-threaded zygote, so none inherits a lock that
# another thread held at the fork.)
"$vmm" pool idt --size 3 >"$work/pool.out" 2>&1 &
poolpid=$!
psock="$VMM_STATE_DIR/run/pool-idt/api.sock"
n=0
while [ ! -S "$psock" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
i=1
while [ $i -le 5 ]; do
  set -- --hostname "p$i"
  [ $i = 5 ] && set -- --hostname p5 --ip 10.1.0.5 --gateway 10.1.0.1  # the address the identity channel carries
  "$vmm" run --clone-of idt --pool "$psock" "$@" >>"$work/pooled" 2>>"$work/pooled.err" || bad "pool request $i"
  i=$((i + 1))
done
p5=$(tail -1 "$work/pooled" | cut -d' ' -f1)
if command -v curl >/dev/null; then
  curl -s --max-time 5 --unix-socket "$VMM_STATE_DIR/run/$p5/api.sock" http://x/vm >"$work/p5.json"
  grep -q '"hostname":"p5"' "$work/p5.json" && grep -q '"ip":"10.1.0.5/24"' "$work/p5.json" && grep -q '"gateway":"10.1.0.1"' "$work/p5.json" &&
    ok "a pooled clone takes the request's hostname, ip and gateway (GET /vm)" || { bad "pooled clone's identity"; cat "$work/p5.json"; }
fi
[ "$(grep -c "^idt-[0-9a-f]* [0-9]* [0-9.]* ms$" "$work/pooled")" = 5 ] && ok "5 clones from the pool (name, pid, request ms)" ||
  { bad "pool requests"; cat "$work/pooled" "$work/pooled.err" "$work/pool.out"; }
seen=0
for c in $(cut -d' ' -f1 "$work/pooled"); do
  n=0
  while ! grep -q "name=$c .*changes=1$" "$VMM_STATE_DIR/clones/$c/console.log" 2>/dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
  grep -q "name=$c .*changes=1$" "$VMM_STATE_DIR/clones/$c/console.log" && seen=$((seen + 1))
done
[ "$seen" = 5 ] && ok "each pooled clone runs with its own name and a new generation" || bad "pooled clones running: $seen"
n=0
while ! "$vmm" ps --json | grep -q '"ready": 3' && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
"$vmm" ps --json | grep -q '"handed_out": 5' && "$vmm" ps --json | grep -q '"ready": 3' && ok "the pool refilled (3 ready, 5 handed out)" ||
  { bad "pool refill"; "$vmm" ps --json | grep -E "ready|handed"; }
# Each waiting member has its STATE/run entry made, its API socket bound, under a hidden name
# that it renames into place at the request: `vmm ps` lists the pool and its 5 clones only.
hidden=$(ls -A "$VMM_STATE_DIR/run" | grep -c '^\.idt-.*\.new\.')
[ "$(running)" = 6 ] && [ "$hidden" = 3 ] && ok "the waiting members are prepared under hidden names, not listed (6 running, 3 hidden)" ||
  { bad "waiting members: $(running) running, $hidden hidden"; ls -A "$VMM_STATE_DIR/run"; }
# They depend on the template as its clones do: removing it is refused while they wait.
"$vmm" template rm idt >"$work/e" 2>&1; st=$?
named=0
for w in $(ls -A "$VMM_STATE_DIR/run" | sed -n 's/^\.\(idt-[0-9a-f]*\)\.new\..*/\1/p'); do grep -q "$w" "$work/e" && named=$((named + 1)); done
[ $st = 2 ] && [ -d "$VMM_STATE_DIR/templates/idt" ] && [ "$named" = 3 ] &&
  ok "template rm refused, naming the pool's 3 waiting members among its dependants" || { bad "template rm under a pool: status $st, $named named"; cat "$work/e"; }
"$vmm" run --clone-of nosuch --pool "$psock" >"$work/e" 2>&1; [ $? = 2 ] && grep -q "a pool of template 'idt'" "$work/e" && ok "--pool of another template refused" || { bad "pool template"; cat "$work/e"; }
"$vmm" run --clone-of idt --pool "$psock" --count 2 >"$work/e" 2>&1; [ $? = 2 ] && ok "--pool with --count refused" || { bad "pool --count"; cat "$work/e"; }
if command -v curl >/dev/null; then
  code=$(curl -s --max-time 20 -o "$work/body" -w "%{http_code}" --unix-socket "$psock" -X POST -d '{"bogus":1}' http://x/clones)
  [ "$code" = 400 ] && grep -q "unknown field" "$work/body" && ok "POST /clones with an unknown field: 400" || bad "pool bad field: $code"
  for body in '{"hostname":"a;reboot"}' '{"ip":"10.0.0.1/40"}' '{"gateway":"10.0.0.1/24"}' '{"ip":"10.1.0.1/24","gateway":"10.1.0.1"}' '{"ip":"10.2.0.5/24","gateway":"10.1.0.1"}'; do
    code=$(curl -s --max-time 20 -o "$work/body" -w "%{http_code}" --unix-socket "$psock" -X POST -d "$body" http://x/clones)
    [ "$code" = 400 ] && grep -q "fault_message" "$work/body" && ok "POST /clones $body: 400" || bad "pool $body: $code"
  done
  code=$(curl -s --max-time 20 -o /dev/null -w "%{http_code}" --unix-socket "$psock" http://x/clones)
  [ "$code" = 405 ] && ok "GET /clones: 405" || bad "pool GET /clones: $code"
fi
# Members that died while they waited (killed, out of memory) are passed over: the next one takes
# the request, and a dead member leaves no directory. (The zygote's children are the members and
# the clones handed out; the waiting ones are those not registered.) All three are stopped first
# and the request is made: two are killed while one of them may hold it unread (its socket then
# says ECONNRESET to the pool, not an end of file: that was "did not start" until 2026-12-06),
# and the third goes on and takes it.
children() { for d in /proc/[0-9]*; do [ "$(sed -n 's/^PPid:[[:space:]]*//p' "$d/status" 2>/dev/null)" = "$1" ] && echo "${d#/proc/}"; done; }
n=0
while ! "$vmm" ps --json | grep -q '"ready": 3' && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
zyg=$(children "$poolpid" | head -1)
registered=$(cat "$VMM_STATE_DIR"/run/*/vm.json 2>/dev/null | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
waiting=""
for p in $(children "$zyg"); do echo "$registered" | grep -qx "$p" || waiting="$waiting $p"; done
set -- $waiting
if [ $# = 3 ]; then
  kill -STOP "$1" "$2" "$3"
  "$vmm" run --clone-of idt --pool "$psock" >>"$work/pooled" 2>"$work/e" &
  requester=$!
  sleep 0.5
  kill -9 "$1" "$2"
  sleep 0.2
  kill -CONT "$3"
  wait "$requester" && [ "$(grep -c "^idt-[0-9a-f]* [0-9]* [0-9.]* ms$" "$work/pooled")" = 6 ] &&
    ok "two waiting members killed, the request perhaps unread in one: the next one takes it" ||
    { bad "pool request past dead members"; cat "$work/e" "$work/pool.out"; }
else
  bad "the pool's waiting members: $# found ($waiting), 3 expected"
fi
# A member that died while it waited, its pid taken by another process since (its parent, the
# zygote, reaped it): the requests that pass it over leave that process alone (the pool killed the
# pid, until 2026-12-07). The pid is handed to a decoy through ns_last_pid (root: the direct lane
# and L1 both); if something else took it first, this cannot be checked and says so.
waiting_members() {
  registered=$(cat "$VMM_STATE_DIR"/run/*/vm.json 2>/dev/null | sed -n 's/.*"pid":\([0-9]*\).*/\1/p')
  for p in $(children "$zyg"); do echo "$registered" | grep -qx "$p" || echo "$p"; done
}
n=0
while ! "$vmm" ps --json | grep -q '"ready": 3' && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
victim=$(waiting_members | head -1)
decoy=""
if [ -n "$victim" ] && [ -w /proc/sys/kernel/ns_last_pid ]; then
  kill -9 "$victim"
  n=0
  while [ -e "/proc/$victim" ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done  # reaped by the zygote
  echo $((victim - 1)) >/proc/sys/kernel/ns_last_pid && { sleep 300 & decoy=$!; }
fi
if [ -n "$decoy" ] && [ "$decoy" = "$victim" ]; then
  for i in 1 2 3; do "$vmm" run --clone-of idt --pool "$psock" >>"$work/pooled" 2>"$work/e" || bad "pool request $i past a dead member"; done
  kill -0 "$decoy" 2>/dev/null && ok "a dead member's pid, now another process's, is left alone by the requests that pass it over" ||
    bad "the pool killed the process that took a dead member's pid"
  kill "$decoy" 2>/dev/null; wait "$decoy" 2>/dev/null
else
  [ -n "$decoy" ] && { kill "$decoy"; wait "$decoy" 2>/dev/null; }
  echo "fleet: (a dead member's pid could not be handed to a decoy: the pool's kill of it is not checked)"
  for i in 1 2 3; do "$vmm" run --clone-of idt --pool "$psock" >>"$work/pooled" 2>"$work/e" || bad "pool request $i past a dead member"; done
fi
# A member killed while it waited is taken out and replaced (the pool counted it ready, handed
# requests to it first, and never made another in its place, until 2026-12-07).
n=0
while ! "$vmm" ps --json | grep -q '"ready": 3' && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
victim=$(waiting_members | head -1)
if [ -n "$victim" ]; then
  kill -9 "$victim"
  n=0
  while [ "$(waiting_members | grep -vcx "$victim")" != 3 ] && [ $n -lt 150 ]; do sleep 0.1; n=$((n + 1)); done
  [ "$(waiting_members | grep -vcx "$victim")" = 3 ] && "$vmm" ps --json | grep -q '"ready": 3' &&
    ok "a member killed while it waited is replaced (3 live ones ready again)" ||
    { bad "a killed waiting member not replaced: $(waiting_members | tr '\n' ' ')"; "$vmm" ps --json | grep -E "ready|handed"; }
else
  bad "no waiting member to kill"
fi
# A closed terminal (SIGHUP) stops it as Ctrl-C does: by default it was killed, its entry left.
kill -HUP "$poolpid"
wait "$poolpid"; st=$?
sleep 0.3
[ "$st" = 0 ] && [ "$(running)" = 9 ] && [ "$(ls "$VMM_STATE_DIR/clones" | grep -c "^idt-")" = 9 ] &&
  [ "$(ls -A "$VMM_STATE_DIR/run" | grep -c '^\.')" = 0 ] &&
  ok "pool stopped: its 9 clones run on, the unused and the dead members left nothing" ||
  { bad "pool stop: status $st, $(running) running"; ls "$VMM_STATE_DIR/clones"; ls -A "$VMM_STATE_DIR/run"; }
for d in "$VMM_STATE_DIR"/run/*; do "$vmm" stop --timeout 0 "$(basename "$d")" >/dev/null 2>&1; done
# A pool serving on a socket of the user's (--api-socket) removes it when it stops (it was left).
"$vmm" pool idt --size 1 --api-socket "$work/pool2.sock" >"$work/pool2.out" 2>&1 &
poolpid=$!
n=0
while [ ! -S "$work/pool2.sock" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
[ -S "$work/pool2.sock" ] && had=1 || had=0
kill -TERM "$poolpid"
wait "$poolpid"; st=$?
[ "$had" = 1 ] && [ "$st" = 0 ] && [ ! -e "$work/pool2.sock" ] && ok "a pool's --api-socket goes with it" ||
  { bad "pool --api-socket: status $st, socket seen $had"; ls -l "$work/pool2.sock"; cat "$work/pool2.out"; }

# Bad usage.
# A pool whose members' interface names would not fit (a member is TEMPLATE-XXXXXXXX), or whose
# waiting members' sockets would not fit under the limit on open files: refused at once (every
# member failed, or its API stopped answering, and it retried for ever).
"$vmm" pool idt --size 2 --net tap=same >"$work/e" 2>&1; [ $? = 2 ] && grep -q "^vmm: error: --net: tap=same: every VM would make the same TAP interface" "$work/e" &&
  ok "a pool's --net with one TAP name for every member refused" || { bad "pool one TAP"; cat "$work/e"; }
"$vmm" run --clone-of idt --count 2 --net tap=tap0,netns=same >"$work/e" 2>&1; [ $? = 2 ] && grep -q "every VM would make the same network namespace" "$work/e" &&
  ok "a fleet's --net with one namespace for every clone refused" || { bad "fleet one netns"; cat "$work/e"; }
"$vmm" pool idt --size 2 --net tap=pool-{name} >"$work/e" 2>&1; [ $? = 2 ] && grep -q "^vmm: error: --net: .*for a member named idt-ffffffff" "$work/e" &&
  ok "a pool's --net pattern too long for its members' names refused" || { bad "pool net pattern"; cat "$work/e"; }
(ulimit -n 1024 && ulimit -Hn 1024 && exec "$vmm" pool idt --size 2000) >"$work/e" 2>&1; [ $? = 2 ] && grep -q "would need 2320 open files" "$work/e" &&
  ok "a pool too large for the limit on open files refused" || { bad "pool size over RLIMIT_NOFILE"; cat "$work/e"; }
"$vmm" run --kernel "$guest" --count 3 >"$work/e" 2>&1; [ $? = 2 ] && grep -q "count needs --clone-of" "$work/e" && ok "--count without --clone-of" || { bad "--count alone"; cat "$work/e"; }
"$vmm" run --clone-of idt --detach >"$work/e" 2>&1; [ $? = 2 ] && grep -q "detach needs --count" "$work/e" && ok "--detach without --count" || { bad "--detach alone"; cat "$work/e"; }
"$vmm" run --clone-of idt --count 0 >"$work/e" 2>&1; [ $? = 2 ] && ok "--count 0 refused" || { bad "--count 0"; cat "$work/e"; }
"$vmm" run --clone-of idt --count 2 --console stdio >"$work/e" 2>&1; [ $? = 2 ] && grep -q "cannot be shared" "$work/e" && ok "--console stdio refused for a fleet" || { bad "stdio fleet"; cat "$work/e"; }
# The test guest ends a wait a broken CPU interrupted inside its check, and says so: only the nested lane's may (README).
grep -q "vmm_nested\." /proc/cmdline || ! find "$work" -type f -size -10M -exec grep -l "^testguest: the CPU delivered" {} + 2>/dev/null | grep -q . ||
  bad "a test guest met an interrupt inside its wait's check on a CPU that must hold it"
exit $fail
