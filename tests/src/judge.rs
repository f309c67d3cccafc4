//! Judging a scenario from its serial log (and, for QEMU, its exit status).
//!
//! The kernel's contract: a scenario ends with a line `<scenario>: N passed, M failed`, then
//! `umbra: exit <code>` (see [`abi::ExitCode`]); a CPU exception prints a line starting
//! `EXCEPTION` and a register dump, then exits with code 3.

use abi::ExitCode;

use crate::emu::Emu;
use crate::pass_fail::PassFail;
use crate::scenarios::Expect;

/// Turns raw console bytes into plain text: drops terminal escape sequences (GRUB clears the
/// screen on the serial line), carriage returns and other control characters.
pub fn clean_console(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates, then one final byte in 0x40..=0x7e.
                Some('[') => {
                    for d in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&d) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ESC '\'.
                Some(']') => {
                    while let Some(d) = chars.next() {
                        if d == '\u{7}' {
                            break;
                        }
                        if d == '\u{1b}' {
                            chars.next();
                            break;
                        }
                    }
                }
                // Character-set designation: ESC ( B and friends.
                Some('(' | ')' | '*' | '+') => {
                    chars.next();
                }
                // Any other escape is two characters long.
                _ => {}
            },
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// What a serial log says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// The code of the last `umbra: exit <code>` line.
    pub exit_code: Option<u32>,
    /// The last `<scenario>: N passed, M failed` line.
    pub summary: Option<PassFail>,
    /// The first line of an exception report (`EXCEPTION ...`).
    pub exception: Option<String>,
    /// Whether register-dump lines follow the exception line.
    pub register_dump: bool,
    /// The first line reporting a kernel panic.
    pub panic: Option<String>,
    /// Whether the log has any non-blank line at all.
    pub any_output: bool,
}

/// Reads the facts out of a cleaned serial log for `scenario`.
pub fn read_facts(log: &str, scenario: &str) -> Facts {
    let mut f = Facts::default();
    let mut exception_at = None;
    for (i, line) in log.lines().enumerate() {
        let t = line.trim();
        if !t.is_empty() {
            f.any_output = true;
        }
        if let Some(code) = parse_exit_line(t) {
            f.exit_code = Some(code);
        }
        if let Some(c) = parse_summary(t, scenario) {
            f.summary = Some(c);
        }
        if f.exception.is_none() && is_exception_line(t) {
            f.exception = Some(t.to_string());
            exception_at = Some(i);
        }
        // Task output is prefixed `[task] `: a user task's panic (reported by the kernel and
        // handled by the supervisor) is not a kernel panic.
        let task_output = t.starts_with('[');
        if f.panic.is_none() && !task_output && (t.contains("panicked at") || t.contains("PANIC")) {
            f.panic = Some(t.to_string());
        }
    }
    if let Some(at) = exception_at {
        f.register_dump = log
            .lines()
            .skip(at + 1)
            .take(40)
            .any(|l| l.contains("RAX") || l.contains("rax"));
    }
    f
}

/// `EXCEPTION` at the start of the line, possibly after a `[level subsystem]` log prefix.
fn is_exception_line(t: &str) -> bool {
    let rest = match t.strip_prefix('[') {
        Some(r) => r.split_once(']').map_or(t, |(_, after)| after.trim_start()),
        None => t,
    };
    rest.starts_with("EXCEPTION")
}

/// Parses `umbra: exit <code>` (possibly after a log prefix).
pub fn parse_exit_line(t: &str) -> Option<u32> {
    let at = find_token(t, "umbra: exit ")?;
    let rest = &t[at + "umbra: exit ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty()
        || rest[digits.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
    {
        return None;
    }
    digits.parse().ok()
}

/// Parses `<name>: N passed, M failed` (possibly after a log prefix; `name` must not be the
/// tail of a longer word such as `mykernel`).
pub fn parse_summary(t: &str, name: &str) -> Option<PassFail> {
    let key = format!("{name}: ");
    let mut from = 0;
    let mut found = None;
    while let Some(rel) = find_token(&t[from..], &key) {
        let at = from + rel;
        let rest = &t[at + key.len()..];
        if let Some(c) = parse_counts(rest, ", ") {
            found = Some(c);
        }
        from = at + key.len();
    }
    found
}

/// Parses `N passed<sep>M failed` at the start of `s`.
pub(crate) fn parse_counts(s: &str, sep: &str) -> Option<PassFail> {
    let (passed, rest) = leading_number(s)?;
    let rest = rest.strip_prefix(" passed")?.strip_prefix(sep)?;
    let (failed, rest) = leading_number(rest)?;
    rest.strip_prefix(" failed")?;
    Some(PassFail { passed, failed })
}

fn leading_number(s: &str) -> Option<(u64, &str)> {
    let n = s.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 {
        return None;
    }
    Some((s[..n].parse().ok()?, &s[n..]))
}

/// Finds `key` in `t` where it starts a word (start of line or after a non-word character).
fn find_token(t: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(rel) = t[from..].find(key) {
        let at = from + rel;
        let before = t[..at].chars().next_back();
        if before.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// How the emulator run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The emulator exited by itself with this status (`None`: killed by a signal).
    Exited(Option<i32>),
    /// The harness stopped it after this many seconds.
    TimedOut(u64),
}

/// The harness' verdict on one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the scenario itself passed (exit 0, summary with 0 failed, status agrees).
    pub scenario_passed: bool,
    /// Whether the harness' check passed: the scenario passed, or (for an expected crash)
    /// it was judged a failure *and* the log holds the exception report.
    pub check_passed: bool,
    /// Why the scenario failed (or, for an expected crash, why the check failed).
    pub reasons: Vec<String>,
    /// One-line description of what was seen.
    pub seen: String,
    /// What this run adds to the `make test` total.
    pub tally: PassFail,
}

fn exit_code_name(code: u32) -> &'static str {
    match code {
        c if c == ExitCode::Success as u32 => "success",
        c if c == ExitCode::Failure as u32 => "failure",
        c if c == ExitCode::UnknownScenario as u32 => "unknown scenario",
        c if c == ExitCode::Crash as u32 => "crash/exception",
        _ => "unknown exit code",
    }
}

/// Judges one run of `scenario` on `emu`.
pub fn judge(scenario: &str, expect: Expect, emu: Emu, facts: &Facts, end: &End) -> Verdict {
    let mut reasons = Vec::new();
    match end {
        End::TimedOut(secs) => reasons.push(format!(
            "timed out after {secs} s: the emulator was stopped"
        )),
        End::Exited(_) => {}
    }
    if !facts.any_output {
        reasons.push(
            "the serial log is empty: nothing reached COM1 (see the emulator messages above)"
                .into(),
        );
    }
    match facts.exit_code {
        None => reasons.push("no `umbra: exit <code>` line in the serial log".into()),
        Some(0) => {}
        Some(c) => reasons.push(format!("`umbra: exit {c}` ({})", exit_code_name(c))),
    }
    match facts.summary {
        None => reasons.push(format!(
            "no `{scenario}: N passed, M failed` line in the serial log"
        )),
        Some(c) if c.failed > 0 => reasons.push(format!(
            "{scenario}: {} passed, {} failed",
            c.passed, c.failed
        )),
        Some(c) if c.passed == 0 => {
            reasons.push(format!("{scenario}: 0 passed, 0 failed: no checks ran"))
        }
        Some(_) => {}
    }
    if let Some(line) = &facts.exception {
        reasons.push(format!("crash report: {line}"));
    }
    if let Some(line) = &facts.panic {
        reasons.push(format!("panic: {line}"));
    }
    if emu.exit_status_is_meaningful() {
        if let End::Exited(status) = end {
            match (status, facts.exit_code) {
                (Some(s), Some(code))
                    if u64::try_from(*s) == Ok(abi::qemu_debug_exit_status(code)) => {}
                (Some(0), _) => reasons.push(
                    "QEMU exited with status 0: the guest reset or powered off without isa-debug-exit \
                     (a triple fault ends QEMU this way with -no-reboot)"
                        .into(),
                ),
                (Some(s), Some(code)) if s & 1 == 1 => reasons.push(format!(
                    "QEMU exit status {s} means isa-debug-exit code {}, but the log says `umbra: exit {code}`",
                    s >> 1
                )),
                (Some(s), None) if s & 1 == 1 => {
                    reasons.push(format!("QEMU exit status {s}: isa-debug-exit code {}", s >> 1))
                }
                (Some(s), _) => reasons.push(format!("QEMU failed with status {s}")),
                (None, _) => reasons.push("QEMU was killed by a signal".into()),
            }
        }
    }
    let scenario_passed = reasons.is_empty();

    let mut seen = Vec::new();
    if let Some(c) = facts.summary {
        seen.push(format!(
            "{scenario}: {} passed, {} failed",
            c.passed, c.failed
        ));
    }
    if let Some(code) = facts.exit_code {
        seen.push(format!("umbra: exit {code}"));
    }
    if facts.exception.is_some() {
        seen.push("exception report".into());
    }
    if let End::TimedOut(secs) = end {
        seen.push(format!("timeout after {secs} s"));
    }
    if seen.is_empty() {
        seen.push("no result lines".into());
    }
    let seen = seen.join("; ");

    match expect {
        Expect::Pass => {
            let mut tally = PassFail::default();
            if let Some(c) = facts.summary {
                tally.passed += c.passed;
                tally.failed += c.failed;
            }
            tally.add_check(scenario_passed);
            Verdict {
                scenario_passed,
                check_passed: scenario_passed,
                reasons,
                seen,
                tally,
            }
        }
        Expect::Crash => {
            let mut why = Vec::new();
            if scenario_passed {
                why.push("expected a crash, but the scenario passed".to_string());
            }
            if facts.exception.is_none() {
                why.push(
                    "no exception report (a line starting `EXCEPTION`) in the serial log".into(),
                );
            } else if !facts.register_dump {
                why.push("the exception report has no register dump".into());
            }
            if facts.exit_code != Some(ExitCode::Crash as u32) {
                why.push(match facts.exit_code {
                    Some(c) => format!("expected `umbra: exit 3`, got `umbra: exit {c}`"),
                    None => "expected `umbra: exit 3`, found no `umbra: exit` line".into(),
                });
            }
            if let End::TimedOut(secs) = end {
                why.push(format!(
                    "timed out after {secs} s: the emulator was stopped"
                ));
            }
            if emu.exit_status_is_meaningful() {
                if let End::Exited(status) = end {
                    if *status != Some(ExitCode::Crash.qemu_status()) {
                        why.push(format!(
                            "expected QEMU exit status {} (isa-debug-exit code 3), got {status:?}",
                            ExitCode::Crash.qemu_status()
                        ));
                    }
                }
            }
            let check_passed = why.is_empty();
            let mut tally = PassFail::default();
            tally.add_check(check_passed);
            Verdict {
                scenario_passed,
                check_passed,
                reasons: why,
                seen,
                tally,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str =
        "\u{1b}[H\u{1b}[J\u{1b}[1;1H  Booting `Umbra (harness): scenario=kernel'\r\n\r\n\
        umbra 0.1.0: booting\r\n\
        vmx: not available (cpuid.1:ecx.vmx = 0)\r\n\
        [INFO  test] frame allocator ... ok\r\n\
        kernel: 12 passed, 0 failed\r\n\
        umbra: exit 0\r\n";

    const CRASH: &str = "umbra 0.1.0: booting\n\
        EXCEPTION #PF page fault, error 0x2, RIP 0xffffffff80001234, CR2 0xdead0000\n\
        RAX 0000000000000000 RBX 0000000000000001\n\
        RCX 0000000000000000 RDX 0000000000000001\n\
        umbra: exit 3\n";

    fn facts(raw: &str, scenario: &str) -> Facts {
        read_facts(&clean_console(raw.as_bytes()), scenario)
    }

    #[test]
    fn a_task_panic_is_not_a_kernel_panic() {
        let log = "[echo] panic: panicked at services/echo/src/main.rs:1:1: asked to\n\
                   ipc: 3 passed, 0 failed\numbra: exit 0\n";
        assert_eq!(facts(log, "ipc").panic, None);
        let log = "PANIC: panicked at microkernel/src/main.rs:1:1\numbra: exit 3\n";
        assert!(facts(log, "ipc").panic.is_some());
    }

    #[test]
    fn cleaning_drops_escapes_and_carriage_returns() {
        let s =
            clean_console(b"\x1b[H\x1b[J\x1b[1;1H  Booting\r\n\x1b]0;title\x07ok\x1b(B\r\n\x00x");
        assert_eq!(s, "  Booting\nok\nx");
        assert_eq!(clean_console(b"a\xffb"), "a\u{fffd}b");
    }

    #[test]
    fn exit_line_parsing() {
        assert_eq!(parse_exit_line("umbra: exit 0"), Some(0));
        assert_eq!(parse_exit_line("[INFO  boot] umbra: exit 3"), Some(3));
        assert_eq!(parse_exit_line("umbra: exit 12 "), Some(12));
        assert_eq!(parse_exit_line("umbra: exit "), None);
        assert_eq!(parse_exit_line("umbra: exit 1x"), None);
        assert_eq!(parse_exit_line("notumbra: exit 0"), None);
        assert_eq!(parse_exit_line("umbra: exiting"), None);
    }

    #[test]
    fn summary_parsing() {
        let c = |p, f| {
            Some(PassFail {
                passed: p,
                failed: f,
            })
        };
        assert_eq!(
            parse_summary("kernel: 12 passed, 0 failed", "kernel"),
            c(12, 0)
        );
        assert_eq!(
            parse_summary("[INFO  test] kernel: 3 passed, 2 failed", "kernel"),
            c(3, 2)
        );
        assert_eq!(
            parse_summary("mykernel: 3 passed, 2 failed", "kernel"),
            None
        );
        assert_eq!(
            parse_summary("bench-kernel: 3 passed, 2 failed", "kernel"),
            None
        );
        assert_eq!(parse_summary("kernel: 3 passed", "kernel"), None);
        assert_eq!(
            parse_summary("kernel: frame allocator 3 passed, 0 failed", "kernel"),
            None
        );
        assert_eq!(parse_summary("ipc: 1 passed, 0 failed", "kernel"), None);
        assert_eq!(
            parse_summary("x kernel: boot; kernel: 5 passed, 1 failed", "kernel"),
            c(5, 1)
        );
    }

    #[test]
    fn good_log_passes() {
        let f = facts(GOOD, "kernel");
        assert_eq!(f.exit_code, Some(0));
        assert_eq!(
            f.summary,
            Some(PassFail {
                passed: 12,
                failed: 0
            })
        );
        let v = judge("kernel", Expect::Pass, Emu::Qemu, &f, &End::Exited(Some(1)));
        assert!(v.scenario_passed && v.check_passed, "{:?}", v.reasons);
        assert_eq!(
            v.tally,
            PassFail {
                passed: 13,
                failed: 0
            }
        );
        let v = judge(
            "kernel",
            Expect::Pass,
            Emu::Bochs,
            &f,
            &End::Exited(Some(1)),
        );
        assert!(v.check_passed);
    }

    #[test]
    fn qemu_status_must_agree() {
        let f = facts(GOOD, "kernel");
        let v = judge("kernel", Expect::Pass, Emu::Qemu, &f, &End::Exited(Some(0)));
        assert!(!v.scenario_passed);
        assert!(v.reasons[0].contains("status 0"), "{:?}", v.reasons);
        let v = judge("kernel", Expect::Pass, Emu::Kvm, &f, &End::Exited(Some(3)));
        assert!(!v.scenario_passed);
        assert!(v.reasons[0].contains("code 1"), "{:?}", v.reasons);
        // Bochs' status is always 1 after the Shutdown port; it is ignored.
        assert!(
            judge(
                "kernel",
                Expect::Pass,
                Emu::Bochs,
                &f,
                &End::Exited(Some(1))
            )
            .scenario_passed
        );
    }

    #[test]
    fn failures_are_explained() {
        let f = facts("kernel: 10 passed, 2 failed\numbra: exit 1\n", "kernel");
        let v = judge("kernel", Expect::Pass, Emu::Qemu, &f, &End::Exited(Some(3)));
        assert!(!v.check_passed);
        assert!(
            v.reasons
                .iter()
                .any(|r| r.contains("`umbra: exit 1` (failure)")),
            "{:?}",
            v.reasons
        );
        assert!(v.reasons.iter().any(|r| r == "kernel: 10 passed, 2 failed"));
        assert_eq!(
            v.tally,
            PassFail {
                passed: 10,
                failed: 3
            }
        );

        let f = facts("umbra 0.1.0: booting\n", "kernel");
        let v = judge("kernel", Expect::Pass, Emu::Bochs, &f, &End::TimedOut(120));
        assert!(v.reasons[0].starts_with("timed out after 120 s"));
        assert!(v
            .reasons
            .iter()
            .any(|r| r.contains("no `umbra: exit <code>` line")));
        assert!(v
            .reasons
            .iter()
            .any(|r| r.contains("no `kernel: N passed, M failed` line")));
        assert_eq!(
            v.tally,
            PassFail {
                passed: 0,
                failed: 1
            }
        );

        let f = facts("", "kernel");
        let v = judge(
            "kernel",
            Expect::Pass,
            Emu::Bochs,
            &f,
            &End::Exited(Some(1)),
        );
        assert!(v.reasons[0].contains("empty"));
    }

    #[test]
    fn zero_checks_is_not_a_pass() {
        let f = facts("kernel: 0 passed, 0 failed\numbra: exit 0\n", "kernel");
        assert!(
            !judge(
                "kernel",
                Expect::Pass,
                Emu::Bochs,
                &f,
                &End::Exited(Some(1))
            )
            .scenario_passed
        );
    }

    #[test]
    fn exit_zero_without_summary_fails() {
        let f = facts("umbra: exit 0\n", "kernel");
        assert!(
            !judge("kernel", Expect::Pass, Emu::Qemu, &f, &End::Exited(Some(1))).scenario_passed
        );
    }

    #[test]
    fn crash_report_is_found() {
        let f = facts(CRASH, "fault-selftest");
        assert!(f.exception.as_deref().unwrap().starts_with("EXCEPTION #PF"));
        assert!(f.register_dump);
        let f2 = facts("[ERROR exc] EXCEPTION #GP\n[ERROR exc] RAX 0\n", "x");
        assert!(f2.exception.is_some() && f2.register_dump);
        assert!(facts("no exception here; EXCEPTIONAL\n", "x")
            .exception
            .is_none());
    }

    #[test]
    fn expected_crash_is_a_harness_pass() {
        let f = facts(CRASH, "fault-selftest");
        let v = judge(
            "fault-selftest",
            Expect::Crash,
            Emu::Qemu,
            &f,
            &End::Exited(Some(7)),
        );
        assert!(!v.scenario_passed);
        assert!(v.check_passed, "{:?}", v.reasons);
        assert_eq!(
            v.tally,
            PassFail {
                passed: 1,
                failed: 0
            }
        );
        let v = judge(
            "fault-selftest",
            Expect::Crash,
            Emu::Bochs,
            &f,
            &End::Exited(Some(1)),
        );
        assert!(v.check_passed, "{:?}", v.reasons);
    }

    #[test]
    fn expected_crash_without_report_is_a_harness_failure() {
        let f = facts(
            "fault-selftest: 1 passed, 0 failed\numbra: exit 0\n",
            "fault-selftest",
        );
        let v = judge(
            "fault-selftest",
            Expect::Crash,
            Emu::Qemu,
            &f,
            &End::Exited(Some(1)),
        );
        assert!(v.scenario_passed);
        assert!(!v.check_passed);
        assert!(v.reasons.iter().any(|r| r.contains("scenario passed")));
        assert!(v.reasons.iter().any(|r| r.contains("no exception report")));
        assert_eq!(
            v.tally,
            PassFail {
                passed: 0,
                failed: 1
            }
        );

        let f = facts("EXCEPTION #UD\nRAX 0\n", "fault-selftest");
        let v = judge(
            "fault-selftest",
            Expect::Crash,
            Emu::Bochs,
            &f,
            &End::TimedOut(120),
        );
        assert!(!v.check_passed);
        assert!(v
            .reasons
            .iter()
            .any(|r| r.contains("found no `umbra: exit` line")));

        let f = facts(CRASH, "fault-selftest");
        let v = judge(
            "fault-selftest",
            Expect::Crash,
            Emu::Qemu,
            &f,
            &End::Exited(Some(0)),
        );
        assert!(!v.check_passed);
    }
}
