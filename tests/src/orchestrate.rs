//! `make test`: every check, in order, each one run even when an earlier one failed; the
//! last line printed is the total, `N passed, M failed`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::emu::Loader;
use crate::judge::clean_console;
use crate::limine;
use crate::linux::Arch;
use crate::linux_run;
use crate::pass_fail::{sum_cargo_results, PassFail};
use crate::runner::{self, flush_stdout, RunOptions};
use crate::scenarios::{Expect, LIMINE_RUNS, SCENARIOS};
use crate::screen;
use crate::userguest;

/// Where `make test` finds things.
#[derive(Clone, Debug)]
pub struct TestOptions {
    /// The ISO the scenarios boot.
    pub iso: PathBuf,
    /// `build/`.
    pub build_dir: PathBuf,
    /// Program used to (re)build the ISO (`make`).
    pub make: String,
}

struct StepResult {
    name: String,
    ok: bool,
    skipped: bool,
    detail: String,
    tally: PassFail,
    elapsed: Duration,
}

/// A command step: its name and argv.
struct CmdStep {
    name: &'static str,
    argv: &'static [&'static str],
    /// Sum the `test result:` lines of its output.
    cargo_test: bool,
}

const CARGO_STEPS: &[CmdStep] = &[
    CmdStep {
        name: "rustfmt",
        argv: &["cargo", "fmt", "--all", "--check"],
        cargo_test: false,
    },
    CmdStep {
        name: "clippy (host crates)",
        argv: &[
            "cargo",
            "clippy",
            "--workspace",
            "--all-targets",
            "--exclude",
            "microkernel",
            "--",
            "-D",
            "warnings",
        ],
        cargo_test: false,
    },
    CmdStep {
        name: "clippy (microkernel lib, host)",
        argv: &[
            "cargo",
            "clippy",
            "-p",
            "microkernel",
            "--lib",
            "--tests",
            "--",
            "-D",
            "warnings",
        ],
        cargo_test: false,
    },
    CmdStep {
        name: "clippy (kernel, x86_64-unknown-none)",
        argv: &[
            "cargo",
            "clippy",
            "-p",
            "microkernel",
            "--bin",
            "umbra-kernel",
            "--target",
            "x86_64-unknown-none",
            "--release",
            "--",
            "-D",
            "warnings",
        ],
        cargo_test: false,
    },
    CmdStep {
        name: "clippy (services, x86_64-unknown-none)",
        argv: &[
            "cargo",
            "clippy",
            "-p",
            "supervisor",
            "-p",
            "kernel-tests",
            "-p",
            "echo",
            "-p",
            "ipc-suite",
            "-p",
            "bench-ipc",
            "-p",
            "mmu-service",
            "-p",
            "vmm-service",
            "-p",
            "vmm-suite",
            "-p",
            "fuzz",
            "-p",
            "guests",
            "-p",
            "trace",
            // Every package's binaries (their libraries are checked as dependencies). A
            // `--bin NAME` here would select that binary alone and leave the other
            // packages' binaries unchecked.
            "--bins",
            "--target",
            "x86_64-unknown-none",
            "--release",
            "--",
            "-D",
            "warnings",
        ],
        cargo_test: false,
    },
    CmdStep {
        name: "host tests",
        argv: &["cargo", "test", "--workspace", "--release"],
        cargo_test: true,
    },
];

/// Runs everything; returns the process exit code (0 iff nothing failed).
pub fn test(opts: &TestOptions) -> i32 {
    let started = Instant::now();
    let runs = scenario_runs(opts);
    // + make iso, + the screen console check, + the example kernel through `GUEST=`, + Linux.
    let total_steps = CARGO_STEPS.len() + 1 + runs.len() + 1 + 1 + 1;
    let mut n = 0;
    let mut results = Vec::new();

    for step in CARGO_STEPS {
        n += 1;
        results.push(run_cmd_step(
            n,
            total_steps,
            step.name,
            step.argv,
            step.cargo_test,
        ));
    }

    n += 1;
    let make_argv = [opts.make.as_str(), "--no-print-directory", "iso"];
    let iso_step = run_cmd_step(n, total_steps, "kernel + ISO (make iso)", &make_argv, false);
    let iso_ok = iso_step.ok;
    results.push(iso_step);
    // `make iso` builds the Limine ISO's parts only when it finds Limine's binaries.
    let limine_parts = limine::Parts::find(&opts.build_dir);
    if let Err(why) = &limine_parts {
        println!("umbra-harness: Limine runs are skipped: {why}");
    }

    for run_opts in runs {
        n += 1;
        let name = format!("scenario {}", run_opts.label());
        let what = match run_opts.loader {
            Loader::Grub => format!(
                "boot {} with scenario={}",
                runner::rel(&opts.iso),
                run_opts.scenario
            ),
            Loader::Limine => format!(
                "boot a Limine ISO ({}) with scenario={}",
                run_opts.firmware.name(),
                run_opts.scenario
            ),
        };
        header(n, total_steps, &name, &what);
        let t0 = Instant::now();
        if !iso_ok {
            results.push(failed_step(name, "not run: ISO build failed", t0));
            continue;
        }
        if run_opts.loader == Loader::Limine {
            if let Err(why) = &limine_parts {
                results.push(skipped_step(name, why, t0));
                continue;
            }
        }
        let r = match runner::run(&run_opts) {
            Ok(r) => StepResult {
                name,
                ok: r.verdict.check_passed,
                skipped: false,
                detail: format!("{} [{}]", r.verdict.seen, runner::rel(&r.log_path)),
                tally: r.verdict.tally,
                elapsed: r.elapsed,
            },
            Err(e) => failed_step(name, &e.0, t0),
        };
        results.push(r);
    }

    n += 1;
    let name = format!("screen console on {}", screen::machine_label());
    header(
        n,
        total_steps,
        &name,
        "boot scenario=kernel, take QEMU's screendump, find the log's last lines on it",
    );
    let t0 = Instant::now();
    results.push(match (&limine_parts, iso_ok) {
        (_, false) => failed_step(name, "not run: ISO build failed", t0),
        (Err(why), _) => skipped_step(name, why, t0),
        (Ok(_), true) => match screen::check(&opts.build_dir) {
            Ok(seen) => {
                println!("PASS {name}: {seen}");
                let mut tally = PassFail::default();
                tally.add_check(true);
                StepResult {
                    name,
                    ok: true,
                    skipped: false,
                    detail: seen,
                    tally,
                    elapsed: t0.elapsed(),
                }
            }
            Err(e) => failed_step(name, &e, t0),
        },
    });

    n += 1;
    results.push(example_kernel_step(n, total_steps, opts, iso_ok));
    n += 1;
    results.push(linux_step(n, total_steps, opts, iso_ok));

    let mut total = PassFail::default();
    println!();
    println!("==> summary ({:.0} s)", started.elapsed().as_secs_f64());
    for r in &results {
        total += r.tally;
        println!(
            "  {}  {:<40} {:>7.1} s  {} -> {}",
            match (r.skipped, r.ok) {
                (true, _) => "SKIP",
                (false, true) => "PASS",
                (false, false) => "FAIL",
            },
            r.name,
            r.elapsed.as_secs_f64(),
            r.detail,
            r.tally
        );
    }
    let all_ok = results.iter().all(|r| r.ok) && total.ok();
    println!("{total}");
    flush_stdout();
    if all_ok {
        0
    } else {
        1
    }
}

/// Every scenario run: the table's GRUB runs, then the Limine runs.
fn scenario_runs(opts: &TestOptions) -> Vec<RunOptions> {
    let mut runs = Vec::new();
    for sc in SCENARIOS {
        for &emu in sc.test_on {
            runs.push(RunOptions {
                expect: Some(sc.expect),
                ..RunOptions::grub(emu, sc.name, opts.iso.clone(), opts.build_dir.clone())
            });
        }
    }
    for &(scenario, emu, firmware) in LIMINE_RUNS {
        runs.push(RunOptions {
            expect: Some(Expect::Pass),
            loader: Loader::Limine,
            firmware,
            ..RunOptions::grub(emu, scenario, opts.iso.clone(), opts.build_dir.clone())
        });
    }
    runs
}

fn failed_step(name: String, why: &str, t0: Instant) -> StepResult {
    println!("FAIL {name}: {why}");
    let mut tally = PassFail::default();
    tally.add_check(false);
    StepResult {
        name,
        ok: false,
        skipped: false,
        detail: why.to_string(),
        tally,
        elapsed: t0.elapsed(),
    }
}

/// `make example-kernel` (the system's `as` and `ld`), then the example kernel run like
/// `make run GUEST=build/example-kernel.elf` on Bochs ([`userguest::run_example`]).
fn example_kernel_step(n: usize, total: usize, opts: &TestOptions, iso_ok: bool) -> StepResult {
    let name = "user guest: example kernel (GUEST=)".to_string();
    let what = "make example-kernel, then boot it as a user's guest in 1 GiB of RAM on bochs";
    guest_step(
        n,
        total,
        opts,
        iso_ok,
        (name, what),
        "example-kernel",
        || userguest::run_example(&opts.build_dir, &opts.iso),
    )
}

/// The Linux guest `make test` boots: Debian's 32-bit PAE kernel on shadow paging, the case
/// Umbra's PAE root cache is for (`make linux` boots every combination).
pub const LINUX_TEST: (Arch, bool) = (Arch::I386, true);

/// `make linux-assets` (Debian's kernels, busybox, the test initramfs), then [`LINUX_TEST`]
/// booted as `make run GUEST=linux-pae MMU=shadow` does, its init's checks judged.
fn linux_step(n: usize, total: usize, opts: &TestOptions, iso_ok: bool) -> StepResult {
    let (arch, shadow) = LINUX_TEST;
    let name = format!(
        "Linux: {} on {}",
        linux_run::name_of(arch),
        if shadow { "shadow paging" } else { "EPT" }
    );
    let what = "make linux-assets, then Debian's kernel and the test init under the VMM on bochs";
    guest_step(n, total, opts, iso_ok, (name, what), "linux-assets", || {
        let o = linux_run::Options {
            shadow,
            ..linux_run::Options::default()
        };
        linux_run::guest(&opts.build_dir, arch, &o)
            .and_then(|g| linux_run::run_checked(&opts.build_dir, &opts.iso, arch, g))
            .map(|(ok, detail, _, tally)| (ok, detail, tally))
    })
}

/// A step that runs `make PREPARE` (a sub-make of its own, without the outer make's flags),
/// then `run`, which boots a user's guest and says whether it passed, how, and its tally.
fn guest_step(
    n: usize,
    total: usize,
    opts: &TestOptions,
    iso_ok: bool,
    (name, what): (String, &str),
    prepare: &str,
    run: impl FnOnce() -> Result<(bool, String, PassFail), String>,
) -> StepResult {
    header(n, total, &name, what);
    let t0 = Instant::now();
    if !iso_ok {
        return failed_step(name, "not run: ISO build failed", t0);
    }
    let prepared = Command::new(&opts.make)
        .args(["--no-print-directory", prepare])
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS")
        .env_remove("MAKELEVEL")
        .status();
    if !matches!(prepared, Ok(s) if s.success()) {
        return failed_step(name, &format!("make {prepare} failed: {prepared:?}"), t0);
    }
    match run() {
        Ok((ok, detail, tally)) => StepResult {
            name,
            ok,
            skipped: false,
            detail,
            tally,
            elapsed: t0.elapsed(),
        },
        Err(e) => failed_step(name, &e, t0),
    }
}

/// A step that cannot run here (Limine's binaries not found): said, and counted neither way.
fn skipped_step(name: String, why: &str, t0: Instant) -> StepResult {
    println!("SKIP {name}: {why}");
    StepResult {
        name,
        ok: true,
        skipped: true,
        detail: format!("skipped: {why}"),
        tally: PassFail::default(),
        elapsed: t0.elapsed(),
    }
}

fn header(n: usize, total: usize, name: &str, what: &str) {
    println!();
    println!("==> [{n}/{total}] {name}: {what}");
    flush_stdout();
}

fn run_cmd_step(n: usize, total: usize, name: &str, argv: &[&str], cargo_test: bool) -> StepResult {
    header(n, total, name, &argv.join(" "));
    let t0 = Instant::now();
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The parent `make`'s jobserver is not passed to this child; do not let it look for it.
    for var in ["MAKEFLAGS", "MFLAGS", "MAKELEVEL"] {
        cmd.env_remove(var);
    }
    let mut tally = PassFail::default();
    let (ok, detail) = match cmd.spawn() {
        Err(e) => (
            false,
            format!("cannot run `{}`: {e} (run `make setup`)", argv[0]),
        ),
        Ok(mut child) => {
            let captured = Arc::new(Mutex::new(String::new()));
            let sink = Arc::clone(&captured);
            let out = child.stdout.take().map(|o| {
                thread::spawn(move || {
                    for line in BufReader::new(o).split(b'\n').map_while(Result::ok) {
                        let line = clean_console(&line);
                        println!("{line}");
                        let mut c = sink.lock().unwrap_or_else(|e| e.into_inner());
                        c.push_str(&line);
                        c.push('\n');
                    }
                })
            });
            let err = child.stderr.take().map(|e| {
                thread::spawn(move || {
                    for line in BufReader::new(e).split(b'\n').map_while(Result::ok) {
                        eprintln!("{}", String::from_utf8_lossy(&line));
                    }
                })
            });
            let status = child.wait();
            for h in [out, err].into_iter().flatten() {
                let _ = h.join();
            }
            let ok = status.as_ref().is_ok_and(|s| s.success());
            let status_text = match &status {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            };
            let mut detail = if ok {
                "ok".to_string()
            } else {
                format!("failed ({status_text})")
            };
            if cargo_test {
                let out = captured.lock().unwrap_or_else(|e| e.into_inner());
                match sum_cargo_results(&out) {
                    Some(t) => {
                        detail = format!("{detail}; test results: {t}");
                        tally += t;
                    }
                    None => detail = format!("{detail}; no `test result:` lines"),
                }
            }
            (ok, detail)
        }
    };
    tally.add_check(ok);
    println!(
        "<== {} {name}: {detail} ({:.1} s)",
        if ok { "PASS" } else { "FAIL" },
        t0.elapsed().as_secs_f64()
    );
    flush_stdout();
    StepResult {
        name: name.to_string(),
        ok,
        skipped: false,
        detail,
        tally,
        elapsed: t0.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootcfg::makefile_list;

    /// The services clippy step checks every package the Makefile builds for the target: the
    /// Makefile's `SERVICES` and the `guests` package, nothing more.
    #[test]
    fn services_clippy_step_matches_the_makefile() {
        let step = CARGO_STEPS
            .iter()
            .find(|s| s.name == "clippy (services, x86_64-unknown-none)")
            .expect("the services clippy step");
        let mut packages: Vec<&str> = step
            .argv
            .windows(2)
            .filter(|w| w[0] == "-p")
            .map(|w| w[1])
            .collect();
        packages.sort();
        let mut expected = makefile_list("SERVICES");
        expected.push("guests".to_string());
        expected.sort();
        assert_eq!(packages, expected);
    }
}
