//! Ring 3: the `syscall` entry, the return to user mode, and the hardware-interrupt entry from
//! user and from kernel mode.
//!
//! The kernel never blocks in kernel mode. Every entry from ring 3 starts at the top of one
//! kernel entry stack (the TSS's `rsp0`, and the stack the `syscall` entry loads), saves the
//! user registers there as a [`UserRegs`] (exact field order of `kobj::regs`) and calls a Rust
//! function that never returns: it ends in [`return_to_user`], which abandons the stack. The
//! only code running with interrupts enabled in ring 0 is [`idle_wait`].
//!
//! Single CPU: no `swapgs`; the `syscall` entry stashes the user `rsp` in a static.

use super::gdt::{self, Selectors};
use super::timer;
use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicBool, Ordering};
use microkernel::kobj::regs::UserRegs;
use x86_64::instructions::segmentation::{Segment, DS, ES, FS, GS};
use x86_64::registers::control::{Cr4, Cr4Flags};
use x86_64::registers::model_specific::{Efer, EferFlags, FsBase, GsBase, LStar, SFMask, Star};
use x86_64::registers::rflags::RFlags;
use x86_64::structures::gdt::SegmentSelector;
use x86_64::VirtAddr;

/// Size of the kernel entry stack.
pub const ENTRY_STACK_SIZE: u64 = 64 * 1024;

/// One past the highest user address: a `rip` at or above it is never returned to.
const USER_END: u64 = abi::ipc::layout::USER_END;

/// RFLAGS bits user code may keep: CF, PF, AF, ZF, SF, DF, OF. IF and bit 1 are forced on;
/// TF, IOPL, NT, RF, VM, AC, VIF, VIP and ID are cleared.
const USER_RFLAGS_KEEP: u64 = 0xcd5;
const USER_RFLAGS_FORCE: u64 = 0x202;

global_asm!(
    r#"
    .section .bss
    .balign 4096
    .global user_entry_stack_bottom, user_entry_stack_top
user_entry_stack_bottom:
    .skip {stack_size}
user_entry_stack_top:
    .balign 8
syscall_user_rsp:
    .skip 8
    /* Where `entry_save_top` points until the first return to ring 3 names a thread's
       storage. No `syscall` saves here: every return to ring 3 names the thread's own
       storage first (`user_syscall_rust` stops the machine if one did). */
    .balign 16
entry_scratch_regs:
    .skip 144
entry_scratch_regs_top:

    .section .data
    .balign 8
    /* The end of the UserRegs the next `syscall` saves into (see `return_to_user`). */
    .global entry_save_top
entry_save_top:
    .quad entry_scratch_regs_top

    .section .text
    .balign 16
    .global syscall_entry
syscall_entry:
    movq %rsp, syscall_user_rsp(%rip)
    movq entry_save_top(%rip), %rsp
    /* A UserRegs, last field first: rsp, rflags (r11), rip (rcx), r15 .. rax, written
       straight into the running thread's own storage (or the scratch area). */
    pushq syscall_user_rsp(%rip)
    pushq %r11
    pushq %rcx
    pushq %r15
    pushq %r14
    pushq %r13
    pushq %r12
    pushq %r11
    pushq %r10
    pushq %r9
    pushq %r8
    pushq %rbp
    pushq %rdi
    pushq %rsi
    pushq %rdx
    pushq %rcx
    pushq %rbx
    pushq %rax
    movq %rsp, %rdi
    leaq user_entry_stack_top(%rip), %rsp
    cld
    call user_syscall_rust
    ud2

    /* One 16-byte stub per PIC vector 32..47: push the vector, join irq_common. */
    .balign 16
    .global irq_stubs
irq_stubs:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
    .balign 16
    pushq $(32 + \n)
    jmp irq_common
    .endr

    /* Stack: vector, rip, cs, rflags, rsp, ss. */
irq_common:
    testb $3, 16(%rsp)
    jnz 1f
    /* From ring 0 (the idle loop): save the caller-saved registers, call, return. The CPU
       aligned rsp to 16 before its 40-byte frame; + vector + 9 registers + 8 = aligned. */
    pushq %rax
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    movq 72(%rsp), %rdi
    subq $8, %rsp
    cld
    call irq_kernel_rust
    addq $8, %rsp
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rax
    addq $8, %rsp
    iretq

1:  /* From ring 3, at the top of the entry stack: a UserRegs below the frame. */
    pushq 32(%rsp)      /* rsp */
    pushq 32(%rsp)      /* rflags */
    pushq 24(%rsp)      /* rip */
    pushq %r15
    pushq %r14
    pushq %r13
    pushq %r12
    pushq %r11
    pushq %r10
    pushq %r9
    pushq %r8
    pushq %rbp
    pushq %rdi
    pushq %rsi
    pushq %rdx
    pushq %rcx
    pushq %rbx
    pushq %rax
    movq 144(%rsp), %rdi
    movq %rsp, %rsi
    cld
    call irq_user_rust
    ud2
"#,
    stack_size = const ENTRY_STACK_SIZE,
    options(att_syntax)
);

extern "C" {
    static user_entry_stack_bottom: u8;
    static user_entry_stack_top: u8;
    static entry_scratch_regs: u8;
    static mut entry_save_top: u64;
    static irq_stubs: u8;
    fn syscall_entry();
}

// The assembler builds `UserRegs` by hand: 18 quadwords, in this order.
const _: () = {
    assert!(core::mem::size_of::<UserRegs>() == 144);
    assert!(core::mem::offset_of!(UserRegs, rax) == 0);
    assert!(core::mem::offset_of!(UserRegs, r15) == 112);
    assert!(core::mem::offset_of!(UserRegs, rip) == 120);
    assert!(core::mem::offset_of!(UserRegs, rflags) == 128);
    assert!(core::mem::offset_of!(UserRegs, rsp) == 136);
};

/// Top of the kernel entry stack (16-byte aligned).
pub fn entry_stack_top() -> u64 {
    (&raw const user_entry_stack_top) as u64
}

/// The kernel entry stack's range.
pub fn entry_stack() -> (u64, u64) {
    (
        (&raw const user_entry_stack_bottom) as u64,
        entry_stack_top(),
    )
}

/// The address of the IDT stub for PIC vector `32 + irq` (`irq` < 16).
pub(super) fn irq_stub(irq: u8) -> VirtAddr {
    VirtAddr::from_ptr(&raw const irq_stubs) + 16 * u64::from(irq)
}

/// Programs the `syscall` MSRs: EFER.SCE, STAR (kernel CS/SS, user base), LSTAR, SFMASK.
pub(super) fn init_syscall(sel: &Selectors) {
    // `sysret` would load CS = base + 16 and SS = base + 8 (RPL 3); `Star::write` checks that
    // the selectors are laid out so.
    if Star::write(
        sel.user_code,
        sel.user_data,
        sel.kernel_code,
        sel.kernel_data,
    )
    .is_err()
    {
        panic!("GDT layout does not fit STAR");
    }
    LStar::write(VirtAddr::new(syscall_entry as *const () as u64));
    SFMask::write(
        RFlags::INTERRUPT_FLAG
            | RFlags::DIRECTION_FLAG
            | RFlags::TRAP_FLAG
            | RFlags::ALIGNMENT_CHECK
            | RFlags::NESTED_TASK,
    );
    // SAFETY: the entry point and the STAR selectors are set before SCE enables `syscall`.
    unsafe { Efer::update(|f| f.insert(EferFlags::SYSTEM_CALL_EXTENSIONS)) };
}

static SMAP_ON: AtomicBool = AtomicBool::new(false);
static SMEP_ON: AtomicBool = AtomicBool::new(false);
static UMIP_ON: AtomicBool = AtomicBool::new(false);

/// The protections of the kernel from ring 3 that depend on the CPU.
#[derive(Clone, Copy, Debug)]
pub struct Protections {
    /// CR4.SMEP: the kernel never executes a user page.
    pub smep: bool,
    /// CR4.SMAP: the kernel never reads or writes a user page through a user address.
    pub smap: bool,
    /// CR4.UMIP: ring 3 cannot read the GDTR, IDTR, LDTR, TR or MSW (SGDT, SIDT, SLDT, STR and
    /// SMSW raise #GP), so a task learns nothing of where the kernel's tables are.
    pub umip: bool,
}

/// Turns on CR4.SMEP, CR4.SMAP and CR4.UMIP where CPUID.(7,0) says the CPU has them (EBX bits
/// 7 and 20, ECX bit 2). CR4.TSD stays clear: user code may use `rdtsc`.
pub fn enable_protections() -> Protections {
    let (ebx, ecx) = if super::cpu::cpuid_max().0 >= 7 {
        let (_, ebx, ecx, _) = super::cpu::cpuid(7, 0);
        (ebx, ecx)
    } else {
        (0, 0)
    };
    let on = Protections {
        smep: ebx & (1 << 7) != 0,
        smap: ebx & (1 << 20) != 0,
        umip: ecx & (1 << 2) != 0,
    };
    // SAFETY: the kernel never executes user pages, and it reaches user memory only through
    // the direct map (`mm::uspace`), never through user addresses; RFLAGS.AC is clear in
    // kernel mode (SFMASK and the entries clear it), so SMAP enforces that. UMIP only makes
    // the descriptor-table store instructions fault at CPL 3; the kernel runs at CPL 0.
    unsafe {
        Cr4::update(|f| {
            f.set(Cr4Flags::SUPERVISOR_MODE_EXECUTION_PROTECTION, on.smep);
            f.set(Cr4Flags::SUPERVISOR_MODE_ACCESS_PREVENTION, on.smap);
            f.set(Cr4Flags::USER_MODE_INSTRUCTION_PREVENTION, on.umip);
            f.remove(Cr4Flags::TIMESTAMP_DISABLE);
        })
    };
    SMEP_ON.store(on.smep, Ordering::Relaxed);
    SMAP_ON.store(on.smap, Ordering::Relaxed);
    UMIP_ON.store(on.umip, Ordering::Relaxed);
    on
}

/// The protections [`enable_protections`] turned on.
pub fn protections() -> Protections {
    Protections {
        smep: SMEP_ON.load(Ordering::Relaxed),
        smap: SMAP_ON.load(Ordering::Relaxed),
        umip: UMIP_ON.load(Ordering::Relaxed),
    }
}

/// Clears RFLAGS.AC after an interrupt or exception from ring 3 (which do not clear it), so a
/// user-set AC cannot lift SMAP in the kernel.
pub(super) fn clear_ac() {
    if SMAP_ON.load(Ordering::Relaxed) {
        // SAFETY: `clac` exists (SMAP is on) and only clears RFLAGS.AC.
        unsafe { asm!("clac", options(nomem, nostack)) };
    }
}

/// The RFLAGS a user thread resumes with (see [`USER_RFLAGS_KEEP`]).
#[inline]
pub fn sanitize_rflags(rflags: u64) -> u64 {
    (rflags & USER_RFLAGS_KEEP) | USER_RFLAGS_FORCE
}

/// Whether `rip` is an address user code may resume at (canonical lower half).
#[inline]
pub fn is_user_rip(rip: u64) -> bool {
    rip < USER_END
}

/// Puts the null selector back into DS, ES, FS and GS (and zero into the FS and GS bases) if
/// ring 3 loaded any of them. The kernel keeps them null (`gdt::init`) and does not keep them
/// per thread: a selector a task loads never reaches the next thread that runs, whichever
/// task it belongs to. The common case is four register reads.
fn clear_user_segments() {
    let loaded = DS::get_reg().0 | ES::get_reg().0 | FS::get_reg().0 | GS::get_reg().0;
    if loaded == 0 {
        return;
    }
    let null = SegmentSelector(0);
    // SAFETY: the null selector is valid in DS, ES, FS and GS in 64-bit mode, and the kernel
    // does not use them; writing zero to the FS and GS base MSRs only changes those bases
    // (AMD CPUs keep the base when a null selector is loaded; zero is what the kernel expects).
    unsafe {
        DS::set_reg(null);
        ES::set_reg(null);
        FS::set_reg(null);
        GS::set_reg(null);
        FsBase::write(VirtAddr::zero());
        GsBase::write(VirtAddr::zero());
    }
}

/// Loads every register from `regs` and returns to ring 3 with `iretq` (in the address space
/// currently in CR3), abandoning the current kernel stack, with `regs` where the thread's
/// next `syscall` saves its registers: the running thread's own storage, which lives in a
/// static (the object model's), so that the entry writes them once, where the kernel keeps
/// them. DS, ES, FS and GS are null on the way out ([`clear_user_segments`]). RFLAGS is
/// sanitized (IF on, IOPL 0, no TF/NT/AC/...). A `rip` outside the user half is not returned
/// to: it is delivered as a #GP through `kentry::user_exception` instead, so `iretq` cannot
/// fault in ring 0.
#[inline(always)]
pub fn return_to_user_saving_into_regs(regs: &UserRegs) -> ! {
    // SAFETY: one CPU with interrupts off: nothing else reads or writes the pointer, which
    // the next `syscall` entry reads. `regs` is a UserRegs in a static.
    unsafe {
        entry_save_top = regs as *const UserRegs as u64 + core::mem::size_of::<UserRegs>() as u64
    };
    return_to_same_thread(regs)
}

/// Whether `regs` (from `user_syscall_rust`) is the scratch area: no return to ring 3 named
/// a thread's storage before this `syscall`, which cannot happen.
fn is_scratch(regs: *const UserRegs) -> bool {
    regs.cast() == (&raw const entry_scratch_regs)
}

/// [`return_to_user_saving_into_regs`] to the thread that was interrupted, whose storage
/// the next `syscall` saves into already: `regs` are its registers as the entry saved them.
#[inline(always)]
fn return_to_same_thread(regs: &UserRegs) -> ! {
    if !is_user_rip(regs.rip) {
        let mut copy = *regs;
        crate::kentry::user_exception(13, 0, 0, &mut copy)
    }
    clear_user_segments();
    let rflags = sanitize_rflags(regs.rflags);
    let cs = u64::from(gdt::USER_CODE);
    let ss = u64::from(gdt::USER_DATA);
    // SAFETY: the frame names the ring-3 code and data selectors, a user-half rip and
    // sanitized flags, so `iretq` goes to ring 3 without faulting (a bad user rsp faults in
    // ring 3). Nothing on the abandoned kernel stack is used again: every later entry starts
    // at the top of the entry stack. `regs` lies above the stack pointer (in a caller's frame
    // or a static), so the pushes below it leave it intact until it is read.
    unsafe {
        asm!(
            "pushq {ss}",
            "pushq 136(%rdi)",
            "pushq {rflags}",
            "pushq {cs}",
            "pushq 120(%rdi)",
            "movq 0(%rdi), %rax",
            "movq 8(%rdi), %rbx",
            "movq 16(%rdi), %rcx",
            "movq 24(%rdi), %rdx",
            "movq 32(%rdi), %rsi",
            "movq 48(%rdi), %rbp",
            "movq 56(%rdi), %r8",
            "movq 64(%rdi), %r9",
            "movq 72(%rdi), %r10",
            "movq 80(%rdi), %r11",
            "movq 88(%rdi), %r12",
            "movq 96(%rdi), %r13",
            "movq 104(%rdi), %r14",
            "movq 112(%rdi), %r15",
            "movq 40(%rdi), %rdi",
            "iretq",
            in("rdi") regs as *const UserRegs,
            ss = in(reg) ss,
            cs = in(reg) cs,
            rflags = in(reg) rflags,
            options(noreturn, att_syntax)
        )
    }
}

/// Enables interrupts, waits for one, disables them again (`sti; hlt; cli`): with
/// [`interrupt_window`], the kernel's only window with IF = 1. Returns after one interrupt has been handled (by
/// `kentry::irq_in_kernel`).
pub fn idle_wait() {
    // SAFETY: the IDT handles every interrupt that can arrive (PIC vectors 32..47); `sti`'s
    // interrupt shadow makes `hlt` run before the first one is taken.
    unsafe { asm!("sti", "hlt", "cli", options(nostack)) };
}

/// Lets pending interrupts in and disables them again (`sti; nop; cli`); each is handled by
/// `kentry::irq_in_kernel`. The caller holds no kernel state.
pub fn interrupt_window() {
    // SAFETY: as for `idle_wait`: the IDT handles every interrupt that can arrive; `sti`'s
    // shadow covers the `nop`, after which pending interrupts are taken, then `cli`.
    unsafe { asm!("sti", "nop", "cli", options(nostack)) };
}

#[no_mangle]
extern "C" fn user_syscall_rust(regs: *mut UserRegs) -> ! {
    if is_scratch(regs) {
        // A kernel bug: a return to ring 3 that named no thread's storage.
        crate::log!(error, "task", "syscall saved into the entry's scratch area");
        crate::scenario::exit(abi::ExitCode::Crash)
    }
    // Saved into the running thread's own storage (`return_to_user_saving_into_regs`): the
    // object model reads them there.
    crate::kentry::syscall_saved()
}

#[no_mangle]
extern "C" fn irq_user_rust(vector: u64, regs: &mut UserRegs) -> ! {
    clear_ac();
    let vector = vector as u8;
    if !timer::acknowledge(vector) {
        // Spurious: resume the interrupted thread.
        return_to_same_thread(regs)
    }
    crate::kentry::irq_from_user(vector, regs)
}

#[no_mangle]
extern "C" fn irq_kernel_rust(vector: u64) {
    let vector = vector as u8;
    if timer::acknowledge(vector) {
        crate::kentry::irq_in_kernel(vector);
    }
}
