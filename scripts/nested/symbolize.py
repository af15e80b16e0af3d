#!/usr/bin/env python3
# A debugging aid of the nested lane: names the kernel addresses in the dump run.sh appends to the
# log of an L1 that froze (each vCPU's RIP and the words on its stack, from QEMU's monitor), using
# the "_text at" line l1-init.sh prints and a /proc/kallsyms of L1's kernel from any other boot
# (KASLR moves the kernel as a whole: offsets from _text are the same in every boot). Debian's
# System.map is a placeholder, so take the symbols from a running L1 once:
#   printf '#!/bin/sh\ngzip -c /proc/kallsyms | base64\n' >/tmp/ks.sh
#   scripts/nested/run.sh --quiet --log /tmp/ks.log /tmp/ks.sh
#   sed -n '/=== vmm-nested: begin/,/=== vmm-nested: end/p' /tmp/ks.log | grep -av === | tr -d '\r' |
#     base64 -d | gunzip >/tmp/kallsyms
# usage: symbolize.py LOG KALLSYMS
import bisect
import re
import sys


def load(path):
    syms = []
    for line in open(path, errors="replace"):
        f = line.split()
        if len(f) >= 3 and f[1] in "tTwW":
            syms.append((int(f[0], 16), f[2]))
    syms.sort()
    text = next((a for a, n in syms if n == "_text"), None)
    if text is None:
        sys.exit(f"symbolize: {path}: no _text (not a kallsyms, or addresses hidden: read it as root)")
    return syms, text


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: symbolize.py LOG KALLSYMS")
    log = open(sys.argv[1], errors="replace").read()
    m = re.search(r"L1 kernel _text at ([0-9a-f]{16})", log)
    if not m:
        sys.exit(f"symbolize: {sys.argv[1]}: no 'L1 kernel _text at' line (a log from before l1-init.sh printed it)")
    syms, text = load(sys.argv[2])
    addrs = [a for a, _ in syms]
    shift = int(m.group(1), 16) - text

    def name(runtime):
        a = runtime - shift
        i = bisect.bisect_right(addrs, a) - 1
        if i < 0 or a - addrs[i] > 0x10000:
            return None
        return f"{syms[i][1]}+{a - addrs[i]:#x}"

    for line in log.splitlines():
        line = line.rstrip("\r")
        if re.match(r"(CPU#\d+$|CPU#\d+ stack from|\* CPU #)", line):
            print(line)
        for reg, val in re.findall(r"\b(RIP|RSP)=([0-9a-f]{16})", line):
            if reg == "RIP":
                print(f"  RIP {val} {name(int(val, 16)) or '(not kernel text)'}")
        if re.match(r"[0-9a-f]{16}: 0x", line):
            for word in re.findall(r"0x([0-9a-f]{16})", line):
                n = name(int(word, 16)) if word.startswith("ffffffff") else None
                if n:
                    print(f"  {word} {n}")


main()
