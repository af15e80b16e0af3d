#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what is needed, fetches Debian's cloud
# kernel (cached), builds a release and an ASan+UBSan build (the second while the first one's tests
# run), and runs every test through ctest: all of them on the release build, and all but the nested
# lane (label linux, minutes of QEMU TCG per run) on the ASan build. Exits non-zero if anything
# fails.
# Extra arguments go to ctest (e.g. scripts/test.sh -L unit, or -R guest.smp).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
SECONDS=0
"$root/scripts/setup.sh"
VMM_LINUX_KERNEL=$("$root/guest-images/linux/fetch-kernel.sh")
export VMM_LINUX_KERNEL

# The VMs that tests start register in a state directory (run/NAME): a private one, not the host's.
VMM_STATE_DIR=$(mktemp -d /tmp/vmm-test-state.XXXXXX)
export VMM_STATE_DIR
asan_out=$(mktemp /tmp/vmm-asan-build.XXXXXX)
asan_build=""
# (the background build is a process group of its own: stopped with the script)
cleanup() {
  if [[ -n $asan_build ]]; then kill -- -"$asan_build" 2>/dev/null || true; fi
  rm -rf "$VMM_STATE_DIR" "$asan_out" "$asan_out.dir"
}
trap cleanup EXIT

# Each phase is stamped with the seconds since the start: where CI's time goes (its limit is 45 min).
phase() { echo "=== [${SECONDS} s] $* ==="; }
# ASan needs room for its shadow next to large guest mappings; leaks are reported at exit.
run_ctest() {
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    ctest --test-dir "$1" --output-on-failure -j2 "${@:2}"
}
status=0
phase "build (release)"
release=$("$root/scripts/build.sh" release)

# The ASan build is made while the release build's tests run, at idle priority (SCHED_IDLE: it gets
# only the CPU time the tests leave). The nested lane runs one test at a time and its last ones run
# alone for minutes: a clean clone's CI spent ~300 s on this build after them, with one core idle
# through those minutes.
phase "build (asan, in the background at idle priority) and ctest (release build)"
setsid chrt --idle 0 "$root/scripts/build.sh" asan >"$asan_out.dir" 2>"$asan_out" &
asan_build=$!
run_ctest "$release" "$@" || status=1

phase "build (asan): waiting for it"
if wait "$asan_build"; then
  asan_build=""
  asan=$(cat "$asan_out.dir")
  phase "ctest (asan build, -LE linux)"
  run_ctest "$asan" -LE linux "$@" || status=1
else
  asan_build=""
  echo "test.sh: the ASan build failed:" >&2
  grep -E -A5 "error|FAILED" "$asan_out" | head -60 >&2 || tail -40 "$asan_out" >&2
  status=1
fi
phase "done (status $status)"
exit $status
