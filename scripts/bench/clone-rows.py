"""The test-guest rows of scripts/bench/clone.sh, whose header says what each row measures. They run on
the host when it has a usable /dev/kvm (the direct lane), otherwise inside the nested lane's L1
(scripts/bench/rows-inner.sh), where only the ratios carry over.
usage: clone-rows.py RUNS WORK CLONES IDLE BIG_RUNS REV   (WORK holds vmm, vmm-http.so, testguest.elf)
env:   VMM_BENCH_LIB (this directory), BIG_MEMORY (4G) and BIG_DIRTY (3000, MiB) for the big
       template, BENCH_LANE (where this runs, for the report's first line)."""
import json, os, re, select, shutil, signal, socket, statistics, subprocess, sys, time
sys.path.insert(0, os.environ["VMM_BENCH_LIB"])
import benchlib
from benchlib import log, die, wait_for, finish, du_kib, qemu_template, qemu_start, smaps, med, spread, row, header

runs, work, nclones, nidle, runs4g, rev = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
vmm, guest = f"{work}/vmm", f"{work}/testguest.elf"
state = f"{work}/state"
big_mem, big_dirty = os.environ.get("BIG_MEMORY", "4G"), int(os.environ.get("BIG_DIRTY", "3000"))
BIG = f"{big_mem[:-1]} GiB" if big_mem.endswith("G") else f"{big_mem[:-1]} MiB"
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
    """(exec -> the answer's first byte, exec -> the whole answer pattern, exec -> exit) in ms."""
    p, t0, t1 = start()
    if cpu is not None:
        cpu.append(cpu_ms(p.pid))
    t2 = finish(p)
    return (getattr(p, "first_output_at", t1) - t0) * 1e3, (t1 - t0) * 1e3, (t2 - t0) * 1e3

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

# ================================================================================================
load0 = open("/proc/loadavg").read().split()[:3]
log(f"templates (256 MiB x {runs}, {BIG} dirtied x {runs4g}, each VMM) in {work}")
tpl = {"ours256": [], "qemu256": [], "ours4g": [], "qemu4g": []}
for i in range(runs):
    r = ours_template(f"c256-{i}" if i else "c256", "256M", "counter", "counter: ready")
    tpl["ours256"].append(r)
    r = qemu_template(f"{work}/q256" if i == 0 else f"{work}/q256-{i}", "256M", "counter", "counter: ready")
    tpl["qemu256"].append(r)
stream_tpl = qemu_template(f"{work}/q256s", "256M", "counter", "counter: ready", stream=True)
for i in range(runs4g):
    log(f"{BIG} templates, run {i + 1} of {runs4g} (the guest dirties {big_dirty} MiB)")
    tpl["ours4g"].append(ours_template(f"d4g-{i}" if i else "d4g", big_mem, f"dirty {big_dirty}", "dirty: ready"))
    tpl["qemu4g"].append(qemu_template(f"{work}/q4g" if i == 0 else f"{work}/q4g-{i}", big_mem, f"dirty {big_dirty}", "dirty: ready"))
# Only the first template of each kind is used below; drop the rest (big files).
for i in range(1, runs4g):
    shutil.rmtree(f"{work}/q4g-{i}", ignore_errors=True)
    subprocess.run([vmm, "template", "rm", f"d4g-{i}", "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

CNT, DIRTY = b"counter: value=", b"dirty: "
starts = {
    "ours256": lambda: ours_start("c256", CNT),
    "qemu256": lambda: qemu_start(f"{work}/q256", "256M", "counter", CNT),
    "qstream256": lambda: qemu_start(f"{work}/q256s", "256M", "counter", CNT, mode="stream"),
    "ours4g": lambda: ours_start("d4g", DIRTY),
    "qemu4g": lambda: qemu_start(f"{work}/q4g", big_mem, f"dirty {big_dirty}", DIRTY),
}
if runs4g == 0:  # quick runs: no big template, no big rows
    del starts["ours4g"], starts["qemu4g"]
log(f"clone start latency, {runs} runs each (one warm-up each first)")
lat = {k: [] for k in starts}  # to the first byte
ans = {k: [] for k in starts}  # to the whole answer
ext = {k: [] for k in starts}
cpus = {k: [] for k in starts}
for k, s in starts.items():
    latency(s)  # warm-up: page cache, first QMP, first exec of the copied binary
for i in range(runs):
    for k, s in starts.items():
        a, b, c = latency(s, cpus[k])
        lat[k].append(a); ans[k].append(b); ext[k].append(c)

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
    m = re.search(r"to the first byte: median ([0-9.]+) ms", r.stdout)
    e = re.search(r"to the guest's first exit: median ([0-9.]+) ms", r.stdout)
    if r.returncode != 0 or not m or not e:
        die(f"vmm template bench {template} failed:\n{r.stdout}")
    return float(m.group(1)), float(e.group(1))
log(f"in-process clones (vmm template bench), {runs} runs of 20")
inproc_ms, inproc_exit_ms = {}, {}
for k, template, expect in (("256", "c256", CNT), ("4g", "d4g", DIRTY)):
    if k == "4g" and not runs4g:
        continue
    got = [inproc(template, expect.decode()) for _ in range(runs)]
    inproc_ms[k], inproc_exit_ms[k] = [g[0] for g in got], [g[1] for g in got]
# KVM's own floor at the same sizes, in the same run (scripts/bench/kvm-floor.c): a VM over a private
# mapping of the template's memory file, with irqchip, PIT, a vCPU and its CPUID, run to its first
# instruction's exit; nothing of vmm's (no restore, no devices, no guest work). Each run's median of 20.
def kvm_floor(template, mib):
    r = subprocess.run([f"{work}/kvm-floor", "clone", f"{state}/templates/{template}/memory.bin", str(mib), "20"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    m = re.search(r"total median ([0-9.]+)", r.stdout)
    if r.returncode != 0 or not m:
        die(f"kvm-floor clone {template} failed:\n{r.stdout}")
    return float(m.group(1))
big_mib = int(big_mem[:-1]) * (1024 if big_mem.endswith("G") else 1)
floor_ms = {"256": [kvm_floor("c256", 256) for _ in range(runs)]}
if runs4g:
    floor_ms["4g"] = [kvm_floor("d4g", big_mib) for _ in range(runs)]
load1 = open("/proc/loadavg").read().split()[:3]

# ================================================================================================
benchlib.title("clone", rev, f"RUNS={runs}", load0, load1)
print("clone start: exec -> first guest output after resume (ms)")
header()
row("256 MiB (qemu: x-ignore-shared, share=off)", lat["ours256"], lat["qemu256"], "ms", target="target <= 3 ms")
row(f"256 MiB (qemu: stream restore, {stream_tpl['state'] >> 10} KiB)", lat["ours256"], lat["qstream256"], "ms")
row(f"{BIG}, template dirtied {big_dirty} MiB", lat.get("ours4g"), lat.get("qemu4g"), "ms", target="target <= 3 ms")
row("256 MiB: exec -> the whole answer line (15 more bytes)", ans["ours256"], ans["qemu256"], "ms")
row(f"{BIG}: exec -> the whole answer", ans.get("ours4g"), ans.get("qemu4g"), "ms")
row("256 MiB (x-ignore-shared): process CPU ms at first output", cpus["ours256"], cpus["qemu256"], "ms")
row(f"{BIG}: process CPU ms at first output", cpus.get("ours4g"), cpus.get("qemu4g"), "ms")
row("256 MiB: exec -> exit after quit", ext["ours256"], ext["qemu256"], "ms")
row(f"{BIG}: exec -> exit after quit", ext.get("ours4g"), ext.get("qemu4g"), "ms")
row("in-process clone, 256 MiB (vmm template bench; no peer)", inproc_ms["256"], None, "ms", target="target <= 1 ms")
row(f"in-process clone, {BIG} dirtied (no peer)", inproc_ms.get("4g"), None, "ms", target="target <= 2x its floor")
for k, size in (("256", "256 MiB"), ("4g", BIG)):
    if k in floor_ms and k in inproc_ms:
        print(f"  {'in-process, ' + size + ': to the guest first exit':<58} {spread(inproc_exit_ms[k]):>26}")
        print(f"  {'KVM floor, ' + size + ' (kvm-floor.c; to the first exit)':<58} {spread(floor_ms[k]):>26}"
              f"   in-process / floor: {med(inproc_ms[k]) / med(floor_ms[k]):.2f}x to the answer,"
              f" {med(inproc_exit_ms[k]) / med(floor_ms[k]):.2f}x to the first exit")
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
print(f"template create (ms; 256 MiB: {runs} runs, {BIG} dirtied: {runs4g} runs)")
header()
for k, label in (("256", "256 MiB"), ("4g", f"{BIG} dirtied {big_dirty} MiB")):
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
          f" ({d4 / max(w4 / 1e3, 1e-9):.0f} MiB/s on the {BIG} one): proportional to touched memory, not to RAM")
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
