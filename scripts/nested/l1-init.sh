#!/bin/sh
# /init of the nested lane's L1 guest (scripts/nested/run.sh): mounts the kernel's file systems, loads
# kvm-amd (and the modules in /etc/modules.load), checks /dev/kvm, starts l1-kvm-hold (one idle VM
# for L1's life: l1-kvm-hold.c says why), runs /files/.run/script with the
# arguments in /files/.run/args from /files, and ends QEMU with the script's exit status through the
# isa-debug-exit port. A background watchdog writes a heartbeat to the second serial port (run.sh
# ends a frozen L1 by it) and ends, with a dump of its threads, any vmm process that runs longer than
# vmm_nested.vmm_limit seconds (kernel command line, default 150; 0: no limit), so that a hang shows
# where it is instead of using up the test's time.
export PATH=/files/bin:/bin:/sbin
mount -t devtmpfs dev /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
ip link set lo up
# KVM takes the TSC's rate once, when it loads, as every new VM's default; the kernel refines its
# early TSC calibration about a second after boot, by up to 1%. Loaded before that, L1's KVM can find
# its default "below hardware speed" (beyond its 250 ppm tolerance; TCG's EPYC has no TSC scaling):
# what that did to clones, and what vmm does about it, is in vmm/vcpu.cpp (Vcpu::create); L2's
# kvmclock would still run by the stale rate. A real host loads KVM long after boot: so does L1,
# once the refinement is over (it removes the tsc-early clocksource, whatever its outcome; at most
# 10 s).
k=0
while grep -qw tsc-early /sys/devices/system/clocksource/clocksource0/available_clocksource 2>/dev/null && [ $k -lt 100 ]; do
  sleep 0.1
  k=$((k + 1))
done
[ $k -lt 100 ] || echo "vmm-nested: the TSC calibration was not refined within 10 s; loading KVM anyway"
for m in $(cat /etc/modules.load); do
  insmod "/lib/modules/$m" || echo "vmm-nested: insmod $m failed"
done
# What a stuck VM's vCPUs do, from L1's KVM: each thread's CPU time 3 s apart (spinning or idle),
# and 3 s of KVM's trace events (exits with the guest's RIP, interrupts accepted and injected, IPIs,
# wake-ups), their counts and the last of them.
kvm_trace() {
  t=/sys/kernel/tracing
  [ -d $t/events/kvm ] || mount -t tracefs nodev $t 2>/dev/null
  [ -d $t/events/kvm ] || { echo "l1-watchdog: no KVM trace events"; return; }
  for th in "$1"/task/*; do
    echo "l1-watchdog:   now: $(cat "$th/comm") utime/stime=$(cut -d' ' -f14,15 "$th/stat")"
  done
  echo 8192 >$t/buffer_size_kb
  echo >$t/trace
  echo 1 >$t/events/kvm/enable
  sleep 3
  echo 0 >$t/events/kvm/enable
  for th in "$1"/task/*; do
    echo "l1-watchdog:   3 s later: $(cat "$th/comm") utime/stime=$(cut -d' ' -f14,15 "$th/stat")"
  done
  grep -v '^#' $t/trace >/tmp/kvm-trace.txt
  echo "l1-watchdog:   KVM events in 3 s by kind:"
  sed -n 's/.* \(kvm_[a-z_0-9]*\):.*/\1/p' /tmp/kvm-trace.txt | sort | uniq -c | sed 's/^/l1-watchdog:     /'
  echo "l1-watchdog:   per vCPU in 3 s:"
  awk -v prefix="l1-watchdog:     " -f /etc/kvm-vcpus.awk /tmp/kvm-trace.txt | sort
  echo "l1-watchdog:   the last 60 events:"
  tail -n 60 /tmp/kvm-trace.txt | cut -c1-200 | sed 's/^/l1-watchdog:     /'
}
l1_watchdog() {
  limit=$(sed -n 's/.*vmm_nested.vmm_limit=\([0-9]*\).*/\1/p' /proc/cmdline)
  limit=${limit:-150}
  killed=" "
  while :; do
    sleep 5
    up=$(cut -d' ' -f1 /proc/uptime)
    echo "hb $up" >/dev/ttyS1 2>/dev/null
    [ "$limit" -gt 0 ] || continue
    up=${up%.*}
    for p in /proc/[0-9]*; do
      [ "$(cat "$p/comm" 2>/dev/null)" = vmm ] || continue
      pid=${p#/proc/}
      start=$(cut -d' ' -f22 "$p/stat" 2>/dev/null) || continue
      age=$((up - start / 100))
      case "$killed" in *" $pid "*) continue ;; esac
      [ "$age" -gt "$limit" ] || continue
      echo "l1-watchdog: vmm (pid $pid) still running after ${age}s: $(tr '\0' ' ' <"$p/cmdline" | cut -c1-200)"
      for t in "$p"/task/*; do
        echo "l1-watchdog:   $(cat "$t/comm") wchan=$(cat "$t/wchan" 2>/dev/null) state/utime/stime=$(cut -d' ' -f3,14,15 "$t/stat")"
        sed 's/^/l1-watchdog:     /' "$t/stack" 2>/dev/null | head -12
      done
      kvm_trace "$p"
      # What its guest printed last, when its console is a file (as in most tests): a hang's
      # console is in the log whatever the test prints (nested-test.sh reads it there).
      out=$(readlink "$p/fd/1" 2>/dev/null) || out=""
      if [ -f "$out" ]; then
        echo "l1-watchdog:   its console ($out), the last 30 lines:"
        tr -d '\r' <"$out" | tail -n 30 | sed 's/^/l1-watchdog:     console: /'
      fi
      kill -9 "$pid"
      killed="$killed$pid "
    done
  done
}
l1_watchdog </dev/null >/dev/console 2>&1 &
status=125
if [ ! -c /dev/kvm ]; then
  echo "vmm-nested: error: L1 has no /dev/kvm (kvm-amd did not load; is the L1 CPU SVM-capable?)"
else
  # One idle VM for L1's whole life: the static keys that count VMs never flip (l1-kvm-hold.c says why).
  /sbin/l1-kvm-hold </dev/null &
  cd /files
  # Where L1's kernel text is (KASLR): a frozen L1's RIP and stack words (run.sh reads them through
  # QEMU's monitor) are offsets from it into the kernel's System.map.
  echo "vmm-nested: L1 kernel _text at $(grep -m1 ' _text$' /proc/kallsyms | cut -d' ' -f1)"
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
