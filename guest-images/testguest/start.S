/* Test guest entry: PVH (Xen ELF note PHYS32_ENTRY), 32-bit protected mode, paging off,
 * EBX = struct hvm_start_info. Switches to long mode with static identity page tables (first
 * 4 GiB, 2 MiB pages: no runtime loop, since ring-0 code is emulated slowly on some hosts). */
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4                 /* namesz */
    .long 4                 /* descsz */
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_start

    .section .text.boot, "ax"
    .code32
    .globl pvh_start
pvh_start:
    cli
    mov %ebx, %edi                  /* start_info → first argument of guest_main */
    lgdt gdt_desc
    mov $pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax                  /* PAE */
    mov %eax, %cr4
    mov $0xc0000080, %ecx           /* EFER */
    rdmsr
    or $0x100, %eax                 /* LME */
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax            /* PG | PE */
    mov %eax, %cr0
    ljmp $0x08, $long_mode

    .code64
long_mode:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %ax, %fs
    mov %ax, %gs
    lea stack_top(%rip), %rsp
    call guest_main
1:  cli
    hlt
    jmp 1b

/* AP start-up: real-mode code copied to 0x8000 (SIPI vector 0x08) at run time. It uses absolute
 * addresses inside its own copy (0x8000 + offset) and the image's page tables. */
    .code16
    .globl tramp_start, tramp_end
tramp_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    lgdtl (0x8000 + tramp_gdt_desc - tramp_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x18, $(0x8000 + tramp32 - tramp_start)
    .code32
tramp32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $pml4, %eax
    mov %eax, %cr3
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $0xc0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000000, %eax
    mov %eax, %cr0
    ljmp $0x08, $ap_long
    .p2align 3
tramp_gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff        /* 0x10: data */
    .quad 0x00cf9a000000ffff        /* 0x18: 32-bit code */
tramp_gdt_desc:
    .word 31
    .long 0x8000 + tramp_gdt - tramp_start
tramp_end:

    .code64
ap_long:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $1, %eax
    lock xadd %eax, ap_next_stack(%rip)
    shl $11, %rax                   /* 2 KiB per AP */
    lea ap_stacks(%rip), %rsp
    add %rax, %rsp
    call ap_main
2:  cli
    hlt
    jmp 2b

    .globl triple_fault
triple_fault:
    lidt null_idt(%rip)
    ud2

    .section .data
    .p2align 4
gdt:
    .quad 0
    .quad 0x00af9a000000ffff        /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff        /* 0x10: data */
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt
null_idt:
    .word 0
    .quad 0

    .p2align 12
pml4:
    .quad pdpt + 3
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x0003
    .quad pd + 0x1003
    .quad pd + 0x2003
    .quad pd + 0x3003
    .fill 508, 8, 0
pd:
    .set i, 0
    .rept 2048
    .quad (i << 21) | 0x83
    .set i, i + 1
    .endr

ap_next_stack:
    .long 1

    .section .bss
    .p2align 4
ap_stacks:
    .space 2048 * 256
    .globl stack_top
    .space 16384
stack_top:
    .section .note.GNU-stack, "", @progbits
