#!/usr/bin/env bash
# A debugging tool of the nested lane: boots Debian's cloud kernel as an L2 with CPUS vCPUs again and
# again in one L1 until a boot stalls, then shows why: L1 KVM's trace (hypercalls, IPIs and HLT
# exits before the stall; 3 s of every event after, per vCPU), and each vCPU's registers, stack and
# interrupted context, read from a snapshot of the stalled VM (vcpu-stacks.py) and named from L2's
# /proc/kallsyms. It traced the L2 SMP bring-up hang (README, nested lane): about one boot in 30.
# usage: scripts/nested/smp-soak.sh [BOOTS [CPUS [SCENARIO]]]   (default 150 boots of 4 vCPUs, nproc)
#        (a scenario that does not end, e.g. idle, shows the report on a guest that is not stuck)
# env:   VMM (default build/vmm/vmm); L1's console log is kept in $TMPDIR/smp-soak.*.log
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
boots=${1:-150} cpus=${2:-4} scenario=${3:-nproc}
vmm=${VMM:-$root/build/vmm/vmm}
[[ -x $vmm ]] || { echo "smp-soak: no vmm at $vmm (scripts/build.sh release, or set VMM)" >&2; exit 2; }
kernel=$("$root/guest-images/linux/fetch-kernel.sh")
initramfs=$(VMM_LINUX_KERNEL=$kernel "$root/guest-images/linux/build-initramfs.sh")
log=$(mktemp "${TMPDIR:-/tmp}/smp-soak.XXXXXX.log")
here=$root/scripts/nested
# The watchdog that ends long-running VMs is off: the script ends a stalled one itself.
status=0
VMM_NESTED_VMM_LIMIT=0 "$here/run.sh" --timeout $((boots * 45 + 300)) --cpus 1 --quiet --log "$log" \
  --bin "$vmm" --python "$here/vcpu-stacks.py" --file "$here/vcpu-stacks.py:vcpu-stacks.py" --file "$here/vmmstate.py:vmmstate.py" \
  --file "$kernel:vmlinuz" --file "$initramfs:initramfs.cpio" \
  "$here/smp-soak-inner.sh" "$boots" "$cpus" "$scenario" || status=$?
tr -d '\r' <"$log" | grep -a '^soak: ' || true
echo "smp-soak: L1's console: $log"
exit $status
