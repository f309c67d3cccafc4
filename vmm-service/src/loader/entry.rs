//! Initial vCPU state as (VMCS field, value) pairs for [`abi::vmx::field`] writes
//! (`VcpuState`), for a multiboot entry (32-bit protected mode, flat segments, paging off)
//! and for a flat 64-bit image (long mode, identity-mapped).
//!
//! The kernel forces the bits VMX requires (CR0.NE, CR4.VMXE) when it loads these; the read
//! shadows are given the guest-visible values. The VM-entry control "IA-32e mode guest" is
//! not a writable field: the kernel must derive it from `GUEST_IA32_EFER.LMA`.

use abi::cpu::{cr0, cr4, efer, rflags};
use abi::vmx::field::*;
use abi::vmx::Gpr;

use super::flat64::STACK_TOP;
use super::multiboot::BOOTLOADER_MAGIC;

/// A VMCS field id and its value.
pub type Pair = (u64, u64);

/// Number of pairs from [`protected_mode_entry`].
pub const PROTECTED_MODE_PAIRS: usize = 47;
/// Number of pairs from [`long_mode_entry`].
pub const LONG_MODE_PAIRS: usize = 45;
/// Number of pairs from [`linux_entry`].
pub const LINUX_PAIRS: usize = 49;
/// Number of pairs from [`sipi_entry`].
pub const SIPI_PAIRS: usize = 62;

/// Real-mode access rights (G and D/B clear, 64 KiB limits): code (type 0xb) and data
/// (type 3), present, DPL 0.
pub const AR_REAL_CODE: u64 = 0x9b;
pub const AR_REAL_DATA: u64 = 0x93;

/// Access rights: 32-bit code (G, D, P, S, type 0xb: execute/read, accessed).
pub const AR_CODE32: u64 = 0xc09b;
/// 64-bit code (G, L, P, S, type 0xb).
pub const AR_CODE64: u64 = 0xa09b;
/// Data (G, D/B, P, S, type 3: read/write, accessed).
pub const AR_DATA: u64 = 0xc093;
/// Busy 32/64-bit TSS, present.
pub const AR_TSS: u64 = 0x8b;
/// Unusable segment.
pub const AR_UNUSABLE: u64 = 0x1_0000;

pub const SEL_CODE: u64 = 0x08;
pub const SEL_DATA: u64 = 0x10;

/// CR0 = PE | ET (the kernel adds NE).
pub const CR0_PROTECTED: u64 = cr0::PE | cr0::ET;
/// CR0 = PE | ET | PG.
pub const CR0_PAGED: u64 = CR0_PROTECTED | cr0::PG;
/// EFER = LME | LMA.
pub const EFER_LONG: u64 = efer::LME | efer::LMA;
/// RFLAGS with only the reserved bit 1.
pub const RFLAGS_INIT: u64 = rflags::FIXED_1;

/// Segment registers: (selector, access rights, limit, base) field ids.
const SEGMENTS: [(u64, u64, u64, u64); 8] = [
    (
        GUEST_CS_SELECTOR,
        GUEST_CS_AR,
        GUEST_CS_LIMIT,
        GUEST_CS_BASE,
    ),
    (
        GUEST_SS_SELECTOR,
        GUEST_SS_AR,
        GUEST_SS_LIMIT,
        GUEST_SS_BASE,
    ),
    (
        GUEST_DS_SELECTOR,
        GUEST_DS_AR,
        GUEST_DS_LIMIT,
        GUEST_DS_BASE,
    ),
    (
        GUEST_ES_SELECTOR,
        GUEST_ES_AR,
        GUEST_ES_LIMIT,
        GUEST_ES_BASE,
    ),
    (
        GUEST_FS_SELECTOR,
        GUEST_FS_AR,
        GUEST_FS_LIMIT,
        GUEST_FS_BASE,
    ),
    (
        GUEST_GS_SELECTOR,
        GUEST_GS_AR,
        GUEST_GS_LIMIT,
        GUEST_GS_BASE,
    ),
    (
        GUEST_TR_SELECTOR,
        GUEST_TR_AR,
        GUEST_TR_LIMIT,
        GUEST_TR_BASE,
    ),
    (
        GUEST_LDTR_SELECTOR,
        GUEST_LDTR_AR,
        GUEST_LDTR_LIMIT,
        GUEST_LDTR_BASE,
    ),
];

/// Fills `out` from `pairs` (extra pairs or slots are dropped; the sizes match by
/// construction, see the tests).
fn fill<const N: usize>(pairs: impl Iterator<Item = Pair>) -> [Pair; N] {
    let mut out = [(0, 0); N];
    for (slot, p) in out.iter_mut().zip(pairs) {
        *slot = p;
    }
    out
}

/// Flat segments (CS at selector `code`, the others at `data`), TR, LDTR, GDTR and IDTR:
/// 36 pairs.
fn segments_at(
    cs_ar: u64,
    gdtr: (u64, u64),
    (code, data): (u64, u64),
) -> impl Iterator<Item = Pair> {
    SEGMENTS
        .into_iter()
        .enumerate()
        .flat_map(move |(i, (sel, ar, limit, base))| {
            let (s, a, l) = match i {
                0 => (code, cs_ar, 0xffff_ffff),
                6 => (0, AR_TSS, 0x67),
                7 => (0, AR_UNUSABLE, 0),
                _ => (data, AR_DATA, 0xffff_ffff),
            };
            [(sel, s), (ar, a), (limit, l), (base, 0)]
        })
        .chain([
            (GUEST_GDTR_BASE, gdtr.0),
            (GUEST_GDTR_LIMIT, gdtr.1),
            (GUEST_IDTR_BASE, 0),
            (GUEST_IDTR_LIMIT, 0xffff),
        ])
}

/// [`segments_at`] the multiboot and flat-image selectors ([`SEL_CODE`], [`SEL_DATA`]).
fn segments(cs_ar: u64, gdtr: (u64, u64)) -> impl Iterator<Item = Pair> {
    segments_at(cs_ar, gdtr, (SEL_CODE, SEL_DATA))
}

/// Control registers and RIP/RSP/RFLAGS: 9 pairs.
fn control(cr0: u64, cr3: u64, cr4: u64, efer: u64, rip: u64, rsp: u64) -> [Pair; 9] {
    [
        (GUEST_CR0, cr0),
        (CR0_READ_SHADOW, cr0),
        (GUEST_CR3, cr3),
        (GUEST_CR4, cr4),
        (CR4_READ_SHADOW, cr4),
        (GUEST_IA32_EFER, efer),
        (GUEST_RFLAGS, RFLAGS_INIT),
        (GUEST_RIP, rip),
        (GUEST_RSP, rsp),
    ]
}

/// The multiboot machine state: 32-bit protected mode, paging off, flat 4 GiB CS (0x08) and
/// data segments (0x10), EAX = 0x2BADB002, EBX = `info_gpa`, RIP = `entry`. RSP is 0 (the
/// multiboot spec leaves the stack undefined); GDTR/IDTR are base 0, limit 0xffff (the OS
/// must load its own).
pub fn protected_mode_entry(entry: u32, info_gpa: u32) -> [Pair; PROTECTED_MODE_PAIRS] {
    fill(
        segments(AR_CODE32, (0, 0xffff))
            .chain(control(CR0_PROTECTED, 0, 0, 0, entry as u64, 0))
            .chain([
                (GPR_BASE, BOOTLOADER_MAGIC as u64),
                (GPR_BASE + 3, info_gpa as u64),
            ]),
    )
}

/// Long mode with paging on (`cr3`), 64-bit CS 0x08 and data 0x10 from the GDT at
/// `gdtr = (base, limit)`, RIP = `rip`, RSP = `rsp`.
pub fn long_mode_entry(rip: u64, rsp: u64, cr3: u64, gdtr: (u64, u64)) -> [Pair; LONG_MODE_PAIRS] {
    fill(segments(AR_CODE64, gdtr).chain(control(CR0_PAGED, cr3, cr4::PAE, EFER_LONG, rip, rsp)))
}

/// The Linux boot protocol's entry (`boot.rst`, "64-bit boot protocol" and "32-bit boot
/// protocol"): CS = `__BOOT_CS` (0x10), the data segments `__BOOT_DS` (0x18), flat, from the
/// GDT at `gdtr`; interrupts off; RSI = `zero_page`; RBP, RDI, RBX zero. `long`: long mode with
/// paging on (`cr3`), else protected mode with paging off. RSP is the flat images' stack top
/// (the protocol asks for none; the kernel sets its own).
pub fn linux_entry(
    long: bool,
    rip: u64,
    zero_page: u64,
    cr3: u64,
    gdtr: (u64, u64),
) -> [Pair; LINUX_PAIRS] {
    let selectors = (super::linux::BOOT_CS, super::linux::BOOT_DS);
    let (cs_ar, control) = if long {
        (
            AR_CODE64,
            control(CR0_PAGED, cr3, cr4::PAE, EFER_LONG, rip, STACK_TOP),
        )
    } else {
        (AR_CODE32, control(CR0_PROTECTED, 0, 0, 0, rip, STACK_TOP))
    };
    fill(segments_at(cs_ar, gdtr, selectors).chain(control).chain([
        (GPR_BASE + Gpr::Rsi as u64, zero_page),
        (GPR_BASE + Gpr::Rbp as u64, 0),
        (GPR_BASE + Gpr::Rdi as u64, 0),
        (GPR_BASE + Gpr::Rbx as u64, 0),
    ]))
}

/// The state of an application processor that received a SIPI with `vector` (SDM 9.4.4 and
/// table 9-1, the INIT state): real mode at CS = `vector << 8` (base `vector << 12`),
/// IP = 0; the other segments at 0 with 64 KiB limits; CR0 = ET, paging and protection
/// off; RFLAGS = 2; general-purpose registers 0; the activity state active.
pub fn sipi_entry(vector: u8) -> [Pair; SIPI_PAIRS] {
    let cs = u64::from(vector) << 8;
    let segments = SEGMENTS
        .into_iter()
        .enumerate()
        .flat_map(move |(i, (sel, ar, limit, base))| {
            let (s, a, b) = match i {
                0 => (cs, AR_REAL_CODE, cs << 4),
                6 => (0, AR_TSS, 0),
                7 => (0, AR_UNUSABLE, 0),
                _ => (0, AR_REAL_DATA, 0),
            };
            [(sel, s), (ar, a), (limit, 0xffff), (base, b)]
        });
    let gprs = (0..16u64)
        .filter(|&n| n != 4) // RSP is in `control`
        .map(|n| (GPR_BASE + n, 0));
    fill(
        segments
            .chain([
                (GUEST_GDTR_BASE, 0),
                (GUEST_GDTR_LIMIT, 0xffff),
                (GUEST_IDTR_BASE, 0),
                (GUEST_IDTR_LIMIT, 0xffff),
            ])
            .chain(control(cr0::ET, 0, 0, 0, 0, 0))
            .chain([(GUEST_ACTIVITY_STATE, 0), (GUEST_INTERRUPTIBILITY, 0)])
            .chain(gprs),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(pairs: &[Pair], f: u64) -> u64 {
        let hits: Vec<u64> = pairs.iter().filter(|p| p.0 == f).map(|p| p.1).collect();
        assert_eq!(hits.len(), 1, "field {f:#x} appears {} times", hits.len());
        hits[0]
    }

    fn all_distinct_and_writable(pairs: &[Pair]) {
        for (i, p) in pairs.iter().enumerate() {
            assert_eq!(access(p.0), Access::ReadWrite, "{:#x}", p.0);
            assert!(pairs[..i].iter().all(|q| q.0 != p.0), "{:#x} twice", p.0);
        }
    }

    #[test]
    fn multiboot_state() {
        let p = protected_mode_entry(0x10_000c, 0x8000);
        all_distinct_and_writable(&p);
        assert_eq!(get(&p, GUEST_CS_SELECTOR), 8);
        assert_eq!(get(&p, GUEST_CS_AR), 0xc09b);
        assert_eq!(get(&p, GUEST_CS_LIMIT), 0xffff_ffff);
        for (sel, ar, _, base) in &SEGMENTS[1..6] {
            assert_eq!(get(&p, *sel), 0x10);
            assert_eq!(get(&p, *ar), 0xc093);
            assert_eq!(get(&p, *base), 0);
        }
        assert_eq!(get(&p, GUEST_TR_AR), 0x8b);
        assert_eq!(get(&p, GUEST_TR_LIMIT), 0x67);
        assert_eq!(get(&p, GUEST_LDTR_AR), 0x1_0000);
        assert_eq!(get(&p, GUEST_GDTR_LIMIT), 0xffff);
        assert_eq!(get(&p, GUEST_IDTR_LIMIT), 0xffff);
        assert_eq!(get(&p, GUEST_CR0), 0x11);
        assert_eq!(get(&p, GUEST_CR4), 0);
        assert_eq!(get(&p, GUEST_IA32_EFER), 0);
        assert_eq!(get(&p, GUEST_RFLAGS), 2);
        assert_eq!(get(&p, GUEST_RIP), 0x10_000c);
        assert_eq!(get(&p, GUEST_RSP), 0);
        assert_eq!(get(&p, GPR_BASE), 0x2bad_b002);
        assert_eq!(get(&p, GPR_BASE + 3), 0x8000);
    }

    #[test]
    fn an_application_processor_starts_in_real_mode_at_its_sipi_vector() {
        let p = sipi_entry(0x08);
        all_distinct_and_writable(&p);
        assert_eq!(
            p.iter().filter(|q| q.0 != 0).count(),
            SIPI_PAIRS,
            "every slot used"
        );
        assert_eq!(get(&p, GUEST_CS_SELECTOR), 0x800);
        assert_eq!(get(&p, GUEST_CS_BASE), 0x8000);
        assert_eq!(get(&p, GUEST_CS_LIMIT), 0xffff);
        assert_eq!(get(&p, GUEST_CS_AR), 0x9b);
        assert_eq!(get(&p, GUEST_SS_AR), 0x93);
        assert_eq!(get(&p, GUEST_DS_BASE), 0);
        assert_eq!(get(&p, GUEST_RIP), 0);
        assert_eq!(get(&p, GUEST_CR0), 0x10);
        assert_eq!(get(&p, GUEST_RFLAGS), 2);
        assert_eq!(get(&p, GUEST_ACTIVITY_STATE), 0);
        assert_eq!(get(&p, GPR_BASE), 0);
        assert_eq!(get(&p, GUEST_IA32_EFER), 0);
        assert_eq!(
            sipi_entry(0xff).iter().find(|q| q.0 == GUEST_CS_BASE),
            Some(&(GUEST_CS_BASE, 0xf_f000))
        );
    }

    #[test]
    fn long_mode_state() {
        let p = long_mode_entry(0x20_0000, 0x9_f000, 0x1000, (0x4000, 23));
        all_distinct_and_writable(&p);
        assert_eq!(get(&p, GUEST_CS_AR), 0xa09b);
        assert_eq!(get(&p, GUEST_SS_AR), 0xc093);
        assert_eq!(get(&p, GUEST_CR0), 0x8000_0011);
        assert_eq!(get(&p, GUEST_CR4), 0x20);
        assert_eq!(get(&p, GUEST_IA32_EFER), 0x500);
        assert_eq!(get(&p, GUEST_CR3), 0x1000);
        assert_eq!(get(&p, GUEST_GDTR_BASE), 0x4000);
        assert_eq!(get(&p, GUEST_GDTR_LIMIT), 23);
        assert_eq!(get(&p, GUEST_RIP), 0x20_0000);
        assert_eq!(get(&p, GUEST_RSP), 0x9_f000);
    }
}
