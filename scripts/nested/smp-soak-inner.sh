#!/bin/sh
# Runs in L1 for smp-soak.sh: boots the L2 BOOTS times with CPUS vCPUs until a boot stalls (no exit
# within 60 s), then reports on the stalled VM. (nokaslr on the L2's command line is no cure: 115 boots
# without a stall one day, two L1 freezes within 16 boots the next; the soak keeps KASLR, and
# addresses are offsets from _text.)
# usage: smp-soak-inner.sh BOOTS CPUS SCENARIO
boots=$1 cpus=$2 scenario=$3
t=/sys/kernel/tracing
[ -d $t/events/kvm ] || mount -t tracefs nodev $t 2>/dev/null
# Before a stall: only the rare events (HLT exits, hypercalls, IPIs, wake-ups), so that tracing
# does not change the timing much.
echo 65536 >$t/buffer_size_kb
echo 'exit_reason == 0x78' >$t/events/kvm/kvm_exit/filter
for e in kvm_exit kvm_hypercall kvm_vcpu_wakeup kvm_apic_ipi; do echo 1 >$t/events/kvm/$e/enable; done
export VMM_STATE_DIR=/tmp/state
cmdline="console=ttyS0 vmm.scenario=$scenario"
i=0
while [ $i -lt "$boots" ]; do
  i=$((i + 1))
  echo >$t/trace
  start=$(cut -d' ' -f1 /proc/uptime)
  vmm run --name "b$i" --kernel /files/vmlinuz --initrd /files/initramfs.cpio --memory 256M --cpus "$cpus" \
    --cmdline "$cmdline" >/tmp/c.txt 2>&1 </dev/null &
  pid=$!
  n=0
  while kill -0 $pid 2>/dev/null && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
  if ! kill -0 $pid 2>/dev/null; then
    wait $pid
    echo "soak: boot $i: $(tr -d '\r' </tmp/c.txt | grep -a 'vmm-l2: end') ($start .. $(cut -d' ' -f1 /proc/uptime) s)"
    continue
  fi
  echo 0 >$t/tracing_on
  echo "soak: boot $i STALLED (started at $start s, 60 s without an end)"
  tr -d '\r' </tmp/c.txt | tail -n 6 | sed 's/^/soak: console: /'
  grep -v '^#' $t/trace >/tmp/before.txt
  echo "soak: since the boot began: $(grep -c kvm_hypercall /tmp/before.txt) hypercalls, $(grep -c kvm_apic_ipi /tmp/before.txt) IPIs"
  v=0
  while [ $v -lt "$cpus" ]; do
    echo "soak: vcpu$v's last HLT exit: $(grep "kvm_exit: vcpu $v " /tmp/before.txt | tail -n 1 | sed 's/.* reason //; s/ info1 .*//')"
    v=$((v + 1))
  done
  # Now: 3 s of every KVM event, summed per vCPU (woken but never entered: halted, interrupts off).
  echo 0 >$t/events/kvm/kvm_exit/filter
  echo >$t/trace
  echo 1 >$t/events/kvm/enable
  echo 1 >$t/tracing_on
  sleep 3
  echo 0 >$t/tracing_on
  grep -v '^#' $t/trace | awk -v prefix="soak: 3 s later, " -f /etc/kvm-vcpus.awk | sort
  # The vCPUs' registers and stacks, from a snapshot of the stalled VM.
  if vmm snapshot "b$i" /tmp/stalled >/tmp/snap.txt 2>&1; then
    PYTHONHOME=/files/python python3 /files/vcpu-stacks.py /tmp/stalled | sed 's/^/soak: /' | tee /tmp/stacks.txt
  else
    sed 's/^/soak: snapshot failed: /' /tmp/snap.txt
  fi
  kill -9 $pid
  # Their symbols, from a second L2 (same kernel) reading its /proc/kallsyms.
  offsets=$(grep -o '+[0-9a-f]*' /tmp/stacks.txt | tr -d + | sort -u | tr '\n' ' ')
  [ -n "$offsets" ] || exit 1
  mkfifo /tmp/in
  sleep 100000 >/tmp/in &
  holder=$!
  vmm run --name sym --kernel /files/vmlinuz --initrd /files/initramfs.cpio --memory 256M \
    --cmdline "console=ttyS0 vmm.scenario=serve" </tmp/in >/tmp/sym.txt 2>&1 &
  n=0
  until grep -q "serve: ready" /tmp/sym.txt; do n=$((n + 1)); [ $n -gt 600 ] && break; sleep 0.1; done
  # kallsyms is not sorted by address: the last text symbol at or below _text + each offset.
  # Addresses are ffffffffXXXXXXXX: same-length hex strings compare as numbers.
  cat >/tmp/in <<EOF
t=\$(grep ' _text\$' /proc/kallsyms | cut -c9-16); for o in $offsets; do a=ffffffff\$(printf %08x \$((0x\$t + 0x\$o))); awk -v a=\$a -v o=\$o '(\$2 == "t" || \$2 == "T") && \$1 <= a && \$1 > b { b = \$1; s = \$3 } END { print "SYM +" o " " s }' /proc/kallsyms; done
poweroff -f
EOF
  n=0
  until grep -q "serve: status" /tmp/sym.txt; do n=$((n + 1)); [ $n -gt 600 ] && break; sleep 0.1; done
  kill $holder 2>/dev/null
  tr -d '\r' </tmp/sym.txt | grep -a '^SYM' | sed 's/^SYM /soak: symbol /'
  exit 1
done
echo "soak: $boots boots, none stalled"
exit 0
