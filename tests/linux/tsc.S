# /bin/tsc of the test initramfs: prints `umbra-init: tsc <decimal>` (the CPU's time-stamp
# counter, read once with RDTSC) on standard output in one write, then exits 0 (1 when the
# write fails). No libc: Linux's write and exit system calls only.
#
#   as --64 --defsym X86_64=1 -o tsc.o tsc.S && ld -static -m elf_x86_64 -o tsc tsc.o
#   as --32 -o tsc.o tsc.S && ld -static -m elf_i386 -o tsc tsc.o
#
# In Bochs with `clock: sync=none` the TSC counts instructions since power-on, so the figure
# is the path length from power-on to the init's first line.

        .section .rodata
prefix:
        .ascii  "umbra-init: tsc "
prefix_end:
        .set    PREFIX_LEN, prefix_end - prefix

        .bss
        # The line is built backwards from its end: the newline, the digits (at most 20 for
        # 64 bits), then the prefix.
        .lcomm  line, 64
        .set    line_end, line + 64

        .text
        .globl  _start
_start:
        rdtsc                           # edx:eax = TSC
.ifdef X86_64
        shl     $32, %rdx
        or      %rdx, %rax              # rax = TSC
        lea     line_end(%rip), %rdi    # rdi = start of the text built so far
        dec     %rdi
        movb    $'\n', (%rdi)
        mov     $10, %ecx
1:      xor     %edx, %edx
        div     %rcx                    # rax = rax / 10, rdx = digit
        add     $'0', %dl
        dec     %rdi
        mov     %dl, (%rdi)
        test    %rax, %rax
        jnz     1b
        lea     prefix_end(%rip), %rsi
        mov     $PREFIX_LEN, %ecx
2:      dec     %rsi
        dec     %rdi
        mov     (%rsi), %al
        mov     %al, (%rdi)
        loop    2b
        lea     line_end(%rip), %rdx
        sub     %rdi, %rdx              # rdx = length
        mov     %rdi, %rsi              # rsi = buffer
        mov     $1, %edi                # fd 1
        mov     %rdx, %rbx
        mov     $1, %eax                # write
        syscall
        xor     %edi, %edi
        cmp     %rbx, %rax
        setne   %dil                    # status 1 unless the whole line was written
        mov     $60, %eax               # exit
        syscall
.else
        mov     %edx, %ebx              # ebx = high half, esi = low half
        mov     %eax, %esi
        mov     $line_end, %edi
        dec     %edi
        movb    $'\n', (%edi)
        mov     $10, %ecx
1:      mov     %ebx, %eax              # 64-bit / 10 in two 32-bit divisions
        xor     %edx, %edx
        div     %ecx
        mov     %eax, %ebx              # high quotient; edx = high remainder
        mov     %esi, %eax
        div     %ecx                    # (remainder:low) / 10
        mov     %eax, %esi
        add     $'0', %dl
        dec     %edi
        mov     %dl, (%edi)
        mov     %ebx, %eax
        or      %esi, %eax
        jnz     1b
        mov     $prefix_end, %esi
        mov     $PREFIX_LEN, %ecx
2:      dec     %esi
        dec     %edi
        mov     (%esi), %al
        mov     %al, (%edi)
        loop    2b
        mov     $line_end, %edx
        sub     %edi, %edx              # edx = length
        mov     %edi, %ecx              # ecx = buffer
        mov     $1, %ebx                # fd 1
        mov     %edx, %esi
        mov     $4, %eax                # write
        int     $0x80
        xor     %ebx, %ebx
        cmp     %esi, %eax
        setne   %bl                     # status 1 unless the whole line was written
        mov     $1, %eax                # exit
        int     $0x80
.endif

        .section .note.GNU-stack, "", @progbits
