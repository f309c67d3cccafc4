//! Interrupt messages between APICs: what an ICR write sends ([`Ipi`]), what an IOAPIC
//! redirection entry sends ([`Message`]), and which local APICs a message reaches
//! ([`Lapic::matches`](super::Lapic::matches), [`targets`]).
//!
//! Destinations (SDM vol. 3, 11.6.2 and 11.12.10):
//! - physical: the APIC ID (8 bits in xAPIC mode, 32 in x2APIC mode); the all-ones ID of the
//!   message's format is a broadcast;
//! - logical, xAPIC flat model (DFR bits 31:28 = 1111): the 8-bit destination ANDed with
//!   LDR bits 31:24;
//! - logical, xAPIC cluster model (DFR bits 31:28 = 0000): destination bits 7:4 equal to
//!   LDR bits 31:28 and destination bits 3:0 ANDed with LDR bits 27:24; 0xff is a broadcast;
//! - logical, x2APIC: destination bits 31:16 equal to the cluster (LDR bits 31:16) and
//!   destination bits 15:0 ANDed with LDR bits 15:0, where the LDR is derived from the
//!   x2APIC ID ([`x2apic_ldr`]); 0xffff_ffff is a broadcast.

use super::Lapic;

/// Delivery mode (ICR, LVT and redirection-entry bits 10:8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryMode {
    Fixed,
    LowestPriority,
    Smi,
    Nmi,
    Init,
    Sipi,
    ExtInt,
    /// Encodings 3 (reserved) and, outside the ICR, 6.
    Reserved(u8),
}

impl DeliveryMode {
    /// Decodes bits 10:8 of an ICR, LVT or redirection entry.
    pub fn from_bits(reg: u64) -> DeliveryMode {
        match (reg >> 8) & 7 {
            0 => DeliveryMode::Fixed,
            1 => DeliveryMode::LowestPriority,
            2 => DeliveryMode::Smi,
            4 => DeliveryMode::Nmi,
            5 => DeliveryMode::Init,
            6 => DeliveryMode::Sipi,
            7 => DeliveryMode::ExtInt,
            m => DeliveryMode::Reserved(m as u8),
        }
    }
}

/// The ICR's destination shorthand (bits 19:18).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shorthand {
    /// Use the destination field.
    None,
    SelfOnly,
    AllIncludingSelf,
    AllExcludingSelf,
}

/// Which destination encoding a message uses: 8-bit (xAPIC ICR, IOAPIC) or 32-bit (x2APIC
/// ICR). It decides which destination value is the broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestFormat {
    XApic,
    X2Apic,
}

impl DestFormat {
    /// The destination that reaches every local APIC.
    pub fn broadcast(self) -> u32 {
        match self {
            DestFormat::XApic => 0xff,
            DestFormat::X2Apic => u32::MAX,
        }
    }
}

/// An interrupt message on the APIC bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message {
    pub dest: u32,
    pub format: DestFormat,
    /// Logical destination mode (ICR/redirection-entry bit 11).
    pub logical: bool,
    pub mode: DeliveryMode,
    pub vector: u8,
    /// Level: assert (`true`) or de-assert (ICR bit 14; always `true` from an IOAPIC).
    pub level: bool,
    /// Level-triggered (bit 15).
    pub level_triggered: bool,
}

/// An inter-processor interrupt sent by a write of the ICR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipi {
    pub message: Message,
    pub shorthand: Shorthand,
    /// The sender's APIC ID (for the self shorthands).
    pub source: u32,
}

/// The x2APIC logical ID of x2APIC ID `id` (SDM 11.12.10.2): cluster `id >> 4` in bits 31:16,
/// bit `id & 15` set in bits 15:0.
pub fn x2apic_ldr(id: u32) -> u32 {
    ((id >> 4) << 16) | (1 << (id & 0xf))
}

impl Lapic {
    /// Whether this local APIC is a destination of `msg` (ignoring shorthands). A hardware-
    /// disabled APIC accepts nothing.
    pub fn matches(&self, msg: &Message) -> bool {
        let x2 = match self.mode() {
            super::ApicMode::Disabled => return false,
            super::ApicMode::XApic => false,
            super::ApicMode::X2Apic => true,
        };
        if msg.dest == msg.format.broadcast() {
            return true;
        }
        if !msg.logical {
            return msg.dest == self.apic_id();
        }
        let ldr = self.ldr();
        if x2 {
            return (msg.dest >> 16) == (ldr >> 16) && (msg.dest & ldr & 0xffff) != 0;
        }
        let logical = ldr >> 24;
        let dest = msg.dest & 0xff;
        if self.dfr_flat() {
            dest & logical != 0
        } else {
            (dest >> 4) == (logical >> 4) && (dest & logical & 0xf) != 0
        }
    }

    /// Whether this local APIC receives `ipi`, taking the shorthand into account.
    pub fn receives(&self, ipi: &Ipi) -> bool {
        if self.mode() == super::ApicMode::Disabled {
            return false;
        }
        let me = self.apic_id() == ipi.source;
        match ipi.shorthand {
            Shorthand::None => self.matches(&ipi.message),
            Shorthand::SelfOnly => me,
            Shorthand::AllIncludingSelf => true,
            Shorthand::AllExcludingSelf => !me,
        }
    }
}

/// The local APICs (by index in `lapics`, as a bit mask) that `ipi` reaches. Lowest-priority
/// delivery picks the one matching APIC with the lowest arbitration priority (the first of
/// equals); every other mode reaches all matching APICs. At most 32 APICs are considered.
pub fn targets(lapics: &[Lapic], ipi: &Ipi) -> u32 {
    let mut mask = 0u32;
    for (i, l) in lapics.iter().enumerate().take(32) {
        if l.receives(ipi) {
            mask |= 1 << i;
        }
    }
    if ipi.message.mode != DeliveryMode::LowestPriority || mask == 0 {
        return mask;
    }
    let best = lapics
        .iter()
        .enumerate()
        .take(32)
        .filter(|(i, _)| mask & (1 << i) != 0)
        .min_by_key(|(i, l)| (l.apr(), *i))
        .map(|(i, _)| i);
    best.map_or(0, |i| 1 << i)
}

/// [`targets`] for a message without a shorthand (an IOAPIC or MSI message).
pub fn message_targets(lapics: &[Lapic], msg: &Message) -> u32 {
    targets(
        lapics,
        &Ipi {
            message: *msg,
            shorthand: Shorthand::None,
            source: u32::MAX,
        },
    )
}
