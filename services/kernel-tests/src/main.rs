//! `kernel-tests`: the ring-3 checks of the `kernel` scenario, as an ordinary task.
//!
//! The kernel runs its in-kernel checks, then starts this boot module as the first task (in
//! place of the supervisor) with their tally in the start argument
//! ([`abi::ktests::StartArg`]). For each check the suite spawns a copy of its own module
//! running one test program ([`programs`]), with an endpoint of its own as the fault
//! endpoint: a program that exits or faults ends its task, and the kernel's fault notice
//! tells how (exit code, or vector, error code, address and `rip`), which [`checks`] judges.
//! Each check prints `  ok   NAME` or `  FAIL NAME: WHY`; the last line is
//! `kernel: N passed, M failed` (the kernel's checks included), and the suite ends the
//! scenario with `MachineExit`.
#![cfg_attr(target_os = "none", no_std, no_main)]
// `unsafe` only in `programs` (its `global_asm!`); every other module is safe code.
#![deny(unsafe_code)]
// A failure carries its message inline (no heap), as in the kernel's self-tests; size is no
// concern off the hot path.
#![allow(clippy::result_large_err)]

mod checks;
// On the host the programs are not assembled: what only their assembly uses is unused there
// (the target's build and clippy see it used).
#[allow(unsafe_code)]
#[cfg_attr(not(target_os = "none"), allow(dead_code, unused_imports))]
mod programs;

use abi::cap::slot;
use abi::ipc::{FaultNotice, FAULT_LABEL, MAX_PAYLOAD};
use abi::ktests::StartArg;
use abi::{CapSlot, ExitCode};
use checks::{Why, CHECKS};
use programs::Program;
use userlib::sys;

/// The suite's entry (called by `_start` in [`programs`] for a start argument without
/// [`abi::ktests::PROGRAM_FLAG`]).
#[cfg_attr(not(target_os = "none"), allow(dead_code))]
extern "C" fn suite_entry(arg: u64) -> ! {
    userlib::rt::run(arg, suite)
}

#[cfg(not(target_os = "none"))]
fn main() {
    let _entry: extern "C" fn(u64) -> ! = suite_entry;
}

/// What every program run needs.
struct Runner {
    /// This boot module's index (each program runs in a fresh copy of it).
    module: u64,
    /// The fault endpoint of the program tasks (the suite receives on it).
    fault_ep: CapSlot,
    /// The generation of the last program task (one per run, to match its notice).
    generation: u64,
}

impl Runner {
    /// Runs `program` in a new task and waits for the notice of its end.
    fn run(&mut self, program: Program, param: u16) -> Result<FaultNotice, Why> {
        self.generation += 1;
        let fail = |what: &str, e: &dyn core::fmt::Debug| Err(checks::failure(what, e));
        let task = match sys::task_spawn(
            slot::SPAWN,
            self.module,
            self.generation,
            programs::TASK_PRIORITY,
            self.fault_ep,
        ) {
            Ok(t) => t,
            Err(e) => return fail("task_spawn", &e),
        };
        let pages = programs::pages(program);
        let started = if pages > 0 {
            sys::task_set_pages(task, pages).map(drop)
        } else {
            Ok(())
        }
        .and_then(|()| sys::task_start(task, programs::start_arg(program, param)));
        if let Err(e) = started {
            let _ = sys::task_kill(task);
            let _ = sys::cap_delete(task);
            return fail("starting the task", &e);
        }
        let mut buf = [0u8; MAX_PAYLOAD];
        let got = sys::recv(self.fault_ep, &mut buf);
        // The task is gone (it ended with the notice); its capability is stale.
        let _ = sys::cap_delete(task);
        let msg = match got {
            Ok(m) => m,
            Err(e) => return fail("recv on the fault endpoint", &e),
        };
        let notice = FaultNotice::from_bytes(&buf[..msg.len.min(buf.len())]);
        match notice {
            Some(n) if msg.label == FAULT_LABEL && n.generation == self.generation => Ok(n),
            _ => fail(
                "not the program's fault notice",
                &(msg.label, msg.len, notice),
            ),
        }
    }
}

fn suite(arg: u64) {
    let Some(start) = StartArg::decode(arg) else {
        userlib::println!("kernel-tests: start argument {arg:#x} is not the kernel's tally");
        end(ExitCode::Failure)
    };
    let mut tally = (u32::from(start.passed), u32::from(start.failed));
    let Ok(fault_ep) = sys::endpoint_create() else {
        userlib::println!("kernel-tests: no endpoint for the programs' fault notices");
        end(ExitCode::Failure)
    };
    let mut runner = Runner {
        module: u64::from(start.module),
        fault_ep,
        generation: 0,
    };
    for check in CHECKS {
        if !(check.runs)() {
            userlib::println!("  skip {}: not supported by this CPU", check.name);
            continue;
        }
        let param = if check.program == Program::LslSweep {
            start.first_selector_past_gdt
        } else {
            0
        };
        let outcome = runner
            .run(check.program, param)
            .and_then(|notice| (check.judge)(&notice));
        match outcome {
            Ok(()) => {
                tally.0 += 1;
                userlib::println!("  ok   {}", check.name);
            }
            Err(why) => {
                tally.1 += 1;
                userlib::println!("  FAIL {}: {why}", check.name);
            }
        }
    }
    userlib::println!("kernel: {} passed, {} failed", tally.0, tally.1);
    end(if tally.1 == 0 {
        ExitCode::Success
    } else {
        ExitCode::Failure
    })
}

/// Ends the scenario (the machine capability is the first task's).
fn end(code: ExitCode) -> ! {
    let e = sys::machine_exit(slot::MACHINE, code as u64);
    userlib::println!("kernel-tests: machine_exit failed: {e:?}");
    sys::task_exit(1)
}
