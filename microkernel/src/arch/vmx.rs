//! VMX root operation: VMXON, the VMCS instructions, a new VMCS's controls and host state,
//! VM entry and the VM-exit entry point.
//!
//! Like the `syscall` entry, a VM exit saves the guest's general-purpose registers straight
//! into the vCPU thread's `UserRegs` (HOST_RSP points at their end, set at every entry), moves
//! to the top of the kernel entry stack and calls `kentry::vm_exit`, which never returns: it
//! ends in a VM entry or a return to ring 3.
//! Single CPU: the current VMCS is tracked in a static.

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};

use abi::vmx::{field, guest_features, pin_based, proc_based2};
use microkernel::kobj::regs::UserRegs;
use spin::Once;
use x86_64::registers::control::{Cr0, Cr4, Cr4Flags};

use super::gdt;
use super::trap;

const MSR_FEATURE_CONTROL: u32 = 0x3a;
const MSR_VMX_BASIC: u32 = 0x480;
const MSR_VMX_CR0_FIXED0: u32 = 0x486;
const MSR_VMX_CR0_FIXED1: u32 = 0x487;
const MSR_VMX_CR4_FIXED0: u32 = 0x488;
const MSR_VMX_CR4_FIXED1: u32 = 0x489;
const MSR_VMX_PROCBASED_CTLS2: u32 = 0x48b;
const MSR_VMX_TRUE_PINBASED: u32 = 0x48d;
const MSR_VMX_TRUE_PROCBASED: u32 = 0x48e;
const MSR_VMX_TRUE_EXIT: u32 = 0x48f;
const MSR_VMX_TRUE_ENTRY: u32 = 0x490;
const MSR_VMX_MISC: u32 = 0x485;
const MSR_PAT: u32 = 0x277;
const MSR_EFER: u32 = 0xc000_0080;

// VMCS fields the kernel alone writes (controls and host state).
const VPID: u64 = 0x0000;
const HOST_ES_SELECTOR: u64 = 0x0c00;
const HOST_CS_SELECTOR: u64 = 0x0c02;
const HOST_SS_SELECTOR: u64 = 0x0c04;
const HOST_DS_SELECTOR: u64 = 0x0c06;
const HOST_FS_SELECTOR: u64 = 0x0c08;
const HOST_GS_SELECTOR: u64 = 0x0c0a;
const HOST_TR_SELECTOR: u64 = 0x0c0c;
const EPT_POINTER: u64 = 0x201a;
const VMCS_LINK_POINTER: u64 = 0x2800;
const GUEST_IA32_DEBUGCTL: u64 = 0x2802;
const HOST_IA32_PAT: u64 = 0x2c00;
const HOST_IA32_EFER: u64 = 0x2c02;
const PREEMPTION_TIMER_VALUE: u64 = 0x482e;
const PAGE_FAULT_ERROR_MASK: u64 = 0x4006;
const PAGE_FAULT_ERROR_MATCH: u64 = 0x4008;
const CR3_TARGET_COUNT: u64 = 0x400a;
const EXIT_CONTROLS: u64 = 0x400c;
const HOST_SYSENTER_CS: u64 = 0x4c00;
const GUEST_PENDING_DEBUG: u64 = 0x6822;
const HOST_CR0: u64 = 0x6c00;
const HOST_CR3: u64 = 0x6c02;
const HOST_CR4: u64 = 0x6c04;
const HOST_FS_BASE: u64 = 0x6c06;
const HOST_GS_BASE: u64 = 0x6c08;
const HOST_TR_BASE: u64 = 0x6c0a;
const HOST_GDTR_BASE: u64 = 0x6c0c;
const HOST_IDTR_BASE: u64 = 0x6c0e;
const HOST_SYSENTER_ESP: u64 = 0x6c10;
const HOST_SYSENTER_EIP: u64 = 0x6c12;
const HOST_RSP: u64 = 0x6c14;
const HOST_RIP: u64 = 0x6c16;

/// Pin-based: external-interrupt exiting (the host's timer keeps ticking) and the
/// VMX-preemption timer.
const PIN_WANT: u32 = 1 | (1 << 6);
/// Pin-based, where the CPU allows both: NMI exiting and virtual NMIs (the CPU tracks the
/// guest's NMI blocking, and NMI-window exiting becomes available: `reply::NMI_WINDOW`).
const PIN_NMI: u32 = (pin_based::NMI_EXITING | pin_based::VIRTUAL_NMIS) as u32;
/// The longest a guest runs between two VM exits, in TSC ticks: every entry arms the
/// VMX-preemption timer with it. External interrupts already exit in the active and HLT
/// states; the timer also bounds a run in which they cannot (an activity state the object
/// model refused to set, a CPU quirk). 2^18 ticks is about 90 us at 3 GHz (some 11,000 exits
/// a second, about 1% of a core) and about a quarter of a 100 Hz timer tick in Bochs, where
/// the TSC counts instructions, so the suites see the timer fire.
pub const GUEST_SLICE_TSC: u64 = 1 << 18;
/// Primary: use TSC offsetting (the guest's TSC is the host's plus `TSC_OFFSET`), HLT
/// exiting, MWAIT exiting, RDPMC exiting, CR8-load and CR8-store exiting (CR8 is the virtual
/// local APIC's TPR; without them a guest would write the host's), MOV-DR exiting (the
/// guest's debug registers are kept per vCPU), unconditional I/O exiting, MONITOR exiting,
/// secondary controls. No MSR bitmaps, so every RDMSR/WRMSR exits; CPUID, INVD, XSETBV and
/// task switches always exit. (MWAIT would otherwise park the host CPU, and RDPMC read the
/// host's counters.)
const PROC_WANT: u32 = (1 << 3)
    | (1 << 7)
    | (1 << 10)
    | (1 << 11)
    | (1 << 19)
    | (1 << 20)
    | (1 << 23)
    | (1 << 24)
    | (1 << 29)
    | (1 << 31);
/// Secondary: EPT, VPID, unrestricted guest.
const PROC2_WANT: u32 = proc_based2::REAL_MODE as u32 | (1 << 5);
/// Secondary, where the CPU allows them: WBINVD exiting (a guest does not flush the host's
/// caches), and the controls of [`abi::vmx::guest_features`] (RDTSCP, INVPCID: #UD without
/// them). A shadow-paged VM gets no INVPCID: with INVLPG exiting it would exit, and the MMU
/// service does not emulate it.
const PROC2_OPTIONAL: u32 = PROC2_SHADOW_OPTIONAL | guest_features::CONTROLS[1].1;
const PROC2_SHADOW_OPTIONAL: u32 = (1 << 6) | guest_features::CONTROLS[0].1;
/// Primary, shadow-paged VMs: also INVLPG, CR3-load and CR3-store exiting.
const PROC_SHADOW_WANT: u32 = PROC_WANT | (1 << 9) | (1 << 15) | (1 << 16);
/// Exit: save debug controls (the guest's DR7 and DEBUGCTL into the VMCS), 64-bit host,
/// acknowledge interrupt on exit, save/load PAT and EFER.
const EXIT_WANT: u32 =
    (1 << 2) | (1 << 9) | (1 << 15) | (1 << 18) | (1 << 19) | (1 << 20) | (1 << 21);
/// Exit control "save VMX-preemption timer value" (not wanted: [`enter`] relies on the field
/// keeping what it wrote).
const EXIT_SAVE_TIMER: u32 = 1 << 22;
/// Entry: load debug controls (the guest's DR7 and DEBUGCTL from the VMCS: with the true
/// controls this bit may be 0, and the guest would then run with the host's DR7), load PAT
/// and EFER (IA-32e mode guest is set per vCPU by the object model).
const ENTRY_WANT: u32 = (1 << 2) | (1 << 14) | (1 << 15);

/// The control values every VMCS gets, computed once from the capability MSRs.
#[derive(Clone, Copy, Debug)]
struct Controls {
    revision: u32,
    pin: u32,
    proc: u32,
    proc2: u32,
    /// Primary and secondary controls of a shadow-paged VM (no EPT, VPID or unrestricted
    /// guest: without VPIDs every VM entry and exit flushes the guest's TLB, which keeps the
    /// hardware coherent with every shadow entry the MMU service changes during an exit).
    proc_shadow: u32,
    proc2_shadow: u32,
    exit: u32,
    entry: u32,
    /// The VMX-preemption timer's value for one slice: [`GUEST_SLICE_TSC`] scaled by the
    /// timer's rate (IA32_VMX_MISC bits 4:0).
    slice: u32,
    /// The preemption timer counts every 2^rate TSC ticks (IA32_VMX_MISC bits 4:0).
    rate: u32,
}

impl Controls {
    /// The preemption timer's value for an entry: one slice, or less if `deadline` (a host
    /// TSC value, 0 for none) comes sooner (0 if it has passed: the guest exits at once).
    fn timer_value(&self, deadline: u64) -> u32 {
        if deadline == 0 {
            return self.slice;
        }
        let left = deadline.saturating_sub(super::cpu::rdtsc()) >> self.rate;
        left.min(u64::from(self.slice)) as u32
    }
}

static CONTROLS: Once<Controls> = Once::new();
/// The kernel's GDTR and IDTR as `lgdt`/`lidt` read them (limit, then base), for the VM-exit
/// entry; written once by [`init`] before any VM runs.
#[repr(C, packed)]
struct TablePointer {
    limit: u16,
    base: u64,
}

#[no_mangle]
static mut UMBRA_KERNEL_GDTR: TablePointer = TablePointer { limit: 0, base: 0 };
#[no_mangle]
static mut UMBRA_KERNEL_IDTR: TablePointer = TablePointer { limit: 0, base: 0 };

/// Physical address of the current VMCS (`u64::MAX`: none).
static CURRENT: AtomicU64 = AtomicU64::new(u64::MAX);

/// A VMCS region (the object model keeps whether it was launched).
#[derive(Debug)]
pub struct Vmcs {
    pub phys: u64,
    /// The guest's CR2 (VMX does not switch it): saved at every exit, loaded before entry.
    pub cr2: u64,
    /// The guest's and host's MSRs the CPU switches on entry and exit (part `msr`).
    pub msrs: super::vmx_msr::MsrAreas,
    /// The guest's DR0..DR3 and DR6 (`dr[4]`): loaded before entry, DR6 saved at every exit
    /// (part `fpu`; DR7 is the VMCS guest field).
    pub dr: [u64; 5],
    /// The guest's XCR0, in force while it runs (part `fpu`).
    pub xcr0: u64,
    /// The vCPU's deadline, a host TSC value (0: none): the preemption timer of an entry
    /// fires no later than it ([`abi::vmx::field::DEADLINE`]).
    pub deadline: u64,
    /// The HOST_RSP field as the last entry wrote it (0: not yet): the next entry with the
    /// same register file leaves it.
    host_rsp: core::cell::Cell<u64>,
    /// The preemption-timer value the last entry wrote (`u64::MAX`: none yet). VM entry
    /// loads the timer from the field, which no exit saves (no "save VMX-preemption timer
    /// value" control) and no task may write: the same value need not be written again.
    timer: core::cell::Cell<u64>,
}

/// `want` adjusted to a control MSR: bits that must be 1 are set; `None` if a wanted bit
/// cannot be 1.
fn adjust(msr: u64, want: u32) -> Option<u32> {
    let must = msr as u32;
    let may = (msr >> 32) as u32;
    let v = (want | must) & may;
    (v & want == want).then_some(v)
}

/// Enters VMX root operation if the CPU offers what Umbra needs (true controls, EPT, VPID,
/// unrestricted guest, the VMX-preemption timer). Returns why not otherwise.
pub fn init() -> Result<(), &'static str> {
    if !super::cpu::has_vmx() {
        return Err("CPUID.1:ECX.VMX is clear");
    }
    let read = |msr| trap::rdmsr(msr).map_err(|_| "a VMX capability MSR is missing");
    let basic = read(MSR_VMX_BASIC)?;
    if basic & (1 << 55) == 0 {
        return Err("no true VMX controls");
    }
    let fc = read(MSR_FEATURE_CONTROL)?;
    if fc & 1 != 0 && fc & 4 == 0 {
        return Err("VMXON disabled by firmware (IA32_FEATURE_CONTROL)");
    }
    let proc = adjust(read(MSR_VMX_TRUE_PROCBASED)?, PROC_WANT).ok_or("primary controls")?;
    let proc_shadow =
        adjust(read(MSR_VMX_TRUE_PROCBASED)?, PROC_SHADOW_WANT).ok_or("INVLPG or CR3 exiting")?;
    let proc2_msr = read(MSR_VMX_PROCBASED_CTLS2)?;
    let may = |optional: u32| optional & (proc2_msr >> 32) as u32;
    let proc2_shadow = adjust(proc2_msr, may(PROC2_SHADOW_OPTIONAL)).ok_or("secondary controls")?;
    // Every CPU with unrestricted guest has the preemption timer; Umbra needs both.
    let pin_msr = read(MSR_VMX_TRUE_PINBASED)?;
    let nmi = if (pin_msr >> 32) as u32 & PIN_NMI == PIN_NMI {
        PIN_NMI
    } else {
        0
    };
    let pin = adjust(pin_msr, PIN_WANT | nmi).ok_or("VMX-preemption timer")?;
    let rate = read(MSR_VMX_MISC)? & 0x1f;
    let slice = (GUEST_SLICE_TSC >> rate).clamp(1, u64::from(u32::MAX)) as u32;
    let c = Controls {
        revision: basic as u32 & 0x7fff_ffff,
        pin,
        proc,
        proc2: adjust(proc2_msr, PROC2_WANT | may(PROC2_OPTIONAL))
            .ok_or("EPT, VPID or unrestricted guest missing")?,
        proc_shadow,
        proc2_shadow,
        exit: adjust(read(MSR_VMX_TRUE_EXIT)?, EXIT_WANT).ok_or("exit controls")?,
        entry: adjust(read(MSR_VMX_TRUE_ENTRY)?, ENTRY_WANT).ok_or("entry controls")?,
        slice,
        rate: rate as u32,
    };
    if fc & 1 == 0 {
        // Unlocked: allow VMXON outside SMX and lock.
        // SAFETY: the MSR exists (it was just read) and is unlocked; setting the lock and
        // "VMXON outside SMX" bits has no memory effects.
        unsafe {
            x86_64::registers::model_specific::Msr::new(MSR_FEATURE_CONTROL).write(fc | 1 | 4)
        };
    }
    let (cr0_0, cr0_1) = (read(MSR_VMX_CR0_FIXED0)?, read(MSR_VMX_CR0_FIXED1)?);
    let (cr4_0, cr4_1) = (read(MSR_VMX_CR4_FIXED0)?, read(MSR_VMX_CR4_FIXED1)?);
    let region = crate::mm::alloc_zeroed_frame_below(u64::MAX).ok_or("no frame for VMXON")?;
    write_revision(region, c.revision);
    // SAFETY: CR0 and CR4 get the bits VMX operation requires (fixed0 set, fixed1 clear
    // already hold for this kernel's values except VMXE, which only enables VMXON).
    unsafe {
        let cr0 = (Cr0::read_raw() | cr0_0) & cr0_1;
        Cr0::write_raw(cr0);
        Cr4::write_raw(
            (Cr4::read_raw() | cr4_0 | Cr4Flags::VIRTUAL_MACHINE_EXTENSIONS.bits()) & cr4_1,
        );
    }
    let ok: u8;
    // SAFETY: `region` is a zeroed, page-aligned frame holding the VMCS revision; CR0/CR4
    // satisfy the fixed bits and IA32_FEATURE_CONTROL allows VMXON. The frame is never freed.
    unsafe {
        asm!("vmxon [{p}]", "setna {ok}", p = in(reg) &region, ok = out(reg_byte) ok,
             options(nostack))
    };
    if ok != 0 {
        return Err("VMXON failed");
    }
    // SAFETY: one CPU, no VM has run yet (so the exit entry does not read them), and SGDT/SIDT
    // store exactly the 10 bytes of each packed pointer.
    unsafe {
        asm!("sgdt [{g}]", "sidt [{i}]", g = in(reg) &raw mut UMBRA_KERNEL_GDTR,
             i = in(reg) &raw mut UMBRA_KERNEL_IDTR, options(nostack))
    };
    CONTROLS.call_once(|| c);
    Ok(())
}

/// Whether [`init`] succeeded.
pub fn available() -> bool {
    CONTROLS.get().is_some()
}

fn write_revision(frame: u64, revision: u32) {
    let p = crate::mm::phys_to_virt(frame) as *mut u32;
    // SAFETY: `frame` is a frame this module just allocated, mapped in the direct map.
    unsafe { p.write_volatile(revision) };
}

/// Makes `phys` the current VMCS (VMPTRLD) unless it already is.
fn make_current(phys: u64) {
    if CURRENT.load(Ordering::Relaxed) == phys {
        return;
    }
    // SAFETY: `phys` is a VMCS region created by `vmcs_new` (revision written, VMCLEARed).
    unsafe { asm!("vmptrld [{p}]", p = in(reg) &phys, options(nostack)) };
    CURRENT.store(phys, Ordering::Relaxed);
}

/// VMREAD from the current VMCS (0 if the field does not exist).
fn vmread(f: u64) -> u64 {
    let v: u64;
    // SAFETY: VMREAD only reads the current VMCS; an unsupported field sets RFLAGS and
    // leaves the output, which is zeroed first.
    unsafe {
        asm!("xor {v:e}, {v:e}", "vmread {v}, {f}", f = in(reg) f, v = out(reg) v,
             options(nostack, nomem))
    };
    v
}

/// VMWRITE to the current VMCS. Fails silently for a field that does not exist (the
/// object model only names fields that do).
fn vmwrite(f: u64, v: u64) {
    // SAFETY: VMWRITE changes the current VMCS only; host state and controls are written only
    // by this module, and guest state is checked again at VM entry by the CPU.
    unsafe { asm!("vmwrite {f}, {v}", f = in(reg) f, v = in(reg) v, options(nostack, nomem)) };
}

pub fn read(vmcs: &Vmcs, f: u64) -> u64 {
    make_current(vmcs.phys);
    vmread(f)
}

/// [`read`] of several fields with one VMCS load
/// ([`crate::kobj::machine::Machine::vmcs_read_plain`]).
#[inline(always)]
pub fn read_plain<const N: usize>(vmcs: &Vmcs, fields: [u64; N]) -> [u64; N] {
    make_current(vmcs.phys);
    fields.map(vmread)
}

pub fn write(vmcs: &Vmcs, f: u64, v: u64) {
    make_current(vmcs.phys);
    vmwrite(f, v);
}

/// [`crate::kobj::machine::Machine::vmcs_skip_instruction`] with one VMCS load: RIP moved
/// `len` bytes on, blocking by STI or MOV SS ended.
#[inline(always)]
pub fn skip_instruction(vmcs: &Vmcs, len: u64) {
    use abi::vmx::{field, interruptibility::ONE_INSTRUCTION};
    make_current(vmcs.phys);
    vmwrite(field::GUEST_RIP, vmread(field::GUEST_RIP).wrapping_add(len));
    let blocking = vmread(field::GUEST_INTERRUPTIBILITY);
    if blocking & u64::from(ONE_INSTRUCTION) != 0 {
        vmwrite(
            field::GUEST_INTERRUPTIBILITY,
            blocking & !u64::from(ONE_INSTRUCTION),
        );
    }
}

/// Switches a shadow-paged VMCS between shadow paging (`eptp` `None`: EPT and unrestricted
/// guest off) and running its guest's real mode on the VM's EPT with unrestricted guest
/// (`Some`): VMX cannot run real mode otherwise. The other secondary controls stay.
pub fn set_real_mode_ept(vmcs: &Vmcs, eptp: Option<u64>) {
    make_current(vmcs.phys);
    let proc2 = vmread(field::PROC_BASED_CONTROLS2) & !proc_based2::REAL_MODE;
    match eptp {
        Some(p) => {
            vmwrite(EPT_POINTER, p);
            vmwrite(field::PROC_BASED_CONTROLS2, proc2 | proc_based2::REAL_MODE);
        }
        None => {
            vmwrite(field::PROC_BASED_CONTROLS2, proc2);
            vmwrite(EPT_POINTER, 0);
        }
    }
}

/// Reads a field of the current VMCS (the exit handler's).
pub fn read_current(f: u64) -> u64 {
    vmread(f)
}

/// Flushes what the CPU cached for an EPT (INVEPT, single context).
pub fn invept(eptp: u64) {
    if !available() {
        return;
    }
    let desc: [u64; 2] = [eptp, 0];
    // SAFETY: INVEPT only invalidates cached translations; the descriptor is valid.
    unsafe { asm!("invept {t}, [{d}]", t = in(reg) 1u64, d = in(reg) &desc, options(nostack)) };
}

fn sgdt_sidt() -> (u64, u64) {
    let mut gdtr = [0u8; 10];
    let mut idtr = [0u8; 10];
    // SAFETY: SGDT/SIDT store 10 bytes each into the local buffers.
    unsafe {
        asm!("sgdt [{g}]", "sidt [{i}]", g = in(reg) &mut gdtr, i = in(reg) &mut idtr,
             options(nostack))
    };
    let base = |b: &[u8; 10]| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[2..10]);
        u64::from_le_bytes(w)
    };
    (base(&gdtr), base(&idtr))
}

/// A new VMCS for an EPT pointer (or, with `shadow`, for shadow paging: no EPT): controls,
/// host state, and a valid 32-bit flat guest.
pub fn vmcs_new(eptp: u64, vpid: u16, shadow: bool) -> Option<Vmcs> {
    let c = *CONTROLS.get()?;
    let msrs = super::vmx_msr::MsrAreas::new()?;
    let Some(phys) = crate::mm::alloc_zeroed_frame_below(u64::MAX) else {
        msrs.destroy();
        return None;
    };
    write_revision(phys, c.revision);
    // SAFETY: a fresh VMCS region with its revision: VMCLEAR initialises it.
    unsafe { asm!("vmclear [{p}]", p = in(reg) &phys, options(nostack)) };
    if CURRENT.load(Ordering::Relaxed) == phys {
        CURRENT.store(u64::MAX, Ordering::Relaxed);
    }
    make_current(phys);
    let sel = gdt::selectors();
    let (gdt_base, idt_base) = sgdt_sidt();
    let rdmsr = |m| trap::rdmsr(m).unwrap_or(0);
    let (proc, proc2, eptp, vpid) = if shadow {
        (c.proc_shadow, c.proc2_shadow, 0, 0)
    } else {
        (c.proc, c.proc2, eptp, u64::from(vpid) + 1)
    };
    for (f, v) in [
        (field::PIN_BASED_CONTROLS, c.pin as u64),
        (field::PROC_BASED_CONTROLS, proc as u64),
        (field::PROC_BASED_CONTROLS2, proc2 as u64),
        (EXIT_CONTROLS, c.exit as u64),
        (field::VM_ENTRY_CONTROLS, c.entry as u64),
        (field::EXCEPTION_BITMAP, 0),
        (PAGE_FAULT_ERROR_MASK, 0),
        (PAGE_FAULT_ERROR_MATCH, 0),
        (CR3_TARGET_COUNT, 0),
        (EPT_POINTER, eptp),
        (VPID, vpid),
        (VMCS_LINK_POINTER, u64::MAX),
        // Host state.
        // CR0.TS clear after every exit, whatever the thread that made the VMCS had (the lazy
        // extended-state switch sets it for user threads; `xstate::note_vm_exit`).
        (HOST_CR0, Cr0::read_raw() & !(1 << 3)),
        (HOST_CR3, crate::mm::paging::kernel_pml4()),
        (HOST_CR4, Cr4::read_raw()),
        (HOST_CS_SELECTOR, u64::from(sel.kernel_code.0)),
        (HOST_SS_SELECTOR, u64::from(sel.kernel_data.0)),
        // DS and ES are null in the kernel (see `gdt::init`).
        (HOST_DS_SELECTOR, 0),
        (HOST_ES_SELECTOR, 0),
        (HOST_FS_SELECTOR, 0),
        (HOST_GS_SELECTOR, 0),
        (HOST_TR_SELECTOR, u64::from(sel.tss.0)),
        (HOST_FS_BASE, 0),
        (HOST_GS_BASE, 0),
        (HOST_TR_BASE, gdt::tss_base()),
        (HOST_GDTR_BASE, gdt_base),
        (HOST_IDTR_BASE, idt_base),
        (HOST_SYSENTER_CS, 0),
        (HOST_SYSENTER_ESP, 0),
        (HOST_SYSENTER_EIP, 0),
        (HOST_IA32_PAT, rdmsr(MSR_PAT)),
        (HOST_IA32_EFER, rdmsr(MSR_EFER)),
        (HOST_RSP, super::user::entry_stack_top()),
        (HOST_RIP, vmx_exit_entry as *const () as u64),
        // Guest: 32-bit flat protected mode, paging off (the VMM sets its own).
        (field::GUEST_CR0, 0x31),
        (field::CR0_READ_SHADOW, 0x11),
        (field::GUEST_CR3, 0),
        (field::GUEST_CR4, 1 << 13),
        (field::CR4_READ_SHADOW, 0),
        (field::GUEST_DR7, 0x400),
        (GUEST_IA32_DEBUGCTL, 0),
        (field::GUEST_RSP, 0),
        (field::GUEST_RIP, 0),
        (field::GUEST_RFLAGS, 2),
        (field::GUEST_IA32_EFER, 0),
        (field::GUEST_IA32_PAT, 0x0007_0406_0007_0406),
        (field::GUEST_GDTR_BASE, 0),
        (field::GUEST_GDTR_LIMIT, 0xffff),
        (field::GUEST_IDTR_BASE, 0),
        (field::GUEST_IDTR_LIMIT, 0xffff),
        (field::GUEST_TR_SELECTOR, 0),
        (field::GUEST_TR_BASE, 0),
        (field::GUEST_TR_LIMIT, 0x67),
        (field::GUEST_TR_AR, 0x8b),
        (field::GUEST_LDTR_SELECTOR, 0),
        (field::GUEST_LDTR_AR, 0x1_0000),
        (field::GUEST_INTERRUPTIBILITY, 0),
        (field::GUEST_ACTIVITY_STATE, 0),
        (GUEST_PENDING_DEBUG, 0),
        (field::GUEST_SYSENTER_CS, 0),
        (field::GUEST_SYSENTER_ESP, 0),
        (field::GUEST_SYSENTER_EIP, 0),
        (field::VM_ENTRY_INTR_INFO, 0),
        (field::TSC_OFFSET, 0),
    ] {
        vmwrite(f, v);
    }
    for (f, v) in msrs.vmcs_fields() {
        vmwrite(f, v);
    }
    for n in 0..6u64 {
        let code = n == 1;
        vmwrite(
            field::GUEST_ES_SELECTOR + 2 * n,
            if code { 0x08 } else { 0x10 },
        );
        vmwrite(field::GUEST_ES_BASE + 2 * n, 0);
        vmwrite(field::GUEST_ES_LIMIT + 2 * n, 0xffff_ffff);
        vmwrite(
            field::GUEST_ES_AR + 2 * n,
            if code { 0xc09b } else { 0xc093 },
        );
    }
    Some(Vmcs {
        phys,
        cr2: 0,
        msrs,
        dr: [0, 0, 0, 0, abi::cpu::dr6::INIT],
        xcr0: abi::cpu::xcr0::INIT,
        deadline: 0,
        host_rsp: core::cell::Cell::new(0),
        timer: core::cell::Cell::new(u64::MAX),
    })
}

/// Frees a VMCS region (VMCLEAR first so the CPU holds no cached copy).
pub fn vmcs_destroy(vmcs: Vmcs) {
    // Its `dr` array's address may hold another vCPU's next.
    super::xstate::debug_changed();
    // SAFETY: the region is a VMCS this module created; after VMCLEAR the CPU no longer
    // uses it.
    unsafe { asm!("vmclear [{p}]", p = in(reg) &vmcs.phys, options(nostack)) };
    if CURRENT.load(Ordering::Relaxed) == vmcs.phys {
        CURRENT.store(u64::MAX, Ordering::Relaxed);
    }
    crate::mm::free_frame(vmcs.phys);
    vmcs.msrs.destroy();
}

global_asm!(
    r#"
    .section .text
    .balign 16
    .global vmx_exit_entry
vmx_exit_entry:
    /* HOST_RSP is the end of the vCPU thread's general-purpose registers in its UserRegs
       (`enter`): r15 .. rax go straight there; rip, rflags and rsp are in the VMCS. */
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
    /* The exit set the GDTR and IDTR limits to 0xFFFF (the host-state area has no field for
       them): load the kernel's, or ring 3 reaches kernel memory past the GDT. */
    lgdt UMBRA_KERNEL_GDTR(%rip)
    lidt UMBRA_KERNEL_IDTR(%rip)
    leaq user_entry_stack_top(%rip), %rsp
    cld
    call vmx_exit_rust
    ud2
"#,
    options(att_syntax)
);

extern "C" {
    fn vmx_exit_entry();
}

/// Enters the guest whose VMCS is `vmcs` with general-purpose registers from `regs`
/// (VMRESUME if the object model says it was `launched`, VMLAUNCH otherwise). Never returns: the next VM exit enters
/// `kentry::vm_exit`; a failed entry enters `kentry::vm_entry_failed`.
#[inline(always)]
pub fn enter(regs: &UserRegs, vmcs: &Vmcs, launched: bool) -> ! {
    make_current(vmcs.phys);
    // The exit saves the guest's registers back where they come from (`vmx_exit_entry`).
    let host_rsp = regs as *const UserRegs as u64 + core::mem::offset_of!(UserRegs, rip) as u64;
    if vmcs.host_rsp.get() != host_rsp {
        vmwrite(HOST_RSP, host_rsp);
        vmcs.host_rsp.set(host_rsp);
    }
    program_timer(vmcs);
    // SAFETY: CR2 only holds the last page-fault address; the kernel takes no page fault
    // between here and the VM entry, so the guest finds its own value.
    unsafe { asm!("mov cr2, {}", in(reg) vmcs.cr2, options(nostack, nomem)) };
    super::xstate::load_debug(&vmcs.dr);
    super::xstate::load_guest_xcr0(vmcs.xcr0);
    resume_or_launch(regs, launched)
}

/// Enters again the guest whose exit the kernel answered at once (the floor,
/// `kentry::vm_exit`): the exit left its VMCS current, HOST_RSP naming `regs`, and the guest's
/// CR2, DR0..DR3, DR6 and XCR0 in the CPU (the kernel loaded nothing of its own since), so
/// only the preemption timer is programmed, as [`enter`] does; then VMRESUME.
pub fn reenter(regs: &UserRegs, vmcs: &Vmcs) -> ! {
    debug_assert_eq!(CURRENT.load(Ordering::Relaxed), vmcs.phys);
    debug_assert_eq!(
        vmcs.host_rsp.get(),
        regs as *const UserRegs as u64 + core::mem::offset_of!(UserRegs, rip) as u64
    );
    program_timer(vmcs);
    resume_or_launch(regs, true)
}

/// The preemption timer's value for an entry of `vmcs` (see [`Controls::timer_value`]).
#[inline(always)]
fn program_timer(vmcs: &Vmcs) {
    if let Some(c) = CONTROLS.get() {
        // The timer counts down from here; reaching zero exits (reason 52).
        let timer = u64::from(c.timer_value(vmcs.deadline));
        if vmcs.timer.get() != timer || c.exit & EXIT_SAVE_TIMER != 0 {
            vmwrite(PREEMPTION_TIMER_VALUE, timer);
            vmcs.timer.set(timer);
        }
    }
}

/// Loads the guest's general-purpose registers from `regs` and enters the current VMCS
/// (VMRESUME if `launched`, else VMLAUNCH); a failed entry goes to `vmx_entry_failed_rust`.
#[inline(always)]
fn resume_or_launch(regs: &UserRegs, launched: bool) -> ! {
    let launched = u64::from(launched);
    // SAFETY: the current VMCS was built by `vmcs_new` (host state returns to
    // `vmx_exit_entry` on the entry stack with the kernel's CR3), and its guest state is
    // whatever the object model allowed; the CPU checks it and fails the entry cleanly.
    // `regs` lives in the kernel's static state, above the stack, and is only read. The
    // abandoned kernel stack is not used again: the exit starts at the top of it.
    unsafe {
        asm!(
            "cmpq $0, %rsi",
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
            "jne 1f",
            "vmlaunch",
            "jmp 2f",
            "1: vmresume",
            "2: leaq user_entry_stack_top(%rip), %rsp",
            "cld",
            "call vmx_entry_failed_rust",
            "ud2",
            in("rdi") regs as *const UserRegs,
            in("rsi") launched,
            options(noreturn, att_syntax)
        )
    }
}

/// A VM exit. RFLAGS is 2 (SDM 28.5.3: every flag clear), so AC is clear: SMAP holds. The
/// guest's XCR0 stays loaded until `kentry::vm_exit` knows whether the kernel goes back
/// into the same guest at once (the floor) or on to anything that needs the host's.
#[no_mangle]
extern "C" fn vmx_exit_rust() -> ! {
    super::xstate::note_vm_exit();
    crate::kentry::vm_exit()
}

#[no_mangle]
extern "C" fn vmx_entry_failed_rust() -> ! {
    // The guest's XCR0 was loaded for the entry: the host's comes back before any XSAVE.
    super::xstate::load_host_xcr0();
    let error = vmread(field::VM_INSTRUCTION_ERROR);
    crate::kentry::vm_entry_failed(error)
}

/// With "acknowledge interrupt on exit", the exit's interruption info names the vector; the
/// PIC still needs its EOI ([`super::timer`]). Returns whether it was a real (not spurious) IRQ.
pub fn acknowledge_exit_interrupt(intr_info: u64) -> bool {
    super::timer::acknowledge(intr_info as u8)
}
