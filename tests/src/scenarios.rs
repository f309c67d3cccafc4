//! The one list of boot scenarios.
//!
//! Adding a scenario is one line in [`SCENARIOS`]; then `make boot-configs` regenerates the
//! GRUB menu (`tests/boot/grub.cfg`) and `limine.cfg` from this table (a unit test fails while they
//! are stale). The harness, `make run SCENARIO=...` and `make test` all read this table.

use crate::emu::{Emu, Firmware};
use Emu::{Bochs, Qemu};
use Firmware::{Bios, Uefi};

/// What a scenario is expected to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Print `<name>: N passed, 0 failed` and `umbra: exit 0`.
    Pass,
    /// Deliberately crash: print an exception report and `umbra: exit 3`. The harness counts
    /// the run as a pass of *its* check when the scenario is judged a failure for that reason.
    Crash,
}

/// One entry of the scenario table: how the harness tests a scenario the kernel knows
/// (`abi::scenario::ALL` holds the names and descriptions).
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// The name on the kernel command line (`scenario=NAME`).
    pub name: &'static str,
    /// What a correct kernel does in this scenario.
    pub expect: Expect,
    /// The emulators `make test` boots it on (`make run` takes any).
    pub test_on: &'static [Emu],
    /// Wall-clock limit for one boot, in seconds (generous: Bochs is the slow one).
    pub timeout_secs: u64,
    /// Words the scenario adds to the kernel command line (after `scenario=NAME`).
    pub cmdline_extra: &'static str,
}

impl Scenario {
    const fn new(name: &'static str, expect: Expect, test_on: &'static [Emu]) -> Self {
        Scenario {
            name,
            expect,
            test_on,
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            cmdline_extra: "",
        }
    }

    /// Adds words to the scenario's kernel command line.
    const fn cmdline(mut self, words: &'static str) -> Self {
        self.cmdline_extra = words;
        self
    }

    /// Overrides the default timeout.
    #[allow(dead_code)]
    const fn timeout(mut self, secs: u64) -> Self {
        self.timeout_secs = secs;
        self
    }

    /// One line for menus and listings, from the kernel's own list.
    pub fn title(&self) -> &'static str {
        abi::scenario::title(self.name).unwrap_or("(unknown to the kernel)")
    }

    /// The kernel command line that selects this scenario.
    pub fn kernel_cmdline(&self) -> String {
        cmdline_for(self.name)
    }
}

/// Timeout for a scenario that does not set one (and for names not in the table).
pub const DEFAULT_TIMEOUT_SECS: u64 = 120;

/// The scenario the boot menus start by default.
pub const DEFAULT_SCENARIO: &str = abi::scenario::DEFAULT;

/// Every scenario, in the order menus list them and `make test` runs them.
#[rustfmt::skip]
pub const SCENARIOS: &[Scenario] = &[
    Scenario::new(abi::scenario::KERNEL, Expect::Pass, &[Qemu, Bochs]),
    Scenario::new(abi::scenario::FAULT_SELFTEST, Expect::Crash, &[Qemu, Bochs]),
    Scenario::new(abi::scenario::IPC, Expect::Pass, &[Qemu, Bochs]),
    Scenario::new(abi::scenario::BENCH_IPC, Expect::Pass, &[Qemu]),
    Scenario::new(abi::scenario::DEMO, Expect::Pass, &[Bochs]),
    Scenario::new(abi::scenario::VMM, Expect::Pass, &[Bochs]).timeout(300),
    Scenario::new(abi::scenario::BENCH_VMM, Expect::Pass, &[Bochs]).timeout(300),
    Scenario::new(abi::scenario::SHADOW, Expect::Pass, &[Bochs]).timeout(300),
    Scenario::new(abi::scenario::BENCH_MMU, Expect::Pass, &[Bochs]).timeout(300),
    Scenario::new(abi::scenario::ISOLATION, Expect::Pass, &[Bochs]).timeout(300),
    Scenario::new(abi::scenario::FUZZ, Expect::Pass, &[Qemu]),
    // The MMU service's fault injection is refused unless the command line allows it.
    Scenario::new(abi::scenario::MMU_RESTART, Expect::Pass, &[Bochs])
        .timeout(600)
        .cmdline("mmu.inject"),
    Scenario::new(abi::scenario::FUZZ_VM, Expect::Pass, &[Bochs]).timeout(300),
    // Tracing on for every VM the suite runs; the trace service's crash on request needs
    // `trace.inject`.
    Scenario::new(abi::scenario::TRACE, Expect::Pass, &[Bochs])
        .timeout(300)
        .cmdline("trace trace.inject"),
    // A user's own kernel: booted by `make run GUEST=...` with the file as a boot module (see
    // `crate::userguest`), not from this table (`make test` runs the example kernel that way).
    Scenario::new(abi::scenario::GUEST, Expect::Pass, &[]).timeout(300),
];

/// The runs `make test` also boots through Limine (next to the GRUB runs of [`SCENARIOS`]):
/// scenario, emulator, firmware. `demo` needs VMX, which QEMU's TCG does not emulate
/// (`VmCreate` answers `NoVmx`), so it goes through Limine on Bochs only; Bochs has no UEFI
/// firmware here, so UEFI runs are QEMU's.
#[rustfmt::skip]
pub const LIMINE_RUNS: &[(&str, Emu, Firmware)] = &[
    (abi::scenario::KERNEL, Qemu, Bios),
    (abi::scenario::KERNEL, Qemu, Uefi),
    (abi::scenario::KERNEL, Bochs, Bios),
    (abi::scenario::IPC, Qemu, Bios),
    (abi::scenario::IPC, Qemu, Uefi),
    (abi::scenario::IPC, Bochs, Bios),
    (abi::scenario::DEMO, Bochs, Bios),
];

/// Looks a scenario up by name.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// The kernel command line for a scenario name.
pub fn cmdline_for(name: &str) -> String {
    match SCENARIOS.iter().find(|s| s.name == name) {
        Some(s) if !s.cmdline_extra.is_empty() => format!("scenario={name} {}", s.cmdline_extra),
        _ => format!("scenario={name}"),
    }
}

/// Scenario names must be safe to put on a command line and in a GRUB script.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_valid() {
        for (i, s) in SCENARIOS.iter().enumerate() {
            assert!(valid_name(s.name), "{}", s.name);
            assert!(
                SCENARIOS[..i].iter().all(|t| t.name != s.name),
                "duplicate {}",
                s.name
            );
            assert!(s.timeout_secs > 0);
        }
        assert!(find(DEFAULT_SCENARIO).is_some());
    }

    #[test]
    fn table_matches_the_kernels_scenarios() {
        let ours: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        let kernels: Vec<&str> = abi::scenario::ALL.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            ours, kernels,
            "tests/src/scenarios.rs and abi::scenario::ALL differ"
        );
    }

    #[test]
    fn limine_runs_name_passing_scenarios_and_uefi_only_on_qemu() {
        for &(name, emu, firmware) in LIMINE_RUNS {
            let sc = find(name).unwrap_or_else(|| panic!("{name} is not in the table"));
            assert_eq!(sc.expect, Expect::Pass, "{name}");
            assert!(firmware == Bios || emu == Qemu, "{name}: UEFI needs QEMU");
        }
    }

    #[test]
    fn name_validation() {
        assert!(valid_name("bench-ipc"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name("x\"; reboot"));
    }
}
