# 64-bit runtime of the test guests (AT&T syntax, .code64): the same helpers as rt32.s for
# long mode, and an IDT for the 32 exception vectors. Used by guest-long (after its switch to
# long mode) and guest-bench. All helpers preserve every register they do not return in.
#
#   putc64      print the byte in AL on COM1
#   puts64      print the NUL-terminated string at RSI
#   puthex64    print RAX as 0x + 16 hex digits
#   putdec64    print RAX in decimal
#   report64    print "<name>: ok" (RAX == 0) or "<name>: FAILED <detail>" (RAX != 0, counted
#               in fail_count); RSI = name, RDI = detail string or 0
#   report64_val  like report64, and a failure line ends with " 0x<RDX>"
#   finish64    print "result: pass" / "result: fail", write 0x10 / 0x11 to port 0xf4, never
#               returns
#   idt64_install  load an IDT whose gates use the current CS

    .section .data.rt64, "aw"
    .balign 8
    .word 0, 0, 0                  # pad: the 8-byte base below is 8-aligned
idt64_desc:
    .word 32 * 16 - 1
    .quad idt64

    .section .bss.rt64, "aw", @nobits
    .balign 16
idt64:
    .skip 32 * 16

    .section .text.rt64, "ax"
    .code64

    .globl putc64
putc64:
    pushq %rdx
    pushq %rax
    movw $0x3fd, %dx               # line status register
.Lputc64_wait:
    inb %dx, %al
    testb $0x20, %al               # THR empty
    jz .Lputc64_wait
    popq %rax
    movw $0x3f8, %dx               # transmit holding register
    outb %al, %dx
    popq %rdx
    ret

    .globl puts64
puts64:
    pushq %rsi
    pushq %rax
.Lputs64_loop:
    movb (%rsi), %al
    testb %al, %al
    jz .Lputs64_done
    call putc64
    incq %rsi
    jmp .Lputs64_loop
.Lputs64_done:
    popq %rax
    popq %rsi
    ret

    .globl puthex64
puthex64:
    pushq %rsi
    pushq %rax
    pushq %rcx
    pushq %rdx
    movq %rax, %rdx
    movq $str_hex_prefix, %rsi
    call puts64
    movl $16, %ecx
.Lhex64_loop:
    rolq $4, %rdx                  # next nibble, most significant first
    movl %edx, %eax
    andl $0xf, %eax
    movb hexdigits(%rax), %al
    call putc64
    decl %ecx
    jnz .Lhex64_loop
    popq %rdx
    popq %rcx
    popq %rax
    popq %rsi
    ret

    .globl putdec64
putdec64:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    movl $10, %ebx
    xorl %ecx, %ecx                # digits pushed
.Ldec64_div:
    xorl %edx, %edx
    divq %rbx
    pushq %rdx
    incl %ecx
    testq %rax, %rax
    jnz .Ldec64_div
.Ldec64_out:
    popq %rax
    addb $0x30, %al                # '0'
    call putc64
    decl %ecx
    jnz .Ldec64_out
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    ret

    .globl report64, report64_val
report64:
    movl $0, show_val
    jmp .Lreport64
report64_val:
    movl $1, show_val
.Lreport64:
    pushq %rsi
    call puts64                    # name
    testq %rax, %rax
    jnz .Lreport64_fail
    movq $str_ok, %rsi
    call puts64
    popq %rsi
    ret
.Lreport64_fail:
    incl fail_count
    movq $str_failed, %rsi
    call puts64
    testq %rdi, %rdi
    jz .Lreport64_nl
    movq $str_space, %rsi
    call puts64
    movq %rdi, %rsi
    call puts64
    cmpl $0, show_val
    je .Lreport64_nl
    movq $str_space, %rsi
    call puts64
    pushq %rax
    movq %rdx, %rax
    call puthex64
    popq %rax
.Lreport64_nl:
    movq $str_nl, %rsi
    call puts64
    popq %rsi
    ret

    .globl finish64
finish64:
    cmpl $0, fail_count
    jne .Lfinish64_fail
    movq $str_result_pass, %rsi
    call puts64
    movb $0x10, %al
    outb %al, $0xf4                # reported as exit code 0x21
    jmp .Lfinish64_halt
.Lfinish64_fail:
    movq $str_result_fail, %rsi
    call puts64
    movb $0x11, %al
    outb %al, $0xf4                # reported as exit code 0x23
.Lfinish64_halt:
    cli
    hlt
    jmp .Lfinish64_halt

# idt64_install: 32 interrupt gates (present, DPL 0, 64-bit interrupt gate, IST 0, the current
# CS), vector v pointing at exc64_stubs + 16 * v, then lidt.
    .globl idt64_install
idt64_install:
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rdi
    pushq %rbx
    xorl %ebx, %ebx
    movw %cs, %bx
    shll $16, %ebx                 # selector in bits 31:16 of the first dword
    movq $idt64, %rdi
    movq $exc64_stubs, %rdx
    movl $32, %ecx
.Lidt64_loop:
    movl %edx, %eax
    andl $0x0000ffff, %eax
    orl %ebx, %eax                 # selector | offset 15:0
    movl %eax, (%rdi)
    movl %edx, %eax
    andl $0xffff0000, %eax
    orl $0x00008e00, %eax          # offset 31:16 | P | DPL 0 | interrupt gate
    movl %eax, 4(%rdi)
    movq %rdx, %rax
    shrq $32, %rax
    movl %eax, 8(%rdi)             # offset 63:32
    movl $0, 12(%rdi)
    addq $16, %rdi
    addq $16, %rdx
    decl %ecx
    jnz .Lidt64_loop
    lidt idt64_desc
    popq %rbx
    popq %rdi
    popq %rdx
    popq %rcx
    popq %rax
    ret

    .macro EXC64_NOERR vec
    .balign 16
    pushq $0
    pushq $\vec
    jmp exc64_common
    .endm
    .macro EXC64_ERR vec
    .balign 16
    pushq $\vec
    jmp exc64_common
    .endm

    .balign 16
exc64_stubs:
    EXC64_NOERR 0
    EXC64_NOERR 1
    EXC64_NOERR 2
    EXC64_NOERR 3
    EXC64_NOERR 4
    EXC64_NOERR 5
    EXC64_NOERR 6
    EXC64_NOERR 7
    EXC64_ERR 8
    EXC64_NOERR 9
    EXC64_ERR 10
    EXC64_ERR 11
    EXC64_ERR 12
    EXC64_ERR 13
    EXC64_ERR 14
    EXC64_NOERR 15
    EXC64_NOERR 16
    EXC64_ERR 17
    EXC64_NOERR 18
    EXC64_NOERR 19
    EXC64_NOERR 20
    EXC64_ERR 21
    EXC64_NOERR 22
    EXC64_NOERR 23
    EXC64_NOERR 24
    EXC64_NOERR 25
    EXC64_NOERR 26
    EXC64_NOERR 27
    EXC64_NOERR 28
    EXC64_ERR 29
    EXC64_ERR 30
    EXC64_NOERR 31

# Frame after the two pushes below: 16(%rsp) vector, 24 error code, 32 RIP, 40 CS, 48 RFLAGS,
# 56 RSP, 64 SS. A #UD on a vmcall (0f 01 c1; no hypervisor) is skipped and counted in
# ud_vmcall_count; anything else is reported and ends the guest.
exc64_common:
    pushq %rax
    pushq %rbx
    movq 16(%rsp), %rax
    cmpq $6, %rax
    jne .Lexc64_fatal
    movq 32(%rsp), %rbx
    cmpb $0x0f, (%rbx)
    jne .Lexc64_fatal
    cmpb $0x01, 1(%rbx)
    jne .Lexc64_fatal
    cmpb $0xc1, 2(%rbx)
    jne .Lexc64_fatal
    incl ud_vmcall_count
    addq $3, 32(%rsp)              # skip vmcall
    popq %rbx
    popq %rax
    addq $16, %rsp                 # vector and error code
    iretq
.Lexc64_fatal:
    incl fail_count
    movq $str_exc, %rsi
    call puts64
    movq 16(%rsp), %rax
    call puthex64
    movq $str_exc_rip, %rsi
    call puts64
    movq 32(%rsp), %rax
    call puthex64
    movq $str_exc_err, %rsi
    call puts64
    movq 24(%rsp), %rax
    call puthex64
    movq $str_nl, %rsi
    call puts64
    jmp finish64
