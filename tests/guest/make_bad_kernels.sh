#!/usr/bin/env bash
# Makes malformed kernels (and an oversized initrd) from the test guest for the bad-input tests.
# usage: make_bad_kernels.sh TESTGUEST_ELF OUTDIR
set -euo pipefail
elf=$1 out=$2
mkdir -p "$out"
head -c 40 "$elf" > "$out/truncated_elf"     # inside the ELF header
head -c 100 "$elf" > "$out/truncated_phdrs"  # header complete, program headers cut off
# First program header's p_paddr (ELF64: e_phoff at 32; p_paddr at phdr + 24) moved to 1 TiB.
cp "$elf" "$out/segment_outside_ram"
phoff=$(od -An -t u8 -j 32 -N 8 "$elf" | tr -d ' ')
printf '\x00\x00\x00\x00\x00\x01\x00\x00' | dd of="$out/segment_outside_ram" bs=1 seek=$((phoff + 24)) conv=notrunc status=none
# Also move every other PT_LOAD's p_paddr the same way, so no segment is loadable.
phnum=$(od -An -t u2 -j 56 -N 2 "$elf" | tr -d ' ')
phentsize=$(od -An -t u2 -j 54 -N 2 "$elf" | tr -d ' ')
for ((i = 1; i < phnum; i++)); do
  printf '\x00\x00\x00\x00\x00\x01\x00\x00' | dd of="$out/segment_outside_ram" bs=1 seek=$((phoff + i * phentsize + 24)) conv=notrunc status=none
done
rm -f "$out/huge_initrd"
truncate -s 16M "$out/huge_initrd"
# A FIFO (named pipe): opening one for reading waits for a writer (and for writing, for a reader).
# The console's own: a reader of the other (a test opening it as a kernel) would give it one.
rm -f "$out/fifo" "$out/console-fifo"
mkfifo "$out/fifo" "$out/console-fifo"
