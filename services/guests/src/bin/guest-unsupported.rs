//! `guest-unsupported`: a multiboot guest that executes `invd`, which always causes a VM exit
//! that the VMM does not handle: the VM must be stopped with a report. If execution continues
//! it prints `unsupported: FAILED still running after invd`, `result: fail` and exits with 0x11.
//!
//! Console on the expected path: `unsupported: executing invd, the VM should stop here` and
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
msg_hello:  .asciz "unsupported: executing invd, the VM should stop here\n"
name:       .asciz "unsupported"
det_still:  .asciz "still running after invd"

    .section .text.guest, "ax"
    .code32
    .globl guest_main
guest_main:
    movl $msg_hello, %esi
    call puts32
    invd                           # unconditional VM exit the VMM does not handle
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
