use super::*;

fn sel(io: &mut Ioapic, r: u32) {
    assert!(io.mmio_write(offset::IOREGSEL, r).is_empty());
}

fn read(io: &mut Ioapic, r: u32) -> u32 {
    sel(io, r);
    io.mmio_read(offset::IOWIN)
}

/// Programs entry `pin` (low half then high half), returning what the low-half write sent.
fn program(io: &mut Ioapic, pin: u32, low: u32, dest: u8) -> Messages {
    sel(io, reg::REDIRECTION + 2 * pin + 1);
    assert!(io.mmio_write(offset::IOWIN, (dest as u32) << 24).is_empty());
    sel(io, reg::REDIRECTION + 2 * pin);
    io.mmio_write(offset::IOWIN, low)
}

#[test]
fn id_version_and_reset_entries() {
    let mut io = Ioapic::new(2);
    assert_eq!(read(&mut io, reg::ID), 2 << 24);
    assert_eq!(read(&mut io, reg::ARBITRATION), 2 << 24);
    assert_eq!(read(&mut io, reg::VERSION), 0x0017_0011);
    assert_eq!(io.mmio_read(offset::IOREGSEL), reg::VERSION);
    sel(&mut io, reg::ID);
    io.mmio_write(offset::IOWIN, 0xffff_ffff);
    assert_eq!(read(&mut io, reg::ID), 0x0f00_0000);
    for pin in 0..PINS as u32 {
        assert_eq!(read(&mut io, reg::REDIRECTION + 2 * pin), 0x1_0000);
        assert_eq!(read(&mut io, reg::REDIRECTION + 2 * pin + 1), 0);
    }
    // Past the last entry, and unknown offsets.
    assert_eq!(read(&mut io, reg::REDIRECTION + 2 * PINS as u32), 0);
    assert_eq!(io.mmio_read(0x20), 0);
    // IOREGSEL keeps 8 bits.
    io.mmio_write(offset::IOREGSEL, 0x1234);
    assert_eq!(io.mmio_read(offset::IOREGSEL), 0x34);
}

#[test]
fn writable_bits_of_an_entry() {
    let mut io = Ioapic::new(0);
    program(&mut io, 5, 0xffff_ffff, 0xff);
    sel(&mut io, reg::REDIRECTION + 11);
    io.mmio_write(offset::IOWIN, 0xffff_ffff);
    // Delivery status (12) and remote IRR (14) are read-only; bits 31:17 reserved.
    assert_eq!(read(&mut io, reg::REDIRECTION + 10), 0x1_afff);
    assert_eq!(read(&mut io, reg::REDIRECTION + 11), 0xff00_0000);
}

#[test]
fn edge_entry_sends_on_rising_edges_only() {
    let mut io = Ioapic::new(0);
    assert!(program(&mut io, 2, 0x0830, 0x03).is_empty()); // logical, fixed, vector 0x30
    let m = io.set_irq(2, true).expect("rising edge");
    assert_eq!(
        m,
        Message {
            dest: 3,
            format: DestFormat::XApic,
            logical: true,
            mode: DeliveryMode::Fixed,
            vector: 0x30,
            level: true,
            level_triggered: false,
        }
    );
    assert_eq!(io.set_irq(2, true), None, "no edge");
    assert_eq!(io.set_irq(2, false), None);
    assert!(io.set_irq(2, true).is_some());
    // Masked: the edge is lost, and unmasking does not replay it.
    io.set_irq(2, false);
    program(&mut io, 2, 0x1_0830, 3);
    assert_eq!(io.set_irq(2, true), None);
    assert!(program(&mut io, 2, 0x0830, 3).is_empty());
    assert_eq!(io.set_irq(99, true), None, "out-of-range pin");
}

#[test]
fn active_low_polarity() {
    let mut io = Ioapic::new(0);
    io.set_irq(9, true); // line idles high
    program(&mut io, 9, 0x2000 | 0x41, 0); // active low, edge
    assert_eq!(io.set_irq(9, true), None);
    assert_eq!(io.set_irq(9, false).map(|m| m.vector), Some(0x41));
    assert_eq!(
        io.set_irq(9, true),
        None,
        "rising electrical edge is the deassert"
    );
}

#[test]
fn level_entry_remote_irr_and_eoi() {
    let mut io = Ioapic::new(0);
    program(&mut io, 10, 0x8000 | 0x50, 1); // level, vector 0x50
    let m = io.set_irq(10, true).expect("asserted");
    assert!(m.level_triggered);
    assert_ne!(io.entry(10).unwrap() & entry::REMOTE_IRR, 0);
    assert_eq!(io.set_irq(10, true), None, "remote IRR set");
    // EOI of another vector changes nothing.
    assert!(io.eoi(0x51).is_empty());
    // EOI with the line still asserted: sent again.
    let again = io.eoi(0x50);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].vector, 0x50);
    // Line drops, then EOI: nothing more, remote IRR clear.
    io.set_irq(10, false);
    assert!(io.eoi(0x50).is_empty());
    assert_eq!(io.entry(10).unwrap() & entry::REMOTE_IRR, 0);
    // The EOI register does the same.
    io.set_irq(10, true);
    assert_eq!(io.mmio_write(offset::EOI, 0x50).len(), 1);
}

#[test]
fn level_masked_then_unmasked_sends() {
    let mut io = Ioapic::new(0);
    program(&mut io, 11, 0x1_8000 | 0x60, 0);
    assert_eq!(io.set_irq(11, true), None, "masked");
    let sent = program(&mut io, 11, 0x8000 | 0x60, 0);
    assert_eq!(sent.len(), 1, "unmasking an asserted level line sends");
    // Switching to edge clears the remote IRR (the version-0x11 EOI trick).
    program(&mut io, 11, 0x1_0060, 0);
    assert_eq!(io.entry(11).unwrap() & entry::REMOTE_IRR, 0);
    // Back to level, unmasked, line still asserted: sent again.
    assert_eq!(program(&mut io, 11, 0x8000 | 0x60, 0).len(), 1);
}

#[test]
fn eoi_resends_every_entry_sharing_the_vector() {
    let mut io = Ioapic::new(0);
    for pin in [16, 17] {
        program(&mut io, pin, 0x8000 | 0x70, 0);
        assert!(io.set_irq(pin, true).is_some());
    }
    assert_eq!(io.eoi(0x70).len(), 2);
}

/// A level-triggered line through the IOAPIC to two local APICs and back by EOI.
#[test]
fn level_interrupt_round_trip_with_local_apics() {
    use crate::devices::lapic::{ipi::message_targets, Config, Effect, Lapic};
    let mut cpus: Vec<Lapic> = (0..2).map(|i| Lapic::new(Config::new(i, i == 0))).collect();
    for l in cpus.iter_mut() {
        l.mmio_write(0xf0, 0x1ff, 0);
    }
    let mut io = Ioapic::new(0);
    program(&mut io, 4, 0x8000 | 0x44, 1); // level, physical destination 1
    let m = io.set_irq(4, true).expect("asserted");
    let t = message_targets(&cpus, &m);
    assert_eq!(t, 0b10);
    cpus[1].receive(&m);
    assert_eq!(cpus[0].pending(), None);
    assert_eq!(cpus[1].pending(), Some(0x44));
    assert_eq!(cpus[1].ack(0x44), 0x44);
    // The device is still asserting: the EOI re-sends it.
    let Some(Effect::LevelEoi(v)) = cpus[1].mmio_write(0xb0, 0, 0) else {
        panic!("a level EOI");
    };
    let again = io.eoi(v);
    assert_eq!(again.len(), 1);
    cpus[1].receive(&again[0]);
    assert_eq!(cpus[1].pending(), Some(0x44));
    assert_eq!(cpus[1].ack(0x44), 0x44);
    // The device stops; the next EOI ends it.
    io.set_irq(4, false);
    let Some(Effect::LevelEoi(v)) = cpus[1].mmio_write(0xb0, 0, 0) else {
        panic!("a level EOI");
    };
    assert!(io.eoi(v).is_empty());
    assert_eq!(cpus[1].pending(), None);
}

/// A fixed IPI from one local APIC to another and back (the ping-pong the guest will do).
#[test]
fn ipi_ping_pong() {
    use crate::devices::lapic::{ipi::targets, Config, Effect, Lapic};
    let mut cpus: Vec<Lapic> = (0..2).map(|i| Lapic::new(Config::new(i, i == 0))).collect();
    for l in cpus.iter_mut() {
        l.mmio_write(0xf0, 0x1ff, 0);
    }
    for round in 0..4u32 {
        let (from, to) = ((round % 2) as usize, (1 - round % 2) as usize);
        cpus[from].mmio_write(0x310, (to as u32) << 24, 0);
        let Some(Effect::Ipi(ipi)) = cpus[from].mmio_write(0x300, 0x60 + round, 0) else {
            panic!("no IPI");
        };
        let mask = targets(&cpus, &ipi);
        assert_eq!(mask, 1 << to);
        cpus[to].receive(&ipi.message);
        let v = cpus[to].pending().expect("delivered");
        assert_eq!(v, 0x60 + round as u8);
        cpus[to].ack(v);
        assert_eq!(cpus[to].eoi(), None, "edge-triggered");
        assert_eq!(cpus[from].pending(), None);
    }
}
