/*
 * An example multiboot (v1) kernel written outside Umbra's own test guests, built with the
 * system's `as` and `ld` (`make example-kernel` -> build/example-kernel.elf) and run with
 *
 *     make run GUEST=build/example-kernel.elf CMDLINE="hello world"
 *
 * It is what any small hobby kernel does first: it checks the loader's magic, prints on COM1
 * (port 0x3f8, polling the line status register like a 16550 driver), reads its multiboot
 * information (flags, mem_lower/mem_upper, the command line, the memory map) and prints it,
 * writes a pattern to the last page of the highest RAM region of the memory map and reads it
 * back, and ends by writing its status to QEMU's isa-debug-exit port (0xf4): 0 when every
 * check passed (QEMU exits with (0 << 1) | 1), 1 otherwise.
 *
 * 32-bit protected mode, paging off, as a multiboot loader leaves it (EAX = 0x2BADB002,
 * EBX = the physical address of the information block).
 */

    .set MB_MAGIC,      0x1BADB002
    .set MB_FLAGS,      0x3              /* page-align modules, give memory information */
    .set MB_CHECKSUM,   -(MB_MAGIC + MB_FLAGS)
    .set LOADER_MAGIC,  0x2BADB002
    .set COM1,          0x3f8
    .set DEBUG_EXIT,    0xf4
    .set PATTERN,       0x5a17c0de

    .section .multiboot, "a"
    .align 4
    .long MB_MAGIC, MB_FLAGS, MB_CHECKSUM

    .section .bss
    .align 16
stack:  .skip 16384
stack_top:
info:   .long 0                          /* the multiboot information's address */
failed: .long 0                          /* checks that failed */
top_base: .long 0                        /* the highest available region: base, end (low dwords) */
top_end:  .long 0

    .section .rodata
s_hello:    .asciz "example-kernel: hello from a multiboot kernel built with as and ld\n"
s_magic:    .asciz "example-kernel: FAIL: EAX is not the multiboot magic 0x2BADB002, it is 0x"
s_flags:    .asciz "example-kernel: multiboot flags 0x"
s_mem:      .asciz "example-kernel: mem_lower "
s_upper:    .asciz " KiB, mem_upper "
s_kib:      .asciz " KiB\n"
s_cmdline:  .asciz "example-kernel: command line \""
s_quote_nl: .asciz "\"\n"
s_nocmd:    .asciz "example-kernel: FAIL: no command line (flags bit 2 clear)\n"
s_nomem:    .asciz "example-kernel: FAIL: no mem_lower/mem_upper (flags bit 0 clear)\n"
s_nommap:   .asciz "example-kernel: FAIL: no memory map (flags bit 6 clear)\n"
s_mmap:     .asciz "example-kernel: mmap base 0x"
s_len:      .asciz " length 0x"
s_type:     .asciz " type "
s_total:    .asciz "example-kernel: available RAM "
s_mismatch: .asciz "example-kernel: FAIL: the memory map's RAM above 1 MiB differs from mem_upper\n"
s_touch:    .asciz "example-kernel: last RAM page 0x"
s_touch_ok: .asciz " written and read back\n"
s_touch_bad:.asciz " FAIL: read back differs\n"
s_pass:     .asciz "example-kernel: all checks passed; writing 0 to port 0xf4\n"
s_fail:     .asciz "example-kernel: some checks FAILED; writing 1 to port 0xf4\n"
s_nl:       .asciz "\n"
hexdigits:  .ascii "0123456789abcdef"

    .text
    .code32
    .globl _start
_start:
    cli
    movl $stack_top, %esp
    movl %ebx, info
    movl %eax, %edi
    call serial_init
    movl $s_hello, %esi
    call puts

    cmpl $LOADER_MAGIC, %edi
    je 1f
    movl $s_magic, %esi
    call puts
    movl %edi, %eax
    call puthex32
    call newline
    incl failed
    jmp finish
1:
    movl info, %ebx
    movl $s_flags, %esi
    call puts
    movl (%ebx), %eax
    call puthex32
    call newline

    /* mem_lower / mem_upper (flags bit 0) */
    testl $1, (%ebx)
    jnz 2f
    movl $s_nomem, %esi
    call puts
    incl failed
    jmp 3f
2:  movl $s_mem, %esi
    call puts
    movl 4(%ebx), %eax
    call putdec
    movl $s_upper, %esi
    call puts
    movl 8(%ebx), %eax
    call putdec
    movl $s_kib, %esi
    call puts
3:
    /* the command line (flags bit 2) */
    testl $4, (%ebx)
    jnz 4f
    movl $s_nocmd, %esi
    call puts
    incl failed
    jmp 5f
4:  movl $s_cmdline, %esi
    call puts
    movl 16(%ebx), %esi
    call puts
    movl $s_quote_nl, %esi
    call puts
5:
    /* the memory map (flags bit 6): print each entry, add up the available RAM */
    testl $0x40, (%ebx)
    jnz 6f
    movl $s_nommap, %esi
    call puts
    incl failed
    jmp finish
6:  movl 48(%ebx), %ebp              /* the entry */
    movl 44(%ebx), %ecx
    addl %ebp, %ecx                  /* the map's end */
    xorl %edx, %edx                  /* available KiB in total */
    xorl %edi, %edi                  /* available KiB from 1 MiB up */
7:  cmpl %ecx, %ebp
    jae 9f
    pushl %ecx
    pushl %edx
    movl $s_mmap, %esi
    call puts
    movl 8(%ebp), %eax               /* base, high dword */
    call puthex32
    movl 4(%ebp), %eax               /* base, low dword */
    call puthex32
    movl $s_len, %esi
    call puts
    movl 16(%ebp), %eax
    call puthex32
    movl 12(%ebp), %eax
    call puthex32
    movl $s_type, %esi
    call puts
    movl 20(%ebp), %eax
    call putdec
    call newline
    popl %edx
    popl %ecx
    cmpl $1, 20(%ebp)
    jne 8f
    movl 12(%ebp), %eax              /* length / 1024 (regions below 4 GiB) */
    shrl $10, %eax
    addl %eax, %edx
    cmpl $0x100000, 4(%ebp)
    jb 8f
    addl %eax, %edi
    movl 4(%ebp), %eax               /* remember the highest region */
    cmpl top_base, %eax
    jb 8f
    movl %eax, top_base
    addl 12(%ebp), %eax
    movl %eax, top_end
8:  addl (%ebp), %ebp                /* size does not count itself */
    addl $4, %ebp
    jmp 7b
9:
    movl $s_total, %esi
    call puts
    movl %edx, %eax
    call putdec
    movl $s_kib, %esi
    call puts
    /* The map must agree with mem_upper: RAM from 1 MiB up, in KiB. */
    cmpl 8(%ebx), %edi
    je 10f
    movl $s_mismatch, %esi
    call puts
    incl failed
10:
    /* Touch the last page of the highest region: RAM must be there, really. */
    movl top_end, %edi
    testl %edi, %edi
    jz finish
    subl $4096, %edi
    movl $s_touch, %esi
    call puts
    movl %edi, %eax
    call puthex32
    movl $PATTERN, (%edi)
    movl $~PATTERN, 4092(%edi)
    cmpl $PATTERN, (%edi)
    jne 11f
    cmpl $~PATTERN, 4092(%edi)
    jne 11f
    movl $s_touch_ok, %esi
    call puts
    jmp finish
11: movl $s_touch_bad, %esi
    call puts
    incl failed

finish:
    cmpl $0, failed
    jne 12f
    movl $s_pass, %esi
    call puts
    xorl %eax, %eax
    jmp 13f
12: movl $s_fail, %esi
    call puts
    movl $1, %eax
13: movw $DEBUG_EXIT, %dx
    outl %eax, %dx
    /* Not on a machine with the device: stop here. */
14: hlt
    jmp 14b

/* COM1: 115200 8N1, FIFOs on. */
serial_init:
    movw $COM1 + 1, %dx
    movb $0x00, %al                  /* no interrupts */
    outb %al, %dx
    movw $COM1 + 3, %dx
    movb $0x80, %al                  /* DLAB */
    outb %al, %dx
    movw $COM1 + 0, %dx
    movb $0x01, %al                  /* divisor 1: 115200 */
    outb %al, %dx
    movw $COM1 + 1, %dx
    movb $0x00, %al
    outb %al, %dx
    movw $COM1 + 3, %dx
    movb $0x03, %al                  /* 8N1 */
    outb %al, %dx
    movw $COM1 + 2, %dx
    movb $0xc7, %al                  /* FIFOs on, cleared */
    outb %al, %dx
    ret

/* putc(AL): waits for the transmitter holding register to be empty (LSR bit 5). */
putc:
    pushl %edx
    pushl %eax
    movw $COM1 + 5, %dx
1:  inb %dx, %al
    testb $0x20, %al
    jz 1b
    popl %eax
    movw $COM1, %dx
    outb %al, %dx
    popl %edx
    ret

/* puts(ESI): a NUL-terminated string. */
puts:
    pushl %eax
    pushl %esi
1:  movb (%esi), %al
    testb %al, %al
    jz 2f
    call putc
    incl %esi
    jmp 1b
2:  popl %esi
    popl %eax
    ret

newline:
    pushl %esi
    movl $s_nl, %esi
    call puts
    popl %esi
    ret

/* puthex32(EAX): eight hex digits. */
puthex32:
    pushl %eax
    pushl %ebx
    pushl %ecx
    movl %eax, %ebx
    movl $8, %ecx
1:  roll $4, %ebx
    movl %ebx, %eax
    andl $0xf, %eax
    movb hexdigits(%eax), %al
    call putc
    loop 1b
    popl %ecx
    popl %ebx
    popl %eax
    ret

/* putdec(EAX): unsigned decimal. */
putdec:
    pushl %eax
    pushl %ebx
    pushl %ecx
    pushl %edx
    movl $10, %ebx
    xorl %ecx, %ecx
1:  xorl %edx, %edx
    divl %ebx
    pushl %edx
    incl %ecx
    testl %eax, %eax
    jnz 1b
2:  popl %eax
    addb $'0', %al
    call putc
    loop 2b
    popl %edx
    popl %ecx
    popl %ebx
    popl %eax
    ret
