#!/usr/bin/env bash
# Crash test: `qcow2_tool crash-writer` writes, zeroes and discards at random on a fresh image made by
# our engine (over a raw backing file in half of the iterations), flushing every few operations,
# and is killed with SIGKILL a random 0-200 ms after its first operation (every third iteration:
# after its exec). Then `qemu-img check` must find no corruption
# (leaked clusters are allowed: exit 0 or 3), and `qcow2_tool verify` must find every byte written
# before the last completed flush, bytes touched later holding their old or a later value, and the
# rest the backing file's (or zero). Every tenth crashed image is then written on by our engine
# again and checked once more.
#
# crash-test.sh TOOL WORKDIR
# Environment: CRASH_ITERATIONS (default 100), CRASH_SEED (default: from the clock; printed),
# QCOW2_SCALE (percent applied to the default iterations, default 100).
TOOL=$1
WORK=$2
source "$(dirname "$0")/lib.sh"

ITERATIONS=${CRASH_ITERATIONS:-$(scaled 100)}
SEED=${CRASH_SEED:-$(( $(date +%s%N) % 1000000 ))}
RANDOM=$SEED
echo "crash test: $ITERATIONS iterations, CRASH_SEED=$SEED"

run "$TOOL" raw base.raw 16M 5
base_sum=$(md5sum <base.raw)

leaky=0
with_flush=0
for ((i = 0; i < ITERATIONS; i++)); do
  rm -f img.qcow2 log
  bits=$(( i % 3 == 0 ? 16 : 12 ))
  wseed=$(( SEED * 1000 + i ))
  delay=$(( RANDOM % 201 ))
  # Every fourth writer has a metadata cache of 8 clusters: evictions flush in mid-operation.
  cache=()
  (( i % 4 == 2 )) && cache=(--cache-bytes $(( 8 << bits )))
  backing=()
  if (( i % 2 )); then
    "$TOOL" create-overlay img.qcow2 base.raw raw "$bits" || fail "iteration $i: create-overlay failed"
    backing=(--backing base.raw)
  else
    "$TOOL" create img.qcow2 16M "$bits" || fail "iteration $i: create failed"
  fi
  : >log  # (the writer may be killed before it opens its log)
  "$TOOL" crash-writer img.qcow2 log "$wseed" "${cache[@]}" 2>writer.err &
  pid=$!
  # In two iterations of three the delay counts from the writer's first logged operation, not from
  # its exec: a slow start (the ASan build on a loaded host) ate short delays whole, and once only
  # 16 of 35 iterations reached a flush. The third counts from the exec, so that kills before any
  # flush (or any operation) stay covered. (Waits 5 s at most: a writer that never logs is caught
  # below, by its status.)
  for ((w = 0; i % 3 != 1 && w < 500; w++)); do
    [[ -s log ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.01
  done
  sleep "$(printf '0.%03d' "$delay")"
  kill -KILL "$pid" 2>/dev/null || true
  rc=0
  wait "$pid" 2>/dev/null || rc=$?
  repro="iteration $i: $(( i % 2 ? 1 : 0 )) backing, cluster bits $bits, killed after $delay ms; reproduce with:
  $TOOL $(if (( i % 2 )); then echo "create-overlay img.qcow2 base.raw raw $bits"; else echo "create img.qcow2 16M $bits"; fi)
  $TOOL crash-writer img.qcow2 log $wseed ${cache[*]} & sleep 0.$(printf '%03d' "$delay"); kill -KILL \$!
  qemu-img check img.qcow2; $TOOL verify img.qcow2 log ${backing[*]}
(base.raw: $TOOL raw base.raw 16M 5)"
  [[ $rc -eq 137 ]] || { cat writer.err; fail "$repro
the writer ended by itself with status $rc"; }
  crc=0
  out=$(qemu-img check img.qcow2 2>&1) || crc=$?
  case $crc in
    0) ;;
    3) leaky=$((leaky + 1)) ;;
    *) echo "$out"; fail "$repro
qemu-img check exited $crc (2: corruptions)" ;;
  esac
  vout=$("$TOOL" verify img.qcow2 log "${backing[@]}" 2>&1) || { echo "$vout"; fail "$repro
verify failed"; }
  grep -q ", 0 durable" <<<"$vout" || with_flush=$((with_flush + 1))
  echo "$i: bits $bits backing $(( i % 2 )) cache ${cache[1]:-default} delay ${delay}ms check $crc; $vout"
  if (( i % 10 == 9 )); then
    # Our engine goes on writing over the crashed image (its leaks are never reused while counted).
    qemu-img convert -O raw img.qcow2 ref.raw || fail "$repro
qemu-img convert of the crashed image failed"
    "$TOOL" random img.qcow2 ref.raw "$wseed" 300 || fail "$repro
then: $TOOL random img.qcow2 ref.raw $wseed 300 (ref.raw from qemu-img convert -O raw) failed"
    crc=0
    out=$(qemu-img check img.qcow2 2>&1) || crc=$?
    [[ $crc -eq 0 || $crc -eq 3 ]] || { echo "$out"; fail "$repro
after writing on the crashed image: qemu-img check exited $crc"; }
  fi
done
unchanged base.raw "$base_sum"
echo "crash test: $ITERATIONS iterations, $with_flush with at least one completed flush, $leaky with leaked clusters"
# Too few flushes before the kill would make the test weak (a slow engine, or a broken writer).
(( with_flush * 2 >= ITERATIONS )) || fail "only $with_flush of $ITERATIONS iterations got past a flush"
finish
