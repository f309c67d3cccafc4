# The 64-bit workload of guest-spaces64 (4-level paging, long mode), after rt/spaces.s and
# rt64.s: the same checks as rt/spaces32.s (whose header describes them), with qwords in the
# window pages (the tag is the last qword). AT&T syntax, no curly braces (a format-string
# template of global_asm!).
#
# The including guest defines the page tables pt_win (N_SPACES pages: space s's window table
# at pt_win + s * 4096, 8-byte entries) and pt_low (the shared 4 KiB identity table of
# 0 .. LOW_SPAN, mapping its own page), fills cr3s, and, in 64-bit mode with paging and
# CR0.WP on, calls pf_install64 once (after idt64_install) and then spaces_main64.

    .macro PF_EXPECT64 resume
    movq $\resume, pf_resume
    .endm

    .section .text.spaces64, "ax"
    .code64

# pf_install64: IDT vector 14 -> pf64 (interrupt gate, DPL 0, IST 0, the current CS).
pf_install64:
    sidt idtr_scratch
    movq idtr_scratch + 2, %rbx    # IDT base
    movq $pf64, %rdx
    xorl %eax, %eax
    movw %cs, %ax
    shll $16, %eax
    movw %dx, %ax                  # selector | offset 15:0
    movl %eax, 14 * 16(%rbx)
    movl %edx, %eax
    andl $0xffff0000, %eax
    orl $0x00008e00, %eax          # offset 31:16 | P | DPL 0 | interrupt gate
    movl %eax, 14 * 16 + 4(%rbx)
    shrq $32, %rdx
    movl %edx, 14 * 16 + 8(%rbx)   # offset 63:32
    movl $0, 14 * 16 + 12(%rbx)
    ret

# #PF. Frame after the push: 0(%rsp) RAX, 8 error code, 16 RIP, 24 CS, 32 RFLAGS, 40 RSP, 48 SS.
pf64:
    pushq %rax
    movq %cr2, %rax
    movq %rax, pf_cr2
    movq 8(%rsp), %rax
    movq %rax, pf_err
    movq 16(%rsp), %rax
    movq %rax, pf_ip
    incl pf_count
    movq pf_resume, %rax
    testq %rax, %rax
    jz .Lpf64_unexpected
    movq %rax, 16(%rsp)            # return to the resume address
    movq $0, pf_resume
    popq %rax
    addq $8, %rsp                  # error code
    iretq
.Lpf64_unexpected:
    incl fail_count
    movq $msg_pf_unexpected, %rsi
    call puts64
    movq pf_cr2, %rax
    call puthex64
    movq $str_exc_rip, %rsi
    call puts64
    movq pf_ip, %rax
    call puthex64
    movq $str_exc_err, %rsi
    call puts64
    movq pf_err, %rax
    call puthex64
    movq $str_nl, %rsi
    call puts64
    jmp finish64

# pf_check64: after an access that had to fault (PF_EXPECT64). RCX = expected CR2, RDX =
# expected error code. RAX = 0 if exactly that #PF was taken, else RAX = 1, RDI = detail,
# RDX = what was seen.
pf_check64:
    cmpq $0, pf_resume
    je 1f
    movq $0, pf_resume             # no fault: disarm
    movq $det_pf_none, %rdi
    movl pf_count, %edx
    movl $1, %eax
    ret
1:  movq pf_cr2, %rax
    cmpq %rcx, %rax
    je 2f
    movq %rax, %rdx
    movq $det_pf_cr2, %rdi
    movl $1, %eax
    ret
2:  movq pf_err, %rax
    cmpq %rdx, %rax
    je 3f
    movq %rax, %rdx
    movq $det_pf_err, %rdi
    movl $1, %eax
    ret
3:  xorl %eax, %eax
    ret

# set_space64: CR3 = space RBX's root. set_wp64: CR0.WP = RAX (0 or 1). Both preserve all.
set_space64:
    pushq %rax
    movq cr3s(,%rbx,8), %rax
    movq %rax, %cr3
    popq %rax
    ret
set_wp64:
    pushq %rcx
    movq %cr0, %rcx
    andq $~CR0_WP, %rcx
    testq %rax, %rax
    jz 1f
    orq $CR0_WP, %rcx
1:  movq %rcx, %cr0
    popq %rcx
    ret

# spaces_main64: every check, in the order of rt/spaces32.s. Clobbers every general register
# but RSP (so do the tests below).
spaces_main64:
    call tag_windows64
    call switch_test64
    call verify_spaces64
    call map_test64
    call unmap_test64
    call readonly_test64
    call wpoff_test64
    call remap_test64
    call selfref_test64
    ret

# tag_windows64: in each space, through its window, page i's last qword = TAG | s << 8 | i.
tag_windows64:
    xorl %ebx, %ebx
1:  call set_space64
    movl %ebx, %edx
    shll $8, %edx
    orl $TAG, %edx
    movq $WIN_VA + 0xff8, %rdi
    movl $WIN_PAGES, %ecx
2:  movq %rdx, (%rdi)
    incq %rdx
    addq $4096, %rdi
    decl %ecx
    jnz 2b
    incl %ebx
    cmpl $N_SPACES, %ebx
    jb 1b
    ret

# switch_test64: SWITCHES visits, space k mod N_SPACES on visit k. Visit k adds
# k * 0x9e3779b97f4a7c15 + i to qword (k mod 256) of window page i (never the tag) and to the
# space's checksum.
switch_test64:
    xorl %ebp, %ebp                # visit k
    xorl %ebx, %ebx                # space s
    movabsq $0x9e3779b97f4a7c15, %r8
.Lsw64_visit:
    call set_space64
    movl %ebp, %edi
    andl $255, %edi
    shll $3, %edi
    addq $WIN_VA, %rdi             # this visit's qword in window page 0
    movq %rbp, %rdx
    imulq %r8, %rdx
    xorl %ecx, %ecx                # page i
.Lsw64_page:
    leaq (%rdx,%rcx), %rax         # the value added to page i
    addq %rax, checksums(,%rbx,8)
    addq (%rdi), %rax
    movq %rax, (%rdi)
    cmpq %rax, (%rdi)
    je 1f
    incl sw_errors
1:  movq %rdi, %rsi
    orq $0xff8, %rsi               # the page's tag (the offset is below 0x800)
    movl %ebx, %eax
    shll $8, %eax
    orl %ecx, %eax
    orl $TAG, %eax
    cmpq %rax, (%rsi)
    je 2f
    incl sw_errors
2:  addq $4096, %rdi
    incl %ecx
    cmpl $WIN_PAGES, %ecx
    jb .Lsw64_page
    incl %ebx
    cmpl $N_SPACES, %ebx
    jb 3f
    xorl %ebx, %ebx
3:  incl %ebp
    cmpl $SWITCHES, %ebp
    jb .Lsw64_visit
    movl sw_errors, %edx
    xorl %eax, %eax
    testl %edx, %edx
    setnz %al
    movq $name_switch, %rsi
    movq $det_switch, %rdi
    jmp report64_val

# sum_window64: RSI = the first of WIN_PAGES pages of space RBX (window or identity address).
# RAX = the sum of qwords 0 .. 510 of every page, RDX = the number of wrong tags. Clobbers
# RCX, RSI, R9, R10.
sum_window64:
    xorl %eax, %eax
    xorl %edx, %edx
    xorl %r10d, %r10d              # page i
1:  xorl %ecx, %ecx
2:  addq (%rsi,%rcx,8), %rax
    incl %ecx
    cmpl $511, %ecx
    jb 2b
    movl %ebx, %r9d
    shll $8, %r9d
    orl %r10d, %r9d
    orl $TAG, %r9d
    cmpq %r9, 0xff8(%rsi)
    je 3f
    incl %edx
3:  addq $4096, %rsi
    incl %r10d
    cmpl $WIN_PAGES, %r10d
    jb 1b
    ret

# verify_spaces64: "spaceS" for every space S, in space S.
verify_spaces64:
    xorl %ebx, %ebx
.Lver64_space:
    call set_space64
    movq $WIN_VA, %rsi
    call sum_window64
    movq %rax, %r11                # window sum
    movq %rdx, %rbp                # wrong tags through the window
    movl %ebx, %esi
    imull $SPACE_STRIDE, %esi
    addl $WIN_PHYS, %esi
    call sum_window64              # through the identity map
    addq %rbp, %rdx
    movq $det_tags, %rdi
    testq %rdx, %rdx
    jnz .Lver64_fail
    movq $det_sum_phys, %rdi
    movq %rax, %rdx
    cmpq checksums(,%rbx,8), %rax
    jne .Lver64_fail
    movq $det_sum_win, %rdi
    movq %r11, %rdx
    cmpq checksums(,%rbx,8), %r11
    jne .Lver64_fail
    xorl %eax, %eax
    jmp .Lver64_report
.Lver64_fail:
    movl $1, %eax
.Lver64_report:
    movl %ebx, %ecx
    addb $0x30, %cl
    movb %cl, name_space_digit
    movq $name_space, %rsi
    call report64_val
    incl %ebx
    cmpl $N_SPACES, %ebx
    jb .Lver64_space
    ret

map_test64:
    movl $MAP_SPACE, %ebx
    call set_space64
    movq $EXTRA_MAP | 7, pt_win + MAP_SPACE * 4096 + MAP_PAGE * 8
    movabsq $0x4d41503030303030, %r8 # a pattern, and the pattern + 1 for the last qword
    leaq 1(%r8), %r9
    movq %r8, MAP_VA
    movq %r9, MAP_VA + 0xff8
    movq $det_data, %rdi
    movq MAP_VA, %rdx
    cmpq %r8, %rdx
    jne .Lmap64_fail
    movq MAP_VA + 0xff8, %rdx
    cmpq %r9, %rdx
    jne .Lmap64_fail
    movq $det_ident_data, %rdi
    movq EXTRA_MAP, %rdx
    cmpq %r8, %rdx
    jne .Lmap64_fail
    movq EXTRA_MAP + 0xff8, %rdx
    cmpq %r9, %rdx
    jne .Lmap64_fail
    # space 0 never mapped it: a read takes a not-present #PF (error code 0)
    xorl %ebx, %ebx
    call set_space64
    PF_EXPECT64 1f
    movq MAP_VA + 0x40, %rax
1:  movq $MAP_VA + 0x40, %rcx
    xorl %edx, %edx
    call pf_check64
    testq %rax, %rax
    jnz .Lmap64_report
    movl $MAP_SPACE, %ebx
    call set_space64
    movq $det_data, %rdi
    movq MAP_VA, %rdx
    cmpq %r8, %rdx
    jne .Lmap64_fail
    xorl %eax, %eax
    jmp .Lmap64_report
.Lmap64_fail:
    movl $1, %eax
.Lmap64_report:
    movq $name_map, %rsi
    jmp report64_val

unmap_test64:
    movl $UNMAP_SPACE, %ebx
    call set_space64
    movq UNMAP_VA + 0x20, %rbp     # its data; the translation is now cached
    andq $~1, pt_win + UNMAP_SPACE * 4096 + UNMAP_PAGE * 8
    invlpg UNMAP_VA
    PF_EXPECT64 1f
    movq UNMAP_VA + 0x10, %rax
1:  movq $UNMAP_VA + 0x10, %rcx
    movl $0, %edx                  # not present, read
    call pf_check64
    testq %rax, %rax
    jnz .Lunmap64_report
    PF_EXPECT64 1f
    movq $0x12345678, UNMAP_VA + 0x20
1:  movq $UNMAP_VA + 0x20, %rcx
    movl $2, %edx                  # not present, write
    call pf_check64
    testq %rax, %rax
    jnz .Lunmap64_report
    orq $1, pt_win + UNMAP_SPACE * 4096 + UNMAP_PAGE * 8
    movq $det_data, %rdi
    movq UNMAP_VA + 0x20, %rdx
    cmpq %rbp, %rdx
    jne .Lunmap64_fail
    movq UNMAP_VA + 0xff8, %rdx
    cmpq $TAG | UNMAP_SPACE << 8 | UNMAP_PAGE, %rdx
    jne .Lunmap64_fail
    xorl %eax, %eax
    jmp .Lunmap64_report
.Lunmap64_fail:
    movl $1, %eax
.Lunmap64_report:
    orq $1, pt_win + UNMAP_SPACE * 4096 + UNMAP_PAGE * 8
    movq $name_unmap, %rsi
    jmp report64_val

readonly_test64:
    movl $RO_SPACE, %ebx
    call set_space64
    movq $0x52573030, RO_VA + 0x30 # "RW00" while writable; the translation is now cached
    andq $~2, pt_win + RO_SPACE * 4096 + RO_PAGE * 8
    invlpg RO_VA
    movq $det_data, %rdi
    movq RO_VA + 0x30, %rdx
    cmpq $0x52573030, %rdx
    jne .Lro64_fail
    PF_EXPECT64 1f
    movq $0x524f3031, RO_VA + 0x30
1:  movq $RO_VA + 0x30, %rcx
    movl $3, %edx                  # protection, write
    call pf_check64
    testq %rax, %rax
    jnz .Lro64_report
    movq $det_data, %rdi
    movq RO_VA + 0x30, %rdx
    cmpq $0x52573030, %rdx
    jne .Lro64_fail
    xorl %eax, %eax
    jmp .Lro64_report
.Lro64_fail:
    movl $1, %eax
.Lro64_report:
    movq $name_readonly, %rsi
    jmp report64_val

# wpoff_test64: the page of readonly_test64 is still read-only.
wpoff_test64:
    movl $RO_SPACE, %ebx
    call set_space64
    xorl %eax, %eax
    call set_wp64
    movq $0x57503030, RO_VA + 0x30 # "WP00": goes through with CR0.WP = 0
    movl $1, %eax
    call set_wp64
    movq $det_data, %rdi
    movq RO_VA + 0x30, %rdx
    cmpq $0x57503030, %rdx
    jne .Lwp64_fail
    movq $det_ident_data, %rdi
    movq RO_PHYS + 0x30, %rdx
    cmpq $0x57503030, %rdx
    jne .Lwp64_fail
    movq $det_pte, %rdi
    movq pt_win + RO_SPACE * 4096 + RO_PAGE * 8, %rdx
    testq $2, %rdx                 # still read-only
    jnz .Lwp64_fail
    orq $2, pt_win + RO_SPACE * 4096 + RO_PAGE * 8
    invlpg RO_VA
    movq $0x57503031, RO_VA + 0x30 # CR0.WP = 1 and writable: no fault
    movq $det_ident_data, %rdi
    movq RO_PHYS + 0x30, %rdx
    cmpq $0x57503031, %rdx
    jne .Lwp64_fail
    xorl %eax, %eax
    jmp .Lwp64_report
.Lwp64_fail:
    movl $1, %eax
.Lwp64_report:
    movq $name_wpoff, %rsi
    jmp report64_val

remap_test64:
    movl $REMAP_SPACE, %ebx
    call set_space64
    movabsq $0x4e45575000000000, %r8 # "NEWP": the new page's contents, through the identity map
    leaq 1(%r8), %r9
    leaq 2(%r8), %r10
    movq %r8, EXTRA_REMAP
    movq %r9, EXTRA_REMAP + 0xff8
    movq REMAP_OLD + 0x40, %rbp    # the old page's qword 0x40
    movq REMAP_VA + 0xff8, %rax    # the old translation is now cached
    movq pt_win + REMAP_SPACE * 4096 + REMAP_PAGE * 8, %rax
    movq %rax, saved_pte
    movq $EXTRA_REMAP | 7, pt_win + REMAP_SPACE * 4096 + REMAP_PAGE * 8
    invlpg REMAP_VA
    movq $det_data, %rdi
    movq REMAP_VA, %rdx
    cmpq %r8, %rdx
    jne .Lremap64_fail
    movq REMAP_VA + 0xff8, %rdx
    cmpq %r9, %rdx
    jne .Lremap64_fail
    movq %r10, REMAP_VA + 0x40
    movq $det_ident_data, %rdi
    movq EXTRA_REMAP + 0x40, %rdx
    cmpq %r10, %rdx
    jne .Lremap64_fail
    movq $det_old_page, %rdi
    movq REMAP_OLD + 0x40, %rdx
    cmpq %rbp, %rdx
    jne .Lremap64_fail
    xorl %eax, %eax
    jmp .Lremap64_back
.Lremap64_fail:
    movl $1, %eax
.Lremap64_back:
    movq saved_pte, %rcx           # the old page again
    movq %rcx, pt_win + REMAP_SPACE * 4096 + REMAP_PAGE * 8
    invlpg REMAP_VA
    testq %rax, %rax
    jnz .Lremap64_report
    movq $det_data, %rdi
    movq REMAP_VA + 0xff8, %rdx
    cmpq $TAG | REMAP_SPACE << 8 | REMAP_PAGE, %rdx
    jne .Lremap64_fail2
    movq REMAP_VA + 0x40, %rdx
    cmpq %rbp, %rdx
    je .Lremap64_report
.Lremap64_fail2:
    movl $1, %eax
.Lremap64_report:
    movq $name_remap, %rsi
    jmp report64_val

selfref_test64:
    xorl %ebx, %ebx
    call set_space64
    movq $pt_low, %rbp
    shrq $12, %rbp
    shlq $3, %rbp
    addq $pt_low, %rbp             # RBP = the entry of pt_low mapping pt_low's own page
    movq $det_pte, %rdi
    movq (%rbp), %rdx
    movq %rdx, %rax
    andq $~0xffc, %rax
    cmpq $pt_low + 3, %rax         # that page, P | RW
    jne .Lself64_fail
    # Read-only, written through the mapping it defines; then INVLPG that page.
    andq $~2, (%rbp)
    invlpg (%rbp)
    xorl %ebx, %ebx
    jmp .Lself64_ro_in             # space 0 is loaded: no CR3 load (it would flush the TLB)
.Lself64_ro:
    call set_space64
.Lself64_ro_in:
    movq $det_pte, %rdi
    movq (%rbp), %rdx              # reads work and see R/W = 0
    testq $2, %rdx
    jnz .Lself64_fail
    PF_EXPECT64 1f
    orq $0x200, (%rbp)             # an available bit: harmless if it went through
1:  movq %rbp, %rcx
    movl $3, %edx                  # protection, write
    call pf_check64
    testq %rax, %rax
    jnz .Lself64_report
    incl %ebx
    cmpl $N_SPACES, %ebx
    jb .Lself64_ro
    # Writable again through the read-only mapping (CR0.WP = 0); INVLPG.
    xorl %ebx, %ebx
    call set_space64
    xorl %eax, %eax
    call set_wp64
    orq $2, (%rbp)
    movl $1, %eax
    call set_wp64
    invlpg (%rbp)
    xorl %ebx, %ebx
    jmp .Lself64_rw_in
.Lself64_rw:
    call set_space64
.Lself64_rw_in:
    orq $0x200, (%rbp)             # no fault now
    movq (%rbp), %rdx
    andq $~0x200, (%rbp)
    movq $det_pte, %rdi
    andq $~0xdfc, %rdx
    cmpq $pt_low + 0x203, %rdx
    jne .Lself64_fail
    incl %ebx
    cmpl $N_SPACES, %ebx
    jb .Lself64_rw
    xorl %eax, %eax
    jmp .Lself64_report
.Lself64_fail:
    movl $1, %eax
.Lself64_report:
    movq %rax, %r8                 # whatever happened: writable again
    xorl %eax, %eax
    call set_wp64
    orq $2, (%rbp)
    andq $~0x200, (%rbp)
    movl $1, %eax
    call set_wp64
    invlpg (%rbp)
    movq %r8, %rax
    movq $name_selfref, %rsi
    jmp report64_val
