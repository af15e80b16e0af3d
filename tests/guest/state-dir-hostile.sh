#!/usr/bin/env bash
# The state directory's listings and removals through the real binary, without KVM, against what a
# user (or a crash) may leave there: a FIFO where a clone record or a manifest is (its open waited
# for a writer: `template ls`, `clone ls` hung for ever), a manifest nested 400,000 deep (printing
# its value recursed per level: a SIGSEGV), a template whose manifest no longer parses (no command
# could remove it: `template rm --force` does), a subdirectory a user cannot read (the walk's
# increment threw: std::terminate). usage: state-dir-hostile.sh VMM
set -u
vmm=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export VMM_STATE_DIR="$work/state"
mkdir -p "$VMM_STATE_DIR/templates/fifo" "$VMM_STATE_DIR/templates/deep" "$VMM_STATE_DIR/clones/c1"
mkfifo "$VMM_STATE_DIR/templates/fifo/manifest.json" "$VMM_STATE_DIR/clones/c1/clone.json"
{
  printf '{"format_version":"1.1","name":"deep","created":"x","vmm_version":"x","config":{"memory":'
  head -c 400000 /dev/zero | tr '\0' '['
  head -c 400000 /dev/zero | tr '\0' ']'
  printf '}}'
} >"$VMM_STATE_DIR/templates/deep/manifest.json"
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }
timeout 20 "$vmm" template ls >"$work/out" 2>"$work/err"; st=$?
check "template ls: status 0 (not hung, not crashed)" '[ $st = 0 ]'
check "template ls: a warning for each, one line" '[ "$(grep -c "^vmm: warning: " "$work/err")" = 2 ] && grep -q "not a regular file" "$work/err" &&
  grep -q "config.memory (array) is not an integer" "$work/err"'
timeout 20 "$vmm" template ls --json >"$work/out" 2>/dev/null; st=$?
check "template ls --json: status 0, well-formed" '[ $st = 0 ] && python3 -c "import json,sys; json.load(open(sys.argv[1]))" "$work/out"'
timeout 20 "$vmm" clone ls >"$work/out" 2>&1; st=$?
check "clone ls: status 0 with a FIFO for a record" '[ $st = 0 ]'
timeout 20 "$vmm" template inspect deep >"$work/out" 2>&1; st=$?
check "template inspect of the deep one: status 6, one line" '[ $st = 6 ] && [ "$(wc -l <"$work/out")" = 1 ]'
timeout 20 "$vmm" template rm deep >"$work/out" 2>&1; st=$?
check "template rm of one whose manifest does not parse: status 6, says --force" '[ $st = 6 ] && grep -q "remove it with --force" "$work/out"'
timeout 20 "$vmm" template rm deep --force >"$work/out" 2>&1; st=$?
check "template rm --force removes it" '[ $st = 0 ] && [ ! -e "$VMM_STATE_DIR/templates/deep" ]'
timeout 20 "$vmm" template rm fifo --force >"$work/out" 2>&1; st=$?
check "template rm --force of one whose manifest is a FIFO" '[ $st = 0 ] && [ ! -e "$VMM_STATE_DIR/templates/fifo" ]'
# A subdirectory the user cannot read (as root nothing is unreadable: run as nobody, if setpriv is there).
if command -v setpriv >/dev/null && [ "$(id -u)" = 0 ]; then
  mkdir -p "$VMM_STATE_DIR/clones/c2/disk/locked"
  echo '{}' >"$VMM_STATE_DIR/clones/c2/clone.json"
  rm -f "$VMM_STATE_DIR/clones/c1/clone.json"
  chmod -R a+rX "$work"
  chmod 000 "$VMM_STATE_DIR/clones/c2/disk/locked"
  timeout 20 setpriv --reuid=65534 --regid=65534 --clear-groups "$vmm" clone ls >"$work/out" 2>&1; st=$?
  check "clone ls as a user who cannot read a clone's subdirectory: no abort" '[ $st = 0 ]'
else
  echo "skip (not root, or no setpriv): the unreadable subdirectory"
fi
[ $fail = 0 ] || { cat "$work/out" "$work/err" 2>/dev/null; }
exit $fail
