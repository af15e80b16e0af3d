"""Shared by the clone and fleet benchmarks (scripts/bench/clone.sh, fleet.sh): process helpers,
QMP, QEMU as the clone peer (a template saved with x-ignore-shared, restored with -incoming), smaps,
and the report rows. configure() first."""
import json, os, re, select, socket, statistics, subprocess, sys, time

work = vmm = guest = None
script = "bench"
seq = 0
QEMU_COMMON = ["-cpu", "max,-arch-capabilities", "-accel", "kvm", "-smp", "1", "-nodefaults", "-no-user-config",
               "-nographic", "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
if os.environ.get("VMM_BENCH_QEMU_DATA"):  # QEMU's firmware directory where it is not installed (the nested lane)
    QEMU_COMMON += ["-L", os.environ["VMM_BENCH_QEMU_DATA"]]

def configure(work_dir, vmm_path, guest_path, script_name):
    """Where the run's files go, the binaries, and the script's name for messages."""
    global work, vmm, guest, script
    work, vmm, guest, script = work_dir, vmm_path, guest_path, script_name

def log(msg):
    print(f"{script}: {msg}", file=sys.stderr, flush=True)

def die(msg, p=None, out=b""):
    if p is not None:
        watchdog_report(p)
    sys.exit(f"{script}: {msg}; output: {out[-300:]!r}")

def watchdog_report(p):
    try:
        for t in sorted(os.listdir(f"/proc/{p.pid}/task")):
            comm = open(f"/proc/{p.pid}/task/{t}/comm").read().strip()
            wchan = open(f"/proc/{p.pid}/task/{t}/wchan").read().strip()
            st = open(f"/proc/{p.pid}/task/{t}/stat").read().rsplit(")", 1)[1].split()[0]
            print(f"  {comm} state={st} wchan={wchan}", file=sys.stderr)
    except OSError:
        pass
    p.kill()

def wait_for(p, pattern, timeout, buf=b""):
    """Reads p's stdout until pattern appears; returns (perf_counter at the match, buffer). The
    moment the first bytes came is kept as p.first_output_at."""
    fd = p.stdout.fileno()
    deadline = time.perf_counter() + timeout
    while pattern not in buf:
        left = deadline - time.perf_counter()
        if left <= 0:
            die(f"watchdog: {p.args[0]} did not print {pattern!r} in {timeout} s", p, buf)
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            rc = p.wait()
            die(f"{p.args[0]} ended (status {rc}) before printing {pattern!r}", None, buf)
        if not hasattr(p, "first_output_at"):
            p.first_output_at = time.perf_counter()
        buf += chunk
    return time.perf_counter(), buf

def finish(p, timeout=30):
    """Tells the guest to quit; returns the exit time. The guest exits through debug-exit: status 1."""
    try:
        p.stdin.write(b"quit\n"); p.stdin.close()
    except BrokenPipeError:
        pass
    try:
        rc = p.wait(timeout)
    except subprocess.TimeoutExpired:
        die("watchdog: a clone did not exit after quit", p)
    t = time.perf_counter()
    p.stdout.close()
    if rc != 1:
        die(f"{p.args[0]} exited with status {rc} after quit (expected 1)")
    return t

class Qmp:
    def __init__(self, path, timeout=30, errfile=None):
        self.errfile = errfile
        deadline = time.perf_counter() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.perf_counter() > deadline:
                    sys.exit(f"{script}: watchdog: QMP socket {path} never came up")
                time.sleep(0.0005)
        self.s.settimeout(timeout)
        self.f = self.s.makefile("rwb")
        json.loads(self.f.readline())  # greeting
        self.cmd("qmp_capabilities")
    def cmd(self, name, **args):
        self.f.write(json.dumps({"execute": name, "arguments": args}).encode() + b"\n"); self.f.flush()
        while True:
            try:
                line = self.f.readline()
            except OSError:
                line = b""
            if not line:
                err = open(self.errfile, errors="replace").read()[-600:] if self.errfile else ""
                sys.exit(f"{script}: QMP {name}: connection closed (QEMU ended); its stderr: {err}")
            r = json.loads(line)
            if "error" in r:
                sys.exit(f"{script}: QMP {name}: {r['error']}")
            if "return" in r:
                return r["return"]
    def close(self):
        self.f.close(); self.s.close()

def ignore_shared(q, on=True):
    q.cmd("migrate-set-capabilities", capabilities=[{"capability": "x-ignore-shared", "state": on}])

def du_kib(path):
    return os.stat(path).st_blocks // 2

def qemu_template(tdir, memory, append, ready, stream=False):
    """QEMU source: boot on a share=on RAM file to the ready line, stop, save with x-ignore-shared."""
    global seq
    os.makedirs(tdir, exist_ok=True)
    seq += 1
    sock = f"{work}/qmp-src{seq}"
    args = ["qemu-system-x86_64", "-M", "microvm,memory-backend=mem", "-object",
            f"memory-backend-file,id=mem,size={memory},mem-path={tdir}/ram,share=on", "-m", memory] + QEMU_COMMON + \
           ["-kernel", guest, "-append", append, "-qmp", f"unix:{sock},server=on,wait=off"]
    t0 = time.perf_counter()
    p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    t_ready, _ = wait_for(p, ready.encode(), 600)
    q = Qmp(sock)
    t1 = time.perf_counter()
    q.cmd("stop")
    if not stream:  # stream: no x-ignore-shared, RAM goes into the stream (for the plain restore row)
        ignore_shared(q)
    out = f"{tdir}/stream" if stream else f"{tdir}/state"
    q.cmd("migrate", uri=f"exec:cat > {out}")
    while q.cmd("query-migrate").get("status") not in ("completed", "failed"):
        time.sleep(0.0005)
    t2 = time.perf_counter()
    if q.cmd("query-migrate")["status"] != "completed":
        sys.exit(f"{script}: QEMU template save failed")
    q.cmd("quit"); q.close()
    p.wait(60)
    p.stdout.close(); p.stdin.close()
    return {"total": (t2 - t0) * 1e3, "boot": (t_ready - t0) * 1e3, "write": (t2 - t1) * 1e3,
            "du": du_kib(f"{tdir}/ram"), "size": os.stat(f"{tdir}/ram").st_size, "state": os.stat(out).st_size}

def qemu_start(tdir, memory, append, pattern, mode="shared"):
    global seq
    seq += 1
    sock = f"{work}/qmp{seq}"
    if mode == "shared":
        mem = ["-M", "microvm,memory-backend=mem", "-object",
               f"memory-backend-file,id=mem,size={memory},mem-path={tdir}/ram,share=off"]
        src = f"{tdir}/state"
    else:
        mem = ["-M", "microvm,memory-backend=mem", "-object", f"memory-backend-ram,id=mem,size={memory}"]
        src = f"{tdir}/stream"
    t0 = time.perf_counter()
    p = subprocess.Popen(["qemu-system-x86_64"] + mem + ["-m", memory] + QEMU_COMMON +
                         ["-kernel", guest, "-append", append, "-incoming", "defer", "-qmp", f"unix:{sock},server=on,wait=off"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(f"{work}/qemu.err", "wb"))
    q = Qmp(sock, errfile=f"{work}/qemu.err")
    if mode == "shared":
        ignore_shared(q)
    q.cmd("migrate-incoming", uri=f"exec:cat {src}")
    while q.cmd("query-status")["status"] == "inmigrate":
        time.sleep(0.0002)
    q.cmd("cont")
    p.stdin.write(b"get\n"); p.stdin.flush()
    t1, _ = wait_for(p, pattern, 30)
    q.close()
    return p, t0, t1

def smaps(pid):
    r = {}
    for line in open(f"/proc/{pid}/smaps_rollup"):
        f = line.split()
        if len(f) >= 3 and f[2] == "kB":
            r[f[0].rstrip(":")] = int(f[1])
    return {"rss": r["Rss"], "pss": r["Pss"], "private": r["Private_Clean"] + r["Private_Dirty"]}

def med(xs):
    return statistics.median(xs)

def spread(xs, f="{:.2f}"):
    return f"{f.format(med(xs))} ({f.format(min(xs))}–{f.format(max(xs))})"

def row(label, ours, qemu, unit, f="{:.2f}", higher_better=False, target=""):
    o = spread(ours, f) if ours else "n/a"
    q = spread(qemu, f) if qemu else "n/a"
    if ours and qemu:
        ratio = (med(ours) / med(qemu)) if higher_better else (med(qemu) / med(ours))
        r = f"{ratio:.3g}x"
    else:
        r = "-"
    print(f"  {label:<58} {o:>26} {q:>26} {r:>8}  {unit}{('  ' + target) if target else ''}")

def title(kind, rev, settings, load0, load1):
    """The report's first lines: what ran where, and how to read the ratio column."""
    ver = subprocess.run(["qemu-system-x86_64", "--version"], stdout=subprocess.PIPE, text=True).stdout.splitlines()[0]
    lane = os.environ.get("BENCH_LANE", "direct lane")
    print(f"{kind} benchmark ({time.strftime('%Y-%m-%d')}, vmm {rev}, {ver.split('(')[0].strip()}); {settings}; "
          f"{lane}; test guest, 1 vCPU; {os.cpu_count()} CPUs; load average {' '.join(load0)} at start, {' '.join(load1)} at end")
    print("ratio: qemu / ours for times and memory, ours / qemu for rates (higher is better for ours)")
    print()

def header():
    print(f"  {'':<58} {'ours median (min–max)':>26} {'qemu median (min–max)':>26} {'ratio':>8}")

