# Shared by the multi-space paging guests (guest-spaces64, guest-spacespae, guest-spaces32):
# the layout, the #PF bookkeeping, the console strings and the common 32-bit start.
# AT&T syntax; no curly braces (a format-string template of global_asm!). The including guest
# defines N_SPACES (2..10), SWITCHES and LOW_SPAN (the span of its 4 KiB identity table
# pt_low: 2 MiB with 8-byte entries, 4 MiB with 4-byte ones) before including this file.
#
# Guest-physical layout (16 MiB of RAM):
#   1 MiB ..               the image (code, data, .bss with the stack and the page tables);
#                          it must end below LOW_SPAN (checked: "layout")
#   8 MiB + s * 64 KiB     space s's WIN_PAGES window pages (zeroed by spaces_start32)
#   12 MiB                 EXTRA_MAP: mapped into space MAP_SPACE's window by the map check
#   12 MiB + 4 KiB         EXTRA_REMAP: the new page of the remap check
# Virtual, in every space: 0 .. 16 MiB identity-mapped, supervisor only (0 .. LOW_SPAN with
# 4 KiB pages through the shared table pt_low, the rest with large pages); WIN_VA .. + WIN_PAGES
# pages: space s's own window pages, user and writable, through its own page table. The last
# dword (qword in 64-bit code) of window page i of space s holds its tag TAG | s << 8 | i.

    .ifndef N_SPACES
    .error "define N_SPACES before including spaces.s"
    .endif
    .if N_SPACES < 2 || N_SPACES > 10
    .error "N_SPACES must be 2 .. 10 (one-digit space names, windows below EXTRA_MAP)"
    .endif

    .set WIN_VA, 0x40000000
    .set WIN_PAGES, 16
    .set WIN_PHYS, 0x800000
    .set SPACE_STRIDE, WIN_PAGES * 4096
    .set EXTRA_MAP, 0xc00000
    .set EXTRA_REMAP, 0xc01000
    .set IDENT_END, 0x1000000
    .set TAG, 0x5a000000
    .set CR0_WP, 0x10000
# Which space and which window page each page-table edit uses.
    .set MAP_SPACE, 1              # map: EXTRA_MAP at window page MAP_PAGE (not present elsewhere)
    .set MAP_PAGE, WIN_PAGES
    .set UNMAP_SPACE, 2 % N_SPACES # unmap: page UNMAP_PAGE not present, then present again
    .set UNMAP_PAGE, 3
    .set RO_SPACE, 3 % N_SPACES    # readonly / wp-off: page RO_PAGE read-only, then writable
    .set RO_PAGE, 5
    .set REMAP_SPACE, 0            # remap: page REMAP_PAGE -> EXTRA_REMAP, then back
    .set REMAP_PAGE, 7
    .set MAP_VA, WIN_VA + MAP_PAGE * 4096
    .set UNMAP_VA, WIN_VA + UNMAP_PAGE * 4096
    .set RO_VA, WIN_VA + RO_PAGE * 4096
    .set RO_PHYS, WIN_PHYS + RO_SPACE * SPACE_STRIDE + RO_PAGE * 4096
    .set REMAP_VA, WIN_VA + REMAP_PAGE * 4096
    .set REMAP_OLD, WIN_PHYS + REMAP_SPACE * SPACE_STRIDE + REMAP_PAGE * 4096

    .section .data.spaces, "aw"
    .balign 8
# A deliberately faulting access stores its resume address in pf_resume first (PF_EXPECT32 /
# PF_EXPECT64); the #PF handler records CR2, the error code and the faulting ip, clears
# pf_resume and returns there. A #PF while pf_resume is 0 fails the guest.
pf_resume:  .quad 0
pf_cr2:     .quad 0
pf_err:     .quad 0
pf_ip:      .quad 0
pf_count:   .long 0                # every #PF taken
sw_errors:  .long 0                # readback and tag mismatches in the switch loop
name_space: .ascii "space"
name_space_digit: .byte 0x30, 0   # "spaceS": the digit is written before each report

    .section .bss.spaces, "aw", @nobits
    .balign 8
cr3s:       .skip 8 * N_SPACES     # space s: its CR3 (filled by the guest)
checksums:  .skip 8 * N_SPACES     # space s: the sum of everything added to its window
saved_pte:  .skip 8
idtr_scratch: .skip 16             # sidt

    .section .rodata.spaces, "a"
str_spaces:     .asciz " spaces, "
str_switches:   .asciz " switches)\n"
name_magic:     .asciz "magic"
name_layout:    .asciz "layout"
name_switch:    .asciz "switch"
name_map:       .asciz "map"
name_unmap:     .asciz "unmap"
name_readonly:  .asciz "readonly"
name_wpoff:     .asciz "wp-off"
name_remap:     .asciz "remap"
name_selfref:   .asciz "selfref"
det_magic:      .asciz "eax was"
det_layout:     .asciz "the image ends beyond the 4 KiB identity table's span, at"
det_switch:     .asciz "readback or tag mismatches:"
det_tags:       .asciz "wrong tags through the window or the identity map:"
det_sum_win:    .asciz "sum through the window differs from the checksum, sum"
det_sum_phys:   .asciz "sum through the identity map differs from the checksum, sum"
det_pf_none:    .asciz "no page fault, page faults so far"
det_pf_cr2:     .asciz "page fault at the wrong address, cr2"
det_pf_err:     .asciz "page fault with the wrong error code"
det_data:       .asciz "wrong data through the window, read"
det_ident_data: .asciz "wrong data through the identity map, read"
det_old_page:   .asciz "the old physical page changed, read"
det_pte:        .asciz "unexpected page-table entry"
msg_pf_unexpected: .asciz "page-fault: FAILED unexpected, cr2 "

    .section .text.spaces, "ax"
    .code32
# spaces_start32 (paging off): print "<ESI>N spaces, SWITCHES switches)", check the
# multiboot magic and that the image ends within LOW_SPAN, and zero the window pages of every
# space and the two extra pages.
spaces_start32:
    pushal
    call puts32
    movl $N_SPACES, %eax
    call putdec32
    movl $str_spaces, %esi
    call puts32
    movl $SWITCHES, %eax
    call putdec32
    movl $str_switches, %esi
    call puts32

    # magic: EAX at entry was 0x2BADB002
    movl mb_magic, %edx
    xorl %eax, %eax
    cmpl $0x2badb002, %edx
    setne %al
    movl $name_magic, %esi
    movl $det_magic, %edi
    call report32_val

    # layout: code, data, stack and tables all lie in the span of pt_low
    movl $__image_end, %edx
    xorl %eax, %eax
    cmpl $LOW_SPAN, %edx
    seta %al
    movl $name_layout, %esi
    movl $det_layout, %edi
    call report32_val

    movl $WIN_PHYS, %edi
    movl $(N_SPACES * SPACE_STRIDE) / 4, %ecx
    xorl %eax, %eax
    rep stosl
    movl $EXTRA_MAP, %edi
    movl $2 * 4096 / 4, %ecx
    rep stosl
    popal
    ret
    .code64
