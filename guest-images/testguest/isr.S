/* Interrupt and exception entry stubs of the test guest (irq.c installs them in the IDT).
 * Each stub is 16 bytes: it pushes a dummy error code where the CPU pushes none (Intel SDM vol. 3A
 * §6.13), then the vector, and jumps to the common path, which saves the caller-saved registers
 * (the guest is built with -mgeneral-regs-only: no vector state) and calls tg_isr(frame).
 * Stack on the call: CPU frame (40 bytes, from a 16-byte aligned RSP) + error + vector + 9 registers
 * = 128 bytes, so RSP stays 16-byte aligned as the SysV ABI wants. */
    .section .text
    .code64

    .p2align 4
    .globl tg_isr_stubs
tg_isr_stubs:
    .set v, 0
    .rept 48                        /* 0..31 exceptions, 0x20..0x2f the 8259 IRQs */
    .p2align 4
    .if v == 8 || (v >= 10 && v <= 14) || v == 17 || v == 21 || v == 29 || v == 30
    pushq $v                        /* the CPU pushed an error code */
    .else
    pushq $0
    pushq $v
    .endif
    jmp isr_common
    .set v, v + 1
    .endr

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
    mov %rsp, %rdi
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
