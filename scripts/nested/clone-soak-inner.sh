#!/bin/sh
# Runs in L1 for clone-soak.sh: ROUNDS rounds of four concurrent clones of a counter template, each
# given `get`, `inc N`, `get`, `quit` on stdin; a clone still running after 20 s is snapshotted and
# reported (tg-report.py), then killed.
# usage: clone-soak-inner.sh ROUNDS SYMBOL=ADDRESS...
rounds=$1
shift
syms="$*"
work=$(mktemp -d)
export VMM_STATE_DIR=$work/state
vmm template create counter --kernel /files/testguest.elf --cmdline counter --ready-on "counter: ready" \
  --console none >"$work/t.out" 2>&1 || { echo "soak: the template failed"; cat "$work/t.out"; exit 1; }
r=0 hung=0 caught=0
while [ $r -lt "$rounds" ]; do
  r=$((r + 1))
  pids=
  for i in 1 2 3 4; do
    printf 'get\ninc %s\nget\nquit\n' "$i" >"$work/in$i"
    vmm run --clone-of counter --name "r${r}c$i" --console stdio <"$work/in$i" >"$work/c$i.out" 2>&1 &
    pids="$pids $!"
  done
  n=0
  while [ $n -lt 40 ]; do
    alive=0
    for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.5
    n=$((n + 1))
  done
  i=0
  for p in $pids; do
    i=$((i + 1))
    if kill -0 "$p" 2>/dev/null; then
      hung=$((hung + 1))
      echo "soak: round $r: clone r${r}c$i (pid $p) still silent after 20 s; its console:"
      sed 's/^/soak:   | /' "$work/c$i.out"
      if vmm snapshot "r${r}c$i" "$work/snap$r-$i" >"$work/snap.out" 2>&1; then
        PYTHONHOME=/files/python python3 /files/tg-report.py "$work/snap$r-$i" $syms 2>&1 | sed 's/^/soak:   /'
      else
        sed 's/^/soak:   snapshot: /' "$work/snap.out"
      fi
      kill -9 "$p"
    fi
    wait "$p" 2>/dev/null
    if grep -q "^testguest: the CPU delivered" "$work/c$i.out"; then
      caught=$((caught + 1))
      echo "soak: round $r: clone r${r}c$i: $(grep "^testguest: the CPU delivered" "$work/c$i.out")"
    fi
  done
  [ $((r % 50)) = 0 ] && echo "soak: $r rounds, $hung clones hung, $caught reported a wait ended for the CPU"
  vmm clone prune >/dev/null 2>&1
done
echo "soak: done: $rounds rounds ($((rounds * 4)) clones), $hung hung, $caught reported a wait ended for the CPU"
