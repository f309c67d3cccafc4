//! MOV to and from the debug registers (exit reason 29: the kernel sets "MOV-DR exiting" and
//! keeps DR0..DR3 and DR6 per vCPU as `VcpuState` pseudo-fields, DR7 as the VMCS guest
//! field; part `fpu` of issue 17).
//!
//! The exit takes priority over the checks hardware makes first (SDM vol. 3, 26.1.3), so
//! they are made here, in KVM's order: DR4/DR5 with CR4.DE → #UD; CPL > 0 → #GP(0);
//! DR7.GD → #DB with DR6.BD set and DR7.GD cleared (a fault: RIP stays); a write of DR6 or
//! DR7 with bits 63:32 set → #GP(0). DR4 and DR5 alias DR6 and DR7 when CR4.DE is clear.
//! Written values keep the registers' fixed bits ([`dr6::normalize`], [`dr7::normalize`]);
//! outside 64-bit mode the operand is the low 32 bits of the register.

use abi::cpu::{cr4, dr6, dr7, efer};
use abi::vmx::{field, group, ExitMessage, ExitReply};

use crate::cr::GP_INJECT;

/// #UD: VM-entry interruption info (valid | hardware exception | vector 6).
pub const UD_INJECT: u64 = 0x8000_0306;
/// #DB: VM-entry interruption info (valid | hardware exception | vector 1).
pub const DB_INJECT: u64 = 0x8000_0301;
/// The state groups a MOV DR exit needs: the qualification, the register operand, CR4 and
/// EFER (DR4/DR5 aliasing, long mode), the segments (CPL, CS.L) and RFLAGS (virtual-8086).
pub const GROUPS: u32 = group::QUAL | group::GPRS | group::CRS | group::SEGS | group::RIP;

/// A decoded MOV DR exit qualification (SDM vol. 3, table 28-4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrAccess {
    /// The debug register, 0..=7.
    pub dr: u8,
    /// MOV from the debug register (into `gpr`); else MOV to it.
    pub from_dr: bool,
    /// The general-purpose register, in [`abi::vmx::Gpr`] order.
    pub gpr: usize,
}

impl DrAccess {
    pub fn decode(qualification: u64) -> DrAccess {
        DrAccess {
            dr: (qualification & 7) as u8,
            from_dr: qualification & (1 << 4) != 0,
            gpr: ((qualification >> 8) & 0xf) as usize,
        }
    }
}

/// The `VcpuState` field that holds debug register `dr` (DR4/DR5: DR6/DR7, the alias).
pub fn field_of(dr: u8) -> u64 {
    match dr {
        0..=3 => field::GUEST_DR0 + u64::from(dr),
        4 | 6 => field::GUEST_DR6,
        _ => field::GUEST_DR7,
    }
}

/// The guest's CPL: 0 in real mode, 3 in virtual-8086 mode, else SS.DPL.
fn cpl(m: &ExitMessage) -> u8 {
    if m.cr0_shadow & abi::cpu::cr0::PE == 0 {
        0
    } else if m.rflags & (1 << 17) != 0 {
        3
    } else {
        ((m.segments[1].access_rights >> 5) & 3) as u8
    }
}

/// Whether the guest runs 64-bit code (EFER.LMA and CS.L).
fn long_mode(m: &ExitMessage) -> bool {
    m.efer & efer::LMA != 0 && m.segments[0].access_rights & (1 << 13) != 0
}

fn inject(info: u64) -> ExitReply {
    ExitReply {
        flags: abi::vmx::reply::INJECT,
        inject: info,
        ..ExitReply::default()
    }
}

/// Handles a MOV DR exit: `read` gives a `VcpuState` field's value, `write` sets one (the
/// service does both with `VcpuState`; they may fail, which stops nothing: a failed write
/// answers #GP, as the kernel refuses only values hardware refuses too).
pub fn handle(
    m: &ExitMessage,
    mut read: impl FnMut(u64) -> Option<u64>,
    mut write: impl FnMut(u64, u64) -> bool,
) -> ExitReply {
    let a = DrAccess::decode(m.qualification);
    if matches!(a.dr, 4 | 5) && m.cr4_shadow & cr4::DE != 0 {
        return inject(UD_INJECT);
    }
    if cpl(m) != 0 {
        return inject(GP_INJECT);
    }
    let Some(dr7_now) = read(field::GUEST_DR7) else {
        return inject(GP_INJECT);
    };
    if dr7_now & dr7::GD != 0 {
        // General detect: #DB before the access, DR6.BD set (its B0-B3 cleared), DR7.GD
        // cleared as the processor does when it delivers the exception.
        let dr6_now = read(field::GUEST_DR6).unwrap_or(dr6::INIT);
        let dr6_new = dr6::normalize((dr6_now & !0xf) | dr6::BD);
        if !write(field::GUEST_DR6, dr6_new) || !write(field::GUEST_DR7, dr7_now & !dr7::GD) {
            return inject(GP_INJECT);
        }
        return inject(DB_INJECT);
    }
    let wide = long_mode(m);
    let f = field_of(a.dr);
    if a.from_dr {
        let Some(v) = read(f) else {
            return inject(GP_INJECT);
        };
        let mut r = ExitReply::advance();
        r.gpr_mask |= 1 << a.gpr;
        r.gprs[a.gpr] = if wide { v } else { v & 0xffff_ffff };
        return r;
    }
    let operand = m.gprs[a.gpr];
    let v = if wide { operand } else { operand & 0xffff_ffff };
    let v = match f {
        field::GUEST_DR6 | field::GUEST_DR7 if v >> 32 != 0 => return inject(GP_INJECT),
        field::GUEST_DR6 => dr6::normalize(v),
        field::GUEST_DR7 => dr7::normalize(v),
        _ => v,
    };
    if write(f, v) {
        ExitReply::advance()
    } else {
        inject(GP_INJECT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::vmx::reply;
    use std::collections::BTreeMap;

    /// A 64-bit CPL-0 guest (CS.L, EFER.LMA, PE), CR4.DE as given.
    fn msg(qualification: u64, gprs: [u64; 16], de: bool) -> ExitMessage {
        let mut m = ExitMessage {
            qualification,
            gprs,
            cr0_shadow: 0x8000_0011,
            cr4_shadow: if de { cr4::DE } else { 0 },
            efer: efer::LMA | efer::LME,
            ..ExitMessage::default()
        };
        m.segments[0].access_rights = 0xa09b; // CS: 64-bit code, DPL 0
        m.segments[1].access_rights = 0xc093; // SS: DPL 0
        m
    }

    fn qual(dr: u8, from_dr: bool, gpr: usize) -> u64 {
        u64::from(dr) | (u64::from(from_dr) << 4) | ((gpr as u64) << 8)
    }

    struct Regs(BTreeMap<u64, u64>);

    impl Regs {
        fn new() -> Regs {
            Regs(BTreeMap::from([
                (field::GUEST_DR6, dr6::INIT),
                (field::GUEST_DR7, dr7::INIT),
            ]))
        }
        fn run(&mut self, m: &ExitMessage) -> ExitReply {
            let cell = core::cell::RefCell::new(&mut self.0);
            handle(
                m,
                |f| Some(cell.borrow().get(&f).copied().unwrap_or(0)),
                |f, v| {
                    cell.borrow_mut().insert(f, v);
                    true
                },
            )
        }
    }

    #[test]
    fn writes_and_reads_of_dr0_to_dr3_go_to_the_vcpu_fields() {
        let mut r = Regs::new();
        for dr in 0..4u8 {
            let mut g = [0u64; 16];
            g[3] = 0xffff_8000_0000_1000 + u64::from(dr); // RBX
            let rep = r.run(&msg(qual(dr, false, 3), g, false));
            assert_eq!(rep, ExitReply::advance());
            assert_eq!(r.0[&(field::GUEST_DR0 + u64::from(dr))], g[3]);
            let rep = r.run(&msg(qual(dr, true, 9), [0; 16], false));
            assert_eq!(rep.flags, reply::ADVANCE_RIP);
            assert_eq!((rep.gpr_mask, rep.gprs[9]), (1 << 9, g[3]));
        }
    }

    #[test]
    fn dr6_and_dr7_keep_their_fixed_bits_and_refuse_high_bits() {
        let mut r = Regs::new();
        let mut g = [0u64; 16];
        g[0] = 0;
        assert_eq!(
            r.run(&msg(qual(7, false, 0), g, false)),
            ExitReply::advance()
        );
        assert_eq!(r.0[&field::GUEST_DR7], 0x400);
        g[0] = 0xffff_ffff;
        r.run(&msg(qual(6, false, 0), g, false));
        assert_eq!(r.0[&field::GUEST_DR6], 0xffff_efff);
        for dr in [6, 7] {
            g[0] = 1 << 32;
            let rep = r.run(&msg(qual(dr, false, 0), g, false));
            assert_eq!(
                (rep.flags, rep.inject),
                (reply::INJECT, GP_INJECT),
                "DR{dr}"
            );
        }
        assert_eq!(
            r.0[&field::GUEST_DR6],
            0xffff_efff,
            "unchanged by the refused write"
        );
    }

    #[test]
    fn dr4_and_dr5_alias_dr6_and_dr7_unless_cr4_de() {
        let mut r = Regs::new();
        r.0.insert(field::GUEST_DR7, 0x455);
        let rep = r.run(&msg(qual(5, true, 1), [0; 16], false));
        assert_eq!(rep.gprs[1], 0x455);
        let rep = r.run(&msg(qual(4, true, 1), [0; 16], false));
        assert_eq!(rep.gprs[1], dr6::INIT);
        for dr in [4, 5] {
            for from_dr in [false, true] {
                let rep = r.run(&msg(qual(dr, from_dr, 1), [0; 16], true));
                assert_eq!((rep.flags, rep.inject), (reply::INJECT, UD_INJECT));
            }
        }
        // DR6/DR7 themselves are fine with CR4.DE.
        let rep = r.run(&msg(qual(7, true, 1), [0; 16], true));
        assert_eq!(rep.gprs[1], 0x455);
    }

    #[test]
    fn cpl_above_0_and_virtual_8086_mode_get_gp() {
        let mut r = Regs::new();
        let mut m = msg(qual(0, false, 0), [7; 16], false);
        m.segments[1].access_rights = 0xc0f3; // SS DPL 3
        assert_eq!(r.run(&m).inject, GP_INJECT);
        let mut m = msg(qual(0, true, 0), [0; 16], false);
        m.rflags = 1 << 17;
        assert_eq!(r.run(&m).inject, GP_INJECT);
        // Real mode is CPL 0 whatever SS says.
        let mut m = msg(qual(0, false, 0), [7; 16], false);
        m.cr0_shadow = 0;
        m.efer = 0;
        m.segments[1].access_rights = 0xf3;
        assert_eq!(r.run(&m), ExitReply::advance());
        assert_eq!(r.0[&field::GUEST_DR0], 7);
    }

    #[test]
    fn outside_64_bit_mode_the_operand_is_32_bits() {
        let mut r = Regs::new();
        let mut m = msg(qual(2, false, 0), [0x1234_5678_9abc_def0; 16], false);
        m.efer = 0; // 32-bit protected mode
        m.segments[0].access_rights = 0xc09b;
        r.run(&m);
        assert_eq!(r.0[&(field::GUEST_DR0 + 2)], 0x9abc_def0);
        r.0.insert(field::GUEST_DR0 + 2, 0xffff_ffff_0000_0001);
        let mut m = msg(qual(2, true, 0), [0; 16], false);
        m.efer = 0;
        assert_eq!(r.run(&m).gprs[0], 1);
        // A 32-bit write of DR7 cannot carry high bits: no #GP.
        let mut m = msg(qual(7, false, 0), [0xffff_ffff_0000_0001; 16], false);
        m.efer = 0;
        assert_eq!(r.run(&m), ExitReply::advance());
        assert_eq!(r.0[&field::GUEST_DR7], 0x401);
    }

    #[test]
    fn general_detect_raises_db_with_bd_and_clears_gd() {
        let mut r = Regs::new();
        r.0.insert(field::GUEST_DR7, 0x400 | dr7::GD | 1);
        r.0.insert(field::GUEST_DR6, dr6::INIT | 0x3);
        let rep = r.run(&msg(qual(0, false, 0), [5; 16], false));
        assert_eq!(
            (rep.flags, rep.inject),
            (reply::INJECT, DB_INJECT),
            "a fault: no RIP advance"
        );
        assert_eq!(r.0[&field::GUEST_DR6], dr6::INIT | dr6::BD);
        assert_eq!(r.0[&field::GUEST_DR7], 0x401);
        assert_eq!(r.0.get(&field::GUEST_DR0), None, "the write did not happen");
    }
}
