//! `guest-mmubench32`: the shadow-MMU benchmark (rt/mmubench.s, which describes the
//! measurements, the command line and the layout) with 32-bit 2-level paging (4-byte entries).
//!
//! Sixteen address spaces, each a page directory (its CR3): PDE 0 -> the shared table
//! `pt_low` identity-mapping 0 .. 4 MiB (the whole image); PDE 256 -> the space's window
//! table (WIN_VA -> its window page); PDE 257 -> the shared table `pt_fresh` (FRESH_VA ..).
//! Every entry P | RW, supervisor.
//!
//! Console on success, with the command line `policy=umbra spaces=0` as the `bench-mmu`
//! scenario gives it (micro-benchmarks; the command line is echoed in each result line; N
//! decimal):
//! ```text
//! hello: shadow MMU benchmark, command line "policy=umbra spaces=0"
//! cmdline: ok
//! layout: ok
//! mmubench: mode=2-level policy=umbra spaces=0 op=first_touch median=N mean=N min=N n=256
//! first-touch: ok
//! mmubench: mode=2-level policy=umbra spaces=0 op=cr3_hit median=N mean=N min=N n=256
//! mmubench: mode=2-level policy=umbra spaces=0 op=cr3_miss median=N mean=N min=N n=64
//! tags: ok
//! result: pass
//! ```
//! and with `policy=P spaces=N` (N = 2 .. 16, the workload) one line `mmubench: mode=2-level
//! policy=P spaces=N op=switch_touch ... n=400` before `tags: ok`; then exit 0x10 through
//! port 0xf4 (0x11 after any failure).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[path = "../rt/mod.rs"]
mod rt;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .set MB_LONG, 0
    .set MB_MODE, 1
    .set PTE_SHIFT, 2
    .set LOW_SPAN, 0x400000        # what pt_low maps: 1024 x 4 KiB
"#,
    include_str!("../rt/data.s"),
    include_str!("../rt/rt32.s"),
    include_str!("../rt/mmubench.s"),
    r#"
# Page tables (zeroed with .bss at entry).
    .section .bss.pt, "aw", @nobits
    .balign 4096
pds:        .skip MAX_SPACES * 4096  # space s: its page directory (CR3) at pds + s * 4096
pts_win:    .skip MAX_SPACES * 4096  # space s: its window table
pt_low:     .skip 4096             # shared: identity map of 0 .. 4 MiB in 4 KiB pages
pt_fresh:   .skip 4096             # shared: the fresh region

    .section .text.guest, "ax"
    .code32
    .globl guest_main
guest_main:
    call mmub_start32              # hello, cmdline, layout; pt_low, pt_fresh, pts_win

    # Per space s: PDE 0 = pt_low, PDE 256 = pt_win_s, PDE 257 = pt_fresh; all P | RW.
    xorl %ebx, %ebx
1:  movl %ebx, %esi
    shll $12, %esi                 # s * 4096
    leal pds(%esi), %eax
    movl %eax, cr3s(,%ebx,8)
    movl $pt_low + 3, pds(%esi)
    leal pts_win + 3(%esi), %eax
    movl %eax, pds + (WIN_VA >> 22) * 4(%esi)
    movl $pt_fresh + 3, pds + (FRESH_VA >> 22) * 4(%esi)
    incl %ebx
    cmpl $MAX_SPACES, %ebx
    jb 1b

    # Paging on: CR3 = space 0, CR0.PG (bit 31).
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
