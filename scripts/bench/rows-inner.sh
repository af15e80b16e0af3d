#!/bin/sh
# Runs inside the nested lane's L1 for scripts/bench/clone.sh and fleet.sh on a host without a usable
# /dev/kvm: their test-guest rows (clone-rows.py, fleet-rows.py), vmm and QEMU both under L1's KVM.
# The script's report goes to the console with each line prefixed "bench-row: " (the caller keeps
# those lines); its progress messages go there as they are.
# usage: rows-inner.sh [VAR=VALUE...] SCRIPT.py RUNS ARG...   (runs /files/bench/SCRIPT.py RUNS WORK
#        ARG... with the VARs in its environment)
# In /files: bin/{vmm,vmm-http.so,python3,qemu-system-x86_64[,strace]}, testguest.elf, bench/*.py,
# qemu/ (QEMU's firmware, its -L directory), python/ (run.sh --python).
while :; do
  case $1 in *=*) export "$1"; shift ;; *) break ;; esac
done
script=$1 runs=$2
shift 2
work=/tmp/bench
rm -rf "$work"
mkdir -p "$work"
cp /files/bin/vmm /files/bin/vmm-http.so /files/testguest.elf "$work/"
[ -x /files/bin/vm-growth ] && cp /files/bin/vm-growth "$work/"
[ -x /files/bin/kvm-floor ] && cp /files/bin/kvm-floor "$work/"
export PYTHONHOME=/files/python PYTHONDONTWRITEBYTECODE=1 VMM_BENCH_LIB=/files/bench
export VMM_BENCH_QEMU_DATA=/files/qemu TMPDIR=$work
cpus=$(grep -c '^processor' /proc/cpuinfo)
export BENCH_LANE="nested lane (L1: QEMU TCG, $cpus vCPU, $(($(sed -n 's/MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo) >> 10)) MiB; both VMMs under L1's KVM)"
status_file=$work/status
# The report through sed (for the prefix), the status kept apart from the pipe.
{ python3 "/files/bench/$script" "$runs" "$work" "$@"; echo $? >"$status_file"; } | sed 's/^/bench-row: /'
status=$(cat "$status_file")
echo "rows-inner: $script ended with status $status"
exit "$status"
