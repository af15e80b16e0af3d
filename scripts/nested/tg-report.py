# A debugging aid of the nested lane (clone-soak.sh runs it in L1): reads a template that
# `vmm snapshot` wrote of a test guest that stopped answering and prints its vCPU 0 (RIP, RFLAGS,
# RSP, MP state, interrupt shadow), the guest's serial ring and interrupt counters, and the
# interrupt frames left on its stack below the stack's top (RIP, CS 8, RFLAGS, RSP, SS), the newest
# first: where the last interrupts came, and whether interrupts were enabled there.
# usage: tg-report.py TEMPLATE_DIR SYMBOL=ADDRESS...  (tg_rx_head, tg_rx_tail, tg_blocked_irqs,
#        tg_serial_irqs, tg_irqs, stack_top, tg_wait, tg_wait_hlt: clone-soak.sh takes them from
#        the guest's ELF, whose addresses are guest-physical)
# Reads state.bin's section table and the vcpu0 section (clone/state_file.cpp, put_vcpu in
# clone/snapshot.cpp: kvm_regs, kvm_sregs, kvm_fpu, the XSAVE blob, kvm_xcrs, kvm_lapic_state,
# kvm_vcpu_events, kvm_mp_state; x86-64 UAPI sizes below), and memory.bin at guest-physical offsets.
import struct
import sys

from vmmstate import sections

REGS, SREGS, FPU, XCRS, LAPIC = 144, 312, 416, 392, 1024
EVENTS_SHADOW = 11  # offsetof(struct kvm_vcpu_events, interrupt.shadow)
EVENTS = 64


def main():
    tdir = sys.argv[1]
    syms = {k: int(v, 16) for k, v in (a.split("=", 1) for a in sys.argv[2:])}
    with open(f"{tdir}/state.bin", "rb") as f:
        vcpu = sections(f.read(), "tg-report")["vcpu0"]
    regs = struct.unpack_from("<18Q", vcpu, 0)
    rsp, rip, rflags = regs[6], regs[16], regs[17]
    pos = REGS + SREGS + FPU
    (xsave,) = struct.unpack_from("<I", vcpu, pos)
    pos += 4 + xsave + XCRS + LAPIC
    shadow = vcpu[pos + EVENTS_SHADOW]
    (mp_state,) = struct.unpack_from("<I", vcpu, pos + EVENTS)
    where = ""
    if syms.get("tg_wait", -1) <= rip <= syms.get("tg_wait_hlt", -2) + 1:
        where = f" (tg_wait+{rip - syms['tg_wait']:#x})"
    print(f"vcpu0: rip={rip:#x}{where} rflags={rflags:#x} (IF={rflags >> 9 & 1}) rsp={rsp:#x} "
          f"mp_state={mp_state} shadow={shadow}")
    with open(f"{tdir}/memory.bin", "rb") as mem:
        def read(gpa, n):
            mem.seek(gpa)
            return mem.read(n)

        def word(name, size):
            if name not in syms:
                return "?"
            return int.from_bytes(read(syms[name], size), "little")

        print(f"serial ring: head={word('tg_rx_head', 4)} tail={word('tg_rx_tail', 4)}; "
              f"irqs={word('tg_irqs', 8)} serial={word('tg_serial_irqs', 8)} "
              f"ended for the CPU={word('tg_blocked_irqs', 8)}")
        top = syms.get("stack_top")
        if top is None:
            return
        base = max(top - 4096, min(rsp, top) - 1024)
        stack = read(base, top - base)
        words = struct.unpack_from(f"<{len(stack) // 8}Q", stack)
        for i in range(len(words) - 4):
            frame_rip, cs, fl, frsp, ss = words[i : i + 5]
            if cs == 8 and ss in (0, 0x10) and 0x100000 <= frame_rip < 0x40000000 and base <= frsp <= top:
                vector = words[i - 2] if i >= 2 else -1
                print(f"frame at {base + 8 * i:#x}: vector={vector:#x} rip={frame_rip:#x} rflags={fl:#x} "
                      f"(IF={fl >> 9 & 1}) rsp={frsp:#x}")


main()
