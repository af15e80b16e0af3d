# Sourced by scripts/bench/clone.sh and fleet.sh: their test-guest rows in the nested lane, for a host
# without a usable /dev/kvm (scripts/bench/rows-inner.sh runs them in L1, vmm and QEMU both under L1's
# KVM; absolute times are TCG's, the ratios carry over).
# nested_rows NAME TIMEOUT L1_MIB WORK [VAR=VALUE...] SCRIPT.py RUNS ARG...: prints the report of
# SCRIPT.py run in L1 with the VARs in its environment (rows-inner.sh). L1's console goes to
# WORK/NAME.log; on failure its last lines are shown and it is kept in $TMPDIR. Needs $root and the
# release build's binaries in WORK (vmm, vmm-http.so, testguest.elf; vm-growth and kvm-floor if there).
nested_rows() {
  local name=$1 timeout=$2 mib=$3 work=$4 status f script a
  shift 4
  for a in "$@"; do [[ $a == *=* ]] || { script=$a; break; }; done
  local fw=() extra=()
  # QEMU's firmware for -M microvm with a PVH kernel (its -L directory in L1).
  for f in /usr/share/qemu/bios-microvm.bin /usr/share/qemu/pvh.bin /usr/share/qemu/linuxboot_dma.bin; do
    fw+=(--file "$f:qemu/$(basename "$f")")
  done
  command -v strace >/dev/null && extra+=(--bin "$(command -v strace)")
  [[ -x $work/vm-growth ]] && extra+=(--bin "$work/vm-growth")
  [[ -x $work/kvm-floor ]] && extra+=(--bin "$work/kvm-floor")
  echo "$name: no usable /dev/kvm here: the test-guest rows run in the nested lane (L1: QEMU TCG, 2 vCPUs, ${mib} MiB)" >&2
  set +e
  VMM_NESTED_VMM_LIMIT=0 "$root/scripts/nested/run.sh" --cpus 2 --memory "$mib" --timeout "$timeout" --quiet \
    --log "$work/$name.log" --bin "$work/vmm" --bin "$(command -v qemu-system-x86_64)" "${extra[@]}" \
    --python "$root/scripts/bench/$script" --file "$root/scripts/bench/$script:bench/$script" \
    --file "$root/scripts/bench/benchlib.py:bench/benchlib.py" --file "$work/testguest.elf:testguest.elf" "${fw[@]}" \
    "$root/scripts/bench/rows-inner.sh" "$@"
  status=$?
  set -e
  tr -d '\r' <"$work/$name.log" | sed -n 's/^bench-row: //p'
  if ((status != 0)); then
    tr -d '\r' <"$work/$name.log" | grep -av '^bench-row: ' | tail -30 >&2
    f=$(mktemp "${TMPDIR:-/tmp}/$name-nested.XXXXXX.log")
    cp "$work/$name.log" "$f"
    echo "$name: the nested-lane rows failed (status $status; L1's console: $f)" >&2
    return 1
  fi
}
