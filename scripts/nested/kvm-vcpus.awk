# L1 KVM's trace events (ftrace's text) summed per vCPU thread (vmm-vcpuN): entries, exits, wake-ups
# and the last exit's reason and guest RIP, one line each, after `prefix`. A vCPU woken again and
# again but never entered is halted with interrupts blocked (its timer's interrupt accepted, not
# deliverable). Used by l1-init.sh's watchdog and smp-soak-inner.sh (installed as /etc/kvm-vcpus.awk).
# usage: awk -v prefix=TEXT -f kvm-vcpus.awk TRACE | sort
$1 ~ /^vmm-vcpu[0-9]+-/ {
  v = $1; sub(/^vmm-/, "", v); sub(/-[0-9]+$/, "", v); seen[v] = 1
  if ($0 ~ / kvm_entry: /) entry[v]++
  if ($0 ~ / kvm_vcpu_wakeup: /) wake[v]++
  if ($0 ~ / kvm_exit: /) { exits[v]++; last[v] = $0; sub(/.* reason /, "", last[v]); sub(/ info1 .*/, "", last[v]) }
}
END {
  for (v in seen)
    printf "%s%s: %d entries, %d exits, %d wake-ups, last exit: %s\n", prefix, v, entry[v], exits[v], wake[v], (v in last) ? last[v] : "none"
}
