//! `guest-spaces64`: 4-level paging in 64-bit long mode with N_SPACES address spaces, switched
//! thousands of times, and page-table edits with their TLB maintenance: a test of a
//! hypervisor's shadow paging (it passes on EPT as well).
//!
//! Each space is a PML4 (its CR3): PML4[0] -> the space's PDPT; PDPT[0] -> the shared
//! identity page directory, PDPT[1] -> the space's own window page directory. The identity
//! PD's entry 0 -> the shared 4 KiB table `pt_low` identity-mapping 0 .. 2 MiB (which holds the
//! whole image: code, data, stack, tables), entries 1 .. 7 identity-map 2 .. 16 MiB with 2 MiB
//! pages, all supervisor-only. The window PD's entry 0 -> the space's window table mapping
//! virtual 0x4000_0000 .. + 16 pages to physical 8 MiB + s * 64 KiB (user, writable; the US bit
//! is set on the whole path). The 32-bit code builds the tables and enters long mode as
//! guest-long does; the workload (rt/spaces64.s) runs in 64-bit code, the same steps as
//! rt/spaces32.s (used by guest-spaces32 and guest-spacespae; the layout is in rt/spaces.s)
//! with qwords: switch CR3 round-robin SWITCHES times touching every window page, verify each
//! space's checksum through its window and through the identity map, and edit page tables: map,
//! unmap (#PF not present), read-only (#PF protection with CR0.WP = 1, a write with CR0.WP = 0),
//! remap, and a self-referencing write (the entry of `pt_low` mapping `pt_low` itself, written
//! through that mapping). An unexpected #PF prints `page-fault: FAILED unexpected, ...` and
//! exits with 0x11.
//!
//! Console on success:
//! ```text
//! spaces64: hello from guest-spaces64 (4 spaces, 2000 switches)
//! magic: ok
//! layout: ok
//! long-mode: ok
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
"#,
    include_str!("../rt/data.s"),
    include_str!("../rt/rt32.s"),
    include_str!("../rt/rt64.s"),
    include_str!("../rt/spaces.s"),
    include_str!("../rt/spaces64.s"),
    r#"
# Page tables (zeroed with .bss at entry).
    .section .bss.pt, "aw", @nobits
    .balign 4096
pml4s:      .skip N_SPACES * 4096  # space s: its PML4 (CR3) at pml4s + s * 4096
pdpts:      .skip N_SPACES * 4096
pd_ident:   .skip 4096             # shared: identity map of 0 .. 16 MiB
pds_win:    .skip N_SPACES * 4096  # space s: the PD for virtual 1 GiB .. 2 GiB
pt_win:     .skip N_SPACES * 4096  # space s: the window's page table
pt_low:     .skip 4096             # shared: identity map of 0 .. 2 MiB in 4 KiB pages

    .section .rodata.guest, "a"
msg_hello:  .asciz "spaces64: hello from guest-spaces64 ("
name_lm:    .asciz "long-mode"
det_lm:     .asciz "EFER.LMA or CR0.WP clear, EFER ="

    .section .text.guest, "ax"
    .code32
    .globl guest_main
guest_main:
    movl $msg_hello, %esi
    call spaces_start32            # hello, magic, layout; zeroes the window pages

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

    # Per space s: PML4[0] = PDPT_s | P | RW | US, PDPT_s[0] = pd_ident | P | RW,
    # PDPT_s[1] = pd_win_s | P | RW | US, pd_win_s[0] = pt_win_s | P | RW | US, window entry
    # i = (8 MiB + s * 64 KiB + i * 4 KiB) | P | RW | US.
    xorl %ebx, %ebx
.Ls64_space:
    movl %ebx, %esi
    shll $12, %esi                 # s * 4096
    leal pml4s(%esi), %eax
    movl %eax, cr3s(,%ebx,8)
    leal pdpts + 7(%esi), %eax
    movl %eax, pml4s(%esi)
    movl $pd_ident + 3, pdpts(%esi)
    leal pds_win + 7(%esi), %eax
    movl %eax, pdpts + 8(%esi)
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
    jb .Ls64_space

    # Long mode: CR4.PAE, CR3 = space 0, EFER.LME, CR0.PG and CR0.WP; then the 64-bit code
    # segment 0x18.
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
    orl $0x80000000 | CR0_WP, %eax
    movl %eax, %cr0
    ljmp $0x18, $spaces64_entry

    .code64
spaces64_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movq $stack_top, %rsp
    call idt64_install             # the 32-bit IDT is no use in long mode
    call pf_install64

    # long-mode: EFER.LMA (bit 10) and CR0.WP read back set
    movl $0xc0000080, %ecx
    rdmsr
    shlq $32, %rdx
    orq %rax, %rdx
    xorl %eax, %eax
    btq $10, %rdx
    setnc %al
    movq %cr0, %rcx
    testl $CR0_WP, %ecx
    jnz 1f
    movl $1, %eax
1:  movq $name_lm, %rsi
    movq $det_lm, %rdi
    call report64_val

    call spaces_main64
    jmp finish64
"#,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
