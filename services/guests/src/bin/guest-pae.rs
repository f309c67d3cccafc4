//! `guest-pae`: 32-bit PAE paging with three address spaces, staying in protected mode.
//!
//! Each space is a PDPT (CR3) of four entries: PDPT[0] -> one shared page directory that
//! identity-maps the first 16 MiB with 2 MiB pages, PDPT[1] -> a page directory of its own
//! whose entry 0 maps virtual 0x4000_0000 (1 GiB) to physical 8, 10 or 12 MiB (space 0, 1, 2).
//! PDPT[2..3] are not present. The guest writes a distinct pattern at 0x4000_0000 and at
//! 0x401f_fffc in each space, then, switching CR3 again, checks each space sees its own pattern
//! and that the physical pages (read through the identity map) hold the right ones.
//!
//! Console on success:
//! ```text
//! pae: hello from guest-pae
//! magic: ok
//! paging-on: ok
//! space0: ok
//! space1: ok
//! space2: ok
//! identity: ok
//! result: pass
//! ```
//! then exit 0x10 through port 0xf4 (0x11 after any failure).
#![cfg_attr(target_os = "none", no_std, no_main)]

#[path = "../rt/mod.rs"]
mod rt;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    include_str!("../rt/data.s"),
    include_str!("../rt/rt32.s"),
    r#"
# Page tables (zeroed with .bss at entry). A PDPT only needs 32-byte alignment; each gets its
# own page here for clarity.
    .section .bss.pt, "aw", @nobits
    .balign 4096
pdpts:      .skip 3 * 4096         # space s: pdpts + s * 4096 (4 PDPTEs used)
pds_hi:     .skip 3 * 4096         # space s: the PD for virtual 1 GiB .. 2 GiB
pd_ident:   .skip 4096             # shared: identity map of 0 .. 16 MiB

    .section .rodata.guest, "a"
    .balign 4
patterns:   .long 0xa5a51111, 0xa5a52222, 0xa5a53333
space_names: .long name_space0, name_space1, name_space2
msg_hello:  .asciz "pae: hello from guest-pae\n"
name_magic: .asciz "magic"
name_pg:    .asciz "paging-on"
name_space0: .asciz "space0"
name_space1: .asciz "space1"
name_space2: .asciz "space2"
name_ident: .asciz "identity"
det_magic:  .asciz "eax was"
det_pg:     .asciz "cr0.PG or cr4.PAE clear, cr4 ="
det_space:  .asciz "wrong value at 0x40000000 or 0x401ffffc, read"
det_ident:  .asciz "physical 8/10/12 MiB pages hold wrong patterns, mismatches:"

    .section .text.guest, "ax"
    .code32
    .globl guest_main
guest_main:
    movl $msg_hello, %esi
    call puts32

    # magic: EAX at entry was 0x2BADB002
    movl mb_magic, %edx
    xorl %eax, %eax
    cmpl $0x2badb002, %edx
    setne %al
    movl $name_magic, %esi
    movl $det_magic, %edi
    call report32_val

    # Identity PD: 8 x 2 MiB, P | RW | PS (0x83).
    movl $pd_ident, %edi
    movl $0x83, %eax
    movl $8, %ecx
.Lpae_ident:
    movl %eax, (%edi)              # high dword stays 0 (zeroed .bss)
    addl $0x200000, %eax
    addl $8, %edi
    decl %ecx
    jnz .Lpae_ident

    # Per space s: PDPT[0] = pd_ident | P, PDPT[1] = pd_hi_s | P (a PDPTE has only P and the
    # address: RW/US/A/D/PS are reserved there), PD_hi_s[0] = (8 MiB + s * 2 MiB) | 0x83.
    xorl %ebx, %ebx
.Lpae_space:
    movl %ebx, %esi
    shll $12, %esi                 # s * 4096
    movl $pd_ident, %eax
    orl $1, %eax
    movl %eax, pdpts(%esi)
    leal pds_hi(%esi), %eax
    orl $1, %eax
    movl %eax, pdpts + 8(%esi)
    movl %ebx, %eax
    shll $21, %eax
    addl $0x800000, %eax
    orl $0x83, %eax
    movl %eax, pds_hi(%esi)
    incl %ebx
    cmpl $3, %ebx
    jb .Lpae_space

    # Paging on: CR3 = space 0's PDPT, CR4.PAE (bit 5), CR0.PG (bit 31).
    movl $pdpts, %eax
    movl %eax, %cr3
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl %cr0, %eax
    orl $0x80000000, %eax
    movl %eax, %cr0

    # paging-on: CR0.PG and CR4.PAE read back set
    movl %cr4, %edx
    xorl %eax, %eax
    testl $0x20, %edx
    setz %al
    movl %cr0, %ecx
    testl $0x80000000, %ecx
    jnz 1f
    movl $1, %eax
1:  movl $name_pg, %esi
    movl $det_pg, %edi
    call report32_val

    # Write phase: in each space, its pattern at the start and the last dword of the 2 MiB page.
    xorl %ebx, %ebx
.Lpae_write:
    movl %ebx, %eax
    shll $12, %eax
    addl $pdpts, %eax
    movl %eax, %cr3                # reloads the four PDPTEs
    movl patterns(,%ebx,4), %eax
    movl %eax, 0x40000000
    movl %eax, 0x401ffffc
    incl %ebx
    cmpl $3, %ebx
    jb .Lpae_write

    # Verify phase: each space sees its own pattern at both places.
    xorl %ebx, %ebx
.Lpae_verify:
    movl %ebx, %eax
    shll $12, %eax
    addl $pdpts, %eax
    movl %eax, %cr3
    movl patterns(,%ebx,4), %ecx
    movl 0x40000000, %edx
    xorl %eax, %eax
    cmpl %ecx, %edx
    jne 1f
    movl 0x401ffffc, %edx
    cmpl %ecx, %edx
    je 2f
1:  movl $1, %eax
2:  movl space_names(,%ebx,4), %esi
    movl $det_space, %edi
    call report32_val
    incl %ebx
    cmpl $3, %ebx
    jb .Lpae_verify

    # identity: in every space, physical 8 + 2t MiB (identity-mapped) holds pattern t.
    xorl %edx, %edx                # mismatches
    xorl %ebx, %ebx                # space s
.Lpae_ident_space:
    movl %ebx, %eax
    shll $12, %eax
    addl $pdpts, %eax
    movl %eax, %cr3
    xorl %ecx, %ecx                # page t
.Lpae_ident_page:
    movl %ecx, %edi
    shll $21, %edi
    addl $0x800000, %edi
    movl patterns(,%ecx,4), %eax
    cmpl %eax, (%edi)
    je 1f
    incl %edx
1:  cmpl %eax, 0x1ffffc(%edi)
    je 2f
    incl %edx
2:  incl %ecx
    cmpl $3, %ecx
    jb .Lpae_ident_page
    incl %ebx
    cmpl $3, %ebx
    jb .Lpae_ident_space
    xorl %eax, %eax
    testl %edx, %edx
    setnz %al
    movl $name_ident, %esi
    movl $det_ident, %edi
    call report32_val
    ret                            # to finish32
    .code64
"#,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
