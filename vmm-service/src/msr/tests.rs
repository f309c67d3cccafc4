//! The MSR model against a vCPU that behaves like the kernel's `VcpuState`.

use super::index::*;
use super::*;
use std::collections::BTreeMap;

/// A vCPU's fields, refusing what the kernel refuses; the host TSC is `tsc`.
struct Cpu {
    fields: BTreeMap<u64, u64>,
    tsc: u64,
}

impl Cpu {
    fn new() -> Cpu {
        Cpu {
            fields: BTreeMap::new(),
            tsc: 1_000_000,
        }
    }
}

impl VcpuAccess for Cpu {
    fn get(&mut self, f: u64) -> Option<u64> {
        (field::access(f) != field::Access::None).then(|| self.fields.get(&f).copied().unwrap_or(0))
    }
    fn set(&mut self, f: u64, v: u64) -> bool {
        let ok = field::access(f) == field::Access::ReadWrite && field::msr_value_ok(f, v);
        if ok {
            self.fields.insert(f, v);
        }
        ok
    }
    fn host_tsc(&mut self) -> u64 {
        self.tsc
    }
}

#[test]
fn guest_state_msrs_reach_the_vcpu() {
    let mut m = MsrModel::new();
    let mut cpu = Cpu::new();
    for (msr, v, f) in [
        (SYSENTER_CS, 0x10, field::GUEST_SYSENTER_CS),
        (
            SYSENTER_ESP,
            0xffff_8000_0000_1000,
            field::GUEST_SYSENTER_ESP,
        ),
        (SYSENTER_EIP, 0x40_0000, field::GUEST_SYSENTER_EIP),
        (STAR, 0x0023_0010_0000_0000, field::GUEST_STAR),
        (LSTAR, 0xffff_ffff_8100_0000, field::GUEST_LSTAR),
        (CSTAR, 0x1234, field::GUEST_CSTAR),
        (SFMASK, 0x4_7700, field::GUEST_SFMASK),
        (FS_BASE, 0x7fff_0000_0000, field::GUEST_FS_BASE),
        (GS_BASE, 0x20_1000, field::GUEST_GS_BASE),
        (KERNEL_GS_BASE, 0x20_2000, field::GUEST_KERNEL_GS_BASE),
        (TSC_AUX, 7, field::GUEST_TSC_AUX),
        (PAT, 0x0007_0406_0007_0106, field::GUEST_IA32_PAT),
    ] {
        assert_eq!(
            m.write(msr, v, &mut cpu, None),
            Ok(MsrWrite::Stored),
            "{msr:#x}"
        );
        assert_eq!(cpu.fields.get(&f), Some(&v), "{msr:#x} reached its field");
        assert_eq!(m.read(msr, &mut cpu), Ok(v), "{msr:#x}");
        // A change the guest makes by itself (SWAPGS, a segment load) is what RDMSR reads.
        cpu.fields.insert(f, v ^ 0x10);
        assert_eq!(m.read(msr, &mut cpu), Ok(v ^ 0x10), "{msr:#x}");
    }
    // SYSENTER_CS ignores its upper half.
    assert_eq!(
        m.write(SYSENTER_CS, 0x1_0000_0008, &mut cpu, None),
        Ok(MsrWrite::Stored)
    );
    assert_eq!(m.read(SYSENTER_CS, &mut cpu), Ok(8));
}

#[test]
fn hardware_checks_are_gp_and_change_nothing() {
    let mut m = MsrModel::new();
    let mut cpu = Cpu::new();
    let bad = [
        (PAT, 0x0002_0000_0000_0000),
        (PAT, 0x08),
        (LSTAR, 0x0000_8000_0000_0000),
        (CSTAR, 0x0000_8000_0000_0000),
        (FS_BASE, 0x0001_0000_0000_0000),
        (GS_BASE, 0x8000_0000_0000_0000),
        (KERNEL_GS_BASE, 0x0000_8000_0000_0000),
        (SYSENTER_EIP, 0x00f0_0000_0000_0000),
        (SYSENTER_ESP, 0x00f0_0000_0000_0000),
        (SFMASK, 1 << 32),
        (TSC_AUX, 1 << 32),
        (MTRR_DEF_TYPE, 2),
        (MTRR_DEF_TYPE, 1 << 12),
        (MCG_STATUS, 1),
        (MISC_ENABLE, 1),
        (EFER, 1 << 1),
    ];
    for (msr, v) in bad {
        assert_eq!(
            m.write(msr, v, &mut cpu, None),
            Err(MsrError::Gp),
            "{msr:#x}"
        );
    }
    assert!(cpu.fields.is_empty());
    assert_eq!(m, MsrModel::new());
}

#[test]
fn fixed_values_and_unknowns() {
    let mut m = MsrModel::new();
    let mut cpu = Cpu::new();
    assert_eq!(m.read(MTRRCAP, &mut cpu), Ok(0));
    assert_eq!(m.read(MCG_CAP, &mut cpu), Ok(0));
    assert_eq!(m.read(MCG_STATUS, &mut cpu), Ok(0));
    assert_eq!(m.read(FEATURE_CONTROL, &mut cpu), Ok(1));
    assert_eq!(m.read(PLATFORM_INFO, &mut cpu), Ok(0));
    assert_eq!(m.read(MISC_ENABLE, &mut cpu), Ok(0x1801));
    assert_eq!(m.read(PAT, &mut cpu), Ok(0)); // the fake vCPU's; the kernel's is the reset PAT
                                              // The local APIC's MSRs are not this model's (the VM model asks the APIC first).
    for msr in [
        APIC_BASE,
        TSC_DEADLINE,
        X2APIC_ID,
        PERF_CAPABILITIES,
        0xc1,
        0x186,
        0x48,
    ] {
        assert_eq!(m.read(msr, &mut cpu), Err(MsrError::Gp), "{msr:#x}");
        assert_eq!(
            m.write(msr, 0, &mut cpu, None),
            Err(MsrError::Gp),
            "{msr:#x}"
        );
    }
    for msr in [
        MTRRCAP,
        PLATFORM_ID,
        FEATURE_CONTROL,
        MCG_CAP,
        PLATFORM_INFO,
    ] {
        assert_eq!(
            m.write(msr, 0, &mut cpu, None),
            Err(MsrError::Gp),
            "{msr:#x}"
        );
    }
    // Ignored writes.
    assert_eq!(
        m.write(BIOS_SIGN_ID, 0, &mut cpu, None),
        Ok(MsrWrite::Stored)
    );
    assert_eq!(m.write(MCG_STATUS, 0, &mut cpu, None), Ok(MsrWrite::Stored));
    assert_eq!(
        m.write(MISC_ENABLE, 0x1800, &mut cpu, None),
        Ok(MsrWrite::Stored)
    );
    assert_eq!(m.read(MISC_ENABLE, &mut cpu), Ok(0x1800));
}

#[test]
fn efer_rules() {
    let mut m = MsrModel::new();
    let mut cpu = Cpu::new();
    assert_eq!(m.write(EFER, 1 << 1, &mut cpu, None), Err(MsrError::Gp));
    assert_eq!(
        m.write(
            EFER,
            efer::LME | efer::NXE | efer::LMA,
            &mut cpu,
            Some(false)
        ),
        Ok(MsrWrite::Efer(efer::LME | efer::NXE))
    );
    // Clearing LME with paging on is #GP; other bits are fine.
    assert_eq!(
        m.write(EFER, efer::NXE, &mut cpu, Some(true)),
        Err(MsrError::Gp)
    );
    assert_eq!(
        m.write(EFER, efer::LME | efer::SCE, &mut cpu, Some(true)),
        Ok(MsrWrite::Efer(efer::LME | efer::SCE))
    );
    assert_eq!(m.read(EFER, &mut cpu), Ok(efer::LME | efer::SCE));
}

#[test]
fn tsc_writes_move_the_offset_and_tsc_adjust_follows() {
    let mut m = MsrModel::new();
    let mut cpu = Cpu::new();
    assert_eq!(m.read(TSC, &mut cpu), Ok(1_000_000));
    // Write the TSC to 0 at host 1,000,000: offset -1,000,000; TSC_ADJUST moves by as much.
    m.write(TSC, 0, &mut cpu, None).unwrap();
    assert_eq!(cpu.fields[&field::TSC_OFFSET], 1_000_000u64.wrapping_neg());
    assert_eq!(
        m.read(TSC_ADJUST, &mut cpu),
        Ok(1_000_000u64.wrapping_neg())
    );
    cpu.tsc = 1_000_500;
    assert_eq!(m.read(TSC, &mut cpu), Ok(500));
    // TSC_ADJUST back to 0 moves the TSC forward by 1,000,000.
    m.write(TSC_ADJUST, 0, &mut cpu, None).unwrap();
    assert_eq!(cpu.fields[&field::TSC_OFFSET], 0);
    assert_eq!(m.read(TSC, &mut cpu), Ok(1_000_500));
    // TSC_ADJUST += 4096: the TSC moves by 4096 too.
    m.write(TSC_ADJUST, 4096, &mut cpu, None).unwrap();
    assert_eq!(m.read(TSC, &mut cpu), Ok(1_004_596));
    m.write(TSC, u64::MAX, &mut cpu, None).unwrap();
    cpu.tsc += 2;
    assert_eq!(m.read(TSC, &mut cpu), Ok(1));
}

/// A kernel that refuses state access: the VMM stops instead of pretending.
#[test]
fn refused_state_is_not_a_guest_fault() {
    struct Refusing;
    impl VcpuAccess for Refusing {
        fn get(&mut self, _: u64) -> Option<u64> {
            None
        }
        fn set(&mut self, _: u64, _: u64) -> bool {
            false
        }
        fn host_tsc(&mut self) -> u64 {
            0
        }
    }
    let mut m = MsrModel::new();
    assert_eq!(m.read(LSTAR, &mut Refusing), Err(MsrError::State));
    assert_eq!(
        m.write(GS_BASE, 0, &mut Refusing, None),
        Err(MsrError::State)
    );
    assert_eq!(m.write(TSC, 0, &mut Refusing, None), Err(MsrError::State));
    assert_eq!(m.tsc_adjust, 0);
}
