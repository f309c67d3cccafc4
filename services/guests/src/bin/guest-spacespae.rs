//! `guest-spacespae`: 32-bit PAE paging with N_SPACES address spaces, switched thousands of
//! times, and page-table edits with their TLB maintenance: a test of a hypervisor's shadow
//! paging (it passes on EPT as well).
//!
//! Each space is a PDPT of four entries (its CR3; the PDPTs are 32 bytes apart, several in
//! one page): PDPT[0] -> the shared identity page directory, PDPT[1] -> the space's own window
//! page directory, PDPT[2..3] not present. The identity PD's entry 0 -> the shared 4 KiB table
//! `pt_low` identity-mapping 0 .. 2 MiB (which holds the whole image: code, data, stack,
//! tables), entries 1 .. 7 identity-map 2 .. 16 MiB with 2 MiB pages, all supervisor-only.
//! The window PD's entry 0 -> the space's window table mapping virtual 0x4000_0000 .. + 16
//! pages to physical 8 MiB + s * 64 KiB (user, writable). The workload (rt/spaces32.s,
//! shared with guest-spaces32; the layout is in rt/spaces.s) then switches CR3 round-robin
//! SWITCHES times touching every window page, verifies each space's checksum through its window
//! and through the identity map, and edits page tables: map, unmap (#PF not present), read-only
//! (#PF protection with CR0.WP = 1, a write with CR0.WP = 0), remap, and a self-referencing
//! write (the entry of `pt_low` mapping `pt_low` itself, written through that mapping).
//! An unexpected #PF prints `page-fault: FAILED unexpected, ...` and exits with 0x11.
//!
//! Console on success:
//! ```text
//! spacespae: hello from guest-spacespae (4 spaces, 2000 switches)
//! magic: ok
//! layout: ok
//! paging-on: ok
//! switch: ok
//! space0: ok
//! space1: ok
//! space2: ok
//! space3: ok
//! map: ok
//! unmap: ok
//! readonly: ok
//! wp-off: ok
//! remap: ok
//! selfref: ok
//! result: pass
//! ```
//! then exit 0x10 through port 0xf4 (0x11 after any failure).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[path = "../rt/mod.rs"]
mod rt;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .set N_SPACES, 4               # address spaces (2 .. 10)
    .set SWITCHES, 2000            # CR3 loads of the switch loop
    .set LOW_SPAN, 0x200000        # what pt_low maps: 512 x 4 KiB
    .set PTE_SHIFT, 3              # 8-byte entries
"#,
    include_str!("../rt/data.s"),
    include_str!("../rt/rt32.s"),
    include_str!("../rt/spaces.s"),
    include_str!("../rt/spaces32.s"),
    r#"
# Page tables (zeroed with .bss at entry).
    .section .bss.pt, "aw", @nobits
    .balign 4096
pdpts:      .skip N_SPACES * 32    # space s: its PDPT (CR3) at pdpts + s * 32
    .balign 4096
pd_ident:   .skip 4096             # shared: identity map of 0 .. 16 MiB
pds_win:    .skip N_SPACES * 4096  # space s: the PD for virtual 1 GiB .. 2 GiB
pt_win:     .skip N_SPACES * 4096  # space s: the window's page table
pt_low:     .skip 4096             # shared: identity map of 0 .. 2 MiB in 4 KiB pages

    .section .rodata.guest, "a"
msg_hello:  .asciz "spacespae: hello from guest-spacespae ("
name_pg:    .asciz "paging-on"
det_pg:     .asciz "cr0.PG, cr0.WP or cr4.PAE clear, cr4 ="

    .section .text.guest, "ax"
    .code32
    .globl guest_main
guest_main:
    movl $msg_hello, %esi
    call spaces_start32            # hello, magic, layout; zeroes the window pages
    call pf_install32

    # pt_low: entry j maps page j, P | RW (supervisor); the high dwords stay 0.
    movl $pt_low, %edi
    movl $0x3, %eax
    movl $512, %ecx
1:  movl %eax, (%edi)
    addl $4096, %eax
    addl $8, %edi
    decl %ecx
    jnz 1b

    # Identity PD: entry 0 = pt_low | P | RW, entry k (1 .. 7) = k * 2 MiB | P | RW | PS.
    movl $pt_low + 3, pd_ident
    movl $0x200083, %eax
    movl $1, %ecx
1:  movl %eax, pd_ident(,%ecx,8)
    addl $0x200000, %eax
    incl %ecx
    cmpl $IDENT_END >> 21, %ecx
    jb 1b

    # Per space s: PDPT[0] = pd_ident | P, PDPT[1] = pd_win_s | P (a PDPTE has only P and the
    # address), pd_win_s[0] = pt_win_s | P | RW | US, window entry i = (8 MiB + s * 64 KiB +
    # i * 4 KiB) | P | RW | US.
    xorl %ebx, %ebx
.Lspae_space:
    movl %ebx, %edx
    shll $5, %edx                  # s * 32
    leal pdpts(%edx), %eax
    movl %eax, cr3s(,%ebx,8)
    movl $pd_ident + 1, pdpts(%edx)
    movl %ebx, %esi
    shll $12, %esi                 # s * 4096
    leal pds_win + 1(%esi), %eax
    movl %eax, pdpts + 8(%edx)
    leal pt_win + 7(%esi), %eax
    movl %eax, pds_win(%esi)
    movl %ebx, %eax
    imull $SPACE_STRIDE, %eax
    addl $WIN_PHYS | 7, %eax
    leal pt_win(%esi), %edi
    movl $WIN_PAGES, %ecx
2:  movl %eax, (%edi)
    addl $4096, %eax
    addl $8, %edi
    decl %ecx
    jnz 2b
    incl %ebx
    cmpl $N_SPACES, %ebx
    jb .Lspae_space

    # Paging on: CR4.PAE (bit 5), CR3 = space 0 (loads its PDPTEs), CR0.PG and CR0.WP.
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl cr3s, %eax
    movl %eax, %cr3
    movl %cr0, %eax
    orl $0x80000000 | CR0_WP, %eax
    movl %eax, %cr0

    # paging-on: CR0.PG, CR0.WP and CR4.PAE read back set
    movl %cr4, %edx
    xorl %eax, %eax
    testl $0x20, %edx
    setz %al
    movl %cr0, %ecx
    andl $0x80000000 | CR0_WP, %ecx
    cmpl $0x80000000 | CR0_WP, %ecx
    je 1f
    movl $1, %eax
1:  movl $name_pg, %esi
    movl $det_pg, %edi
    call report32_val

    call spaces_main32
    ret                            # to finish32
    .code64
"#,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
