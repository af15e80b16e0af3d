#!/bin/sh
# Clones on networks, with the test guest's net-serve scenario (it answers ARP requests for
# 10.0.2.2 from the MAC its device's configuration holds at each request, as vmm-agent applies a
# clone's new MAC; net-serve-stale keeps the MAC it read at boot). Runs in a network namespace of
# its own (removed afterwards), in either lane; POSIX sh, busybox's arping.
#   - bridge mode: a fleet of 3 clones with --net tap=tc{i},bridge=br0 --ip 10.0.2.2: each TAP a
#     port of the bridge, each clone its own MAC (none the template's), answering from it; three
#     distinct MACs in the bridge's forwarding table; vmm ps and GET /vm show each MAC and IP
#     (10.0.2.2, .3, .4: --ip counts up in a fleet);
#   - the source-MAC filter: a clone whose guest keeps the template's MAC sends nothing out (no
#     ARP reply reaches the bridge) and its metrics count the frames dropped (`filtered`);
#   - netns mode: a clone with --net tap=tap0,netns=tn-{name} keeps the template's IP (with a MAC of
#     its own, which the guest answers from once it takes it), its
#     TAP inside its own namespace with the gateway's address and NAT rules, a veth pair to the host
#     with an outside address of its own (GET /vm, vmm ps); all of it gone after `vmm stop`; one
#     killed with -9 leaves its namespace, which the next namespace clone removes;
#   - a live fork of a clone on the bridge (vmm fork --net tap=fk{i},bridge=br0 --ip): each child
#     its own TAP, MAC and address, answering on br0; forks without --net or --ip refused;
#   - a warm pool on the bridge (--net tap=pl{i},bridge=br0): a request gives the clone its address
#     (one without is 400), the clone has a TAP and a MAC of its own and answers on br0;
#   - refusals, one line each: a bridge that does not exist, a clone on a bridge without --ip, a
#     clone without --net of a template with one, a bad --hostname, --ip or --net name.
# usage: clone-net-scenario.sh VMM TESTGUEST [--needs-kvm]
vmm=$1 guest=$2
shift 2
# In the nested lane's L1, busybox's sh runs its own ip applet, which has no netns: iproute2's is
# in /files/bin there (tests/linux/clone-net.sh).
if [ -x /files/bin/ip ]; then ip() { /files/bin/ip "$@"; }; fi
for a in "$@"; do
  case "$a" in
    --needs-kvm) { [ -r /dev/kvm ] && [ -w /dev/kvm ]; } || { echo "SKIP: /dev/kvm is not usable here"; exit 77; } ;;
    --inside) inside=1 ;;
  esac
done
if [ -z "$inside" ]; then
  command -v nft >/dev/null || { echo "clone-net: FAIL: nft is missing (scripts/setup.sh installs nftables)"; exit 1; }
  # What a run that was killed before its cleanup left: its namespace (vmmcnPID, PID gone) and its
  # clones' (tn-*: the names this test gives them), which would make the checks below see old state.
  for n in $(ip netns list 2>/dev/null | awk '$1 ~ /^(tn-|vmmcn)/ { print $1 }'); do
    case $n in vmmcn*) kill -0 "${n#vmmcn}" 2>/dev/null && continue ;; esac
    ip netns del "$n"
  done
  ns=vmmcn$$
  ip netns add $ns || { echo "SKIP: cannot create a network namespace"; exit 77; }
  ip netns exec $ns sh "$0" "$vmm" "$guest" --inside
  status=$?
  # The clones' own namespaces, should a failure have left any.
  for n in $(ip netns list 2>/dev/null | awk '/^tn-/ { print $1 }'); do ip netns del "$n"; done
  ip netns delete $ns
  exit $status
fi

work=$(mktemp -d)
export VMM_STATE_DIR=$work/state
fail=0
ok() { echo "clone-net: ok   $*"; }
bad() { echo "clone-net: FAIL $*"; fail=1; }
show() { sed 's/^/  | /' "$@"; }
cleanup() {
  for d in "$VMM_STATE_DIR"/run/*; do [ -d "$d" ] && "$vmm" stop --timeout 0 "$(basename "$d")" >/dev/null 2>&1; done
  pkill -9 -f "$VMM_STATE_DIR" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
# get_vm NAME: GET /vm of a running VM.
get_vm() { curl -s --max-time 5 --unix-socket "$VMM_STATE_DIR/run/$1/api.sock" http://vm/vm; }
metrics() { curl -s --max-time 5 --unix-socket "$VMM_STATE_DIR/run/$1/api.sock" http://vm/vm/metrics; }
# diagnose: what each running VM says of itself (state, frames in and out, filtered, exits), twice a
# second apart (a vCPU that runs counts exits), and its console's last lines: a clone that did not
# answer shows whether its frames never came in, its replies never went out, or its guest stopped.
diagnose() {
  for pass in 1 2; do
    for d in "$VMM_STATE_DIR"/run/*; do
      [ -d "$d" ] || continue
      v=$(basename "$d")
      echo "  | $v: $(get_vm "$v" | sed -n 's/.*"state":"\([a-z]*\)".*/\1/p') $(metrics "$v")"
    done
    [ $pass = 2 ] || sleep 1
  done
  for f in "$VMM_STATE_DIR"/clones/*/console.log; do [ -s "$f" ] && echo "  | $f: $(tail -c 300 "$f" | tr '\n' ' ')"; done
}

ip link set lo up
for c in all default; do [ ! -d /proc/sys/net/ipv6 ] || echo 1 >/proc/sys/net/ipv6/conf/$c/disable_ipv6; done
ip link add br0 type bridge && ip addr add 10.0.2.1/24 dev br0 && ip link set br0 up || { echo "clone-net: FAIL cannot make a bridge"; exit 1; }
# A host's bridge as it usually is: an uplink port (here one end of a veth pair, with a NIC's
# address) and no address set for the bridge, which then takes its lowest port's. The clones' TAPs
# (fe:...) must never take it from the uplink: a bridge whose address changes under an arping in
# flight drops the replies addressed to the old one (this test failed so once, stop 32).
ip link add up0 address 52:54:00:12:34:56 type veth peer name up0p && ip link set up0 master br0 && ip link set up0 up &&
  ip link set up0p up || { echo "clone-net: FAIL cannot give br0 an uplink"; exit 1; }
br_mac=$(cat /sys/class/net/br0/address)
# From here on a new interface has IPv6 on (br0 and the uplink keep it off: no traffic of theirs):
# vmm turns it off on each TAP it makes a bridge's port, whose own router solicitations and MLD
# reports would otherwise go into its guest.
[ ! -d /proc/sys/net/ipv6 ] || echo 0 >/proc/sys/net/ipv6/conf/default/disable_ipv6
[ "$br_mac" = 52:54:00:12:34:56 ] || { echo "clone-net: FAIL br0 took $br_mac, not its uplink's address"; exit 1; }

# Two templates of the serving guest (MAC 52:54:00:00:00:02, address 10.0.2.2/24 via 10.0.2.1).
k=0
for t in net-serve net-serve-stale; do
  "$vmm" template create $t --kernel "$guest" --memory 64M --cmdline $t --net tap=t$((k += 1)),mac=52:54:00:00:00:02 \
    --ip 10.0.2.2/24 --gateway 10.0.2.1 --ready-on "net-serve: ready" --console none >"$work/$t.out" 2>&1 ||
    { bad "template $t"; show "$work/$t.out"; exit 1; }
done
grep -q '"ip": "10.0.2.2/24"' "$VMM_STATE_DIR/templates/net-serve/manifest.json" &&
  grep -q '"mac": "52:54:00:00:00:02"' "$VMM_STATE_DIR/templates/net-serve/manifest.json" &&
  ok "the template's manifest records its MAC and address" || { bad "manifest"; show "$VMM_STATE_DIR/templates/net-serve/manifest.json"; }

# ---- Bridge mode.
"$vmm" run --clone-of net-serve --count 3 --name c --net 'tap=tc{i},bridge=br0' --ip 10.0.2.2 --hostname 'web-{i}' --detach \
  >"$work/fleet.out" 2>&1 || { bad "fleet on br0"; show "$work/fleet.out"; }
"$vmm" ps >"$work/ps"
macs=""
for i in 1 2 3; do
  get_vm c-$i >"$work/c$i.json"
  mac=$(sed -n 's/.*"mac":"\([0-9a-f:]*\)".*/\1/p' "$work/c$i.json")
  grep -q "\"bridge\":\"br0\"" "$work/c$i.json" && grep -q "\"ip\":\"10.0.2.$((i + 1))/24\"" "$work/c$i.json" &&
    grep -q "\"hostname\":\"web-$i\"" "$work/c$i.json" && [ -n "$mac" ] && [ "$mac" != 52:54:00:00:00:02 ] &&
    ok "c-$i: GET /vm: MAC $mac (its own), bridge br0, ip 10.0.2.$((i + 1))/24, hostname web-$i" ||
    { bad "c-$i: GET /vm"; show "$work/c$i.json"; }
  grep -q "^c-$i .* $mac *10.0.2.$((i + 1)) " "$work/ps" || { bad "c-$i: vmm ps lacks its MAC or IP"; show "$work/ps"; }
  [ "$(cat /sys/class/net/tc$i/master/ifindex 2>/dev/null)" = "$(cat /sys/class/net/br0/ifindex)" ] || bad "tc$i is not a port of br0"
  [ ! -d /proc/sys/net/ipv6 ] || [ "$(cat /proc/sys/net/ipv6/conf/tc$i/disable_ipv6)" = 1 ] || bad "tc$i has IPv6 on"
  # The TAP's own address: fe: and the last five bytes of its clone's MAC.
  [ "$(cat /sys/class/net/tc$i/address)" = "fe:${mac#??:}" ] || bad "tc$i's address is $(cat /sys/class/net/tc$i/address) (want fe:${mac#??:})"
  macs="$macs $mac"
done
busybox arping -c 3 -w 5 -I br0 10.0.2.2 >"$work/arping" 2>&1
n=0
for mac in $macs; do grep -qi "\[$mac\]" "$work/arping" && n=$((n + 1)); done
[ $n = 3 ] && ! grep -qi "52:54:00:00:00:02" "$work/arping" && ok "all 3 clones answer on br0, each from its own MAC" ||
  { bad "ARP replies on br0: $n of 3 clones"; show "$work/arping"; diagnose; }
bridge fdb show br br0 >"$work/fdb" 2>&1
n=0
for mac in $macs; do grep -q "^$mac dev tc" "$work/fdb" && n=$((n + 1)); done
[ $n = 3 ] && ok "3 distinct MACs in br0's forwarding table" || { bad "br0's fdb has $n of the clones' MACs"; show "$work/fdb"; }

# ---- A live fork of a clone on br0: each child on a TAP of its own, with a MAC of its own and
# the next address; a fork without --net, or on the bridge without --ip, is refused.
"$vmm" fork c-1 --count 2 --net 'tap=fk{i},bridge=br0' --ip 10.0.2.50 --hostname 'fk-{i}' >"$work/fork.out" 2>"$work/fork.err" ||
  { bad "fork of c-1 on br0"; show "$work/fork.out" "$work/fork.err"; }
i=0 fmacs=""
for child in $(cut -d' ' -f1 "$work/fork.out"); do
  i=$((i + 1))
  get_vm "$child" >"$work/fk$i.json"
  fmac=$(sed -n 's/.*"mac":"\([0-9a-f:]*\)".*/\1/p' "$work/fk$i.json")
  grep -q "\"tap\":\"fk$i\"" "$work/fk$i.json" && grep -q "\"ip\":\"10.0.2.$((49 + i))/24\"" "$work/fk$i.json" &&
    grep -q "\"hostname\":\"fk-$i\"" "$work/fk$i.json" && [ -n "$fmac" ] && ! echo "$macs" | grep -q "$fmac" &&
    [ "$(cat /sys/class/net/fk$i/master/ifindex 2>/dev/null)" = "$(cat /sys/class/net/br0/ifindex)" ] &&
    ok "fork child $child: TAP fk$i on br0, its own MAC $fmac, 10.0.2.$((49 + i)), fk-$i" || { bad "fork child $i: GET /vm"; show "$work/fk$i.json"; }
  fmacs="$fmacs $fmac"
done
[ $i = 2 ] || bad "fork of c-1: $i children (want 2)"
busybox arping -c 3 -w 5 -I br0 10.0.2.2 >"$work/farp" 2>&1
n=0
for mac in $fmacs; do grep -qi "\[$mac\]" "$work/farp" && n=$((n + 1)); done
[ $n = 2 ] && ok "both fork children answer on br0, each from its own MAC" || { bad "fork children on br0: $n of 2 answer"; show "$work/farp"; diagnose; }
for child in $(cut -d' ' -f1 "$work/fork.out"); do "$vmm" stop --timeout 0 "$child" >/dev/null 2>&1; done
"$vmm" fork c-1 >"$work/f2" 2>&1; st=$?
[ $st = 2 ] && [ "$(wc -l <"$work/f2")" = 1 ] && grep -q "give the fork as many --net" "$work/f2" && ok "a fork of a VM with an interface, without --net: refused" ||
  { bad "fork without --net: status $st"; show "$work/f2"; }
"$vmm" fork c-1 --net tap=fx,bridge=br0 >"$work/f3" 2>&1; st=$?
[ $st = 2 ] && grep -q "needs --ip" "$work/f3" && ok "a fork on a bridge without --ip: refused" || { bad "fork without --ip: status $st"; show "$work/f3"; }
# Several children on one TAP: refused before anything is forked (the second child failed at its
# TAP, after every child's fork); a MAC a bridged TAP takes itself too.
"$vmm" fork c-1 --count 2 --net tap=fx,bridge=br0 --ip 10.0.2.60 >"$work/f4" 2>&1; st=$?
[ $st = 2 ] && grep -q "every VM would make the same TAP" "$work/f4" && ok "a fork of 2 onto one TAP name: refused" || { bad "fork of 2 onto one TAP: status $st"; show "$work/f4"; }
"$vmm" fork c-1 --net 'tap=fx{i},bridge=br0,mac=fe:00:00:00:00:42' --ip 10.0.2.60 >"$work/f4" 2>&1; st=$?
[ $st = 2 ] && grep -q "a bridged TAP takes itself" "$work/f4" && ok "--net with a MAC starting fe: on a bridge: refused (a bridged TAP takes it)" || { bad "fork fe: MAC: status $st"; show "$work/f4"; }
get_vm c-1 | grep -q '"state":"running"' && ok "c-1 runs on after its forks" || bad "c-1 after the forks"

# ---- The source-MAC filter: a guest that keeps the template's MAC is not let out.
"$vmm" run --clone-of net-serve-stale --name s --count 1 --net 'tap=ts{i},bridge=br0' --ip 10.0.2.20 --detach >"$work/s.out" 2>&1 ||
  { bad "stale clone"; show "$work/s.out"; }
busybox arping -c 2 -w 3 -I br0 10.0.2.2 >"$work/arping2" 2>&1
filtered=$(metrics s-1 | sed -n 's/.*"filtered":\([0-9]*\).*/\1/p')
! grep -qi "52:54:00:00:00:02" "$work/arping2" && [ "${filtered:-0}" -ge 1 ] &&
  ok "a clone still on the template's MAC sends nothing out ($filtered frames filtered)" ||
  { bad "source filter: filtered=$filtered"; show "$work/arping2"; }
"$vmm" stop --timeout 0 s-1 >/dev/null 2>&1

# ---- Netns mode.
"$vmm" run --clone-of net-serve --name n --count 2 --net 'tap=tap0,netns=tn-{name}' --detach >"$work/n.out" 2>&1 ||
  { bad "netns clones"; show "$work/n.out"; }
outs=""
for i in 1 2; do
  get_vm n-$i >"$work/n$i.json"
  out=$(sed -n 's/.*"outside":"\([0-9.]*\)".*/\1/p' "$work/n$i.json")
  outs="$outs $out"
  nmac=$(sed -n 's/.*"mac":"\([0-9a-f:]*\)".*/\1/p' "$work/n$i.json")
  [ -n "$nmac" ] && [ "$nmac" != 52:54:00:00:00:02 ] && grep -q '"ip":"10.0.2.2/24"' "$work/n$i.json" && [ -n "$out" ] &&
    ok "n-$i: keeps the template's IP, has a MAC of its own ($nmac); outside address $out" || { bad "n-$i: GET /vm"; show "$work/n$i.json"; }
  ip netns exec tn-n-$i busybox arping -c 2 -w 5 -I tap0 10.0.2.2 >"$work/narp$i" 2>&1
  grep -qi "\[$nmac\]" "$work/narp$i" && ok "n-$i answers in its namespace, from its own MAC" || { bad "n-$i: no ARP reply in tn-n-$i"; show "$work/narp$i"; }
  ip netns exec tn-n-$i ip -4 addr show tap0 | grep -q "10.0.2.1/24" || bad "tn-n-$i: tap0 lacks the gateway address"
  ip netns exec tn-n-$i nft list ruleset | grep -q "dnat to 10.0.2.2" || bad "tn-n-$i: no DNAT rule"
  [ "$(ip netns exec tn-n-$i cat /proc/sys/net/ipv4/ip_forward)" = 1 ] || bad "tn-n-$i: IPv4 forwarding is off"
  # The outside address answers ARP on the host's end of the veth pair (ICMP to it is the guest's,
  # NAT'd: the test guest has no IP stack).
  busybox arping -c 1 -w 3 -I "vmh-tn-n-$i" "$out" >"$work/oarp$i" 2>&1 && ok "the host reaches n-$i's namespace at $out" ||
    { bad "no ARP reply from $out on vmh-tn-n-$i"; show "$work/oarp$i"; }
done
[ "$(echo $outs | tr ' ' '\n' | sort -u | wc -l)" = 2 ] || bad "outside addresses repeat: $outs"
"$vmm" stop --timeout 0 n-1 >/dev/null 2>&1
# vmm stop returns once the VM's process has ended, which removed what it set up.
ip netns list 2>/dev/null | grep -q "^tn-n-1" || ip link 2>/dev/null | grep -q "vmh-tn-n-1" && bad "tn-n-1 or its veth outlived its clone" ||
  ok "vmm stop removed n-1's namespace and veth pair"
pkill -9 -f "clone-of net-serve --name n " 2>/dev/null
kill -9 "$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$work/n2.json")"
sleep 0.5
ip netns list 2>/dev/null | grep -q "^tn-n-2" || bad "a killed clone's namespace is already gone (the next check proves nothing)"
"$vmm" run --clone-of net-serve --name m --count 1 --net 'tap=tap0,netns=tn-{name}' --detach >"$work/m.out" 2>&1 || bad "netns clone m"
grep -q "removed 1 network namespace" "$work/m.out" && ! ip netns list 2>/dev/null | grep -q "^tn-n-2" && ! ip link 2>/dev/null | grep -q "vmh-tn-n-2" &&
  ok "the next namespace clone removed what the killed one left" || { bad "stale namespace"; show "$work/m.out"; ip netns list 2>/dev/null; }
"$vmm" stop --timeout 0 m-1 >/dev/null 2>&1
# A killed clone's namespace removed by hand and one of that name made since (an admin's, another
# state directory's VM's): the next sweep leaves it alone (it removed it, cutting that VM off).
"$vmm" run --clone-of net-serve --name k --count 1 --net 'tap=tap0,netns=tn-{name}' --detach >"$work/k.out" 2>&1 || bad "netns clone k"
get_vm k-1 >"$work/k1.json"
kill -9 "$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$work/k1.json")"
sleep 0.5
ip netns del tn-k-1 2>/dev/null
ip netns add tn-k-1
"$vmm" run --clone-of net-serve --name j --count 1 --net 'tap=tap0,netns=tn-{name}' --detach >"$work/j.out" 2>&1 || bad "netns clone j"
ip netns list 2>/dev/null | grep -q "^tn-k-1" && ! grep -q "removed 1 network namespace" "$work/j.out" &&
  ok "a namespace of a killed clone's name made since is not the sweep's" || { bad "the sweep removed a namespace it did not make"; show "$work/j.out"; }
ip netns del tn-k-1 2>/dev/null
"$vmm" stop --timeout 0 j-1 >/dev/null 2>&1

# ---- A warm pool on br0: each member on a TAP of its own (p{i}, the member's number), each
# request giving the clone its address; a request without one is refused (400).
"$vmm" pool net-serve --size 2 --name pl --net 'tap=pl{i},bridge=br0' >"$work/pool.out" 2>&1 &
poolpid=$!
psock=$VMM_STATE_DIR/run/pl/api.sock
post() { curl -s --max-time 20 --unix-socket "$psock" -o "$work/body" -w '%{http_code}' -X POST -d "$1" http://pool/clones; }
n=0
while [ ! -S "$psock" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
code=$(post '{"hostname": "pooled"}')
[ "$code" = 400 ] && grep -q "needs\|shared network" "$work/body" && ok "a pool on a bridge: a request without ip is 400" ||
  { bad "pool request without ip: $code"; show "$work/body"; }
# Nor one at the template's gateway (the clone would answer ARP for the router): 400, and the
# CLI's request (no --gateway of its own to compare with) gets it too.
code=$(post '{"ip": "10.0.2.1/24"}')
[ "$code" = 400 ] && grep -q "gateway" "$work/body" && ok "a pool request for the template's gateway address is 400" ||
  { bad "pool request at the gateway: $code"; show "$work/body"; }
"$vmm" run --clone-of net-serve --pool "$psock" --ip 10.0.2.1 >"$work/e" 2>&1; st=$?
[ $st = 2 ] && grep -q "gateway" "$work/e" && ok "vmm run --pool --ip at the template's gateway: refused (status 2)" || { bad "pool CLI at the gateway: $st"; show "$work/e"; }
# A gateway off the clone's network: no route could go through it. A pool's request (its own
# address, as a pool on a bridge needs), and a clone in a namespace, which keeps the template's
# address (10.0.2.2/24).
code=$(post '{"ip": "10.0.2.41", "gateway": "10.9.0.1"}')
[ "$code" = 400 ] && grep -q "not on the /24 network" "$work/body" && ok "a pool request with a gateway off its address's network is 400" ||
  { bad "pool request with an off-network gateway: $code"; show "$work/body"; }
timeout 30 "$vmm" run --clone-of net-serve --name g --net 'tap=tap0,netns=tn-g' --gateway 10.9.0.1 --console none >"$work/e" 2>&1 </dev/null; st=$?
[ $st = 2 ] && grep -q "not on the /24 network of --ip 10.0.2.2/24" "$work/e" && ok "a clone keeping the template's address with a gateway off its network: refused (status 2)" ||
  { bad "clone with an off-network gateway: $st"; show "$work/e"; }
code=$(post '{"hostname": "pooled", "ip": "10.0.2.40"}')
pname=$(sed -n 's/.*"name":"\([^"]*\)".*/\1/p' "$work/body")
if [ "$code" = 201 ] && [ -n "$pname" ]; then
  # The pool answers once the clone's API serves: asked at once, it answers.
  get_vm "$pname" >"$work/p.json"
  pmac=$(sed -n 's/.*"mac":"\([0-9a-f:]*\)".*/\1/p' "$work/p.json")
  ptap=$(sed -n 's/.*"tap":"\(pl[0-9]*\)".*/\1/p' "$work/p.json")
  grep -q '"ip":"10.0.2.40/24"' "$work/p.json" && grep -q '"bridge":"br0"' "$work/p.json" && [ -n "$ptap" ] &&
    [ -n "$pmac" ] && [ "$pmac" != 52:54:00:00:00:02 ] &&
    [ "$(cat /sys/class/net/$ptap/master/ifindex 2>/dev/null)" = "$(cat /sys/class/net/br0/ifindex)" ] &&
    ok "a pooled clone: its own TAP $ptap on br0, its own MAC $pmac, the request's address" || { bad "pooled clone on br0"; show "$work/p.json"; }
  busybox arping -c 3 -w 5 -I br0 10.0.2.2 >"$work/parp" 2>&1
  grep -qi "\[$pmac\]" "$work/parp" && ok "the pooled clone answers on br0 from its MAC" || { bad "no ARP reply from the pooled clone"; show "$work/parp"; diagnose; }
else
  bad "POST /clones with an ip: $code"; show "$work/body" "$work/pool.out"
fi
kill -INT "$poolpid"; wait "$poolpid"
# The pool started again while its clone runs on with its TAP: the new pool's members pass over the
# numbers whose TAP is taken (each such member failed, and cost the pool a second, until 2026-12-07).
if [ -n "$pname" ]; then
  "$vmm" pool net-serve --size 2 --name pl --net 'tap=pl{i},bridge=br0' >"$work/pool.out" 2>&1 &
  poolpid=$!
  n=0
  while ! curl -s --max-time 5 --unix-socket "$psock" http://pool/pool 2>/dev/null | grep -q '"ready":2' && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
  curl -s --max-time 5 --unix-socket "$psock" http://pool/pool 2>/dev/null | grep -q '"ready":2' && ! grep -q "could not be prepared" "$work/pool.out" &&
    ok "a pool started again passes over the TAP its clone still has ($ptap)" || { bad "pool restarted over a taken TAP"; show "$work/pool.out"; }
  kill -INT "$poolpid"; wait "$poolpid"
fi
[ -n "$pname" ] && "$vmm" stop --timeout 0 "$pname" >/dev/null 2>&1
"$vmm" pool net-serve --size 1 --name pl2 >"$work/pool2.out" 2>&1
[ $? = 2 ] && grep -q "give the pool as many --net" "$work/pool2.out" && ok "a pool without --net of a template with one: refused" ||
  { bad "pool without --net"; show "$work/pool2.out"; }
"$vmm" pool net-serve --size 1 --name pl3 --net tap=x,mac=52:54:00:00:00:09 >"$work/pool3.out" 2>&1
[ $? = 2 ] && grep -q "mac= cannot be given to a pool" "$work/pool3.out" && ok "a pool with one mac= for all: refused" ||
  { bad "pool with mac="; show "$work/pool3.out"; }

[ "$(cat /sys/class/net/br0/address)" = "$br_mac" ] && ok "br0 kept its uplink's address while clones, forks and a pool came and went" ||
  bad "br0's address changed to $(cat /sys/class/net/br0/address)"

# ---- Refusals: one line, status 2 (usage) or 10, nothing left running.
refuse() {
  want=$1 text=$2
  shift 2
  timeout 30 "$vmm" run --clone-of net-serve --console none "$@" >"$work/r.out" 2>&1 </dev/null
  st=$?
  if [ $st = "$want" ] && [ "$(wc -l <"$work/r.out")" = 1 ] && grep -q -- "$text" "$work/r.out"; then ok "refused: $*"; else
    bad "$*: status $st (want $want)"; show "$work/r.out"; fi
}
refuse 10 "bridge nobr does not exist" --name r1 --net tap=tr1,bridge=nobr --ip 10.0.2.50
refuse 2 "needs --ip" --name r2 --net tap=tr2,bridge=br0
refuse 2 "has 1 network interface" --name r3
refuse 2 "RFC 1123" --name r4 --net tap=tr4,bridge=br0 --ip 10.0.2.50 --hostname 'a;reboot'
refuse 2 "prefix after" --name r5 --net tap=tr5,bridge=br0 --ip 10.0.2.50/40
refuse 2 "at most 15 bytes" --name r6-a-long-name --net 'tap=tap-{name},bridge=br0' --ip 10.0.2.50
[ -z "$(ls "$VMM_STATE_DIR/clones" | grep '^r')" ] && ok "no refused clone left a directory" || bad "refused clones left directories"
# The test guest ends a wait a broken CPU interrupted inside its check, and says so: only the nested lane's may (README).
grep -q "vmm_nested\." /proc/cmdline || ! find "$work" -type f -size -10M -exec grep -l "^testguest: the CPU delivered" {} + 2>/dev/null | grep -q . ||
  bad "a test guest met an interrupt inside its wait's check on a CPU that must hold it"
echo "clone-net: $([ $fail = 0 ] && echo PASS || echo FAIL)"
exit $fail
