#!/usr/bin/env bash
# A debugging tool of the nested lane: starts clones of the test guest's counter template, four at
# a time with their input on stdin, again and again in one L1, and reports on any clone that does
# not answer within 20 s: a snapshot of it (`vmm snapshot`) read by tg-report.py (its vCPU, the
# guest's serial ring and wait counters, and the interrupt frames left on its stack). It found the
# lane's broken STI shadow (README, nested lane): 2 clones in 3600 under two host CPU hogs.
# usage: scripts/nested/clone-soak.sh [ROUNDS [HOGS]]   (default 300 rounds; HOGS busy loops on the
#        host beside L1, default 2: the hang showed only under load)
# env:   VMM (default build/vmm/vmm), TESTGUEST (default build/guest-images/testguest.elf);
#        L1's console log is kept in $TMPDIR/clone-soak.*.log
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
rounds=${1:-300} hogs=${2:-2}
vmm=${VMM:-$root/build/vmm/vmm}
guest=${TESTGUEST:-$root/build/guest-images/testguest.elf}
[[ -x $vmm && -f $guest ]] || { echo "clone-soak: no vmm at $vmm or test guest at $guest (scripts/build.sh release)" >&2; exit 2; }
# The guest's symbols the report needs, from its ELF (identity-mapped: addresses are guest-physical).
syms=$(nm "$guest" | awk '$3 ~ /^(tg_rx_head|tg_rx_tail|tg_blocked_irqs|tg_serial_irqs|tg_irqs|stack_top|tg_wait|tg_wait_hlt)$/ { printf "%s=0x%s ", $3, $1 }')
log=$(mktemp "${TMPDIR:-/tmp}/clone-soak.XXXXXX.log")
here=$root/scripts/nested
pids=()
for ((i = 0; i < hogs; i++)); do { while :; do :; done; } & pids+=($!); done
trap '[[ ${#pids[@]} -gt 0 ]] && kill "${pids[@]}" 2>/dev/null; true' EXIT
status=0
"$here/run.sh" --timeout $((rounds * 6 + 300)) --cpus 1 --quiet --log "$log" \
  --bin "$vmm" --python "$here/tg-report.py" --file "$here/tg-report.py:tg-report.py" --file "$here/vmmstate.py:vmmstate.py" \
  --file "$guest:testguest.elf" "$here/clone-soak-inner.sh" "$rounds" $syms || status=$?
tr -d '\r' <"$log" | grep -a '^soak' || true
echo "clone-soak: L1's console: $log"
exit $status
