//! `guest-spaces32`: 32-bit 2-level paging (4-byte entries, CR4.PSE) with N_SPACES address
//! spaces, switched thousands of times, and page-table edits with their TLB maintenance: a
//! test of a hypervisor's shadow paging (it passes on EPT as well).
//!
//! Each space is a page directory (its CR3): PDE 0 -> the shared 4 KiB table `pt_low`
//! identity-mapping 0 .. 4 MiB (which holds the whole image: code, data, stack, tables),
//! PDEs 1 .. 3 identity-map 4 .. 16 MiB with 4 MiB pages (PS), all supervisor-only; PDE 256
//! -> the space's own window table mapping virtual 0x4000_0000 .. + 16 pages to physical
//! 8 MiB + s * 64 KiB (user, writable). The workload (rt/spaces32.s, shared with
//! guest-spacespae; the layout is in rt/spaces.s) then switches CR3 round-robin SWITCHES
//! times touching every window page, verifies each space's checksum through its window and
//! through the identity map, and edits page tables: map, unmap (#PF not present), read-only
//! (#PF protection with CR0.WP = 1, a write with CR0.WP = 0), remap, and a self-referencing
//! write (the entry of `pt_low` mapping `pt_low` itself, written through that mapping).
//! An unexpected #PF prints `page-fault: FAILED unexpected, ...` and exits with 0x11.
//!
//! Console on success:
//! ```text
//! spaces32: hello from guest-spaces32 (4 spaces, 2000 switches)
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
    .set LOW_SPAN, 0x400000        # what pt_low maps: 1024 x 4 KiB
    .set PTE_SHIFT, 2              # 4-byte entries
"#,
    include_str!("../rt/data.s"),
    include_str!("../rt/rt32.s"),
    include_str!("../rt/spaces.s"),
    include_str!("../rt/spaces32.s"),
    r#"
# Page tables (zeroed with .bss at entry).
    .section .bss.pt, "aw", @nobits
    .balign 4096
pds:        .skip N_SPACES * 4096  # space s: its page directory (CR3) at pds + s * 4096
pt_win:     .skip N_SPACES * 4096  # space s: the window's page table
pt_low:     .skip 4096             # shared: identity map of 0 .. 4 MiB in 4 KiB pages

    .section .rodata.guest, "a"
msg_hello:  .asciz "spaces32: hello from guest-spaces32 ("
name_pg:    .asciz "paging-on"
det_pg:     .asciz "cr0.PG, cr0.WP or cr4.PSE clear, cr4 ="

    .section .text.guest, "ax"
    .code32
    .globl guest_main
guest_main:
    movl $msg_hello, %esi
    call spaces_start32            # hello, magic, layout; zeroes the window pages
    call pf_install32

    # pt_low: entry j maps page j, P | RW (supervisor).
    movl $pt_low, %edi
    movl $0x3, %eax
    movl $1024, %ecx
1:  movl %eax, (%edi)
    addl $4096, %eax
    addl $4, %edi
    decl %ecx
    jnz 1b

    # Per space s: PDE 0 = pt_low | P | RW; PDE k (1 .. 3) = k * 4 MiB | P | RW | PS;
    # PDE 256 = pt_win_s | P | RW | US; window entry i = (8 MiB + s * 64 KiB + i * 4 KiB) |
    # P | RW | US.
    xorl %ebx, %ebx
.Ls32_space:
    movl %ebx, %esi
    shll $12, %esi                 # s * 4096
    leal pds(%esi), %eax
    movl %eax, cr3s(,%ebx,8)
    movl $pt_low + 3, pds(%esi)
    movl $0x400083, %eax
    movl $1, %ecx
1:  movl %eax, pds(%esi,%ecx,4)
    addl $0x400000, %eax
    incl %ecx
    cmpl $IDENT_END >> 22, %ecx
    jb 1b
    leal pt_win + 7(%esi), %eax
    movl %eax, pds + (WIN_VA >> 22) * 4(%esi)
    movl %ebx, %eax
    imull $SPACE_STRIDE, %eax
    addl $WIN_PHYS | 7, %eax
    leal pt_win(%esi), %edi
    movl $WIN_PAGES, %ecx
2:  movl %eax, (%edi)
    addl $4096, %eax
    addl $4, %edi
    decl %ecx
    jnz 2b
    incl %ebx
    cmpl $N_SPACES, %ebx
    jb .Ls32_space

    # Paging on: CR4.PSE (bit 4), CR3 = space 0, CR0.PG (bit 31) and CR0.WP (bit 16).
    movl %cr4, %eax
    orl $0x10, %eax
    movl %eax, %cr4
    movl cr3s, %eax
    movl %eax, %cr3
    movl %cr0, %eax
    orl $0x80000000 | CR0_WP, %eax
    movl %eax, %cr0

    # paging-on: CR0.PG, CR0.WP and CR4.PSE read back set
    movl %cr4, %edx
    xorl %eax, %eax
    testl $0x10, %edx
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
