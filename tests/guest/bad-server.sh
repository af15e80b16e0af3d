#!/usr/bin/env bash
# The CLI verbs against a server that answers JSON of the wrong shape (not a vmm, another version):
# one line and status 10, or a listing that marks that VM, never an abort (json's accessors throw on
# a type they did not expect). usage: bad-server.sh VMM
set -u
vmm=$1
work=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill $server 2>/dev/null; rm -rf "$work"' EXIT
export VMM_STATE_DIR="$work/state"
mkdir -p "$VMM_STATE_DIR/run/fake"
chmod 700 "$VMM_STATE_DIR/run" "$VMM_STATE_DIR/run/fake"
sock="$VMM_STATE_DIR/run/fake/api.sock"
# serve BODY: answers every request 200 with BODY, registered as the running VM "fake" (its
# vm.json locked, as a VM holds it).
serve() {
  [ -n "$server" ] && { kill $server; wait $server 2>/dev/null; rm -f "$sock"; }
  python3 - "$sock" "$1" "$VMM_STATE_DIR/run/fake/vm.json" <<'PY' &
import fcntl, http.server, json, os, socketserver, sys
sock, body, info = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
f = open(info, "w")
fcntl.flock(f, fcntl.LOCK_EX)
f.write(json.dumps({"name": "fake", "pid": os.getpid(), "socket": sock}) + "\n"); f.flush()
class H(http.server.BaseHTTPRequestHandler):
    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_PUT = do_POST = answer
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
S(sock, H).serve_forever()
PY
  server=$!
  for _ in $(seq 50); do [ -S "$sock" ] && return; sleep 0.1; done
  echo "FAIL: the fake server did not start"; exit 1
}
fail=0
# expect NAME STATUS PATTERN -- command: its status, and a line of its output matching PATTERN.
expect() {
  local name=$1 want=$2 pattern=$3
  shift 4
  timeout 20 "$@" >"$work/out" 2>&1
  local got=$?
  if [ "$got" = "$want" ] && grep -qE -- "$pattern" "$work/out" && [ "$want" = 0 -o "$(wc -l <"$work/out")" = 1 ]; then
    echo "ok   $name"
  else
    echo "FAIL $name: status $got (expected $want), pattern '$pattern'"; sed 's/^/  | /' "$work/out"; fail=1
  fi
}
serve '{"name": 1, "config": [], "state": {}}'
expect ps_wrong_types 0 "unknown .*an answer vmm cannot read" -- "$vmm" ps
serve '{"name": "fake", "template": 5}'
expect snapshot_wrong_type 10 "^vmm: error: .*an answer vmm cannot read" -- "$vmm" snapshot fake "$work/snap"
serve '{"name": "fake", "children": [5, "x"], "paused_ms": "soon"}'
expect fork_wrong_types 10 "^vmm: error: .*an answer vmm cannot read" -- "$vmm" fork fake --count 2
# `clone rm --force` kills only the clone itself: a booted VM registered under a clone's name (or
# a removal under way) is not killed, and the directory stays.
mkdir -p "$VMM_STATE_DIR/clones/fake"
serve '{"name": "fake", "kind": "booted"}'
expect clone_rm_not_a_clone 2 "^vmm: error: clone 'fake': the name is held in .* which is not this clone" -- "$vmm" clone rm --force fake
kill -0 $server 2>/dev/null && [ -d "$VMM_STATE_DIR/clones/fake" ] && echo "ok   the booted VM runs on, the directory stays" ||
  { echo "FAIL clone rm --force killed the booted VM or removed the directory"; fail=1; }
exit $fail
