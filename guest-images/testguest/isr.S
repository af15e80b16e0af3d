/* Interrupt and exception entry stubs of the test guest (irq.c installs them in the IDT).
 * Each stub is 16 bytes: it pushes a dummy error code where the CPU pushes none (Intel SDM vol. 3A
 * §6.13), then the vector, and jumps to the common path, which saves the caller-saved registers
 * (the guest is built with -mgeneral-regs-only: no vector state) and calls tg_isr(frame).
 * Stack on the call: CPU frame (40 bytes, from a 16-byte aligned RSP) + error + vector + 9 registers
 * = 128 bytes, so RSP stays 16-byte aligned as the SysV ABI wants.
 * The master PIC's IRQs that are only counted and acknowledged (0, the PIT; 1, 2, 3 and 5, such as
 * the VMM's ACPI GED line that notifies a clone) take irq_fast instead: ~20 instructions rather than
 * ~60 through the C handler. Where the guest's ring 0 is emulated an instruction at a time (this
 * project's direct lane, 2-3 us each), that was ~0.1 ms of a clone's first answer. */
    .section .text
    .code64

/* tg_wait's erratum check (see tg_isr in irq.c): an interrupt whose saved RIP (at `slot`) lies from
 * tg_wait_check to tg_wait_hlt is counted, and returns to tg_wait_wake. Uses %rax. */
.macro WAIT_FIXUP slot
    mov \slot, %rax
    cmp $tg_wait_check, %rax
    jb 9f
    cmp $tg_wait_hlt, %rax
    ja 9f
    incq tg_blocked_irqs(%rip)
    mov %rax, tg_blocked_rip(%rip)
    movq $tg_wait_wake, \slot
9:
.endm

    .p2align 4
    .globl tg_isr_stubs
tg_isr_stubs:
    .set v, 0
    .rept 48                        /* 0..31 exceptions, 0x20..0x2f the 8259 IRQs */
    .p2align 4
    .if (v >= 0x20 && v <= 0x23) || v == 0x25
    pushq $v
    jmp irq_fast
    .elseif v == 8 || (v >= 10 && v <= 14) || v == 17 || v == 21 || v == 29 || v == 30
    pushq $v                        /* the CPU pushed an error code */
    jmp isr_common
    .else
    pushq $0
    pushq $v
    jmp isr_common
    .endif
    .set v, v + 1
    .endr

/* Stack: the vector, then the CPU's frame (RIP at 8(%rsp)). Counts as tg_isr would (tg_ticks for
 * IRQ 0, tg_irqs for all) and sends the master a non-specific EOI. */
irq_fast:
    push %rax
    WAIT_FIXUP 16(%rsp)
    cmpq $0x20, 8(%rsp)
    jne 1f
    incq tg_ticks(%rip)
1:  incq tg_irqs(%rip)
    mov $0x20, %al
    out %al, $0x20
    pop %rax
    add $8, %rsp
    iretq

/* void tg_wait_fixup(uint64_t* rip): the same check on a made-up frame's RIP (the `wait-erratum`
 * scenario). */
    .globl tg_wait_fixup
tg_wait_fixup:
    WAIT_FIXUP (%rdi)
    ret

    .p2align 4
    .globl tg_isr_spurious
tg_isr_spurious:                    /* LAPIC spurious vector 0xff: no EOI, nothing to do */
    iretq

isr_common:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    cmpq $0x20, 72(%rsp)            /* an IRQ (not an exception): the wait's check, RIP at 88(%rsp) */
    jb 1f
    WAIT_FIXUP 88(%rsp)
1:  mov %rsp, %rdi
    cld
    call tg_isr
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    add $16, %rsp                   /* vector and error code */
    iretq

/* void tg_wait(void): sleeps until an interrupt, unless serial input is waiting. `cli`, then the
 * check, then `sti; hlt`: the STI shadow makes the pair atomic, so an interrupt that arrives after
 * the check still ends the hlt. In assembly so that tg_isr knows where the check begins and ends:
 * an interrupt delivered between tg_wait_check and tg_wait_hlt (a broken CPU: see tg_isr) returns
 * to tg_wait_wake instead. */
    .globl tg_wait, tg_wait_check, tg_wait_hlt, tg_wait_wake
tg_wait:
    cli
tg_wait_check:
    mov tg_rx_head(%rip), %eax
    cmp tg_rx_tail(%rip), %eax
    jne tg_wait_wake
    sti
tg_wait_hlt:
    hlt
    ret
tg_wait_wake:
    sti
    ret

    .section .note.GNU-stack, "", @progbits
