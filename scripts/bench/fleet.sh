#!/usr/bin/env bash
# Fleet benchmark: live fork, fleets (`vmm run --clone-of T --count N`) and the memory of many idle
# clones, against QEMU 7.2 restoring the same test guest with -incoming (x-ignore-shared over a
# share=off RAM file, as in clone.sh) in the same run.
#
# Rows (median and min–max of RUNS unless said otherwise):
#   fork: a booted test guest (`dirty N`: N MiB written before the fork) forked through
#     PUT /vm/fork {"count": 1}: how long the parent was paused (the API's paused_ms: quiesce,
#     capture, fork(), resume), and request -> response, which comes once the child reported that it
#     runs (its VM built over the inherited RAM, state restored, about to enter KVM_RUN). 256 MiB,
#     1 GiB and 4 GiB; under each, the medians of the parts: the parent's (prepare, before the pause;
#     quiesce, capture, disks, fork, resume) and the child's steps in ms from the fork's start (its GET /vm start_ms:
#     forked, inherited_dropped, registered, devices, machine, restored, identity, first_entry).
#     QEMU has no live fork: no peer. KVM's own floor at each size (scripts/bench/kvm-floor.c fork,
#     median of 10): fork() of a process whose VM's guest wrote the same MiB, and fork -> the child's
#     own VM over the inherited RAM at its first instruction's exit; ours / floor for both.
#   fleet: `--count N --detach` of the 256 MiB counter template: clones/s over the whole fleet, and
#     the clones' own start times (fork -> about to run, as each reports), overall and by hundred
#     (does creating a VM get slower as their number grows?). Peer: QEMU -incoming of the same
#     guest, IDLE of them one after another, exec -> first output.
#   memory: N idle clones of the fleet: MemAvailable before and after (host memory per clone, KVM's
#     kernel memory included), and each process's Private_Clean + Private_Dirty (smaps_rollup).
#     QEMU: IDLE clones the same way.
#   KVM alone (scripts/bench/vm-growth.c): VM_GROWTH (1000) VMs made one after another and kept, each
#     KVM_CREATE_VM, irqchip, a 256 MiB memslot and a vCPU; the median of each step per hundred, all
#     in one process and one process each: whether KVM itself gets slower as VMs accumulate.
#   pool: `vmm pool idt --size 16` (the identity guest, which answers the VMGenID notification at
#     once): request -> the member's vCPU 0 thread has it, -> resumed, -> vCPU 0's first KVM_RUN and
#     -> first console byte (the clone's GET /vm start_ms, from the moment the pool took the
#     request), request -> answer (pool side). Then `vmm pool ctr --size 16` (the counter guest,
#     idle once started: the identity guest's own work after the notification, ~350 port exits,
#     bounds its rate on two CPUs, shown in its own row): clones/s for 16 requests back to back and
#     for 16 from POOL_CLIENTS clients at once, each from a full pool (RUNS times), and for 80 back
#     to back (the refill keeping up). Peer: QEMU -incoming's exec -> first output.
#   anchors: the published figures the fleet issue names (zeroboot's spawn p50 0.79 ms, 1000 forks
#     in 815 ms, ~265 KB per sandbox; Firecracker's <= 5 MiB per VM; ../shared/design/CLONES.md),
#     not measured here, with ours from the rows above beside them.
#
# usage: scripts/bench/fleet.sh [RUNS]      (default 5)
# env:   FLEET (1000; 100 nested)  IDLE (20; 10 nested)  FORK_SIZES ("256M:128 1G:512 4G:1024", the
#        live-fork rows' memory:MiB dirtied)  VM_GROWTH (1000)  POOL_CLIENTS (4: the concurrent pool row)
#        VMM_BENCH_DIR (/var/tmp/vmm-bench)  VMM_BUILD_DIR (build/)
# The rows (scripts/bench/fleet-rows.py) run on this host when it has a usable /dev/kvm, otherwise in
# the nested lane (scripts/bench/nested-rows.sh: L1 with 8 GiB, both VMMs under its KVM; read the
# ratios there, TCG sets the absolute times).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-${RUNS:-5}}
kvm=0
[[ -r /dev/kvm && -w /dev/kvm ]] && kvm=1
dir=${VMM_BUILD_DIR:-$root/build}
[[ -x "$dir/vmm/vmm" && -f "$dir/guest-images/testguest.elf" ]] || dir=$("$root/scripts/build.sh" release)
command -v qemu-system-x86_64 >/dev/null || "$root/scripts/setup.sh"

base_dir=${VMM_BENCH_DIR:-/var/tmp/vmm-bench}
mkdir -p "$base_dir"
work=$(mktemp -d "$base_dir/fleet.XXXXXX")
cleanup() {
  for f in "$work"/state/run/*/vm.json; do
    [[ -f $f ]] && kill -9 "$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$f")" 2>/dev/null
  done
  chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"; rmdir "$base_dir" 2>/dev/null || true
}
trap cleanup EXIT
cp "$dir/vmm/vmm" "$dir/vmm/vmm-http.so" "$dir/guest-images/testguest.elf" "$work/"
cc -O2 -static -o "$work/vm-growth" "$root/scripts/bench/vm-growth.c"  # static: they run in L1 as well
cc -O2 -static -o "$work/kvm-floor" "$root/scripts/bench/kvm-floor.c"

rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
if ((kvm)); then
  VMM_BENCH_LIB="$root/scripts/bench" python3 "$root/scripts/bench/fleet-rows.py" "$runs" "$work" "${FLEET:-1000}" "${IDLE:-20}" "$rev"
else
  source "$root/scripts/bench/nested-rows.sh"
  nested_rows fleet.sh $((3600 + 900 * runs)) 8192 "$work" FORK_SIZES="${FORK_SIZES:-256M:128 1G:512 4G:1024}" \
    VM_GROWTH="${VM_GROWTH:-1000}" POOL_CLIENTS="${POOL_CLIENTS:-4}" \
    fleet-rows.py "$runs" "${FLEET:-100}" "${IDLE:-10}" "$rev"
fi
