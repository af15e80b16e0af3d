#!/usr/bin/env bash
# Clone benchmark: vmm templates and clones against QEMU 7.2 as a clone peer (CLONES.md, "QEMU 7.2
# as a clone peer"), the same test guest at the same memory size, measured in the same run.
#
# Rows (median and min–max of RUNS unless said otherwise; `ratio` is qemu / ours, higher is better):
#   clone start: exec of `vmm run --clone-of T` → first guest output after resume. `get\n` is written
#     to the clone's stdin at exec (vmm feeds console input only once the machine runs) and the clock
#     stops when the answer appears on stdout (`counter: value=`; the 4 GiB `dirty` guest answers
#     `dirty: unknown command`). 256 MiB counter template; 4 GiB template whose guest dirtied
#     3000 MiB. QEMU: exec of `qemu-system-x86_64 -incoming defer` with the template's RAM file
#     mapped share=off, QMP x-ignore-shared, `migrate-incoming exec:cat STATE`, wait while
#     `query-status` says inmigrate, `cont`, then `get\n` (written after `cont`: a byte arriving
#     before the incoming state would be overwritten by it). Also QEMU's plain stream restore (RAM in
#     the stream, anonymous RAM, no x-ignore-shared) at 256 MiB.
#   in-process clone: `vmm template bench T --count 20` (no peer): the clone path alone as a library
#     call in one process, from mapping the memory file to the answer to `get` on the console
#     (directory, overlays, devices, KVM VM, restore, identity, vCPUs), each run's median of 20.
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
# env:   CLONES (100)  IDLE (20)  TEMPLATE_RUNS_4G (2)  HTTP_RUNS (RUNS; 0 skips the nested lane)
#        DIRECT (1; 0 skips the direct-lane rows)  VMM_BENCH_DIR (/var/tmp/vmm-bench)
#        VMM_BUILD_DIR (build/, built if missing)
# The direct-lane rows need a usable /dev/kvm (without one they are skipped, said so); the nested
# lane runs anywhere QEMU does.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
runs=${1:-${RUNS:-5}}
http_runs=${HTTP_RUNS:-$runs}
direct=${DIRECT:-1}
if ((direct)) && [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then
  echo "clone.sh: no usable /dev/kvm here: the direct-lane rows are skipped (they need it); the nested-lane rows follow."
  direct=0
fi
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

((direct)) && VMM_BENCH_LIB="$root/scripts/bench" python3 - "$runs" "$work" "${CLONES:-100}" "${IDLE:-20}" "${TEMPLATE_RUNS_4G:-2}" \
  "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'PY'
import json, os, re, select, shutil, signal, socket, statistics, subprocess, sys, time
sys.path.insert(0, os.environ["VMM_BENCH_LIB"])
import benchlib
from benchlib import log, die, wait_for, finish, du_kib, qemu_template, qemu_start, smaps, med, spread, row, header

runs, work, nclones, nidle, runs4g, rev = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
vmm, guest = f"{work}/vmm", f"{work}/testguest.elf"
state = f"{work}/state"
benchlib.configure(work, vmm, guest, "clone.sh")
os.environ["VMM_STATE_DIR"] = state
have_strace = shutil.which("strace") is not None and subprocess.run(
    ["strace", "-f", "--seccomp-bpf", "-e", "trace=exit_group", "-o", "/dev/null", "true"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
seq = 0









# ---- templates ------------------------------------------------------------------------------------
def ours_template(name, memory, cmdline, ready):
    """vmm template create; returns dict total_ms, write_ms (memory file open → fsync), boot_ms."""
    args = [vmm, "template", "create", name, "--kernel", guest, "--cmdline", cmdline, "--memory", memory,
            "--ready-on", ready, "--console", "none"]
    trace = f"{work}/tc.strace"
    if have_strace:
        args = ["strace", "-f", "-ttt", "-T", "--seccomp-bpf", "-e", "trace=execve,openat,fsync,rename,renameat2,exit_group",
                "-o", trace] + args
    t0 = time.perf_counter()
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    total = (time.perf_counter() - t0) * 1e3
    if p.returncode != 0:
        sys.exit(f"clone.sh: template create {name} failed ({p.returncode}): {p.stdout[-400:]!r}")
    r = {"total": total}
    if have_strace:
        t_exec = t_open = t_fsync_end = None
        for line in open(trace):
            f = line.split(None, 2)
            if len(f) < 3:
                continue
            ts = float(f[1])
            if t_exec is None and f[2].startswith("execve(") and vmm in f[2]:
                t_exec = ts
            if "memory.bin" in f[2] and "O_CREAT" in f[2]:
                t_open = ts
            if t_open and f[2].startswith("fsync(") and t_fsync_end is None:
                m = re.search(r"<([0-9.]+)>\s*$", f[2])
                r["fsync"] = float(m.group(1)) * 1e3 if m else 0
                t_fsync_end = ts + (float(m.group(1)) if m else 0)
        if t_exec and t_open and t_fsync_end:
            r["boot"] = (t_open - t_exec) * 1e3
            r["write"] = (t_fsync_end - t_open) * 1e3
    tdir = f"{state}/templates/{name}"
    r["du"] = du_kib(f"{tdir}/memory.bin")
    r["size"] = os.stat(f"{tdir}/memory.bin").st_size
    return r


# ---- clones ---------------------------------------------------------------------------------------
def ours_start(template, pattern):
    global seq
    seq += 1
    t0 = time.perf_counter()
    p = subprocess.Popen([vmm, "run", "--clone-of", template, "--name", f"c{seq}", "--console", "stdio"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p.stdin.write(b"get\n"); p.stdin.flush()
    t1, _ = wait_for(p, pattern, 30)
    return p, t0, t1


def cpu_ms(pid):
    """CPU time of every live thread of pid so far (schedstat, ns)."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(open(f"/proc/{pid}/task/{t}/schedstat").read().split()[0])
        except (OSError, ValueError):
            pass
    return total / 1e6

def latency(start, cpu=None):
    p, t0, t1 = start()
    if cpu is not None:
        cpu.append(cpu_ms(p.pid))
    t2 = finish(p)
    return (t1 - t0) * 1e3, (t2 - t0) * 1e3

def throughput(start, pipelined):
    """CLONES clones back to back; returns clones/s."""
    pending = []
    t0 = time.perf_counter()
    for _ in range(nclones):
        p, _, _ = start()
        if pipelined:
            try:
                p.stdin.write(b"quit\n"); p.stdin.close()
            except BrokenPipeError:
                pass
            pending.append(p)
            for old in [x for x in pending if x.poll() is not None]:
                pending.remove(old); old.stdout.close()
        else:
            finish(p)
    for p in pending:
        finish(p) if not p.stdin.closed else (p.wait(30), p.stdout.close())
    return nclones / (time.perf_counter() - t0)


def idle_memory(start):
    procs = [start()[0] for _ in range(nidle)]
    time.sleep(0.2)
    rows = [smaps(p.pid) for p in procs]
    for p in procs:
        finish(p)
    return rows

# ---- where our clone start goes (strace) ----------------------------------------------------------
def ours_traced(template):
    global seq
    seq += 1
    trace = f"{work}/clone.strace"
    t0 = time.perf_counter()
    p = subprocess.Popen(["strace", "-f", "-ttt", "-T", "--seccomp-bpf", "-e", "trace=execve,openat,ioctl,write,close,exit_group",
                          "-o", trace, vmm, "run", "--clone-of", template, "--name", f"c{seq}", "--console", "stdio"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    p.stdin.write(b"get\n"); p.stdin.flush()
    wait_for(p, b"counter: value=", 30)
    finish(p)
    marks = {}
    vm_fd = None
    for line in open(trace):
        f = line.split(None, 2)
        if len(f) < 3:
            continue
        ts, call = float(f[1]), f[2]
        def mark(k, t=ts):
            marks.setdefault(k, t)
        if call.startswith("execve(") and vmm in call: mark("exec")
        elif call.startswith("openat(") and "manifest.json" in call: mark("main")
        elif call.startswith("openat(") and "/dev/kvm" in call: mark("kvm")
        elif "KVM_CREATE_VM" in call:
            mark("vm")
            m = re.search(r"= (\d+)", call)
            vm_fd = m and m.group(1)
        elif "KVM_RUN" in call: mark("run")
        elif call.startswith("write(1,") or call.startswith("write(1, "): mark("out")
        elif vm_fd and call.startswith(f"close({vm_fd})") and "out" in marks and "close" not in marks:
            m = re.search(r"<([0-9.]+)>\s*$", call)
            marks["close_ms"] = float(m.group(1)) * 1e3 if m else 0
            marks["close"] = ts
        elif call.startswith("exit_group("): mark("exit")
    e = marks.get("exec")
    if e is None or "out" not in marks:
        return None
    return {k: (marks[k] - e) * 1e3 for k in ("main", "kvm", "vm", "run", "out", "exit") if k in marks} | \
           {"close_ms": marks.get("close_ms", 0)}

# ---- report helpers -------------------------------------------------------------------------------




# ================================================================================================
load0 = open("/proc/loadavg").read().split()[:3]
log(f"templates (256 MiB x {runs}, 4 GiB dirtied x {runs4g}, each VMM) in {work}")
tpl = {"ours256": [], "qemu256": [], "ours4g": [], "qemu4g": []}
for i in range(runs):
    r = ours_template(f"c256-{i}" if i else "c256", "256M", "counter", "counter: ready")
    tpl["ours256"].append(r)
    r = qemu_template(f"{work}/q256" if i == 0 else f"{work}/q256-{i}", "256M", "counter", "counter: ready")
    tpl["qemu256"].append(r)
stream_tpl = qemu_template(f"{work}/q256s", "256M", "counter", "counter: ready", stream=True)
for i in range(runs4g):
    log(f"4 GiB templates, run {i + 1} of {runs4g} (the guest dirties 3000 MiB; ~40 s each)")
    tpl["ours4g"].append(ours_template(f"d4g-{i}" if i else "d4g", "4G", "dirty 3000", "dirty: ready"))
    tpl["qemu4g"].append(qemu_template(f"{work}/q4g" if i == 0 else f"{work}/q4g-{i}", "4G", "dirty 3000", "dirty: ready"))
# Only the first template of each kind is used below; drop the rest (4 GiB files).
for i in range(1, runs4g):
    shutil.rmtree(f"{work}/q4g-{i}", ignore_errors=True)
    subprocess.run([vmm, "template", "rm", f"d4g-{i}", "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

CNT, DIRTY = b"counter: value=", b"dirty: "
starts = {
    "ours256": lambda: ours_start("c256", CNT),
    "qemu256": lambda: qemu_start(f"{work}/q256", "256M", "counter", CNT),
    "qstream256": lambda: qemu_start(f"{work}/q256s", "256M", "counter", CNT, mode="stream"),
    "ours4g": lambda: ours_start("d4g", DIRTY),
    "qemu4g": lambda: qemu_start(f"{work}/q4g", "4G", "dirty 3000", DIRTY),
}
if runs4g == 0:  # quick runs: no 4 GiB template, no 4 GiB rows
    del starts["ours4g"], starts["qemu4g"]
log(f"clone start latency, {runs} runs each (one warm-up each first)")
lat = {k: [] for k in starts}
ext = {k: [] for k in starts}
cpus = {k: [] for k in starts}
for k, s in starts.items():
    latency(s)  # warm-up: page cache, first QMP, first exec of the copied binary
for i in range(runs):
    for k, s in starts.items():
        a, b = latency(s, cpus[k])
        lat[k].append(a); ext[k].append(b)

log(f"{nclones} clones back to back, {runs} rounds each")
tput = {k: [] for k in ("ours_serial", "qemu_serial", "ours_pipe", "qemu_pipe")}
for i in range(runs):
    tput["ours_serial"].append(throughput(starts["ours256"], False))
    tput["qemu_serial"].append(throughput(starts["qemu256"], False))
    tput["ours_pipe"].append(throughput(starts["ours256"], True))
    tput["qemu_pipe"].append(throughput(starts["qemu256"], True))

log(f"memory of {nidle} idle clones each")
mem_ours = idle_memory(starts["ours256"])
mem_qemu = idle_memory(starts["qemu256"])

start_alone = []
for i in range(max(runs, 10)):
    t0 = time.perf_counter()
    subprocess.run([vmm, "--version"], stdout=subprocess.DEVNULL)
    start_alone.append((time.perf_counter() - t0) * 1e3)
traced = []
if have_strace:
    log(f"{runs} strace'd clone starts")
    for i in range(runs):
        t = ours_traced("c256")
        if t:
            traced.append(t)
# The clone path alone, in one process (vmm template bench): each run's median of 20 clones.
def inproc(template, expect):
    r = subprocess.run([vmm, "template", "bench", template, "--count", "20", "--expect", expect],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    m = re.search(r"to the answer: median ([0-9.]+) ms", r.stdout)
    if r.returncode != 0 or not m:
        die(f"vmm template bench {template} failed:\n{r.stdout}")
    return float(m.group(1))
log(f"in-process clones (vmm template bench), {runs} runs of 20")
inproc_ms = {"256": [inproc("c256", CNT.decode()) for _ in range(runs)]}
if runs4g:
    inproc_ms["4g"] = [inproc("d4g", DIRTY.decode()) for _ in range(runs)]
load1 = open("/proc/loadavg").read().split()[:3]

# ================================================================================================
kvm_ver = subprocess.run(["qemu-system-x86_64", "--version"], stdout=subprocess.PIPE, text=True).stdout.splitlines()[0]
print(f"clone benchmark ({time.strftime('%Y-%m-%d')}, vmm {rev}, {kvm_ver.split('(')[0].strip()}); RUNS={runs}; "
      f"test guest, 1 vCPU; {os.cpu_count()} host CPUs; load average {' '.join(load0)} at start, {' '.join(load1)} at end")
print("ratio: qemu / ours for times and memory, ours / qemu for rates (higher is better for ours)")
print()
print("clone start: exec -> first guest output after resume (ms)")
header()
row("256 MiB (qemu: x-ignore-shared, share=off)", lat["ours256"], lat["qemu256"], "ms", target="target <= 3 ms")
row(f"256 MiB (qemu: stream restore, {stream_tpl['state'] >> 10} KiB)", lat["ours256"], lat["qstream256"], "ms")
row("4 GiB, template dirtied 3000 MiB", lat.get("ours4g"), lat.get("qemu4g"), "ms", target="target <= 3 ms")
row("256 MiB (x-ignore-shared): process CPU ms at first output", cpus["ours256"], cpus["qemu256"], "ms")
row("4 GiB: process CPU ms at first output", cpus.get("ours4g"), cpus.get("qemu4g"), "ms")
row("256 MiB: exec -> exit after quit", ext["ours256"], ext["qemu256"], "ms")
row("4 GiB: exec -> exit after quit", ext.get("ours4g"), ext.get("qemu4g"), "ms")
row("in-process clone, 256 MiB (vmm template bench; no peer)", inproc_ms["256"], None, "ms", target="target <= 1 ms")
row("in-process clone, 4 GiB dirtied (no peer)", inproc_ms.get("4g"), None, "ms", target="target <= 2x its floor")
print()
print(f"clones/s, {nclones} clones of the 256 MiB template back to back (each to its first output, then quit)")
header()
row("serial (each exit waited for)", tput["ours_serial"], tput["qemu_serial"], "clones/s", "{:.1f}", True, "target >= 500/s")
row("pipelined (next starts once one answered)", tput["ours_pipe"], tput["qemu_pipe"], "clones/s", "{:.1f}", True, "target >= 500/s")
print()
print(f"host memory per idle clone, {nidle} clones of the 256 MiB template at once (KiB; median (min–max) over the clones)")
header()
row("Private_Clean + Private_Dirty", [m["private"] for m in mem_ours], [m["private"] for m in mem_qemu], "KiB", "{:.0f}",
    target="target <= 1024 KiB + what it dirtied")
row("Pss", [m["pss"] for m in mem_ours], [m["pss"] for m in mem_qemu], "KiB", "{:.0f}")
row("Rss", [m["rss"] for m in mem_ours], [m["rss"] for m in mem_qemu], "KiB", "{:.0f}")
print()
print(f"template create (ms; 256 MiB: {runs} runs, 4 GiB dirtied: {runs4g} runs)")
header()
for k, label in (("256", "256 MiB"), ("4g", "4 GiB dirtied 3000 MiB")):
    o, q = tpl["ours" + k], tpl["qemu" + k]
    if not o:
        continue
    row(f"{label}: exec -> template written", [r["total"] for r in o], [r["total"] for r in q], "ms", "{:.1f}")
    if all("boot" in r for r in o):
        row(f"{label}: exec -> save starts (boot, guest work)", [r["boot"] for r in o], [r["boot"] for r in q], "ms", "{:.1f}")
        row(f"{label}: save (ours: memory file write+fsync)", [r["write"] for r in o], [r["write"] for r in q], "ms", "{:.1f}")
        print(f"  {label + ': of which fsync (ours)':<58} {spread([r['fsync'] for r in o], '{:.1f}'):>26}")
    print(f"  {label + ': memory file allocated (du) / RAM':<58} {o[0]['du'] / 1024:>15.1f} MiB / {o[0]['size'] >> 20} MiB"
          f" {q[0]['du'] / 1024:>15.1f} MiB / {q[0]['size'] >> 20} MiB   (qemu's state file: {q[0]['state']} bytes)")
if tpl["ours4g"] and all("write" in r for r in tpl["ours256"] + tpl["ours4g"]):
    w256, w4 = med([r["write"] for r in tpl["ours256"]]), med([r["write"] for r in tpl["ours4g"]])
    d256, d4 = tpl["ours256"][0]["du"] / 1024, tpl["ours4g"][0]["du"] / 1024
    print(f"  ours: memory file write {w256:.1f} ms for {d256:.1f} MiB of data, {w4:.1f} ms for {d4:.1f} MiB"
          f" ({d4 / max(w4 / 1e3, 1e-9):.0f} MiB/s on the 4 GiB one): proportional to touched memory, not to RAM")
print()
print("where our clone start goes (256 MiB; strace -f on openat/ioctl/write/close/exit_group; ms from exec, median (min–max))")
if traced:
    for k, label in (("main", "main's first file (manifest.json): exec, ld.so, init"), ("kvm", "/dev/kvm opened"),
                     ("vm", "KVM_CREATE_VM"), ("run", "first KVM_RUN (restore done, threads up)"), ("out", "first console byte written"),
                     ("exit", "exit_group after quit")):
        xs = [t[k] for t in traced if k in t]
        if xs:
            print(f"  {label:<58} {spread(xs)}")
    print(f"  {'close() of the VM fd at exit (KVM teardown)':<58} {spread([t['close_ms'] for t in traced])}")
else:
    print("  (install strace to see it)")
print(f"  {'untraced process start (vmm --version, exec -> exit)':<58} {spread(start_alone)}")
PY

# ---- The nested lane: a Linux clone answering HTTP at its new address (clone-http-inner.sh) ----
((http_runs > 0)) || exit 0
command -v bc >/dev/null || "$root/scripts/setup.sh"
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
