//! The CPUID policy as a table: every feature bit a guest can see is a row of [`FEATURES`]
//! that names what provides it, and every bit without a row reads as clear.
//!
//! A row is either [`Provider::Native`] (the CPU does it inside the guest and nothing about
//! it exits or needs state the VMM must keep), [`Provider::Vmm`] (the VMM implements it:
//! the MSRs the row lists are handled by [`crate::msr`]), [`Provider::Cr4`] (it mirrors a
//! bit of the guest's CR4, as OSXSAVE and OSPKE do on hardware) or [`Provider::Hidden`]
//! (the host may have it, the guest does not: the row says why). [`Provider::Native`] and
//! [`Provider::Cr4`] rows are passed only when the host has the bit; a row with
//! `ept_only` is hidden from shadow-paged VMs, whose MMU does not implement it.
//!
//! Leaves: the feature leaves (1, 7, 0x8000_0001, 0x8000_0007) are filtered through the
//! table; descriptive leaves ([`PASSED_LEAVES`]: vendor, caches, topology, XSAVE layout,
//! brand, address sizes) come from the host; Umbra's hypervisor leaves 0x4000_0000.. are its
//! own; every other leaf (thermal and power 6, the PMU's 0xA, SGX 0x12, processor trace 0x14,
//! resource director 0xF/0x10, ...) reads as zeros, since nothing behind it is provided.

use crate::cpuid::{HV_BASE, HV_MAX, SIGNATURE};

/// A CPUID output register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Eax = 0,
    Ebx = 1,
    Ecx = 2,
    Edx = 3,
}

/// What provides a feature bit to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    /// The CPU, natively inside the guest (passed when the host has it).
    Native,
    /// The VMM: set whatever the host says; `msrs` lists the MSRs [`crate::msr`] handles
    /// for it.
    Vmm,
    /// Follows this bit of the guest's CR4, when the host has the feature the OS bit is
    /// about: bit `feature` of the same register (XSAVE for OSXSAVE, PKU for OSPKE). The
    /// host's own OS bit says what the host kernel enabled, not what the guest may.
    Cr4 { cr4: u64, feature: u8 },
    /// Never shown.
    Hidden,
}

/// One feature bit.
#[derive(Clone, Copy, Debug)]
pub struct Feature {
    pub leaf: u32,
    pub reg: Reg,
    pub bit: u8,
    pub name: &'static str,
    pub provider: Provider,
    /// Hidden from shadow-paged VMs (the shadow MMU does not implement it).
    pub ept_only: bool,
    /// The MSRs the feature implies: the VMM must handle each when the bit is shown, and
    /// must refuse (#GP) each when it is hidden.
    pub msrs: &'static [u32],
    /// What provides it, or why it is hidden.
    pub why: &'static str,
}

/// Subleaf 0 of leaf 7 is the only subleaf with feature bits the table describes.
const fn f(leaf: u32, reg: Reg, bit: u8, name: &'static str, provider: Provider) -> Feature {
    Feature {
        leaf,
        reg,
        bit,
        name,
        provider,
        ept_only: false,
        msrs: &[],
        why: "",
    }
}

const fn native(leaf: u32, reg: Reg, bit: u8, name: &'static str) -> Feature {
    f(leaf, reg, bit, name, Provider::Native)
}

const fn hidden(leaf: u32, reg: Reg, bit: u8, name: &'static str, why: &'static str) -> Feature {
    let mut x = f(leaf, reg, bit, name, Provider::Hidden);
    x.why = why;
    x
}

const fn with_msrs(mut x: Feature, msrs: &'static [u32], why: &'static str) -> Feature {
    x.msrs = msrs;
    x.why = why;
    x
}

const fn ept_only(mut x: Feature) -> Feature {
    x.ept_only = true;
    x
}

use crate::msr::index as m;
use abi::cpu::cr4;
use Reg::*;

/// Leaf 1 ECX: hypervisor present (set by the VMM, not a table row).
pub use crate::cpuid::ECX_HYPERVISOR;

const NO_PMU: &str = "no performance-monitoring MSRs";

/// Every feature bit of leaves 1, 7.0, 0x8000_0001 and 0x8000_0007 a guest may see, and the
/// notable ones it may not. Bits of those leaves that have no row are clear.
pub const FEATURES: &[Feature] = &[
    // Leaf 1 EDX.
    native(1, Edx, 0, "fpu"),
    native(1, Edx, 1, "vme"),
    native(1, Edx, 2, "de"),
    native(1, Edx, 3, "pse"),
    with_msrs(
        native(1, Edx, 4, "tsc"),
        &[m::TSC],
        "RDTSC runs natively with the VMCS TSC offset; the TSC MSR moves the offset",
    ),
    native(1, Edx, 5, "msr"),
    native(1, Edx, 6, "pae"),
    with_msrs(
        f(1, Edx, 7, "mce", Provider::Vmm),
        &[m::MCG_CAP, m::MCG_STATUS],
        "machine-check MSRs with no banks",
    ),
    native(1, Edx, 8, "cx8"),
    with_msrs(
        f(1, Edx, 9, "apic", Provider::Vmm),
        &[m::APIC_BASE],
        "the local APIC model; the bit follows IA32_APIC_BASE's global enable, as on hardware",
    ),
    with_msrs(
        native(1, Edx, 11, "sep"),
        &[m::SYSENTER_CS, m::SYSENTER_ESP, m::SYSENTER_EIP],
        "SYSENTER/SYSEXIT run natively on the VMCS's guest SYSENTER fields",
    ),
    with_msrs(
        f(1, Edx, 12, "mtrr", Provider::Vmm),
        &[m::MTRRCAP, m::MTRR_DEF_TYPE],
        "MTRRcap (no ranges) and the default type",
    ),
    native(1, Edx, 13, "pge"),
    with_msrs(
        f(1, Edx, 14, "mca", Provider::Vmm),
        &[m::MCG_CAP, m::MCG_STATUS],
        "MCG_CAP with no banks",
    ),
    native(1, Edx, 15, "cmov"),
    with_msrs(
        native(1, Edx, 16, "pat"),
        &[m::PAT],
        "the VMCS loads and saves the guest's PAT",
    ),
    native(1, Edx, 17, "pse36"),
    hidden(1, Edx, 18, "psn", "no processor serial number"),
    native(1, Edx, 19, "clflush"),
    hidden(1, Edx, 21, "ds", "no debug store MSRs"),
    hidden(1, Edx, 22, "acpi", "no thermal-control MSRs"),
    native(1, Edx, 23, "mmx"),
    native(1, Edx, 24, "fxsr"),
    native(1, Edx, 25, "sse"),
    native(1, Edx, 26, "sse2"),
    native(1, Edx, 27, "ss"),
    hidden(1, Edx, 28, "htt", "set by `answer` with more than one vCPU (EBX[23:16] = the count)"),
    hidden(1, Edx, 29, "tm", "no thermal monitor"),
    hidden(1, Edx, 31, "pbe", "no thermal monitor"),
    // Leaf 1 ECX.
    native(1, Ecx, 0, "sse3"),
    native(1, Ecx, 1, "pclmulqdq"),
    hidden(1, Ecx, 2, "dtes64", "no debug store MSRs"),
    hidden(1, Ecx, 3, "monitor", "MONITOR/MWAIT do not exit and would idle the host's CPU"),
    hidden(1, Ecx, 4, "ds-cpl", "no debug store MSRs"),
    hidden(1, Ecx, 5, "vmx", "no nested virtualisation"),
    hidden(1, Ecx, 6, "smx", "no GETSEC"),
    hidden(1, Ecx, 7, "est", "no P-state MSRs"),
    hidden(1, Ecx, 8, "tm2", "no thermal monitor"),
    native(1, Ecx, 9, "ssse3"),
    hidden(1, Ecx, 11, "sdbg", "no silicon-debug MSR"),
    native(1, Ecx, 12, "fma"),
    native(1, Ecx, 13, "cx16"),
    hidden(1, Ecx, 14, "xtpr", "no xTPR MSR"),
    with_msrs(
        hidden(1, Ecx, 15, "pdcm", NO_PMU),
        &[m::PERF_CAPABILITIES],
        NO_PMU,
    ),
    ept_only(native(1, Ecx, 17, "pcid")),
    hidden(1, Ecx, 18, "dca", "no direct cache access"),
    native(1, Ecx, 19, "sse4.1"),
    native(1, Ecx, 20, "sse4.2"),
    with_msrs(
        f(1, Ecx, 21, "x2apic", Provider::Vmm),
        &[m::X2APIC_ID],
        "the x2APIC MSRs (0x800..0x8ff) of the local APIC model",
    ),
    native(1, Ecx, 22, "movbe"),
    native(1, Ecx, 23, "popcnt"),
    with_msrs(
        f(1, Ecx, 24, "tsc-deadline", Provider::Vmm),
        &[m::TSC_DEADLINE],
        "the local APIC model's timer in TSC-deadline mode",
    ),
    native(1, Ecx, 25, "aes"),
    native(1, Ecx, 26, "xsave"),
    f(
        1,
        Ecx,
        27,
        "osxsave",
        Provider::Cr4 {
            cr4: cr4::OSXSAVE,
            feature: 26,
        },
    ),
    native(1, Ecx, 28, "avx"),
    native(1, Ecx, 29, "f16c"),
    native(1, Ecx, 30, "rdrand"),
    // Leaf 7.0 EBX.
    native(7, Ebx, 0, "fsgsbase"),
    with_msrs(
        f(7, Ebx, 1, "tsc_adjust", Provider::Vmm),
        &[m::TSC_ADJUST],
        "IA32_TSC_ADJUST moves the VMCS TSC offset",
    ),
    hidden(7, Ebx, 2, "sgx", "no SGX"),
    native(7, Ebx, 3, "bmi1"),
    native(7, Ebx, 4, "hle"),
    native(7, Ebx, 5, "avx2"),
    native(7, Ebx, 6, "fdp_excptn_only"),
    native(7, Ebx, 7, "smep"),
    native(7, Ebx, 8, "bmi2"),
    native(7, Ebx, 9, "erms"),
    // Shown where the vCPU's "enable INVPCID" control is set (`VmModel::guest_cpuid` masks
    // it by `GUEST_FEATURES`); never on shadow paging (the MMU service does not emulate it).
    ept_only(native(7, Ebx, 10, "invpcid")),
    native(7, Ebx, 11, "rtm"),
    hidden(7, Ebx, 12, "pqm", "no resource-monitoring MSRs"),
    native(7, Ebx, 13, "zero_fcs_fds"),
    hidden(7, Ebx, 14, "mpx", "no BNDCFGS"),
    hidden(7, Ebx, 15, "pqe", "no resource-allocation MSRs"),
    native(7, Ebx, 16, "avx512f"),
    native(7, Ebx, 17, "avx512dq"),
    native(7, Ebx, 18, "rdseed"),
    native(7, Ebx, 19, "adx"),
    native(7, Ebx, 20, "smap"),
    native(7, Ebx, 21, "avx512ifma"),
    native(7, Ebx, 23, "clflushopt"),
    native(7, Ebx, 24, "clwb"),
    hidden(7, Ebx, 25, "intel_pt", "no processor-trace MSRs"),
    native(7, Ebx, 26, "avx512pf"),
    native(7, Ebx, 27, "avx512er"),
    native(7, Ebx, 28, "avx512cd"),
    native(7, Ebx, 29, "sha"),
    native(7, Ebx, 30, "avx512bw"),
    native(7, Ebx, 31, "avx512vl"),
    // Leaf 7.0 ECX.
    native(7, Ecx, 1, "avx512vbmi"),
    native(7, Ecx, 2, "umip"),
    ept_only(native(7, Ecx, 3, "pku")),
    ept_only(f(
        7,
        Ecx,
        4,
        "ospke",
        Provider::Cr4 {
            cr4: cr4::PKE,
            feature: 3,
        },
    )),
    hidden(7, Ecx, 5, "waitpkg", "UMWAIT/TPAUSE are not enabled"),
    native(7, Ecx, 6, "avx512_vbmi2"),
    hidden(7, Ecx, 7, "cet_ss", "no CET MSRs"),
    native(7, Ecx, 8, "gfni"),
    native(7, Ecx, 9, "vaes"),
    native(7, Ecx, 10, "vpclmulqdq"),
    native(7, Ecx, 11, "avx512_vnni"),
    native(7, Ecx, 12, "avx512_bitalg"),
    native(7, Ecx, 14, "avx512_vpopcntdq"),
    ept_only(native(7, Ecx, 16, "la57")),
    with_msrs(
        native(7, Ecx, 22, "rdpid"),
        &[m::TSC_AUX],
        "reads IA32_TSC_AUX, which the kernel switches on entry and exit",
    ),
    // Leaf 7.0 EDX.
    native(7, Edx, 2, "avx512_4vnniw"),
    native(7, Edx, 3, "avx512_4fmaps"),
    native(7, Edx, 4, "fsrm"),
    native(7, Edx, 10, "md_clear"),
    native(7, Edx, 14, "serialize"),
    hidden(7, Edx, 26, "spec_ctrl", "no IA32_SPEC_CTRL"),
    hidden(7, Edx, 29, "arch_capabilities", "no IA32_ARCH_CAPABILITIES"),
    // Leaf 0x8000_0001 ECX.
    native(0x8000_0001, Ecx, 0, "lahf_lm"),
    hidden(0x8000_0001, Ecx, 2, "svm", "no nested virtualisation"),
    native(0x8000_0001, Ecx, 5, "abm"),
    native(0x8000_0001, Ecx, 6, "sse4a"),
    native(0x8000_0001, Ecx, 7, "misalignsse"),
    native(0x8000_0001, Ecx, 8, "3dnowprefetch"),
    // Leaf 0x8000_0001 EDX.
    with_msrs(
        native(0x8000_0001, Edx, 11, "syscall"),
        &[m::STAR, m::LSTAR, m::CSTAR, m::SFMASK],
        "SYSCALL/SYSRET run natively on the guest's STAR/LSTAR/CSTAR/SFMASK, switched on entry and exit",
    ),
    native(0x8000_0001, Edx, 20, "nx"),
    native(0x8000_0001, Edx, 26, "pdpe1gb"),
    // Shown where the vCPU's "enable RDTSCP" control is set (`VmModel::guest_cpuid` masks it
    // by `GUEST_FEATURES`); TSC_AUX is switched per guest.
    with_msrs(
        native(0x8000_0001, Edx, 27, "rdtscp"),
        &[m::TSC_AUX],
        "TSC_AUX switched by the kernel's MSR areas",
    ),
    with_msrs(
        native(0x8000_0001, Edx, 29, "lm"),
        &[m::EFER, m::FS_BASE, m::GS_BASE, m::KERNEL_GS_BASE],
        "long mode: EFER in the VMCS, FS/GS base in the VMCS, KERNEL_GS_BASE switched",
    ),
    // Leaf 0x8000_0007 EDX.
    native(0x8000_0007, Edx, 8, "invariant_tsc"),
];

/// Leaves passed from the host as they are (they describe, they do not enable).
pub const PASSED_LEAVES: &[u32] = &[
    0,
    2,
    4,
    0xd,
    0x16,
    0x8000_0000,
    0x8000_0002,
    0x8000_0003,
    0x8000_0004,
    0x8000_0005,
    0x8000_0006,
    0x8000_0008,
];

/// Leaf 0xD subleaf 1 EAX, the XSAVE variants, is a feature register inside a passed leaf:
/// XSAVEOPT (bit 0) and XGETBV with ECX = 1 (bit 2) run natively and are shown; XSAVEC (bit 1)
/// and XSAVES/XRSTORS with IA32_XSS (bit 3) are hidden: the VMM keeps no IA32_XSS, and the
/// compacted-format size this leaf's EBX reports is the standard format's on Bochs, which
/// Linux rejects ("XSAVE consistency problem").
pub const XSAVE_VARIANTS_SHOWN: u32 = (1 << 0) | (1 << 2);

/// Leaves with feature bits filtered through [`FEATURES`].
pub const FEATURE_LEAVES: &[u32] = &[1, 7, 0x8000_0001, 0x8000_0007];

/// What of the guest the answer depends on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestView {
    /// A shadow-paged VM.
    pub shadow: bool,
    /// CR4 as the guest reads it.
    pub cr4: u64,
    /// The local APIC is globally enabled (IA32_APIC_BASE bit 11): CPUID.1:EDX.APIC.
    pub apic_enabled: bool,
    /// The vCPU's initial APIC ID (CPUID.1:EBX[31:24], the x2APIC ID of leaves 0xB/0x1F).
    pub apic_id: u8,
    /// The VM's vCPUs (0 counts as 1): one package of that many cores, one thread each.
    pub vcpus: u8,
}

/// The topology leaves (0xB, and 0x1F with the same levels): the VM's vCPUs as the cores of
/// one package, one thread per core.
const TOPOLOGY_LEAVES: [u32; 2] = [0xb, 0x1f];
/// Level types (ECX[15:8]) of the topology leaves.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Leaf 0xB/0x1F, `subleaf`: level 0 the thread (1 per core), level 1 the core (`vcpus`
/// per package, the x2APIC ID shifted by the bits that count them), then invalid levels.
fn topology(subleaf: u32, g: &GuestView) -> [u32; 4] {
    let n = u32::from(g.vcpus.max(1));
    let id = u32::from(g.apic_id);
    let core_bits = u32::BITS - (n - 1).leading_zeros(); // ceil(log2 n)
    match subleaf {
        0 => [0, 1, (LEVEL_SMT << 8), id],
        1 => [core_bits, n, 1 | (LEVEL_CORE << 8), id],
        s => [0, 0, s & 0xff, id],
    }
}

/// Whether a row's bit is shown to this guest, given the host's value of its register.
pub fn shown(row: &Feature, host_reg: u32, g: &GuestView) -> bool {
    if row.ept_only && g.shadow {
        return false;
    }
    match row.provider {
        Provider::Native => host_reg & (1 << row.bit) != 0,
        Provider::Vmm => true,
        Provider::Cr4 { cr4, feature } => host_reg & (1 << feature) != 0 && g.cr4 & cr4 != 0,
        Provider::Hidden => false,
    }
}

/// The guest's CPUID result `[eax, ebx, ecx, edx]` for `leaf`/`subleaf`; `host` gives the
/// host's values.
pub fn answer(
    leaf: u32,
    subleaf: u32,
    g: &GuestView,
    host: impl FnOnce(u32, u32) -> [u32; 4],
) -> [u32; 4] {
    if leaf == HV_BASE {
        let w = |i: usize| {
            u32::from_le_bytes([
                SIGNATURE[i],
                SIGNATURE[i + 1],
                SIGNATURE[i + 2],
                SIGNATURE[i + 3],
            ])
        };
        return [HV_MAX, w(0), w(4), w(8)];
    }
    if (leaf, subleaf) == (0xd, 1) {
        let [eax, ebx, ecx, edx] = host(leaf, subleaf);
        return [eax & XSAVE_VARIANTS_SHOWN, ebx, ecx, edx];
    }
    if PASSED_LEAVES.contains(&leaf) {
        return host(leaf, subleaf);
    }
    if TOPOLOGY_LEAVES.contains(&leaf) {
        return topology(subleaf, g);
    }
    if !FEATURE_LEAVES.contains(&leaf) || (leaf == 7 && subleaf != 0) {
        return [0; 4];
    }
    let h = host(leaf, subleaf);
    let mut r = [0u32; 4];
    match leaf {
        // Signature, brand index and CLFLUSH size as the host's; the vCPU's own initial
        // APIC ID (the logical processor count and HTT below).
        1 => {
            r[0] = h[0];
            r[1] = (h[1] & 0x0000_ffff) | u32::from(g.apic_id) << 24;
        }
        // Only subleaf 0 is described.
        7 => r[0] = 0,
        0x8000_0001 => r[0] = h[0],
        _ => {}
    }
    for row in FEATURES.iter().filter(|row| row.leaf == leaf) {
        if shown(row, h[row.reg as usize], g) {
            r[row.reg as usize] |= 1 << row.bit;
        }
    }
    if leaf == 1 {
        r[2] |= ECX_HYPERVISOR;
        if g.vcpus > 1 {
            r[1] |= u32::from(g.vcpus) << 16;
            r[3] |= 1 << 28;
        }
        if !g.apic_enabled {
            r[3] &= !(1 << 9);
        }
    }
    r
}

#[cfg(test)]
mod tests;
