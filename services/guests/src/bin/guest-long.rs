//! `guest-long`: from multiboot's 32-bit entry to 64-bit long mode with its own 4-level page
//! tables, three address spaces (three PML4s).
//!
//! Each space: PML4[0] -> PDPT_s; PDPT_s[0] -> one shared page directory identity-mapping the
//! first 16 MiB with 2 MiB pages; PDPT_s[1] -> PD_s whose entry 0 maps virtual 0x4000_0000
//! (1 GiB) to physical 8, 10 or 12 MiB (space 0, 1, 2). The 32-bit code builds the tables,
//! enables CR4.PAE, EFER.LME (wrmsr 0xc0000080) and CR0.PG, and far-jumps to the 64-bit code
//! segment 0x18. In 64-bit mode the guest writes a distinct pattern at 0x4000_0000 and at
//! 0x401f_fff8 in each space, then, switching CR3 again, checks each space sees its own pattern
//! and that the physical pages (read through the identity map) hold the right ones.
//!
//! Console on success:
//! ```text
//! long: hello from guest-long
//! magic: ok
//! long-mode: ok
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
    include_str!("../rt/rt64.s"),
    r#"
# Page tables (zeroed with .bss at entry).
    .section .bss.pt, "aw", @nobits
    .balign 4096
pml4s:      .skip 3 * 4096         # space s: pml4s + s * 4096 (its CR3)
pdpts:      .skip 3 * 4096
pds_hi:     .skip 3 * 4096         # space s: the PD for virtual 1 GiB .. 2 GiB
pd_ident:   .skip 4096             # shared: identity map of 0 .. 16 MiB

    .section .rodata.guest, "a"
    .balign 8
patterns:   .quad 0xc0de00001111aaaa, 0xc0de00002222bbbb, 0xc0de00003333cccc
cr3s:       .quad pml4s, pml4s + 4096, pml4s + 8192
space_names: .quad name_space0, name_space1, name_space2
msg_hello:  .asciz "long: hello from guest-long\n"
name_magic: .asciz "magic"
name_lm:    .asciz "long-mode"
name_space0: .asciz "space0"
name_space1: .asciz "space1"
name_space2: .asciz "space2"
name_ident: .asciz "identity"
det_magic:  .asciz "eax was"
det_lm:     .asciz "EFER.LMA clear, EFER ="
det_space:  .asciz "wrong value at 0x40000000 or 0x401ffff8, read"
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
.Llong_ident:
    movl %eax, (%edi)              # high dword stays 0 (zeroed .bss)
    addl $0x200000, %eax
    addl $8, %edi
    decl %ecx
    jnz .Llong_ident

    # Per space s: PML4[0] = PDPT_s | P | RW, PDPT_s[0] = pd_ident | P | RW,
    # PDPT_s[1] = PD_s | P | RW, PD_s[0] = (8 MiB + s * 2 MiB) | P | RW | PS.
    xorl %ebx, %ebx
.Llong_space:
    movl %ebx, %esi
    shll $12, %esi                 # s * 4096
    leal pdpts(%esi), %eax
    orl $3, %eax
    movl %eax, pml4s(%esi)
    movl $pd_ident, %eax
    orl $3, %eax
    movl %eax, pdpts(%esi)
    leal pds_hi(%esi), %eax
    orl $3, %eax
    movl %eax, pdpts + 8(%esi)
    movl %ebx, %eax
    shll $21, %eax
    addl $0x800000, %eax
    orl $0x83, %eax
    movl %eax, pds_hi(%esi)
    incl %ebx
    cmpl $3, %ebx
    jb .Llong_space

    # Long mode: CR4.PAE (bit 5), CR3 = space 0, EFER.LME (bit 8), CR0.PG (bit 31) -> IA-32e
    # mode (compatibility mode until the far jump into the 64-bit code segment 0x18).
    movl %cr4, %eax
    orl $0x20, %eax
    movl %eax, %cr4
    movl $pml4s, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80000000, %eax
    movl %eax, %cr0
    ljmp $0x18, $long64_entry

    .code64
long64_entry:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movq $stack_top, %rsp
    call idt64_install             # the 32-bit IDT is no use in long mode

    # long-mode: EFER.LMA (bit 10) reads back set
    movl $0xc0000080, %ecx
    rdmsr
    shlq $32, %rdx
    orq %rax, %rdx
    xorl %eax, %eax
    btq $10, %rdx
    setnc %al
    movq $name_lm, %rsi
    movq $det_lm, %rdi
    call report64_val

    # Write phase: in each space, its pattern at the start and the last qword of the 2 MiB page.
    xorl %ebx, %ebx
.Llong_write:
    movq cr3s(,%rbx,8), %rax
    movq %rax, %cr3
    movq patterns(,%rbx,8), %rax
    movq $0x40000000, %rdi
    movq %rax, (%rdi)
    movq %rax, 0x1ffff8(%rdi)
    incl %ebx
    cmpl $3, %ebx
    jb .Llong_write

    # Verify phase: each space sees its own pattern at both places.
    xorl %ebx, %ebx
.Llong_verify:
    movq cr3s(,%rbx,8), %rax
    movq %rax, %cr3
    movq patterns(,%rbx,8), %rcx
    movq $0x40000000, %rdi
    movq (%rdi), %rdx
    xorl %eax, %eax
    cmpq %rcx, %rdx
    jne 1f
    movq 0x1ffff8(%rdi), %rdx
    cmpq %rcx, %rdx
    je 2f
1:  movl $1, %eax
2:  movq space_names(,%rbx,8), %rsi
    movq $det_space, %rdi
    call report64_val
    incl %ebx
    cmpl $3, %ebx
    jb .Llong_verify

    # identity: in every space, physical 8 + 2t MiB (identity-mapped) holds pattern t.
    xorl %edx, %edx                # mismatches
    xorl %ebx, %ebx                # space s
.Llong_ident_space:
    movq cr3s(,%rbx,8), %rax
    movq %rax, %cr3
    xorl %ecx, %ecx                # page t
.Llong_ident_page:
    movl %ecx, %edi
    shll $21, %edi
    addl $0x800000, %edi
    movq patterns(,%rcx,8), %rax
    cmpq %rax, (%rdi)
    je 1f
    incl %edx
1:  cmpq %rax, 0x1ffff8(%rdi)
    je 2f
    incl %edx
2:  incl %ecx
    cmpl $3, %ecx
    jb .Llong_ident_page
    incl %ebx
    cmpl $3, %ebx
    jb .Llong_ident_space
    xorl %eax, %eax
    testl %edx, %edx
    setnz %al
    movq $name_ident, %rsi
    movq $det_ident, %rdi
    call report64_val
    jmp finish64
"#,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
