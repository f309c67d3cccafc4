//! Control-register access exits: MOV to/from CR0, CR3, CR4, CLTS and LMSW.
//!
//! The guest-visible CR0 and CR4 are the read shadows in the message (the kernel sets the
//! shadow to the full value on every `SET_CR0`/`SET_CR4`; it forces CR0.NE and CR4.VMXE in
//! the real registers and hides them). New values are checked as hardware would (#GP(0) is
//! injected without advancing RIP) and written back with `SET_CR0`/`SET_CR4` + `ADVANCE_RIP`.
//! Turning paging on with EFER.LME set activates long mode (EFER.LMA, sent with `SET_EFER`);
//! turning it off leaves long mode.

use abi::vmx::{reply, ExitMessage, ExitReply};

use crate::exit::CrAccessKind;
use crate::msr::efer;

pub mod cr0 {
    pub use abi::cpu::cr0::*;
    /// Bits that exist (writes to other bits of 31:0 are ignored; bits 63:32 are #GP).
    pub const DEFINED: u64 = PE | MP | EM | TS | ET | NE | WP | AM | NW | CD | PG;
}

pub mod cr4 {
    pub use abi::cpu::cr4::*;
    /// Bits a guest may set: VME..LA57 (0-12) except VMXE, FSGSBASE, PCIDE, OSXSAVE, SMEP,
    /// SMAP, PKE. Everything else (VMXE and SMXE included: VMX and SMX are hidden) is #GP.
    pub const ALLOWED: u64 = 0x1fff | FSGSBASE | PCIDE | OSXSAVE | SMEP | SMAP | PKE;
}

/// Why a CR access is not handled here (the VM stops with a report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrError {
    /// A control register other than 0, 3, 4, or an access form that cannot occur for it.
    Unsupported { cr: u8 },
}

/// The reply, and EFER when it changed (the MSR model must learn it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrOutcome {
    pub reply: ExitReply,
    pub efer: Option<u64>,
}

/// #GP(0): VM-entry interruption info (valid | hardware exception | error code | vector 13).
pub const GP_INJECT: u64 = 0x8000_0b0d;

/// A reply injecting #GP(0) without advancing RIP.
pub fn gp() -> ExitReply {
    ExitReply {
        flags: reply::INJECT,
        inject: GP_INJECT,
        ..ExitReply::default()
    }
}

fn gp_outcome() -> CrOutcome {
    CrOutcome {
        reply: gp(),
        efer: None,
    }
}

/// Handles an access to CR`cr` of kind `access`; `efer` is the guest's EFER (MSR model).
/// The message must carry GPRS and CRS (and SEGS to tell 64-bit from compatibility mode when
/// paging is turned off in long mode; without it that case is allowed).
pub fn handle(
    m: &ExitMessage,
    cr: u8,
    access: CrAccessKind,
    efer: u64,
) -> Result<CrOutcome, CrError> {
    handle_with(m, cr, access, efer, &Limits::NONE)
}

/// What the processor offers (as the guest's CPUID describes it), for the checks that depend
/// on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// CR4 bits whose feature is not offered ([`cr4_reserved`]): setting one is #GP.
    pub cr4_unoffered: u64,
    /// MAXPHYADDR: in long mode, CR3 bits from here up are reserved (#GP).
    pub maxphyaddr: u8,
}

impl Limits {
    /// Every CR4 feature, 52-bit physical addresses: only the architectural rules.
    pub const NONE: Limits = Limits {
        cr4_unoffered: 0,
        maxphyaddr: 52,
    };
}

/// [`handle`], with the checks that depend on what the processor offers ([`Limits`]): a CR4
/// bit whose feature the guest's CPUID does not offer, a CR3 above MAXPHYADDR in long mode.
pub fn handle_with(
    m: &ExitMessage,
    cr: u8,
    access: CrAccessKind,
    efer: u64,
    limits: &Limits,
) -> Result<CrOutcome, CrError> {
    let gpr = |n: u8| m.gprs[(n & 15) as usize];
    let old0 = m.cr0_shadow;
    match (cr, access) {
        (0, CrAccessKind::MovTo { gpr: r }) => Ok(set_cr0(m, gpr(r), efer)),
        (0, CrAccessKind::Clts) => Ok(set_cr0(m, old0 & !cr0::TS, efer)),
        (0, CrAccessKind::Lmsw { source_data }) => {
            // LMSW loads PE, MP, EM, TS but cannot clear PE.
            let new = (old0 & !0xf) | (source_data as u64 & 0xf) | (old0 & cr0::PE);
            Ok(set_cr0(m, new, efer))
        }
        (4, CrAccessKind::MovTo { gpr: r }) => Ok(set_cr4(m, gpr(r), efer, limits.cr4_unoffered)),
        (3, CrAccessKind::MovTo { gpr: r }) => Ok(set_cr3(m, gpr(r), efer, limits.maxphyaddr)),
        (0 | 3 | 4, CrAccessKind::MovFrom { gpr: r }) => {
            let v = match cr {
                0 => m.cr0_shadow,
                3 => m.cr3,
                _ => m.cr4_shadow,
            };
            let mut reply = ExitReply::advance();
            reply.gpr_mask = 1 << (r & 15);
            reply.gprs[(r & 15) as usize] = v;
            Ok(CrOutcome { reply, efer: None })
        }
        _ => Err(CrError::Unsupported { cr }),
    }
}

/// Whether the guest uses PAE paging (not long mode) after `reply`: then the CPU (and the
/// kernel, for an EPT guest) loads the four PDPTEs from CR3 when the reply writes CR0 or CR4.
pub fn loads_pdptes(m: &ExitMessage, reply: &ExitReply, efer: u64) -> bool {
    if reply.flags & (reply::SET_CR0 | reply::SET_CR4) == 0 {
        return false;
    }
    let cr0 = if reply.flags & reply::SET_CR0 != 0 {
        reply.cr0
    } else {
        m.cr0_shadow
    };
    let cr4 = if reply.flags & reply::SET_CR4 != 0 {
        reply.cr4
    } else {
        m.cr4_shadow
    };
    let efer = if reply.flags & reply::SET_EFER != 0 {
        reply.efer
    } else {
        efer
    };
    cr0 & cr0::PG != 0 && cr4 & cr4::PAE != 0 && efer & efer::LMA == 0
}

/// Where the PDPTEs are: CR3 bits 31:5.
pub fn pdpt_address(cr3: u64) -> u64 {
    cr3 & 0xffff_ffe0
}

/// Whether PDPTEs may be loaded (SDM vol. 3, 4.4.1): a present entry has no reserved bit
/// set (2:1, 8:5, and MAXPHYADDR and up). Loading bad ones is #GP(0) on the instruction,
/// and VM entry refuses them: the guest must get the #GP, not a failed entry.
pub fn pdptes_ok(pdptes: &[u64; 4], maxphyaddr: u8) -> bool {
    let high = u64::MAX
        .checked_shl(u32::from(maxphyaddr.min(52)))
        .unwrap_or(0);
    let reserved = 0b110 | 0b1_1110_0000 | high;
    pdptes.iter().all(|&e| e & 1 == 0 || e & reserved == 0)
}

fn set_cr0(m: &ExitMessage, requested: u64, efer_now: u64) -> CrOutcome {
    if requested >> 32 != 0 {
        return gp_outcome();
    }
    // Undefined bits of 31:0 are ignored; ET is hardwired to 1.
    let new = (requested & cr0::DEFINED) | cr0::ET;
    if new & cr0::PG != 0 && new & cr0::PE == 0 {
        return gp_outcome();
    }
    if new & cr0::NW != 0 && new & cr0::CD == 0 {
        return gp_outcome();
    }
    let old = m.cr0_shadow;
    let mut efer = efer_now;
    if old & cr0::PG == 0 && new & cr0::PG != 0 && efer & efer::LME != 0 {
        if m.cr4_shadow & cr4::PAE == 0 {
            return gp_outcome();
        }
        efer |= efer::LMA;
    }
    // Paging cannot be turned off while PCIDs are on (SDM vol. 2, MOV to CR0).
    if new & cr0::PG == 0 && m.cr4_shadow & cr4::PCIDE != 0 {
        return gp_outcome();
    }
    if old & cr0::PG != 0 && new & cr0::PG == 0 && efer & efer::LMA != 0 {
        let cs_l =
            m.mask & abi::vmx::group::SEGS != 0 && m.segments[0].access_rights & (1 << 13) != 0;
        if cs_l {
            return gp_outcome();
        }
        efer &= !efer::LMA;
    }
    let mut reply = ExitReply::advance();
    reply.flags |= reply::SET_CR0;
    reply.cr0 = new;
    let changed = (efer != efer_now).then_some(efer);
    if let Some(e) = changed {
        reply.flags |= reply::SET_EFER;
        reply.efer = e;
    }
    CrOutcome {
        reply,
        efer: changed,
    }
}

/// MOV to CR3 (SDM vol. 2): in long mode, with CR4.PCIDE bit 63 is the "no flush" hint and is
/// not stored; bits from MAXPHYADDR up are reserved (#GP(0)).
fn set_cr3(m: &ExitMessage, value: u64, efer: u64, maxphyaddr: u8) -> CrOutcome {
    let mut value = value;
    if efer & efer::LMA != 0 {
        if m.cr4_shadow & cr4::PCIDE != 0 {
            value &= !(1 << 63);
        }
        let reserved = u64::MAX
            .checked_shl(u32::from(maxphyaddr.min(52)))
            .unwrap_or(0);
        if value & reserved != 0 {
            return gp_outcome();
        }
    }
    let mut reply = ExitReply::advance();
    reply.flags |= reply::SET_CR3;
    reply.cr3 = value;
    CrOutcome { reply, efer: None }
}

fn set_cr4(m: &ExitMessage, new: u64, efer: u64, unoffered: u64) -> CrOutcome {
    if new & !cr4::ALLOWED != 0 || new & unoffered != 0 {
        return gp_outcome();
    }
    let long = efer & efer::LMA != 0;
    if long && new & cr4::PAE == 0 {
        return gp_outcome();
    }
    let old = m.cr4_shadow;
    // PCIDE: only in long mode, and set only with CR3[11:0] = 0 (SDM vol. 2, MOV to CR4).
    if new & cr4::PCIDE != 0 && !long {
        return gp_outcome();
    }
    if old & cr4::PCIDE == 0 && new & cr4::PCIDE != 0 && m.cr3 & 0xfff != 0 {
        return gp_outcome();
    }
    // LA57 cannot change in IA-32e mode.
    if long && (old ^ new) & cr4::LA57 != 0 {
        return gp_outcome();
    }
    let mut reply = ExitReply::advance();
    reply.flags |= reply::SET_CR4;
    reply.cr4 = new;
    CrOutcome { reply, efer: None }
}

/// CR4 bits whose feature the guest's CPUID (`cpuid(leaf, subleaf)`, the policy's answer)
/// does not offer: setting one is #GP (as KVM's `__cr4_reserved_bits`).
pub fn cr4_reserved(mut cpuid: impl FnMut(u32, u32) -> [u32; 4]) -> u64 {
    let max = cpuid(0, 0)[0];
    let l1 = cpuid(1, 0);
    let l7 = if max >= 7 { cpuid(7, 0) } else { [0; 4] };
    let has = |r: u32, bit: u32| r & (1 << bit) != 0;
    let (ecx1, edx1, ebx7, ecx7) = (l1[2], l1[3], l7[1], l7[2]);
    let rules: [(u64, bool); 17] = [
        (1 << 0 | 1 << 1, has(edx1, 1)), // VME, PVI
        (1 << 2, has(edx1, 4)),          // TSD: TSC
        (1 << 3, has(edx1, 2)),          // DE
        (cr4::PSE, has(edx1, 3)),
        (cr4::PAE, has(edx1, 6)),
        (1 << 6, has(edx1, 7)), // MCE
        (cr4::PGE, has(edx1, 13)),
        (1 << 9, has(edx1, 24)),  // OSFXSR: FXSR
        (1 << 10, has(edx1, 25)), // OSXMMEXCPT: SSE
        (1 << 11, has(ecx7, 2)),  // UMIP
        (cr4::LA57, has(ecx7, 16)),
        (1 << 16, has(ebx7, 0)), // FSGSBASE
        (cr4::PCIDE, has(ecx1, 17)),
        (1 << 18, has(ecx1, 26)), // OSXSAVE: XSAVE
        (cr4::SMEP, has(ebx7, 7)),
        (cr4::SMAP, has(ebx7, 20)),
        (cr4::PKE, has(ecx7, 3)),
    ];
    rules
        .iter()
        .filter(|(_, offered)| !offered)
        .fold(0, |acc, (bits, _)| acc | bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::vmx::{group, reason};

    fn msg(cr0: u64, cr4: u64, rbx: u64) -> ExitMessage {
        let mut m = ExitMessage {
            reason: reason::CR_ACCESS,
            mask: group::GPRS | group::CRS | group::QUAL,
            cr0_shadow: cr0,
            cr4_shadow: cr4,
            cr3: 0x5000,
            ..ExitMessage::default()
        };
        m.gprs[3] = rbx;
        m
    }

    const TO_RBX: CrAccessKind = CrAccessKind::MovTo { gpr: 3 };

    #[test]
    fn cr0_checks() {
        let m = msg(0x11, 0, 0x8000_0000);
        assert_eq!(handle(&m, 0, TO_RBX, 0).unwrap().reply, gp()); // PG without PE
        let m = msg(0x11, 0, 0x2000_0011);
        assert_eq!(handle(&m, 0, TO_RBX, 0).unwrap().reply, gp()); // NW without CD
        let m = msg(0x11, 0, 1 << 32 | 0x11);
        assert_eq!(handle(&m, 0, TO_RBX, 0).unwrap().reply, gp());
        let m = msg(0x11, 0, 0x8000_0001 | 1 << 7); // undefined bit 7 ignored, ET forced
        let r = handle(&m, 0, TO_RBX, 0).unwrap();
        assert_eq!(r.reply.flags, reply::ADVANCE_RIP | reply::SET_CR0);
        assert_eq!(r.reply.cr0, 0x8000_0011);
        assert_eq!(r.efer, None);
    }

    #[test]
    fn long_mode_activation_and_exit() {
        let lme = efer::LME;
        // PG with LME but no PAE: #GP.
        let m = msg(0x11, 0, 0x8000_0011);
        assert_eq!(handle(&m, 0, TO_RBX, lme).unwrap().reply, gp());
        let m = msg(0x11, cr4::PAE, 0x8000_0011);
        let r = handle(&m, 0, TO_RBX, lme).unwrap();
        assert_eq!(r.efer, Some(lme | efer::LMA));
        assert_ne!(r.reply.flags & reply::SET_EFER, 0);
        // Leaving paging in compatibility mode clears LMA; in 64-bit mode it is #GP.
        let mut m = msg(0x8000_0011, cr4::PAE, 0x11);
        let r = handle(&m, 0, TO_RBX, lme | efer::LMA).unwrap();
        assert_eq!(r.efer, Some(lme));
        m.mask |= group::SEGS;
        m.segments[0].access_rights = 0xa09b;
        assert_eq!(handle(&m, 0, TO_RBX, lme | efer::LMA).unwrap().reply, gp());
    }

    #[test]
    fn pae_paging_loads_pdptes_and_reserved_bits_are_refused() {
        // CR0.PG on with CR4.PAE and no long mode: PAE paging, the PDPTEs are loaded.
        let m = msg(0x11, cr4::PAE, 0x8000_0011);
        let r = handle(&m, 0, TO_RBX, 0).unwrap().reply;
        assert!(loads_pdptes(&m, &r, 0));
        // With LME it is long mode: no PDPTEs.
        let r = handle(&m, 0, TO_RBX, efer::LME).unwrap().reply;
        assert!(!loads_pdptes(&m, &r, efer::LME));
        // CR4.PAE on while paging is on.
        let m = msg(0x8000_0011, 0, cr4::PAE);
        let r = handle(&m, 4, TO_RBX, 0).unwrap().reply;
        assert!(loads_pdptes(&m, &r, 0));
        // Reading a register loads nothing.
        let r = handle(&m, 0, CrAccessKind::MovFrom { gpr: 1 }, 0)
            .unwrap()
            .reply;
        assert!(!loads_pdptes(&m, &r, 0));
        assert_eq!(pdpt_address(0x1234_5678_9abc_def7), 0x9abc_dee0);

        assert!(pdptes_ok(&[0x1001, 0x2001, 0, 0xffff_fffe], 36));
        for bad in [0x1003, 0x1005, 0x1021, 0x1101, 1 << 36 | 1, 1 << 63 | 1] {
            assert!(!pdptes_ok(&[0x1001, bad, 0, 0], 36), "{bad:#x}");
        }
        // Not present: anything goes.
        assert!(pdptes_ok(&[u64::MAX - 1; 4], 36));
        assert!(pdptes_ok(&[1 << 40 | 1, 0, 0, 0], 46));
    }

    #[test]
    fn cr4_checks() {
        let ok = handle(&msg(0x11, 0, cr4::PAE), 4, TO_RBX, 0).unwrap().reply;
        assert_eq!(ok.flags, reply::ADVANCE_RIP | reply::SET_CR4);
        assert_eq!(ok.cr4, cr4::PAE);
        for bad in [cr4::VMXE, cr4::SMXE, 1 << 15, 1 << 40] {
            assert_eq!(
                handle(&msg(0x11, 0, bad), 4, TO_RBX, 0).unwrap().reply,
                gp()
            );
        }
        assert_eq!(
            handle(&msg(0, 0, 0), 4, TO_RBX, efer::LMA).unwrap().reply,
            gp()
        );
    }

    #[test]
    fn clts_lmsw_cr3_and_reads() {
        let r = handle(&msg(0x1b, 0, 0), 0, CrAccessKind::Clts, 0)
            .unwrap()
            .reply;
        assert_eq!(r.cr0, 0x13);
        // LMSW cannot clear PE but sets MP/EM/TS.
        let lmsw = CrAccessKind::Lmsw { source_data: 0xe };
        let r = handle(&msg(0x11, 0, 0), 0, lmsw, 0).unwrap().reply;
        assert_eq!(r.cr0, 0x1f);
        let r = handle(&msg(0x11, 0, 0x9000), 3, TO_RBX, 0).unwrap().reply;
        assert_eq!(
            (r.flags, r.cr3),
            (reply::ADVANCE_RIP | reply::SET_CR3, 0x9000)
        );
        let from = CrAccessKind::MovFrom { gpr: 1 };
        let r = handle(&msg(0x11, 0x20, 0), 4, from, 0).unwrap().reply;
        assert_eq!((r.gpr_mask, r.gprs[1]), (2, 0x20));
        let r = handle(&msg(0x11, 0x20, 0), 3, from, 0).unwrap().reply;
        assert_eq!(r.gprs[1], 0x5000);
        assert_eq!(
            handle(&msg(0, 0, 0), 8, TO_RBX, 0),
            Err(CrError::Unsupported { cr: 8 })
        );
        assert!(handle(&msg(0, 0, 0), 3, CrAccessKind::Clts, 0).is_err());
    }

    #[test]
    fn pcide_rules() {
        let lma = efer::LME | efer::LMA;
        let pae_pcid = cr4::PAE | cr4::PCIDE;
        // Outside long mode: #GP.
        assert_eq!(
            handle(&msg(0x8000_0011, cr4::PAE, pae_pcid), 4, TO_RBX, 0)
                .unwrap()
                .reply,
            gp()
        );
        // In long mode with CR3[11:0] = 0: allowed; with PCID bits in CR3: #GP.
        let mut m = msg(0x8000_0011, cr4::PAE, pae_pcid);
        m.cr3 = 0x5000;
        assert_eq!(handle(&m, 4, TO_RBX, lma).unwrap().reply.cr4, pae_pcid);
        m.cr3 = 0x5001;
        assert_eq!(handle(&m, 4, TO_RBX, lma).unwrap().reply, gp());
        // Already on: CR3's low bits do not matter.
        let m = msg(0x8000_0011, pae_pcid, pae_pcid);
        assert_ne!(handle(&m, 4, TO_RBX, lma).unwrap().reply, gp());
        // Paging cannot be turned off while PCIDE is set (even in compatibility mode).
        let m = msg(0x8000_0011, pae_pcid, 0x11);
        assert_eq!(handle(&m, 0, TO_RBX, lma).unwrap().reply, gp());
    }

    #[test]
    fn la57_is_fixed_in_long_mode() {
        let lma = efer::LME | efer::LMA;
        let m = msg(0x8000_0011, cr4::PAE, cr4::PAE | cr4::LA57);
        assert_eq!(handle(&m, 4, TO_RBX, lma).unwrap().reply, gp());
        let m = msg(0x8000_0011, cr4::PAE | cr4::LA57, cr4::PAE);
        assert_eq!(handle(&m, 4, TO_RBX, lma).unwrap().reply, gp());
        // Outside long mode it may change (paging off).
        let m = msg(0x11, 0, cr4::LA57);
        assert_eq!(handle(&m, 4, TO_RBX, 0).unwrap().reply.cr4, cr4::LA57);
    }

    #[test]
    fn cr4_bits_follow_the_guests_cpuid() {
        // A CPU with only FPU, PSE, PAE, PGE, FXSR, SSE in leaf 1 and nothing in leaf 7.
        let edx1 = 1 | 1 << 3 | 1 << 6 | 1 << 13 | 1 << 24 | 1 << 25;
        let cpu = move |leaf: u32, _| match leaf {
            0 => [7, 0, 0, 0],
            1 => [0, 0, 0, edx1],
            _ => [0; 4],
        };
        let reserved = cr4_reserved(cpu);
        for offered in [cr4::PSE, cr4::PAE, cr4::PGE, 1 << 9, 1 << 10] {
            assert_eq!(reserved & offered, 0, "{offered:#x}");
        }
        for not in [
            1u64,
            1 << 2,
            1 << 3,
            1 << 6,
            1 << 11,
            cr4::LA57,
            1 << 16,
            cr4::PCIDE,
            1 << 18,
            cr4::SMEP,
            cr4::SMAP,
            cr4::PKE,
        ] {
            assert_ne!(reserved & not, 0, "{not:#x}");
        }
        let limits = Limits {
            cr4_unoffered: reserved,
            maxphyaddr: 52,
        };
        let w = |v: u64| handle_with(&msg(0x11, 0, v), 4, TO_RBX, 0, &limits).unwrap();
        assert_eq!(w(1 << 18).reply, gp()); // OSXSAVE without XSAVE
        assert_eq!(w(cr4::SMEP).reply, gp());
        assert_eq!(w(cr4::PAE | cr4::PGE).reply.cr4, cr4::PAE | cr4::PGE);
        // Everything offered: only the architectural rules remain.
        assert_eq!(cr4_reserved(|_, _| [u32::MAX; 4]), 0);
    }

    #[test]
    fn cr3_reserved_bits_in_long_mode() {
        let lma = efer::LME | efer::LMA;
        let limits = Limits {
            cr4_unoffered: 0,
            maxphyaddr: 36,
        };
        let w = |cr4: u64, v: u64, efer: u64| {
            handle_with(&msg(0x8000_0011, cr4, v), 3, TO_RBX, efer, &limits)
                .unwrap()
                .reply
        };
        assert_eq!(w(cr4::PAE, 0xf_ffff_f000, lma).cr3, 0xf_ffff_f000);
        assert_eq!(w(cr4::PAE, 1 << 36, lma), gp());
        // Bit 63: reserved without PCIDE, the no-flush hint (not stored) with it.
        assert_eq!(w(cr4::PAE, 1 << 63 | 0x5000, lma), gp());
        let pcid = cr4::PAE | cr4::PCIDE;
        assert_eq!(w(pcid, 1 << 63 | 0x5001, lma).cr3, 0x5001);
        // Outside long mode nothing above bit 31 can be written: no check here.
        assert_eq!(w(cr4::PAE, 1 << 36, 0).cr3, 1 << 36);
    }
}
