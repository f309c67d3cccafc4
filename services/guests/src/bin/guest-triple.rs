//! `guest-triple`: a multiboot guest that loads an IDT with limit 0 and executes `int3`:
//! #BP, #GP and #DF all miss the IDT, so the CPU triple-faults and the VM must be stopped. If
//! execution continues it prints `triple: FAILED still running after int3 with a zero-limit
//! IDT`, `result: fail` and exits with 0x11.
//!
//! Console on the expected path: `triple: int3 with a zero-limit IDT, the VM should stop here
//! (triple fault)` and nothing after.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[path = "../rt/mod.rs"]
mod rt;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    include_str!("../rt/data.s"),
    include_str!("../rt/rt32.s"),
    r#"
    .section .data.guest, "aw"
    .balign 4
    .word 0                        # pad: base 4-aligned
null_idt_desc:
    .word 0                        # limit 0: no vector is inside the IDT
    .long 0

    .section .rodata.guest, "a"
msg_hello:  .asciz "triple: int3 with a zero-limit IDT, the VM should stop here (triple fault)\n"
name:       .asciz "triple"
det_still:  .asciz "still running after int3 with a zero-limit IDT"

    .section .text.guest, "ax"
    .code32
    .globl guest_main
guest_main:
    movl $msg_hello, %esi
    call puts32
    lidt null_idt_desc
    int3                           # #BP -> #GP -> #DF -> triple fault
    lidt idt32_desc                # (not reached) the runtime's IDT again
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
