//! `guest-mmubench64`: the shadow-MMU benchmark (rt/mmubench.s, which describes the
//! measurements, the command line and the layout) with 4-level paging in 64-bit long mode.
//!
//! Sixteen address spaces, each a PML4 (its CR3): PML4[0] -> the space's PDPT; PDPT[0] -> the
//! shared identity page directory, whose entry 0 -> the shared table `pt_low` identity-mapping
//! 0 .. 2 MiB (the whole image); PDPT[1] -> the space's own page directory for virtual 1 GiB ..
//! 2 GiB: entry 0 -> its window table (WIN_VA -> its window page), entry 2 -> the shared table
//! `pt_fresh` (FRESH_VA ..). Every entry P | RW, supervisor. The 32-bit code builds the tables
//! and enters long mode as guest-spaces64 does; the measurements run in 64-bit code.
//!
//! Console on success, with the command line `policy=umbra spaces=0` as the `bench-mmu`
//! scenario gives it (micro-benchmarks; the command line is echoed in each result line; N
//! decimal):
//! ```text
//! hello: shadow MMU benchmark, command line "policy=umbra spaces=0"
//! cmdline: ok
//! layout: ok
//! mmubench: mode=64-bit policy=umbra spaces=0 op=first_touch median=N mean=N min=N n=256
//! first-touch: ok
//! mmubench: mode=64-bit policy=umbra spaces=0 op=cr3_hit median=N mean=N min=N n=256
//! mmubench: mode=64-bit policy=umbra spaces=0 op=cr3_miss median=N mean=N min=N n=64
//! tags: ok
//! result: pass
//! ```
//! and with `policy=P spaces=N` (N = 2 .. 16, the workload) one line `mmubench: mode=64-bit
//! policy=P spaces=N op=switch_touch ... n=400` before `tags: ok`; then exit 0x10 through
//! port 0xf4 (0x11 after any failure).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[path = "../rt/mod.rs"]
mod rt;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    r#"
    .set MB_LONG, 1
    .set MB_MODE, 3
    .set PTE_SHIFT, 3
    .set LOW_SPAN, 0x200000        # what pt_low maps: 512 x 4 KiB
"#,
    include_str!("../rt/data.s"),
    include_str!("../rt/rt32.s"),
    include_str!("../rt/rt64.s"),
    include_str!("../rt/mmubench.s"),
    r#"
# Page tables (zeroed with .bss at entry).
    .section .bss.pt, "aw", @nobits
    .balign 4096
pml4s:      .skip MAX_SPACES * 4096  # space s: its PML4 (CR3) at pml4s + s * 4096
pdpts:      .skip MAX_SPACES * 4096
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

    # Per space s: PML4[0] = PDPT_s, PDPT_s[0] = pd_ident, PDPT_s[1] = pd_win_s,
    # pd_win_s[0] = pt_win_s, pd_win_s[2] = pt_fresh; all P | RW.
    xorl %ebx, %ebx
1:  movl %ebx, %esi
    shll $12, %esi                 # s * 4096
    leal pml4s(%esi), %eax
    movl %eax, cr3s(,%ebx,8)
    leal pdpts + 3(%esi), %eax
    movl %eax, pml4s(%esi)
    movl $pd_ident + 3, pdpts(%esi)
    leal pds_win + 3(%esi), %eax
    movl %eax, pdpts + 8(%esi)
    leal pts_win + 3(%esi), %eax
    movl %eax, pds_win(%esi)
    movl $pt_fresh + 3, pds_win + 2 * 8(%esi)
    incl %ebx
    cmpl $MAX_SPACES, %ebx
    jb 1b

    # Long mode: CR4.PAE, CR3 = space 0, EFER.LME, CR0.PG; then the 64-bit code segment 0x18.
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl cr3s, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000000, %eax
    movl %eax, %cr0
    ljmp $0x18, $mmubench64_entry

    .code64
mmubench64_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movq $stack_top, %rsp
    call idt64_install             # the 32-bit IDT is no use in long mode
    call mmub_main
    jmp finish64
"#,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
