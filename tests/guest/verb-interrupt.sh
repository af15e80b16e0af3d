#!/usr/bin/env bash
# The commands that run no VM end on Ctrl-C like any other tool (main() blocks SIGINT and SIGTERM
# for the VM's sigwait; these unblock them): here `vmm snapshot` against a server that accepts and
# never answers, which it would wait for 600 s.
# usage: verb-interrupt.sh VMM
set -u
vmm=$1
work=$(mktemp -d)
trap 'kill $server 2>/dev/null; rm -rf "$work"' EXIT
python3 - "$work/api.sock" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(8)
held = []
while True:
    c, _ = s.accept()
    held.append(c)  # never answered
PY
server=$!
for _ in $(seq 50); do [ -S "$work/api.sock" ] && break; sleep 0.1; done
fail=0
for sig in INT TERM; do
  "$vmm" snapshot "$work/api.sock" "$work/snap" >"$work/out" 2>&1 &
  pid=$!
  sleep 0.5
  kill -s "$sig" "$pid"
  ended=0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || { ended=1; break; }; sleep 0.1; done
  if [ $ended = 1 ]; then
    wait "$pid"; st=$?
    echo "vmm snapshot ended on SIG$sig (status $st)"
    [ "$st" -gt 128 ] || { echo "FAIL: status $st, not a signal's"; fail=1; }
  else
    echo "FAIL: vmm snapshot still waits 5 s after SIG$sig"; kill -9 "$pid"; fail=1
  fi
done
exit $fail
