//! RDMSR/WRMSR exits: where each guest MSR really lives, and the fixed values of the
//! architectural MSRs kernels read at boot.
//!
//! - The guest's own state ([`vcpu_field`]): FS/GS base, SYSENTER_CS/ESP/EIP and PAT are
//!   VMCS guest fields; KERNEL_GS_BASE, STAR, LSTAR, CSTAR, SFMASK and TSC_AUX are the
//!   kernel's switched-MSR pseudo-fields (`abi::vmx::field::SWITCHED_MSRS`, loaded on VM
//!   entry and saved on exit by the CPU). RDMSR and WRMSR read and write them through
//!   `VcpuState` ([`VcpuAccess`]), so SWAPGS, SYSCALL, SYSENTER and `mov %gs:` run on what
//!   the guest wrote. Values are checked as the hardware does
//!   (`abi::vmx::field::msr_value_ok`: #GP).
//! - The TSC: RDTSC does not exit and reads the host's TSC plus the VMCS TSC offset. A WRMSR
//!   of the TSC or of IA32_TSC_ADJUST moves that offset (the guest's TSC only), and each
//!   moves the other as on hardware (SDM 17.17.3).
//! - EFER: kept here and sent with the reply (`SET_EFER`), since the kernel derives LMA and
//!   the IA-32e entry control from it.
//! - Fixed values ([`FIXED`]): what a VM without the feature behind them reads.
//!
//! Any other MSR is #GP(0).

use abi::vmx::field;

/// MSR numbers.
pub mod index {
    pub const TSC: u32 = 0x10;
    pub const PLATFORM_ID: u32 = 0x17;
    pub const APIC_BASE: u32 = 0x1b;
    pub const FEATURE_CONTROL: u32 = 0x3a;
    pub const TSC_ADJUST: u32 = 0x3b;
    pub const BIOS_SIGN_ID: u32 = 0x8b;
    pub const PLATFORM_INFO: u32 = 0xce;
    pub const MTRRCAP: u32 = 0xfe;
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const MCG_CAP: u32 = 0x179;
    pub const MCG_STATUS: u32 = 0x17a;
    pub const MISC_ENABLE: u32 = 0x1a0;
    pub const PAT: u32 = 0x277;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const PERF_CAPABILITIES: u32 = 0x345;
    pub const TSC_DEADLINE: u32 = 0x6e0;
    pub const X2APIC_ID: u32 = 0x802;
    pub const EFER: u32 = 0xc000_0080;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SFMASK: u32 = 0xc000_0084;
    pub const FS_BASE: u32 = 0xc000_0100;
    pub const GS_BASE: u32 = 0xc000_0101;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const TSC_AUX: u32 = 0xc000_0103;
}

/// EFER bits.
pub mod efer {
    pub use abi::cpu::efer::*;
    /// Bits a guest may write.
    pub const VALID: u64 = abi::vmx::field::EFER_VALID;
}

/// MISC_ENABLE at reset: fast strings, and no branch-trace store or PEBS (read-only bits).
pub const MISC_ENABLE_DEFAULT: u64 = 1 | MISC_ENABLE_READ_ONLY;
/// MISC_ENABLE bits the guest cannot change: BTS unavailable (11), PEBS unavailable (12).
pub const MISC_ENABLE_READ_ONLY: u64 = (1 << 11) | (1 << 12);
/// IA32_FEATURE_CONTROL: locked with VMX off (VMX is hidden from CPUID).
pub const FEATURE_CONTROL_VALUE: u64 = 1;

/// Read-only MSRs with fixed values, and whether a write is ignored (`true`) or #GP.
/// (IA32_APIC_BASE, IA32_TSC_DEADLINE and the x2APIC MSRs are the local APIC's:
/// [`crate::irq::Interrupts::rdmsr`], asked before this model.)
pub const FIXED: [(u32, u64, bool); 6] = [
    (index::PLATFORM_ID, 0, false),
    (index::FEATURE_CONTROL, FEATURE_CONTROL_VALUE, false),
    // The microcode-revision probe writes 0 and reads it back.
    (index::BIOS_SIGN_ID, 0, true),
    // No turbo ratios, no CPUID faulting.
    (index::PLATFORM_INFO, 0, false),
    // No variable ranges, no fixed ranges, no write-combining type.
    (index::MTRRCAP, 0, false),
    // Machine checks with no banks and no MCG_CTL.
    (index::MCG_CAP, 0, false),
];

/// The guest's access faults: inject #GP(0) and do not advance RIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpFault;

/// Why an MSR access did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrError {
    /// The guest's fault: #GP(0).
    Gp,
    /// The kernel refused a `VcpuState` access the VMM relies on (a VMM bug): stop the VM.
    State,
}

impl From<GpFault> for MsrError {
    fn from(_: GpFault) -> MsrError {
        MsrError::Gp
    }
}

/// What a successful WRMSR needs beyond storing the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrWrite {
    /// Nothing else: resume after the instruction.
    Stored,
    /// EFER changed: the reply must carry `SET_EFER` with this value.
    Efer(u64),
}

/// The vCPU's real state (`VcpuState`) and the host's TSC, as the MSR model needs them.
pub trait VcpuAccess {
    /// Reads a field; `None` if the kernel refused.
    fn get(&mut self, f: u64) -> Option<u64>;
    /// Writes a field; `false` if the kernel refused (nothing changed).
    fn set(&mut self, f: u64, v: u64) -> bool;
    /// The host's TSC now.
    fn host_tsc(&mut self) -> u64;
}

/// The `VcpuState` field that holds guest MSR `msr`, if the guest's state holds it.
pub fn vcpu_field(msr: u32) -> Option<u64> {
    use index::*;
    Some(match msr {
        SYSENTER_CS => field::GUEST_SYSENTER_CS,
        SYSENTER_ESP => field::GUEST_SYSENTER_ESP,
        SYSENTER_EIP => field::GUEST_SYSENTER_EIP,
        PAT => field::GUEST_IA32_PAT,
        FS_BASE => field::GUEST_FS_BASE,
        GS_BASE => field::GUEST_GS_BASE,
        _ => return field::switched_msr_field(msr),
    })
}

/// The MSRs of one vCPU that live in the VMM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsrModel {
    pub efer: u64,
    /// IA32_TSC_ADJUST as the guest reads it.
    pub tsc_adjust: u64,
    pub misc_enable: u64,
    pub mtrr_def_type: u64,
}

impl Default for MsrModel {
    fn default() -> Self {
        Self::new()
    }
}

fn check(ok: bool) -> Result<(), GpFault> {
    if ok {
        Ok(())
    } else {
        Err(GpFault)
    }
}

fn get(cpu: &mut impl VcpuAccess, f: u64) -> Result<u64, MsrError> {
    cpu.get(f).ok_or(MsrError::State)
}

fn set(cpu: &mut impl VcpuAccess, f: u64, v: u64) -> Result<(), MsrError> {
    if cpu.set(f, v) {
        Ok(())
    } else {
        Err(MsrError::State)
    }
}

impl MsrModel {
    pub const fn new() -> MsrModel {
        MsrModel {
            efer: 0,
            tsc_adjust: 0,
            misc_enable: MISC_ENABLE_DEFAULT,
            mtrr_def_type: 0,
        }
    }

    /// RDMSR.
    pub fn read(&self, msr: u32, cpu: &mut impl VcpuAccess) -> Result<u64, MsrError> {
        use index::*;
        if let Some(f) = vcpu_field(msr) {
            return get(cpu, f);
        }
        if let Some(&(_, v, _)) = FIXED.iter().find(|e| e.0 == msr) {
            return Ok(v);
        }
        Ok(match msr {
            TSC => {
                let offset = get(cpu, field::TSC_OFFSET)?;
                cpu.host_tsc().wrapping_add(offset)
            }
            TSC_ADJUST => self.tsc_adjust,
            MCG_STATUS => 0,
            MISC_ENABLE => self.misc_enable,
            MTRR_DEF_TYPE => self.mtrr_def_type,
            EFER => self.efer,
            _ => return Err(MsrError::Gp),
        })
    }

    /// WRMSR. `cr0_pg` is the guest's CR0.PG when known (changing EFER.LME while paging is
    /// on is #GP).
    pub fn write(
        &mut self,
        msr: u32,
        v: u64,
        cpu: &mut impl VcpuAccess,
        cr0_pg: Option<bool>,
    ) -> Result<MsrWrite, MsrError> {
        use index::*;
        if let Some(f) = vcpu_field(msr) {
            // SYSENTER_CS is 32 bits wide: the upper half is ignored.
            let v = if msr == SYSENTER_CS {
                v & 0xffff_ffff
            } else {
                v
            };
            check(field::msr_value_ok(f, v))?;
            set(cpu, f, v)?;
            return Ok(MsrWrite::Stored);
        }
        if let Some(&(_, _, ignored)) = FIXED.iter().find(|e| e.0 == msr) {
            check(ignored)?;
            return Ok(MsrWrite::Stored);
        }
        match msr {
            TSC => {
                let old = get(cpu, field::TSC_OFFSET)?;
                let new = v.wrapping_sub(cpu.host_tsc());
                set(cpu, field::TSC_OFFSET, new)?;
                self.tsc_adjust = self.tsc_adjust.wrapping_add(new.wrapping_sub(old));
            }
            TSC_ADJUST => {
                let old = get(cpu, field::TSC_OFFSET)?;
                let delta = v.wrapping_sub(self.tsc_adjust);
                set(cpu, field::TSC_OFFSET, old.wrapping_add(delta))?;
                self.tsc_adjust = v;
            }
            // Only 0 may be written (no machine check in progress).
            MCG_STATUS => check(v == 0)?,
            MISC_ENABLE => {
                check((v ^ self.misc_enable) & MISC_ENABLE_READ_ONLY == 0)?;
                self.misc_enable = v;
            }
            MTRR_DEF_TYPE => {
                check(v & !0xcff == 0 && matches!(v & 0xff, 0 | 1 | 4 | 5 | 6))?;
                self.mtrr_def_type = v
            }
            EFER => {
                check(v & !efer::VALID == 0)?;
                // LMA is set by the processor, not by WRMSR: keep the current value.
                let new = (v & !efer::LMA) | (self.efer & efer::LMA);
                if cr0_pg == Some(true) {
                    check((new ^ self.efer) & efer::LME == 0)?;
                }
                self.efer = new;
                return Ok(MsrWrite::Efer(new));
            }
            _ => return Err(MsrError::Gp),
        }
        Ok(MsrWrite::Stored)
    }
}

#[cfg(test)]
mod tests;
