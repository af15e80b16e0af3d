#!/bin/sh
# Runs inside the nested lane's L1 (busybox sh): the test guest's scenarios on real KVM (full CPUID,
# XSAVE, SVM), the same checks as the `guest` label runs on the direct lane, and vmm at a limit on
# threads (tests/guest/limits-scenario.sh).
fail=0
# check NAME STATUS PATTERN [vmm run args...]: the exit status and a console line matching PATTERN.
check() {
  name=$1 want=$2 pattern=$3
  shift 3
  vmm run --kernel /files/testguest.elf "$@" </tmp/stdin >/tmp/out 2>/tmp/err
  got=$?
  if [ "$got" = "$want" ] && grep -qE -- "$pattern" /tmp/out; then
    echo "testguest: ok   $name"
  else
    echo "testguest: FAIL $name: status $got (expected $want), pattern '$pattern'"
    sed 's/^/  out: /' /tmp/out; sed 's/^/  err: /' /tmp/err
    fail=1
  fi
}
: >/tmp/stdin
check hello 1 "^vmm-testguest: ready cpus=1 scenario=hello" --cmdline hello
for n in 1 2 4; do
  check "smp$n" 1 "^smp: $n/$n cpus alive" --cmdline smp --cpus "$n"
done
check smp2-baseline 1 "^smp: 2/2 cpus alive" --cmdline smp --cpus 2 --cpu-template baseline
check fault 8 "^fault: triple faulting now" --cmdline fault
check wait-erratum 1 "^wait-erratum: ok" --cmdline wait-erratum
check unknown 5 "^unknown scenario: nosuch" --cmdline nosuch
check memory-4g-hole 1 "scenario=hello" --memory 3200M
printf 'hello world\nquit\n' >/tmp/stdin
check echo 1 "^echo: hello world" --cmdline echo
grep -q "^echo: bye" /tmp/out || { echo "testguest: FAIL echo: no bye"; fail=1; }
# At a limit on threads and processes (a pids cgroup of L1's cgroup v2): a skip is a failure here.
sh /files/limits-scenario.sh /files/bin/vmm /files/testguest.elf || { echo "testguest: FAIL limits (status $?)"; fail=1; }
[ $fail = 0 ] && echo "testguest: PASS"
exit $fail
