#!/usr/bin/env bash
# Fuzzes the KVM binary stats parser (tests/fuzz/kvm_stats_fuzz.cpp, vmm/kvm_stats.cpp) with
# libFuzzer for SECONDS (default 60).
#
#   scripts/fuzz-kvm-stats.sh [SECONDS] [extra libFuzzer options...]
#
# Configures and builds a clang build of its own (build-fuzz/, -DVMM_FUZZ=ON: ASan + UBSan + coverage;
# only the fuzz target and the libraries it needs are built; the same build as scripts/fuzz-state.sh),
# seeds a corpus with hand-built stats files and, where /dev/kvm is usable, a fresh vCPU's and VM's
# (written by the fuzzer itself, VMM_KVM_STATS_FUZZ_MAKE_SEEDS) and the captured ones committed in
# tests/fuzz/kvm-stats-seeds/, runs the fuzzer, and prints runs, exec/s, crashes and the corpus size.
# Exits non-zero on a crash, leak or timeout, naming the reproducer; rerun one with
#   build-fuzz/tests/kvm_stats_fuzz REPRODUCER
# Environment: VMM_FUZZ_BUILD (build directory), VMM_FUZZ_WORK (corpus, seeds and artifacts; default
# BUILD/kvm-stats-fuzz), VMM_FUZZ_JOBS (parallel fuzzer processes, default 1).
# Inputs that once found a bug go in tests/fuzz/kvm-stats-regressions/ and are run first, every time.
# Exit status: 0 clean, 1 the fuzzer found something, 2 the build failed, 77 a tool is missing.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-60}
[[ $# -gt 0 ]] && shift
build=${VMM_FUZZ_BUILD:-$root/build-fuzz}
work=${VMM_FUZZ_WORK:-$build/kvm-stats-fuzz}
jobs=${VMM_FUZZ_JOBS:-1}

for tool in clang clang++ cmake ninja; do
  # 77: skipped (ctest's fuzz.kvm_stats_smoke counts it so)
  command -v "$tool" >/dev/null || { echo "SKIP: fuzz-kvm-stats: $tool is not installed (scripts/setup.sh)" >&2; exit 77; }
done

echo "=== build ($build) ==="
mkdir -p "$build"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DVMM_FUZZ=ON >"$build/fuzz-configure.log" 2>&1 ||
  { cat "$build/fuzz-configure.log" >&2; exit 2; }
ninja -C "$build" kvm_stats_fuzz >"$build/fuzz-build-kvm-stats.log" 2>&1 ||
  { grep -E "error|FAILED" "$build/fuzz-build-kvm-stats.log" | head -40 >&2; exit 2; }
fuzzer=$build/tests/kvm_stats_fuzz

# ---- Seeds: hand-built files and, with /dev/kvm, live ones, from the fuzzer itself ----------------
seeds=$work/seeds
corpus=$work/corpus
artifacts=$work/artifacts
mkdir -p "$corpus" "$artifacts"
if [[ ! -f $seeds/.done ]]; then
  echo "=== seeds ($seeds) ==="
  rm -rf "$seeds"
  VMM_KVM_STATS_FUZZ_MAKE_SEEDS="$seeds" "$fuzzer" || { echo "fuzz-kvm-stats: making seeds failed" >&2; exit 2; }
  touch "$seeds/.done"
fi
dirs=("$corpus" "$seeds")
[[ -d $root/tests/fuzz/kvm-stats-seeds ]] && dirs+=("$root/tests/fuzz/kvm-stats-seeds")
[[ -d $root/tests/fuzz/kvm-stats-regressions ]] && dirs+=("$root/tests/fuzz/kvm-stats-regressions")

# ---- Fuzz ----------------------------------------------------------------------------------------
echo "=== fuzz for ${seconds}s ==="
start=$(date +%s)
log=$work/fuzz.log
# A real vCPU's file is about 4 KiB, a VM's a little more.
opts=(-max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024
      -print_final_stats=1 -artifact_prefix="$artifacts/")
if [[ $jobs -gt 1 ]]; then opts+=(-jobs="$jobs" -workers="$jobs"); fi
set +e
(cd "$work" && ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:allocator_may_return_null=1} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
  "$fuzzer" "${opts[@]}" "$@" "${dirs[@]}") >"$log" 2>&1
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
  grep -E "ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error|kvm_stats_fuzz: |SUMMARY|Test unit written" "$log" | head -20
  for a in $new_artifacts; do echo "reproducer: $a   (rerun: $fuzzer $a)"; done
  echo "log: $log"
  exit 1
fi
