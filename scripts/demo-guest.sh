#!/bin/sh
# The demo's guest runs (POSIX sh, so that it also runs inside the nested lane's busybox L1):
# the bundled test guest with one vCPU, with four, and echoing lines from the host; then a
# template of it and a fleet of clones.
# usage: demo-guest.sh VMM TESTGUEST
vmm=$1 guest=$2
run() {
  echo "\$ vmm $*"
  start=$(date +%s%N)
  "$vmm" "$@"
  rc=$?
  end=$(date +%s%N)
  case "$start$end" in
    *N*) echo "(exit status $rc)" ;;  # a date without nanoseconds
    *) echo "(exit status $rc, $(( (end - start) / 1000 )) µs)" ;;
  esac
  echo
  return 0
}
run run --kernel "$guest" --cmdline hello
run run --kernel "$guest" --cmdline smp --cpus 4
printf 'hello from the host\nquit\n' | run run --kernel "$guest" --cmdline echo

# Cloning: a template of the counter guest (booted once, saved at its ready line), then a fleet of
# clones started from it at once; each is told to add a different amount, and each answers with its
# own value (they share the template's memory copy-on-write, and diverge).
state=$(mktemp -d)
export VMM_STATE_DIR="$state"
run template create counter --kernel "$guest" --cmdline counter --ready-on "counter: ready" --console none
"$vmm" template ls
echo
echo "\$ vmm run --clone-of counter --name clone-N   (5 clones at once; each gets 'inc N*10', 'get', 'quit')"
for n in 1 2 3 4 5; do
  (
    start=$(date +%s%N)
    out=$(printf 'inc %s\nget\nquit\n' $((n * 10)) | "$vmm" run --clone-of counter --name "clone-$n" --console stdio 2>&1)
    end=$(date +%s%N)
    value=$(echo "$out" | grep -o 'value=[0-9]*' | tail -1)
    restored=$(echo "$out" | grep -o 'restored in [0-9.]* ms' | tail -1)
    case "$start$end" in
      *N*) echo "clone-$n: counter $value, $restored" ;;
      *) echo "clone-$n: counter $value, $restored, exec to exit $(( (end - start) / 1000000 )) ms" ;;
    esac
  ) &
done
wait
echo
"$vmm" template ls
rm -rf "$state"
