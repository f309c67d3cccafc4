//! Pass/fail counts: what a `<name>: N passed, M failed` line or a `cargo test` result line
//! says, and their sums for `make test`'s last line, `N passed, M failed`. (An on-target
//! suite's own counter, which prints such lines, is `userlib::suite::Suite`.)
//!
//! What counts: every `test result:` line of `cargo test`, every scenario's
//! `<name>: N passed, M failed` line, and one per check step (fmt, clippy, each cargo
//! command's own status, each scenario verdict).

use std::fmt;
use std::ops::AddAssign;

use crate::judge::parse_counts;

/// Passed and failed counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassFail {
    /// Things that passed.
    pub passed: u64,
    /// Things that failed.
    pub failed: u64,
}

impl PassFail {
    /// Counts one check.
    pub fn add_check(&mut self, ok: bool) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
    }

    /// Whether nothing failed.
    pub fn ok(&self) -> bool {
        self.failed == 0
    }
}

impl AddAssign for PassFail {
    fn add_assign(&mut self, rhs: PassFail) {
        self.passed += rhs.passed;
        self.failed += rhs.failed;
    }
}

impl fmt::Display for PassFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} passed, {} failed", self.passed, self.failed)
    }
}

/// Parses one line of `cargo test` output:
/// `test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s`.
pub fn parse_cargo_result_line(line: &str) -> Option<PassFail> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let (_status, rest) = rest.split_once(". ")?;
    parse_counts(rest, "; ")
}

/// Sums every `test result:` line in a `cargo test` output; `None` when there is none.
pub fn sum_cargo_results(output: &str) -> Option<PassFail> {
    let mut total = None;
    for line in output.lines() {
        if let Some(t) = parse_cargo_result_line(line) {
            *total.get_or_insert_with(PassFail::default) += t;
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cargo_result_lines() {
        assert_eq!(
            parse_cargo_result_line(
                "test result: ok. 12 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s"
            ),
            Some(PassFail { passed: 12, failed: 0 })
        );
        assert_eq!(
            parse_cargo_result_line(
                "test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.20s"
            ),
            Some(PassFail { passed: 3, failed: 2 })
        );
        assert_eq!(parse_cargo_result_line("test foo ... ok"), None);
        assert_eq!(parse_cargo_result_line("test result: ok."), None);
        assert_eq!(parse_cargo_result_line("running 3 tests"), None);
    }

    #[test]
    fn sums_a_whole_cargo_test_run() {
        let out = "\
running 2 tests
test a ... ok
test b ... ok

test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

running 0 tests

test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

running 3 tests
test c ... FAILED
failures:
test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.03s
";
        assert_eq!(
            sum_cargo_results(out),
            Some(PassFail {
                passed: 4,
                failed: 1
            })
        );
        assert_eq!(sum_cargo_results("error[E0425]: cannot find value"), None);
    }

    #[test]
    fn final_line_format() {
        let mut t = PassFail::default();
        t.add_check(true);
        t.add_check(false);
        t += PassFail {
            passed: 10,
            failed: 0,
        };
        assert_eq!(t.to_string(), "11 passed, 1 failed");
        assert!(!t.ok());
    }
}
