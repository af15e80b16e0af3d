#!/bin/sh
# Runs inside the nested lane's L1: what an idle VM costs. Boots Linux with a disk and a network
# interface, waits until it idles, then reads the CPU time of every vmm thread over 10 s
# (/proc/PID/task/*/stat, utime + stime), and stops it. Fails if the I/O thread (which must sleep in
# io_uring, not poll) used more than 1 % of a CPU.
cd /tmp
truncate -s 64M idle.img
vmm run --kernel /files/vmlinuz --initrd /files/initramfs.cpio --memory 256M --cpus 2 --disk path=/tmp/idle.img \
  --net tap=tapidle --cmdline "console=ttyS0 vmm.scenario=idle vmm.idle_seconds=25" >/tmp/c.txt 2>/tmp/e.txt &
pid=$!
i=0
until grep -q "idle: sleeping" /tmp/c.txt; do
  i=$((i + 1)); [ $i -gt 600 ] && { echo "idle-cpu: FAIL: the guest never idled"; cat /tmp/c.txt; exit 1; }
  sleep 0.1
done
sleep 2
hz=100
snap() { for t in /proc/$pid/task/*; do echo "${t##*/} $(cut -d' ' -f2,14,15 "$t/stat")"; done; }
snap >/tmp/before
sleep 10
snap >/tmp/after
# Measured: stop it rather than wait out the guest's idle time (SIGTERM: vmm stops, status 12).
kill -TERM $pid
wait $pid
fail=0
echo "idle-cpu: CPU used by each vmm thread over 10 s of an idle guest (2 vCPUs, a disk, a TAP):"
while read -r tid name ut st; do
  set -- $(grep "^$tid " /tmp/before)
  [ $# -ge 4 ] || continue
  ticks=$(( ut + st - $3 - $4 ))
  pct=$(awk "BEGIN { printf \"%.2f\", $ticks * 100 / ($hz * 10) }")
  echo "idle-cpu:   $name: $ticks ticks = $pct % of a CPU"
  # Every thread but the vCPUs (which run the guest's own idle work) must be asleep: < 1 %.
  case "$name" in
    *vmm-vcpu*) ;;
    *) [ "$ticks" -lt 10 ] || { echo "idle-cpu: FAIL: $name is busy while the guest idles"; fail=1; } ;;
  esac
done </tmp/after
grep -q "(vmm-io)" /tmp/after || { echo "idle-cpu: FAIL: no vmm-io thread"; fail=1; }
[ $fail = 0 ] && echo "idle-cpu: PASS"
exit $fail
