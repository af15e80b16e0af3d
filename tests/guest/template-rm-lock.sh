#!/usr/bin/env bash
# `vmm template rm` against a template a clone is being made from (the clone holds the template
# directory's lock, shared, until its record names the template; flock(1) holds it here), through
# the real binary and without KVM: refused with status 2 and one line; --force removes it under
# the holder; what an interrupted removal left (a tomb) goes with it; a manifest that cannot be
# looked at, and a template name that is a symbolic link. usage: template-rm-lock.sh VMM
set -u
vmm=$1
work=$(mktemp -d)
trap 'exec 9<&-; rm -rf "$work"' EXIT
export VMM_STATE_DIR="$work/state"
t="$VMM_STATE_DIR/templates/t"
mkdir -p "$t/disks" "$VMM_STATE_DIR/templates/.old.rm-1-2"
echo x >"$t/memory.bin"
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }
# Held by this shell on its descriptor 9 (no process of its own to outlive the test and keep
# ctest's output pipe open): another open of the directory cannot lock it exclusive.
exec 9<"$t"
flock -s 9
check "the lock is held" '! flock -x -n "$t" true'
"$vmm" template rm t >"$work/out" 2>&1; st=$?
check "refused while a clone is being made from it: status 2" '[ $st = 2 ]'
check "one line naming why" '[ "$(wc -l <"$work/out")" = 1 ] && grep -q "a clone is being made from it" "$work/out"'
check "the template untouched" '[ -f "$t/memory.bin" ]'
"$vmm" template rm t --force >"$work/out" 2>&1; st=$?
check "--force removes it under the holder: status 0" '[ $st = 0 ] && [ ! -e "$t" ]'
check "no tomb left, the old one swept" '[ -z "$(ls -A "$VMM_STATE_DIR/templates")" ]'
# A manifest that cannot be looked at (a symbolic link to itself: ELOOP) made template rm abort
# (an uncaught filesystem_error, status 134) with or without --force: refused, then removed.
mkdir -p "$t"
ln -s manifest.json "$t/manifest.json"
"$vmm" template rm t >"$work/out" 2>&1; st=$?
check "a looping manifest link: refused with status 6, one line" '[ $st = 6 ] && [ "$(wc -l <"$work/out")" = 1 ] && grep -q "remove it with --force" "$work/out"'
"$vmm" template rm t --force >"$work/out" 2>&1; st=$?
check "a looping manifest link: --force removes it" '[ $st = 0 ] && [ ! -e "$t" ]'
# A template name that is a symbolic link (clones follow it): not removed through, one line.
mkdir -p "$work/elsewhere"
echo x >"$work/elsewhere/memory.bin"
ln -s "$work/elsewhere" "$t"
"$vmm" template rm t --force >"$work/out" 2>&1; st=$?
check "a symbolic link among the templates: status 6, one line, nothing removed" \
  '[ $st = 6 ] && [ "$(wc -l <"$work/out")" = 1 ] && grep -q "is a symbolic link" "$work/out" && [ -f "$work/elsewhere/memory.bin" ] && [ -L "$t" ]'
[ $fail = 0 ] || cat "$work/out"
exit $fail
