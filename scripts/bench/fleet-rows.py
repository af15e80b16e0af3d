"""The rows of scripts/bench/fleet.sh, whose header says what each row measures. They run on the host
when it has a usable /dev/kvm (the direct lane), otherwise inside the nested lane's L1
(scripts/bench/rows-inner.sh), where only the ratios carry over.
usage: fleet-rows.py RUNS WORK FLEET IDLE REV   (WORK holds vmm, vmm-http.so, testguest.elf)
env:   VMM_BENCH_LIB (this directory), FORK_SIZES ("256M:128 1G:512 4G:1024": memory:MiB dirtied
       for the live-fork rows), BENCH_LANE (where this runs, for the report's first line)."""
import json, os, re, socket, statistics, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, os.environ["VMM_BENCH_LIB"])
import benchlib
from benchlib import log, wait_for, finish, qemu_template, qemu_start, smaps, med, spread, row, header

runs, work, nfleet, nidle, rev = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
vmm, guest = f"{work}/vmm", f"{work}/testguest.elf"
state = f"{work}/state"
os.environ["VMM_STATE_DIR"] = state
benchlib.configure(work, vmm, guest, "fleet.sh")

def api(sock, method, path, body=None, timeout=60):
    """One HTTP/1.1 request on a Unix socket; returns (status, parsed JSON or None)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(sock)
    data = json.dumps(body).encode() if body is not None else b""
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    buf = b""
    while chunk := s.recv(65536):
        buf += chunk
    s.close()
    head, _, payload = buf.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, (json.loads(payload) if payload.strip() else None)

def sock_of(name):
    return f"{state}/run/{name}/api.sock"

def wait_socket(name, timeout=30):
    deadline = time.perf_counter() + timeout
    while not os.path.exists(sock_of(name)):
        if time.perf_counter() > deadline:
            sys.exit(f"fleet.sh: {name}: no API socket after {timeout} s")
        time.sleep(0.005)

def meminfo(key="MemAvailable"):
    for line in open("/proc/meminfo"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

def stop_all():
    for n in os.listdir(f"{state}/run") if os.path.isdir(f"{state}/run") else []:
        try:
            api(sock_of(n), "PUT", "/vm/stop", {"timeout_s": 0}, timeout=5)
        except OSError:
            pass
    deadline = time.perf_counter() + 120
    while os.path.isdir(f"{state}/run") and os.listdir(f"{state}/run") and time.perf_counter() < deadline:
        time.sleep(0.05)

load0 = open("/proc/loadavg").read().split()[:3]

# ---- live fork ------------------------------------------------------------------------------------
fork, fork_floor = {}, {}
fork_sizes = [(m, int(d)) for m, d in (x.split(":") for x in os.environ.get("FORK_SIZES", "256M:128 1G:512 4G:1024").split())]
for mem, dirty in fork_sizes:
    name = f"f{mem}"
    log(f"fork at {mem} (guest dirtied {dirty} MiB), {runs} runs")
    p = subprocess.Popen([vmm, "run", "--kernel", guest, "--cmdline", f"dirty {dirty}", "--memory", mem, "--name", name,
                          "--console", "stdio"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    wait_for(p, b"dirty: ready", 600)
    wait_socket(name)
    paused, response, parts = [], [], {}
    for i in range(runs + 1):
        t0 = time.perf_counter()
        st, r = api(sock_of(name), "PUT", "/vm/fork", {"count": 1})
        t1 = time.perf_counter()
        if st != 200 or "error" in r["children"][0]:
            sys.exit(f"fleet.sh: fork failed: {st} {r}")
        child = sock_of(r["children"][0]["name"])
        if i:  # the first is a warm-up
            paused.append(r["paused_ms"]); response.append((t1 - t0) * 1e3)
            # Where the pause went (the parent's parts), and the child's steps (ms from the fork's start)
            for k in ("prepare_ms", "quiesce_ms", "capture_ms", "disks_ms", "fork_ms", "resume_ms"):
                parts.setdefault("parent " + k[:-3], []).append(r.get(k, 0.0))
            cst, info = api(child, "GET", "/vm")
            for k, v in ((info or {}).get("start_ms") or {}).items() if cst == 200 else ():
                if v is not None:
                    parts.setdefault("child " + k, []).append(v)
        api(child, "PUT", "/vm/stop", {"timeout_s": 0})
        time.sleep(0.05)
    fork[mem] = (paused, response, parts)
    finish(p)
    # KVM's own floor for a fork at this size (scripts/bench/kvm-floor.c): fork() of a process whose
    # VM's guest wrote the same amount of its memory, and the child's own VM over the inherited RAM,
    # run to its first instruction's exit; nothing of vmm's. Each run's median of 10.
    mib = int(mem[:-1]) * (1024 if mem.endswith("G") else 1)
    floors = []
    for i in range(runs):
        r = subprocess.run([f"{work}/kvm-floor", "fork", str(mib), str(dirty), "10"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=600)
        m = re.search(r"fork\(\) median ([0-9.]+) .*first exit median ([0-9.]+)", r.stdout)
        if r.returncode != 0 or not m:
            sys.exit(f"fleet.sh: kvm-floor fork failed ({r.returncode}): {r.stdout[-400:]}")
        floors.append((float(m.group(1)), float(m.group(2))))
    fork_floor[mem] = floors

# ---- a fleet --------------------------------------------------------------------------------------
log("templates: ours and QEMU's (256 MiB counter guest)")
subprocess.run([vmm, "template", "create", "ctr", "--kernel", guest, "--cmdline", "counter", "--ready-on", "counter: ready",
                "--console", "none"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
qemu_template(f"{work}/qctr", "256M", "counter", "counter: ready")

log(f"fleet of {nfleet} clones")
avail0 = meminfo()
t0 = time.perf_counter()
p = subprocess.Popen([vmm, "run", "--clone-of", "ctr", "--count", str(nfleet), "--name", "web", "--detach"],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
starts, by_index = [], {}
for line in p.stdout:
    f = line.split()
    if len(f) == 4 and f[3] == b"ms":
        starts.append(float(f[2]))
        by_index[int(f[0].rsplit(b"-", 1)[1])] = float(f[2])
p.wait()
total = time.perf_counter() - t0
if len(starts) != nfleet:
    sys.exit(f"fleet.sh: {len(starts)} of {nfleet} clones started: {p.stderr.read()[-500:]!r}")
# Whether creating a VM gets slower as their number grows: each clone's own start (fork -> about
# to run), by the hundred it belongs to (clone i is forked i-th).
per_hundred = [statistics.median([by_index[j] for j in range(i + 1, min(i + 101, nfleet + 1)) if j in by_index])
               for i in range(0, nfleet, 100)]
time.sleep(1.0)
avail1 = meminfo()
pids = []
for n in os.listdir(f"{state}/run"):
    pids.append(json.load(open(f"{state}/run/{n}/vm.json"))["pid"])
private_ours = [smaps(pid)["private"] for pid in pids]
answering = sum(1 for n in os.listdir(f"{state}/run") if api(sock_of(n), "GET", "/vm", timeout=10)[0] == 200)
stop_all()

# ---- KVM alone: does creating a VM get slower as their number grows? (scripts/bench/vm-growth.c) ----
ngrowth = int(os.environ.get("VM_GROWTH", "1000"))
growth = {}
for per, label in ((0, "all in one process"), (1, "one process each (as a fleet's clones)")):
    log(f"KVM alone: {ngrowth} VMs, {label}")
    r = subprocess.run([f"{work}/vm-growth", str(ngrowth), "256", str(per)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=1200)
    if r.returncode != 0:
        sys.exit(f"fleet.sh: vm-growth failed ({r.returncode}): {r.stdout[-400:]}")
    # per hundred: create_vm, memslot, irqchip, vcpu, total
    growth[label] = [[float(x) for x in line.split()[1:]] for line in r.stdout.splitlines()[1:] if line.split()]
    time.sleep(2)  # the VMs' teardown is partly asynchronous

# ---- a warm pool ----------------------------------------------------------------------------------
npool, nreq = 16, 20 * runs
nclients = int(os.environ.get("POOL_CLIENTS", "4"))
log(f"pool of {npool}: {nreq} requests one at a time (identity guest), then rates (counter guest)")
# The identity guest: a clone's first output is its answer to the VMGenID notification
# ("identity: notified", at once on the GED's interrupt), whatever moment the template was saved at.
# (The counter guest prints nothing until asked: no first byte to time.) Once notified, it reads
# its identity through fw_cfg a byte at a time and prints it: ~350 port exits, milliseconds of
# CPU per clone, which on two CPUs bound how many such clones can start per second whatever the
# VMM does. The rates are measured with the counter guest, idle once started: the VMM's own.
subprocess.run([vmm, "template", "create", "idt", "--kernel", guest, "--cmdline", "identity", "--ready-on", "identity: ready",
                "--console", "none"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def start_pool(tmpl, name):
    p = subprocess.Popen([vmm, "pool", tmpl, "--size", str(npool), "--name", name], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return p, sock_of(name)
def pool_ready(psock, n, timeout=120):
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        try:
            if api(psock, "GET", "/pool", timeout=5)[1]["ready"] >= n:
                return
        except (OSError, TypeError, KeyError):
            pass
        time.sleep(0.05)
    sys.exit("fleet.sh: the pool did not fill")
def take(psock):
    st, r = api(psock, "POST", "/clones", {})
    if st != 201:
        sys.exit(f"fleet.sh: pool request failed: {st} {r}")
    return r
def burst(psock, n, clients=1):
    t0 = time.perf_counter()
    if clients == 1:
        for _ in range(n):
            take(psock)
    else:
        with ThreadPoolExecutor(clients) as ex:
            list(ex.map(lambda _: take(psock), range(n)))
    return n / (time.perf_counter() - t0)
pp, psock = start_pool("idt", "bpool")
pool_ready(psock, npool)
p_entry, p_output, p_request, p_taken, p_resumed = [], [], [], [], []
for i in range(nreq):
    r = take(psock)
    p_request.append(r["request_ms"])
    wait_socket(r["name"])
    deadline = time.perf_counter() + 5
    while True:  # until the clone has printed
        s0 = api(sock_of(r["name"]), "GET", "/vm")[1]["start_ms"]
        if s0["first_output"] is not None or time.perf_counter() > deadline:
            break
        time.sleep(0.01)
    if s0["first_output"] is None:
        sys.exit(f"fleet.sh: pool clone {r['name']} printed nothing in 5 s")
    p_entry.append(s0["first_entry"]); p_output.append(s0["first_output"])
    p_taken.append(s0["taken"]); p_resumed.append(s0["resumed"])
    api(sock_of(r["name"]), "PUT", "/vm/stop", {"timeout_s": 0})
    pool_ready(psock, npool)
rate_identity = burst(psock, npool)
pp.send_signal(2)
pp.wait(timeout=120)
stop_all()
# Rates: each from a full pool (refilled between), `runs` times; then one long burst, which the
# refill must keep up with once the pool is down to a quarter.
pp, psock = start_pool("ctr", "cpool")
rates_b2b, rates_concurrent = [], []
for i in range(runs):
    pool_ready(psock, npool)
    rates_b2b.append(burst(psock, npool))
    pool_ready(psock, npool)
    rates_concurrent.append(burst(psock, npool, nclients))
pool_ready(psock, npool)
rate_sustained = burst(psock, 5 * npool)
pp.send_signal(2)
pp.wait(timeout=120)
stop_all()

log(f"QEMU: {nidle} clones with -incoming, one after another, then idle")
q_first, q_procs = [], []
for i in range(nidle):
    p, a, b = qemu_start(f"{work}/qctr", "256M", "counter", b"counter: value=", mode="shared")
    q_first.append((b - a) * 1e3); q_procs.append(p)
time.sleep(0.5)
private_qemu = [smaps(p.pid)["private"] for p in q_procs]
for p in q_procs:
    finish(p)
load1 = open("/proc/loadavg").read().split()[:3]

# ==================================================================================================
benchlib.title("fleet", rev, f"RUNS={runs}; FLEET={nfleet}", load0, load1)
print("live fork: PUT /vm/fork {\"count\": 1} (ms)")
header()
for mem, _ in fork_sizes:
    row(f"{mem}: parent paused (quiesce, capture, fork, resume)", fork[mem][0], None, "ms", target="target <= 2 ms at 4 GiB")
    row(f"{mem}: request -> child about to run (API response)", fork[mem][1], None, "ms", target="target <= 2 ms")
    steps = sorted(fork[mem][2].items(), key=lambda kv: (not kv[0].startswith("parent"), benchlib.med(kv[1])))
    print(f"    {mem} medians: " + ", ".join(f"{k} {benchlib.med(v):.2f}" for k, v in steps))
    if fork_floor.get(mem):
        fl = fork_floor[mem]
        print(f"    {mem} KVM floor (kvm-floor.c): fork() {spread([f[0] for f in fl])}, fork -> the child's first instruction"
              f" {spread([f[1] for f in fl])}; ours / floor: paused {med(fork[mem][0]) / med([f[0] for f in fl]):.2f}x,"
              f" child {med(fork[mem][1]) / med([f[1] for f in fl]):.2f}x")
print()
print(f"fleet: vmm run --clone-of --count {nfleet} --detach (256 MiB counter template)")
header()
row(f"clones/s over the fleet ({total:.2f} s)", [nfleet / total], None, "clones/s", "{:.0f}", True, "target >= 2000/s (pool)")
print(f"  {'a clone start (ms), median per hundred, in order':<58} {' '.join(f'{x:.1f}' for x in per_hundred)}")
row("a clone's start (ours: fork -> about to run; qemu: exec -> first output)", starts, q_first, "ms")
print()
print(f"memory: {nfleet} idle clones (ours), {nidle} (qemu)")
header()
row("host MemAvailable drop per clone (KVM's kernel memory included)", [(avail0 - avail1) / nfleet], None, "KiB", "{:.0f}",
    target=f"target: {nfleet} clones <= 2 GiB: {(avail0 - avail1) / 1024:.0f} MiB here")
row("Private_Clean + Private_Dirty per process", private_ours, private_qemu, "KiB", "{:.0f}", target="target <= 512 KiB")
print(f"  {'clones answering GET /vm before the stop':<58} {answering:>26}")
print()
print(f"KVM alone (vm-growth.c): {ngrowth} VMs made one after another and kept, each KVM_CREATE_VM, irqchip, a 256 MiB memslot,"
      f" a vCPU; ms, median per hundred, in order")
for label, rows in growth.items():
    print(f"  {label + ': KVM_CREATE_VM':<58} {' '.join(f'{r[0]:.2f}' for r in rows)}")
    print(f"  {label + ': all four':<58} {' '.join(f'{r[4]:.2f}' for r in rows)}")
print()
print(f"pool: vmm pool --size {npool}; POST /clones (ms from the pool taking the request, as the clone's GET /vm start_ms says);"
      f" times with the identity guest, rates with the counter guest (idle once started)")
header()
row("request -> member's vCPU 0 thread has it", p_taken, None, "ms")
row("request -> resumed (identity, generation, clock set)", p_resumed, None, "ms")
row("request -> vCPU 0 enters KVM_RUN (first guest instruction)", p_entry, None, "ms", target="target <= 0.2 ms")
row("request -> first byte on the console (identity: notified)", p_output, q_first, "ms", target="target <= 0.5 ms")
row("request -> answer (clone registered, API up; pool side)", p_request, None, "ms")
row(f"clones/s: {npool} back to back from a full pool", rates_b2b, None, "clones/s", "{:.0f}", True, "target >= 2000/s")
row(f"clones/s: {npool} from a full pool, {nclients} clients at once", rates_concurrent, None, "clones/s", "{:.0f}", True,
    "target >= 2000/s")
row(f"clones/s: {5 * npool} back to back (sustained: refill)", [rate_sustained], None, "clones/s", "{:.0f}", True)
row(f"clones/s: {npool} back to back, the identity guest (its own work)", [rate_identity], None, "clones/s", "{:.0f}", True)
print()
# The anchors: figures others published (../shared/design/CLONES.md), not measured in this
# run or on this host; ours beside them from the rows above.
print("anchors (published figures, not measured here; ours from the rows above)")
print(f"  {'zeroboot: spawn p50 0.79 ms (p99 1.74)':<58} ours: pool request -> first instruction {med(p_entry):.2f} ms,"
      f" -> first console byte {med(p_output):.2f} ms; live fork request -> child about to run {med(fork[fork_sizes[0][0]][1]):.2f} ms"
      f" at {fork_sizes[0][0]}")
print(f"  {'zeroboot: 1000 forks in 815 ms':<58} ours: {nfleet} clones (--count --detach) in {total * 1e3:.0f} ms")
print(f"  {'zeroboot: ~265 KB per sandbox; Firecracker <= 5 MiB per VM':<58} ours: {med(private_ours):.0f} KiB private per process,"
      f" {(avail0 - avail1) / nfleet:.0f} KiB MemAvailable per clone with KVM's kernel memory")
