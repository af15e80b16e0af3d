#!/usr/bin/env bash
# Boot benchmark: exec → test-guest banner and exec → process exit, vmm against QEMU microvm booting
# the same PVH ELF, measured in the same run. Prints median and spread (min–max) of N runs each and
# the ratio qemu/ours (higher is better for us).
# usage: scripts/bench/boot.sh [RUNS]   (default 20; builds vmm first if needed)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-20}
dir=${VMM_BUILD_DIR:-$root/build}
[[ -x "$dir/vmm/vmm" && -f "$dir/guest-images/testguest.elf" ]] || dir=$("$root/scripts/build.sh" release)
command -v qemu-system-x86_64 >/dev/null || "$root/scripts/setup.sh"

exec python3 - "$runs" "$dir/vmm/vmm" "$dir/guest-images/testguest.elf" <<'PY'
import os, statistics, subprocess, sys, time

runs, vmm, guest = int(sys.argv[1]), sys.argv[2], sys.argv[3]
BANNER = b"vmm-testguest: ready"
cmds = {
    "ours": [vmm, "run", "--kernel", guest, "--memory", "256M", "--cmdline", "hello"],
    "qemu": ["qemu-system-x86_64", "-M", "microvm", "-cpu", "max,-arch-capabilities", "-accel", "kvm",
             "-m", "256M", "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
             "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", guest, "-append", "hello"],
}

def once(cmd):
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    banner, buf = None, b""
    fd = p.stdout.fileno()
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
        if banner is None and BANNER in buf:
            banner = time.perf_counter() - t0
    rc = p.wait()
    end = time.perf_counter() - t0
    if banner is None or rc != 1:
        sys.exit(f"boot.sh: {cmd[0]} failed: status {rc}, output {buf[-200:]!r}")
    return banner * 1e3, end * 1e3

results = {name: {"banner": [], "exit": []} for name in cmds}
for i in range(runs):  # interleave the peers so that drift on the host hits both alike
    for name, cmd in cmds.items():
        b, e = once(cmd)
        results[name]["banner"].append(b)
        results[name]["exit"].append(e)

def fmt(xs):
    return f"{statistics.median(xs):8.2f} ms  (min {min(xs):.2f}, max {max(xs):.2f})"

print(f"boot benchmark, {runs} runs each, test guest 'hello', 256 MiB, 1 vCPU")
for metric in ("banner", "exit"):
    ours, qemu = results["ours"][metric], results["qemu"][metric]
    print(f"exec -> {metric}")
    print(f"  ours  {fmt(ours)}")
    print(f"  qemu  {fmt(qemu)}")
    print(f"  ratio {statistics.median(qemu) / statistics.median(ours):8.1f}x (qemu / ours)")
PY
