#!/bin/sh
# /init of the nested lane's L1 guest (scripts/nested/run.sh): mounts the kernel's file systems, loads
# kvm-amd (and the modules in /etc/modules.load), checks /dev/kvm, runs /files/.run/script with the
# arguments in /files/.run/args from /files, and ends QEMU with the script's exit status through the
# isa-debug-exit port.
export PATH=/files/bin:/bin:/sbin
mount -t devtmpfs dev /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
ip link set lo up
for m in $(cat /etc/modules.load); do
  insmod "/lib/modules/$m" || echo "vmm-nested: insmod $m failed"
done
status=125
if [ ! -c /dev/kvm ]; then
  echo "vmm-nested: error: L1 has no /dev/kvm (kvm-amd did not load; is the L1 CPU SVM-capable?)"
else
  cd /files
  echo "=== vmm-nested: begin ($(cut -d' ' -f1 /proc/uptime) s after L1 start) ==="
  IFS='
'
  # shellcheck disable=SC2046
  set -- $(cat /files/.run/args)
  unset IFS
  sh /files/.run/script "$@"
  status=$?
  echo "=== vmm-nested: end status=$status ==="
fi
exec /sbin/l1-exit "$status"
