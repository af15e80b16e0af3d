#!/usr/bin/env bash
# vmm-agent (its real static binary) applying a clone's identity for real, in a network and mount
# namespace of its own (nothing of the host's is touched: /run and /etc/ssh are empty tmpfs there):
# a generation some step of which fails is applied again, 5 times in all, then recorded (until
# 2026-12-07 it was recorded at once: a MAC refused for a moment left the clone on its template's
# for good); the boot's is recorded at once. The step that fails here: eth0's MAC (the fake
# /sys/class/net tree names an eth0 that the namespace does not have).
# usage: agent-retry.sh VMM_AGENT   (root and unshare(1) needed, else skipped: status 77)
set -uo pipefail
agent=$1
[[ -x $agent ]] || { echo "agent-retry: $agent is not built"; exit 1; }
if [[ $(id -u) != 0 ]] || ! unshare -mn true 2>/dev/null; then echo "agent-retry: skipped (needs root and unshare)"; exit 77; fi
# shellcheck source=agent-lib.sh
. "$(dirname "$0")/agent-lib.sh"
agent_setup agent-retry
mk() {  # mk GENERATION: the identity file, written whole at once
  printf 'generation=%s\nmac0=02:00:00:00:00:01\n' "$1" >"$work/id.new"
  truncate -s 1024 "$work/id.new"
  mv "$work/id.new" "$work/id"
}
a=00112233445566778899aabbccddeeff b=ffeeddccbbaa99887766554433221100
mk $a
unshare -mn sh -c 'mount -t tmpfs vmm-agent-retry /run && { [ ! -d /etc/ssh ] || mount -t tmpfs vmm-agent-retry /etc/ssh; } &&
  exec "$0" --identity "$1" --net-dir "$2" --poll-ms 50' "$agent" "$work/id" "$net" >"$work/out" 2>&1 &
pid=$!
for _ in $(seq 50); do grep -q "watching the generation" "$work/out" && break; sleep 0.1; done
mk $b
for _ in $(seq 100); do grep -q "applied generation $b" "$work/out" && break; sleep 0.1; done
kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=""
tries=$(grep -c "generation $b: .* step(s) failed: applying it again" "$work/out")
[[ $(grep -c "applied generation $a" "$work/out") == 1 ]] && ! grep -q "generation $a: .*applying it again" "$work/out" ||
  bad "the boot's generation: not recorded once, without retries"
[[ $tries == 4 ]] && grep -q "try 5 of 5" "$work/out" && [[ $(grep -c "applied generation $b" "$work/out") == 1 ]] ||
  bad "a clone's generation whose step failed: $tries retries (4 expected), then recorded once"
grep -q "error: eth0: set mac\|error: eth0" "$work/out" || bad "the failing step did not fail"
[[ $fail == 0 ]] && echo "agent-retry: PASS" || sed 's/^/  | /' "$work/out"
exit $fail
