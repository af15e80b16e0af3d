#!/bin/sh
# The demo's guest runs (POSIX sh, so that it also runs inside the nested lane's busybox L1):
# the bundled test guest with one vCPU, with four, and echoing lines from the host.
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
