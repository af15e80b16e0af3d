#!/bin/sh
# Runs inside the nested lane's L1 (busybox sh, with iproute2's ip and bridge, nft and curl in
# /files/bin): identical servers behind a load balancer, and sandboxes that keep one address.
# Debian's generic kernel (vmgenid) with the L2 initramfs built against its modules plus qemu_fw_cfg
# boots the ext4 root image (guest-images/linux/build-rootfs.sh: busybox, init.sh, vmm-agent) from a
# raw disk; init.sh's `web` scenario serves http://ADDR/cgi-bin/host (the guest's hostname) with
# busybox httpd. vmm-agent applies each machine's identity: the template's at boot, each clone's at
# its resume (NEW_VMGENID uevent).
#   1. The template: booted with --hostname web-template --ip 10.0.3.10/24 --gateway 10.0.3.1 on a
#      TAP of its own, saved when it prints "web: ready".
#   2. Five linked clones on bridge br0 (L1 is 10.0.3.1 on it): --hostname web-{i} --ip 10.0.3.11
#      (counting up), one command (--count 5). The test's own round robin sends 100 requests over
#      the five addresses: each clone answers each of its 20 with its own hostname; five distinct MACs
#      (none the template's) in br0's forwarding table, each address answered by one MAC only (no
#      duplicate IP); each clone's agent applied its identity within 100 ms of the host's write (the
#      time it reports is printed; the limit is the direct lane's, the nested lane is ~100x slower
#      in ring 0, so here it is reported, not enforced).
#   3. Netns mode: five clones with --net tap=tap0,netns=lb-{i}: each keeps the template's address
#      (10.0.3.10) in a namespace of its own, and answers with its own hostname at its own outside
#      address (GET /vm), through the namespace's NAT.
#   4. A clone of a clone: a running clone saved as a template (vmm snapshot, it carries on), and a
#      clone of that on br0 with a new address and hostname answers; so does its parent.
#   5. DHCP: a clone with --ip dhcp on br0 gets its address from busybox's udhcpd in L1 (vmm-agent
#      runs udhcpc; the images' udhcpc script applies the lease) and answers there.
# usage: clone-lb.sh
kernel=/files/vmlinuz-generic initrd=/files/initramfs-generic.cpio rootfs=/files/rootfs.ext4
# iproute2's ip for namespaces (busybox's sh runs its own ip applet, which has no netns).
ipr=/files/bin/ip
work=/tmp/clone-lb
rm -rf "$work"
mkdir -p "$work"
export VMM_STATE_DIR="$work/state"
fail=0
ok() { echo "clone-lb: ok   $*"; }
bad() { echo "clone-lb: FAIL $*"; fail=1; }
show() { sed 's/^/  | /' "$@"; }
now() { cut -d' ' -f1 /proc/uptime; }
since() { echo "$(now) $1" | awk '{ printf "%.1f", $1 - $2 }'; }
# wait_http URL SECONDS: until the URL answers, at most SECONDS; the answer in $body.
wait_http() {
  _end=$(($(cut -d. -f1 /proc/uptime) + $2))
  while :; do
    body=$(curl -s --max-time 5 "$1") && [ -n "$body" ] && return 0
    [ "$(cut -d. -f1 /proc/uptime)" -lt "$_end" ] || return 1
    sleep 0.5
  done
}
stop_all() { for d in "$VMM_STATE_DIR"/run/*; do [ -d "$d" ] && vmm stop --timeout 0 "$(basename "$d")" >/dev/null 2>&1; done; }
trap stop_all EXIT

ip link add br0 address 02:00:00:00:00:01 type bridge && ip addr add 10.0.3.1/24 dev br0 && ip link set br0 up || { bad "cannot make br0"; exit 1; }
cp "$rootfs" "$work/root.img"

# ---- 1. The template.
t0=$(now)
vmm template create web --kernel "$kernel" --initrd "$initrd" --memory 256M \
  --cmdline "console=ttyS0 quiet vmm.root=/dev/vda vmm.scenario=web" --disk path="$work/root.img" \
  --net tap=tweb0 --hostname web-template --ip 10.0.3.10/24 --gateway 10.0.3.1 \
  --ready-on "web: ready" --timeout 250 --console "file:$work/template.console" >"$work/template.out" 2>&1
st=$?
if [ $st = 0 ]; then ok "template web created ($(since "$t0") s)"; else
  bad "template create: status $st"; show "$work/template.out" "$work/template.console"; exit 1; fi
grep "vmm-agent" "$work/template.console" | sed 's/^/  template | /'

# ---- 2. Five clones on br0 behind the test's round robin.
t0=$(now)
vmm run --clone-of web --count 5 --name web --net 'tap=w{i},bridge=br0' --hostname 'web-{i}' --ip 10.0.3.11 --detach \
  >"$work/fleet.out" 2>&1 || { bad "fleet of 5 on br0"; show "$work/fleet.out"; }
show "$work/fleet.out"
i=0
while [ $i -lt 5 ]; do
  i=$((i + 1))
  if wait_http "http://10.0.3.$((10 + i))/cgi-bin/host" 120 && [ "$body" = "web-$i" ]; then
    ok "web-$i answers at 10.0.3.$((10 + i)) as '$body' ($(since "$t0") s after the fleet command)"
  else
    bad "web-$i at 10.0.3.$((10 + i)): '$body'"; show "$VMM_STATE_DIR/clones/web-$i/console.log"
  fi
done
# The round robin: 100 requests, 20 per clone, in turn, by one curl (one process: L1 is slow to
# start them); each answer is the body, then "URL " and the URL (curl -w; a format starting with @
# names a file).
urls="" k=0
while [ $k -lt 100 ]; do urls="$urls http://10.0.3.$((11 + k % 5))/cgi-bin/host"; k=$((k + 1)); done
t0=$(now)
# shellcheck disable=SC2086
curl -s --max-time 10 -w 'URL %{url_effective}\n' $urls >"$work/raw"
awk '/^URL / { split($2, a, "/"); print a[3], body; body = ""; next } { body = $0 }' "$work/raw" >"$work/answers"
i=0 good=0
while [ $i -lt 5 ]; do
  i=$((i + 1))
  n=$(grep -c "^10.0.3.$((10 + i)) web-$i$" "$work/answers")
  [ "$n" = 20 ] && good=$((good + 1)) || bad "web-$i answered $n of its 20 requests as itself"
done
if [ $good = 5 ]; then ok "100 requests round robin ($(since "$t0") s): every clone answered each of its 20 with its own hostname"; else
  sort "$work/answers" | uniq -c | show
  vmm ps | show
  for i in 1 2 3 4 5; do echo "--- web-$i"; show "$VMM_STATE_DIR/clones/web-$i/vmm.log"; tail -5 "$VMM_STATE_DIR/clones/web-$i/console.log" | show; done
fi
bridge fdb show br br0 >"$work/fdb"
# The clones' MACs as vmm ps shows them (NAME STATE PID MEMORY PRIVATE MAC IP TEMPLATE).
macs=$(vmm ps | awk '$1 ~ /^web-[1-5]$/ { print $6 }')
n=0
for mac in $macs; do grep -q "^$mac dev w" "$work/fdb" && n=$((n + 1)); done
tmac=$(sed -n 's/.*"mac": "\([0-9a-f:]*\)".*/\1/p' "$VMM_STATE_DIR/templates/web/manifest.json")
[ $n = 5 ] && [ "$(echo "$macs" | sort -u | wc -l)" = 5 ] && ! grep -q "^$tmac " "$work/fdb" &&
  ok "five distinct MACs in br0's forwarding table, none the template's ($tmac)" || { bad "fdb: $n of 5"; show "$work/fdb"; }
i=0 dup=0
while [ $i -lt 5 ]; do
  i=$((i + 1))
  arping -c 3 -w 4 -I br0 "10.0.3.$((10 + i))" >"$work/arp$i" 2>&1
  [ "$(grep -o '\[[0-9a-fA-F:]*\]' "$work/arp$i" | sort -u | wc -l)" = 1 ] || { dup=1; bad "10.0.3.$((10 + i)): not one MAC"; show "$work/arp$i"; }
done
[ $dup = 0 ] && ok "each address answered by one MAC (no duplicate IP)"
arping -c 2 -w 3 -I br0 10.0.3.10 >"$work/arp-t" 2>&1
grep -q "Unicast reply" "$work/arp-t" && { bad "the template's address answers on br0"; show "$work/arp-t"; } ||
  ok "nobody answers for the template's address on br0"
for i in 1 2 3 4 5; do
  line=$(grep -a "vmm-agent: applied generation" "$VMM_STATE_DIR/clones/web-$i/console.log" | tail -1 | tr -d '\r')
  echo "clone-lb: web-$i: ${line:-no agent line}"
  [ -n "$line" ] || bad "web-$i: its agent reported nothing"
done

# ---- 3. Netns mode: every clone keeps 10.0.3.10, each reached at its own outside address.
t0=$(now)
vmm run --clone-of web --count 5 --name ns --net 'tap=tap0,netns=lb-{i}' --hostname 'ns-{i}' --detach >"$work/ns.out" 2>&1 ||
  { bad "five clones in namespaces"; show "$work/ns.out"; }
i=0
while [ $i -lt 5 ]; do
  i=$((i + 1))
  j=$(curl -s --max-time 5 --unix-socket "$VMM_STATE_DIR/run/ns-$i/api.sock" http://vm/vm)
  out=$(echo "$j" | sed -n 's/.*"outside":"\([0-9.]*\)".*/\1/p')
  echo "$j" | grep -q '"ip":"10.0.3.10/24"' || bad "ns-$i: GET /vm does not show the template's address"
  if [ -n "$out" ] && wait_http "http://$out/cgi-bin/host" 120 && [ "$body" = "ns-$i" ]; then
    ok "ns-$i (10.0.3.10 in lb-$i) answers at $out as '$body' ($(since "$t0") s)"
  else
    bad "ns-$i at '$out': '$body'"; show "$VMM_STATE_DIR/clones/ns-$i/console.log"
  fi
done
vmm ps >"$work/ps"
show "$work/ps"

# ---- 4. A clone of a clone.
vmm snapshot web-2 "$work/web2-tmpl" >"$work/snap.out" 2>&1 && ok "web-2 saved as a template (it runs on)" ||
  { bad "snapshot of web-2"; show "$work/snap.out"; }
vmm run --clone-of "$work/web2-tmpl" --name cc --net tap=wcc,bridge=br0 --hostname web-cc --ip 10.0.3.30 --console none \
  </dev/null >"$work/cc.out" 2>&1 &
if wait_http http://10.0.3.30/cgi-bin/host 120 && [ "$body" = web-cc ]; then ok "a clone of a clone answers at 10.0.3.30 as web-cc"; else
  bad "clone of a clone: '$body'"; show "$work/cc.out" "$VMM_STATE_DIR/clones/cc/console.log"; fi
wait_http http://10.0.3.12/cgi-bin/host 30 && [ "$body" = web-2 ] && ok "its parent web-2 still answers as web-2" ||
  bad "web-2 after its snapshot: '$body'"
# ---- 5. DHCP: a clone with --ip dhcp on br0 takes its address from a DHCP server (busybox udhcpd
# in L1, leases from 10.0.3.100-109): vmm-agent runs udhcpc, whose script applies the lease. The other
# clones are stopped first (eleven Linux L2s starve a one-vCPU L1: seen, an RCU stall in L1).
stop_all
n=0
while [ -n "$(ls "$VMM_STATE_DIR/run" 2>/dev/null)" ] && [ $n -lt 100 ]; do sleep 0.2; n=$((n + 1)); done
# Leases of 20 s: the clone's udhcpc must renew it (at 10 s) while it runs (vmm-agent ran it with -q
# until 2026-12-07: it left once it had a lease, and the address outlived the lease).
printf 'start 10.0.3.100\nend 10.0.3.109\ninterface br0\nlease_file %s\nmin_lease 10\noption lease 20\noption subnet 255.255.255.0\noption router 10.0.3.1\n' \
  "$work/leases" >"$work/udhcpd.conf"
: >"$work/leases"
udhcpd -f "$work/udhcpd.conf" >"$work/udhcpd.out" 2>&1 &
dhcpd=$!
vmm run --clone-of web --name dh --net tap=wdh,bridge=br0 --hostname web-dhcp --ip dhcp </dev/null >"$work/dh.out" 2>&1 &
# The address udhcpd leases (from the MAC's hash, within the range): what it acknowledged.
n=0 lease=""
while [ -z "$lease" ] && [ $n -lt 600 ]; do
  lease=$(sed -n 's/.*sending ACK to \(10\.0\.3\.[0-9]*\).*/\1/p' "$work/udhcpd.out" | tail -1)
  [ -n "$lease" ] || { sleep 0.2; n=$((n + 1)); }
done
if [ -n "$lease" ] && wait_http "http://$lease/cgi-bin/host" 120 && [ "$body" = web-dhcp ]; then
  ok "a clone with --ip dhcp took $lease from L1's DHCP server and answers there as web-dhcp"
else
  bad "DHCP clone: '$body'"; show "$work/dh.out" "$work/udhcpd.out" "$VMM_STATE_DIR/clones/dh/console.log"
fi
if [ -n "$lease" ]; then
  n=0
  while [ "$(grep -c "sending ACK to $lease" "$work/udhcpd.out")" -lt 2 ] && [ $n -lt 200 ]; do sleep 0.2; n=$((n + 1)); done
  [ "$(grep -c "sending ACK to $lease" "$work/udhcpd.out")" -ge 2 ] && ok "the DHCP clone renews its lease of 20 s" ||
    { bad "the DHCP clone's lease not renewed"; show "$work/udhcpd.out"; }
fi
grep -a "vmm-agent" "$VMM_STATE_DIR/clones/dh/console.log" | tail -3 | sed 's/^/  dh | /'
kill "$dhcpd" 2>/dev/null
stop_all
n=0
while [ -n "$($ipr netns list 2>/dev/null)" ] && [ $n -lt 100 ]; do sleep 0.2; n=$((n + 1)); done
[ -z "$($ipr netns list 2>/dev/null)" ] && [ -z "$($ipr link show 2>/dev/null | grep vmh-)" ] &&
  ok "no namespace or veth left after the clones stopped" || { bad "namespaces left"; $ipr netns list; }
echo "clone-lb: $([ $fail = 0 ] && echo PASS || echo FAIL)"
exit $fail
