//! `guest-badmem`: a multiboot guest that reads a dword at guest-physical 0x4000_0000, outside
//! its RAM. Expected: the hypervisor stops the VM at that access. If execution continues it
//! prints `badmem: FAILED still running`, `result: fail` and exits with 0x11 (port 0xf4).
//!
//! Console on the expected path: `badmem: reading guest-physical 0x40000000 (outside RAM), the
//! VM should stop here` and nothing after.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[path = "../rt/mod.rs"]
mod rt;

#[cfg(target_os = "none")]
core::arch::global_asm!(
    include_str!("../rt/data.s"),
    include_str!("../rt/rt32.s"),
    r#"
    .section .rodata.guest, "a"
msg_hello:  .asciz "badmem: reading guest-physical 0x40000000 (outside RAM), the VM should stop here\n"
name:       .asciz "badmem"
det_still:  .asciz "still running"

    .section .text.guest, "ax"
    .code32
    .globl guest_main
guest_main:
    movl $msg_hello, %esi
    call puts32
    movl 0x40000000, %eax          # outside RAM: the VM must stop here
    # Still running: the access was not stopped.
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
