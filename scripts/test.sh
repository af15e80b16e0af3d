#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: installs what is needed, fetches Debian's cloud
# kernel (cached), builds a release and an ASan+UBSan build, and runs every test through ctest in
# both. Exits non-zero if anything fails.
# Extra arguments go to ctest (e.g. scripts/test.sh -L unit, or -R guest.smp).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
VMM_LINUX_KERNEL=$("$root/guest-images/linux/fetch-kernel.sh")
export VMM_LINUX_KERNEL

status=0
for kind in release asan; do
  dir=$("$root/scripts/build.sh" "$kind")
  echo "=== ctest ($kind build) ==="
  # ASan needs room for its shadow next to large guest mappings; leaks are reported at exit.
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    ctest --test-dir "$dir" --output-on-failure -j2 "$@" || status=1
done
exit $status
