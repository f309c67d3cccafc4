//! Linux guests under Umbra (issue #13): `make run GUEST=linux64|linux-pae` (or `SCENARIO=`
//! the same names) boots Debian's kernel and the test initramfs of [`crate::linux`] as a
//! user's guest; the run passes only when the init's report passes ([`judge`]). `make linux`
//! ([`report_main`]) boots every combination (64-bit and PAE, EPT and shadow paging, the PAE
//! kernel also with KVM's root policy) beside the native boots, and prints the boot ratios, the
//! `prev_roots` hit rates and the total instructions side by side.

use std::fs;
use std::path::Path;

use userlib::proto::vmm::POOL_MAX_PAGES;

use crate::linux::{self, Arch, InitReport};
use crate::pass_fail::PassFail;
use crate::runner::{self, RunOptions};
use crate::userguest::{GuestMmu, UserGuest};

/// Guest RAM of a Linux guest unless `RAM=` says otherwise.
pub const RAM_MIB: u32 = 256;
/// The shadow page pool of a Linux guest unless `POOL=` says otherwise: the largest (a
/// kernel with a few processes keeps hundreds of page tables).
pub const POOL_PAGES: u32 = POOL_MAX_PAGES;
/// Wall-clock limit of one Linux run under Umbra (seconds; a run takes 2 to 4 minutes).
pub const TIMEOUT_SECS: u64 = 1200;
/// Fewest context switches the pipe workload must show ("tens of thousands").
pub const MIN_CONTEXT_SWITCHES: u64 = 10_000;

/// The guest names of `GUEST=` and `SCENARIO=`, with their assets.
pub const NAMES: [(&str, Arch); 2] = [("linux64", Arch::Amd64), ("linux-pae", Arch::I386)];

/// The arch a guest name stands for.
pub fn named(name: &str) -> Option<Arch> {
    NAMES.iter().find(|n| n.0 == name).map(|n| n.1)
}

/// The guest name of `arch`.
pub fn name_of(arch: Arch) -> &'static str {
    NAMES.iter().find(|n| n.1 == arch).map_or("", |n| n.0)
}

/// What a Linux guest run asks for beyond the arch (each `None`: the default).
#[derive(Clone, Debug, Default)]
pub struct Options<'a> {
    pub ram_mib: Option<u32>,
    pub shadow: bool,
    pub kvm_policy: bool,
    pub cmdline: Option<&'a str>,
    pub pool: Option<&'a str>,
    pub prev_roots: Option<&'a str>,
}

/// `arch`'s kernel and initramfs as a user's guest, checked like any `GUEST=`.
pub fn guest(build_dir: &Path, arch: Arch, o: &Options<'_>) -> Result<UserGuest, String> {
    let assets = linux::assets_in(build_dir, arch)?;
    let mmu = if o.shadow {
        GuestMmu::Shadow
    } else {
        GuestMmu::Ept
    };
    let cmdline = o.cmdline.filter(|c| !c.trim().is_empty());
    let mut g = UserGuest::new(
        &assets.kernel,
        o.ram_mib.unwrap_or(RAM_MIB),
        mmu,
        false,
        cmdline.unwrap_or(linux::CMDLINE),
    )?
    .with_initrd(&assets.initramfs)?;
    if o.shadow {
        g = g.with_pool(o.pool.unwrap_or(&POOL_PAGES.to_string()))?;
    }
    if let Some(n) = o.prev_roots {
        g = g.with_prev_roots(n)?;
    }
    if o.kvm_policy {
        g = g.with_kvm_policy()?;
    }
    Ok(g)
}

/// The shadow MMU's figures of a run, from the VMM's summary lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShadowFigures {
    pub faults: u64,
    pub zaps: u64,
    pub cr3_loads: u64,
    /// `prev_roots` hits and root loads, all paging modes summed.
    pub hits: u64,
    pub root_loads: u64,
}

impl ShadowFigures {
    /// Hits per root load, in percent.
    pub fn hit_rate(&self) -> f64 {
        if self.root_loads == 0 {
            0.0
        } else {
            100.0 * self.hits as f64 / self.root_loads as f64
        }
    }
}

/// What one Linux run under Umbra showed.
#[derive(Clone, Debug)]
pub struct LinuxRun {
    pub report: Result<InitReport, String>,
    /// The VMM reported a clean ACPI power-off.
    pub powered_off: bool,
    /// VM exits in all (from the VMM's summary).
    pub exits: Option<u64>,
    pub shadow: Option<ShadowFigures>,
}

/// The number before `key` in `text` (`... 123 key ...`).
fn number_before(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)?;
    text[..at].split_whitespace().last()?.parse().ok()
}

impl LinuxRun {
    /// Reads a run's console (the harness' cleaned log).
    pub fn from_console(console: &str) -> LinuxRun {
        let mut run = LinuxRun {
            report: InitReport::parse(console),
            powered_off: false,
            exits: None,
            shadow: None,
        };
        for line in console.lines() {
            let Some(rest) = line.find("vmm: guest: ").map(|at| &line[at + 12..]) else {
                continue;
            };
            if rest.starts_with("result PoweredOff") {
                run.powered_off = true;
            } else if let Some(s) = rest.strip_prefix("shadow: prev_roots hits/root loads by mode:")
            {
                let f = run.shadow.get_or_insert_with(ShadowFigures::default);
                for (h, l) in s
                    .split_whitespace()
                    .filter_map(|w| w.split_once('=')?.1.split_once('/'))
                {
                    f.hits += h.parse::<u64>().unwrap_or(0);
                    f.root_loads += l.parse::<u64>().unwrap_or(0);
                }
            } else if let Some(s) = rest.strip_prefix("shadow: ") {
                let f = run.shadow.get_or_insert_with(ShadowFigures::default);
                f.faults = number_before(s, " faults").unwrap_or(0);
                f.zaps = number_before(s, " zaps").unwrap_or(0);
                f.cr3_loads = number_before(s, " CR3 loads").unwrap_or(0);
            } else if rest.contains(" exits: ") || rest.ends_with(" exits") {
                run.exits = number_before(rest, " exits");
            }
        }
        run
    }

    /// Why the run does not pass for `arch` (empty: it passed).
    pub fn failures(&self, arch: Arch) -> Vec<String> {
        let mut why = match &self.report {
            Ok(r) => r.failures(arch),
            Err(e) => vec![e.clone()],
        };
        if let Ok(r) = &self.report {
            if r.context_switches < MIN_CONTEXT_SWITCHES {
                why.push(format!(
                    "{} context switches (at least {MIN_CONTEXT_SWITCHES})",
                    r.context_switches
                ));
            }
        }
        if !self.powered_off {
            why.push("the VMM reported no clean ACPI power-off".into());
        }
        why
    }
}

/// Judges a finished Linux run: the init's report and the power-off, added to `tally` (one
/// check each), with the failures printed. True iff it passed.
pub fn judge(console: &str, arch: Arch, tally: &mut PassFail) -> (bool, LinuxRun) {
    let run = LinuxRun::from_console(console);
    let why = run.failures(arch);
    tally.add_check(run.report.is_ok() && why.is_empty());
    tally.add_check(run.powered_off);
    match &run.report {
        Ok(r) => println!("umbra-harness: {}", r.summary()),
        Err(e) => println!("umbra-harness: no init report: {e}"),
    }
    for w in &why {
        println!("umbra-harness: FAIL linux: {w}");
    }
    (why.is_empty(), run)
}

/// Boots `g` (a Linux guest of `arch`) on Bochs with `iso` and judges it: (passed, what was
/// seen, the run's figures, counts).
pub fn run_checked(
    build_dir: &Path,
    iso: &Path,
    arch: Arch,
    g: UserGuest,
) -> Result<(bool, String, LinuxRun, PassFail), String> {
    let opts = RunOptions {
        guest: Some(g),
        timeout_secs: Some(TIMEOUT_SECS),
        ..RunOptions::grub(
            crate::emu::Emu::Bochs,
            abi::scenario::GUEST,
            iso.to_path_buf(),
            build_dir.to_path_buf(),
        )
    };
    let r = runner::run(&opts).map_err(|e| e.0)?;
    let console = crate::judge::clean_console(&fs::read(&r.log_path).unwrap_or_default());
    let mut tally = r.verdict.tally;
    let (ok, run) = judge(&console, arch, &mut tally);
    let seen = match &run.report {
        Ok(rep) => format!(
            "Linux {} {}: init result {}, {} context switches, {} exits{}",
            rep.kernel_release,
            rep.machine,
            if rep.result_pass { "pass" } else { "fail" },
            rep.context_switches,
            run.exits.unwrap_or(0),
            run.shadow.map_or(String::new(), |s| format!(
                ", prev_roots hit rate {:.1} %",
                s.hit_rate()
            ))
        ),
        Err(e) => e.clone(),
    };
    Ok((ok && r.verdict.check_passed, seen, run, tally))
}

/// One combination `make linux` boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Combo {
    pub arch: Arch,
    pub shadow: bool,
    pub kvm_policy: bool,
}

impl Combo {
    /// `linux64 shadow`, `linux-pae shadow (KVM policy)`, ...
    pub fn label(&self) -> String {
        format!(
            "{} {}{}",
            name_of(self.arch),
            if self.shadow { "shadow" } else { "EPT" },
            if self.kvm_policy { " (KVM policy)" } else { "" }
        )
    }
}

const fn combo(arch: Arch, shadow: bool, kvm_policy: bool) -> Combo {
    Combo {
        arch,
        shadow,
        kvm_policy,
    }
}

/// What `make linux` runs under Umbra (beside a native boot of each arch).
pub const COMBOS: [Combo; 5] = [
    combo(Arch::Amd64, false, false),
    combo(Arch::Amd64, true, false),
    combo(Arch::I386, false, false),
    combo(Arch::I386, true, false),
    combo(Arch::I386, true, true),
];

/// The largest boot ratio (instructions from power-on to the init's first line, under Umbra
/// over native) the target allows.
pub const BOOT_RATIO_TARGET: f64 = 3.0;

/// One row of the report.
struct Row {
    label: String,
    arch: Arch,
    passed: bool,
    first: Option<u64>,
    end: Option<u64>,
    exits: Option<u64>,
    shadow: Option<ShadowFigures>,
    combo: Option<Combo>,
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// `make linux`: the native boots and every [`COMBOS`] run on Bochs, then one table (printed
/// and written to `BUILD/linux/report.csv`) and the targets. Exit 0 iff every run
/// passed (the targets are reported, not asserted).
pub fn report_main(build_dir: &Path, iso: &Path) -> Result<u8, String> {
    let mut rows = Vec::new();
    for arch in Arch::ALL {
        let n = linux::run_native(build_dir, arch, linux::NATIVE_TIMEOUT_SECS)?;
        let why = n.failures(arch);
        let report = n.report.as_ref().ok();
        rows.push(Row {
            label: format!("{} native", name_of(arch)),
            arch,
            passed: why.is_empty(),
            first: report.map(|r| r.tsc),
            end: report.and_then(|r| r.end_tsc),
            exits: None,
            shadow: None,
            combo: None,
        });
    }
    for c in COMBOS {
        let o = Options {
            shadow: c.shadow,
            kvm_policy: c.kvm_policy,
            ..Options::default()
        };
        let g = guest(build_dir, c.arch, &o)?;
        let (passed, _, run, _) = run_checked(build_dir, iso, c.arch, g)?;
        let report = run.report.as_ref().ok();
        rows.push(Row {
            label: c.label(),
            arch: c.arch,
            passed,
            first: report.map(|r| r.tsc),
            end: report.and_then(|r| r.end_tsc),
            exits: run.exits,
            shadow: run.shadow,
            combo: Some(c),
        });
    }
    let native_first = |arch: Arch| {
        rows.iter()
            .find(|r| r.arch == arch && r.combo.is_none())
            .and_then(|r| r.first)
    };
    let ratio = |r: &Row| match (r.first, native_first(r.arch)) {
        (Some(u), Some(n)) if n > 0 => Some(u as f64 / n as f64),
        _ => None,
    };
    let mut csv = String::from(
        "run,passed,tsc_init_first_line,boot_ratio,tsc_end,exits,cr3_loads,prev_roots_hits,\
         root_loads,hit_rate_percent,shadow_faults,zaps\n",
    );
    println!();
    println!(
        "{:<32} {:>6} {:>14} {:>6} {:>14} {:>8} {:>9} {:>8} {:>8} {:>7}",
        "run",
        "result",
        "init 1st line",
        "ratio",
        "end",
        "exits",
        "CR3 loads",
        "hit %",
        "faults",
        "zaps"
    );
    for r in &rows {
        let s = r.shadow;
        let ratio = ratio(r);
        println!(
            "{:<32} {:>6} {:>14} {:>6} {:>14} {:>8} {:>9} {:>8} {:>8} {:>7}",
            r.label,
            if r.passed { "pass" } else { "FAIL" },
            opt(r.first),
            ratio.map_or("-".into(), |x| format!("{x:.2}")),
            opt(r.end),
            opt(r.exits),
            opt(s.map(|s| s.cr3_loads)),
            s.map_or("-".into(), |s| format!("{:.2}", s.hit_rate())),
            opt(s.map(|s| s.faults)),
            opt(s.map(|s| s.zaps)),
        );
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.label,
            r.passed,
            opt(r.first),
            ratio.map_or("-".into(), |x| format!("{x:.3}")),
            opt(r.end),
            opt(r.exits),
            opt(s.map(|s| s.cr3_loads)),
            opt(s.map(|s| s.hits)),
            opt(s.map(|s| s.root_loads)),
            s.map_or("-".into(), |s| format!("{:.3}", s.hit_rate())),
            opt(s.map(|s| s.faults)),
            opt(s.map(|s| s.zaps)),
        ));
    }
    let out = build_dir.join(linux::ASSETS_DIR).join("report.csv");
    fs::write(&out, csv).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("umbra-harness: report written to {}", out.display());
    // The targets, said plainly.
    for r in rows.iter().filter(|r| r.combo.is_some()) {
        if let Some(x) = ratio(r) {
            println!(
                "target: {} boots to the init in {x:.2}x the native instructions (at most \
                 {BOOT_RATIO_TARGET}): {}",
                r.label,
                if x <= BOOT_RATIO_TARGET {
                    "met"
                } else {
                    "NOT met"
                }
            );
        }
    }
    let find = |c: Combo| rows.iter().find(|r| r.combo == Some(c));
    let pae = find(combo(Arch::I386, true, false));
    let pae_kvm = find(combo(Arch::I386, true, true));
    let long = find(combo(Arch::Amd64, true, false));
    if let (Some(p), Some(l)) = (pae.and_then(|r| r.shadow), long.and_then(|r| r.shadow)) {
        println!(
            "target: PAE prev_roots hit rate {:.2} % against the 64-bit kernel's {:.2} %: {}",
            p.hit_rate(),
            l.hit_rate(),
            if p.hit_rate() >= l.hit_rate() {
                "met"
            } else {
                "NOT met"
            }
        );
    }
    if let (Some(p), Some(k)) = (pae.and_then(|r| r.end), pae_kvm.and_then(|r| r.end)) {
        println!(
            "target: PAE kernel on shadow paging, {p} instructions to the end of the init \
             against {k} with KVM's policy: {}",
            if p < k { "met" } else { "NOT met" }
        );
    }
    Ok(u8::from(!rows.iter().all(|r| r.passed)))
}

#[cfg(test)]
#[path = "linux_run_tests.rs"]
mod tests;
