//! The table walked: each shown bit has what it promises, each hidden one is refused.

use super::*;
use crate::msr::{MsrError, MsrModel, VcpuAccess};
use abi::vmx::field;

/// A host with every bit of every leaf set.
fn all(_: u32, _: u32) -> [u32; 4] {
    [u32::MAX; 4]
}

/// A vCPU whose every reachable field reads 0 and accepts what the kernel accepts.
struct Cpu;
impl VcpuAccess for Cpu {
    fn get(&mut self, f: u64) -> Option<u64> {
        (field::access(f) != field::Access::None).then_some(0)
    }
    fn set(&mut self, f: u64, v: u64) -> bool {
        field::access(f) == field::Access::ReadWrite && field::msr_value_ok(f, v)
    }
    fn host_tsc(&mut self) -> u64 {
        0
    }
}

fn bit(r: &[u32; 4], row: &Feature) -> bool {
    r[row.reg as usize] & (1 << row.bit) != 0
}

const EPT: GuestView = GuestView {
    shadow: false,
    cr4: u64::MAX,
    apic_enabled: true,
    apic_id: 0,
    vcpus: 1,
};

#[test]
fn rows_are_unique_and_on_feature_leaves() {
    for (i, a) in FEATURES.iter().enumerate() {
        assert!(FEATURE_LEAVES.contains(&a.leaf), "{}", a.name);
        assert!(a.bit < 32);
        for b in &FEATURES[i + 1..] {
            assert!(
                (a.leaf, a.reg, a.bit) != (b.leaf, b.reg, b.bit),
                "{} and {} name the same bit",
                a.name,
                b.name
            );
        }
        if matches!(a.provider, Provider::Hidden | Provider::Vmm) || !a.msrs.is_empty() {
            assert!(!a.why.is_empty(), "{} says why", a.name);
        }
    }
}

/// Exactly the rows' shown bits are set (plus the hypervisor bit): a host feature without a
/// row never reaches the guest.
#[test]
fn only_rows_reach_the_guest() {
    for &leaf in FEATURE_LEAVES {
        let r = answer(leaf, 0, &EPT, all);
        let mut want = [0u32; 4];
        for row in FEATURES.iter().filter(|x| x.leaf == leaf) {
            if shown(row, u32::MAX, &EPT) {
                want[row.reg as usize] |= 1 << row.bit;
            }
        }
        match leaf {
            1 => {
                want[0] = u32::MAX;
                want[1] = 0x0000_ffff; // one logical processor, APIC ID 0
                want[2] |= ECX_HYPERVISOR;
            }
            0x8000_0001 => want[0] = u32::MAX,
            _ => {}
        }
        assert_eq!(r, want, "leaf {leaf:#x}");
    }
}

/// A shown bit's MSRs are all handled; a hidden bit's MSRs are all #GP. The VM model asks
/// the local APIC first, then the MSR model.
#[test]
fn each_bit_is_tied_to_its_msrs() {
    let mut model = MsrModel::new();
    let mut irq = crate::irq::Interrupts::default();
    let clock = crate::irq::Clock {
        tsc: 0,
        tsc_hz: 0,
        ticks: 0,
    };
    // The x2APIC MSRs answer in x2APIC mode (#GP in xAPIC mode, as on hardware).
    let x2apic = 0xfee0_0000 | 1 << 8 | 1 << 10 | 1 << 11;
    assert_eq!(
        irq.wrmsr(crate::msr::index::APIC_BASE, x2apic, &clock),
        Some(Ok(()))
    );
    for row in FEATURES {
        let r = answer(row.leaf, 0, &EPT, all);
        for &msr in row.msrs {
            let read = match irq.rdmsr(msr, &clock) {
                Some(v) => v.map_err(MsrError::from),
                None => model.read(msr, &mut Cpu),
            };
            if bit(&r, row) {
                assert!(
                    read.is_ok(),
                    "{} is shown but MSR {msr:#x} is #GP",
                    row.name
                );
            } else {
                assert_eq!(read, Err(MsrError::Gp), "{} hidden, MSR {msr:#x}", row.name);
                let w = model.write(msr, 0, &mut Cpu, None);
                assert_eq!(w, Err(MsrError::Gp), "{} hidden, MSR {msr:#x}", row.name);
            }
        }
    }
}

#[test]
fn named_promises() {
    let leaf1 = answer(1, 0, &EPT, all);
    assert_eq!(leaf1[2] & (1 << 5), 0, "VMX hidden");
    assert_ne!(leaf1[2] & (1 << 21), 0, "x2APIC");
    assert_eq!(leaf1[2] & (1 << 15), 0, "no PDCM");
    assert_ne!(leaf1[2] & (1 << 24), 0, "TSC deadline");
    assert_eq!(leaf1[2] & (1 << 3), 0, "no MONITOR");
    assert_ne!(leaf1[3] & (1 << 9), 0, "local APIC");
    let disabled = GuestView {
        apic_enabled: false,
        ..EPT
    };
    assert_eq!(
        answer(1, 0, &disabled, all)[3] & (1 << 9),
        0,
        "APIC bit follows the global enable"
    );
    assert_ne!(leaf1[2] & ECX_HYPERVISOR, 0);
    assert_ne!(leaf1[3] & (1 << 11), 0, "SYSENTER");
    assert_ne!(leaf1[3] & (1 << 16), 0, "PAT");
    assert_eq!(answer(0xa, 0, &EPT, all), [0; 4], "no PMU leaf");
    assert_eq!(answer(6, 0, &EPT, all), [0; 4], "no thermal/power leaf");
    for leaf in [0x12, 0x14, 0xf, 0x10, 0x1b, 0x8000_000a] {
        assert_eq!(answer(leaf, 0, &EPT, all), [0; 4], "{leaf:#x}");
    }
    assert_eq!(answer(7, 1, &EPT, all), [0; 4]);
    let leaf7 = answer(7, 0, &EPT, all);
    assert_eq!(leaf7[0], 0, "subleaf 0 only");
    assert_ne!(leaf7[1] & (1 << 1), 0, "TSC_ADJUST");
    let ext = answer(0x8000_0001, 0, &EPT, all);
    assert_ne!(ext[3] & (1 << 11), 0, "SYSCALL");
    assert_ne!(ext[3] & (1 << 29), 0, "long mode");
    assert_eq!(answer(4, 2, &EPT, |l, s| [l, s, 5, 6]), [4, 2, 5, 6]);
    // XSAVE variants: XSAVEOPT and XGETBV(1) shown, XSAVEC and XSAVES (IA32_XSS) not; the
    // rest of leaf 0xD is the host's.
    let xsave = answer(0xd, 1, &EPT, all);
    assert_eq!(xsave[0], 0b0101);
    assert_eq!(xsave[1..], [u32::MAX; 3]);
    assert_eq!(answer(0xd, 0, &EPT, all), [u32::MAX; 4]);
    let mut cpu = Cpu;
    assert!(
        MsrModel::default().read(0xda0, &mut cpu).is_err(),
        "no IA32_XSS"
    );
}

#[test]
fn os_bits_mirror_the_guests_cr4() {
    let off = GuestView { cr4: 0, ..EPT };
    let on = GuestView {
        cr4: cr4::OSXSAVE | cr4::PKE,
        ..EPT
    };
    assert_eq!(answer(1, 0, &off, all)[2] & (1 << 27), 0);
    assert_ne!(answer(1, 0, &on, all)[2] & (1 << 27), 0);
    assert_eq!(answer(7, 0, &off, all)[2] & (1 << 4), 0);
    assert_ne!(answer(7, 0, &on, all)[2] & (1 << 4), 0);
    // Not without the host's feature; whatever the host's own OS bit says.
    let no_xsave = |l: u32, _| if l == 1 { [0; 4] } else { [u32::MAX; 4] };
    assert_eq!(answer(1, 0, &on, no_xsave)[2] & (1 << 27), 0);
    let host_os_off = |l: u32, _| if l == 1 { [0, 0, 1 << 26, 0] } else { [0; 4] };
    assert_ne!(answer(1, 0, &on, host_os_off)[2] & (1 << 27), 0);
}

#[test]
fn shadow_vms_lack_what_the_shadow_mmu_lacks() {
    let shadow = GuestView {
        shadow: true,
        ..EPT
    };
    let r = answer(7, 0, &shadow, all);
    assert_eq!(
        r[2] & ((1 << 3) | (1 << 4) | (1 << 16)),
        0,
        "PKU, OSPKE, LA57"
    );
    assert_eq!(answer(1, 0, &shadow, all)[2] & (1 << 17), 0, "PCID");
    assert_eq!(answer(1, 0, &shadow, all)[3], answer(1, 0, &EPT, all)[3]);
}

#[test]
fn hypervisor_leaves() {
    let r = answer(0x4000_0000, 0, &EPT, all);
    assert_eq!(r[0], 0x4000_0001);
    let mut sig = [0u8; 12];
    sig[0..4].copy_from_slice(&r[1].to_le_bytes());
    sig[4..8].copy_from_slice(&r[2].to_le_bytes());
    sig[8..12].copy_from_slice(&r[3].to_le_bytes());
    assert_eq!(&sig, b"UmbraUmbraUm");
    assert_eq!(answer(0x4000_0001, 0, &EPT, all), [0; 4]);
    assert_eq!(answer(0x4000_0010, 0, &EPT, all), [0; 4]);
}

#[test]
fn topology_describes_the_vms_vcpus_as_cores_of_one_package() {
    let host = |_: u32, _: u32| [0xffff_ffffu32; 4];
    let one = EPT;
    assert_eq!(answer(0xb, 0, &one, host), [0, 1, 0x100, 0]);
    assert_eq!(answer(0xb, 1, &one, host), [0, 1, 0x201, 0]);
    assert_eq!(answer(0xb, 2, &one, host), [0, 0, 2, 0], "no third level");
    let r = answer(1, 0, &one, host);
    assert_eq!((r[1] >> 16) & 0xff, 0, "one vCPU: no count");
    assert_eq!(r[3] & (1 << 28), 0, "and no HTT");
    for (n, bits) in [(2u8, 1u32), (3, 2), (4, 2), (5, 3), (8, 3)] {
        for id in 0..n {
            let g = GuestView {
                vcpus: n,
                apic_id: id,
                ..EPT
            };
            for leaf in [0xb, 0x1f] {
                assert_eq!(answer(leaf, 0, &g, host), [0, 1, 0x100, u32::from(id)]);
                assert_eq!(
                    answer(leaf, 1, &g, host),
                    [bits, u32::from(n), 0x201, u32::from(id)],
                    "{n} vCPUs"
                );
            }
            let r = answer(1, 0, &g, host);
            assert_eq!(r[1] >> 24, u32::from(id));
            assert_eq!((r[1] >> 16) & 0xff, u32::from(n));
            assert_ne!(r[3] & (1 << 28), 0, "HTT: EBX[23:16] is valid");
        }
    }
}
