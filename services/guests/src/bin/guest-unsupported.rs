//! `guest-unsupported`: a multiboot guest that jumps to a TSS (a hardware task switch), which
//! always causes a VM exit that Umbra does not emulate: the VM must be stopped with a report
//! that names the task switch. If execution continues it prints
//! `unsupported: FAILED still running after the task switch`, `result: fail` and exits with
//! 0x11.
//!
//! Console on the expected path: `unsupported: jumping to a TSS, the VM should stop here` and
//! nothing after.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[path = "../rt/mod.rs"]
mod rt;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    include_str!("../rt/data.s"),
    include_str!("../rt/rt32.s"),
    r#"
    .section .rodata.guest, "a"
msg_hello:  .asciz "unsupported: jumping to a TSS, the VM should stop here\n"
name:       .asciz "unsupported"
det_still:  .asciz "still running after the task switch"

# The runtime's GDT (flat code 0x08, data 0x10, 64-bit code 0x18) and an available 32-bit TSS
# at 0x20 (its descriptor is built at run time: the TSS address is split across it).
    .section .data.guest, "aw"
    .balign 8
ts_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00af9a000000ffff
ts_tss_desc:
    .quad 0
ts_gdt_end:
    .balign 4
    .word 0
ts_gdt_desc:
    .word ts_gdt_end - ts_gdt - 1
    .long ts_gdt
    .balign 16
ts_tss:
    .skip 104

    .section .text.guest, "ax"
    .code32
    .globl guest_main
guest_main:
    movl $msg_hello, %esi
    call puts32
    movl $ts_tss, %edx
    movl %edx, %eax
    shll $16, %eax
    orl $0x67, %eax                # limit 15:0 = 0x67, base 15:0
    movl %eax, ts_tss_desc
    movl %edx, %eax
    shrl $16, %eax
    andl $0xff, %eax               # base 23:16
    orl $0x8900, %eax              # present, DPL 0, available 32-bit TSS
    andl $0xff000000, %edx
    orl %edx, %eax                 # base 31:24
    movl %eax, ts_tss_desc + 4
    lgdt ts_gdt_desc
    ljmp $0x20, $0                 # task switch: a VM exit Umbra does not emulate
    movl $1, %eax
    movl $name, %esi
    movl $det_still, %edi
    call report32
    ret                            # to finish32: result: fail, exit 0x11
    .code64
"#,
    options(att_syntax)
);

#[cfg(not(target_os = "none"))]
fn main() {}
