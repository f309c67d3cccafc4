# The 32-bit workload of guest-spaces32 (2-level paging) and guest-spacespae (PAE paging),
# after rt/spaces.s. AT&T syntax, no curly braces (a format-string template of global_asm!).
#
# The including guest defines PTE_SHIFT (2: 4-byte entries, 3: 8-byte entries, of which only
# the low dword is ever written: the high one stays 0) and the page tables:
#   pt_win   N_SPACES pages: space s's window table at pt_win + s * 4096, entry i mapping
#            WIN_VA + i * 4096 (WIN_PAGES entries present, P | RW | US)
#   pt_low   the shared 4 KiB identity table of 0 .. LOW_SPAN (P | RW); it maps its own page
# and fills cr3s. It calls pf_install32 once, and spaces_main32 with paging and CR0.WP on.
#
# spaces_main32 reports, in this order:
#   switch    SWITCHES CR3 loads round-robin over the spaces; each visit adds a value to one
#             dword of every window page (read back at once), checks every page's tag and adds
#             the values to the space's checksum
#   spaceS    in space S, the sum of its window pages through the window and through the
#             identity map both equal its checksum, and every tag is right both ways
#   map       a not-present window entry of MAP_SPACE made present (no INVLPG needed) maps
#             EXTRA_MAP; data written through it is in EXTRA_MAP; the same address in space 0
#             (never mapped) takes a not-present read #PF; back in MAP_SPACE the data is there
#   unmap     a cached window page made not present + INVLPG: a read takes #PF error 0, a
#             write #PF error 2 (CR2 exact); present again it holds its old data and tag
#   readonly  a cached window page made read-only + INVLPG: reads work, a ring-0 write with
#             CR0.WP = 1 takes #PF error 3 and does not happen
#   wp-off    with CR0.WP = 0 the same write goes through (window and identity map agree);
#             made writable again + INVLPG, a write with CR0.WP = 1 works
#   remap     a cached window page pointed at EXTRA_REMAP + INVLPG shows the new page, writes
#             land there and not in the old page; pointed back + INVLPG it shows the old one
#   selfref   the entry of pt_low that maps pt_low's own page is made read-only by a write
#             through that very mapping, + INVLPG; in every space (the table is shared) a write
#             to the table takes #PF error 3; with CR0.WP = 0 the entry is made writable again
#             through its read-only mapping, + INVLPG; in every space writes to it work again

    .macro PF_EXPECT32 resume
    movl $\resume, pf_resume
    .endm

    .section .text.spaces32, "ax"
    .code32

# pf_install32: IDT vector 14 -> pf32 (interrupt gate, DPL 0, the current CS).
pf_install32:
    pushal
    sidt idtr_scratch
    movl idtr_scratch + 2, %ebx    # IDT base
    movl $pf32, %edx
    xorl %eax, %eax
    movw %cs, %ax
    shll $16, %eax
    movw %dx, %ax                  # selector | offset 15:0
    movl %eax, 14 * 8(%ebx)
    movl %edx, %eax
    andl $0xffff0000, %eax
    orl $0x00008e00, %eax          # offset 31:16 | P | DPL 0 | 32-bit interrupt gate
    movl %eax, 14 * 8 + 4(%ebx)
    popal
    ret

# #PF. Frame after the push: 0(%esp) EAX, 4 error code, 8 EIP, 12 CS, 16 EFLAGS.
pf32:
    pushl %eax
    movl %cr2, %eax
    movl %eax, pf_cr2
    movl 4(%esp), %eax
    movl %eax, pf_err
    movl 8(%esp), %eax
    movl %eax, pf_ip
    incl pf_count
    movl pf_resume, %eax
    testl %eax, %eax
    jz .Lpf32_unexpected
    movl %eax, 8(%esp)             # return to the resume address
    movl $0, pf_resume
    popl %eax
    addl $4, %esp                  # error code
    iretl
.Lpf32_unexpected:
    incl fail_count
    movl $msg_pf_unexpected, %esi
    call puts32
    movl pf_cr2, %eax
    call puthex32
    movl $str_exc_rip, %esi
    call puts32
    movl pf_ip, %eax
    call puthex32
    movl $str_exc_err, %esi
    call puts32
    movl pf_err, %eax
    call puthex32
    movl $str_nl, %esi
    call puts32
    jmp finish32

# pf_check32: after an access that had to fault (PF_EXPECT32). ECX = expected CR2, EDX =
# expected error code. EAX = 0 if exactly that #PF was taken, else EAX = 1, EDI = detail,
# EDX = what was seen.
pf_check32:
    cmpl $0, pf_resume
    je 1f
    movl $0, pf_resume             # no fault: disarm
    movl $det_pf_none, %edi
    movl pf_count, %edx
    movl $1, %eax
    ret
1:  movl pf_cr2, %eax
    cmpl %ecx, %eax
    je 2f
    movl %eax, %edx
    movl $det_pf_cr2, %edi
    movl $1, %eax
    ret
2:  movl pf_err, %eax
    cmpl %edx, %eax
    je 3f
    movl %eax, %edx
    movl $det_pf_err, %edi
    movl $1, %eax
    ret
3:  xorl %eax, %eax
    ret

# set_space32: CR3 = space EBX's root.
set_space32:
    pushl %eax
    movl cr3s(,%ebx,8), %eax
    movl %eax, %cr3
    popl %eax
    ret

# set_wp32: CR0.WP = EAX (0 or 1). Preserves EAX.
set_wp32:
    pushl %ecx
    movl %cr0, %ecx
    andl $~CR0_WP, %ecx
    testl %eax, %eax
    jz 1f
    orl $CR0_WP, %ecx
1:  movl %ecx, %cr0
    popl %ecx
    ret

spaces_main32:
    call tag_windows32
    call switch_test32
    call verify_spaces32
    call map_test32
    call unmap_test32
    call readonly_test32
    call wpoff_test32
    call remap_test32
    call selfref_test32
    ret

# tag_windows32: in each space, through its window, page i's last dword = TAG | s << 8 | i.
tag_windows32:
    pushal
    xorl %ebx, %ebx
1:  call set_space32
    movl %ebx, %edx
    shll $8, %edx
    orl $TAG, %edx
    movl $WIN_VA + 0xffc, %edi
    movl $WIN_PAGES, %ecx
2:  movl %edx, (%edi)
    incl %edx
    addl $4096, %edi
    decl %ecx
    jnz 2b
    incl %ebx
    cmpl $N_SPACES, %ebx
    jb 1b
    popal
    ret

# switch_test32: SWITCHES visits, space k mod N_SPACES on visit k. Visit k adds k * 0x61c88647
# + i to dword (k mod 512) of window page i (never the tag) and to the space's checksum.
switch_test32:
    pushal
    xorl %ebp, %ebp                # visit k
    xorl %ebx, %ebx                # space s
.Lsw32_visit:
    call set_space32
    movl %ebp, %edi
    andl $511, %edi
    shll $2, %edi
    addl $WIN_VA, %edi             # this visit's dword in window page 0
    imull $0x61c88647, %ebp, %edx
    xorl %ecx, %ecx                # page i
.Lsw32_page:
    leal (%edx,%ecx), %eax         # the value added to page i
    addl %eax, checksums(,%ebx,8)
    addl (%edi), %eax
    movl %eax, (%edi)
    cmpl %eax, (%edi)
    je 1f
    incl sw_errors
1:  movl %edi, %esi
    orl $0xffc, %esi               # the page's tag (the offset is below 0x800)
    movl %ebx, %eax
    shll $8, %eax
    orl %ecx, %eax
    orl $TAG, %eax
    cmpl %eax, (%esi)
    je 2f
    incl sw_errors
2:  addl $4096, %edi
    incl %ecx
    cmpl $WIN_PAGES, %ecx
    jb .Lsw32_page
    incl %ebx
    cmpl $N_SPACES, %ebx
    jb 3f
    xorl %ebx, %ebx
3:  incl %ebp
    cmpl $SWITCHES, %ebp
    jb .Lsw32_visit
    movl sw_errors, %edx
    xorl %eax, %eax
    testl %edx, %edx
    setnz %al
    movl $name_switch, %esi
    movl $det_switch, %edi
    call report32_val
    popal
    ret

# sum_window32: ESI = the first of WIN_PAGES pages of space EBX (window or identity address).
# EAX = the sum of dwords 0 .. 1022 of every page, EDX = the number of wrong tags.
sum_window32:
    pushl %ecx
    pushl %esi
    pushl %edi
    pushl %ebp
    xorl %eax, %eax
    xorl %edx, %edx
    xorl %ebp, %ebp                # page i
1:  xorl %ecx, %ecx
2:  addl (%esi,%ecx,4), %eax
    incl %ecx
    cmpl $1023, %ecx
    jb 2b
    movl %ebx, %edi
    shll $8, %edi
    orl %ebp, %edi
    orl $TAG, %edi
    cmpl %edi, 0xffc(%esi)
    je 3f
    incl %edx
3:  addl $4096, %esi
    incl %ebp
    cmpl $WIN_PAGES, %ebp
    jb 1b
    popl %ebp
    popl %edi
    popl %esi
    popl %ecx
    ret

# verify_spaces32: "spaceS" for every space S, in space S.
verify_spaces32:
    pushal
    xorl %ebx, %ebx
.Lver32_space:
    call set_space32
    movl $WIN_VA, %esi
    call sum_window32
    movl %eax, %ecx                # window sum
    movl %ebx, %esi
    imull $SPACE_STRIDE, %esi
    addl $WIN_PHYS, %esi
    movl %edx, %ebp                # wrong tags through the window
    call sum_window32              # through the identity map
    addl %ebp, %edx
    movl $det_tags, %edi
    testl %edx, %edx
    jnz .Lver32_fail
    movl $det_sum_phys, %edi
    movl %eax, %edx
    cmpl checksums(,%ebx,8), %eax
    jne .Lver32_fail
    movl $det_sum_win, %edi
    movl %ecx, %edx
    cmpl checksums(,%ebx,8), %ecx
    jne .Lver32_fail
    xorl %eax, %eax
    jmp .Lver32_report
.Lver32_fail:
    movl $1, %eax
.Lver32_report:
    movl %ebx, %ecx
    addb $0x30, %cl
    movb %cl, name_space_digit
    movl $name_space, %esi
    call report32_val
    incl %ebx
    cmpl $N_SPACES, %ebx
    jb .Lver32_space
    popal
    ret

map_test32:
    pushal
    movl $MAP_SPACE, %ebx
    call set_space32
    movl $EXTRA_MAP | 7, pt_win + MAP_SPACE * 4096 + (MAP_PAGE << PTE_SHIFT)
    movl $0x4d415030, MAP_VA       # "MAP0"
    movl $0x4d415031, MAP_VA + 0xffc
    movl $det_data, %edi
    movl MAP_VA, %edx
    cmpl $0x4d415030, %edx
    jne .Lmap32_fail
    movl MAP_VA + 0xffc, %edx
    cmpl $0x4d415031, %edx
    jne .Lmap32_fail
    movl $det_ident_data, %edi
    movl EXTRA_MAP, %edx
    cmpl $0x4d415030, %edx
    jne .Lmap32_fail
    movl EXTRA_MAP + 0xffc, %edx
    cmpl $0x4d415031, %edx
    jne .Lmap32_fail
    # space 0 never mapped it: a read takes a not-present #PF (error code 0)
    xorl %ebx, %ebx
    call set_space32
    PF_EXPECT32 1f
    movl MAP_VA + 0x40, %eax
1:  movl $MAP_VA + 0x40, %ecx
    xorl %edx, %edx
    call pf_check32
    testl %eax, %eax
    jnz .Lmap32_report
    movl $MAP_SPACE, %ebx
    call set_space32
    movl $det_data, %edi
    movl MAP_VA, %edx
    cmpl $0x4d415030, %edx
    jne .Lmap32_fail
    xorl %eax, %eax
    jmp .Lmap32_report
.Lmap32_fail:
    movl $1, %eax
.Lmap32_report:
    movl $name_map, %esi
    call report32_val
    popal
    ret

unmap_test32:
    pushal
    movl $UNMAP_SPACE, %ebx
    call set_space32
    movl UNMAP_VA + 0x20, %ebp     # its data; the translation is now cached
    andl $~1, pt_win + UNMAP_SPACE * 4096 + (UNMAP_PAGE << PTE_SHIFT)
    invlpg UNMAP_VA
    PF_EXPECT32 1f
    movl UNMAP_VA + 0x10, %eax
1:  movl $UNMAP_VA + 0x10, %ecx
    movl $0, %edx                  # not present, read
    call pf_check32
    testl %eax, %eax
    jnz .Lunmap32_report
    PF_EXPECT32 1f
    movl $0x12345678, UNMAP_VA + 0x20
1:  movl $UNMAP_VA + 0x20, %ecx
    movl $2, %edx                  # not present, write
    call pf_check32
    testl %eax, %eax
    jnz .Lunmap32_report
    orl $1, pt_win + UNMAP_SPACE * 4096 + (UNMAP_PAGE << PTE_SHIFT)
    movl $det_data, %edi
    movl UNMAP_VA + 0x20, %edx
    cmpl %ebp, %edx
    jne .Lunmap32_fail
    movl UNMAP_VA + 0xffc, %edx
    cmpl $TAG | UNMAP_SPACE << 8 | UNMAP_PAGE, %edx
    jne .Lunmap32_fail
    xorl %eax, %eax
    jmp .Lunmap32_report
.Lunmap32_fail:
    movl $1, %eax
.Lunmap32_report:
    orl $1, pt_win + UNMAP_SPACE * 4096 + (UNMAP_PAGE << PTE_SHIFT)
    movl $name_unmap, %esi
    call report32_val
    popal
    ret

readonly_test32:
    pushal
    movl $RO_SPACE, %ebx
    call set_space32
    movl $0x52573030, RO_VA + 0x30 # "RW00" while writable; the translation is now cached
    andl $~2, pt_win + RO_SPACE * 4096 + (RO_PAGE << PTE_SHIFT)
    invlpg RO_VA
    movl $det_data, %edi
    movl RO_VA + 0x30, %edx
    cmpl $0x52573030, %edx
    jne .Lro32_fail
    PF_EXPECT32 1f
    movl $0x524f3031, RO_VA + 0x30
1:  movl $RO_VA + 0x30, %ecx
    movl $3, %edx                  # protection, write
    call pf_check32
    testl %eax, %eax
    jnz .Lro32_report
    movl $det_data, %edi
    movl RO_VA + 0x30, %edx
    cmpl $0x52573030, %edx
    jne .Lro32_fail
    xorl %eax, %eax
    jmp .Lro32_report
.Lro32_fail:
    movl $1, %eax
.Lro32_report:
    movl $name_readonly, %esi
    call report32_val
    popal
    ret

# wpoff_test32: the page of readonly_test32 is still read-only.
wpoff_test32:
    pushal
    movl $RO_SPACE, %ebx
    call set_space32
    xorl %eax, %eax
    call set_wp32
    movl $0x57503030, RO_VA + 0x30 # "WP00": goes through with CR0.WP = 0
    movl $1, %eax
    call set_wp32
    movl $det_data, %edi
    movl RO_VA + 0x30, %edx
    cmpl $0x57503030, %edx
    jne .Lwp32_fail
    movl $det_ident_data, %edi
    movl RO_PHYS + 0x30, %edx
    cmpl $0x57503030, %edx
    jne .Lwp32_fail
    movl $det_pte, %edi
    movl pt_win + RO_SPACE * 4096 + (RO_PAGE << PTE_SHIFT), %edx
    testl $2, %edx                 # still read-only
    jnz .Lwp32_fail
    orl $2, pt_win + RO_SPACE * 4096 + (RO_PAGE << PTE_SHIFT)
    invlpg RO_VA
    movl $0x57503031, RO_VA + 0x30 # CR0.WP = 1 and writable: no fault
    movl $det_ident_data, %edi
    movl RO_PHYS + 0x30, %edx
    cmpl $0x57503031, %edx
    jne .Lwp32_fail
    xorl %eax, %eax
    jmp .Lwp32_report
.Lwp32_fail:
    movl $1, %eax
.Lwp32_report:
    movl $name_wpoff, %esi
    call report32_val
    popal
    ret

remap_test32:
    pushal
    movl $REMAP_SPACE, %ebx
    call set_space32
    movl $0x4e455750, EXTRA_REMAP  # "NEWP": the new page's contents, through the identity map
    movl $0x4e455751, EXTRA_REMAP + 0xffc
    movl REMAP_OLD + 0x40, %ebp    # the old page's dword 0x40
    movl REMAP_VA + 0xffc, %eax    # the old translation is now cached
    movl pt_win + REMAP_SPACE * 4096 + (REMAP_PAGE << PTE_SHIFT), %eax
    movl %eax, saved_pte
    movl $EXTRA_REMAP | 7, pt_win + REMAP_SPACE * 4096 + (REMAP_PAGE << PTE_SHIFT)
    invlpg REMAP_VA
    movl $det_data, %edi
    movl REMAP_VA, %edx
    cmpl $0x4e455750, %edx
    jne .Lremap32_fail
    movl REMAP_VA + 0xffc, %edx
    cmpl $0x4e455751, %edx
    jne .Lremap32_fail
    movl $0x4e455752, REMAP_VA + 0x40
    movl $det_ident_data, %edi
    movl EXTRA_REMAP + 0x40, %edx
    cmpl $0x4e455752, %edx
    jne .Lremap32_fail
    movl $det_old_page, %edi
    movl REMAP_OLD + 0x40, %edx
    cmpl %ebp, %edx
    jne .Lremap32_fail
    xorl %eax, %eax
    jmp .Lremap32_back
.Lremap32_fail:
    movl $1, %eax
.Lremap32_back:
    movl saved_pte, %ecx           # the old page again
    movl %ecx, pt_win + REMAP_SPACE * 4096 + (REMAP_PAGE << PTE_SHIFT)
    invlpg REMAP_VA
    testl %eax, %eax
    jnz .Lremap32_report
    movl $det_data, %edi
    movl REMAP_VA + 0xffc, %edx
    cmpl $TAG | REMAP_SPACE << 8 | REMAP_PAGE, %edx
    jne .Lremap32_fail2
    movl REMAP_VA + 0x40, %edx
    cmpl %ebp, %edx
    je .Lremap32_report
.Lremap32_fail2:
    movl $1, %eax
.Lremap32_report:
    movl $name_remap, %esi
    call report32_val
    popal
    ret

selfref_test32:
    pushal
    xorl %ebx, %ebx
    call set_space32
    movl $pt_low, %ebp
    shrl $12, %ebp
    shll $PTE_SHIFT, %ebp
    addl $pt_low, %ebp             # EBP = the entry of pt_low mapping pt_low's own page
    movl $det_pte, %edi
    movl (%ebp), %edx
    movl %edx, %eax
    andl $0xfffff003, %eax
    cmpl $pt_low + 3, %eax         # that page, P | RW
    jne .Lself32_fail
    # Read-only, written through the mapping it defines; then INVLPG that page.
    andl $~2, (%ebp)
    invlpg (%ebp)
    xorl %ebx, %ebx
    jmp .Lself32_ro_in             # space 0 is loaded: no CR3 load (it would flush the TLB)
.Lself32_ro:
    call set_space32
.Lself32_ro_in:
    movl $det_pte, %edi
    movl (%ebp), %edx              # reads work and see R/W = 0
    testl $2, %edx
    jnz .Lself32_fail
    PF_EXPECT32 1f
    orl $0x200, (%ebp)             # an available bit: harmless if it went through
1:  movl %ebp, %ecx
    movl $3, %edx                  # protection, write
    call pf_check32
    testl %eax, %eax
    jnz .Lself32_report
    incl %ebx
    cmpl $N_SPACES, %ebx
    jb .Lself32_ro
    # Writable again through the read-only mapping (CR0.WP = 0); INVLPG.
    xorl %ebx, %ebx
    call set_space32
    xorl %eax, %eax
    call set_wp32
    orl $2, (%ebp)
    movl $1, %eax
    call set_wp32
    invlpg (%ebp)
    xorl %ebx, %ebx
    jmp .Lself32_rw_in
.Lself32_rw:
    call set_space32
.Lself32_rw_in:
    orl $0x200, (%ebp)             # no fault now
    movl (%ebp), %edx
    andl $~0x200, (%ebp)
    movl $det_pte, %edi
    andl $0xfffff203, %edx
    cmpl $pt_low + 0x203, %edx
    jne .Lself32_fail
    incl %ebx
    cmpl $N_SPACES, %ebx
    jb .Lself32_rw
    xorl %eax, %eax
    jmp .Lself32_report
.Lself32_fail:
    movl $1, %eax
.Lself32_report:
    pushl %eax                     # whatever happened: writable again
    xorl %eax, %eax
    call set_wp32
    orl $2, (%ebp)
    andl $~0x200, (%ebp)
    movl $1, %eax
    call set_wp32
    invlpg (%ebp)
    popl %eax
    movl $name_selfref, %esi
    call report32_val
    popal
    ret
    .code64
