#!/usr/bin/env bash
# The main job, on a fresh Debian machine: installs what is needed, builds vmm and the test guest,
# and boots the bundled test guest (one vCPU, then four).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
dir=$("$root/scripts/build.sh" release)
guest="$dir/guest-images/testguest.elf"
vmm="$dir/vmm/vmm"

run() {
  echo "\$ vmm $*"
  local start end rc=0
  start=$(date +%s%N)
  "$vmm" "$@" || rc=$?
  end=$(date +%s%N)
  echo "(exit status $rc, $(( (end - start) / 1000 )) µs)"
  echo
}
run run --kernel "$guest" --cmdline hello
run run --kernel "$guest" --cmdline smp --cpus 4
printf 'hello from the host\nquit\n' | run run --kernel "$guest" --cmdline echo
