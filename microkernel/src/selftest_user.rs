//! In-kernel checks of ring-3 support, run with the other in-kernel checks of the `kernel`
//! scenario (`selftest`): the GDT, TSS and syscall MSRs, SMEP/SMAP/UMIP, user address spaces
//! and user copies, and the timer. The ring-3 checks themselves run in the `kernel-tests` task
//! (`services/kernel-tests`), which the kernel starts after these.

// A failure carries its message inline (no heap in the kernel), as in `selftest`.
#![allow(clippy::result_large_err)]

use crate::arch::{gdt, timer, user};
use crate::kentry;
use crate::mm::uspace::{self, KernelMachine};
use crate::selftest::{ensure, msg, msg_dbg, Check, Outcome};
use core::fmt::Write;
use heapless::String;
use microkernel::bootinfo::BootInfo;
use microkernel::kobj::machine::{Machine, MapError, PageAccess};
use microkernel::PAGE_SIZE;

use abi::ipc::layout::{STACK_TOP, USER_MIN};

/// Pages the checks map: a first page, a read-write page after it and a read-only page.
const CODE_VA: u64 = USER_MIN;
const DATA_VA: u64 = USER_MIN + 0x1000;
const RO_VA: u64 = USER_MIN + 0x2000;
/// Never mapped.
const UNMAPPED_VA: u64 = 0x50_0000;
/// A kernel address (the first page of the kernel text).
const KERNEL_VA: u64 = 0xffff_ffff_8020_0000;

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
        "selftest",
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
    let kernel_irqs = kentry::idle_irqs();
    let start = timer::ticks();
    let mut waits = 0;
    while timer::ticks() == start && waits < 1000 {
        user::idle_wait();
        waits += 1;
    }
    let ticks = timer::ticks();
    ensure!(ticks > start, "no tick after {waits} idle waits");
    ensure!(
        kentry::idle_irqs() > kernel_irqs,
        "ticks advanced but irq_in_kernel was not called"
    );
    let mut note: String<64> = String::new();
    let _ = write!(note, "{} tick(s) in {waits} wait(s)", ticks - start);
    crate::log!(info, "selftest", "timer at {} Hz: {note}", timer::HZ);
    Ok(())
}
