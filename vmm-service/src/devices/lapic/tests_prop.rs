//! Property tests: interrupt acceptance, priorities and EOI against a reference built on
//! sets; refused x2APIC and APIC-base writes change nothing; no access panics.

use super::regs::{offset as o, x2apic_msr, X2APIC_MSRS};
use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;

#[derive(Clone, Debug)]
enum Op {
    Accept(u8, bool),
    Tpr(u8),
    Inject,
    Eoi,
    Svr(bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), any::<bool>()).prop_map(|(v, l)| Op::Accept(v, l)),
        2 => any::<u8>().prop_map(Op::Tpr),
        3 => Just(Op::Inject),
        3 => Just(Op::Eoi),
        1 => any::<bool>().prop_map(Op::Svr),
    ]
}

/// The SDM's rules written over sets.
#[derive(Default)]
struct Reference {
    irr: BTreeSet<u8>,
    isr: BTreeSet<u8>,
    tmr: BTreeSet<u8>,
    tpr: u8,
    enabled: bool,
}

impl Reference {
    fn ppr(&self) -> u8 {
        let isrv = self.isr.last().copied().unwrap_or(0);
        if self.tpr / 16 >= isrv / 16 {
            self.tpr
        } else {
            isrv / 16 * 16
        }
    }
    fn pending(&self) -> Option<u8> {
        let v = *self.irr.last()?;
        (self.enabled && v / 16 > self.ppr() / 16).then_some(v)
    }
}

fn bits(set: &BTreeSet<u8>) -> Bits256 {
    let mut b = Bits256::default();
    for &v in set {
        b.set(v, true);
    }
    b
}

proptest! {
    #[test]
    fn delivery_matches_the_reference(ops in prop::collection::vec(op(), 1..80)) {
        let mut l = Lapic::new(Config::new(0, true));
        let mut r = Reference::default();
        for op in ops {
            match op {
                Op::Accept(v, level) => {
                    let ok = r.enabled && v >= 16;
                    if ok {
                        r.irr.insert(v);
                        if level { r.tmr.insert(v); } else { r.tmr.remove(&v); }
                    }
                    prop_assert_eq!(l.accept(v, level), ok);
                }
                Op::Tpr(t) => {
                    r.tpr = t;
                    l.mmio_write(o::TPR, t as u32, 0);
                }
                Op::Inject => {
                    let p = r.pending();
                    prop_assert_eq!(l.pending(), p);
                    if let Some(v) = p {
                        // Nesting: an injected vector outranks everything in service.
                        prop_assert!(r.isr.iter().all(|&s| s / 16 < v / 16));
                        r.irr.remove(&v);
                        r.isr.insert(v);
                        prop_assert_eq!(l.ack(v), v);
                    }
                }
                Op::Eoi => {
                    let want = r.isr.pop_last().filter(|v| r.tmr.contains(v));
                    prop_assert_eq!(l.mmio_write(o::EOI, 0, 0), want.map(Effect::LevelEoi));
                }
                Op::Svr(on) => {
                    r.enabled = on;
                    l.mmio_write(o::SVR, if on { 0x1ff } else { 0xff }, 0);
                }
            }
            prop_assert_eq!(l.pending(), r.pending());
            prop_assert_eq!(l.mmio_read(o::PPR, 0), r.ppr() as u32);
            prop_assert_eq!(l.irr(), &bits(&r.irr));
            prop_assert_eq!(l.isr(), &bits(&r.isr));
            prop_assert_eq!(l.tmr(), &bits(&r.tmr));
            for w in 0..8u32 {
                prop_assert_eq!(l.mmio_read(o::IRR + 16 * w, 0), bits(&r.irr).0[w as usize]);
            }
        }
    }

    /// Whatever the guest writes where: no panic, and a write refused with #GP leaves the
    /// APIC exactly as it was.
    #[test]
    fn refused_writes_change_nothing(
        writes in prop::collection::vec(
            (0u32..0x110, any::<u64>(), 0u8..4),
            1..60,
        ),
    ) {
        let mut l = Lapic::new(Config::new(5, false));
        l.mmio_write(o::SVR, 0x1ff, 0);
        let mut now = 0u64;
        for (index, value, kind) in writes {
            now += 17;
            let before = l.clone();
            match kind {
                0 => {
                    let msr = *X2APIC_MSRS.start() + index.min(0xff);
                    if l.msr_write(msr, value, now).is_err() {
                        prop_assert_eq!(&l, &before, "msr {:#x} value {:#x}", msr, value);
                    }
                    let _ = l.msr_read(msr, now);
                }
                1 => {
                    // Mostly-legal APIC base values, with random low and high bits.
                    let v = (value & 0xc00) | DEFAULT_BASE | (value & 0x1_0000_0300).rotate_left(index);
                    if l.set_apic_base(v).is_err() {
                        prop_assert_eq!(&l, &before, "apic base {:#x}", v);
                    }
                }
                2 => {
                    let off = index << 4;
                    l.mmio_write(off, value as u32, now);
                    let _ = l.mmio_read(off | (value as u32 & 3), now);
                }
                _ => {
                    l.poll(now);
                    let _ = l.next_event(now);
                    if let Some(v) = l.pending() {
                        prop_assert_eq!(l.ack(v), v);
                    }
                }
            }
        }
    }

    /// Read-write xAPIC registers read back what was written, within their writable bits.
    #[test]
    fn xapic_registers_read_back(value: u32, which in 0usize..7) {
        let mut l = Lapic::new(Config::new(1, false));
        l.mmio_write(o::SVR, 0x1ff, 0);
        let (off, mask) = [
            (o::TPR, 0xff),
            (o::LDR, 0xff00_0000),
            (o::ICR_HIGH, 0xff00_0000),
            (o::TIMER_DIVIDE, 0xb),
            (Lvt::Lint1.offset(), 0x1_a7ff),
            (Lvt::Thermal.offset(), 0x1_07ff),
            (Lvt::Error.offset(), 0x1_00ff),
        ][which];
        l.mmio_write(off, value, 0);
        prop_assert_eq!(l.mmio_read(off, 0), value & mask);
        // The same register in x2APIC mode reads the same (the LDR is derived there).
        if off != o::LDR && off != o::ICR_HIGH {
            l.set_apic_base(l.apic_base() | base::EXTD).unwrap();
            prop_assert_eq!(l.msr_read(x2apic_msr(off), 0), Ok((value & mask) as u64));
        }
    }
}

/// Destination matching written bit by bit from the SDM's description.
fn reference_match(id: u8, ldr: u8, flat: bool, dest: u8, logical: bool) -> bool {
    if dest == 0xff {
        return true;
    }
    if !logical {
        return dest == id;
    }
    if flat {
        (0..8).any(|b| dest & ldr & (1 << b) != 0)
    } else {
        dest >> 4 == ldr >> 4 && (0..4).any(|b| dest & ldr & (1 << b) != 0)
    }
}

proptest! {
    #[test]
    fn xapic_destinations_match_the_reference(
        id: u8, ldr: u8, flat: bool, dest: u8, logical: bool,
    ) {
        let mut l = Lapic::new(Config::new(id as u32, false));
        l.mmio_write(o::LDR, (ldr as u32) << 24, 0);
        l.mmio_write(o::DFR, if flat { u32::MAX } else { 0 }, 0);
        let msg = ipi::Message {
            dest: dest as u32,
            format: ipi::DestFormat::XApic,
            logical,
            mode: ipi::DeliveryMode::Fixed,
            vector: 0x40,
            level: true,
            level_triggered: false,
        };
        prop_assert_eq!(l.matches(&msg), reference_match(id, ldr, flat, dest, logical));
    }

    #[test]
    fn x2apic_logical_destinations(id in 0u32..0x10_0000, dest: u32) {
        let mut l = Lapic::new(Config::new(id, true));
        l.set_apic_base(l.apic_base() | base::EXTD).unwrap();
        let msg = ipi::Message {
            dest,
            format: ipi::DestFormat::X2Apic,
            logical: true,
            mode: ipi::DeliveryMode::Fixed,
            vector: 0x40,
            level: true,
            level_triggered: false,
        };
        // Cluster id >> 4, member bit id & 15, or the broadcast.
        let want = dest == u32::MAX
            || (dest >> 16 == id >> 4 && dest & (1 << (id & 15)) != 0);
        prop_assert_eq!(l.matches(&msg), want);
        // The same cluster and member as a derived destination always matches.
        let own = ipi::Message { dest: ipi::x2apic_ldr(id), ..msg };
        prop_assert!(l.matches(&own));
    }
}
