//! An on-target test suite's checks: each prints `NAME: ok   WHAT` or `NAME: FAIL WHAT: DETAIL`,
//! and the counts make the suite's last line, `NAME: N passed, M failed`, which the harness
//! reads. (The harness's own sums of such lines are `umbra_tests::pass_fail::PassFail`.)
#![forbid(unsafe_code)]

use core::fmt;

/// One suite's checks so far: its name and how many passed and failed.
#[derive(Debug)]
pub struct Suite {
    /// The suite's name, the first word of each line.
    pub name: &'static str,
    pub passed: u32,
    pub failed: u32,
}

impl Suite {
    pub const fn new(name: &'static str) -> Self {
        Suite {
            name,
            passed: 0,
            failed: 0,
        }
    }

    /// Counts and prints one check.
    pub fn check(&mut self, what: &str, ok: bool, detail: fmt::Arguments<'_>) {
        if ok {
            self.passed += 1;
            crate::println!("{}: ok   {what}", self.name);
        } else {
            self.failed += 1;
            crate::println!("{}: FAIL {what}: {detail}", self.name);
        }
    }

    /// The scenario's exit code for these counts (what the suite asks the supervisor's
    /// `Shutdown` for): success iff nothing failed.
    pub fn exit_code(&self) -> abi::ExitCode {
        if self.failed == 0 {
            abi::ExitCode::Success
        } else {
            abi::ExitCode::Failure
        }
    }

    /// Prints `NAME: N passed, M failed`.
    pub fn summary(&self) {
        self.summary_as(self.name);
    }

    /// Prints `SCENARIO: N passed, M failed`: the verdict line of a suite whose checks run
    /// under one name for several scenarios (`fuzz` serves `fuzz` and `fuzz-vm`).
    pub fn summary_as(&self, scenario: &str) {
        crate::println!("{scenario}: {} passed, {} failed", self.passed, self.failed);
    }
}
