#!/usr/bin/env bash
# vmm-agent (guest-images/linux/vmm-agent) through its real static binary on the host, with
# --dry-run --once: identity files (valid ones, malformed ones, injection attempts) against a fake
# /sys/class/net tree (--net-dir): the printed plan lines and exit statuses are checked, and nothing
# may have been executed or changed (marker files an injected command would create, /run's
# generation file, the host name).
# usage: agent-dry.sh VMM_AGENT
set -uo pipefail
agent=$1
[[ -x $agent ]] || { echo "agent-dry: $agent is not built"; exit 1; }
work=$(mktemp -d /tmp/vmm-agent-dry.XXXXXX)
trap 'rm -rf "$work"' EXIT
fail=0
bad() { echo "agent-dry: FAIL $*"; fail=1; }
pwned=/tmp/vmm-agent-dry-pwned-$$
rm -f "$pwned"

# The fake interfaces: eth0, eth2 and eth10 are virtio-net (sorted eth0, eth2, eth10), ens4 is another
# driver's, lo has no device. eth2 already has the MAC that mac1 asks for.
net=$work/net
for i in eth0 eth2 eth10 ens4; do mkdir -p "$net/$i/device"; done
mkdir -p "$net/lo"
ln -s ../../../bus/virtio/drivers/virtio_net "$net/eth0/device/driver"
ln -s /sys/bus/virtio/drivers/virtio_net "$net/eth2/device/driver"
ln -s /sys/bus/virtio/drivers/virtio_net "$net/eth10/device/driver"
ln -s /sys/bus/pci/drivers/e1000 "$net/ens4/device/driver"
echo 52:54:00:12:34:56 >"$net/eth0/address"
echo 02:00:00:00:00:02 >"$net/eth2/address"
echo 52:54:00:12:34:58 >"$net/eth10/address"

# mk NAME TEXT: an identity file: TEXT (printf format) NUL-padded to 1024 bytes.
mk() { printf "$2" >"$work/$1"; truncate -s 1024 "$work/$1"; }
gen='generation=00112233445566778899aabbccddeeff\n'
host_before=$(hostname)
gen_before=$(cat /run/vmm-agent.generation 2>/dev/null || echo none)

# run NAME STATUS [--expect ERE]... [--reject ERE]...: runs the agent on the file, checks its status
# and its output.
run() {
  local name=$1 want=$2 out st
  shift 2
  out=$("$agent" --identity "$work/$name" --dry-run --once --net-dir "$net" 2>&1)
  st=$?
  [[ $st == "$want" ]] || bad "$name: status $st, expected $want"
  while [[ $# -gt 0 ]]; do
    case $1 in
      --expect) grep -qE -- "$2" <<<"$out" || bad "$name: no line matching '$2'" ;;
      --reject) ! grep -qE -- "$2" <<<"$out" || bad "$name: a line matches '$2'" ;;
    esac
    shift 2
  done
  # Every line is the agent's; a dry run only says what it would do.
  grep -vE '^vmm-agent: (would |error: )' <<<"$out" | grep -q . && bad "$name: unexpected lines"
  [[ $fail == 0 ]] || sed "s/^/  $name | /" <<<"$out"
  return 0
}

# ---- Valid files --------------------------------------------------------------------------------
mk full "id=0123456789abcdef0123456789abcdef\nname=web-1\n$gen""mac0=02:00:00:00:00:01\nmac1=02:00:00:00:00:02\nmac2=02:00:00:00:00:03\nhostname=web-1-agent-dry-test\nip=10.0.3.11/24\ngateway=10.0.3.1\nseed=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\ntime=1700000000\ntime_ms=1700000000123\nfuture=\$(touch $pwned)\n"
run full 0 \
  --expect '^vmm-agent: would reseed \(256 bits\)$' \
  --expect '^vmm-agent: would eth0 mac 02:00:00:00:00:01$' \
  --expect '^vmm-agent: would eth0 address 10\.0\.3\.11/24$' \
  --expect '^vmm-agent: would eth10 mac 02:00:00:00:00:03$' \
  --reject 'eth2 mac' --reject 'ens4' --reject 'lo ' \
  --expect '^vmm-agent: would default route via 10\.0\.3\.1$' \
  --expect '^vmm-agent: would flush the neighbour cache$' \
  --expect '^vmm-agent: would send gratuitous ARPs for 10\.0\.3\.11 on eth0$' \
  --expect '^vmm-agent: would hostname web-1-agent-dry-test$' \
  --expect '^vmm-agent: would machine-id 0123456789abcdef0123456789abcdef$' \
  --expect '^vmm-agent: would apply generation 00112233445566778899aabbccddeeff$' \
  --reject 'error'
# The order: entropy, hostname, machine-id (who it is), then the network: each interface's MAC before its
# address, route, neighbours, ARP (reachable last).
order=$("$agent" --identity "$work/full" --dry-run --once --net-dir "$net" | sed 's/^vmm-agent: would //' |
  awk '{print $1 == "eth0" || $1 == "eth10" ? $1 " " $2 : $1}' | tr '\n' ,)
[[ $order == "reseed,hostname,machine-id,eth0 mac,eth0 address,eth10 mac,default,flush,send,apply," ]] ||
  bad "order of the plan: $order"

mk minimal "$gen"
run minimal 0 --expect '^vmm-agent: would apply generation 00112233445566778899aabbccddeeff$' \
  --reject 'mac|address|route|hostname|machine-id|reseed|flush|error'

mk dhcp "${gen}mac0=02:00:00:00:00:01\nip=dhcp\ngateway=10.0.3.1\n"
run dhcp 0 --expect '^vmm-agent: would eth0 mac 02:00:00:00:00:01$' --expect '^vmm-agent: would eth0 dhcp$' \
  --reject 'address|gratuitous|route'

# A MAC for an interface that does not exist: an error line, the rest goes on.
mk nomac "${gen}mac3=02:00:00:00:00:04\nhostname=agent-dry-other\n"
run nomac 0 --expect '^vmm-agent: error: mac3: there is no virtio-net interface #3$' \
  --expect '^vmm-agent: would hostname agent-dry-other$' --expect 'would apply generation'

# ---- Malformed files and injection attempts: status 1, one error line, no plan ----------------
# reject NAME TEXT: the file must be refused with exactly one line and no plan.
reject() {
  mk "$1" "$2"
  local out
  out=$("$agent" --identity "$work/$1" --dry-run --once --net-dir "$net" 2>&1)
  local st=$?
  [[ $st == 1 ]] || bad "$1: status $st, expected 1"
  [[ $(wc -l <<<"$out") == 1 && $out == "vmm-agent: error: identity rejected, nothing applied: "* ]] ||
    bad "$1: expected one rejection line, got: $out"
  [[ $out != *pwned* ]] || bad "$1: the rejection echoes the host's value"
}
reject inject-subst "${gen}hostname=\$(touch $pwned)\n"
reject inject-backtick "${gen}hostname=\`touch $pwned\`\n"
reject inject-semicolon "${gen}hostname=web;touch $pwned\n"
reject inject-space "${gen}hostname=web touch $pwned\n"
reject inject-name "${gen}name=\$(touch $pwned)\n"
reject inject-ip "${gen}ip=10.0.0.1;touch $pwned\n"
reject inject-mac "${gen}mac0=02:00:00:00:00:01\$(touch $pwned)\n"
reject inject-newline-key "${gen}hostname=a\n\$(touch $pwned)\n"
reject inject-cr "${gen}hostname=web\r\n"
reject multicast-mac "${gen}mac0=01:00:5e:00:00:01\n"
reject short-mac "${gen}mac0=02:00:00:00:00\n"
reject upper-mac "${gen}mac0=02:AB:CD:EF:00:01\n"
reject ip-256 "${gen}ip=256.1.1.1\n"
reject ip-3parts "${gen}ip=1.2.3\n"
reject ip-prefix33 "${gen}ip=1.2.3.4/33\n"
reject ip-leading-zero "${gen}ip=01.2.3.4\n"
reject long-hostname "${gen}hostname=$(printf 'a%.0s' {1..70})\n"
reject duplicate "${gen}hostname=a\nhostname=b\n"
reject no-equals "${gen}hostname\n"
reject no-generation "hostname=web-1\n"
reject long-line "${gen}future=$(printf 'x%.0s' {1..300})\n"
reject truncated-line "${gen}hostname=web-1"
printf "${gen}hostname=web\0\$(touch $pwned)\n" >"$work/nul-mid"; truncate -s 1024 "$work/nul-mid"
out=$("$agent" --identity "$work/nul-mid" --dry-run --once --net-dir "$net" 2>&1); st=$?
[[ $st == 1 && $out == *"after the first NUL"* ]] || bad "nul-mid: status $st: $out"
printf "$gen" >"$work/short"   # no padding
out=$("$agent" --identity "$work/short" --dry-run --once --net-dir "$net" 2>&1); st=$?
[[ $st == 1 && $out == *"size 44, expected 1024"* ]] || bad "short: status $st: $out"
head -c 2048 /dev/zero >"$work/long"
out=$("$agent" --identity "$work/long" --dry-run --once --net-dir "$net" 2>&1); st=$?
[[ $st == 1 && $out == *"size 1025"* ]] || bad "long: status $st: $out"

# ---- Usage and a missing file -------------------------------------------------------------------
"$agent" --bogus >/dev/null 2>&1; st=$?
[[ $st == 2 ]] || bad "--bogus: status $st, expected 2"
"$agent" --poll-ms 0 --once --dry-run >/dev/null 2>&1; st=$?
[[ $st == 2 ]] || bad "--poll-ms 0: status $st, expected 2"
"$agent" --identity >/dev/null 2>&1; st=$?
[[ $st == 2 ]] || bad "--identity without a value: status $st, expected 2"
out=$("$agent" --identity "$work/nonexistent" --dry-run --once 2>&1); st=$?
[[ $st == 1 && $out == "vmm-agent: no identity ($work/nonexistent: No such file or directory); exiting" ]] ||
  bad "missing file: status $st: $out"

# ---- Nothing ran, nothing changed ----------------------------------------------------------------
[[ ! -e $pwned ]] || { bad "$pwned exists: something was executed"; rm -f "$pwned"; }
[[ $(hostname) == "$host_before" ]] || bad "the host name changed"
[[ $(cat /run/vmm-agent.generation 2>/dev/null || echo none) == "$gen_before" ]] || bad "/run/vmm-agent.generation changed"

if [[ $fail == 0 ]]; then echo "agent-dry: PASS"; else exit 1; fi
