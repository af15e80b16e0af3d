#!/bin/sh
# The Linux images' udhcpc script (guest-images/linux/vmm-agent/udhcpc.script), run by busybox's
# udhcpc as vmm-agent runs it for an identity with ip=dhcp: between two network namespaces joined by
# a veth pair, busybox udhcpd serves a lease; the client side starts with a stale static address (a
# clone's template's) and must end with the lease's address and default route only. Busybox's own
# ip applet is first in PATH, as in the images.
# usage: udhcpc-script.sh SCRIPT
script=$1
command -v busybox >/dev/null || { echo "SKIP: no busybox"; exit 77; }
s=vmmdh$$ c=vmmdc$$
ip netns add $s 2>/dev/null || { echo "SKIP: cannot create a network namespace"; exit 77; }
ip netns add $c
work=$(mktemp -d)
cleanup() { kill "$d" 2>/dev/null; ip netns del $s 2>/dev/null; ip netns del $c 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
mkdir "$work/bin" && ln -s "$(command -v busybox)" "$work/bin/ip"
ip link add "s$$" type veth peer name "c$$" && ip link set "s$$" netns $s && ip link set "c$$" netns $c || exit 1
ip -n $s addr add 10.9.0.1/24 dev "s$$" && ip -n $s link set "s$$" up
ip -n $c link set "c$$" up && ip -n $c addr add 10.9.0.55/24 dev "c$$"
printf 'start 10.9.0.100\nend 10.9.0.109\ninterface s%s\nlease_file %s/leases\noption subnet 255.255.255.0\noption router 10.9.0.1\n' \
  $$ "$work" >"$work/udhcpd.conf"
: >"$work/leases"
ip netns exec $s busybox udhcpd -f "$work/udhcpd.conf" >"$work/udhcpd.out" 2>&1 &
d=$!
sleep 0.3
timeout 30 ip netns exec $c env -i PATH="$work/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
  busybox udhcpc -i "c$$" -n -q -f -s "$script" >"$work/udhcpc.out" 2>&1 || { echo "FAIL: udhcpc"; cat "$work/udhcpc.out" "$work/udhcpd.out"; exit 1; }
lease=$(sed -n 's/.*lease of \(10\.9\.0\.[0-9]*\) obtained.*/\1/p' "$work/udhcpc.out")
addrs=$(ip -n $c -4 -o addr show "c$$" | awk '{ print $4 }')
route=$(ip -n $c route show default)
echo "lease $lease; addresses: $addrs; default route: $route"
[ -n "$lease" ] && [ "$addrs" = "$lease/24" ] && echo "$route" | grep -q "^default via 10.9.0.1 dev c$$" ||
  { echo "FAIL: the lease was not applied as it should be"; cat "$work/udhcpc.out"; exit 1; }
echo "PASS"
