#!/usr/bin/env bash
# Clone benchmark: vmm templates and clones against QEMU 7.2 as a clone peer (CLONES.md, "QEMU 7.2
# as a clone peer"), the same test guest at the same memory size, measured in the same run.
#
# Rows (median and min–max of RUNS unless said otherwise; `ratio` is qemu / ours, higher is better):
#   clone start: exec of `vmm run --clone-of T` → first guest output after resume. `get\n` is written
#     to the clone's stdin at exec (vmm feeds console input only once the machine runs) and the clock
#     stops at the first byte on stdout: the answer's first (a template is saved with its guest idle
#     after its ready line, so a clone prints nothing before it). Its own rows: until the whole
#     answer has appeared (`counter: value=`; the 4 GiB `dirty` guest answers
#     `dirty: unknown command`). 256 MiB counter template; 4 GiB template whose guest dirtied
#     3000 MiB (BIG_MEMORY, BIG_DIRTY). QEMU: exec of `qemu-system-x86_64 -incoming defer` with the template's RAM file
#     mapped share=off, QMP x-ignore-shared, `migrate-incoming exec:cat STATE`, wait while
#     `query-status` says inmigrate, `cont`, then `get\n` (written after `cont`: a byte arriving
#     before the incoming state would be overwritten by it). Also QEMU's plain stream restore (RAM in
#     the stream, anonymous RAM, no x-ignore-shared) at 256 MiB.
#   in-process clone: `vmm template bench T --count 20` (no peer): the clone path alone as a library
#     call in one process, from mapping the memory file to the first byte of the answer to `get`, as
#     the UART took it (directory, overlays, devices, KVM VM, restore, identity, vCPUs), each run's
#     median of 20. Beside it KVM's own floor at the same size (scripts/bench/kvm-floor.c, median of
#     20): a VM over a private mapping of the template's memory file, irqchip, PIT, one vCPU with the
#     host's CPUID, run to its first instruction's exit, and nothing else (no restore, no devices,
#     none of the guest's own work after resume); the row says in-process / floor.
#   clones/s: CLONES clones of the 256 MiB template back to back, each run to its first output and
#     told `quit`; "serial" waits for each to exit before the next starts, "pipelined" starts the
#     next as soon as the previous one answered (exits are reaped meanwhile).
#   memory per idle clone: IDLE clones of the 256 MiB template running at once, each answered `get`
#     once; /proc/PID/smaps_rollup of each (Rss, Pss, Private_Clean + Private_Dirty), median. KVM's
#     own kernel memory per VM (~1.1 MiB at 256 MiB, CLONES.md) is not in smaps for either VMM.
#   template create: exec → exit of `vmm template create` (boot, guest work, quiesce, save), with
#     strace marking the memory file's write (open → fsync); QEMU: boot to the ready line, then the
#     save (QMP stop, x-ignore-shared, migrate to exec:cat > STATE, until completed; its RAM is a
#     share=on file the guest wrote directly, not fsynced). 4 GiB rows: TEMPLATE_RUNS_4G runs (the
#     guest's dirtying of 3000 MiB is emulated ring-0 work, ~40 s a run here). Allocated size (du)
#     of the memory file against RAM.
#   where our clone start goes: one strace'd clone per run (openat, ioctl, write, close, exit_group):
#     exec → main's first file, → /dev/kvm, → KVM_CREATE_VM, → first KVM_RUN, → first console byte,
#     and at exit the VM fd's close and exec → exit_group. strace slows every traced call; read the
#     shares, not the absolute numbers.
#
#   a Linux clone answering HTTP (nested lane, both VMMs in one L1; scripts/bench/clone-http-inner.sh
#     says exactly how): Debian's generic kernel serving its hostname, vmm-agent inside; a template
#     of it, then a clone with a new hostname and address on a bridge: exec -> the first HTTP answer
#     with the clone's own hostname at its new address, resume -> that answer, exec -> resume, and
#     what vmm-agent reports for applying the identity. QEMU: -incoming defer (x-ignore-shared, RAM
#     file share=off, root image snapshot=on), the same agent reading the same identity file form
#     on fw_cfg. A warm-up run each first, then HTTP_RUNS runs.
# usage: scripts/bench/clone.sh [RUNS]      (default 5)
# env:   CLONES (100; 20 nested)  IDLE (20; 10 nested)  TEMPLATE_RUNS_4G (2)  BIG_MEMORY (4G; 1G
#        nested) and BIG_DIRTY (3000; 600 nested, MiB) for the big template  HTTP_RUNS (RUNS; 0 skips
#        the Linux rows)  DIRECT (1; 0 skips the test-guest rows)  VMM_BENCH_DIR (/var/tmp/vmm-bench)
#        VMM_BUILD_DIR (build/, built if missing)
# The test-guest rows (scripts/bench/clone-rows.py) run on this host when it has a usable /dev/kvm,
# otherwise in the nested lane (scripts/bench/nested-rows.sh: L1 with 6 GiB, both VMMs under its
# KVM; read the ratios there, TCG sets the absolute times). The Linux rows always run nested.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-${RUNS:-5}}
http_runs=${HTTP_RUNS:-$runs}
direct=${DIRECT:-1}
kvm=0
[[ -r /dev/kvm && -w /dev/kvm ]] && kvm=1
dir=${VMM_BUILD_DIR:-$root/build}
[[ -x "$dir/vmm/vmm" && -f "$dir/guest-images/testguest.elf" ]] || dir=$("$root/scripts/build.sh" release)
command -v qemu-system-x86_64 >/dev/null || "$root/scripts/setup.sh"

base_dir=${VMM_BENCH_DIR:-/var/tmp/vmm-bench}
mkdir -p "$base_dir"
work=$(mktemp -d "$base_dir/clone.XXXXXX")
cleanup() { chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"; rmdir "$base_dir" 2>/dev/null || true; }
trap cleanup EXIT
# Private copies: other builds may relink build/ while this runs.
cp "$dir/vmm/vmm" "$dir/vmm/vmm-http.so" "$work/"  # the binary and its API plugin
cp "$dir/guest-images/testguest.elf" "$work/testguest.elf"
cc -O2 -static -o "$work/kvm-floor" "$root/scripts/bench/kvm-floor.c"  # KVM's own floor (static: it runs in L1 as well)

if ((direct)); then
  args=("$runs" "${CLONES:-$((kvm ? 100 : 20))}" "${IDLE:-$((kvm ? 20 : 10))}" "${TEMPLATE_RUNS_4G:-2}"
        "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)")
  if ((kvm)); then
    VMM_BENCH_LIB="$root/scripts/bench" python3 "$root/scripts/bench/clone-rows.py" "${args[0]}" "$work" "${args[@]:1}"
  else
    source "$root/scripts/bench/nested-rows.sh"
    nested_rows clone.sh $((3600 + 900 * runs)) 6144 "$work" BIG_MEMORY="${BIG_MEMORY:-1G}" BIG_DIRTY="${BIG_DIRTY:-600}" \
      clone-rows.py "${args[@]}"
  fi
fi

# ---- The nested lane: a Linux clone answering HTTP at its new address (clone-http-inner.sh) ----
((http_runs > 0)) || exit 0
"$root/scripts/setup.sh"  # QEMU and the image tools (idempotent: a check when all is there)
log() { echo "clone.sh: $*" >&2; }
log "nested lane: a Linux clone answering HTTP, vmm against QEMU -incoming in one L1, $http_runs runs each (~5 min)"
kernel=$(VMM_KERNEL_META=linux-image-amd64 "$root/guest-images/linux/fetch-kernel.sh")
initramfs=$(VMM_LINUX_KERNEL=$kernel "$root/guest-images/linux/build-initramfs.sh" qemu_fw_cfg)
rootfs=$("$root/guest-images/linux/build-rootfs.sh" 32)
fw=()  # QEMU's firmware for -M pc with -kernel (its -L directory in L1)
for f in /usr/share/seabios/bios-256k.bin /usr/share/qemu/linuxboot_dma.bin /usr/share/qemu/kvmvapic.bin; do
  fw+=(--file "$f:qemu/$(basename "$f")")
done
set +e
"$root/scripts/nested/run.sh" --cpus 1 --memory 3072 --timeout $((900 + 120 * http_runs)) --quiet --log "$work/http.log" \
  --bin "$work/vmm" --bin "$(command -v qemu-system-x86_64)" --bin /usr/sbin/ip --bin /usr/bin/curl \
  --file "$kernel:vmlinuz-generic" --file "$initramfs:initramfs-generic.cpio" --file "$rootfs:rootfs.ext4" "${fw[@]}" \
  "$root/scripts/bench/clone-http-inner.sh" "$http_runs"
status=$?
set -e
if ((status != 0)); then
  grep -a "http-bench" "$work/http.log" | tail -40 >&2
  log "the nested-lane rows failed (status $status)"
  exit 1
fi
VMM_BENCH_LIB="$root/scripts/bench" python3 - "$work/http.log" "$http_runs" <<'PY'
import os, re, sys
sys.path.insert(0, os.environ["VMM_BENCH_LIB"])
from benchlib import header, row
runs = {"ours": [], "qemu": []}
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"http-bench: (ours|qemu) run=(\d+) (.*)", line.strip())
    if m and m.group(2) != "0":  # run 0 is the warm-up
        runs[m.group(1)].append({k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", m.group(3))})
col = lambda k, key: [r[key] for r in runs[k] if key in r]
print()
print(f"a Linux clone answering HTTP at its new address (nested lane: L1 is QEMU TCG with 1 vCPU, each VMM runs under L1's KVM;"
      f" L2: Debian's generic kernel, 256 MiB, 1 vCPU, virtio-blk/net over PCI, vmm-agent; {len(runs['ours'])} runs after a warm-up;"
      f" ms of L1's clock, 10 ms resolution)")
header()
row("start (exec) -> clone answers as itself at its address", col("ours", "start_to_answer"), col("qemu", "start_to_answer"), "ms", "{:.0f}")
row("resume -> clone answers (ours: exec -> main counted in)", col("ours", "resume_to_answer"), col("qemu", "resume_to_answer"), "ms", "{:.0f}")
row("start -> resume (ours: since main; qemu: RESUME event)", col("ours", "restore"), col("qemu", "restore"), "ms", "{:.0f}")
row("vmm-agent: identity applied (the guest's own report)", col("ours", "agent"), col("qemu", "agent"), "ms", "{:.0f}")
row("curl tries until the answer", col("ours", "tries"), col("qemu", "tries"), "tries", "{:.0f}")
PY
