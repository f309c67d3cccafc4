//! `guest-mmubenchpae`: the shadow-MMU benchmark (rt/mmubench.s, which describes the
//! measurements, the command line and the layout) with 32-bit PAE paging.
//!
//! Sixteen address spaces, each a PDPT of four entries (its CR3; the PDPTs are 32 bytes apart
//! in one page): PDPT[0] -> the shared identity page directory, whose entry 0 -> the shared
//! table `pt_low` identity-mapping 0 .. 2 MiB (the whole image); PDPT[1] -> the space's own
//! page directory for virtual 1 GiB .. 2 GiB: entry 0 -> its window table (WIN_VA -> its
//! window page), entry 2 -> the shared table `pt_fresh` (FRESH_VA ..); PDPT[2..3] not
//! present. Every other entry P | RW, supervisor.
//!
//! Console on success, with the command line `policy=umbra spaces=0` as the `bench-mmu`
//! scenario gives it (micro-benchmarks; the command line is echoed in each result line; N
//! decimal):
//! ```text
//! hello: shadow MMU benchmark, command line "policy=umbra spaces=0"
//! cmdline: ok
//! layout: ok
//! mmubench: mode=pae policy=umbra spaces=0 op=first_touch median=N mean=N min=N n=256
//! first-touch: ok
//! mmubench: mode=pae policy=umbra spaces=0 op=cr3_hit median=N mean=N min=N n=256
//! mmubench: mode=pae policy=umbra spaces=0 op=cr3_miss median=N mean=N min=N n=64
//! tags: ok
//! result: pass
//! ```
//! and with `policy=P spaces=N` (N = 2 .. 16, the workload) one line `mmubench: mode=pae
//! policy=P spaces=N op=switch_touch ... n=400` before `tags: ok`; then exit 0x10 through
//! port 0xf4 (0x11 after any failure).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[path = "../rt/mod.rs"]
mod rt;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .set MB_LONG, 0
    .set MB_MODE, 2
    .set PTE_SHIFT, 3
    .set LOW_SPAN, 0x200000        # what pt_low maps: 512 x 4 KiB
"#,
    include_str!("../rt/data.s"),
    include_str!("../rt/rt32.s"),
    include_str!("../rt/mmubench.s"),
    r#"
# Page tables (zeroed with .bss at entry).
    .section .bss.pt, "aw", @nobits
    .balign 4096
pdpts:      .skip MAX_SPACES * 32  # space s: its PDPT (CR3) at pdpts + s * 32
    .balign 4096
pds_win:    .skip MAX_SPACES * 4096  # space s: the PD for virtual 1 GiB .. 2 GiB
pts_win:    .skip MAX_SPACES * 4096  # space s: its window table
pd_ident:   .skip 4096             # shared: entry 0 -> pt_low
pt_low:     .skip 4096             # shared: identity map of 0 .. 2 MiB in 4 KiB pages
pt_fresh:   .skip 4096             # shared: the fresh region

    .section .text.guest, "ax"
    .code32
    .globl guest_main
guest_main:
    call mmub_start32              # hello, cmdline, layout; pt_low, pt_fresh, pts_win
    movl $pt_low + 3, pd_ident

    # Per space s: PDPT[0] = pd_ident | P, PDPT[1] = pd_win_s | P (a PDPTE has only P and the
    # address), pd_win_s[0] = pt_win_s | P | RW, pd_win_s[2] = pt_fresh | P | RW.
    xorl %ebx, %ebx
1:  movl %ebx, %edx
    shll $5, %edx                  # s * 32
    leal pdpts(%edx), %eax
    movl %eax, cr3s(,%ebx,8)
    movl $pd_ident + 1, pdpts(%edx)
    movl %ebx, %esi
    shll $12, %esi                 # s * 4096
    leal pds_win + 1(%esi), %eax
    movl %eax, pdpts + 8(%edx)
    leal pts_win + 3(%esi), %eax
    movl %eax, pds_win(%esi)
    movl $pt_fresh + 3, pds_win + 2 * 8(%esi)
    incl %ebx
    cmpl $MAX_SPACES, %ebx
    jb 1b

    # Paging on: CR4.PAE (bit 5), CR3 = space 0 (loads its PDPTEs), CR0.PG.
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl cr3s, %eax
    movl %eax, %cr3
    movl %cr0, %eax
    orl $0x80000000, %eax
    movl %eax, %cr0
    call mmub_main
    ret                            # to finish32
    .code64
"#,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
