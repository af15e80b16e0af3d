#!/usr/bin/env bash
# The nested lane: runs a script inside "L1", a Debian cloud kernel under QEMU TCG with an
# SVM-capable CPU (-cpu EPYC,+svm,+npt), where kvm-amd offers a real /dev/kvm. The script runs as root
# in L1's busybox userspace from /files, which holds the files given with --file and --bin; L1's
# console streams to stdout and to a log; the exit status is the script's (through QEMU's
# isa-debug-exit device), 124 on timeout, 125 when L1 itself failed, 126 when L1 froze (its heartbeat
# on the second serial port stopped for 60 s: the lane failed, not the test).
#
# usage: scripts/nested/run.sh [options] SCRIPT [ARG...]
#   --file SRC[:DEST]  copy SRC into L1 as /files/DEST (default: its basename)
#   --bin PATH         an executable for /files/bin, with the shared libraries ldd names for it and
#                      the plugins beside it (vmm-*.so)
#   --python SCRIPT    the host's python3 as /files/bin/python3 with the standard-library modules
#                      SCRIPT imports, directly or not (PYTHONHOME=/files/python in L1; repeatable)
#   --cpus N           L1 vCPUs (default 2, multi-threaded TCG)
#   --memory MIB       L1 RAM in MiB (default 2048)
#   --timeout SEC      kill L1 after SEC seconds (default 600)
#   --log FILE         where L1's console goes (default: a file under $TMPDIR, kept on failure)
#   --quiet            do not stream the console to stdout
#   --build-only       build (or find in the cache) the L1 and L2 images (initramfs, ext4 root) and exit
# env: VMM_LINUX_KERNEL, VMM_CACHE_DIR as for guest-images/linux/*.sh; VMM_NESTED_APPEND: more
#      arguments for L1's kernel command line (an experiment's, e.g. clocksource=tsc)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
source "$root/guest-images/linux/lib.sh"
here="$root/scripts/nested"

cpus=2 memory=2048 timeout=600 log="" quiet=0 build_only=0
files=() bins=() pyscripts=()
while (($#)); do
  case "$1" in
    --file) files+=("$2"); shift 2 ;;
    --bin) bins+=("$2"); shift 2 ;;
    --python) pyscripts+=("$2"); shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --memory) memory=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --log) log=$2; shift 2 ;;
    --quiet) quiet=1; shift ;;
    --build-only) build_only=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option $1 (see the usage at the top of $0)" ;;
    *) break ;;
  esac
done
(($# >= 1 || build_only)) || die "usage: run.sh [options] SCRIPT [ARG...]"
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing (scripts/setup.sh installs it)"

# Modules L1 loads: KVM for AMD (its CPU is an emulated EPYC), TUN for TAP backends, virtio-blk;
# bridges, veth pairs and nftables' NAT for clones on networks (vmm's --net bridge= and netns=); FUSE
# for failfs (a disk whose flush fails, tests/disk/failfs.c).
l1_modules=(kvm_amd tun virtio_pci virtio_blk bridge veth nf_tables nft_chain_nat nft_nat fuse)

find_kernel
# The L1 base initramfs: busybox, the modules above, /init and the static exit helper.
build_l1() {
  local key stage
  key=$(content_hash "$kernel" /bin/busybox "$here/l1-init.sh" "$here/l1-exit.c" "$here/l1-kvm-hold.c" "$here/kvm-vcpus.awk" \
    "$root/guest-images/linux/lib.sh" "$0" "${l1_modules[*]}")
  l1_cpio=$cache_root/nested/l1-$key.cpio
  [[ -f $l1_cpio ]] && return 0
  prepare_modules
  mkdir -p "$cache_root/nested"
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  install_busybox "$stage"
  install_modules "$stage" "${l1_modules[@]}"
  install -m 755 "$here/l1-init.sh" "$stage/init"
  install -D -m 644 "$here/kvm-vcpus.awk" "$stage/etc/kvm-vcpus.awk"
  cc -static -O2 -o "$stage/sbin/l1-exit" "$here/l1-exit.c" || die "cannot build l1-exit (static libc missing?)"
  cc -static -O2 -o "$stage/sbin/l1-kvm-hold" "$here/l1-kvm-hold.c" || die "cannot build l1-kvm-hold"
  make_cpio "$stage" "$l1_cpio"
  rm -rf "$stage"
  trap - EXIT
  log "built $l1_cpio"
}
build_l1
if ((build_only)); then
  VMM_LINUX_KERNEL=$kernel "$root/guest-images/linux/build-initramfs.sh" >/dev/null
  "$root/guest-images/linux/build-rootfs.sh" >/dev/null
  echo "$l1_cpio"
  exit 0
fi
script=$1; shift
[[ -f $script ]] || die "$script: no such script"

work=$(mktemp -d "${TMPDIR:-/tmp}/vmm-nested.XXXXXX")
keep_log=0
cleanup() {
  # Interrupted or failed while L1 runs: QEMU (and the timeout that runs it, in a process group of
  # its own, which a terminal's Ctrl-C does not reach) must not run on for up to --timeout.
  [[ -n ${timeout_pid:-} ]] && kill "$timeout_pid" 2>/dev/null
  [[ -s $work/qemu.pid ]] && kill -9 "$(cat "$work/qemu.pid")" 2>/dev/null
  [[ -n ${tail_pid:-} ]] && kill "$tail_pid" 2>/dev/null
  if ((keep_log)); then rm -rf "$work/payload" "$work/initrd.cpio"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[[ -n $log ]] || log=$work/console.log

# The payload: /files with the script, its arguments, the files and the binaries with their libraries.
payload=$work/payload
mkdir -p "$payload/files/.run" "$payload/files/bin"
cp "$script" "$payload/files/.run/script"
: >"$payload/files/.run/args"
for a in "$@"; do printf '%s\n' "$a" >>"$payload/files/.run/args"; done
for f in "${files[@]}"; do
  src=${f%%:*} dest=$(basename "$src")
  [[ $f == *:* ]] && dest=${f#*:}
  [[ -e $src ]] || die "--file $src: no such file"
  mkdir -p "$(dirname "$payload/files/$dest")"
  cp -L "$src" "$payload/files/$dest"
done
# Each binary goes with the plugins beside it that it loads at run time (vmm-*.so, e.g. vmm's HTTP
# transport), and with the shared libraries of both.
plugins=()
for b in "${bins[@]}"; do
  for p in "$(dirname "$b")"/vmm-*.so; do [[ -e $p ]] && plugins+=("$p"); done
done
# ship_libs FILE: the shared libraries (and the dynamic loader) FILE needs, at the paths it expects.
ship_libs() {
  local lib
  for lib in $(ldd "$1" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
    [[ -e $payload$lib ]] && continue
    mkdir -p "$payload$(dirname "$lib")"
    objcopy --strip-debug "$(readlink -f "$lib")" "$payload$lib"
  done
}
if ((${#pyscripts[@]})); then
  # Debian's interpreter where it is (a pyenv or venv python3 on PATH may be a shell shim).
  python=/usr/bin/python3
  [[ -x $python ]] || python=$(python3 -c 'import sys; print(sys.executable)') || die "--python: no python3 on this host"
  bins+=("$python")
  # The modules the scripts import (ModuleFinder follows every import statement, whether it runs or
  # not) and those the interpreter imports at start-up, from the standard library only, at
  # /files/python/lib/python3.X/...; extension modules with their shared libraries.
  while IFS= read -r f; do
    rel=${f#*/lib/}
    mkdir -p "$(dirname "$payload/files/python/lib/$rel")"
    cp "$f" "$payload/files/python/lib/$rel"
    [[ $f == *.so ]] && ship_libs "$f"
  done < <("$python" - "${pyscripts[@]}" <<'PY'
import modulefinder, os, subprocess, sys, sysconfig
std = sysconfig.get_paths()["stdlib"]
files = set(subprocess.run([sys.executable, "-c", "import sys; print(*(m.__file__ for m in list(sys.modules.values())"
                            " if getattr(m, '__file__', None)), sep='\\n')"], stdout=subprocess.PIPE, text=True, check=True).stdout.split())
for script in sys.argv[1:]:
    finder = modulefinder.ModuleFinder(path=[os.path.dirname(os.path.abspath(script))] + sys.path)
    finder.run_script(script)
    files |= {m.__file__ for m in finder.modules.values() if m.__file__}
# encodings whole: which codec start-up wants depends on L1's locale
files |= {os.path.join(std, "encodings", f) for f in os.listdir(os.path.join(std, "encodings")) if f.endswith(".py")}
for f in sorted(files):
    if f.startswith(std + "/") and "-packages/" not in f:
        print(f)
PY
)
fi
for b in "${bins[@]}" "${plugins[@]}"; do
  [[ -x $b ]] || die "--bin $b: not an executable"
  objcopy --strip-debug "$b" "$payload/files/bin/$(basename "$b")"
  ship_libs "$b"
done
make_cpio "$payload" "$work/payload.cpio"
# The kernel unpacks concatenated newc archives in order: base first, payload on top.
cat "$l1_cpio" "$work/payload.cpio" >"$work/initrd.cpio"

heartbeat=$work/heartbeat
: >"$heartbeat"
qemu=(qemu-system-x86_64 -M pc -accel tcg,thread=multi -cpu EPYC,+svm,+npt -smp "$cpus" -m "$memory"
  -nodefaults -no-user-config -display none -no-reboot -serial stdio -serial "file:$heartbeat"
  -pidfile "$work/qemu.pid" -monitor "unix:$work/monitor,server=on,wait=off"
  -device isa-debug-exit,iobase=0xf4,iosize=0x01
  -kernel "$kernel" -initrd "$work/initrd.cpio"
  -append "console=ttyS0 quiet loglevel=4 panic=-1 softlockup_panic=1 mitigations=off vmm_nested.vmm_limit=${VMM_NESTED_VMM_LIMIT:-150} ${VMM_NESTED_APPEND:-}")
# L1's vCPU is one TCG thread: starved by other work on the host (a parallel test's compiler, say),
# its L2s stall and can hang outright (seen in CI: a 2-vCPU L2 halted on both vCPUs in SMP bring-up
# while the fuzz smoke test's clang build ran beside it). It runs ahead of the host's ordinary work
# where we may raise its priority (root); the rest of the host still has the other CPUs.
prio=()
((EUID == 0)) && prio=(nice -n -10)
# L1 writes a heartbeat every 5 s (l1-init.sh); 60 s without one means L1 froze: end it.
(
  last=-1 quiet_for=0
  while sleep 5; do
    size=$(stat -c %s "$heartbeat" 2>/dev/null) || exit 0
    if [[ $size == "$last" ]]; then quiet_for=$((quiet_for + 5)); else quiet_for=0 last=$size; fi
    if ((quiet_for >= 60)); then
      touch "$work/froze"
      # Where L1's vCPUs are, from QEMU's monitor, for the log (a frozen L1 prints nothing itself).
      timeout 10 python3 - "$work/monitor" >"$work/froze.txt" 2>&1 <<'PY' || true
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(3)
s.connect(sys.argv[1])
def reply():
    buf = b""
    try:
        while not buf.endswith(b"(qemu) "):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except socket.timeout:
        pass
    return buf.decode(errors="replace")
reply()
import re
regs = ""
for cmd in ("info cpus", "info registers -a"):
    s.sendall(cmd.encode() + b"\n")
    regs = reply().split("\n", 1)[-1].replace("(qemu) ", "")
    print(regs)
# Each vCPU's stack, for the kernel addresses on it (offsets from the _text that l1-init printed).
for cpu, rsp in enumerate(re.findall(r"RSP=([0-9a-f]{16})", regs)):
    for cmd in (f"cpu {cpu}", f"x /48gx 0x{rsp}"):
        s.sendall(cmd.encode() + b"\n")
        out = reply().split("\n", 1)[-1].replace("(qemu) ", "")
    print(f"CPU#{cpu} stack from RSP={rsp}:\n{out}")
PY
      kill -9 "$(cat "$work/qemu.pid" 2>/dev/null)" 2>/dev/null
      exit 0
    fi
  done
) &
monitor=$!
start=$(date +%s.%N)
set +e
# In the background, waited for: a signal's trap runs at once (bash holds it while a foreground
# command runs), and cleanup stops QEMU.
timeout -k 5 "$timeout" "${prio[@]}" "${qemu[@]}" </dev/null >"$log" 2>"$work/qemu.err" &
timeout_pid=$!
if ((!quiet)); then
  tail -n +1 -s 0.2 -f --pid="$timeout_pid" "$log" &
  tail_pid=$!
fi
wait "$timeout_pid"
qstatus=$?
timeout_pid=""
if [[ -n ${tail_pid:-} ]]; then
  wait "$tail_pid"
  tail_pid=""
fi
set -e
kill "$monitor" 2>/dev/null || true
wait "$monitor" 2>/dev/null || true
# QEMU's own complaints (e.g. EPYC features TCG lacks) only matter when L1 failed.
grep -v "TCG doesn't support requested feature" "$work/qemu.err" >&2 || true
elapsed=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
if [[ -e $work/froze ]]; then
  status=126; log "L1 froze: no heartbeat for 60 s (a lane failure: QEMU TCG or L1's kernel, not the test)"
  { echo "run.sh: L1's vCPUs when it froze (QEMU monitor):"; cat "$work/froze.txt" 2>/dev/null; } >>"$log"
elif ((qstatus == 124 || qstatus == 137)); then
  status=124; log "timeout after ${timeout}s"
elif ((qstatus & 1)) && { ((qstatus >> 1)) || grep -q "^=== vmm-nested: end status=0 ===" "$log"; }; then
  status=$((qstatus >> 1))
elif ((qstatus == 1)); then
  # QEMU's own failure (it could not start: a socket path too long, a bad option) is status 1 too,
  # which reads as L1 reporting 0: passed, without L1 having run. Success is L1 saying so.
  status=125; log "QEMU failed (exit 1) and L1 reported no status: $(head -c 300 "$work/qemu.err")"
else
  status=125; log "L1 ended without reporting a status (qemu exit $qstatus)"
  # QEMU exits 0 when L1 resets or powers off (-no-reboot): with no status reported and no panic
  # on its console, L1 reset by itself (seen once, 11 s into linux.boot_cpus1). Said in the log,
  # where tests/linux/nested-test.sh looks for lane failures.
  ((qstatus == 0)) && echo "run.sh: L1 reset or powered off by itself, without reporting a status" >>"$log"
fi
log "L1 ran ${elapsed}s, script status $status"
if ((status != 0)); then
  keep_log=1
  log "console log: $log"
fi
exit "$status"
