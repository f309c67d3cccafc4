//! Counting a suite's checks: each prints `NAME: ok   WHAT` or `NAME: FAIL WHAT: DETAIL`, and
//! the counts make the suite's last line, `NAME: N passed, M failed`, which the harness reads.
#![forbid(unsafe_code)]

use core::fmt;

/// The checks of one suite so far.
#[derive(Debug)]
pub struct Tally {
    /// The suite's name, the first word of each line.
    pub name: &'static str,
    pub passed: u32,
    pub failed: u32,
}

impl Tally {
    pub const fn new(name: &'static str) -> Self {
        Tally {
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

    /// Prints `NAME: N passed, M failed`.
    pub fn summary(&self) {
        crate::println!(
            "{}: {} passed, {} failed",
            self.name,
            self.passed,
            self.failed
        );
    }
}
