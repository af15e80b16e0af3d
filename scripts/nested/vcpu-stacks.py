# A debugging aid of the nested lane (smp-soak.sh runs it in L1): reads a template that
# `vmm snapshot` wrote of a stalled Linux guest and prints for each vCPU its RIP, RSP, RFLAGS and
# CR3, the kernel-text addresses on its stack as offsets from the kernel's _text (found in the page
# tables: KASLR needs no symbol file here), and, when it runs on an
# interrupt stack, the hardware interrupt frame of the context it interrupted (found through the
# previous stack pointer that Linux keeps in the interrupt stack's top word): its RIP and RFLAGS,
# that is whether interrupts were enabled when the interrupt came.
# usage: vcpu-stacks.py TEMPLATE_DIR
# Reads state.bin's section table and the vcpuN sections' leading kvm_regs and kvm_sregs
# (clone/state_file.hpp, clone/snapshot.cpp), and walks the guest's 4-level page tables in
# memory.bin (guest-physical offsets: the guests this is for have less than 3 GiB).
import struct
import sys

from vmmstate import sections

KERNEL_MAP = 0xFFFFFFFF80000000  # __START_KERNEL_map
TEXT = TEXT_END = 0  # set by main()
KERNEL = 0xFFFF800000000000
PHYS = 0x000FFFFFFFFFF000


class Guest:
    def __init__(self, memory, cr3):
        self.memory, self.cr3 = memory, cr3

    def phys(self, pa, n):
        self.memory.seek(pa)
        data = self.memory.read(n)
        return data if len(data) == n else None

    def translate(self, va):
        table = self.cr3 & PHYS
        for level, shift in ((4, 39), (3, 30), (2, 21), (1, 12)):
            raw = self.phys(table + ((va >> shift) & 511) * 8, 8)
            if raw is None:
                return None
            entry = struct.unpack("<Q", raw)[0]
            if not entry & 1:
                return None
            if level in (3, 2) and entry & 0x80:  # 1 GiB or 2 MiB page
                return (entry & PHYS & ~((1 << shift) - 1)) | (va & ((1 << shift) - 1))
            table = entry & PHYS
        return table | (va & 0xFFF)

    def u64(self, va):
        pa = self.translate(va)
        raw = None if pa is None else self.phys(pa, 8)
        return None if raw is None else struct.unpack("<Q", raw)[0]


def kernel_text(guest):
    """_text: Linux maps its image in 2 MiB pages from __START_KERNEL_map and clears the entries
    before _text (cleanup_highmap), so the first present entry there is _text (KASLR or not)."""
    for i in range(512):
        va = KERNEL_MAP + (i << 21)
        if guest.translate(va) is not None:
            return va
    sys.exit("vcpu-stacks: no kernel mapping at __START_KERNEL_map")


def text(value):
    return "+%x" % (value - TEXT) if TEXT <= value < TEXT_END else "%#x" % value


def interrupt_frames(guest, start):
    """Hardware interrupt frames (RIP, CS=0x10, RFLAGS, RSP, SS) in the 200 words from start."""
    for k in range(200):
        words = [guest.u64(start + 8 * (k + j)) for j in range(5)]
        if None in words:
            return
        ip, cs, flags, sp, ss = words
        if cs == 0x10 and ss in (0x18, 0) and flags & 2 and not flags & 0xFFC08000 and TEXT <= ip < TEXT_END and sp >= KERNEL:
            yield start + 8 * k, ip, flags, sp


def main():
    global TEXT, TEXT_END
    d = sys.argv[1]
    with open(d + "/state.bin", "rb") as f:
        secs = sections(f.read(), "vcpu-stacks")
    memory = open(d + "/memory.bin", "rb")
    v = 0
    while "vcpu%d" % v in secs:
        s = secs["vcpu%d" % v]
        regs = struct.unpack_from("<18Q", s, 0)  # kvm_regs: rax..r15, rip, rflags
        rsp, rip, rflags = regs[6], regs[16], regs[17]
        cr3 = struct.unpack_from("<Q", s, 144 + 8 * 24 + 2 * 16 + 16)[0]  # kvm_sregs: 8 segments, gdt, idt, cr0, cr2, cr3
        guest = Guest(memory, cr3)
        if not TEXT and rsp >= KERNEL:
            TEXT = kernel_text(guest)
            TEXT_END = TEXT + (16 << 20)
            print("kernel: _text at %#x" % TEXT)
        print("vcpu%d: rip %s rsp %#x rflags %#x (interrupts %s) cr3 %#x"
              % (v, text(rip), rsp, rflags, "on" if rflags & 0x200 else "off", cr3))
        if rsp >= KERNEL:
            found = []
            for k in range(1024):
                w = guest.u64(rsp + 8 * k)
                if w is None:
                    break
                if TEXT <= w < TEXT_END:
                    found.append("%d:%s" % (k, text(w)))
            print("vcpu%d:   text on its stack (word:address): %s" % (v, " ".join(found[:60]) or "none"))
            # An interrupt stack is 16 KiB; Linux stores the interrupted stack pointer in its top word.
            previous = guest.u64((rsp | 0x3FFF) - 7)
            if previous and previous >= KERNEL:
                for at, ip, flags, sp in interrupt_frames(guest, previous):
                    print("vcpu%d:   interrupted at %s, rflags %#x (interrupts %s), rsp %#x (frame at %#x)"
                          % (v, text(ip), flags, "on" if flags & 0x200 else "OFF", sp, at))
        v += 1


main()
