# 32-bit runtime of the multiboot test guests (AT&T syntax, .code32).
#
# Entry (from the VMM's multiboot v1 loader): 32-bit protected mode, paging off, interrupts off,
# EAX = 0x2BADB002, EBX = multiboot info address, no usable stack. _start loads its own GDT
# and segments, saves EAX/EBX in mb_magic/mb_info, zeroes .bss, sets ESP to stack_top,
# installs an IDT for the 32 exception vectors and calls guest_main (defined by each guest),
# then finish32.
#
# Helpers (all preserve every register they do not return in):
#   putc32      print the byte in AL on COM1 (poll LSR bit 5, write THR)
#   puts32      print the NUL-terminated string at ESI
#   puthex32    print EAX as 0x + 8 hex digits
#   putdec32    print EAX in decimal
#   report32    print "<name>: ok" (EAX == 0) or "<name>: FAILED <detail>" (EAX != 0,
#               counted in fail_count); ESI = name, EDI = detail string or 0
#   report32_val  like report32, and a failure line ends with " 0x<EDX>"
#   finish32    print "result: pass" / "result: fail", write 0x10 / 0x11 to port 0xf4
#               (isa-debug-exit), never returns

# Multiboot v1 header: magic, flags (bit 0 page-align modules, bit 1 memory info), checksum.
# No a.out kludge (flag 16): the loader reads the ELF program headers.
    .section .multiboot, "a"
    .balign 4
    .globl multiboot_header
multiboot_header:
    .long 0x1BADB002
    .long 0x00000003
    .long -(0x1BADB002 + 0x00000003)

    .section .data.rt32, "aw"
    .balign 8
    .globl gdt, gdt_desc, mb_magic, mb_info
# GDT: 0x08 = 32-bit code, 0x10 = data (flat 4 GiB), 0x18 = 64-bit code (used by guest-long).
gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00af9a000000ffff
gdt_end:
    .balign 4
    .word 0                        # pad: the base of the descriptor below is 4-aligned
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt
    .word 0
    .globl idt32_desc
idt32_desc:
    .word 32 * 8 - 1
    .long idt32
    .word 0                        # pad, as above
idt32_wide_desc:
    .word 256 * 8 - 1
    .long idt32_wide_table
mb_magic: .long 0
mb_info:  .long 0

    .section .bss.rt32, "aw", @nobits
    .balign 8
idt32:
    .skip 32 * 8
idt32_wide_table:
    .skip 256 * 8

    .section .text.entry, "ax"
    .code32
    .globl _start
_start:
    cli
    cld
    movl %eax, mb_magic            # the loader's flat DS is still in use here
    movl %ebx, mb_info
    lgdt gdt_desc
    ljmp $0x08, $.Lreload_segments
.Lreload_segments:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %fs
    movw %ax, %gs
    movw %ax, %ss
    # Zero .bss (stack, IDT, page tables): do not rely on the loader for it.
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb
    movl $stack_top, %esp
    call idt32_install
    call guest_main
    jmp finish32

    .section .text.rt32, "ax"
    .code32

# putc32: AL -> COM1.
    .globl putc32
putc32:
    pushl %edx
    pushl %eax
    movw $0x3fd, %dx               # line status register
.Lputc32_wait:
    inb %dx, %al
    testb $0x20, %al               # THR empty
    jz .Lputc32_wait
    popl %eax
    movw $0x3f8, %dx               # transmit holding register
    outb %al, %dx
    popl %edx
    ret

# puts32: string at ESI.
    .globl puts32
puts32:
    pushl %esi
    pushl %eax
.Lputs32_loop:
    movb (%esi), %al
    testb %al, %al
    jz .Lputs32_done
    call putc32
    incl %esi
    jmp .Lputs32_loop
.Lputs32_done:
    popl %eax
    popl %esi
    ret

# puthex32: EAX as 0x%08x.
    .globl puthex32
puthex32:
    pushl %esi
    pushl %eax
    pushl %ecx
    pushl %edx
    movl %eax, %edx
    movl $str_hex_prefix, %esi
    call puts32
    movl $8, %ecx
.Lhex32_loop:
    roll $4, %edx                  # next nibble, most significant first
    movl %edx, %eax
    andl $0xf, %eax
    movb hexdigits(%eax), %al
    call putc32
    decl %ecx
    jnz .Lhex32_loop
    popl %edx
    popl %ecx
    popl %eax
    popl %esi
    ret

# putdec32: EAX in decimal.
    .globl putdec32
putdec32:
    pushal
    movl $10, %ebx
    xorl %ecx, %ecx                # digits pushed
.Ldec32_div:
    xorl %edx, %edx
    divl %ebx
    pushl %edx
    incl %ecx
    testl %eax, %eax
    jnz .Ldec32_div
.Ldec32_out:
    popl %eax
    addb $0x30, %al                # '0'
    call putc32
    decl %ecx
    jnz .Ldec32_out
    popal
    ret

# report32 / report32_val: see the header.
    .globl report32, report32_val
report32:
    movl $0, show_val
    jmp .Lreport32
report32_val:
    movl $1, show_val
.Lreport32:
    pushl %esi
    call puts32                    # name
    testl %eax, %eax
    jnz .Lreport32_fail
    movl $str_ok, %esi
    call puts32
    popl %esi
    ret
.Lreport32_fail:
    incl fail_count
    movl $str_failed, %esi
    call puts32
    testl %edi, %edi
    jz .Lreport32_nl
    movl $str_space, %esi
    call puts32
    movl %edi, %esi
    call puts32
    cmpl $0, show_val
    je .Lreport32_nl
    movl $str_space, %esi
    call puts32
    pushl %eax
    movl %edx, %eax
    call puthex32
    popl %eax
.Lreport32_nl:
    movl $str_nl, %esi
    call puts32
    popl %esi
    ret

# finish32: the verdict, then isa-debug-exit. Never returns.
    .globl finish32
finish32:
    cmpl $0, fail_count
    jne .Lfinish32_fail
    movl $str_result_pass, %esi
    call puts32
    movb $0x10, %al
    outb %al, $0xf4                # reported as exit code 0x21
    jmp .Lfinish32_halt
.Lfinish32_fail:
    movl $str_result_fail, %esi
    call puts32
    movb $0x11, %al
    outb %al, $0xf4                # reported as exit code 0x23
.Lfinish32_halt:
    cli
    hlt
    jmp .Lfinish32_halt

# idt32_wide: a 256-entry IDT for guests that take interrupts: the 32 exception gates of
# idt32, every other vector pointing at EDX (a default handler); loaded with lidt. Set the
# vectors a guest handles with idt32_gate afterwards. Keeps every register.
    .globl idt32_wide, idt32_gate
idt32_wide:
    pushal
    movl $idt32, %esi
    movl $idt32_wide_table, %edi
    movl $32 * 2, %ecx
    rep movsl
    movl $32, %ecx
1:  call idt32_gate
    incl %ecx
    cmpl $256, %ecx
    jb 1b
    lidt idt32_wide_desc
    popal
    ret

# idt32_gate: vector ECX of the idt32_wide table -> handler EDX (an interrupt gate, DPL 0,
# selector 0x08). Keeps every register.
idt32_gate:
    pushl %eax
    movl %edx, %eax
    andl $0x0000ffff, %eax
    orl $0x00080000, %eax
    movl %eax, idt32_wide_table(,%ecx,8)
    movl %edx, %eax
    andl $0xffff0000, %eax
    orl $0x00008e00, %eax
    movl %eax, idt32_wide_table + 4(,%ecx,8)
    popl %eax
    ret

# x2apic_eoi: EOI to the local APIC through its x2APIC MSR (0x80b). Keeps every register.
    .globl x2apic_eoi
x2apic_eoi:
    pushl %eax
    pushl %ecx
    pushl %edx
    movl $0x80b, %ecx
    xorl %eax, %eax
    xorl %edx, %edx
    wrmsr
    popl %edx
    popl %ecx
    popl %eax
    ret

# idt32_install: 32 interrupt gates (present, DPL 0, 32-bit, selector 0x08), vector v pointing
# at exc32_stubs + 16 * v, then lidt.
idt32_install:
    pushal
    movl $idt32, %edi
    movl $exc32_stubs, %edx
    movl $32, %ecx
.Lidt32_loop:
    movl %edx, %eax
    andl $0x0000ffff, %eax
    orl $0x00080000, %eax          # selector 0x08 | offset 15:0
    movl %eax, (%edi)
    movl %edx, %eax
    andl $0xffff0000, %eax
    orl $0x00008e00, %eax          # offset 31:16 | P | DPL 0 | 32-bit interrupt gate
    movl %eax, 4(%edi)
    addl $8, %edi
    addl $16, %edx
    decl %ecx
    jnz .Lidt32_loop
    lidt idt32_desc
    popal
    ret

# Exception stubs, 16 bytes apart: push a zero error code where the CPU pushes none, then the
# vector, and go to exc32_common.
    .macro EXC32_NOERR vec
    .balign 16
    pushl $0
    pushl $\vec
    jmp exc32_common
    .endm
    .macro EXC32_ERR vec
    .balign 16
    pushl $\vec
    jmp exc32_common
    .endm

    .balign 16
exc32_stubs:
    EXC32_NOERR 0
    EXC32_NOERR 1
    EXC32_NOERR 2
    EXC32_NOERR 3
    EXC32_NOERR 4
    EXC32_NOERR 5
    EXC32_NOERR 6
    EXC32_NOERR 7
    EXC32_ERR 8
    EXC32_NOERR 9
    EXC32_ERR 10
    EXC32_ERR 11
    EXC32_ERR 12
    EXC32_ERR 13
    EXC32_ERR 14
    EXC32_NOERR 15
    EXC32_NOERR 16
    EXC32_ERR 17
    EXC32_NOERR 18
    EXC32_NOERR 19
    EXC32_NOERR 20
    EXC32_ERR 21
    EXC32_NOERR 22
    EXC32_NOERR 23
    EXC32_NOERR 24
    EXC32_NOERR 25
    EXC32_NOERR 26
    EXC32_NOERR 27
    EXC32_NOERR 28
    EXC32_ERR 29
    EXC32_ERR 30
    EXC32_NOERR 31

# Frame after pushal: 32(%esp) vector, 36 error code, 40 EIP, 44 CS, 48 EFLAGS.
# Two exceptions are expected and resumed: #GP while gp_expected is set (an rdmsr/wrmsr of an
# unknown MSR: skip the 2-byte instruction) and #UD on a vmcall (0f 01 c1; no hypervisor:
# skip it and count it in ud_vmcall_count). Anything else is reported and ends the guest.
exc32_common:
    pushal
    movl 32(%esp), %eax
    cmpl $13, %eax
    jne .Lexc32_not_gp
    cmpl $0, gp_expected
    je .Lexc32_fatal
    movl $0, gp_expected
    incl gp_count
    movl 36(%esp), %eax
    movl %eax, gp_error
    addl $2, 40(%esp)              # skip rdmsr (0f 32) / wrmsr (0f 30)
    jmp .Lexc32_resume
.Lexc32_not_gp:
    cmpl $6, %eax
    jne .Lexc32_fatal
    movl 40(%esp), %ebx
    cmpb $0x0f, (%ebx)
    jne .Lexc32_fatal
    cmpb $0x01, 1(%ebx)
    jne .Lexc32_fatal
    cmpb $0xc1, 2(%ebx)
    jne .Lexc32_fatal
    incl ud_vmcall_count
    addl $3, 40(%esp)              # skip vmcall
.Lexc32_resume:
    popal
    addl $8, %esp                  # vector and error code
    iretl
.Lexc32_fatal:
    incl fail_count
    movl $str_exc, %esi
    call puts32
    movl 32(%esp), %eax
    call puthex32
    movl $str_exc_rip, %esi
    call puts32
    movl 40(%esp), %eax
    call puthex32
    movl $str_exc_err, %esi
    call puts32
    movl 36(%esp), %eax
    call puthex32
    movl $str_nl, %esi
    call puts32
    jmp finish32

    .code64
