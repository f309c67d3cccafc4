//! VMCS field encodings (SDM vol. 3, appendix B) a service may name in
//! [`crate::Sys::VcpuState`], plus pseudo-fields for the registers the VMCS does not hold.
//! The kernel decides which are readable and writable ([`access`]).

// 16-bit guest state.
pub const GUEST_ES_SELECTOR: u64 = 0x0800;
pub const GUEST_CS_SELECTOR: u64 = 0x0802;
pub const GUEST_SS_SELECTOR: u64 = 0x0804;
pub const GUEST_DS_SELECTOR: u64 = 0x0806;
pub const GUEST_FS_SELECTOR: u64 = 0x0808;
pub const GUEST_GS_SELECTOR: u64 = 0x080a;
pub const GUEST_LDTR_SELECTOR: u64 = 0x080c;
pub const GUEST_TR_SELECTOR: u64 = 0x080e;
// 64-bit.
pub const GUEST_PHYSICAL_ADDRESS: u64 = 0x2400;
pub const GUEST_IA32_PAT: u64 = 0x2804;
pub const GUEST_IA32_EFER: u64 = 0x2806;
pub const GUEST_PDPTE0: u64 = 0x280a;
pub const GUEST_PDPTE1: u64 = 0x280c;
pub const GUEST_PDPTE2: u64 = 0x280e;
pub const GUEST_PDPTE3: u64 = 0x2810;
// 32-bit control and exit information.
/// Pin-based controls: the kernel's alone (no user access).
pub const PIN_BASED_CONTROLS: u64 = 0x4000;
/// Primary and secondary processor-based controls: the kernel's alone (no user access).
pub const PROC_BASED_CONTROLS: u64 = 0x4002;
pub const PROC_BASED_CONTROLS2: u64 = 0x401e;
pub const EXCEPTION_BITMAP: u64 = 0x4004;
pub const VM_ENTRY_CONTROLS: u64 = 0x4012;
pub const VM_ENTRY_INTR_INFO: u64 = 0x4016;
pub const VM_ENTRY_EXCEPTION_ERROR_CODE: u64 = 0x4018;
pub const VM_ENTRY_INSTRUCTION_LEN: u64 = 0x401a;
pub const VM_INSTRUCTION_ERROR: u64 = 0x4400;
pub const EXIT_REASON: u64 = 0x4402;
pub const EXIT_INTR_INFO: u64 = 0x4404;
pub const EXIT_INTR_ERROR_CODE: u64 = 0x4406;
pub const IDT_VECTORING_INFO: u64 = 0x4408;
pub const IDT_VECTORING_ERROR_CODE: u64 = 0x440a;
pub const EXIT_INSTRUCTION_LEN: u64 = 0x440c;
pub const EXIT_INSTRUCTION_INFO: u64 = 0x440e;
// 32-bit guest state.
pub const GUEST_ES_LIMIT: u64 = 0x4800;
pub const GUEST_CS_LIMIT: u64 = 0x4802;
pub const GUEST_SS_LIMIT: u64 = 0x4804;
pub const GUEST_DS_LIMIT: u64 = 0x4806;
pub const GUEST_FS_LIMIT: u64 = 0x4808;
pub const GUEST_GS_LIMIT: u64 = 0x480a;
pub const GUEST_LDTR_LIMIT: u64 = 0x480c;
pub const GUEST_TR_LIMIT: u64 = 0x480e;
pub const GUEST_GDTR_LIMIT: u64 = 0x4810;
pub const GUEST_IDTR_LIMIT: u64 = 0x4812;
pub const GUEST_ES_AR: u64 = 0x4814;
pub const GUEST_CS_AR: u64 = 0x4816;
pub const GUEST_SS_AR: u64 = 0x4818;
pub const GUEST_DS_AR: u64 = 0x481a;
pub const GUEST_FS_AR: u64 = 0x481c;
pub const GUEST_GS_AR: u64 = 0x481e;
pub const GUEST_LDTR_AR: u64 = 0x4820;
pub const GUEST_TR_AR: u64 = 0x4822;
pub const GUEST_INTERRUPTIBILITY: u64 = 0x4824;
pub const GUEST_ACTIVITY_STATE: u64 = 0x4826;
pub const GUEST_SYSENTER_CS: u64 = 0x482a;
// Natural-width control and exit information.
pub const CR0_GUEST_HOST_MASK: u64 = 0x6000;
pub const CR4_GUEST_HOST_MASK: u64 = 0x6002;
pub const CR0_READ_SHADOW: u64 = 0x6004;
pub const CR4_READ_SHADOW: u64 = 0x6006;
pub const EXIT_QUALIFICATION: u64 = 0x6400;
pub const GUEST_LINEAR_ADDRESS: u64 = 0x640a;
// Natural-width guest state.
pub const GUEST_CR0: u64 = 0x6800;
pub const GUEST_CR3: u64 = 0x6802;
pub const GUEST_CR4: u64 = 0x6804;
pub const GUEST_ES_BASE: u64 = 0x6806;
pub const GUEST_CS_BASE: u64 = 0x6808;
pub const GUEST_SS_BASE: u64 = 0x680a;
pub const GUEST_DS_BASE: u64 = 0x680c;
pub const GUEST_FS_BASE: u64 = 0x680e;
pub const GUEST_GS_BASE: u64 = 0x6810;
pub const GUEST_LDTR_BASE: u64 = 0x6812;
pub const GUEST_TR_BASE: u64 = 0x6814;
pub const GUEST_GDTR_BASE: u64 = 0x6816;
pub const GUEST_IDTR_BASE: u64 = 0x6818;
pub const GUEST_DR7: u64 = 0x681a;
pub const GUEST_RSP: u64 = 0x681c;
pub const GUEST_RIP: u64 = 0x681e;
pub const GUEST_RFLAGS: u64 = 0x6820;
pub const GUEST_SYSENTER_ESP: u64 = 0x6824;
pub const GUEST_SYSENTER_EIP: u64 = 0x6826;

/// Pseudo-field: general-purpose register `n` (`GPR_BASE + n`, [`super::Gpr`] order;
/// `n` = 4 is RSP, which is the VMCS field).
pub const GPR_BASE: u64 = 0x1_0000_0000;
/// Pseudo-field, read-only: exits of basic reason `r` so far (`EXIT_COUNT_BASE + r`).
pub const EXIT_COUNT_BASE: u64 = 0x2_0000_0000;
/// Pseudo-field: the guest's CR2 (VMX does not switch it; the kernel keeps it per vCPU,
/// saves it at every exit and loads it before every entry).
pub const GUEST_CR2: u64 = 0x3_0000_0000;
/// Pseudo-field, read-only: the CR3 the hardware uses. For an EPT VM it is `GUEST_CR3`;
/// for a shadow-paged VM `GUEST_CR3` is the guest's own value and this the shadow root.
pub const SHADOW_CR3: u64 = 0x3_0000_0001;
/// Pseudo-field: the most timer ticks one [`crate::Sys::VcpuRun`] may last (0, the
/// default: no limit). The vCPU stops with [`super::stop::TIME_LIMIT`] at the first VM
/// entry after the limit (the VMX-preemption timer and host interrupts bound how long
/// the guest runs between entries).
pub const RUN_TICKS: u64 = 0x3_0000_0002;
/// Pseudo-field (issue 12): the vCPU's deadline, a host TSC value (0, the default:
/// none). Once the TSC reaches it the kernel clears it and sends the vCPU's portal for
/// [`super::reason::PREEMPTION_TIMER`] an exit of that reason (if the portal is an
/// endpoint; otherwise the deadline just ends). The guest runs, or waits in HLT, until
/// then: this is how the VMM's timers (PIT, local APIC) reach a guest on time.
pub const DEADLINE: u64 = 0x3_0000_0003;

// ----- Part `msr` (issue 17): the guest's MSRs held in the VMCS or switched by the
// kernel on VM entry and exit, and the TSC offset. -----

/// VMCS: the TSC offset ("use TSC offsetting" is always on): the guest's RDTSC reads the
/// host's TSC plus this.
pub const TSC_OFFSET: u64 = 0x2010;
/// Pseudo-fields: guest MSRs the VMCS has no field for. The kernel loads them with the
/// VM-entry MSR-load area, stores them with the VM-exit MSR-store area and puts the
/// host's values back with the VM-exit MSR-load area, so that no host code runs on a
/// guest value. `GUEST_MSR_BASE + i` holds MSR [`SWITCHED_MSRS`]`[i]`.
pub const GUEST_MSR_BASE: u64 = 0x3_0000_0100;
pub const GUEST_KERNEL_GS_BASE: u64 = GUEST_MSR_BASE;
pub const GUEST_STAR: u64 = GUEST_MSR_BASE + 1;
pub const GUEST_LSTAR: u64 = GUEST_MSR_BASE + 2;
pub const GUEST_CSTAR: u64 = GUEST_MSR_BASE + 3;
pub const GUEST_SFMASK: u64 = GUEST_MSR_BASE + 4;
/// Reads 0 and ignores writes on a CPU without RDTSCP (no IA32_TSC_AUX to switch).
pub const GUEST_TSC_AUX: u64 = GUEST_MSR_BASE + 5;
/// The MSR numbers behind the pseudo-fields, in field order (and the kernel's MSR-area
/// order): KERNEL_GS_BASE, STAR, LSTAR, CSTAR, SFMASK, TSC_AUX.
pub const SWITCHED_MSRS: [u32; 6] = [
    0xc000_0102,
    0xc000_0081,
    0xc000_0082,
    0xc000_0083,
    0xc000_0084,
    0xc000_0103,
];

/// The pseudo-field that holds switched MSR `msr`, if it is one.
pub fn switched_msr_field(msr: u32) -> Option<u64> {
    SWITCHED_MSRS
        .iter()
        .position(|&m| m == msr)
        .map(|i| GUEST_MSR_BASE + i as u64)
}

/// Whether `f` is one of the part `msr` fields (read-write).
fn msr_part_field(f: u64) -> bool {
    f == TSC_OFFSET || (GUEST_MSR_BASE..GUEST_MSR_BASE + SWITCHED_MSRS.len() as u64).contains(&f)
}

/// Whether `v` is a canonical address (48-bit linear addresses).
pub fn canonical(v: u64) -> bool {
    let top = (v as i64) >> 47;
    top == 0 || top == -1
}

/// Whether every byte of a PAT value names a memory type (0, 1, 4, 5, 6, 7).
pub fn pat_valid(v: u64) -> bool {
    v.to_le_bytes()
        .iter()
        .all(|b| matches!(b, 0 | 1 | 4 | 5 | 6 | 7))
}

/// EFER bits a guest may hold: SCE, LME, LMA, NXE.
pub const EFER_VALID: u64 = {
    use crate::cpu::efer::{LMA, LME, NXE, SCE};
    SCE | LME | LMA | NXE
};

/// The checks the hardware makes on a guest MSR value, as WRMSR (#GP) and VM entry do:
/// canonical bases and entry points, a valid PAT, no reserved EFER bits, SFMASK and
/// TSC_AUX 32 bits. `true` for every field these rules do not cover. The kernel refuses
/// a `VcpuState` write that fails them (a VM entry would fail); the VMM turns a guest's
/// WRMSR that fails them into #GP.
pub fn msr_value_ok(f: u64, v: u64) -> bool {
    match f {
        GUEST_FS_BASE | GUEST_GS_BASE | GUEST_SYSENTER_ESP | GUEST_SYSENTER_EIP
        | GUEST_KERNEL_GS_BASE | GUEST_LSTAR | GUEST_CSTAR => canonical(v),
        GUEST_SFMASK | GUEST_TSC_AUX | GUEST_SYSENTER_CS => v >> 32 == 0,
        GUEST_IA32_PAT => pat_valid(v),
        GUEST_IA32_EFER => v & !EFER_VALID == 0,
        _ => true,
    }
}

// ----- Part `fpu` (issue 17): debug registers and XCR0, kept per vCPU by the kernel -----
/// Pseudo-fields: the guest's DR0..DR3 (`GUEST_DR0 + n`). Loaded into the debug
/// registers before every entry of the vCPU (guest MOV DR exits, so they change only
/// through here). Any 64-bit value.
pub const GUEST_DR0: u64 = 0x3_0000_0200;
/// Pseudo-field: the guest's DR6, loaded before entry and saved at every exit (a debug
/// exception in the guest sets its bits). Written values are normalised like hardware
/// ([`crate::cpu::dr6::normalize`]); bits 63:32 must be clear.
pub const GUEST_DR6: u64 = 0x3_0000_0206;
/// Pseudo-field: the guest's XCR0, in force while the guest runs (the host's at all
/// other times). Must be a value XSETBV would accept on this CPU
/// ([`crate::cpu::xcr0::valid`] against the host's XCR0): the kernel refuses others.
/// 1 (x87 only) at reset. (The guest's DR7 is the VMCS field [`GUEST_DR7`].)
pub const GUEST_XCR0: u64 = 0x3_0000_0210;
/// The part's pseudo-fields and their access (all read-write).
pub fn fpu_access(f: u64) -> Option<Access> {
    matches!(f, GUEST_DR0..=0x3_0000_0203 | GUEST_DR6 | GUEST_XCR0).then_some(Access::ReadWrite)
}

// ----- Part `exits` (issue 17) -----
/// Pseudo-field, read-only: instructions the vCPU's controls let the guest execute
/// ([`super::guest_features`]); without them the instruction is #UD, and CPUID must say
/// so.
pub const GUEST_FEATURES: u64 = 0x3_0000_0011;

/// Who may touch a field from user level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Not reachable from user level (host state, controls the kernel relies on).
    None,
    ReadOnly,
    ReadWrite,
}

/// The kernel's rule for `f`. Guest state is read-write (the kernel still forces the
/// bits VMX requires, such as CR4.VMXE and CR0.NE); exit information is read-only;
/// host state and execution controls are unreachable.
pub fn access(f: u64) -> Access {
    if let Some(a) = fpu_access(f) {
        return a;
    }
    if (GPR_BASE..GPR_BASE + 16).contains(&f) || msr_part_field(f) {
        return Access::ReadWrite;
    }
    if (EXIT_COUNT_BASE..EXIT_COUNT_BASE + super::EXIT_REASONS as u64).contains(&f) {
        return Access::ReadOnly;
    }
    match f {
        GUEST_CR2 | RUN_TICKS | GUEST_XCR0 | DEADLINE => Access::ReadWrite,
        SHADOW_CR3 | GUEST_FEATURES => Access::ReadOnly,
        VM_INSTRUCTION_ERROR
        | EXIT_REASON
        | EXIT_INTR_INFO
        | EXIT_INTR_ERROR_CODE
        | IDT_VECTORING_INFO
        | IDT_VECTORING_ERROR_CODE
        | EXIT_INSTRUCTION_LEN
        | EXIT_INSTRUCTION_INFO
        | EXIT_QUALIFICATION
        | GUEST_LINEAR_ADDRESS
        | GUEST_PHYSICAL_ADDRESS
        | VM_ENTRY_CONTROLS => Access::ReadOnly,
        GUEST_ES_SELECTOR..=GUEST_TR_SELECTOR
        | GUEST_IA32_PAT
        | GUEST_IA32_EFER
        | GUEST_PDPTE0..=GUEST_PDPTE3
        | EXCEPTION_BITMAP
        | VM_ENTRY_INTR_INFO
        | VM_ENTRY_EXCEPTION_ERROR_CODE
        | VM_ENTRY_INSTRUCTION_LEN
        | GUEST_ES_LIMIT..=GUEST_ACTIVITY_STATE
        | GUEST_SYSENTER_CS
        | CR0_GUEST_HOST_MASK..=CR4_READ_SHADOW
        | GUEST_CR0..=GUEST_SYSENTER_EIP => {
            if f & 1 == 1 {
                Access::None // the "high" half encodings of 64-bit fields
            } else {
                Access::ReadWrite
            }
        }
        _ => Access::None,
    }
}
