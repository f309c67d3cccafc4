//! What the kernel and the `kernel-tests` task agree on: the task's boot-module name and its
//! start argument. In the `kernel` scenario the kernel runs its in-kernel checks, then starts
//! `kernel-tests` as the first task with the checks' tally (and what ring 3 cannot read
//! itself) in its start argument; the task runs the ring-3 checks and ends the scenario.
#![forbid(unsafe_code)]

/// The boot module (first word of its command line) the kernel starts in the `kernel`
/// scenario.
pub const MODULE: &str = "kernel-tests";

/// Bit 63 of a start argument: set, the task runs one test program (the low bits say which);
/// clear, it is the suite and the argument is a [`StartArg`].
pub const PROGRAM_FLAG: u64 = 1 << 63;

/// The `kernel-tests` suite's start argument, as the kernel passes it (in `rdi`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartArg {
    /// In-kernel checks that passed.
    pub passed: u16,
    /// In-kernel checks that failed.
    pub failed: u16,
    /// The first ring-3 selector past the end of the GDT (its limit + 1, RPL 3): with UMIP
    /// on, ring 3 cannot read the GDT's limit itself.
    pub first_selector_past_gdt: u16,
    /// The task's own boot-module index (each test program runs in a fresh copy of it).
    pub module: u8,
}

impl StartArg {
    /// Bits 0..16 `passed`, 16..32 `failed`, 32..48 the selector, 48..56 the module; bit 63
    /// clear.
    pub const fn encode(self) -> u64 {
        self.passed as u64
            | (self.failed as u64) << 16
            | (self.first_selector_past_gdt as u64) << 32
            | (self.module as u64) << 48
    }

    /// `None` for a program's argument ([`PROGRAM_FLAG`] set) or unknown bits.
    pub const fn decode(arg: u64) -> Option<StartArg> {
        if arg >> 56 != 0 {
            return None;
        }
        Some(StartArg {
            passed: arg as u16,
            failed: (arg >> 16) as u16,
            first_selector_past_gdt: (arg >> 32) as u16,
            module: (arg >> 48) as u8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_arg_round_trips_and_refuses_program_arguments() {
        let a = StartArg {
            passed: 23,
            failed: 1,
            first_selector_past_gdt: 0x3b,
            module: 2,
        };
        assert_eq!(a.encode(), 0x02_003b_0001_0017);
        assert_eq!(StartArg::decode(a.encode()), Some(a));
        assert_eq!(StartArg::decode(PROGRAM_FLAG | 3), None);
        assert_eq!(StartArg::decode(1 << 56), None);
    }
}
