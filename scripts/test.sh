#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what is needed, fetches Debian's cloud
# kernel (cached), builds a release and an ASan+UBSan build, and runs every test through ctest: all
# of them on the release build, and all but the nested lane (label linux, minutes of QEMU TCG per
# run) on the ASan build. Exits non-zero if anything fails.
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
trap 'rm -rf "$VMM_STATE_DIR"' EXIT

# Each phase is stamped with the seconds since the start: where CI's time goes (its limit is 45 min).
phase() { echo "=== [${SECONDS} s] $* ==="; }
# ASan needs room for its shadow next to large guest mappings; leaks are reported at exit.
run_ctest() {
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    ctest --test-dir "$1" --output-on-failure -j2 "${@:2}"
}
# The builds and their tests one after the other: this 2-core host has no CPU to spare. (Tried: the
# ASan build beside the release tests at idle priority (SCHED_IDLE) hid its ~300 s but slowed the
# nested lane's tests by 20-45 %, which run one at a time and are the critical path: 1322 s for the
# release tests instead of 959.)
status=0
for kind in release asan; do
  phase "build ($kind)"
  dir=$("$root/scripts/build.sh" "$kind")
  select=()
  [[ $kind == asan ]] && select=(-LE linux)
  phase "ctest ($kind build${select:+, ${select[*]}})"
  run_ctest "$dir" "${select[@]}" "$@" || status=1
done
phase "done (status $status)"
exit $status
