//! Exceptions the VMM injects, delivered like hardware (SDM vol. 3, 6.3 "Sources of
//! interrupts", table 6-1 "Exceptions and interrupts", 6.15 "Exception and interrupt
//! reference", table 6-5 "Conditions for generating a double fault").
//!
//! [`injection`] turns "the instruction raises #v(error)" into the VM-entry interruption
//! information: the error code exactly for the vectors that push one (and only in protected
//! mode), RFLAGS.RF set for a fault (VM entry does not set it in the pushed image: KVM sets it
//! in the guest's RFLAGS before injecting, and so does Umbra), and the double-fault rules when
//! the exit interrupted the delivery of another exception. The CPU then delivers the event
//! through the guest's own IDT (or IVT in real mode). An exception a guest raises for itself
//! never reaches the VMM (the exception bitmap is empty but for shadow paging's #PF).

use abi::cpu::rflags;
use abi::vmx::{reply, ExitMessage, ExitReply};

pub const DE: u8 = 0;
pub const DB: u8 = 1;
pub const NMI: u8 = 2;
pub const BP: u8 = 3;
pub const OF: u8 = 4;
pub const BR: u8 = 5;
pub const UD: u8 = 6;
pub const NM: u8 = 7;
pub const DF: u8 = 8;
pub const TS: u8 = 10;
pub const NP: u8 = 11;
pub const SS: u8 = 12;
pub const GP: u8 = 13;
pub const PF: u8 = 14;
pub const MF: u8 = 16;
pub const AC: u8 = 17;
pub const MC: u8 = 18;
pub const XM: u8 = 19;
pub const VE: u8 = 20;
pub const CP: u8 = 21;

/// How an exception is reported (SDM table 6-1, "Type").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Reported before the instruction: the saved RIP is the faulting instruction's, and RF
    /// is set in the saved RFLAGS so that a code breakpoint there does not fire again.
    Fault,
    /// Reported after the instruction (#DB as Umbra raises it, #BP, #OF).
    Trap,
    /// #DF, #MC.
    Abort,
    /// NMI: an interrupt, not an exception.
    Interrupt,
}

/// The double-fault class (SDM table 6-4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Benign,
    Contributory,
    PageFault,
    DoubleFault,
}

pub fn kind(vector: u8) -> Kind {
    match vector {
        NMI => Kind::Interrupt,
        DB | BP | OF => Kind::Trap,
        DF | MC => Kind::Abort,
        _ => Kind::Fault, // reserved vectors included, as KVM treats them
    }
}

pub fn class(vector: u8) -> Class {
    match vector {
        DE | TS | NP | SS | GP => Class::Contributory,
        PF | VE => Class::PageFault,
        DF => Class::DoubleFault,
        _ => Class::Benign,
    }
}

/// Whether the exception pushes an error code (table 6-1): #DF, #TS, #NP, #SS, #GP, #PF, #AC,
/// #CP. Never in real mode (`protected` = CR0.PE).
pub fn has_error_code(vector: u8, protected: bool) -> bool {
    protected && matches!(vector, DF | TS | NP | SS | GP | PF | AC | CP)
}

/// What delivering `second` while `first` was being delivered gives (table 6-5): `second`
/// itself, a #DF(0), or a triple fault (`None`).
pub fn combine(first: u8, second: u8) -> Option<u8> {
    match (class(first), class(second)) {
        (Class::DoubleFault, Class::Contributory | Class::PageFault) => None,
        (Class::Contributory, Class::Contributory)
        | (Class::PageFault, Class::Contributory | Class::PageFault) => Some(DF),
        _ => Some(second),
    }
}

/// An exception to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injection {
    /// VM-entry interruption information (bit 31 valid, type 3 hardware exception, bit 11
    /// error code) | error code << 32, as [`ExitReply::inject`] takes it; and the guest's
    /// RFLAGS to set, when RF must be added.
    Event { inject: u64, rflags: Option<u64> },
    /// The exception cannot be delivered (an abort while delivering #DF): shutdown.
    TripleFault,
}

/// The guest state an injection depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guest {
    /// CR0.PE.
    pub protected: bool,
    /// RFLAGS, when known (the message's RIP group).
    pub rflags: Option<u64>,
    /// The exception whose delivery caused the exit (IDT-vectoring information of type 3
    /// "hardware exception"), if any.
    pub delivering: Option<u8>,
}

impl Guest {
    /// What the exit message tells: CR0.PE from the CRS group (protected mode assumed
    /// without it), RFLAGS from the RIP group, the interrupted delivery from the QUAL group.
    pub fn of(m: &ExitMessage) -> Guest {
        use abi::vmx::group;
        let has = |g: u32| m.mask & g != 0;
        let vectoring = m.idt_vectoring_info;
        let delivering =
            (has(group::QUAL) && vectoring & (1 << 31) != 0 && (vectoring >> 8) & 7 == 3)
                .then_some(vectoring as u8);
        Guest {
            protected: !has(group::CRS) || m.cr0_shadow & abi::cpu::cr0::PE != 0,
            rflags: has(group::RIP).then_some(m.rflags),
            delivering,
        }
    }
}

/// The injection of exception `vector` with `error` (used only if the vector has one in this
/// mode) for a guest in state `g`.
pub fn injection(vector: u8, error: u32, g: Guest) -> Injection {
    let vector = match g.delivering {
        Some(first) => match combine(first, vector) {
            Some(v) => v,
            None => return Injection::TripleFault,
        },
        None => vector,
    };
    // A #DF always pushes 0.
    let error = if vector == DF { 0 } else { error };
    let with_error = has_error_code(vector, g.protected);
    let info = (1u64 << 31) | (3 << 8) | u64::from(vector) | if with_error { 1 << 11 } else { 0 };
    let inject = if with_error {
        info | u64::from(error) << 32
    } else {
        info
    };
    let rflags = match kind(vector) {
        Kind::Fault => g.rflags.map(|f| f | rflags::RF),
        _ => None,
    };
    Injection::Event { inject, rflags }
}

/// A reply that injects `vector` (with `error`) for the exit `m`, without advancing RIP; a
/// triple fault is `None` (the caller stops the VM as the CPU would shut down).
pub fn reply(m: &ExitMessage, vector: u8, error: u32) -> Option<ExitReply> {
    match injection(vector, error, Guest::of(m)) {
        Injection::TripleFault => None,
        Injection::Event { inject, rflags } => {
            let mut r = ExitReply {
                flags: reply::INJECT,
                inject,
                ..ExitReply::default()
            };
            if let Some(f) = rflags {
                r.flags |= reply::SET_RFLAGS;
                r.rflags = f;
            }
            Some(r)
        }
    }
}

#[cfg(test)]
mod tests;
