#!/usr/bin/env bash
# Configures and builds vmm. usage: scripts/build.sh [release|asan] — prints the build directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kind=${1:-release}
case "$kind" in
  release) dir="$root/build"; flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DVMM_SANITIZE=OFF) ;;
  asan) dir="$root/build-asan"; flags=(-DCMAKE_BUILD_TYPE=Debug -DVMM_SANITIZE=ON) ;;
  *) echo "usage: $0 [release|asan]" >&2; exit 2 ;;
esac
# The Linux bzImage for the tests (VMM_TEST_BZIMAGE): given when VMM_LINUX_KERNEL is set, else the
# build directory keeps the one it has. (Passed empty, a build from scripts/demo.sh, which fetches
# the kernel after it builds, dropped it, and the unit test that needs it then failed on `ctest`.)
[[ -n "${VMM_LINUX_KERNEL:-}" ]] && flags+=(-DVMM_LINUX_KERNEL="$VMM_LINUX_KERNEL")
cmake -S "$root" -B "$dir" -G Ninja "${flags[@]}" >&2
ninja -C "$dir" >&2
echo "$dir"
