//! The per-vCPU MSR model for RDMSR/WRMSR exits.
//!
//! Values live here, not in the VMCS: the kernel loads only EFER (through
//! [`abi::vmx::reply::SET_EFER`]) on VM entry. In particular it does not load the STAR /
//! LSTAR / CSTAR / SFMASK / KERNEL_GS_BASE family (nor FS/GS base, SYSENTER or PAT) into the
//! guest yet, so guests using SYSCALL (or relying on those values in hardware) are not
//! supported; the model only makes reads return what was written. A TSC write is kept as an
//! offset applied to RDMSR of the TSC only (RDTSC does not exit and sees the host's TSC).
//! Any MSR not listed in [`index`] is #GP(0).

/// MSR numbers.
pub mod index {
    pub const TSC: u32 = 0x10;
    pub const PLATFORM_ID: u32 = 0x17;
    pub const APIC_BASE: u32 = 0x1b;
    pub const BIOS_SIGN_ID: u32 = 0x8b;
    pub const MTRRCAP: u32 = 0xfe;
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const MISC_ENABLE: u32 = 0x1a0;
    pub const PAT: u32 = 0x277;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const EFER: u32 = 0xc000_0080;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SFMASK: u32 = 0xc000_0084;
    pub const FS_BASE: u32 = 0xc000_0100;
    pub const GS_BASE: u32 = 0xc000_0101;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// EFER bits.
pub mod efer {
    pub const SCE: u64 = 1 << 0;
    pub const LME: u64 = 1 << 8;
    pub const LMA: u64 = 1 << 10;
    pub const NXE: u64 = 1 << 11;
    /// Bits a guest may write.
    pub const VALID: u64 = SCE | LME | LMA | NXE;
}

/// APIC_BASE as the guest reads it: base 0xfee00000, BSP, xAPIC enabled.
pub const APIC_BASE_VALUE: u64 = 0xfee0_0900;
/// The architectural power-on PAT.
pub const PAT_DEFAULT: u64 = 0x0007_0406_0007_0406;
/// MISC_ENABLE at reset: fast strings.
pub const MISC_ENABLE_DEFAULT: u64 = 1;

/// The guest's access faults: inject #GP(0) and do not advance RIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpFault;

/// What a successful WRMSR needs beyond storing the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrWrite {
    /// Nothing else: resume after the instruction.
    Stored,
    /// EFER changed: the reply must carry `SET_EFER` with this value.
    Efer(u64),
}

/// One vCPU's MSRs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsrModel {
    pub efer: u64,
    pub pat: u64,
    pub tsc_offset: u64,
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub star: u64,
    pub lstar: u64,
    pub cstar: u64,
    pub sfmask: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub kernel_gs_base: u64,
    pub misc_enable: u64,
    pub mtrr_def_type: u64,
}

impl Default for MsrModel {
    fn default() -> Self {
        Self::new()
    }
}

fn canonical(v: u64) -> bool {
    let top = (v as i64) >> 47;
    top == 0 || top == -1
}

fn pat_valid(v: u64) -> bool {
    v.to_le_bytes()
        .iter()
        .all(|b| matches!(b, 0 | 1 | 4 | 5 | 6 | 7))
}

fn check(ok: bool) -> Result<(), GpFault> {
    if ok {
        Ok(())
    } else {
        Err(GpFault)
    }
}

impl MsrModel {
    pub const fn new() -> MsrModel {
        MsrModel {
            efer: 0,
            pat: PAT_DEFAULT,
            tsc_offset: 0,
            sysenter_cs: 0,
            sysenter_esp: 0,
            sysenter_eip: 0,
            star: 0,
            lstar: 0,
            cstar: 0,
            sfmask: 0,
            fs_base: 0,
            gs_base: 0,
            kernel_gs_base: 0,
            misc_enable: MISC_ENABLE_DEFAULT,
            mtrr_def_type: 0,
        }
    }

    /// RDMSR; `tsc` is the host TSC now.
    pub fn read(&self, msr: u32, tsc: u64) -> Result<u64, GpFault> {
        use index::*;
        Ok(match msr {
            TSC => tsc.wrapping_add(self.tsc_offset),
            PLATFORM_ID | BIOS_SIGN_ID | MTRRCAP => 0,
            APIC_BASE => APIC_BASE_VALUE,
            SYSENTER_CS => self.sysenter_cs,
            SYSENTER_ESP => self.sysenter_esp,
            SYSENTER_EIP => self.sysenter_eip,
            MISC_ENABLE => self.misc_enable,
            PAT => self.pat,
            MTRR_DEF_TYPE => self.mtrr_def_type,
            EFER => self.efer,
            STAR => self.star,
            LSTAR => self.lstar,
            CSTAR => self.cstar,
            SFMASK => self.sfmask,
            FS_BASE => self.fs_base,
            GS_BASE => self.gs_base,
            KERNEL_GS_BASE => self.kernel_gs_base,
            _ => return Err(GpFault),
        })
    }

    /// WRMSR; `tsc` is the host TSC now. `cr0_pg` is the guest's CR0.PG when known (changing
    /// EFER.LME while paging is on is #GP).
    pub fn write(
        &mut self,
        msr: u32,
        v: u64,
        tsc: u64,
        cr0_pg: Option<bool>,
    ) -> Result<MsrWrite, GpFault> {
        use index::*;
        match msr {
            TSC => self.tsc_offset = v.wrapping_sub(tsc),
            // Microcode-revision probe: writes are accepted and ignored.
            BIOS_SIGN_ID => {}
            // The APIC base is fixed; writes are accepted and ignored.
            APIC_BASE => {}
            SYSENTER_CS => self.sysenter_cs = v & 0xffff_ffff,
            SYSENTER_ESP => {
                check(canonical(v))?;
                self.sysenter_esp = v
            }
            SYSENTER_EIP => {
                check(canonical(v))?;
                self.sysenter_eip = v
            }
            MISC_ENABLE => self.misc_enable = v,
            PAT => {
                check(pat_valid(v))?;
                self.pat = v
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
            STAR => self.star = v,
            LSTAR => {
                check(canonical(v))?;
                self.lstar = v
            }
            CSTAR => {
                check(canonical(v))?;
                self.cstar = v
            }
            SFMASK => {
                check(v >> 32 == 0)?;
                self.sfmask = v
            }
            FS_BASE | GS_BASE | KERNEL_GS_BASE => {
                check(canonical(v))?;
                match msr {
                    FS_BASE => self.fs_base = v,
                    GS_BASE => self.gs_base = v,
                    _ => self.kernel_gs_base = v,
                }
            }
            _ => return Err(GpFault),
        }
        Ok(MsrWrite::Stored)
    }
}

#[cfg(test)]
mod tests {
    use super::index::*;
    use super::*;

    #[test]
    fn round_trips() {
        let mut m = MsrModel::new();
        for (msr, v) in [
            (SYSENTER_CS, 0x10),
            (SYSENTER_ESP, 0xffff_8000_0000_1000),
            (SYSENTER_EIP, 0x40_0000),
            (STAR, 0x0023_0010_0000_0000),
            (LSTAR, 0xffff_ffff_8100_0000),
            (CSTAR, 0),
            (SFMASK, 0x4_7700),
            (FS_BASE, 0x7fff_0000_0000),
            (GS_BASE, 1),
            (KERNEL_GS_BASE, 2),
            (MISC_ENABLE, 0x851),
            (PAT, 0x0007_0406_0007_0106),
            (MTRR_DEF_TYPE, 0xc06),
        ] {
            assert_eq!(m.write(msr, v, 0, None), Ok(MsrWrite::Stored), "{msr:#x}");
            assert_eq!(m.read(msr, 0), Ok(v), "{msr:#x}");
        }
    }

    #[test]
    fn fixed_values_and_unknowns() {
        let mut m = MsrModel::new();
        assert_eq!(m.read(APIC_BASE, 0), Ok(0xfee0_0900));
        assert_eq!(m.read(MTRRCAP, 0), Ok(0));
        assert_eq!(m.read(PLATFORM_ID, 0), Ok(0));
        assert_eq!(m.read(BIOS_SIGN_ID, 0), Ok(0));
        assert_eq!(m.read(PAT, 0), Ok(PAT_DEFAULT));
        assert_eq!(m.read(0x3a, 0), Err(GpFault));
        assert_eq!(m.write(0x3a, 0, 0, None), Err(GpFault));
        assert_eq!(m.write(MTRRCAP, 0, 0, None), Err(GpFault));
        assert_eq!(m.write(PLATFORM_ID, 0, 0, None), Err(GpFault));
    }

    #[test]
    fn validation() {
        let mut m = MsrModel::new();
        assert_eq!(m.write(PAT, 0x0002_0000_0000_0000, 0, None), Err(GpFault));
        assert_eq!(m.write(PAT, 0x08, 0, None), Err(GpFault));
        assert_eq!(m.write(LSTAR, 0x0000_8000_0000_0000, 0, None), Err(GpFault));
        assert_eq!(m.write(SFMASK, 1 << 32, 0, None), Err(GpFault));
        assert_eq!(m.write(MTRR_DEF_TYPE, 2, 0, None), Err(GpFault));
        assert_eq!(m.write(MTRR_DEF_TYPE, 1 << 12, 0, None), Err(GpFault));
        assert_eq!(m.read(PAT, 0), Ok(PAT_DEFAULT));
    }

    #[test]
    fn efer_rules() {
        let mut m = MsrModel::new();
        assert_eq!(m.write(EFER, 1 << 1, 0, None), Err(GpFault));
        assert_eq!(
            m.write(EFER, efer::LME | efer::NXE | efer::LMA, 0, Some(false)),
            Ok(MsrWrite::Efer(efer::LME | efer::NXE))
        );
        // Clearing LME with paging on is #GP; other bits are fine.
        assert_eq!(m.write(EFER, efer::NXE, 0, Some(true)), Err(GpFault));
        assert_eq!(
            m.write(EFER, efer::LME | efer::SCE, 0, Some(true)),
            Ok(MsrWrite::Efer(efer::LME | efer::SCE))
        );
        assert_eq!(m.read(EFER, 0), Ok(efer::LME | efer::SCE));
    }

    #[test]
    fn tsc_write_is_an_offset() {
        let mut m = MsrModel::new();
        assert_eq!(m.read(TSC, 1000), Ok(1000));
        m.write(TSC, 0, 1000, None).unwrap();
        assert_eq!(m.read(TSC, 1500), Ok(500));
        m.write(TSC, u64::MAX, 0, None).unwrap();
        assert_eq!(m.read(TSC, 2), Ok(1));
    }
}
