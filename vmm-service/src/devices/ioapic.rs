//! The I/O APIC (82093AA-style, as KVM models it) at [`BASE`]: 24 interrupt inputs, each
//! routed by a redirection entry to the local APICs as a [`Message`].
//!
//! MMIO (32-bit accesses; the caller passes the offset in the page): IOREGSEL at 0x00
//! (bits 7:0 select a register), IOWIN at 0x10 (the selected register), and the EOI register
//! at 0x40 (a write clears the remote IRR of level-triggered entries with that vector, as
//! IOAPIC version 0x20 has it). Registers: 0x00 ID (bits 27:24), 0x01 version (0x11, maximum
//! redirection entry 23 in bits 23:16), 0x02 arbitration ID (reads the ID), 0x10 + 2n and
//! 0x11 + 2n the low and high halves of entry n. Other offsets and registers read 0 and
//! ignore writes.
//!
//! Inputs: [`Ioapic::set_irq`] gives a pin's electrical level; the entry's polarity (bit 13,
//! 1 = active low) says which level is asserted. Edge-triggered entries send on each
//! deasserted -> asserted change while unmasked (an edge while masked is lost). Level-
//! triggered entries send while the input is asserted, unmasked and the remote IRR is clear,
//! and set the remote IRR; the local APIC's EOI of that vector ([`Ioapic::eoi`]) clears it
//! and sends again if the input is still asserted. Unmasking an asserted level entry sends;
//! switching an entry to edge clears its remote IRR (the trick kernels use with version
//! 0x11, which has no EOI register in the datasheet).

use super::lapic::ipi::{DeliveryMode, DestFormat, Message};

/// Physical address of the IOAPIC's page.
pub const BASE: u64 = 0xfec0_0000;
/// Number of inputs (redirection entries).
pub const PINS: usize = 24;
/// The version register's version field.
pub const VERSION: u32 = 0x11;

/// MMIO offsets.
pub mod offset {
    pub const IOREGSEL: u32 = 0x00;
    pub const IOWIN: u32 = 0x10;
    pub const EOI: u32 = 0x40;
}

/// Register indices (IOREGSEL values).
pub mod reg {
    pub const ID: u32 = 0x00;
    pub const VERSION: u32 = 0x01;
    pub const ARBITRATION: u32 = 0x02;
    pub const REDIRECTION: u32 = 0x10;
}

/// Redirection entry bits.
pub mod entry {
    pub const DEST_LOGICAL: u64 = 1 << 11;
    pub const DELIVERY_STATUS: u64 = 1 << 12;
    pub const ACTIVE_LOW: u64 = 1 << 13;
    pub const REMOTE_IRR: u64 = 1 << 14;
    pub const LEVEL: u64 = 1 << 15;
    pub const MASKED: u64 = 1 << 16;
    /// Bits the guest writes: vector, delivery mode, destination mode, polarity, trigger
    /// mode, mask, destination (63:56).
    pub const WRITABLE: u64 = 0xff00_0000_0001_afff;
}

/// Messages sent by one call (an EOI can re-send several entries that share the vector).
pub type Messages = heapless::Vec<Message, PINS>;

/// The IOAPIC.
#[derive(Clone, Debug)]
pub struct Ioapic {
    id: u32,
    select: u32,
    entries: [u64; PINS],
    /// Electrical level of each input.
    lines: u32,
}

impl Default for Ioapic {
    fn default() -> Self {
        Ioapic::new(0)
    }
}

impl Ioapic {
    /// An IOAPIC with ID `id` (0..=15), every entry masked.
    pub fn new(id: u8) -> Ioapic {
        Ioapic {
            id: (id as u32 & 0xf) << 24,
            select: 0,
            entries: [entry::MASKED; PINS],
            lines: 0,
        }
    }

    /// Redirection entry `pin` as the guest reads it.
    pub fn entry(&self, pin: usize) -> Option<u64> {
        self.entries.get(pin).copied()
    }

    fn asserted(&self, pin: usize) -> bool {
        let high = self.lines & (1 << pin) != 0;
        high != (self.entries[pin] & entry::ACTIVE_LOW != 0)
    }

    /// The message entry `pin` sends.
    fn message(&self, pin: usize) -> Message {
        let e = self.entries[pin];
        Message {
            dest: (e >> 56) as u32,
            format: DestFormat::XApic,
            logical: e & entry::DEST_LOGICAL != 0,
            mode: DeliveryMode::from_bits(e),
            vector: e as u8,
            level: true,
            level_triggered: e & entry::LEVEL != 0,
        }
    }

    /// Sends entry `pin` if its input is asserted, it is unmasked and level-triggered with a
    /// clear remote IRR (which it sets).
    fn service_level(&mut self, pin: usize) -> Option<Message> {
        let e = self.entries[pin];
        if e & entry::LEVEL == 0
            || e & (entry::MASKED | entry::REMOTE_IRR) != 0
            || !self.asserted(pin)
        {
            return None;
        }
        self.entries[pin] |= entry::REMOTE_IRR;
        Some(self.message(pin))
    }

    /// Input `gsi` is now at electrical `level` (high = `true`). Returns the message to send
    /// to the local APICs, if this change sends one. Out-of-range pins are ignored.
    pub fn set_irq(&mut self, gsi: u32, level: bool) -> Option<Message> {
        let pin = gsi as usize;
        if pin >= PINS {
            return None;
        }
        let was = self.asserted(pin);
        if level {
            self.lines |= 1 << pin;
        } else {
            self.lines &= !(1 << pin);
        }
        let now = self.asserted(pin);
        let e = self.entries[pin];
        if e & entry::LEVEL != 0 {
            return self.service_level(pin);
        }
        (!was && now && e & entry::MASKED == 0).then(|| self.message(pin))
    }

    /// A local APIC's EOI of level-triggered `vector`: clears the remote IRR of the level
    /// entries with that vector, and re-sends those whose input is still asserted.
    pub fn eoi(&mut self, vector: u8) -> Messages {
        let mut out = Messages::new();
        for pin in 0..PINS {
            let e = self.entries[pin];
            if e as u8 == vector && e & entry::LEVEL != 0 && e & entry::REMOTE_IRR != 0 {
                self.entries[pin] &= !entry::REMOTE_IRR;
                if let Some(m) = self.service_level(pin) {
                    // At most one message per pin: cannot overflow.
                    let _ = out.push(m);
                }
            }
        }
        out
    }

    fn read_register(&self) -> u32 {
        let r = self.select;
        match r {
            reg::ID | reg::ARBITRATION => self.id,
            reg::VERSION => VERSION | ((PINS as u32 - 1) << 16),
            _ => match self.redirection(r) {
                Some((pin, false)) => self.entries[pin] as u32,
                Some((pin, true)) => (self.entries[pin] >> 32) as u32,
                None => 0,
            },
        }
    }

    /// The entry and half (`true`: high) register `r` selects.
    fn redirection(&self, r: u32) -> Option<(usize, bool)> {
        let i = r.checked_sub(reg::REDIRECTION)? as usize;
        (i < 2 * PINS).then_some((i / 2, i % 2 == 1))
    }

    fn write_register(&mut self, v: u32) -> Option<Message> {
        let r = self.select;
        if r == reg::ID {
            self.id = v & 0x0f00_0000;
            return None;
        }
        let (pin, high) = self.redirection(r)?;
        let old = self.entries[pin];
        let new = if high {
            (old & 0xffff_ffff) | ((v as u64) << 32)
        } else {
            (old & !0xffff_ffff) | v as u64
        };
        // Read-only bits (delivery status, remote IRR) keep their value.
        let mut e = (new & entry::WRITABLE) | (old & entry::REMOTE_IRR);
        if e & entry::LEVEL == 0 {
            e &= !entry::REMOTE_IRR;
        }
        self.entries[pin] = e;
        // Unmasking (or any change of) a level entry whose input is asserted sends it.
        self.service_level(pin)
    }

    /// A 32-bit MMIO read at `offset` in the IOAPIC's page.
    pub fn mmio_read(&mut self, offset: u32) -> u32 {
        match offset {
            offset::IOREGSEL => self.select,
            offset::IOWIN => self.read_register(),
            _ => 0,
        }
    }

    /// A 32-bit MMIO write at `offset`: returns the messages to send (an unmasked asserted
    /// level entry, or level entries re-sent by an EOI-register write).
    pub fn mmio_write(&mut self, offset: u32, value: u32) -> Messages {
        let mut out = Messages::new();
        match offset {
            offset::IOREGSEL => self.select = value & 0xff,
            offset::IOWIN => {
                if let Some(m) = self.write_register(value) {
                    let _ = out.push(m);
                }
            }
            offset::EOI => out = self.eoi(value as u8),
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests;
