//! Ring-3 self-tests of the `kernel` scenario, driven as a small state machine: each test runs
//! one hand-assembled user program in a fresh address space (through `kentry::enter`); the
//! program ends with `TaskExit` or a fault, `kentry` reports that to [`ended`], which checks
//! the outcome and starts the next program, and after the last one prints the summary and
//! ends the scenario. Kernel-side checks of user address spaces and the timer run before, in
//! the ordinary check table ([`KERNEL_CHECKS`]).
//!
//! Every program uses the same layout: code at [`CODE_VA`] (R-X), a data page at [`DATA_VA`]
//! (RW-, NX), a read-only page at [`RO_VA`], one stack page below `layout::STACK_TOP`.

// A failure carries its message inline (no heap in the kernel), as in `selftest`.
#![allow(clippy::result_large_err)]

use crate::arch::{gdt, timer, user};
use crate::kentry;
use crate::mm::uspace::{self, AddressSpace, KernelMachine};
use crate::selftest::{self, ensure, msg, msg_dbg, Check, Outcome};
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use heapless::String;
use microkernel::bootinfo::BootInfo;
use microkernel::kobj::machine::{Machine, MapError, PageAccess};
use microkernel::kobj::regs::UserRegs;
use microkernel::PAGE_SIZE;
use spin::Mutex;

use abi::ipc::layout::{STACK_TOP, USER_MIN};

/// Where the program page is mapped.
pub const CODE_VA: u64 = USER_MIN;
/// A read-write, no-execute page; the timer program spins until its first quadword is set.
pub const DATA_VA: u64 = USER_MIN + 0x1000;
/// A read-only page.
pub const RO_VA: u64 = USER_MIN + 0x2000;
/// Never mapped.
pub const UNMAPPED_VA: u64 = 0x50_0000;
/// A kernel address user code reads (the first page of the kernel text).
const KERNEL_VA: u64 = 0xffff_ffff_8020_0000;

// Entry points (offsets into `CODE`).
const HELLO: u64 = 0x0;
const BADPTR: u64 = 0x30;
const REGS: u64 = 0x80;
const TIMER: u64 = 0x180;
const PF_READ: u64 = 0x3b0;
const PF_WRITE_RO: u64 = 0x3d0;
const KERNEL_READ: u64 = 0x3e0;
const NX_EXEC: u64 = 0x3f0;
const PRIV_CLI: u64 = 0x400;
const UMIP_SGDT: u64 = 0x488;
const SEGMENTS: u64 = 0x4a0;
const LSL_SWEEP: u64 = 0x4e0;

/// The user programs, assembled by hand for the layout above (GNU as, Intel syntax; the
/// source is the comments). Data: `hello` text, the expected stack top and the values every
/// register is loaded with (`expected`, one quadword per register, rax..r15).
#[rustfmt::skip]
static CODE: [u8; 1288] = [
    // hello: (offset 0x0)
    0x48, 0x8d, 0x3d, 0x15, 0x00, 0x00, 0x00, // lea rdi,[rip+0x15]
    0xbe, 0x11, 0x00, 0x00, 0x00, // mov esi,0x11
    0x31, 0xc0, // xor eax,eax
    0x0f, 0x05, // syscall
    0x48, 0x89, 0xc7, // mov rdi,rax
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    0x0f, 0x0b, // ud2
    // msg: (offset 0x1c)
    0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x20, 0x66, 0x72, // "hello from ring 3"
    0x6f, 0x6d, 0x20, 0x72, 0x69, 0x6e, 0x67, 0x20, // "hello from ring 3"
    0x33, // "hello from ring 3"
    // msg_end: (offset 0x2d)
    0x0f, 0x1f, 0x00, // nop DWORD PTR [rax]
    // badptr: (offset 0x30)
    0x48, 0xbf, 0x00, 0x00, 0x20, 0x80, 0xff, 0xff, 0xff, 0xff, // movabs rdi,0xffffffff80200000
    0xbe, 0x08, 0x00, 0x00, 0x00, // mov esi,0x8
    0x31, 0xc0, // xor eax,eax
    0x0f, 0x05, // syscall
    0x48, 0x89, 0xc3, // mov rbx,rax
    0xbf, 0x00, 0x00, 0x50, 0x00, // mov edi,0x500000
    0xbe, 0x08, 0x00, 0x00, 0x00, // mov esi,0x8
    0x31, 0xc0, // xor eax,eax
    0x0f, 0x05, // syscall
    0x48, 0xc1, 0xe3, 0x08, // shl rbx,0x8
    0x48, 0x09, 0xc3, // or rbx,rax
    0xbf, 0xfc, 0x2f, 0x40, 0x00, // mov edi,0x402ffc
    0xbe, 0x08, 0x00, 0x00, 0x00, // mov esi,0x8
    0x31, 0xc0, // xor eax,eax
    0x0f, 0x05, // syscall
    0x48, 0xc1, 0xe3, 0x08, // shl rbx,0x8
    0x48, 0x09, 0xc3, // or rbx,rax
    0x48, 0x89, 0xdf, // mov rdi,rbx
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    0x0f, 0x0b, // ud2
    0x0f, 0x1f, 0x40, 0x00, // nop DWORD PTR [rax+0x0]
    // regs: (offset 0x80)
    0x48, 0x8b, 0x05, 0x89, 0x03, 0x00, 0x00, // mov rax,QWORD PTR [rip+0x389]
    0x48, 0x8b, 0x1d, 0x8a, 0x03, 0x00, 0x00, // mov rbx,QWORD PTR [rip+0x38a]
    0x48, 0x8b, 0x0d, 0x8b, 0x03, 0x00, 0x00, // mov rcx,QWORD PTR [rip+0x38b]
    0x48, 0x8b, 0x15, 0x8c, 0x03, 0x00, 0x00, // mov rdx,QWORD PTR [rip+0x38c]
    0x48, 0x8b, 0x35, 0x8d, 0x03, 0x00, 0x00, // mov rsi,QWORD PTR [rip+0x38d]
    0x48, 0x8b, 0x3d, 0x8e, 0x03, 0x00, 0x00, // mov rdi,QWORD PTR [rip+0x38e]
    0x48, 0x8b, 0x2d, 0x8f, 0x03, 0x00, 0x00, // mov rbp,QWORD PTR [rip+0x38f]
    0x4c, 0x8b, 0x05, 0x90, 0x03, 0x00, 0x00, // mov r8,QWORD PTR [rip+0x390]
    0x4c, 0x8b, 0x0d, 0x91, 0x03, 0x00, 0x00, // mov r9,QWORD PTR [rip+0x391]
    0x4c, 0x8b, 0x15, 0x92, 0x03, 0x00, 0x00, // mov r10,QWORD PTR [rip+0x392]
    0x4c, 0x8b, 0x1d, 0x93, 0x03, 0x00, 0x00, // mov r11,QWORD PTR [rip+0x393]
    0x4c, 0x8b, 0x25, 0x94, 0x03, 0x00, 0x00, // mov r12,QWORD PTR [rip+0x394]
    0x4c, 0x8b, 0x2d, 0x95, 0x03, 0x00, 0x00, // mov r13,QWORD PTR [rip+0x395]
    0x4c, 0x8b, 0x35, 0x96, 0x03, 0x00, 0x00, // mov r14,QWORD PTR [rip+0x396]
    0x4c, 0x8b, 0x3d, 0x97, 0x03, 0x00, 0x00, // mov r15,QWORD PTR [rip+0x397]
    0xb8, 0x03, 0x00, 0x00, 0x00, // mov eax,0x3
    0x0f, 0x05, // syscall
    0x48, 0x3b, 0x1d, 0x21, 0x03, 0x00, 0x00, // cmp rbx,QWORD PTR [rip+0x321]
    0x0f, 0x85, 0xf5, 0x01, 0x00, 0x00, // jne 2f2
    0x48, 0x3b, 0x2d, 0x3c, 0x03, 0x00, 0x00, // cmp rbp,QWORD PTR [rip+0x33c]
    0x0f, 0x85, 0x24, 0x02, 0x00, 0x00, // jne 32e
    0x4c, 0x3b, 0x0d, 0x3f, 0x03, 0x00, 0x00, // cmp r9,QWORD PTR [rip+0x33f]
    0x0f, 0x85, 0x2f, 0x02, 0x00, 0x00, // jne 346
    0x4c, 0x3b, 0x15, 0x3a, 0x03, 0x00, 0x00, // cmp r10,QWORD PTR [rip+0x33a]
    0x0f, 0x85, 0x2e, 0x02, 0x00, 0x00, // jne 352
    0x4c, 0x3b, 0x25, 0x3d, 0x03, 0x00, 0x00, // cmp r12,QWORD PTR [rip+0x33d]
    0x0f, 0x85, 0x39, 0x02, 0x00, 0x00, // jne 36a
    0x4c, 0x3b, 0x2d, 0x38, 0x03, 0x00, 0x00, // cmp r13,QWORD PTR [rip+0x338]
    0x0f, 0x85, 0x38, 0x02, 0x00, 0x00, // jne 376
    0x4c, 0x3b, 0x35, 0x33, 0x03, 0x00, 0x00, // cmp r14,QWORD PTR [rip+0x333]
    0x0f, 0x85, 0x37, 0x02, 0x00, 0x00, // jne 382
    0x4c, 0x3b, 0x3d, 0x2e, 0x03, 0x00, 0x00, // cmp r15,QWORD PTR [rip+0x32e]
    0x0f, 0x85, 0x36, 0x02, 0x00, 0x00, // jne 38e
    0x48, 0x3b, 0x25, 0xa9, 0x02, 0x00, 0x00, // cmp rsp,QWORD PTR [rip+0x2a9]
    0x0f, 0x85, 0x35, 0x02, 0x00, 0x00, // jne 39a
    0xbf, 0x00, 0x00, 0x00, 0x00, // mov edi,0x0
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00, // data16 cs nop WORD PTR [rax+rax*1+0x0]
    0x0f, 0x1f, 0x40, 0x00, // nop DWORD PTR [rax+0x0]
    // timer: (offset 0x180)
    0x48, 0x8b, 0x05, 0x89, 0x02, 0x00, 0x00, // mov rax,QWORD PTR [rip+0x289]
    0x48, 0x8b, 0x1d, 0x8a, 0x02, 0x00, 0x00, // mov rbx,QWORD PTR [rip+0x28a]
    0x48, 0x8b, 0x0d, 0x8b, 0x02, 0x00, 0x00, // mov rcx,QWORD PTR [rip+0x28b]
    0x48, 0x8b, 0x15, 0x8c, 0x02, 0x00, 0x00, // mov rdx,QWORD PTR [rip+0x28c]
    0x48, 0x8b, 0x35, 0x8d, 0x02, 0x00, 0x00, // mov rsi,QWORD PTR [rip+0x28d]
    0x48, 0x8b, 0x3d, 0x8e, 0x02, 0x00, 0x00, // mov rdi,QWORD PTR [rip+0x28e]
    0x48, 0x8b, 0x2d, 0x8f, 0x02, 0x00, 0x00, // mov rbp,QWORD PTR [rip+0x28f]
    0x4c, 0x8b, 0x05, 0x90, 0x02, 0x00, 0x00, // mov r8,QWORD PTR [rip+0x290]
    0x4c, 0x8b, 0x0d, 0x91, 0x02, 0x00, 0x00, // mov r9,QWORD PTR [rip+0x291]
    0x4c, 0x8b, 0x15, 0x92, 0x02, 0x00, 0x00, // mov r10,QWORD PTR [rip+0x292]
    0x4c, 0x8b, 0x1d, 0x93, 0x02, 0x00, 0x00, // mov r11,QWORD PTR [rip+0x293]
    0x4c, 0x8b, 0x25, 0x94, 0x02, 0x00, 0x00, // mov r12,QWORD PTR [rip+0x294]
    0x4c, 0x8b, 0x2d, 0x95, 0x02, 0x00, 0x00, // mov r13,QWORD PTR [rip+0x295]
    0x4c, 0x8b, 0x35, 0x96, 0x02, 0x00, 0x00, // mov r14,QWORD PTR [rip+0x296]
    0x4c, 0x8b, 0x3d, 0x97, 0x02, 0x00, 0x00, // mov r15,QWORD PTR [rip+0x297]
    // spin: (offset 0x1e9)
    0x48, 0x83, 0x3c, 0x25, 0x00, 0x10, 0x40, 0x00, 0x00, // cmp QWORD PTR ds:0x401000,0x0
    0x75, 0x16, // jne 20a
    0x48, 0xff, 0x0c, 0x25, 0x08, 0x10, 0x40, 0x00, // dec QWORD PTR ds:0x401008
    0x75, 0xeb, // jne 1e9
    0xbf, 0xad, 0xde, 0x00, 0x00, // mov edi,0xdead
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    // spun: (offset 0x20a)
    0x48, 0x3b, 0x05, 0xff, 0x01, 0x00, 0x00, // cmp rax,QWORD PTR [rip+0x1ff]
    0x0f, 0x85, 0xcf, 0x00, 0x00, 0x00, // jne 2e6
    0x48, 0x3b, 0x1d, 0xfa, 0x01, 0x00, 0x00, // cmp rbx,QWORD PTR [rip+0x1fa]
    0x0f, 0x85, 0xce, 0x00, 0x00, 0x00, // jne 2f2
    0x48, 0x3b, 0x0d, 0xf5, 0x01, 0x00, 0x00, // cmp rcx,QWORD PTR [rip+0x1f5]
    0x0f, 0x85, 0xcd, 0x00, 0x00, 0x00, // jne 2fe
    0x48, 0x3b, 0x15, 0xf0, 0x01, 0x00, 0x00, // cmp rdx,QWORD PTR [rip+0x1f0]
    0x0f, 0x85, 0xcc, 0x00, 0x00, 0x00, // jne 30a
    0x48, 0x3b, 0x35, 0xeb, 0x01, 0x00, 0x00, // cmp rsi,QWORD PTR [rip+0x1eb]
    0x0f, 0x85, 0xcb, 0x00, 0x00, 0x00, // jne 316
    0x48, 0x3b, 0x3d, 0xe6, 0x01, 0x00, 0x00, // cmp rdi,QWORD PTR [rip+0x1e6]
    0x0f, 0x85, 0xca, 0x00, 0x00, 0x00, // jne 322
    0x48, 0x3b, 0x2d, 0xe1, 0x01, 0x00, 0x00, // cmp rbp,QWORD PTR [rip+0x1e1]
    0x0f, 0x85, 0xc9, 0x00, 0x00, 0x00, // jne 32e
    0x4c, 0x3b, 0x05, 0xdc, 0x01, 0x00, 0x00, // cmp r8,QWORD PTR [rip+0x1dc]
    0x0f, 0x85, 0xc8, 0x00, 0x00, 0x00, // jne 33a
    0x4c, 0x3b, 0x0d, 0xd7, 0x01, 0x00, 0x00, // cmp r9,QWORD PTR [rip+0x1d7]
    0x0f, 0x85, 0xc7, 0x00, 0x00, 0x00, // jne 346
    0x4c, 0x3b, 0x15, 0xd2, 0x01, 0x00, 0x00, // cmp r10,QWORD PTR [rip+0x1d2]
    0x0f, 0x85, 0xc6, 0x00, 0x00, 0x00, // jne 352
    0x4c, 0x3b, 0x1d, 0xcd, 0x01, 0x00, 0x00, // cmp r11,QWORD PTR [rip+0x1cd]
    0x0f, 0x85, 0xc5, 0x00, 0x00, 0x00, // jne 35e
    0x4c, 0x3b, 0x25, 0xc8, 0x01, 0x00, 0x00, // cmp r12,QWORD PTR [rip+0x1c8]
    0x0f, 0x85, 0xc4, 0x00, 0x00, 0x00, // jne 36a
    0x4c, 0x3b, 0x2d, 0xc3, 0x01, 0x00, 0x00, // cmp r13,QWORD PTR [rip+0x1c3]
    0x0f, 0x85, 0xc3, 0x00, 0x00, 0x00, // jne 376
    0x4c, 0x3b, 0x35, 0xbe, 0x01, 0x00, 0x00, // cmp r14,QWORD PTR [rip+0x1be]
    0x0f, 0x85, 0xc2, 0x00, 0x00, 0x00, // jne 382
    0x4c, 0x3b, 0x3d, 0xb9, 0x01, 0x00, 0x00, // cmp r15,QWORD PTR [rip+0x1b9]
    0x0f, 0x85, 0xc1, 0x00, 0x00, 0x00, // jne 38e
    0x48, 0x3b, 0x25, 0x34, 0x01, 0x00, 0x00, // cmp rsp,QWORD PTR [rip+0x134]
    0x0f, 0x85, 0xc0, 0x00, 0x00, 0x00, // jne 39a
    0xbf, 0x00, 0x00, 0x00, 0x00, // mov edi,0x0
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    // fail_rax: (offset 0x2e6)
    0xbf, 0x01, 0x00, 0x00, 0x00, // mov edi,0x1
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    // fail_rbx: (offset 0x2f2)
    0xbf, 0x02, 0x00, 0x00, 0x00, // mov edi,0x2
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    // fail_rcx: (offset 0x2fe)
    0xbf, 0x03, 0x00, 0x00, 0x00, // mov edi,0x3
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    // fail_rdx: (offset 0x30a)
    0xbf, 0x04, 0x00, 0x00, 0x00, // mov edi,0x4
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    // fail_rsi: (offset 0x316)
    0xbf, 0x05, 0x00, 0x00, 0x00, // mov edi,0x5
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    // fail_rdi: (offset 0x322)
    0xbf, 0x06, 0x00, 0x00, 0x00, // mov edi,0x6
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    // fail_rbp: (offset 0x32e)
    0xbf, 0x07, 0x00, 0x00, 0x00, // mov edi,0x7
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    // fail_r8: (offset 0x33a)
    0xbf, 0x08, 0x00, 0x00, 0x00, // mov edi,0x8
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    // fail_r9: (offset 0x346)
    0xbf, 0x09, 0x00, 0x00, 0x00, // mov edi,0x9
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    // fail_r10: (offset 0x352)
    0xbf, 0x0a, 0x00, 0x00, 0x00, // mov edi,0xa
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    // fail_r11: (offset 0x35e)
    0xbf, 0x0b, 0x00, 0x00, 0x00, // mov edi,0xb
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    // fail_r12: (offset 0x36a)
    0xbf, 0x0c, 0x00, 0x00, 0x00, // mov edi,0xc
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    // fail_r13: (offset 0x376)
    0xbf, 0x0d, 0x00, 0x00, 0x00, // mov edi,0xd
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    // fail_r14: (offset 0x382)
    0xbf, 0x0e, 0x00, 0x00, 0x00, // mov edi,0xe
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    // fail_r15: (offset 0x38e)
    0xbf, 0x0f, 0x00, 0x00, 0x00, // mov edi,0xf
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    // fail_rsp: (offset 0x39a)
    0xbf, 0x10, 0x00, 0x00, 0x00, // mov edi,0x10
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00, // cs nop WORD PTR [rax+rax*1+0x0]
    // pf_read: (offset 0x3b0)
    0x48, 0xbb, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, // movabs rbx,0x5a5a5a5a5a5a5a5a
    0x48, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x50, 0x00, // mov rax,QWORD PTR ds:0x500000
    0x0f, 0x0b, // ud2
    0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00, // data16 cs nop WORD PTR [rax+rax*1+0x0]
    0x90, // nop
    // pf_write_ro: (offset 0x3d0)
    0x48, 0xc7, 0x04, 0x25, 0x00, 0x20, 0x40, 0x00, 0x01, 0x00, 0x00, 0x00, // mov QWORD PTR ds:0x402000,0x1
    0x0f, 0x0b, // ud2
    0x66, 0x90, // xchg ax,ax
    // kernel_read: (offset 0x3e0)
    0x48, 0xb8, 0x00, 0x00, 0x20, 0x80, 0xff, 0xff, 0xff, 0xff, // movabs rax,0xffffffff80200000
    0x48, 0x8b, 0x00, // mov rax,QWORD PTR [rax]
    0x0f, 0x0b, // ud2
    0x90, // nop
    // nx_exec: (offset 0x3f0)
    0xb8, 0x00, 0x10, 0x40, 0x00, // mov eax,0x401000
    0xff, 0xe0, // jmp rax
    0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00, // nop WORD PTR [rax+rax*1+0x0]
    // priv_cli: (offset 0x400)
    0xfa, // cli
    0x0f, 0x0b, // ud2
    0x0f, 0x1f, 0x44, 0x00, 0x00, // nop DWORD PTR [rax+rax*1+0x0]
    // stack_top: (offset 0x408)
    0x00, 0x00, 0x00, 0xff, 0xff, 0x7f, 0x00, 0x00, // stack_top: 0x7fffff000000
    // expected: (offset 0x410)
    0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, // expected rax = 0x0101010101010101
    0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, 0x12, // expected rbx = 0x1212121212121212
    0x23, 0x23, 0x23, 0x23, 0x23, 0x23, 0x23, 0x23, // expected rcx = 0x2323232323232323
    0x34, 0x34, 0x34, 0x34, 0x34, 0x34, 0x34, 0x34, // expected rdx = 0x3434343434343434
    0x45, 0x45, 0x45, 0x45, 0x45, 0x45, 0x45, 0x45, // expected rsi = 0x4545454545454545
    0x56, 0x56, 0x56, 0x56, 0x56, 0x56, 0x56, 0x56, // expected rdi = 0x5656565656565656
    0x67, 0x67, 0x67, 0x67, 0x67, 0x67, 0x67, 0x67, // expected rbp = 0x6767676767676767
    0x78, 0x78, 0x78, 0x78, 0x78, 0x78, 0x78, 0x78, // expected r8 = 0x7878787878787878
    0xa9, 0x89, 0x89, 0x89, 0x89, 0x89, 0x89, 0x89, // expected r9 = 0x89898989898989a9
    0x9a, 0x9a, 0x9a, 0x9a, 0x9a, 0x9a, 0x9a, 0x9a, // expected r10 = 0x9a9a9a9a9a9a9a9a
    0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, // expected r11 = 0xabababababababab
    0xbc, 0xbc, 0xbc, 0xbc, 0xbc, 0xbc, 0xbc, 0xbc, // expected r12 = 0xbcbcbcbcbcbcbcbc
    0xcd, 0xcd, 0xcd, 0xcd, 0xcd, 0xcd, 0xcd, 0xcd, // expected r13 = 0xcdcdcdcdcdcdcdcd
    0xde, 0xde, 0xde, 0xde, 0xde, 0xde, 0xde, 0xde, // expected r14 = 0xdededededededede
    0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, 0xef, // expected r15 = 0xefefefefefefefef
    // umip_sgdt: (offset 0x488)
    0x0f, 0x01, 0x04, 0x25, 0x00, 0x10, 0x40, 0x00, // sgdt ds:0x401000
    0xbf, 0x05, 0x00, 0x00, 0x00, // mov edi,0x5
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    0x0f, 0x0b, // ud2
    0x00, 0x00, // padding
    // segments: (offset 0x4a0)
    0x66, 0x8c, 0xd0, // mov ax,ss
    0x8e, 0xd8, // mov ds,eax
    0x8e, 0xc0, // mov es,eax
    0x8e, 0xe0, // mov fs,eax
    0x8e, 0xe8, // mov gs,eax
    0xb8, 0x03, 0x00, 0x00, 0x00, // mov eax,0x3
    0x0f, 0x05, // syscall
    0x66, 0x8c, 0xd8, // mov ax,ds
    0x66, 0x8c, 0xc3, // mov bx,es
    0x66, 0x09, 0xd8, // or ax,bx
    0x66, 0x8c, 0xe3, // mov bx,fs
    0x66, 0x09, 0xd8, // or ax,bx
    0x66, 0x8c, 0xeb, // mov bx,gs
    0x66, 0x09, 0xd8, // or ax,bx
    0x0f, 0xb7, 0xf8, // movzx edi,ax
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    0x0f, 0x0b, // ud2
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // padding
    // lsl_sweep: (offset 0x4e0)
    0x89, 0xf9, // mov ecx,edi
    0x0f, 0x03, 0xc1, // lsl eax,ecx
    0x74, 0x16, // je lsl_sweep+0x1d
    0x83, 0xc1, 0x08, // add ecx,0x8
    0x81, 0xf9, 0x00, 0x00, 0x01, 0x00, // cmp ecx,0x10000
    0x72, 0xf0, // jb lsl_sweep+0x2
    0x31, 0xff, // xor edi,edi
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    0x0f, 0x0b, // ud2
    0x89, 0xcf, // mov edi,ecx
    0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax,0x1
    0x0f, 0x05, // syscall
    0x0f, 0x0b, // ud2
];

/// Iterations the timer program spins at most before giving up (exit code 0xdead).
const SPIN_BUDGET: u64 = 1 << 28;

/// A non-canonical `rip` a thread is started at: `return_to_user` must turn it into a #GP.
const NONCANONICAL_RIP: u64 = 0x0000_8000_0000_0000;

/// How a user thread ended.
#[derive(Clone, Copy, Debug)]
pub enum End {
    /// `TaskExit(code)`.
    Exit(u64),
    /// An exception in ring 3 (`cr2` is 0 unless `vector` is 14).
    Fault {
        vector: u8,
        error_code: u64,
        cr2: u64,
        regs: UserRegs,
    },
}

struct Test {
    name: &'static str,
    /// Initial `rip`.
    rip: u64,
    /// Whether this machine can run the test (else it is reported as skipped).
    runs: fn() -> bool,
    /// The program's argument (in `rdi`).
    arg: fn() -> u64,
    check: fn(&End) -> Outcome,
}

fn always() -> bool {
    true
}

fn no_arg() -> u64 {
    0
}

const TESTS: &[Test] = &[
    Test {
        name: "user.debug_write",
        rip: CODE_VA + HELLO,
        runs: always,
        arg: no_arg,
        check: |end| expect_exit(end, 0),
    },
    Test {
        name: "user.debug_write_bad_pointers",
        rip: CODE_VA + BADPTR,
        runs: always,
        arg: no_arg,
        // Kernel pointer, unmapped pointer, range running off a mapped page: BadPointer each.
        check: |end| expect_exit(end, 0x06_0606),
    },
    Test {
        name: "user.syscall_preserves_registers",
        rip: CODE_VA + REGS,
        runs: always,
        arg: no_arg,
        check: |end| expect_exit(end, 0),
    },
    Test {
        name: "user.timer_irq_preserves_registers",
        rip: CODE_VA + TIMER,
        runs: always,
        arg: no_arg,
        check: check_timer,
    },
    Test {
        name: "user.page_fault_unmapped_read",
        rip: CODE_VA + PF_READ,
        runs: always,
        arg: no_arg,
        check: |end| {
            let regs = expect_fault(end, 14, 0b100, UNMAPPED_VA, CODE_VA + PF_READ + 10)?;
            ensure!(
                regs.rbx == 0x5a5a_5a5a_5a5a_5a5a && regs.rsp == STACK_TOP,
                "registers not captured: rbx {:#x} rsp {:#x}",
                regs.rbx,
                regs.rsp
            );
            Ok(())
        },
    },
    Test {
        name: "user.page_fault_readonly_write",
        rip: CODE_VA + PF_WRITE_RO,
        runs: always,
        arg: no_arg,
        check: |end| expect_fault(end, 14, 0b111, RO_VA, CODE_VA + PF_WRITE_RO).map(drop),
    },
    Test {
        name: "user.kernel_address_faults",
        rip: CODE_VA + KERNEL_READ,
        runs: always,
        arg: no_arg,
        check: |end| expect_fault(end, 14, 0b101, KERNEL_VA, CODE_VA + KERNEL_READ + 10).map(drop),
    },
    Test {
        name: "user.nx_page_fetch_faults",
        rip: CODE_VA + NX_EXEC,
        runs: crate::arch::cpu::has_nx,
        arg: no_arg,
        check: |end| expect_fault(end, 14, 0b10101, DATA_VA, DATA_VA).map(drop),
    },
    Test {
        name: "user.privileged_instruction_gp",
        rip: CODE_VA + PRIV_CLI,
        runs: always,
        arg: no_arg,
        check: |end| expect_fault(end, 13, 0, 0, CODE_VA + PRIV_CLI).map(drop),
    },
    Test {
        name: "user.noncanonical_rip_gp",
        rip: NONCANONICAL_RIP,
        runs: always,
        arg: no_arg,
        check: |end| expect_fault(end, 13, 0, 0, NONCANONICAL_RIP).map(drop),
    },
    Test {
        name: "user.umip_sgdt_gp",
        rip: CODE_VA + UMIP_SGDT,
        runs: || user::protections().umip,
        arg: no_arg,
        // With CR4.UMIP, SGDT at CPL 3 is #GP(0); without it the program exits with 5.
        check: |end| expect_fault(end, 13, 0, 0, CODE_VA + UMIP_SGDT).map(drop),
    },
    Test {
        // The program loads its data selector into DS, ES, FS and GS, yields, and exits with
        // the OR of the four selectors it finds after the syscall.
        name: "user.segment_registers_cleared",
        rip: CODE_VA + SEGMENTS,
        runs: always,
        arg: no_arg,
        check: |end| expect_exit(end, 0),
    },
    Test {
        // LSL on every selector from the first past the GDT to the last: each must fail
        // (ZF clear), or the GDT limit lets ring 3 read memory past the table as descriptors.
        // The program exits with the first selector LSL accepts, or 0.
        name: "user.no_selector_past_the_gdt",
        rip: CODE_VA + LSL_SWEEP,
        runs: always,
        arg: || gdt::first_selector_past(),
        check: |end| expect_exit(end, 0),
    },
];

fn expect_exit(end: &End, code: u64) -> Outcome {
    match *end {
        End::Exit(c) => {
            ensure!(c == code, "exit code {c:#x}, expected {code:#x}");
            Ok(())
        }
        End::Fault { .. } => Err(msg_dbg("unexpected fault", end)),
    }
}

fn expect_fault(
    end: &End,
    vector: u8,
    error: u64,
    cr2: u64,
    rip: u64,
) -> Result<UserRegs, String<160>> {
    let End::Fault {
        vector: v,
        error_code,
        cr2: c,
        regs,
    } = *end
    else {
        return Err(msg_dbg("no fault", end));
    };
    ensure!(
        v == vector && error_code == error && c == cr2 && regs.rip == rip,
        "vector {v} error {error_code:#x} cr2 {c:#x} rip {:#x}, \
         expected {vector} {error:#x} {cr2:#x} {rip:#x}",
        regs.rip
    );
    Ok(regs)
}

fn check_timer(end: &End) -> Outcome {
    ensure!(
        !matches!(end, End::Exit(0xdead)),
        "no interrupt from ring 3 within the spin budget"
    );
    const NAMES: [&str; 17] = [
        "none", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15", "rsp",
    ];
    if let End::Exit(code @ 1..=16) = *end {
        return Err(msg_dbg(
            "register changed across the interrupt",
            NAMES[code as usize],
        ));
    }
    expect_exit(end, 0)?;
    ensure!(kentry::irq_counts().0 > 0, "no irq_from_user counted");
    Ok(())
}

/// True while the ring-3 tests run.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Index of the next test to start.
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// Frames of the running program (code, data, read-only, stack), freed when it ends.
static PAGES: Mutex<Option<[u64; 4]>> = Mutex::new(None);
/// The running program's data frame (0 when none).
static DATA_FRAME: AtomicU64 = AtomicU64::new(0);

/// Whether the ring-3 tests are running (the entry glue must route to [`ended`] and
/// [`irq_from_user`] meanwhile).
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Starts the ring-3 tests; the last one prints `kernel: N passed, M failed` and ends the
/// scenario.
pub fn run() -> ! {
    let p = user::protections();
    let on = |b: bool| if b { "on" } else { "off" };
    crate::log!(
        info,
        "usertest",
        "SMEP {}, SMAP {}, UMIP {}; entering ring 3",
        on(p.smep),
        on(p.smap),
        on(p.umip)
    );
    ACTIVE.store(true, Ordering::Relaxed);
    next()
}

fn next() -> ! {
    let Some(test) = TESTS.get(NEXT.fetch_add(1, Ordering::Relaxed)) else {
        finish()
    };
    if !(test.runs)() {
        crate::println!("  skip {}: not supported by this CPU", test.name);
        next()
    }
    match setup(test) {
        Ok((space, regs)) => kentry::enter(test.name, space, &regs),
        Err(why) => {
            selftest::record(test.name, Err(why));
            next()
        }
    }
}

fn finish() -> ! {
    ACTIVE.store(false, Ordering::Relaxed);
    uspace::activate_kernel();
    let (passed, failed) = selftest::totals();
    crate::println!("kernel: {passed} passed, {failed} failed");
    crate::scenario::exit(if failed == 0 {
        abi::ExitCode::Success
    } else {
        abi::ExitCode::Failure
    })
}

fn free_pages(pages: &[u64]) {
    for &p in pages {
        KernelMachine.frames_free(p, 1);
    }
}

/// A fresh space with the program layout; its frames go to [`PAGES`].
fn setup(test: &Test) -> Result<(AddressSpace, UserRegs), String<160>> {
    let mut m = KernelMachine;
    let mut pages = [0u64; 4];
    for i in 0..pages.len() {
        match m.frames_alloc(1) {
            Some(frame) => pages[i] = frame,
            None => {
                free_pages(&pages[..i]);
                return Err(msg("out of frames"));
            }
        }
    }
    let [code, data, ro, stack] = pages;
    m.write_phys(code, &CODE);
    m.write_phys(data + 8, &SPIN_BUDGET.to_le_bytes());
    let Some(mut space) = m.space_new() else {
        free_pages(&pages);
        return Err(msg("no address space"));
    };
    let rx = PageAccess {
        write: false,
        exec: true,
    };
    let rw = PageAccess {
        write: true,
        exec: false,
    };
    let mapped = m
        .map(&mut space, CODE_VA, code, rx)
        .and_then(|()| m.map(&mut space, DATA_VA, data, rw))
        .and_then(|()| m.map(&mut space, RO_VA, ro, PageAccess::default()))
        .and_then(|()| m.map(&mut space, STACK_TOP - PAGE_SIZE, stack, rw));
    if let Err(e) = mapped {
        m.space_destroy(space);
        free_pages(&pages);
        return Err(msg_dbg("map", e));
    }
    *PAGES.lock() = Some(pages);
    DATA_FRAME.store(data, Ordering::Relaxed);
    Ok((
        space,
        UserRegs::new_thread(test.rip, STACK_TOP, (test.arg)()),
    ))
}

/// The running test program ended (its space is already destroyed): check, start the next.
pub fn ended(how: End) -> ! {
    if !active() {
        crate::log!(
            error,
            "usertest",
            "a user thread ended outside the tests: {how:?}"
        );
        crate::scenario::exit(abi::ExitCode::Crash)
    }
    DATA_FRAME.store(0, Ordering::Relaxed);
    let pages = PAGES.lock().take();
    if let Some(pages) = pages {
        free_pages(&pages);
    }
    let index = NEXT.load(Ordering::Relaxed).wrapping_sub(1);
    if let Some(test) = TESTS.get(index) {
        selftest::record(test.name, (test.check)(&how));
    }
    next()
}

/// An interrupt arrived in ring 3: tell the running program (the timer test spins on it).
pub fn irq_from_user(vector: u8) {
    let data = DATA_FRAME.load(Ordering::Relaxed);
    if vector == timer::TIMER_VECTOR && data != 0 {
        KernelMachine.write_phys(data, &1u64.to_le_bytes());
    }
}

/// Kernel-side checks of ring-3 support, run with the other in-kernel checks.
pub const KERNEL_CHECKS: &[(&str, Check)] = &[
    ("user.gdt_tss_syscall_msrs", gdt_tss_syscall_msrs),
    ("user.smep_smap_umip_state", protections_state),
    ("uspace.map_unmap_destroy", uspace_map_unmap_destroy),
    ("uspace.copy_user_checks_access", uspace_copy_user),
    ("timer.ticks_in_idle", timer_ticks_in_idle),
];

fn gdt_tss_syscall_msrs(_: &BootInfo) -> Outcome {
    use crate::arch::trap::rdmsr;
    let sel = gdt::selectors();
    ensure!(
        sel.user_data.0 == 0x1b && sel.user_code.0 == 0x23,
        "user selectors {:#x}/{:#x}",
        sel.user_data.0,
        sel.user_code.0
    );
    let rsp0 = gdt::tss_rsp0();
    let (lo, hi) = user::entry_stack();
    ensure!(
        rsp0 == hi && rsp0.is_multiple_of(16) && hi - lo == user::ENTRY_STACK_SIZE,
        "TSS rsp0 {rsp0:#x}, entry stack {lo:#x}..{hi:#x}"
    );
    let efer = rdmsr(0xc000_0080).map_err(|e| msg_dbg("EFER", e))?;
    let star = rdmsr(0xc000_0081).map_err(|e| msg_dbg("STAR", e))?;
    let lstar = rdmsr(0xc000_0082).map_err(|e| msg_dbg("LSTAR", e))?;
    let sfmask = rdmsr(0xc000_0084).map_err(|e| msg_dbg("SFMASK", e))?;
    ensure!(efer & 1 != 0, "EFER.SCE clear: {efer:#x}");
    ensure!(
        star >> 32 == (0x13 << 16) | 0x08,
        "STAR {star:#x}: want user base 0x13, kernel 0x08"
    );
    ensure!(lstar >= 0xffff_ffff_8000_0000, "LSTAR {lstar:#x}");
    // IF, DF, TF, AC.
    let need = (1 << 9) | (1 << 10) | (1 << 8) | (1 << 18);
    ensure!(sfmask & need == need, "SFMASK {sfmask:#x}");
    Ok(())
}

fn protections_state(_: &BootInfo) -> Outcome {
    use x86_64::registers::control::{Cr4, Cr4Flags};
    let p = user::protections();
    let cr4 = Cr4::read();
    let on = |b: bool| if b { "on" } else { "off: CPU lacks it" };
    crate::log!(
        info,
        "usertest",
        "SMEP {}, SMAP {}, UMIP {} (CR4 {:#x})",
        on(p.smep),
        on(p.smap),
        on(p.umip),
        cr4.bits()
    );
    ensure!(
        cr4.contains(Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION) == p.smep
            && cr4.contains(Cr4Flags::SUPERVISOR_MODE_ACCESS_PREVENTION) == p.smap
            && cr4.contains(Cr4Flags::USER_MODE_INSTRUCTION_PREVENTION) == p.umip,
        "CR4 {:#x} disagrees with {p:?}",
        cr4.bits()
    );
    ensure!(
        !cr4.contains(Cr4Flags::TIMESTAMP_DISABLE),
        "CR4.TSD set: user rdtsc would fault"
    );
    Ok(())
}

fn free_frames() -> u64 {
    crate::mm::FRAMES
        .lock()
        .as_ref()
        .map_or(0, |f| f.free_frames())
}

fn uspace_map_unmap_destroy(_: &BootInfo) -> Outcome {
    let mut m = KernelMachine;
    let before = free_frames();
    let frame = m.frames_alloc(1).ok_or_else(|| msg("out of frames"))?;
    let mut space = m.space_new().ok_or_else(|| msg("no space"))?;
    let rw = PageAccess {
        write: true,
        exec: false,
    };
    let first = m.map(&mut space, CODE_VA, frame, rw);
    let again = m.map(&mut space, CODE_VA, frame, rw);
    let low = m.map(&mut space, 0x1000, frame, rw);
    let kernel = m.map(&mut space, KERNEL_VA, frame, rw);
    let unaligned = m.map(&mut space, CODE_VA + 0x10, frame, rw);
    let far = m.map(&mut space, STACK_TOP - PAGE_SIZE, frame, rw);
    // The kernel keeps running on the space's CR3: the upper half is shared.
    uspace::activate(&space);
    let switched = uspace::current_root() == space.root();
    uspace::activate_kernel();
    let unmapped = m.unmap(&mut space, CODE_VA);
    let unmapped_again = m.unmap(&mut space, CODE_VA);
    m.space_destroy(space);
    m.frames_free(frame, 1);
    let after = free_frames();
    ensure!(
        first.is_ok() && far.is_ok(),
        "map failed: {first:?} {far:?}"
    );
    ensure!(switched, "CR3 did not switch to the space");
    ensure!(
        again == Err(MapError::AlreadyMapped),
        "double map gave {again:?}"
    );
    ensure!(
        low == Err(MapError::BadAddress)
            && kernel == Err(MapError::BadAddress)
            && unaligned == Err(MapError::BadAddress),
        "bad addresses accepted: {low:?} {kernel:?} {unaligned:?}"
    );
    ensure!(
        unmapped == Some(frame) && unmapped_again.is_none(),
        "unmap gave {unmapped:?} then {unmapped_again:?}"
    );
    ensure!(
        before == after,
        "{} frames leaked by a destroyed space",
        before as i64 - after as i64
    );
    Ok(())
}

fn uspace_copy_user(_: &BootInfo) -> Outcome {
    let mut m = KernelMachine;
    let rw_frame = m.frames_alloc(1).ok_or_else(|| msg("out of frames"))?;
    let ro_frame = m.frames_alloc(1).ok_or_else(|| msg("out of frames"))?;
    let Some(mut space) = m.space_new() else {
        return Err(msg("no space"));
    };
    let rw = PageAccess {
        write: true,
        exec: false,
    };
    let mapped = m
        .map(&mut space, DATA_VA, rw_frame, rw)
        .and_then(|()| m.map(&mut space, RO_VA, ro_frame, PageAccess::default()));
    let pattern = *b"umbra user copy!";
    let to_rw = m.copy_to_user(&space, DATA_VA + 0x100, &pattern);
    let mut back = [0u8; 16];
    let from_rw = m.copy_from_user(&space, DATA_VA + 0x100, &mut back);
    let to_ro = m.copy_to_user(&space, RO_VA + 8, &pattern);
    let mut ro_bytes = [0xffu8; 16];
    let from_ro = m.copy_from_user(&space, RO_VA + 8, &mut ro_bytes);
    // [DATA_VA + 0xff8, DATA_VA + 0x1008) runs into the read-only page: refused, and nothing
    // written to the writable part either.
    let straddle = m.copy_to_user(&space, DATA_VA + 0xff8, &pattern);
    let mut tail = [0xffu8; 8];
    let _ = m.copy_from_user(&space, DATA_VA + 0xff8, &mut tail);
    let mut buf = [0u8; 8];
    let unmapped = m.copy_from_user(&space, UNMAPPED_VA, &mut buf);
    let kernel = m.copy_from_user(&space, KERNEL_VA, &mut buf);
    let wrap = m.copy_from_user(&space, u64::MAX - 3, &mut buf);
    m.space_destroy(space);
    m.frames_free(rw_frame, 1);
    m.frames_free(ro_frame, 1);
    mapped.map_err(|e| msg_dbg("map", e))?;
    ensure!(
        to_rw.is_ok() && from_rw.is_ok() && back == pattern,
        "round trip through a writable page: {to_rw:?} {from_rw:?} {back:?}"
    );
    ensure!(
        to_ro.is_err(),
        "copy_to_user into a read-only page accepted"
    );
    ensure!(
        from_ro.is_ok() && ro_bytes == [0; 16],
        "read of the read-only page: {from_ro:?} {ro_bytes:?}"
    );
    ensure!(
        straddle.is_err() && tail == [0; 8],
        "copy running into a read-only page: {straddle:?}, wrote {tail:?}"
    );
    ensure!(
        unmapped.is_err() && kernel.is_err() && wrap.is_err(),
        "bad source accepted: unmapped {unmapped:?} kernel {kernel:?} wrapping {wrap:?}"
    );
    Ok(())
}

fn timer_ticks_in_idle(_: &BootInfo) -> Outcome {
    let (_, kernel_irqs) = kentry::irq_counts();
    let start = timer::ticks();
    let mut waits = 0;
    while timer::ticks() == start && waits < 1000 {
        user::idle_wait();
        waits += 1;
    }
    let ticks = timer::ticks();
    ensure!(ticks > start, "no tick after {waits} idle waits");
    ensure!(
        kentry::irq_counts().1 > kernel_irqs,
        "ticks advanced but irq_in_kernel was not called"
    );
    let mut note: String<64> = String::new();
    let _ = write!(note, "{} tick(s) in {waits} wait(s)", ticks - start);
    crate::log!(info, "usertest", "timer at {} Hz: {note}", timer::HZ);
    Ok(())
}
