//! What VMX a CPU offers, decoded from CPUID and the `IA32_VMX_*` capability MSRs (Intel SDM
//! Vol. 3D, appendix A). The kernel reads the raw values; this module only interprets them.

use core::fmt;

pub const MSR_IA32_FEATURE_CONTROL: u32 = 0x3a;
pub const MSR_IA32_VMX_BASIC: u32 = 0x480;
pub const MSR_IA32_VMX_PINBASED_CTLS: u32 = 0x481;
pub const MSR_IA32_VMX_PROCBASED_CTLS: u32 = 0x482;
pub const MSR_IA32_VMX_EXIT_CTLS: u32 = 0x483;
pub const MSR_IA32_VMX_ENTRY_CTLS: u32 = 0x484;
pub const MSR_IA32_VMX_MISC: u32 = 0x485;
pub const MSR_IA32_VMX_PROCBASED_CTLS2: u32 = 0x48b;
pub const MSR_IA32_VMX_EPT_VPID_CAP: u32 = 0x48c;
pub const MSR_IA32_VMX_TRUE_PINBASED_CTLS: u32 = 0x48d;
pub const MSR_IA32_VMX_TRUE_PROCBASED_CTLS: u32 = 0x48e;

/// The raw values, as read from the CPU. `procbased2` and `ept_vpid_cap` are `None` when the
/// CPU cannot activate secondary controls (the MSRs then do not exist).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmxMsrs {
    pub feature_control: u64,
    pub basic: u64,
    /// `IA32_VMX_TRUE_PINBASED_CTLS` when `basic` bit 55 is set, else `IA32_VMX_PINBASED_CTLS`.
    pub pinbased: u64,
    /// `IA32_VMX_TRUE_PROCBASED_CTLS` when `basic` bit 55 is set, else `IA32_VMX_PROCBASED_CTLS`.
    pub procbased: u64,
    pub misc: u64,
    pub procbased2: Option<u64>,
    pub ept_vpid_cap: Option<u64>,
}

/// Whether `IA32_VMX_BASIC` says the `TRUE_*` control MSRs exist.
pub fn has_true_controls(basic: u64) -> bool {
    basic & (1 << 55) != 0
}

/// Whether the primary processor-based controls allow activating the secondary controls.
pub fn has_secondary_controls(procbased: u64) -> bool {
    allowed1(procbased) & (1 << 31) != 0
}

/// The allowed-1 settings of a VMX control MSR (its high half).
fn allowed1(msr: u64) -> u32 {
    (msr >> 32) as u32
}

/// The VMX features Umbra cares about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmxCaps {
    pub revision: u32,
    pub true_controls: bool,
    pub ept: bool,
    pub ept_2m: bool,
    pub ept_1g: bool,
    pub ept_ad: bool,
    pub vpid: bool,
    pub unrestricted_guest: bool,
    pub preemption_timer: bool,
    /// The preemption timer counts every 2^rate TSC ticks.
    pub preemption_timer_rate: u8,
    pub vmcs_shadowing: bool,
    pub pml: bool,
    pub cr3_targets: u16,
    /// VMXON is allowed outside SMX, or `IA32_FEATURE_CONTROL` is unlocked so the kernel may
    /// allow it.
    pub vmxon_allowed: bool,
}

/// Why VMX cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// CPUID.1:ECX.VMX[bit 5] is clear (e.g. QEMU without KVM, AMD CPUs).
    NoCpuidFlag,
    /// `IA32_FEATURE_CONTROL` is locked with VMXON outside SMX disabled (firmware setting).
    DisabledByFirmware,
}

/// The result of VMX discovery; its `Display` is the boot line `vmx: ...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmxSupport {
    Available(VmxCaps),
    Unavailable(Unavailable),
}

impl VmxSupport {
    /// Decodes discovery: `cpuid_vmx` is CPUID.1:ECX bit 5; `msrs` is read only when it is set.
    pub fn decode(cpuid_vmx: bool, msrs: Option<&VmxMsrs>) -> Self {
        let Some(m) = msrs.filter(|_| cpuid_vmx) else {
            return VmxSupport::Unavailable(Unavailable::NoCpuidFlag);
        };
        let locked = m.feature_control & 1 != 0;
        let outside_smx = m.feature_control & (1 << 2) != 0;
        if locked && !outside_smx {
            return VmxSupport::Unavailable(Unavailable::DisabledByFirmware);
        }
        let secondary = if has_secondary_controls(m.procbased) {
            m.procbased2.map_or(0, allowed1)
        } else {
            0
        };
        let ept = secondary & (1 << 1) != 0;
        let ept_cap = m.ept_vpid_cap.unwrap_or(0);
        VmxSupport::Available(VmxCaps {
            revision: (m.basic & 0x7fff_ffff) as u32,
            true_controls: has_true_controls(m.basic),
            ept,
            ept_2m: ept && ept_cap & (1 << 16) != 0,
            ept_1g: ept && ept_cap & (1 << 17) != 0,
            ept_ad: ept && ept_cap & (1 << 21) != 0,
            vpid: secondary & (1 << 5) != 0,
            unrestricted_guest: secondary & (1 << 7) != 0,
            preemption_timer: allowed1(m.pinbased) & (1 << 6) != 0,
            preemption_timer_rate: (m.misc & 0x1f) as u8,
            vmcs_shadowing: secondary & (1 << 14) != 0,
            pml: secondary & (1 << 17) != 0,
            cr3_targets: ((m.misc >> 16) & 0x1ff) as u16,
            vmxon_allowed: true,
        })
    }
}

impl fmt::Display for VmxSupport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = match self {
            VmxSupport::Unavailable(Unavailable::NoCpuidFlag) => {
                return write!(f, "vmx: not available (CPUID.1:ECX.VMX is clear)")
            }
            VmxSupport::Unavailable(Unavailable::DisabledByFirmware) => {
                return write!(
                    f,
                    "vmx: not available (disabled by firmware: IA32_FEATURE_CONTROL locked \
                     without VMXON outside SMX)"
                )
            }
            VmxSupport::Available(c) => c,
        };
        write!(f, "vmx: revision {:#x}", c.revision)?;
        if c.ept {
            write!(f, ", ept")?;
            let sizes = [(c.ept_2m, "2m"), (c.ept_1g, "1g"), (c.ept_ad, "ad")];
            let mut first = true;
            for (_, name) in sizes.iter().filter(|(on, _)| *on) {
                write!(f, "{}{}", if first { " (" } else { " " }, name)?;
                first = false;
            }
            if !first {
                write!(f, ")")?;
            }
        }
        let flags = [
            (c.vpid, "vpid"),
            (c.unrestricted_guest, "unrestricted-guest"),
            (c.preemption_timer, "preemption-timer"),
            (c.vmcs_shadowing, "vmcs-shadowing"),
            (c.pml, "pml"),
            (c.true_controls, "true-controls"),
        ];
        for (_, name) in flags.iter().filter(|(on, _)| *on) {
            write!(f, ", {name}")?;
        }
        write!(f, ", cr3-targets {}", c.cr3_targets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values read from Bochs' `corei7_skylake_x` model (shared/docs/bochs-vmx.md).
    fn bochs() -> VmxMsrs {
        VmxMsrs {
            feature_control: 0x5,
            basic: 0x00d8_1000_0000_002b,
            pinbased: 0x0000_007f_0000_0016,
            procbased: 0xfff9_fffe_0401_e172,
            misc: 0x0000_0000_6004_01e0,
            procbased2: Some(0x0217_7fff_0000_0000),
            ept_vpid_cap: Some(0x0000_0f01_0633_4141),
        }
    }

    #[test]
    fn decodes_the_bochs_model() {
        let VmxSupport::Available(c) = VmxSupport::decode(true, Some(&bochs())) else {
            panic!("bochs offers vmx");
        };
        assert_eq!(c.revision, 0x2b);
        assert!(c.true_controls && c.ept && c.ept_2m && c.ept_1g && c.ept_ad);
        assert!(c.vpid && c.unrestricted_guest && c.preemption_timer);
        assert!(c.vmcs_shadowing && c.pml);
        assert_eq!(c.cr3_targets, 4);
        assert_eq!(c.preemption_timer_rate, 0);
        assert_eq!(
            std::format!("{}", VmxSupport::Available(c)),
            "vmx: revision 0x2b, ept (2m 1g ad), vpid, unrestricted-guest, preemption-timer, \
             vmcs-shadowing, pml, true-controls, cr3-targets 4"
        );
    }

    #[test]
    fn no_secondary_controls_means_no_ept() {
        let mut m = bochs();
        m.procbased &= !(1 << 63);
        let VmxSupport::Available(c) = VmxSupport::decode(true, Some(&m)) else {
            panic!("still vmx");
        };
        assert!(!c.ept && !c.vpid && !c.unrestricted_guest);
        assert!(c.preemption_timer);
    }

    #[test]
    fn unavailable_reasons() {
        assert_eq!(
            VmxSupport::decode(false, None),
            VmxSupport::Unavailable(Unavailable::NoCpuidFlag)
        );
        let mut m = bochs();
        m.feature_control = 0x1;
        let s = VmxSupport::decode(true, Some(&m));
        assert_eq!(s, VmxSupport::Unavailable(Unavailable::DisabledByFirmware));
        assert!(std::format!("{s}").starts_with("vmx: not available (disabled by firmware"));
        // Unlocked: the kernel may enable VMXON itself.
        m.feature_control = 0;
        assert!(matches!(
            VmxSupport::decode(true, Some(&m)),
            VmxSupport::Available(_)
        ));
    }
}
