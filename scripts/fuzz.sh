#!/usr/bin/env bash
# Fuzzes one libFuzzer target (tests/fuzz/TARGET_fuzz.cpp) for SECONDS (default 60).
#
#   scripts/fuzz.sh TARGET [SECONDS] [extra libFuzzer options...]
#
# TARGET (scripts/fuzz-TARGET.sh is the same command with TARGET given):
#   qcow2      the qcow2 engine (tests/fuzz/qcow2_fuzz.cpp). Seeds: small valid images (qemu-img with
#              several cluster sizes, a backing file name, compressed, v2, refcount widths, data; and
#              images made by our engine), each wrapped as the fuzzer reads its input.
#              Regressions: tests/fuzz/regressions/.
#   state      the snapshot state file parser (tests/fuzz/state_fuzz.cpp). Seeds: valid state files of a
#              few shapes (written by the fuzzer itself, VMM_STATE_FUZZ_MAKE_SEEDS: containers, device
#              sections, driven virtio transports) and real ones (tests/fuzz/state-seeds/, captured from
#              vmm template create). Regressions: tests/fuzz/state-regressions/.
#   kvm-stats  the KVM binary stats parser (tests/fuzz/kvm_stats_fuzz.cpp, vmm/kvm_stats.cpp). Seeds:
#              hand-built stats files and, where /dev/kvm is usable, a fresh vCPU's and VM's (written by
#              the fuzzer itself, VMM_KVM_STATS_FUZZ_MAKE_SEEDS) and the captured ones committed in
#              tests/fuzz/kvm-stats-seeds/. Regressions: tests/fuzz/kvm-stats-regressions/.
#   kvm-cache  the supported-CPUID cache file's decoder (tests/fuzz/kvm_cache_fuzz.cpp,
#              vmm/kvm_cache.cpp). Seeds: well-formed files written by the fuzzer itself
#              (VMM_KVM_CACHE_FUZZ_MAKE_SEEDS). Regressions: tests/fuzz/kvm-cache-regressions/.
#   agent-identity  vmm-agent's identity file parser (tests/fuzz/agent_identity_fuzz.cpp,
#              guest-images/linux/vmm-agent/identity.c). Seeds: canonical files written by the fuzzer
#              itself (VMM_AGENT_IDENTITY_FUZZ_MAKE_SEEDS) and hand-written ones in
#              tests/fuzz/agent-identity-seeds/. Regressions: tests/fuzz/agent-identity-regressions/.
#   guest-io   a hostile guest's device traffic (tests/fuzz/guest_io_fuzz.cpp): port I/O to the legacy
#              devices, PCI configuration (ports and ECAM), the virtio-pci BARs, virtqueues and their
#              chains, block requests on a file, frames through a socketpair "TAP"; a snapshot of a
#              device mid-program must restore. Seeds: programs written by the fuzzer itself
#              (VMM_GUEST_IO_FUZZ_MAKE_SEEDS). Regressions: tests/fuzz/guest-io-regressions/.
#   kernel     the kernel loaders (tests/fuzz/kernel_fuzz.cpp, vmm/boot): a kernel file with an initrd,
#              a command line, a RAM size and a vCPU count through boot::load. Seeds: PVH ELF64/32,
#              vmlinux and bzImages from the unit tests' builders (VMM_KERNEL_FUZZ_MAKE_SEEDS).
#              Regressions: tests/fuzz/kernel-regressions/.
#   manifest   a template's manifest.json and a clone's clone.json (tests/fuzz/manifest_fuzz.cpp,
#              clone/template.cpp): refusals one line, accepted files written back the same. Seeds:
#              files written by the fuzzer itself (VMM_MANIFEST_FUZZ_MAKE_SEEDS). Regressions:
#              tests/fuzz/manifest-regressions/.
#   http       what a client sends on a VM's API socket (tests/fuzz/http_fuzz.cpp, vmm/api/http_plugin.cpp
#              over cpp-httplib): whole HTTP/1.1 responses only, JSON bodies, a fault_message in every
#              error, no body over the limit to the handler, no hang. Seeds: requests written by the
#              fuzzer itself (VMM_HTTP_FUZZ_MAKE_SEEDS); a dictionary of header names and values
#              (tests/fuzz/http.dict: httplib is not instrumented). Regressions: tests/fuzz/http-regressions/.
#   http-client  what a server at a VM's socket path answers the CLI (tests/fuzz/http_client_fuzz.cpp,
#              vmm/api/http_client.cpp): parse_response on the bytes, cut where recv() might have
#              cut them; one-line errors, final statuses, bodies within the limit, a prefix's answer
#              the whole's. Seeds: answers written by the fuzzer itself
#              (VMM_HTTP_CLIENT_FUZZ_MAKE_SEEDS). Regressions: tests/fuzz/http-client-regressions/.
#   exit       the vCPU exit handler (tests/fuzz/exit_fuzz.cpp, vmm/exit_handler.cpp): a kvm_run page a
#              hostile guest and KVM left (port and string I/O, MMIO, system events, internal errors,
#              unknown exits) against devices that check every access is inside their range. Seeds:
#              exits written by the fuzzer itself (VMM_EXIT_FUZZ_MAKE_SEEDS). Regressions:
#              tests/fuzz/exit-regressions/.
#   api        the control API's requests (tests/fuzz/api_fuzz.cpp, vmm/api/requests.cpp): a method, a
#              path and a body through parse_vm_request and parse_clone_request; refusals 4xx with a
#              one-line fault_message, accepted requests checked. Seeds: requests written by the
#              fuzzer itself (VMM_API_FUZZ_MAKE_SEEDS); a dictionary of the fields (tests/fuzz/api.dict).
#              Regressions: tests/fuzz/api-regressions/.
#
# Configures and builds a clang build of its own (build-fuzz/, -DVMM_FUZZ=ON: ASan + UBSan + coverage;
# only the fuzz target and the libraries it needs are built; one build serves every target), seeds a
# corpus, runs the fuzzer, and prints runs, exec/s, crashes and the corpus size. Inputs that once found
# a bug (the target's regressions directory) are run first, every time.
# Exits non-zero on a crash, leak or timeout, naming the reproducer; rerun one with
#   build-fuzz/tests/TARGET_fuzz REPRODUCER     (qcow2_fuzz, state_fuzz, kvm_stats_fuzz, kvm_cache_fuzz,
#                                                agent_identity_fuzz, guest_io_fuzz,
#                                                kernel_fuzz, manifest_fuzz, http_fuzz, http_client_fuzz,
#                                                exit_fuzz, api_fuzz)
# Environment: VMM_FUZZ_BUILD (build directory), VMM_FUZZ_WORK (corpus, seeds and artifacts; default
# BUILD/TARGET-fuzz), VMM_FUZZ_JOBS (parallel fuzzer processes, default 1).
# Exit status: 0 clean, 1 the fuzzer found something, 2 the build failed (or no such TARGET), 77 a tool
# is missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${1:-}
[[ $# -gt 0 ]] && shift

# ---- Targets -------------------------------------------------------------------------------------
# bin: the ninja target and binary (BUILD/tests/); build_log: in BUILD; seed_env: through it the
# fuzzer writes seeds of its own into a directory; seed_mark: in WORK/seeds once they are made (a new
# name remakes them everywhere); make_seeds: the function that makes them; dirs: under tests/fuzz/,
# committed seeds and regressions, used where they exist; limits: libFuzzer's for one input; tools:
# needed besides clang, clang++, cmake and ninja.
case $target in
  qcow2)
    bin=qcow2_fuzz build_log=fuzz-build.log seed_env=VMM_QCOW2_FUZZ_MAKE_SEEDS seed_mark=.done
    make_seeds=qcow2_seeds dirs=(regressions) tools=(qemu-img python3)
    limits=(-max_len=262144 -timeout=20 -rss_limit_mb=3072) ;;
  state)  # .done-2: the seed set changed (device sections)
    bin=state_fuzz build_log=fuzz-build-state.log seed_env=VMM_STATE_FUZZ_MAKE_SEEDS seed_mark=.done-2
    make_seeds=own_seeds dirs=(state-seeds state-regressions) tools=()
    limits=(-max_len=65536 -timeout=10 -rss_limit_mb=2048) ;;
  kvm-stats)  # A real vCPU's stats file is about 4 KiB, a VM's a little more.
    bin=kvm_stats_fuzz build_log=fuzz-build-kvm-stats.log seed_env=VMM_KVM_STATS_FUZZ_MAKE_SEEDS
    seed_mark=.done make_seeds=own_seeds dirs=(kvm-stats-seeds kvm-stats-regressions) tools=()
    limits=(-max_len=16384 -timeout=10 -rss_limit_mb=2048) ;;
  kvm-cache)  # 60 entries (a real host's count) make ~2.5 KiB; the decoder refuses over ~165 KiB.
    bin=kvm_cache_fuzz build_log=fuzz-build-kvm-cache.log seed_env=VMM_KVM_CACHE_FUZZ_MAKE_SEEDS
    seed_mark=.done make_seeds=own_seeds dirs=(kvm-cache-regressions) tools=()
    limits=(-max_len=8192 -timeout=10 -rss_limit_mb=2048) ;;
  agent-identity)  # The file is 1024 bytes; a little more exercises the size check.
    bin=agent_identity_fuzz build_log=fuzz-build-agent-identity.log seed_env=VMM_AGENT_IDENTITY_FUZZ_MAKE_SEEDS
    seed_mark=.done make_seeds=own_seeds dirs=(agent-identity-seeds agent-identity-regressions) tools=()
    limits=(-max_len=1100 -timeout=10 -rss_limit_mb=2048) ;;
  guest-io)  # Programs of a few hundred operations; each input builds a machine (an io_uring, files).
    bin=guest_io_fuzz build_log=fuzz-build-guest-io.log seed_env=VMM_GUEST_IO_FUZZ_MAKE_SEEDS
    seed_mark=.done-2 make_seeds=own_seeds dirs=(guest-io-regressions) tools=()
    limits=(-max_len=8192 -timeout=10 -rss_limit_mb=2048) ;;
  kernel)  # Kernels here are synthetic and small; a real bzImage's header and first pages fit.
    bin=kernel_fuzz build_log=fuzz-build-kernel.log seed_env=VMM_KERNEL_FUZZ_MAKE_SEEDS
    seed_mark=.done make_seeds=own_seeds dirs=(kernel-regressions) tools=()
    limits=(-max_len=65536 -timeout=10 -rss_limit_mb=2048) ;;
  manifest)  # A manifest is ~1 KiB; read_manifest refuses files over its limit before parsing.
    bin=manifest_fuzz build_log=fuzz-build-manifest.log seed_env=VMM_MANIFEST_FUZZ_MAKE_SEEDS
    seed_mark=.done make_seeds=own_seeds dirs=(manifest-regressions) tools=()
    limits=(-max_len=16384 -timeout=10 -rss_limit_mb=2048) ;;
  http)  # .done-2: the seed set changed; a request may bring kMaxBody (64 KiB) + 16 KiB; a little more reaches the drop.
    bin=http_fuzz build_log=fuzz-build-http.log seed_env=VMM_HTTP_FUZZ_MAKE_SEEDS
    seed_mark=.done-2 make_seeds=own_seeds dirs=(http-regressions) tools=()
    limits=(-max_len=90000 -timeout=30 -rss_limit_mb=2048 -dict="$root/tests/fuzz/http.dict") ;;
  exit)  # One kvm_run mapping (the run page and the data behind it) of at most 16 KiB, and its size.
    bin=exit_fuzz build_log=fuzz-build-exit.log seed_env=VMM_EXIT_FUZZ_MAKE_SEEDS
    seed_mark=.done make_seeds=own_seeds dirs=(exit-regressions) tools=()
    limits=(-max_len=16400 -timeout=10 -rss_limit_mb=2048) ;;
  http-client)  # An answer's head may be 16 KiB and its body 1 MiB; a little more reaches the limits.
    bin=http_client_fuzz build_log=fuzz-build-http-client.log seed_env=VMM_HTTP_CLIENT_FUZZ_MAKE_SEEDS
    seed_mark=.done make_seeds=own_seeds dirs=(http-client-regressions) tools=()
    limits=(-max_len=$(( (1 << 20) + 20000 )) -timeout=10 -rss_limit_mb=2048 -dict="$root/tests/fuzz/http.dict") ;;
  api)  # A body may be kMaxBody (64 KiB); with the method and path bytes, a little more.
    bin=api_fuzz build_log=fuzz-build-api.log seed_env=VMM_API_FUZZ_MAKE_SEEDS
    seed_mark=.done make_seeds=own_seeds dirs=(api-regressions) tools=()
    limits=(-max_len=65538 -timeout=10 -rss_limit_mb=2048 -dict="$root/tests/fuzz/api.dict") ;;
  *)
    echo "usage: scripts/fuzz.sh qcow2|state|kvm-stats|kvm-cache|agent-identity|guest-io|kernel|manifest|http|http-client|exit|api [SECONDS] [extra libFuzzer options...]" >&2
    exit 2 ;;
esac
name=fuzz-$target  # in messages
seconds=${1:-60}
[[ $# -gt 0 ]] && shift
build=${VMM_FUZZ_BUILD:-$root/build-fuzz}
work=${VMM_FUZZ_WORK:-$build/$target-fuzz}
jobs=${VMM_FUZZ_JOBS:-1}

# ---- Seed makers (make_seeds) --------------------------------------------------------------------
# Written by the fuzzer itself: state files from its own encoder; stats files hand-built and, with
# /dev/kvm, live ones.
own_seeds() {
  env "$seed_env=$seeds" "$fuzzer" || { echo "$name: making seeds failed" >&2; exit 2; }
}

# Small valid qcow2 images, each wrapped as the fuzzer reads its input.
qcow2_seeds() {
  raw=$(mktemp -d)
  trap 'rm -rf "$raw"' EXIT
  mkdir -p "$seeds" "$raw/img"
  img=$raw/img
  q() { qemu-img "$@" >/dev/null; }
  # A raw file with some data and some holes, to convert from.
  python3 - "$raw/data.raw" <<'EOF'
import sys
b = bytearray(1 << 20)
for off in (0, 4096 * 3, 65536 + 512, 300000, (1 << 20) - 8192):
    for i in range(6000):
        if off + i < len(b):
            b[off + i] = (off + i * 7) & 0xff
open(sys.argv[1], "wb").write(b)
EOF
  for cs in 512 4096 65536; do
    q create -f qcow2 -o cluster_size=$cs "$img/empty-c$cs.qcow2" 1M
  done
  q create -f qcow2 -o cluster_size=4096 "$img/empty-c4096-16M.qcow2" 16M
  q create -f qcow2 -o cluster_size=2048,compat=0.10 "$img/v2-c2048.qcow2" 1M
  q create -f qcow2 -o cluster_size=4096,refcount_bits=1 "$img/refcount1.qcow2" 1M
  q create -f qcow2 -o cluster_size=4096,refcount_bits=64 "$img/refcount64.qcow2" 1M
  q create -f qcow2 -o cluster_size=4096,lazy_refcounts=on "$img/lazy.qcow2" 1M
  q create -f qcow2 -o cluster_size=4096 -b fuzz-backing.raw -F raw -u "$img/backing-raw.qcow2" 1M
  q create -f qcow2 -o cluster_size=4096 -b fuzz-backing.qcow2 -F qcow2 -u "$img/backing-qcow2.qcow2" 1M
  q create -f qcow2 -o cluster_size=4096 -b image.qcow2 -F qcow2 -u "$img/backing-self.qcow2" 1M
  q create -f qcow2 -o cluster_size=4096 -b /nonexistent/base.img -F raw -u "$img/backing-missing.qcow2" 1M
  q create -f qcow2 -o cluster_size=16384,extended_l2=on "$img/extended-l2.qcow2" 1M
  q convert -O qcow2 -o cluster_size=4096 "$raw/data.raw" "$img/data-c4096.qcow2"
  q convert -O qcow2 -o cluster_size=512 "$raw/data.raw" "$img/data-c512.qcow2"
  q convert -O qcow2 -o cluster_size=4096,compat=0.10 "$raw/data.raw" "$img/data-v2.qcow2"
  q convert -c -O qcow2 -o cluster_size=4096 "$raw/data.raw" "$img/compressed-c4096.qcow2"
  q convert -c -O qcow2 -o cluster_size=65536 "$raw/data.raw" "$img/compressed-c65536.qcow2"
  # Zero clusters (v3 zero flag) and a discarded cluster, written with qemu-io.
  if command -v qemu-io >/dev/null; then
    cp "$img/data-c4096.qcow2" "$img/zeroes-c4096.qcow2"
    qemu-io -f qcow2 -c "write -z 0 8k" -c "write -z -u 16k 4k" -c "discard 64k 4k" "$img/zeroes-c4096.qcow2" >/dev/null
    cp "$img/backing-raw.qcow2" "$img/backing-raw-data.qcow2"
    qemu-io -f qcow2 -u -c "write -P 0x5a 4k 8k" -c "write -z 32k 4k" "$img/backing-raw-data.qcow2" >/dev/null 2>&1 || true
  fi
  # Images our engine made.
  env "$seed_env=$img" "$fuzzer" >/dev/null 2>&1 || echo "$name: engine-made seeds failed" >&2
  # Wrap: u32 (image length | config << 24), the image, then a few 12-byte operations.
  python3 - "$img" "$seeds" <<'EOF'
import os, struct, sys
src, dst = sys.argv[1], sys.argv[2]
def op(kind, flags, length, offset):
    return struct.pack("<BBHQ", kind, flags, length, offset)
READ, WRITE, DISCARD, ZEROES, FLUSH, REOPEN = range(6)
programs = {
    "none": b"",
    "rw": op(WRITE, 0x40, 4096, 0) + op(READ, 0x40, 8192, 0) + op(WRITE, 0x04, 1000, 70000) + op(FLUSH, 0, 0, 0)
          + op(READ, 0x08, 65535, 0),
    "mix": op(WRITE, 0x10, 16, 512) + op(ZEROES, 0x41, 4096, 8192) + op(DISCARD, 0x40, 4096, 12288)
           + op(WRITE, 0x20, 3, 4096) + op(REOPEN, 0, 0, 0) + op(READ, 0x20, 5, 0) + op(FLUSH, 0, 0, 0),
    "edge": op(READ, 0x02, 512, (1 << 64) - 256) + op(WRITE, 0x02, 512, 1 << 20) + op(WRITE, 0, 511, (1 << 20) - 1)
            + op(ZEROES, 0x02, 0xffff, 0) + op(REOPEN, 1, 0, 0) + op(WRITE, 0, 512, 0),
}
n = 0
for name in sorted(os.listdir(src)):
    image = open(os.path.join(src, name), "rb").read()
    if len(image) > 200_000:
        continue
    for pname, prog in programs.items():
        for config in (0, 2):
            if config and pname != "mix":
                continue
            data = struct.pack("<I", len(image) | config << 24) + image + prog
            open(os.path.join(dst, f"{name}-{pname}-{config}"), "wb").write(data)
            n += 1
print(f"{n} seeds from {len(os.listdir(src))} images")
EOF
}

# ---- Build ---------------------------------------------------------------------------------------
for tool in clang clang++ cmake ninja "${tools[@]}"; do
  # 77: skipped (ctest's fuzz.*_smoke counts it so)
  command -v "$tool" >/dev/null || { echo "SKIP: $name: $tool is not installed (scripts/setup.sh)" >&2; exit 77; }
done

echo "=== build ($build) ==="
mkdir -p "$build"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DVMM_FUZZ=ON >"$build/fuzz-configure.log" 2>&1 ||
  { cat "$build/fuzz-configure.log" >&2; exit 2; }
ninja -C "$build" "$bin" >"$build/$build_log" 2>&1 ||
  { grep -E "error|FAILED" "$build/$build_log" | head -40 >&2 || tail -20 "$build/$build_log" >&2; exit 2; }
fuzzer=$build/tests/$bin

# ---- Seeds ---------------------------------------------------------------------------------------
seeds=$work/seeds
corpus=$work/corpus
artifacts=$work/artifacts
mkdir -p "$corpus" "$artifacts"
if [[ ! -f $seeds/$seed_mark ]]; then
  echo "=== seeds ($seeds) ==="
  rm -rf "$seeds"
  "$make_seeds"
  touch "$seeds/$seed_mark"
fi
inputs=("$corpus" "$seeds")
for dir in "${dirs[@]}"; do
  if [[ -d $root/tests/fuzz/$dir ]]; then inputs+=("$root/tests/fuzz/$dir"); fi
done

# ---- Fuzz ----------------------------------------------------------------------------------------
echo "=== fuzz for ${seconds}s ==="
start=$(date +%s)
log=$work/fuzz.log
opts=(-max_total_time="$seconds" "${limits[@]}" -malloc_limit_mb=1024
      -print_final_stats=1 -artifact_prefix="$artifacts/")
if [[ $jobs -gt 1 ]]; then opts+=(-jobs="$jobs" -workers="$jobs"); fi
set +e
(cd "$work" && ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
  "$fuzzer" "${opts[@]}" "$@" "${inputs[@]}") >"$log" 2>&1
status=$?
set -e
[[ $jobs -gt 1 ]] && cat "$work"/fuzz-*.log >>"$log" 2>/dev/null && rm -f "$work"/fuzz-*.log

runs=$(grep -ho 'stat::number_of_executed_units: *[0-9]*' "$log" | awk '{s += $2} END {print s + 0}')
eps=$(grep -ho 'stat::average_exec_per_sec: *[0-9]*' "$log" | awk '{s += $2} END {print s + 0}')
peak=$(grep -ho 'stat::peak_rss_mb: *[0-9]*' "$log" | awk '{if ($2 > m) m = $2} END {print m + 0}')
new_artifacts=$(find "$artifacts" -type f -newermt "@$start" | sort)
ncrash=$(printf '%s' "$new_artifacts" | grep -c . || true)
echo "runs: $runs  exec/s: $eps  peak RSS: ${peak} MB  status: $status"
echo "corpus: $(find "$corpus" -type f | wc -l) inputs, $(du -sh "$corpus" | cut -f1) ($corpus)"
echo "crashes/leaks/timeouts: $ncrash"
if [[ $status -ne 0 || $ncrash -gt 0 ]]; then
  # (Nothing of that in a log of a fuzzer killed from outside, the OOM killer's say: the rest is said anyway.)
  grep -E "ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error|$bin: |SUMMARY|Test unit written" "$log" | head -20 || true
  for a in $new_artifacts; do echo "reproducer: $a   (rerun: $fuzzer $a)"; done
  echo "log: $log"
  exit 1
fi
