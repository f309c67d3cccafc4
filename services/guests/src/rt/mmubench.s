# The shadow-MMU benchmark shared by guest-mmubench64 (4-level paging, long mode),
# guest-mmubenchpae (PAE) and guest-mmubench32 (2-level): the layout, the command line, the
# 32-bit start and the measurements. AT&T syntax; no curly braces (a format-string template of
# global_asm!). Measured with rdtsc: in Bochs (`clock: sync=none`) the TSC counts instructions,
# so a figure is a deterministic path length.
#
# The including guest defines, before this file:
#   MB_LONG     1: mmub_main is 64-bit code (the 4-level guest), 0: 32-bit code
#   MB_MODE     3 (4-level, "64-bit"), 2 ("pae") or 1 ("2-level"): the mode= word of its lines
#   PTE_SHIFT   3 (8-byte entries) or 2 (4-byte entries)
#   LOW_SPAN    what the shared identity table pt_low maps (512 or 1024 entries of 4 KiB)
# and the page tables pt_low, pt_fresh (one page each) and pts_win (MAX_SPACES pages), which
# mmub_tables32 fills, plus the upper levels of MAX_SPACES address spaces whose roots it
# stores in cr3s. Then, paging on and in space 0, it calls mmub_main.
#
# Guest-physical layout (16 MiB of RAM):
#   1 MiB ..               the image (code, data, .bss with the stack and the page tables); it
#                          must end below LOW_SPAN (checked: "layout")
#   8 MiB + s * 4 KiB      space s's window page; its first dword holds TAG | s
#   12 MiB                 FRESH_PHYS: the one page behind every page of the fresh region
# Virtual, in every space: 0 .. LOW_SPAN identity-mapped with 4 KiB pages through the shared
# table pt_low (P | RW, supervisor); WIN_VA -> space s's window page through its own table
# pts_win + s * 4096; FRESH_VA .. + FRESH_PAGES pages -> FRESH_PHYS, all through the shared
# table pt_fresh (4 KiB pages, not accessed before the benchmark: each is shadowed by its own
# first touch).
#
# The multiboot command line (the image's name, then the VMM's VmConfig::cmdline; the name is
# skipped) holds the number of spaces of the workload: its first decimal number (e.g.
# "policy=kvm spaces=16"), 0 or 2 .. MAX_SPACES; it is echoed verbatim in every result line, so it can carry tags for whoever reads them.
#   spaces=0   the micro-benchmarks, each a line
#              "mmubench: mode=M <cmdline> op=OP median=N mean=N min=N n=N":
#     first_touch  a write to a fresh page of the fresh region (mapped by the guest, not yet
#                  shadowed: one shadow #PF round trip through the MMU service), FT_SAMPLES
#                  pages after one that builds the region's shadow tables
#     cr3_hit      `mov cr3` ping-pong between spaces 0 and 1 (the target's root is the most
#                  recent previous root), HIT_SAMPLES loads; the window is read after each
#     cr3_miss     `mov cr3` round-robin over all MAX_SPACES spaces (more than the default
#                  prev_roots + 1 = 9 roots: with LRU every load misses), MISS_SAMPLES loads after
#                  one warm-up round; the window is read after each
#   spaces=N   the workload only: SWITCHES loads of CR3 round-robin over spaces 0 .. N-1
#              (starting in space 0), each followed by a read of the window page; one line
#              "mmubench: mode=M <cmdline> op=switch_touch median=N mean=N min=N n=SWITCHES"
#              timing `mov cr3` plus that read. The hit rate is the MMU's to count: one run
#              per N, so its prev_roots counters hold nothing else (the setup adds the load
#              that turns paging on, a miss).
# A timed sample is `rdtsc; <op>; rdtsc` (the low dwords subtracted); samples are sorted for
# the median (the upper one: s[n / 2]) and the minimum; the mean is the sum / n, rounded down.
# Checks: "cmdline" (a number, 0 or 2 .. MAX_SPACES), "layout", "tags" (every window read
# shows TAG | s of the space CR3 selects), "first-touch" (the fresh pages alias FRESH_PHYS).

    .ifndef MB_LONG
    .error "define MB_LONG, MB_MODE, PTE_SHIFT and LOW_SPAN before including mmubench.s"
    .endif

    .set MAX_SPACES, 16            # a power of two (the round-robin masks with it)
    .set WIN_VA, 0x40000000
    .set WIN_PHYS, 0x800000
    .set FRESH_VA, 0x40400000      # 4 MiB above WIN_VA: its own table in every paging mode
    .set FRESH_PHYS, 0xc00000
    .set TAG, 0x5a000000
    .set FT_SAMPLES, 256
    .set FRESH_PAGES, FT_SAMPLES + 1
    .set HIT_SAMPLES, 256          # even: ping-pong ends in space 0
    .set MISS_SAMPLES, 64          # 4 rounds over the 16 spaces
    .set SWITCHES, 400
    .set MAX_SAMPLES, 512
    .set CMDLINE_MAX, 64

    .section .data.mmubench, "aw"
    .balign 4
mb_spaces:      .long 0            # N from the command line
mb_errors:      .long 0            # wrong tags read through a window
mb_cmdline:     .skip CMDLINE_MAX + 1  # the command line, NUL-terminated (cut at CMDLINE_MAX)

    .section .bss.mmubench, "aw", @nobits
    .balign 8
cr3s:       .skip 8 * MAX_SPACES   # space s: its CR3 (filled by the guest)
samples:    .skip 4 * MAX_SAMPLES

    .section .rodata.mmubench, "a"
mb_hello:       .asciz "hello: shadow MMU benchmark, command line \""
mb_hello_end:   .asciz "\"\n"
mb_prefix:      .asciz "mmubench: mode="
    .if MB_MODE == 3
mb_mode_name:   .asciz "64-bit"
    .elseif MB_MODE == 2
mb_mode_name:   .asciz "pae"
    .else
mb_mode_name:   .asciz "2-level"
    .endif
mb_op:          .asciz " op="
mb_median:      .asciz " median="
mb_mean:        .asciz " mean="
mb_min:         .asciz " min="
mb_n:           .asciz " n="
op_first_touch: .asciz "first_touch"
op_cr3_hit:     .asciz "cr3_hit"
op_cr3_miss:    .asciz "cr3_miss"
op_switch:      .asciz "switch_touch"
name_cmdline:   .asciz "cmdline"
name_layout:    .asciz "layout"
name_tags:      .asciz "tags"
name_fresh:     .asciz "first-touch"
det_cmdline:    .asciz "no number of spaces (0 or 2 .. 16) on the command line, read"
det_layout:     .asciz "the image ends beyond the identity table's span, at"
det_tags:       .asciz "wrong tags read through the window:"
det_fresh:      .asciz "the fresh pages do not alias one page, read"

    .section .text.mmubench32, "ax"
    .code32
# mmub_start32 (paging off): copy the command line, print the hello line, parse N and check
# it ("cmdline"), check the layout, tag the window pages and zero FRESH_PHYS. Then fill the
# shared tables: pt_low (identity, P | RW), pt_fresh (FRESH_PAGES entries -> FRESH_PHYS) and
# each space's window table (entry 0 -> its window page). Clobbers nothing.
mmub_start32:
    pushal
    movl mb_info, %ebx
    testl $4, (%ebx)               # flags bit 2: cmdline
    jz 2f
    movl 16(%ebx), %esi
    # The first word is the image's file name (as a multiboot loader gives it): skip it and
    # the blanks after it; the rest is the benchmark's own command line.
6:  movb (%esi), %al
    testb %al, %al
    jz 8f
    cmpb $0x20, %al
    je 7f
    incl %esi
    jmp 6b
7:  incl %esi
    cmpb $0x20, (%esi)
    je 7b
8:  movl $mb_cmdline, %edi
    movl $CMDLINE_MAX, %ecx
1:  movb (%esi), %al
    testb %al, %al
    jz 2f
    movb %al, (%edi)
    incl %esi
    incl %edi
    decl %ecx
    jnz 1b
2:  movl $mb_hello, %esi
    call puts32
    movl $mb_cmdline, %esi
    call puts32
    movl $mb_hello_end, %esi
    call puts32

    # cmdline: the first decimal number, 0 or 2 .. MAX_SPACES
    movl $mb_cmdline, %esi
1:  movzbl (%esi), %eax
    testl %eax, %eax
    jz .Lmb_no_number
    subl $0x30, %eax
    cmpl $9, %eax
    jbe 2f
    incl %esi
    jmp 1b
2:  xorl %edx, %edx                # the number
3:  movzbl (%esi), %eax
    subl $0x30, %eax
    cmpl $9, %eax
    ja 4f
    imull $10, %edx
    addl %eax, %edx
    cmpl $1000, %edx
    ja .Lmb_no_number
    incl %esi
    jmp 3b
4:  movl %edx, mb_spaces
    xorl %eax, %eax
    testl %edx, %edx
    jz 5f
    cmpl $2, %edx
    jb .Lmb_bad_number
    cmpl $MAX_SPACES, %edx
    jbe 5f
.Lmb_bad_number:
    movl $0, mb_spaces
.Lmb_no_number:
    movl $1, %eax
5:  movl $name_cmdline, %esi
    movl $det_cmdline, %edi
    call report32_val

    # layout: code, data, stack and tables all lie in the span of pt_low
    movl $__image_end, %edx
    xorl %eax, %eax
    cmpl $LOW_SPAN, %edx
    seta %al
    movl $name_layout, %esi
    movl $det_layout, %edi
    call report32_val

    # Window pages: zeroed, the first dword TAG | s. FRESH_PHYS zeroed.
    movl $WIN_PHYS, %edi
    movl $MAX_SPACES * 4096 / 4, %ecx
    xorl %eax, %eax
    rep stosl
    movl $FRESH_PHYS, %edi
    movl $4096 / 4, %ecx
    rep stosl
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    orl $TAG, %eax
    movl %ecx, %edx
    shll $12, %edx
    movl %eax, WIN_PHYS(%edx)
    incl %ecx
    cmpl $MAX_SPACES, %ecx
    jb 1b

    # pt_low: entry j maps page j, P | RW (supervisor).
    movl $pt_low, %edi
    movl $0x3, %eax
    movl $LOW_SPAN / 4096, %ecx
1:  movl %eax, (%edi)
    addl $4096, %eax
    addl $1 << PTE_SHIFT, %edi
    decl %ecx
    jnz 1b
    # pt_fresh: FRESH_PAGES entries, all FRESH_PHYS | P | RW.
    movl $pt_fresh, %edi
    movl $FRESH_PHYS | 3, %eax
    movl $FRESH_PAGES, %ecx
1:  movl %eax, (%edi)
    addl $1 << PTE_SHIFT, %edi
    decl %ecx
    jnz 1b
    # Window tables: space s's entry 0 -> WIN_PHYS + s * 4096 | P | RW.
    xorl %ecx, %ecx
1:  movl %ecx, %edx
    shll $12, %edx
    leal WIN_PHYS + 3(%edx), %eax
    movl %eax, pts_win(%edx)
    incl %ecx
    cmpl $MAX_SPACES, %ecx
    jb 1b
    popal
    ret

# The measurements, in the guest's mode. Only 32-bit registers are named: in 64-bit mode
# their writes zero-extend, and every address is below 2 GiB.
    .macro MB_CALL name
    .if MB_LONG
    call \name\()64
    .else
    call \name\()32
    .endif
    .endm

# report32_val / report64_val: EAX = 0 ok, ESI = name, EDI = detail, EDX = value.
    .macro MB_REPORT
    .if MB_LONG
    call report64_val
    .else
    call report32_val
    .endif
    .endm

# CR3 = ESI (zero-extended in 64-bit mode).
    .macro MB_SET_CR3_ESI
    .if MB_LONG
    movq %rsi, %cr3
    .else
    movl %esi, %cr3
    .endif
    .endm

    .section .text.mmubench, "ax"
    .if MB_LONG
    .code64
    .else
    .code32
    .endif
# The timed loops share one code page, so the first sample does not take a fault on a fetch.
    .balign 4096
# mmub_main: paging on, in space 0. The micro-benchmarks (N = 0) or the workload (N > 0), the
# "tags" check (and "first-touch"), then returns. Clobbers every register.
mmub_main:
    cmpl $0, mb_spaces
    jne .Lmb_workload

    # first_touch: page 0 builds the fresh region's shadow tables; pages 1 .. FT_SAMPLES are
    # each written once, timed.
    movl $FRESH_VA, %edi
    movl $0xffffffff, (%edi)
    xorl %ecx, %ecx
1:  addl $4096, %edi
    rdtsc
    movl %eax, %ebp
    movl %ecx, (%edi)
    rdtsc
    subl %ebp, %eax
    movl %eax, samples(,%ecx,4)
    incl %ecx
    cmpl $FT_SAMPLES, %ecx
    jb 1b
    movl $op_first_touch, %esi
    movl $FT_SAMPLES, %ecx
    call mmub_stats
    # first-touch: page 0 of the region shows the last value written (they alias one page)
    movl FRESH_VA, %edx
    xorl %eax, %eax
    cmpl $FT_SAMPLES - 1, %edx
    setne %al
    movl $name_fresh, %esi
    movl $det_fresh, %edi
    MB_REPORT

    # cr3_hit: spaces 0 and 1 visited twice, then HIT_SAMPLES timed loads alternating 1, 0, ...
    movl $1, %ebx
    call mmub_visit
    xorl %ebx, %ebx
    call mmub_visit
    movl $1, %ebx
    call mmub_visit
    xorl %ebx, %ebx
    call mmub_visit
    xorl %ecx, %ecx
1:  movl %ecx, %ebx
    andl $1, %ebx
    xorl $1, %ebx                  # 1, 0, 1, ...
    movl cr3s(,%ebx,8), %esi
    rdtsc
    movl %eax, %ebp
    MB_SET_CR3_ESI
    rdtsc
    subl %ebp, %eax
    movl %eax, samples(,%ecx,4)
    call mmub_check_window
    incl %ecx
    cmpl $HIT_SAMPLES, %ecx
    jb 1b
    movl $op_cr3_hit, %esi
    movl $HIT_SAMPLES, %ecx
    call mmub_stats

    # cr3_miss: one round over every space (1 .. 15, 0), then MISS_SAMPLES timed loads on.
    movl $1, %ebx
1:  call mmub_visit
    incl %ebx
    andl $MAX_SPACES - 1, %ebx
    jnz 1b
    call mmub_visit                # space 0
    xorl %ecx, %ecx
1:  incl %ebx
    andl $MAX_SPACES - 1, %ebx
    movl cr3s(,%ebx,8), %esi
    rdtsc
    movl %eax, %ebp
    MB_SET_CR3_ESI
    rdtsc
    subl %ebp, %eax
    movl %eax, samples(,%ecx,4)
    call mmub_check_window
    incl %ecx
    cmpl $MISS_SAMPLES, %ecx
    jb 1b
    movl $op_cr3_miss, %esi
    movl $MISS_SAMPLES, %ecx
    call mmub_stats
    jmp .Lmb_tags

.Lmb_workload:
    # SWITCHES timed `mov cr3; read the window`, round-robin over spaces 0 .. N-1 from space 0.
    xorl %ebx, %ebx
    xorl %ecx, %ecx
1:  incl %ebx
    cmpl mb_spaces, %ebx
    jb 2f
    xorl %ebx, %ebx
2:  movl cr3s(,%ebx,8), %esi
    rdtsc
    movl %eax, %ebp
    MB_SET_CR3_ESI
    movl WIN_VA, %edi
    rdtsc
    subl %ebp, %eax
    movl %eax, samples(,%ecx,4)
    movl %ebx, %eax
    orl $TAG, %eax
    cmpl %eax, %edi
    je 3f
    incl mb_errors
3:  incl %ecx
    cmpl $SWITCHES, %ecx
    jb 1b
    movl $op_switch, %esi
    movl $SWITCHES, %ecx
    call mmub_stats

.Lmb_tags:
    movl mb_errors, %edx
    xorl %eax, %eax
    testl %edx, %edx
    setnz %al
    movl $name_tags, %esi
    movl $det_tags, %edi
    MB_REPORT
    ret

# mmub_visit: CR3 = space EBX's root, then its window read and checked. Preserves registers
# but ESI.
mmub_visit:
    movl cr3s(,%ebx,8), %esi
    MB_SET_CR3_ESI
# mmub_check_window: the window holds TAG | EBX, else mb_errors is counted. Preserves
# registers but ESI.
mmub_check_window:
    movl WIN_VA, %esi
    xorl %ebx, %esi
    cmpl $TAG, %esi
    je 1f
    incl mb_errors
1:  ret

# mmub_stats: ECX samples at `samples` (ECX >= 1): the mean, then sorted (insertion sort) for
# the minimum and the median; prints "mmubench: mode=M <cmdline> op=<ESI> median=N mean=N
# min=N n=N". Clobbers every register.
mmub_stats:
    movl %ecx, %ebp                # n
    xorl %eax, %eax
    xorl %edx, %edx
1:  addl samples - 4(,%ecx,4), %eax
    adcl $0, %edx
    decl %ecx
    jnz 1b
    divl %ebp
    movl %eax, %edi                # mean
    movl $1, %ecx                  # i
1:  cmpl %ebp, %ecx
    jae 4f
    movl samples(,%ecx,4), %eax    # key = s[i]
    movl %ecx, %edx                # j = i
2:  testl %edx, %edx
    jz 3f
    movl samples - 4(,%edx,4), %ebx
    cmpl %eax, %ebx
    jbe 3f
    movl %ebx, samples(,%edx,4)    # shift up
    decl %edx
    jmp 2b
3:  movl %eax, samples(,%edx,4)
    incl %ecx
    jmp 1b
4:  movl %esi, %ebx                # the op's name
    movl $mb_prefix, %esi
    MB_CALL puts
    movl $mb_mode_name, %esi
    MB_CALL puts
    movl $str_space, %esi
    MB_CALL puts
    movl $mb_cmdline, %esi
    MB_CALL puts
    movl $mb_op, %esi
    MB_CALL puts
    movl %ebx, %esi
    MB_CALL puts
    movl $mb_median, %esi
    MB_CALL puts
    movl %ebp, %ecx
    shrl $1, %ecx
    movl samples(,%ecx,4), %eax
    MB_CALL putdec
    movl $mb_mean, %esi
    MB_CALL puts
    movl %edi, %eax
    MB_CALL putdec
    movl $mb_min, %esi
    MB_CALL puts
    movl samples, %eax
    MB_CALL putdec
    movl $mb_n, %esi
    MB_CALL puts
    movl %ebp, %eax
    MB_CALL putdec
    movl $str_nl, %esi
    MB_CALL puts
    ret
    .code64
