#!/usr/bin/env bash
# A ctest entry of the `linux` label: runs INNER (a script from tests/linux/) inside the nested lane
# with the vmm binary, the test guest, Debian's cloud kernel, the L2 initramfs and the dmesg allow
# list in /files (and the executables in $VMM_NESTED_BINS in /files/bin, the SRC:DEST files in
# $VMM_NESTED_FILES in /files; with VMM_NESTED_ROOTFS=MIB
# also a fresh ext4 root image of that size as /files/rootfs.ext4; VMM_NESTED_CPUS: L1's vCPUs,
# default 1: see below).
# usage: nested-test.sh VMM TESTGUEST INNER [ARG...]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
vmm=$1 testguest=$2 inner=$3
shift 3
kernel=${VMM_LINUX_KERNEL:-}
[[ -n $kernel ]] || kernel=$("$root/guest-images/linux/fetch-kernel.sh")
initramfs=$(VMM_LINUX_KERNEL=$kernel "$root/guest-images/linux/build-initramfs.sh")
extra=()
for b in ${VMM_NESTED_BINS:-}; do extra+=(--bin "$b"); done
for f in ${VMM_NESTED_FILES:-}; do extra+=(--file "$f"); done
if [[ -n ${VMM_NESTED_ROOTFS:-} ]]; then
  extra+=(--file "$("$root/guest-images/linux/build-rootfs.sh" "$VMM_NESTED_ROOTFS"):rootfs.ext4")
fi
log=$(mktemp /tmp/vmm-nested-test.XXXXXX.log)
run() {
  "$root/scripts/nested/run.sh" --timeout "${VMM_NESTED_TIMEOUT:-300}" --cpus "${VMM_NESTED_CPUS:-1}" --log "$log" "${extra[@]}" \
    --bin "$vmm" --file "$testguest:testguest.elf" --file "$kernel:vmlinuz" --file "$initramfs:initramfs.cpio" \
    --file "$root/tests/linux/dmesg-allow.txt:dmesg-allow.txt" \
    "$root/tests/linux/$inner" "$@"
}
# L1's own kernel can lock up inside its KVM under TCG (seen: "BUG: soft lockup ... [vmm]", the vCPU
# thread stuck in L1's kernel where no signal reaches it). L1 then panics (softlockup_panic=1) and
# run.sh reports 125. That is the lane failing, not the test. L1 can also freeze outright (no
# console output, no heartbeat): run.sh ends it and reports 126.
# Seen too: L1's kernel overflowing a vCPU thread's kernel stack inside its KVM ("stack guard page
# was hit ... vmm-vcpu1", then "Kernel panic"). Any panic of L1's own kernel is the lane's failure,
# and so is an L1 that reset by itself before its script reported (run.sh says so in the log).
l1_failed() {
  { [[ $status == 125 ]] && grep -aqE "BUG: soft lockup|Kernel panic - not syncing|^run.sh: L1 reset or powered off by itself" "$log"; } ||
    [[ $status == 126 ]]
}
# The lane's other failure (README, nested lane): L1's KVM on QEMU TCG's SVM delivers an L2 timer
# interrupt while L2 has interrupts disabled; inside __schedule that deadlocks L2 on its own runqueue
# lock, most often in SMP bring-up (its vCPUs halted with interrupts off, or an AP spinning for the
# BSP's callout) until L1's watchdog kills vmm. Recognised by both: the watchdog's kill in
# the log, and an L2 console there (the watchdog prints the killed VM's, the test may too) whose "x86: Booting SMP configuration:" line is followed by
# something other than the bring-up's own lines.
# (awk reads the whole log: an early exit could end tr with SIGPIPE, which pipefail makes a miss.)
smp_hang() {
  grep -aq "^l1-watchdog: vmm (pid" "$log" && tr -d '\r' <"$log" | awk '
    /x86: Booting SMP configuration:/ { hit = 1; next }
    found { next }
    hit && NF { if ($0 ~ /(\.\.\.\. node|CPUs:|smp: |x86: )/) hit = 0; else found = 1 }
    END { exit !found }'
}
# Either is said so in the log, the failed run's log is kept beside the next one's (an L1 that froze
# has its registers from QEMU's monitor at its end), and the test runs again: at most twice more
# (a test with several SMP boots has met the SMP hang twice in a row).
status=0
run "$@" || status=$?
for retry in 1 2; do
  [[ $status == 0 ]] && break
  if l1_failed; then
    why="L1 locked up or froze (lane failure, status $status)"
  elif smp_hang; then
    why="LANE FAILURE, not vmm: an L2 stopped in SMP bring-up (an interrupt delivered to L2 with interrupts off, below vmm)"
  else
    break
  fi
  cp "$log" "${log%.log}.lane-failure$retry.log"
  echo "nested-test: $why; log above and kept in ${log%.log}.lane-failure$retry.log; running the test again (retry $retry of 2)"
  status=0
  run "$@" || status=$?
done
[[ $status == 0 ]] && rm -f "$log"
exit $status
