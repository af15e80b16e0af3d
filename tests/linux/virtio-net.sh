#!/bin/sh
# Runs inside the nested lane's L1: Debian's stock virtio_net driver against our virtio-net device
# on a TAP. The guest (10.0.2.2) pings L1 (10.0.2.1 on tap0), fetches a 4 MiB payload over HTTP and
# serves one that L1 fetches; both checksums must match on both sides.
fail=0
bad() { echo "virtio-net: FAIL: $*"; fail=1; }
cd /tmp
mkdir -p www
dd if=/dev/urandom of=www/payload bs=1M count=4 2>/dev/null
want=$(md5sum <www/payload | cut -d' ' -f1)
httpd -p 8080 -h /tmp/www
# No IPv6 on the TAP: the test is about the frames it sends, not the kernel's router solicitations
# and MLD reports. Set as the default before the TAP exists, which it inherits when it is made (a
# write to tap0's own setting raced with its creation: the TAP was there before its conf directory).
for c in all default; do
  [ ! -d /proc/sys/net/ipv6 ] || echo 1 >/proc/sys/net/ipv6/conf/$c/disable_ipv6 || bad "cannot turn IPv6 off ($c)"
done

vmm run --kernel /files/vmlinuz --initrd /files/initramfs.cpio --memory 256M --cpus 2 \
  --net tap=tap0,mac=52:54:00:12:34:56 --cmdline "console=ttyS0 vmm.scenario=net" >/tmp/c.txt 2>/tmp/e.txt &
pid=$!
i=0
until ip link show tap0 >/dev/null 2>&1; do
  i=$((i + 1)); [ $i -gt 300 ] && break; sleep 0.1
done
ip addr add 10.0.2.1/24 dev tap0
ip link set tap0 up
# Wait for the guest to serve its payload, fetch it, and tell the guest we are done.
i=0
until grep -q "net: serving" /tmp/c.txt; do
  i=$((i + 1)); [ $i -gt 1200 ] && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
up=""
if wget -q -O /tmp/upload http://10.0.2.2:8080/upload; then up=$(md5sum </tmp/upload | cut -d' ' -f1); fi
echo done | nc 10.0.2.2 5001
wait $pid
status=$?
tr -d '\r' </tmp/c.txt | grep -a 'net:\|vmm-l2: end'
cat /tmp/e.txt
[ $status = 0 ] || bad "vmm exit status $status"
grep -q "net: mac 52:54:00:12:34:56" /tmp/c.txt || bad "the guest's eth0 does not have the MAC we gave"
grep -q "3 packets transmitted, 3 packets received" /tmp/c.txt || bad "ping lost packets"
grep -q "net: got $want" /tmp/c.txt || bad "the guest received other bytes than L1 served ($want)"
served=$(tr -d '\r' </tmp/c.txt | sed -n 's/.*net: serving \([0-9a-f]*\).*/\1/p')
[ -n "$served" ] && [ "$served" = "$up" ] || bad "L1 fetched '$up', the guest served '$served'"
grep -q "net: done" /tmp/c.txt || bad "the guest did not finish"
if [ $fail = 0 ]; then echo "virtio-net: PASS"; else
  echo "virtio-net: the guest's console, last 40 lines:"
  tr -d '\r' </tmp/c.txt | tail -n 40 | sed 's/^/  console: /'
fi
exit $fail
