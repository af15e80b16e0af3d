#!/bin/sh
# Templates and clones through the real binary, on whatever KVM is there (the direct lane, or L1 in
# the nested lane: POSIX sh, busybox tools). usage: clone-scenario.sh VMM TESTGUEST [--needs-kvm]
# Exits 77 (skipped) with --needs-kvm when /dev/kvm is missing.
vmm=$1 guest=$2
[ "${3:-}" = --needs-kvm ] && [ ! -c /dev/kvm ] && { echo "skipped: no /dev/kvm"; exit 77; }
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
export VMM_STATE_DIR="$work/state"
fail=0
ok() { echo "clone: ok   $1"; }
bad() { echo "clone: FAIL $1"; fail=1; }
# expect NAME STATUS PATTERN -- command...: status and a line of stdout+stderr matching PATTERN.
expect() {
  name=$1 want=$2 pattern=$3
  shift 4
  "$@" >"$work/out" 2>&1 </dev/null
  got=$?
  if [ "$got" = "$want" ] && { [ -z "$pattern" ] || grep -qE -- "$pattern" "$work/out"; }; then ok "$name"; else
    bad "$name: status $got (expected $want), pattern '$pattern'"; sed 's/^/  | /' "$work/out"; fi
}

# A template of the counter guest, with a raw disk it owns.
head -c 1048576 /dev/zero | tr '\0' 'T' >"$work/base.img"
expect template_create 0 "template .* written" -- "$vmm" template create counter --kernel "$guest" --cmdline counter \
  --ready-on "counter: ready" --console none --disk path="$work/base.img"
tdir="$VMM_STATE_DIR/templates/counter"
[ -f "$tdir/manifest.json" ] && [ -f "$tdir/state.bin" ] && [ -f "$tdir/memory.bin" ] && ok template_files || bad template_files
[ -w "$tdir/state.bin" ] && [ "$(id -u)" != 0 ] && bad "template files are writable"
before=$(cd "$tdir" && find . -type f | sort | xargs sha256sum)
# The memory file is sparse: far less allocated than the guest's 256 MiB.
alloc=$(du -k "$tdir/memory.bin" | cut -f1)
[ "$alloc" -lt 16384 ] && ok "memory file sparse (${alloc} KiB allocated)" || bad "memory file not sparse: ${alloc} KiB"

# Clones diverge from each other, and from the template: each starts at 0.
i=0
for n in 3 5 7 11; do
  i=$((i + 1))
  printf 'get\ninc %s\nget\nquit\n' "$n" >"$work/in$i"
  "$vmm" run --clone-of counter --name "c$i" --console stdio <"$work/in$i" >"$work/c$i.out" 2>"$work/c$i.err" &
done
wait
i=0
for n in 3 5 7 11; do
  i=$((i + 1))
  if grep -q "^counter: value=0$" "$work/c$i.out" && grep -q "^counter: value=$n$" "$work/c$i.out"; then
    ok "clone c$i counts on its own (0 then $n)"
  else
    bad "clone c$i"; sed 's/^/  | /' "$work/c$i.out" "$work/c$i.err"
  fi
  [ -f "$VMM_STATE_DIR/clones/c$i/disk/disk0.qcow2" ] || bad "clone c$i has no overlay"
done
# The template was saved with its ready line complete: a clone's first output is its first answer,
# not the rest of that line.
[ "$(head -c 15 "$work/c1.out")" = "counter: value=" ] && ok "a clone's output starts with its answer" ||
  { bad "a clone's output starts with something else:"; head -c 40 "$work/c1.out" | od -c | head -3; }

# KVM's supported CPUID is kept for the next VM (STATE/cache/kvm-cpuid): a cache that is garbage,
# or not this host's, is ignored and replaced, never an error.
cache="$VMM_STATE_DIR/cache/kvm-cpuid"
good=$(cksum <"$cache" 2>/dev/null)
[ -s "$cache" ] && ok "the supported CPUID is cached ($(wc -c <"$cache") bytes)" || bad "no CPUID cache at $cache"
for garbage in "not a cache" "$(head -c 3000 "$VMM_STATE_DIR/templates/counter/state.bin" | tr '\0' x)"; do
  printf '%s' "$garbage" >"$cache"
  printf 'get\nquit\n' | "$vmm" run --clone-of counter --console stdio >"$work/cached.out" 2>&1
  grep -q "^counter: value=0$" "$work/cached.out" && [ "$(cksum <"$cache")" = "$good" ] &&
    ok "a clone starts past a bad CPUID cache, which it rewrites" || { bad "bad CPUID cache"; sed 's/^/  | /' "$work/cached.out"; }
done
# A good one is used as it is: not rewritten (a rewrite renames a new file into place).
inode=$(stat -c %i "$cache")
printf 'get\nquit\n' | "$vmm" run --clone-of counter --console stdio >"$work/cached.out" 2>&1
grep -q "^counter: value=0$" "$work/cached.out" && [ -n "$inode" ] && [ "$(stat -c %i "$cache")" = "$inode" ] &&
  ok "a clone uses a good CPUID cache without asking KVM again" || { bad "good CPUID cache rewritten"; sed 's/^/  | /' "$work/cached.out"; }

# Identity: every clone gets its own id and generation through fw_cfg.
expect template_identity 0 "written" -- "$vmm" template create ident --kernel "$guest" --cmdline identity \
  --ready-on "identity: ready" --console none
for i in 1 2 3; do
  printf 'get\nquit\n' | "$vmm" run --clone-of ident --name "id$i" --console stdio --hostname "web-$i" >"$work/id$i.out" 2>&1
  grep -o "id=[0-9a-f]* generation=[0-9a-f]*" "$work/id$i.out" | tail -1 >>"$work/ids"
done
if [ "$(sort -u "$work/ids" | wc -l)" = 3 ] && [ "$(wc -l <"$work/ids")" = 3 ]; then ok "identities distinct"; else
  bad "identities"; cat "$work/ids" "$work"/id*.out | sed 's/^/  | /'; fi
# Saved at rest: the template's guest went idle after its ready line (it then printed its own
# identity line), and was saved there, so no clone prints the template's identity (name=ident)
# again.
if [ -s "$work/id1.out" ] && ! grep -q "name=ident " "$work"/id*.out; then
  ok "a clone resumes where its template's guest was idle: it repeats none of the template's output"; else
  bad "a clone repeated its template's output"; sed 's/^/  | /' "$work/id1.out"; fi

# A guest that never goes idle (the echo scenario polls its UART) is saved busy once the grace
# after its ready line is over, says so, and its clones run.
expect template_busy 0 "saved busy: a vCPU had not gone idle" -- "$vmm" template create busy --kernel "$guest" --cmdline echo \
  --ready-on "scenario=echo" --console none
printf 'hi\nquit\n' | "$vmm" run --clone-of busy --name busy1 --console stdio >"$work/busy.out" 2>&1
grep -q "^echo: hi$" "$work/busy.out" && grep -q "^echo: bye$" "$work/busy.out" && ok "a clone of a template saved busy runs" ||
  { bad "a clone of a template saved busy"; sed 's/^/  | /' "$work/busy.out"; }

# Interrupts live after a restore: the PIT keeps ticking and serial input keeps arriving.
expect template_ticks 0 "written" -- "$vmm" template create ticks --kernel "$guest" --cmdline ticks \
  --ready-on "ticks: ready" --console none
{ sleep 0.3; echo get; sleep 1; echo get; sleep 0.2; echo quit; } | "$vmm" run --clone-of ticks --name t1 --console stdio \
  >"$work/ticks.out" 2>&1
n1=$(grep -o "ticks: n=[0-9]*" "$work/ticks.out" | head -1 | cut -d= -f2)
n2=$(grep -o "ticks: n=[0-9]*" "$work/ticks.out" | sed -n 2p | cut -d= -f2)
if [ -n "$n1" ] && [ -n "$n2" ] && [ "$n2" -ge $((n1 + 20)) ]; then ok "timer interrupts after restore ($n1 then $n2)"; else
  bad "timer after restore"; sed 's/^/  | /' "$work/ticks.out"; fi

# Memory: a clone sees the template's dirtied pages, and its own writes stay its own.
expect template_dirty 0 "written" -- "$vmm" template create dirty --kernel "$guest" --cmdline "dirty 32" \
  --ready-on "dirty: ready" --console none
printf 'check\nquit\n' | "$vmm" run --clone-of dirty --name d1 --console stdio >"$work/d1.out" 2>&1
grep -q "^dirty: ok$" "$work/d1.out" && ok "clone reads the template's 32 dirtied MiB" || { bad "dirty clone"; sed 's/^/  | /' "$work/d1.out"; }
alloc=$(du -k "$VMM_STATE_DIR/templates/dirty/memory.bin" | cut -f1)
[ "$alloc" -ge 32768 ] && [ "$alloc" -lt 49152 ] && ok "memory file holds the dirtied pages (${alloc} KiB)" || bad "dirty memory file ${alloc} KiB"

# Disks: each clone writes its own overlay; neither the template nor a sibling sees it.
for fmt in raw qcow2; do
  img="$work/disk-$fmt"
  if [ $fmt = raw ]; then head -c 1048576 /dev/zero >"$img"; else "$vmm" disk create "$img" --size 1M >/dev/null || bad "disk create"; fi
  expect "template_disk_$fmt" 0 "written" -- "$vmm" template create "blk-$fmt" --kernel "$guest" --cmdline blk-serve \
    --ready-on "blk-serve: ready" --console none --disk path="$img"
  tsum=$(sha256sum "$VMM_STATE_DIR/templates/blk-$fmt/disks/"* | cut -d' ' -f1)
  for i in 1 2; do
    printf 'read 7\nwrite 7 %s\nread 7\nflush\nquit\n' $((i * 16)) |
      "$vmm" run --clone-of "blk-$fmt" --name "b$fmt$i" --console stdio >"$work/b$fmt$i.out" 2>&1
    if grep -q "sector 7 byte=0x0$" "$work/b$fmt$i.out" && grep -q "sector 7 byte=0x$(printf %x $((i * 16)))$" "$work/b$fmt$i.out"; then
      ok "$fmt clone b$i starts from the template's disk and writes its own"
    else bad "$fmt clone b$i disk"; sed 's/^/  | /' "$work/b$fmt$i.out"; fi
    if command -v qemu-img >/dev/null; then
      qemu-img check "$VMM_STATE_DIR/clones/b$fmt$i/disk/disk0.qcow2" >/dev/null 2>&1 && ok "qemu-img check b$fmt$i" || bad "qemu-img check b$fmt$i"
    fi
  done
  [ "$(sha256sum "$VMM_STATE_DIR/templates/blk-$fmt/disks/"* | cut -d' ' -f1)" = "$tsum" ] && ok "$fmt template disk unchanged" || bad "$fmt template disk changed"
done
# A clone's directory is its owner's alone: its overlays hold what its guest wrote (they were
# readable by every user of the host, 0644 in 0755 directories, until 2026-12-07).
[ "$(stat -c %a "$VMM_STATE_DIR/clones/bqcow21")" = 700 ] && ok "a clone's directory is mode 0700" ||
  bad "clone directory mode $(stat -c %a "$VMM_STATE_DIR/clones/bqcow21")"
# Many clones at once, each writing its own memory and disk; then the template's files are hashed.
count=${VMM_CLONE_COUNT:-50}
tbefore=$(cd "$VMM_STATE_DIR/templates/blk-raw" && find . -type f | sort | xargs sha256sum)
i=0
while [ $i -lt "$count" ]; do
  i=$((i + 1))
  printf 'write 11 %s\nread 11\nquit\n' $((i % 250 + 1)) |
    "$vmm" run --clone-of blk-raw --name "many$i" --console stdio >"$work/many$i.out" 2>&1 &
done
wait
i=0
good=0
while [ $i -lt "$count" ]; do
  i=$((i + 1))
  grep -q "sector 11 byte=0x$(printf %x $((i % 250 + 1)))$" "$work/many$i.out" && good=$((good + 1))
done
[ $good = "$count" ] && ok "$count concurrent clones each wrote and read their own disk" || {
  bad "$good of $count concurrent clones"; for f in "$work"/many*.out; do grep -q "byte=" "$f" || sed 's/^/  | /' "$f"; done; }
tafter=$(cd "$VMM_STATE_DIR/templates/blk-raw" && find . -type f | sort | xargs sha256sum)
[ "$tbefore" = "$tafter" ] && ok "template files unchanged after $count writing clones" || bad "blk-raw template changed"

# A later clone still sees the template's zeroes, not a sibling's writes.
printf 'read 7\nquit\n' | "$vmm" run --clone-of blk-raw --name braw3 --console stdio >"$work/braw3.out" 2>&1
grep -q "sector 7 byte=0x0$" "$work/braw3.out" && ok "sibling writes invisible" || { bad "sibling isolation"; sed 's/^/  | /' "$work/braw3.out"; }

# A full clone owns copies of memory and disks and runs on after its template is removed (a full
# clone does not count as a dependant); a linked clone blocks the removal.
expect rm_blocked 2 "linked clone" -- "$vmm" template rm blk-raw
head -c 1048576 /dev/zero >"$work/solo.img"
expect template_solo 0 "written" -- "$vmm" template create solo --kernel "$guest" --cmdline blk-serve \
  --ready-on "blk-serve: ready" --console none --disk path="$work/solo.img"
mkfifo "$work/full.in"
"$vmm" run --clone-of solo --name full1 --full --console stdio <"$work/full.in" >"$work/full.out" 2>&1 &
fullpid=$!
exec 3>"$work/full.in"
echo "write 9 66" >&3
i=0
while [ $i -lt 100 ] && ! grep -q "wrote 9" "$work/full.out"; do sleep 0.1; i=$((i + 1)); done
expect rm_solo 0 "" -- "$vmm" template rm solo
[ ! -e "$VMM_STATE_DIR/templates/solo" ] && ok "template removed under a running full clone" || bad "solo still there"
printf 'read 9\nread 7\nquit\n' >&3
exec 3>&-
wait $fullpid
st=$?
if [ $st = 1 ] && grep -q "sector 9 byte=0x42$" "$work/full.out" && grep -q "sector 7 byte=0x0$" "$work/full.out"; then
  ok "full clone runs on after its template is gone"
else bad "full clone (status $st)"; sed 's/^/  | /' "$work/full.out"; fi

grep -q "copying" "$work/full.out" && bad "a progress bar without a terminal" || ok "no progress bar without a terminal"

# A raw disk whose content is a qcow2 image (what a guest may write into its raw disk) with a
# backing file, a host "secret" of byte 0x5a: the template records raw, and its clones, full and
# linked, read the file's own bytes (zeroes at sector 100), never the secret through the header.
head -c 1048576 /dev/zero | tr '\0' Z >"$work/secret"
"$vmm" disk create "$work/evil.qcow2" --size 1M --backing "$work/secret" --backing-format raw >/dev/null
expect template_evil 0 "written" -- "$vmm" template create evil --kernel "$guest" --cmdline blk-serve \
  --ready-on "blk-serve: ready" --console none --disk "path=$work/evil.qcow2,format=raw"
for kind in full linked; do
  printf 'read 100\nquit\n' | "$vmm" run --clone-of evil --name "evil-$kind" $([ $kind = full ] && echo --full) --console stdio \
    >"$work/evil-$kind.out" 2>&1
  grep -q "sector 100 byte=0x0$" "$work/evil-$kind.out" && ok "$kind clone of a raw disk holding a qcow2 header reads it as raw" ||
    { bad "$kind clone of a raw disk holding a qcow2 header"; sed 's/^/  | /' "$work/evil-$kind.out"; }
done
# A template given by a symbolic link: the clone records the template itself, so a link pointed
# elsewhere since does not take it out of the template's dependants (it did: the record named the
# link, and `template rm` of the template found no clone).
expect template_lnk 0 "written" -- "$vmm" template create lnk --kernel "$guest" --cmdline counter --ready-on "counter: ready" --console none
ln -s "$VMM_STATE_DIR/templates/lnk" "$work/tlink"
printf 'quit\n' | "$vmm" run --clone-of "$work/tlink" --name vialink --console stdio >"$work/vialink.out" 2>&1
ln -sfn "$VMM_STATE_DIR/templates/evil" "$work/tlink"
grep -q "\"$(realpath "$VMM_STATE_DIR/templates/lnk")\"" "$VMM_STATE_DIR/clones/vialink/clone.json" && ok "a clone through a link records the template's own path" ||
  { bad "clone through a link: record"; sed 's/^/  | /' "$VMM_STATE_DIR/clones/vialink/clone.json" "$work/vialink.out"; }
expect rm_lnk_blocked 2 "vialink" -- "$vmm" template rm lnk
# A relative --state-dir: a linked clone of a template with a disk opens its template's disk (its
# overlay named the disk by a relative path, read relative to the overlay's own directory).
head -c 1048576 /dev/zero | tr '\0' R >"$work/rel.img"
expect template_relative_state 0 "written" -- sh -c "cd '$work' && '$vmm' template create rel --state-dir relstate --kernel '$guest' \
  --cmdline blk-serve --ready-on 'blk-serve: ready' --console none --disk path=rel.img"
printf 'read 7\nquit\n' | (cd "$work" && "$vmm" run --clone-of rel --state-dir relstate --name r1 --console stdio) >"$work/rel.out" 2>&1
grep -q "sector 7 byte=0x52$" "$work/rel.out" && ok "a linked clone under a relative --state-dir reads its template's disk" ||
  { bad "relative state directory"; sed 's/^/  | /' "$work/rel.out"; }
# A guest cannot put the qcow2 magic at the start of a raw disk whose format was guessed (its
# write fails, the file keeps its bytes); given as raw, it can (and the disk stays raw to vmm).
head -c 1048576 /dev/zero >"$work/guessed.img"
cp "$work/guessed.img" "$work/given.img"
printf 'magic 0\nmagic 1\nquit\n' | "$vmm" run --kernel "$guest" --memory 64M --cmdline blk-serve --console stdio \
  --disk "path=$work/guessed.img" >"$work/guessed.out" 2>&1
printf 'magic 0\nquit\n' | "$vmm" run --kernel "$guest" --memory 64M --cmdline blk-serve --console stdio \
  --disk "path=$work/given.img,format=raw" >"$work/given.out" 2>&1
if grep -q "blk-serve: write failed" "$work/guessed.out" && grep -q "blk-serve: wrote 1$" "$work/guessed.out" &&
  grep -q "refused the guest's write that would make it look like a qcow2 image" "$work/guessed.out" &&
  [ "$(head -c 4 "$work/guessed.img" | od -An -tx1 | tr -d ' ')" = 00000000 ] &&
  grep -q "blk-serve: wrote 0$" "$work/given.out" && [ "$(head -c 4 "$work/given.img" | od -An -tx1 | tr -d ' ')" = 514649fb ]; then
  ok "a guessed raw disk refuses the qcow2 magic at its start; one given as raw takes it"
else bad "qcow2 magic in a raw disk"; sed 's/^/  | /' "$work/guessed.out" "$work/given.out"; fi
# The same guard on a full clone's copy of a template disk whose format was guessed (manifest:
# "probed"), and none on one given as raw (evil's).
grep -q '"probed": true' "$VMM_STATE_DIR/templates/blk-raw/manifest.json" && ! grep -q '"probed"' "$VMM_STATE_DIR/templates/evil/manifest.json" &&
  ok "the manifest says which raw disk was probed" || bad "manifest probed flags"
printf 'magic 0\nquit\n' | "$vmm" run --clone-of blk-raw --name bprobed --full --console stdio >"$work/bprobed.out" 2>&1
if grep -q "blk-serve: write failed" "$work/bprobed.out" && grep -q "refused the guest's write that would make it look like a qcow2 image" "$work/bprobed.out"; then
  ok "a full clone's copy of a probed raw disk refuses the qcow2 magic at its start"
else bad "full clone of a probed raw disk took the qcow2 magic"; sed 's/^/  | /' "$work/bprobed.out"; fi

# A full clone of a template with 80 MiB of memory data, on a terminal (script(1)'s pty): a progress
# bar that ends at 100 %. (busybox has no script(1): the nested lane's L1 skips this part.)
if command -v script >/dev/null 2>&1; then
  expect template_dirty80 0 "written" -- "$vmm" template create dirty80 --kernel "$guest" --cmdline "dirty 80" \
    --ready-on "dirty: ready" --console none
  echo quit | script -qec "'$vmm' run --clone-of dirty80 --name full2 --full --console stdio" /dev/null >"$work/full2.out" 2>&1
  if grep -q "copying template dirty80 for the full clone full2 .*80/80 MiB \[#*\] 100%" "$work/full2.out"; then
    ok "full clone's progress bar on a terminal"
  else bad "no progress bar on a terminal"; sed 's/^/  | /' "$work/full2.out"; fi
else
  echo "clone: skip progress bar (no script(1) here)"
fi

# Bad input: one line, a non-zero status, nothing started.
: >"$work/not-a-dir"
expect state_dir_unusable 10 "cannot create" -- "$vmm" run --clone-of "$tdir" --state-dir "$work/not-a-dir/state"
expect clone_name_taken 2 "already exists" -- "$vmm" run --clone-of counter --name c1
expect clone_memory_refused 2 "cannot be given with --clone-of" -- "$vmm" run --clone-of counter --memory 512M
expect clone_kernel_refused 2 "cannot be given with --clone-of" -- "$vmm" run --clone-of counter --kernel "$guest"
expect clone_missing_template 6 "not found" -- "$vmm" run --clone-of nosuch
# A path that is not UTF-8 (JSON cannot carry it into the VM's record): refused in one line, not
# an abort (nlohmann's exception ended vmm with SIGABRT, status 134), and the name stays free.
expect socket_not_utf8 2 "not valid UTF-8" -- "$vmm" run --clone-of counter --name u8 --api-socket "$(printf '%s/a\377.sock' "$work")"
[ -e "$VMM_STATE_DIR/clones/u8" ] && bad "a clone refused at its registration left its directory"
expect template_exists 2 "already exists" -- "$vmm" template create counter --kernel "$guest" --ready-on x
expect template_timeout 10 "did not print" -- "$vmm" template create slow --kernel "$guest" --cmdline counter \
  --ready-on "never printed" --timeout 1 --console none
[ -e "$VMM_STATE_DIR/templates/slow" ] && bad "a timed-out template was left behind"
expect template_guest_exits 10 "stopped before" -- "$vmm" template create gone --kernel "$guest" --cmdline hello \
  --ready-on "never printed" --console none
expect template_rm_refused 2 "linked clone" -- "$vmm" template rm counter
expect template_ls 0 "^counter +256M" -- "$vmm" template ls
expect template_verify 0 ": ok" -- "$vmm" template verify counter
# The clone path in one process (vmm template bench): each clone answers `get`, and none is left;
# a guest that does not answer, or stops instead, is an error.
ls "$VMM_STATE_DIR/clones" >"$work/clones-before"
expect template_bench 0 "^  to the answer: median [0-9.]+ ms \(min [0-9.]+, max [0-9.]+\)$" -- \
  "$vmm" template bench counter --count 5
grep -qE "^vmm template bench: 5 clones of counter \(256 MiB, 1 vCPU\(s\)\) in one process$" "$work/out" &&
  grep -qE "^  to the guest's first exit: median [0-9.]+ ms \(min [0-9.]+, max [0-9.]+\)$" "$work/out" &&
  grep -qE "steps .*: template [0-9.]+; files [0-9.]+; devices [0-9.]+; machine [0-9.]+; restored [0-9.]+; answer [0-9.]+;$" "$work/out" &&
  ok "template bench: its summary and steps" || { bad "template bench output"; sed 's/^/  | /' "$work/out"; }
ls "$VMM_STATE_DIR/clones" | cmp -s - "$work/clones-before" && ok "template bench leaves no clone behind" ||
  bad "template bench left clones: $(ls "$VMM_STATE_DIR/clones" | tr '\n' ' ')"
expect template_bench_silent 10 "'never printed' not printed within 1 s of its resume \(does its guest answer 'inc 5'\?\)" -- \
  "$vmm" template bench counter --count 1 --input "inc 5" --expect "never printed" --timeout 1
expect template_bench_quit 10 "stopped before it printed" -- "$vmm" template bench counter --count 1 --input quit
expect template_bench_missing 6 "not found" -- "$vmm" template bench nosuch
after=$(cd "$tdir" && find . -type f | sort | xargs sha256sum)
[ "$before" = "$after" ] && ok "template files unchanged after clones" || bad "template files changed"

# Corrupt copies of the template: each refused with status 6.
corrupt() {
  name=$1
  rm -rf "$work/bad"; cp -r "$tdir" "$work/bad"; chmod -R u+w "$work/bad"
}
corrupt state; printf 'X' | dd of="$work/bad/state.bin" bs=1 seek=100 conv=notrunc 2>/dev/null
expect corrupt_state 6 "checksum mismatch" -- "$vmm" run --clone-of "$work/bad" --name x1
corrupt truncated; truncate -s 1M "$work/bad/memory.bin"
expect truncated_memory 6 "memory file is 1048576 bytes" -- "$vmm" run --clone-of "$work/bad" --name x2
[ -e "$VMM_STATE_DIR/clones/x2" ] && bad "a clone that failed to start left its directory" || ok "a failed clone start leaves nothing"
corrupt manifest; echo '{"format_version": "9.0"}' >"$work/bad/manifest.json"
expect manifest_version 6 "format version 9.0 is not supported" -- "$vmm" run --clone-of "$work/bad" --name x3
corrupt garbage; echo 'not json' >"$work/bad/manifest.json"
expect manifest_garbage 6 "not valid JSON" -- "$vmm" run --clone-of "$work/bad" --name x4
corrupt disk; rm "$work/bad/disks/disk0.img"
expect disk_missing 6 "template disk: .*/disks/disk0.img: No such file or directory" -- "$vmm" run --clone-of "$work/bad" --name x5
# A template cannot point a clone at another file of the host: no symbolic link (a disk, the
# memory file, the disks directory), no qcow2 disk with a backing file.
corrupt disk_link; rm "$work/bad/disks/disk0.img"; ln -s "$tdir/disks/disk0.img" "$work/bad/disks/disk0.img"
expect disk_symlink 6 "disk0.img: not a regular file \(a symbolic link\)" -- "$vmm" run --clone-of "$work/bad" --name x6
corrupt disks_link; mv "$work/bad/disks" "$work/bad/elsewhere"; ln -s elsewhere "$work/bad/disks"
expect disks_dir_symlink 6 "/disks: not a directory of the template's \(a symbolic link\)" -- "$vmm" run --clone-of "$work/bad" --name x7
corrupt memory_link; mv "$work/bad/memory.bin" "$work/bad/memory.real"; ln -s memory.real "$work/bad/memory.bin"
expect memory_symlink 6 "memory.bin: not a regular file \(a symbolic link\)" -- "$vmm" run --clone-of "$work/bad" --name x8
expect memory_symlink_verify 6 "memory.bin: not a regular file \(a symbolic link\)" -- "$vmm" template verify "$work/bad"
rm -rf "$work/bad"; cp -r "$VMM_STATE_DIR/templates/blk-qcow2" "$work/bad"; chmod -R u+w "$work/bad"
printf '\002' | dd of="$work/bad/disks/disk0.qcow2" bs=1 seek=14 conv=notrunc 2>/dev/null  # backing_file_offset 0x200
expect qcow2_backing 6 "disk0.qcow2: has a backing file; a template's disk must stand alone" -- "$vmm" run --clone-of "$work/bad" --name x9
expect qcow2_backing_verify 6 "has a backing file" -- "$vmm" template verify "$work/bad"
corrupt memory; printf 'Z' | dd of="$work/bad/memory.bin" bs=1 seek=4096 conv=notrunc 2>/dev/null
expect verify_detects 6 "the file changed" -- "$vmm" template verify "$work/bad"

# Clones on disk: a clone's directory stays after it stops, keeping its name and its template.
# Stopped ones are listed and removed (the name is free again), a running one is refused unless
# --force (which kills it), and prune removes every stopped one, after which nothing depends on the
# template any more.
expect clone_ls 0 "^c1 +stopped +- +counter +linked +[0-9]+K 20[0-9-]+T" -- "$vmm" clone ls
expect clone_ls_json 0 '"state": "stopped"' -- "$vmm" clone ls --json
mkfifo "$work/live.in"
"$vmm" run --clone-of counter --name live1 --console stdio <"$work/live.in" >"$work/live.out" 2>&1 &
livepid=$!
exec 4>"$work/live.in"
i=0
while [ $i -lt 100 ] && ! "$vmm" clone ls | grep -qE "^live1 +running +$livepid "; do sleep 0.1; i=$((i + 1)); done
expect clone_rm_running 2 "clone 'live1' is running \(pid $livepid\): stop it first" -- "$vmm" clone rm live1
[ -d "$VMM_STATE_DIR/clones/live1" ] && kill -0 "$livepid" && ok "a running clone is left alone" || bad "clone rm touched a running clone"
expect clone_rm 0 "" -- "$vmm" clone rm c1 braw3
[ ! -e "$VMM_STATE_DIR/clones/c1" ] && [ ! -e "$VMM_STATE_DIR/clones/braw3" ] && ok "clone rm removed their directories" ||
  bad "clone rm left a directory"
printf 'get\nquit\n' | "$vmm" run --clone-of counter --name c1 --console stdio >"$work/c1again.out" 2>&1
grep -q "^counter: value=" "$work/c1again.out" && ok "a removed clone's name can be used again" ||
  { bad "c1 again"; sed 's/^/  | /' "$work/c1again.out"; }
expect clone_rm_missing 2 "no clone named 'nosuch'" -- "$vmm" clone rm nosuch
expect clone_rm_bad_name 2 "clone name '\.\./templates'" -- "$vmm" clone rm ../templates
expect clone_rm_force 0 "" -- "$vmm" clone rm --force live1
wait "$livepid" 2>/dev/null
exec 4>&-
[ ! -e "$VMM_STATE_DIR/clones/live1" ] && ! kill -0 "$livepid" 2>/dev/null && ok "clone rm --force killed the running clone and removed it" ||
  bad "clone rm --force"
expect clone_prune 0 "^removed [1-9][0-9]* stopped clone\(s\)" -- "$vmm" clone prune
[ -z "$("$vmm" clone ls | grep -E " stopped ")" ] && ok "no stopped clone left after prune" || bad "stopped clones after prune"
expect template_rm_after_prune 0 "" -- "$vmm" template rm counter
# The test guest ends a wait a broken CPU interrupted inside its check, and says so: only the nested lane's may (README).
grep -q "vmm_nested\." /proc/cmdline || ! find "$work" -type f -size -10M -exec grep -l "^testguest: the CPU delivered" {} + 2>/dev/null | grep -q . ||
  bad "a test guest met an interrupt inside its wait's check on a CPU that must hold it"
[ $fail = 0 ] && echo "clone: PASS"
exit $fail
