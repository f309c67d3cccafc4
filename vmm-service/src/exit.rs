//! Exit decoding: an [`ExitMessage`] becomes a typed [`Exit`], read per the SDM's
//! exit-qualification formats (vol. 3, "Exit Qualification for ..." tables).
//!
//! [`decode`] never panics: an exit whose needed state groups are missing from the message's
//! `mask`, or whose qualification is malformed, is an [`ExitError`].

use abi::vmx::{group, reason, ExitMessage, Gpr};

/// Direction of a port I/O access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDirection {
    In,
    Out,
}

/// What a control-register access exit did (exit qualification bits 5:4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrAccessKind {
    /// `MOV CRn, reg`: `gpr` indexes [`ExitMessage::gprs`] ([`Gpr`] order).
    MovTo {
        gpr: u8,
    },
    /// `MOV reg, CRn`.
    MovFrom {
        gpr: u8,
    },
    Clts,
    /// `LMSW`: the 16-bit source operand (only bits 3:0 matter).
    Lmsw {
        source_data: u16,
    },
}

/// A decoded exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// CPUID with EAX = `leaf`, ECX = `subleaf`.
    Cpuid {
        leaf: u32,
        subleaf: u32,
    },
    /// IN/OUT/INS/OUTS. `size` is 1, 2 or 4; `value` is the low `size` bytes of RAX for a
    /// non-string OUT, 0 otherwise.
    Io {
        port: u16,
        size: u8,
        direction: IoDirection,
        string: bool,
        rep: bool,
        value: u32,
    },
    /// RDMSR of ECX.
    Rdmsr {
        msr: u32,
    },
    /// WRMSR of ECX with EDX:EAX.
    Wrmsr {
        msr: u32,
        value: u64,
    },
    /// MOV to/from CRn, CLTS, LMSW.
    CrAccess {
        cr: u8,
        access: CrAccessKind,
    },
    Hlt,
    /// VMCALL: `nr` = RAX, `args` = RBX, RCX, RDX, RSI.
    Vmcall {
        nr: u64,
        args: [u64; 4],
    },
    /// EPT violation: the access (`read`/`write`/`fetch`) and what the translation allowed
    /// (`readable`/`writable`/`executable`, bits 3-5).
    EptViolation {
        gpa: u64,
        gla: Option<u64>,
        read: bool,
        write: bool,
        fetch: bool,
        readable: bool,
        writable: bool,
        executable: bool,
    },
    TripleFault,
    /// VM entry failed on invalid guest state (basic reason 33).
    InvalidGuestState,
    /// Another VM-entry failure (reason bit 31 set; MSR loading, machine check).
    EntryFailure {
        reason: u32,
    },
    /// Exception or NMI (interruption info bits 7:0 vector, bit 11 error code valid).
    Exception {
        vector: u8,
        error_code: Option<u32>,
    },
    ExternalInterrupt,
    /// Any other basic reason.
    Other {
        reason: u32,
    },
}

/// Why an exit message cannot be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitError {
    /// The message lacks state groups the reason needs (`need` is the full requirement,
    /// see [`required_groups`]).
    MissingGroups { reason: u32, need: u32 },
    /// I/O qualification with a size encoding other than 0, 1 or 3.
    BadIoSize { qualification: u64 },
}

/// Entry-failure bit of the full exit reason.
pub const ENTRY_FAILURE_BIT: u32 = 1 << 31;

/// The state groups [`decode`] needs for basic reason `basic` (and what the VM model needs to
/// handle it). The service binary can use this (plus [`group::RIP`] for reports) as the exit
/// portal mask.
#[inline]
pub fn required_groups(basic: u32) -> u32 {
    match basic {
        reason::CPUID | reason::WRMSR | reason::VMCALL => group::GPRS,
        // EFER as the kernel keeps it (LMA follows CR0.PG, which the MMU service handles for
        // a shadow-paged VM).
        reason::RDMSR => group::GPRS | group::CRS,
        reason::IO => group::QUAL | group::GPRS,
        reason::CR_ACCESS => group::QUAL | group::GPRS | group::CRS,
        reason::EPT_VIOLATION => group::QUAL | group::ADDR,
        reason::EXCEPTION_NMI => group::QUAL,
        reason::DR_ACCESS => crate::debugreg::GROUPS,
        _ => crate::insn::required_groups(basic),
    }
}

/// The portal mask the VMM service should ask for: the needed groups plus RIP (for reports).
pub fn portal_mask(basic: u32) -> u32 {
    required_groups(basic) | group::RIP
}

fn bit(v: u64, n: u32) -> bool {
    (v >> n) & 1 == 1
}

/// Decodes `m`; never panics.
pub fn decode(m: &ExitMessage) -> Result<Exit, ExitError> {
    let basic = m.basic_reason();
    if m.reason & ENTRY_FAILURE_BIT != 0 {
        return Ok(if basic == reason::INVALID_GUEST_STATE {
            Exit::InvalidGuestState
        } else {
            Exit::EntryFailure { reason: m.reason }
        });
    }
    let need = required_groups(basic);
    if m.mask & need != need {
        return Err(ExitError::MissingGroups {
            reason: m.reason,
            need,
        });
    }
    let g = |r: Gpr| m.gprs[r as usize];
    let q = m.qualification;
    Ok(match basic {
        reason::CPUID => Exit::Cpuid {
            leaf: g(Gpr::Rax) as u32,
            subleaf: g(Gpr::Rcx) as u32,
        },
        reason::IO => {
            let Some(size) = io_size(q) else {
                return Err(ExitError::BadIoSize { qualification: q });
            };
            let direction = if q & IO_IN != 0 {
                IoDirection::In
            } else {
                IoDirection::Out
            };
            let string = q & IO_STRING != 0;
            let value = if direction == IoDirection::Out && !string {
                (g(Gpr::Rax) & size_mask(size)) as u32
            } else {
                0
            };
            Exit::Io {
                port: (q >> 16) as u16,
                size,
                direction,
                string,
                rep: bit(q, 5),
                value,
            }
        }
        reason::RDMSR => Exit::Rdmsr {
            msr: g(Gpr::Rcx) as u32,
        },
        reason::WRMSR => Exit::Wrmsr {
            msr: g(Gpr::Rcx) as u32,
            value: (g(Gpr::Rdx) << 32) | (g(Gpr::Rax) & 0xffff_ffff),
        },
        reason::CR_ACCESS => {
            let gpr = ((q >> 8) & 0xf) as u8;
            let access = match (q >> 4) & 3 {
                0 => CrAccessKind::MovTo { gpr },
                1 => CrAccessKind::MovFrom { gpr },
                2 => CrAccessKind::Clts,
                _ => CrAccessKind::Lmsw {
                    source_data: (q >> 16) as u16,
                },
            };
            Exit::CrAccess {
                cr: (q & 0xf) as u8,
                access,
            }
        }
        reason::HLT => Exit::Hlt,
        reason::VMCALL => Exit::Vmcall {
            nr: g(Gpr::Rax),
            args: [g(Gpr::Rbx), g(Gpr::Rcx), g(Gpr::Rdx), g(Gpr::Rsi)],
        },
        reason::EPT_VIOLATION => Exit::EptViolation {
            gpa: m.gpa,
            gla: bit(q, 7).then_some(m.gla),
            read: bit(q, 0),
            write: bit(q, 1),
            fetch: bit(q, 2),
            readable: bit(q, 3),
            writable: bit(q, 4),
            executable: bit(q, 5),
        },
        reason::TRIPLE_FAULT => Exit::TripleFault,
        reason::INVALID_GUEST_STATE => Exit::InvalidGuestState,
        reason::EXCEPTION_NMI => Exit::Exception {
            vector: m.intr_info as u8,
            error_code: (m.intr_info & (1 << 11) != 0).then_some(m.intr_error),
        },
        reason::EXTERNAL_INTERRUPT => Exit::ExternalInterrupt,
        _ => Exit::Other { reason: m.reason },
    })
}

/// I/O exit qualification: the access is an IN.
pub const IO_IN: u64 = 1 << 3;
/// I/O exit qualification: a string instruction (INS/OUTS).
pub const IO_STRING: u64 = 1 << 4;

/// The size in bytes of an I/O exit's access (qualification bits 2:0); `None` if invalid.
pub fn io_size(qualification: u64) -> Option<u8> {
    match qualification & 7 {
        0 => Some(1),
        1 => Some(2),
        3 => Some(4),
        _ => None,
    }
}

/// All-ones mask of `size` bytes (1, 2, 4 or 8; anything else is treated as 8).
pub fn size_mask(size: u8) -> u64 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        4 => 0xffff_ffff,
        _ => u64::MAX,
    }
}

#[cfg(test)]
mod tests;
