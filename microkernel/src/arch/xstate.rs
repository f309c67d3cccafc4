//! Extended processor state (x87, MMX, SSE, AVX, AVX-512) and a vCPU's debug registers and
//! XCR0: the CPU instructions behind the object model's [`Machine::xstate_switch`] hooks
//! (part `fpu` of issue 17).
//!
//! Every thread has a 4 KiB, 64-byte aligned area in [`AREAS`], indexed by its thread id.
//! With XSAVE (CPUID.1:ECX[26]) the kernel turns on CR4.OSXSAVE and sets the host XCR0 to
//! every component it can hold from x87, SSE, AVX and AVX-512 (the size CPUID.(0xD,0):EBX
//! reports for it must fit an area), and saves/loads with XSAVE/XRSTOR of all of them;
//! without it, FXSAVE/FXRSTOR (x87, MMX, SSE). The kernel is built without SSE: it never
//! touches these registers itself, so they always hold the owner thread's state.
//!
//! A vCPU's XCR0 is in force only while its guest runs: [`load_xcr0`] sets it before VM
//! entry and [`vmx`](super::vmx) puts the host's back first thing after the exit. The state
//! is saved with the host's XCR0, which covers every component a guest can enable.
//!
//! [`Machine::xstate_switch`]: microkernel::kobj::machine::Machine::xstate_switch

use core::arch::asm;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use abi::cpu::{cr4, dr6, xcr0};
use microkernel::kobj::objects::MAX_THREADS;
use microkernel::kobj::queue::ThreadId;
use spin::Once;
use x86_64::registers::control::{Cr0, Cr0Flags, Cr4};

/// Bytes of one area: covers the XSAVE layout of x87..AVX-512 (2,688 bytes on CPUs with
/// AVX-512), checked against CPUID at [`init`].
pub const AREA_SIZE: usize = 4096;
/// The components the kernel enables when the CPU has them.
const WANT: u64 = xcr0::X87 | xcr0::SSE | xcr0::AVX | xcr0::AVX512;
/// Offsets in the legacy region (FXSAVE layout): FCW and MXCSR.
const FCW: usize = 0;
const MXCSR: usize = 24;

#[repr(C, align(64))]
struct Area([u8; AREA_SIZE]);

struct Areas(UnsafeCell<[Area; MAX_THREADS]>);

// SAFETY: one CPU; the areas are reached only through `switch` and `reset`, which the kernel
// calls with its state entered and interrupts off, so no two accesses overlap.
unsafe impl Sync for Areas {}

static AREAS: Areas = Areas(UnsafeCell::new(
    [const { Area([0; AREA_SIZE]) }; MAX_THREADS],
));

/// How the state is saved, fixed at [`init`].
#[derive(Clone, Copy, Debug)]
pub struct Mode {
    /// XSAVE/XRSTOR (else FXSAVE/FXRSTOR).
    pub xsave: bool,
    /// The host's XCR0 (1 without XSAVE: x87 only, as a guest's reset value).
    pub xcr0: u64,
    /// Bytes the CPU saves (512 with FXSAVE).
    pub size: usize,
}

static MODE: Once<Mode> = Once::new();
/// The host's XCR0 once XSAVE is on (0 without XSAVE: no XCR0 is ever switched): read on
/// every VM exit and entry, so kept apart from [`MODE`].
static HOST_XCR0: AtomicU64 = AtomicU64::new(0);
/// The XCR0 in the register now (the host's, or a guest's around VM entry).
static LIVE_XCR0: AtomicU64 = AtomicU64::new(xcr0::INIT);

/// Enables the FPU and SSE for every thread (CR0.MP and NE on, EM and TS off; CR4.OSFXSR and
/// OSXMMEXCPT) and, with XSAVE (unless `no_xsave`), CR4.OSXSAVE and the host XCR0. The
/// first call decides.
pub fn init(no_xsave: bool) -> Mode {
    *MODE.call_once(|| {
        let (_, _, ecx, _) = super::cpu::cpuid(1, 0);
        let xsave = !no_xsave && ecx & (1 << 26) != 0 && super::cpu::cpuid_max().0 >= 0xd;
        // SAFETY: MP/NE/EM/TS only change how x87 and SSE instructions fault; the kernel
        // executes none. OSFXSR/OSXMMEXCPT enable SSE (every x86_64 CPU has FXSR), OSXSAVE
        // is set only when CPUID reports XSAVE.
        unsafe {
            Cr0::update(|f| {
                f.insert(Cr0Flags::MONITOR_COPROCESSOR | Cr0Flags::NUMERIC_ERROR);
                f.remove(Cr0Flags::EMULATE_COPROCESSOR | Cr0Flags::TASK_SWITCHED);
            });
            let mut bits = Cr4::read_raw() | cr4::OSFXSR | cr4::OSXMMEXCPT;
            if xsave {
                bits |= cr4::OSXSAVE;
            }
            Cr4::write_raw(bits);
        }
        if xsave {
            let (eax, _, _, edx) = super::cpu::cpuid(0xd, 0);
            let supported = u64::from(eax) | u64::from(edx) << 32;
            let mut want = supported & WANT;
            if !xcr0::valid(want, supported) {
                want &= !xcr0::AVX512; // partial AVX-512
            }
            if !xcr0::valid(want, supported) {
                want = xcr0::X87 | xcr0::SSE;
            }
            xsetbv(want);
            let size = super::cpu::cpuid(0xd, 0).1 as usize;
            if size > AREA_SIZE {
                want = xcr0::X87 | xcr0::SSE | (want & xcr0::AVX);
                xsetbv(want);
            }
            HOST_XCR0.store(want, Ordering::Relaxed);
            Mode {
                xsave: true,
                xcr0: want,
                size: super::cpu::cpuid(0xd, 0).1 as usize,
            }
        } else {
            Mode {
                xsave: false,
                xcr0: xcr0::INIT,
                size: 512,
            }
        }
    })
}

/// The mode [`init`] chose (FXSAVE if it has not run: nothing else is safe before it).
#[inline]
pub fn mode() -> Mode {
    MODE.get().copied().unwrap_or(Mode {
        xsave: false,
        xcr0: xcr0::INIT,
        size: 512,
    })
}

/// XSETBV of XCR0.
fn xsetbv(value: u64) {
    // SAFETY: callers pass a value `xcr0::valid` accepts against CPUID.(0xD,0) (the host's)
    // or against the host's XCR0 (a guest's, checked by the object model), so XSETBV does not
    // fault; XCR0 only decides which state components XSAVE and AVX use.
    unsafe {
        asm!("xsetbv", in("ecx") 0u32, in("eax") value as u32, in("edx") (value >> 32) as u32,
             options(nostack, nomem))
    };
    LIVE_XCR0.store(value, Ordering::Relaxed);
}

/// Puts a vCPU's XCR0 in force before VM entry, unless it is there already. Nothing without
/// XSAVE (a guest's XCR0 is then 1, the only valid value).
#[inline]
pub fn load_guest_xcr0(value: u64) {
    if LIVE_XCR0.load(Ordering::Relaxed) != value && HOST_XCR0.load(Ordering::Relaxed) != 0 {
        xsetbv(value);
    }
}

/// Puts the host's XCR0 back after a VM exit (or a failed entry), unless it is there.
#[inline]
pub fn load_host_xcr0() {
    let host = HOST_XCR0.load(Ordering::Relaxed);
    if LIVE_XCR0.load(Ordering::Relaxed) != host && host != 0 {
        xsetbv(host);
    }
}

/// The XCR0 components a guest may enable: the host's XCR0 (x87 only without XSAVE).
#[inline]
pub fn host_xcr0() -> u64 {
    mode().xcr0
}

fn area(t: ThreadId) -> *mut Area {
    assert!(t.index() < MAX_THREADS, "thread id in range");
    // SAFETY: in bounds (checked); see `Areas` for why no access overlaps.
    unsafe { (AREAS.0.get() as *mut Area).add(t.index()) }
}

/// Whether CR0.TS is set now (the kernel's copy: CR0 is not read on every return). A VM
/// exit loads HOST_CR0, which has TS clear ([`crate::arch::vmx`] writes it so), and
/// [`note_vm_exit`] says so.
static TRAP: AtomicBool = AtomicBool::new(false);

/// Sets or clears CR0.TS, unless it is so already.
#[inline(always)]
pub fn set_trap(on: bool) {
    if TRAP.load(Ordering::Relaxed) == on {
        return;
    }
    // SAFETY: CR0.TS only makes x87/SSE/AVX instructions (and XSAVE/XRSTOR, which `switch`
    // runs with TS clear) raise #NM; the kernel uses none of them otherwise, and ring 3's #NM
    // is handled (`kentry::user_exception`).
    unsafe {
        if on {
            // Raw: `Cr0::update` reads CR0 twice (once more to keep the reserved bits).
            Cr0::write_raw(Cr0::read_raw() | Cr0Flags::TASK_SWITCHED.bits());
        } else {
            asm!("clts", options(nostack, nomem));
        }
    }
    TRAP.store(on, Ordering::Relaxed);
}

/// A VM exit loaded HOST_CR0 (TS clear).
#[inline]
pub fn note_vm_exit() {
    TRAP.store(false, Ordering::Relaxed);
}

/// Saves the registers' state into `from`'s area (if any), then loads `to`'s (with CR0.TS
/// clear: XSAVE and XRSTOR would raise #NM).
pub fn switch(from: Option<ThreadId>, to: ThreadId) {
    set_trap(false);
    let m = mode();
    let (lo, hi) = (m.xcr0 as u32, (m.xcr0 >> 32) as u32);
    debug_assert_eq!(
        LIVE_XCR0.load(Ordering::Relaxed),
        m.xcr0,
        "host XCR0 in force"
    );
    if let Some(f) = from {
        let p = area(f);
        // SAFETY: `p` is a 64-byte aligned area of AREA_SIZE bytes, more than the CPU saves
        // (checked at `init`); XSAVE with the host XCR0 in force and FXSAVE64 write only it.
        unsafe {
            if m.xsave {
                asm!("xsave64 [{}]", in(reg) p, in("eax") lo, in("edx") hi, options(nostack));
            } else {
                asm!("fxsave64 [{}]", in(reg) p, options(nostack));
            }
        }
    }
    let p = area(to);
    // SAFETY: the area holds what XSAVE/FXSAVE wrote or the initial image of `reset` (valid
    // header: XSTATE_BV 0, XCOMP_BV 0; MXCSR without reserved bits), so XRSTOR/FXRSTOR do
    // not fault; they change only the extended-state registers.
    unsafe {
        if m.xsave {
            asm!("xrstor64 [{}]", in(reg) p, in("eax") lo, in("edx") hi, options(nostack));
        } else {
            asm!("fxrstor64 [{}]", in(reg) p, options(nostack));
        }
    }
}

/// Puts `t`'s area in the initial state: FCW 0x37F, every other x87 field and register 0
/// (all empty), MXCSR 0x1F80, XSTATE_BV 0 (XRSTOR initialises every component).
pub fn reset(t: ThreadId) {
    // SAFETY: see `Areas`; the area is plain bytes.
    let a = unsafe { &mut (*area(t)).0 };
    a.fill(0);
    a[FCW..FCW + 2].copy_from_slice(&0x037fu16.to_le_bytes());
    a[MXCSR..MXCSR + 4].copy_from_slice(&0x1f80u32.to_le_bytes());
}

// ----- A vCPU's debug registers -----

/// What DR0..DR3 and DR6 hold now (the kernel never uses them: only vCPUs do).
static LIVE_DR: [AtomicU64; 5] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(dr6::INIT),
];

/// Where the values DR0..DR3 and DR6 hold came from: the address of a vCPU's `dr` array
/// that [`load_debug`] loaded and that has not been written since but by [`read_dr6`]'s
/// caller (0: none). [`debug_changed`] forgets it.
static LIVE_DR_OF: AtomicU64 = AtomicU64::new(0);

/// A vCPU's `dr` array was written (or is going away): the next [`load_debug`] compares.
#[inline]
pub fn debug_changed() {
    LIVE_DR_OF.store(0, Ordering::Relaxed);
}

/// Loads a vCPU's DR0..DR3 and DR6 (`dr[4]` is DR6) before VM entry: only those that differ
/// from what the registers hold. (DR7 is the VMCS's guest field; a VM exit sets the host's
/// DR7 to 0x400, so no breakpoint is armed in the host.)
#[inline(always)]
pub fn load_debug(dr: &[u64; 5]) {
    // The common case: the same vCPU again, its array unwritten since (its DR6 is written
    // at every exit from what the register holds, which `read_dr6` records).
    if LIVE_DR_OF.load(Ordering::Relaxed) != dr.as_ptr() as u64 {
        load_debug_values(dr);
    }
}

fn load_debug_values(dr: &[u64; 5]) {
    LIVE_DR_OF.store(dr.as_ptr() as u64, Ordering::Relaxed);
    let live = |i: usize| LIVE_DR[i].load(Ordering::Relaxed) ^ dr[i];
    if live(0) | live(1) | live(2) | live(3) | live(4) == 0 {
        return; // the common case: the same vCPU again, its registers unchanged
    }
    for (i, &v) in dr.iter().enumerate() {
        if LIVE_DR[i].load(Ordering::Relaxed) == v {
            continue;
        }
        // SAFETY: MOV to DR0..DR3 takes any address; DR6 gets a value with bits 63:32 clear
        // (the object model refuses others). With DR7 at 0x400 in the host no breakpoint is
        // armed, so nothing fires in the kernel.
        unsafe {
            match i {
                0 => asm!("mov dr0, {}", in(reg) v, options(nostack, nomem)),
                1 => asm!("mov dr1, {}", in(reg) v, options(nostack, nomem)),
                2 => asm!("mov dr2, {}", in(reg) v, options(nostack, nomem)),
                3 => asm!("mov dr3, {}", in(reg) v, options(nostack, nomem)),
                _ => asm!("mov dr6, {}", in(reg) v, options(nostack, nomem)),
            }
        }
        LIVE_DR[i].store(v, Ordering::Relaxed);
    }
}

/// DR6 after a VM exit (a debug exception in the guest sets its bits).
#[inline]
pub fn read_dr6() -> u64 {
    let v: u64;
    // SAFETY: reading DR6 has no side effects (CPL 0; DR7.GD is clear in the host).
    unsafe { asm!("mov {}, dr6", out(reg) v, options(nostack, nomem)) };
    LIVE_DR[4].store(v, Ordering::Relaxed);
    v
}
