#!/usr/bin/env bash
# vmm-agent (its real static binary), in a network and mount namespace of its own (/run, /etc/ssh
# and /usr/sbin are empty tmpfs there), applying a clone's identity while a new one arrives: a VM
# forked while its agent waited for udhcpc resumes there with an identity of its own, and the
# agent stops that udhcpc (a fake one here that never answers) and applies the new identity at
# once; until 2026-12-08 it waited udhcpc out (~9 s with the host dropping the parent's frames).
# Also: a generation some step of which fails is retried, but its SSH host keys are made once
# (every retry made new ones: clients saw the host key change up to 5 times).
# usage: agent-superseded.sh VMM_AGENT   (root, unshare(1) and ssh-keygen needed, else skipped: 77)
set -uo pipefail
agent=$1
[[ -x $agent ]] || { echo "agent-superseded: $agent is not built"; exit 1; }
if [[ $(id -u) != 0 ]] || ! unshare -mn true 2>/dev/null || [[ ! -d /etc/ssh ]] || [[ ! -x /usr/bin/ssh-keygen ]]; then
  echo "agent-superseded: skipped (needs root, unshare, /etc/ssh and /usr/bin/ssh-keygen)"; exit 77
fi
# shellcheck source=agent-lib.sh
. "$(dirname "$0")/agent-lib.sh"
agent_setup agent-superseded
mk() {  # mk GENERATION MAC: the identity file, written whole at once (DHCP)
  printf 'generation=%s\nmac0=%s\nip=dhcp\n' "$1" "$2" >"$work/id.new"
  truncate -s 1024 "$work/id.new"
  mv "$work/id.new" "$work/id"
}
a=00112233445566778899aabbccddeeff b=ffeeddccbbaa99887766554433221100 c=0123456789abcdef0123456789abcdef
printf 'generation=%s\n' $a >"$work/id"
truncate -s 1024 "$work/id"
# The fake udhcpc says it started; the first waits for ever (as one whose frames the host drops),
# the others fail at once.
unshare -mn sh -c 'mount -t tmpfs vmm-agent-superseded /run && mount -t tmpfs vmm-agent-superseded /etc/ssh &&
  : >/etc/ssh/ssh_host_ed25519_key &&
  mount -t tmpfs vmm-agent-superseded /usr/sbin && printf "#!/bin/sh\necho \"fake udhcpc \$\$\" >>$3/udhcpc.log\n[ \$(wc -l <$3/udhcpc.log) = 1 ] || exit 1\nexec sleep 60\n" >/usr/sbin/udhcpc &&
  chmod +x /usr/sbin/udhcpc && exec "$0" --identity "$1" --net-dir "$2" --poll-ms 50' "$agent" "$work/id" "$net" "$work" >"$work/out" 2>&1 &
pid=$!
for _ in $(seq 50); do grep -q "watching the generation" "$work/out" && break; sleep 0.1; done
mk $b 02:00:00:00:00:01
for _ in $(seq 100); do [[ -s $work/udhcpc.log ]] && break; sleep 0.1; done
[[ -s $work/udhcpc.log ]] || bad "udhcpc did not start for generation $b"
start=$(date +%s%N)
mk $c 02:00:00:00:00:02
# The agent looks every 20 ms while udhcpc runs (the fake one runs 60 s: the old agent waited it
# out). 20 s of room for a loaded machine; then $c's own udhcpc, after its SSH keys are made.
for _ in $(seq 200); do grep -q "stopped it" "$work/out" && break; sleep 0.1; done
took=$((($(date +%s%N) - start) / 1000000))
grep -q "eth0: a new identity arrived while udhcpc ran: stopped it" "$work/out" && grep -q "generation $b: dropped for the identity that replaced it" "$work/out" ||
  bad "generation $b was not dropped for $c within 20 s"
for _ in $(seq 200); do [[ $(wc -l <"$work/udhcpc.log") -ge 2 ]] && break; sleep 0.1; done
[[ $(wc -l <"$work/udhcpc.log") -ge 2 ]] || bad "the new generation's udhcpc did not start"
first=$(head -1 "$work/udhcpc.log" | cut -d' ' -f3)
kill -0 "$first" 2>/dev/null && bad "generation $b's udhcpc ($first) still runs"
grep -q "applied generation $b" "$work/out" && bad "generation $b recorded as applied"
# $c's steps fail (the namespace has no eth0), so it is tried 5 times; its keys are made once.
for _ in $(seq 200); do grep -q "applied generation $c" "$work/out" && break; sleep 0.1; done
kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; pid=""
grep -q "applied generation $c" "$work/out" || bad "generation $c not applied after its retries"
keys=$(grep -c "ssh host keys regenerated" "$work/out")
[[ $keys == 2 ]] || bad "ssh host keys made $keys times for generations $b and $c (2 expected: once each)"
[[ $fail == 0 ]] && echo "agent-superseded: PASS ($took ms from the new identity to the old udhcpc stopped)" || sed 's/^/  | /' "$work/out"
exit $fail
