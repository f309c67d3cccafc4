//! The ring-3 checks: which program each runs and how its end (the kernel's fault notice) is
//! judged. Names and order are those the `kernel` scenario has always printed.
#![forbid(unsafe_code)]

use core::fmt::Write;

use abi::ipc::{FaultNotice, FAULT_EXIT};
use heapless::String;

use crate::programs::{self, Program, REGISTER_NAMES};

/// Why a check failed.
pub type Why = String<160>;
/// A check's result.
pub type Outcome = Result<(), Why>;

/// A failure message: `what: detail`.
pub fn failure(what: &str, detail: &dyn core::fmt::Debug) -> Why {
    let mut s = String::new();
    let _ = write!(s, "{what}: {detail:?}");
    s
}

/// One check.
pub struct Check {
    pub name: &'static str,
    pub program: Program,
    /// Whether this CPU can run it (else it is reported as skipped).
    pub runs: fn() -> bool,
    pub judge: fn(&FaultNotice) -> Outcome,
}

fn always() -> bool {
    true
}

/// `Error::BadPointer` three times, one status a byte.
const BAD_POINTERS: u64 = (abi::Error::BadPointer as u64) * 0x01_0101;
/// Error codes of the page faults (present, write, user, instruction fetch).
const PF_NOT_PRESENT_READ: u64 = 0b100;
const PF_PROTECTION_WRITE: u64 = 0b111;
const PF_PROTECTION_READ: u64 = 0b101;
const PF_PROTECTION_FETCH: u64 = 0b10101;
const PAGE_FAULT: u64 = 14;
const GENERAL_PROTECTION: u64 = 13;

pub const CHECKS: &[Check] = &[
    Check {
        name: "user.debug_write",
        program: Program::Hello,
        runs: always,
        judge: |n| expect_exit(n, 0),
    },
    Check {
        // Kernel pointer, unmapped pointer, range running off a mapped page: BadPointer each.
        name: "user.debug_write_bad_pointers",
        program: Program::BadPointers,
        runs: always,
        judge: |n| expect_exit(n, BAD_POINTERS),
    },
    Check {
        name: "user.syscall_preserves_registers",
        program: Program::SyscallRegisters,
        runs: always,
        judge: expect_registers,
    },
    Check {
        // Preempted in ring 3 by a thread the timer woke: every register comes back.
        name: "user.timer_irq_preserves_registers",
        program: Program::TimerPreemption,
        runs: always,
        judge: |n| {
            if is_exit(n, 0xdead) {
                return Err(failure(
                    "no preemption from ring 3 within the spin budget",
                    &n.error_code,
                ));
            }
            expect_registers(n)
        },
    },
    Check {
        name: "user.page_fault_unmapped_read",
        program: Program::PageFaultRead,
        runs: always,
        judge: |n| {
            expect_fault(
                n,
                PAGE_FAULT,
                PF_NOT_PRESENT_READ,
                programs::NEVER_MAPPED,
                programs::pf_read_rip(),
            )
        },
    },
    Check {
        name: "user.page_fault_readonly_write",
        program: Program::PageFaultWriteRo,
        runs: always,
        judge: |n| {
            expect_fault(
                n,
                PAGE_FAULT,
                PF_PROTECTION_WRITE,
                programs::ro_target(),
                programs::pf_write_ro_rip(),
            )
        },
    },
    Check {
        name: "user.kernel_address_faults",
        program: Program::KernelRead,
        runs: always,
        judge: |n| {
            expect_fault(
                n,
                PAGE_FAULT,
                PF_PROTECTION_READ,
                programs::KERNEL_VA,
                programs::kernel_read_rip(),
            )
        },
    },
    Check {
        name: "user.nx_page_fetch_faults",
        program: Program::NxExec,
        runs: programs::cpu_has_nx,
        judge: |n| {
            let target = programs::nx_target();
            expect_fault(n, PAGE_FAULT, PF_PROTECTION_FETCH, target, target)
        },
    },
    Check {
        name: "user.privileged_instruction_gp",
        program: Program::PrivilegedCli,
        runs: always,
        judge: |n| {
            let rip = programs::cli_rip();
            expect_fault(n, GENERAL_PROTECTION, 0, rip, rip)
        },
    },
    Check {
        // A syscall whose return address is not canonical: the kernel must not return there
        // (`sysret`/`iretq` would fault in ring 0) but deliver a #GP at that address.
        name: "user.noncanonical_rip_gp",
        program: Program::NoncanonicalReturn,
        runs: always,
        judge: |n| {
            let rip = programs::NONCANONICAL_RIP;
            expect_fault(n, GENERAL_PROTECTION, 0, rip, rip)
        },
    },
    Check {
        // With CR4.UMIP, SGDT at CPL 3 is #GP(0); without it the program exits with 5.
        name: "user.umip_sgdt_gp",
        program: Program::UmipSgdt,
        runs: programs::cpu_has_umip,
        judge: |n| {
            let rip = programs::sgdt_rip();
            expect_fault(n, GENERAL_PROTECTION, 0, rip, rip)
        },
    },
    Check {
        // The program loads its data selector into DS, ES, FS and GS, yields, and exits with
        // the OR of the four selectors it finds after the syscall.
        name: "user.segment_registers_cleared",
        program: Program::Segments,
        runs: always,
        judge: |n| expect_exit(n, 0),
    },
    Check {
        // LSL on every selector from the first past the GDT to the last: each must fail
        // (ZF clear), or the GDT limit lets ring 3 read memory past the table as descriptors.
        // The program exits with the first selector LSL accepts, or 0.
        name: "user.no_selector_past_the_gdt",
        program: Program::LslSweep,
        runs: always,
        judge: |n| expect_exit(n, 0),
    },
];

fn is_exit(n: &FaultNotice, code: u64) -> bool {
    n.vector == FAULT_EXIT && n.error_code == code
}

fn describe(n: &FaultNotice) -> Why {
    let mut s = String::new();
    let _ = if n.vector == FAULT_EXIT {
        write!(s, "exit code {:#x}", n.error_code)
    } else {
        write!(
            s,
            "vector {} error {:#x} address {:#x} rip {:#x}",
            n.vector, n.error_code, n.address, n.rip
        )
    };
    s
}

fn expect_exit(n: &FaultNotice, code: u64) -> Outcome {
    if is_exit(n, code) {
        return Ok(());
    }
    let mut s = String::new();
    let _ = write!(s, "{}, expected exit code {code:#x}", describe(n));
    Err(s)
}

/// A register program's exit: 0, or the number of the register that changed.
fn expect_registers(n: &FaultNotice) -> Outcome {
    match (n.vector, n.error_code) {
        (FAULT_EXIT, 0) => Ok(()),
        (FAULT_EXIT, code @ 1..=16) => {
            Err(failure("register changed", &REGISTER_NAMES[code as usize]))
        }
        _ => expect_exit(n, 0),
    }
}

/// A fault: vector, error code, address (CR2 for a page fault, else `rip`) and `rip`.
fn expect_fault(n: &FaultNotice, vector: u64, error: u64, address: u64, rip: u64) -> Outcome {
    if n.vector == vector && n.error_code == error && n.address == address && n.rip == rip {
        return Ok(());
    }
    let mut s = String::new();
    let _ = write!(
        s,
        "{}, expected vector {vector} error {error:#x} address {address:#x} rip {rip:#x}",
        describe(n)
    );
    Err(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: u64) -> FaultNotice {
        FaultNotice {
            vector: FAULT_EXIT,
            error_code: code,
            ..FaultNotice::default()
        }
    }

    #[test]
    fn exits_are_judged_by_their_code() {
        assert!(expect_exit(&exit(0), 0).is_ok());
        let e = expect_exit(&exit(0x60606), 0).unwrap_err();
        assert_eq!(e.as_str(), "exit code 0x60606, expected exit code 0x0");
        assert_eq!(BAD_POINTERS, 0x06_0606);
        // A fault is no exit, whatever its error code.
        let fault = FaultNotice {
            vector: 14,
            ..FaultNotice::default()
        };
        assert!(expect_exit(&fault, 0).is_err());
    }

    #[test]
    fn register_programs_name_the_register_that_changed() {
        assert!(expect_registers(&exit(0)).is_ok());
        assert_eq!(
            expect_registers(&exit(9)).unwrap_err().as_str(),
            "register changed: \"r9\""
        );
        assert_eq!(
            expect_registers(&exit(16)).unwrap_err().as_str(),
            "register changed: \"rsp\""
        );
        assert!(expect_registers(&exit(0xdead)).is_err());
    }

    #[test]
    fn faults_must_match_in_every_field() {
        let n = FaultNotice {
            task: 3,
            generation: 1,
            vector: 14,
            error_code: 0b111,
            address: 0x40_2000,
            rip: 0x40_1000,
        };
        assert!(expect_fault(&n, 14, 0b111, 0x40_2000, 0x40_1000).is_ok());
        for (v, e, a, r) in [
            (13, 0b111, 0x40_2000, 0x40_1000),
            (14, 0b101, 0x40_2000, 0x40_1000),
            (14, 0b111, 0x40_3000, 0x40_1000),
            (14, 0b111, 0x40_2000, 0x40_1001),
        ] {
            assert!(expect_fault(&n, v, e, a, r).is_err());
        }
        assert!(expect_fault(&exit(0), 14, 0b111, 0x40_2000, 0x40_1000).is_err());
    }

    #[test]
    fn every_program_has_a_check_once() {
        let mut seen = [false; 13];
        for c in CHECKS {
            let i = c.program as usize;
            assert!(!seen[i], "{} runs a program twice", c.name);
            seen[i] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
