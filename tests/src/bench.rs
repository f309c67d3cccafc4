//! `make bench`: boots `scenario=bench-ipc` in Bochs (whose TSC counts instructions, so the
//! figures are deterministic path lengths), reads the `bench-ipc: csv ...` lines from the
//! serial log, prints them as a table and writes `build/bench/ipc.csv`; likewise
//! `scenario=bench-vmm` (`build/bench/vmm.csv`) and `scenario=bench-mmu`, the shadow MMU
//! (`build/bench/mmu.csv`).

use std::fs;
use std::path::{Path, PathBuf};

use crate::emu::Emu;
use crate::runner::{self, RunOptions};
use crate::scenarios::Expect;

/// One row of the IPC benchmark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpcRow {
    pub payload: u64,
    pub median: u64,
    pub min: u64,
    pub mean: u64,
    pub max: u64,
    pub rounds: u64,
}

pub const CSV_HEADER: &str = "payload_bytes,median_cycles,min_cycles,mean_cycles,max_cycles,rounds";

/// The data rows of the `bench-ipc: csv` lines of a log (the header line is skipped).
pub fn parse_ipc_rows(log: &str) -> Vec<IpcRow> {
    log.lines()
        .filter_map(|l| l.split_once("bench-ipc: csv ").map(|(_, rest)| rest.trim()))
        .filter_map(|rest| {
            let v: Vec<u64> = rest
                .split(',')
                .map(|f| f.trim().parse().ok())
                .collect::<Option<Vec<u64>>>()?;
            match v[..] {
                [payload, median, min, mean, max, rounds] => Some(IpcRow {
                    payload,
                    median,
                    min,
                    mean,
                    max,
                    rounds,
                }),
                _ => None,
            }
        })
        .collect()
}

/// Boots a benchmark scenario in Bochs; returns whether its check passed, its cleaned
/// console log and the log's path.
fn boot_bench(
    scenario: &str,
    iso: &Path,
    build_dir: &Path,
) -> Result<(bool, String, PathBuf), String> {
    let opts = RunOptions {
        expect: Some(Expect::Pass),
        ..RunOptions::grub(
            Emu::Bochs,
            scenario,
            iso.to_path_buf(),
            build_dir.to_path_buf(),
        )
    };
    let r = runner::run(&opts).map_err(|e| e.0)?;
    let log =
        fs::read_to_string(&r.log_path).map_err(|e| format!("{}: {e}", r.log_path.display()))?;
    let log = crate::judge::clean_console(log.as_bytes());
    Ok((r.verdict.check_passed, log, r.log_path))
}

/// Runs the benchmark; returns the process exit code.
pub fn run_ipc(iso: &Path, build_dir: &Path) -> Result<u8, String> {
    let (passed, log, log_path) = boot_bench(abi::scenario::BENCH_IPC, iso, build_dir)?;
    let rows = parse_ipc_rows(&log);
    if !passed || rows.len() != 3 {
        return Err(format!(
            "bench-ipc did not complete ({} rows; see {})",
            rows.len(),
            log_path.display()
        ));
    }
    println!();
    println!("IPC call+reply round trip, Bochs cycles (= instructions; deterministic), echo server in another task:");
    println!(
        "{:>14} {:>8} {:>8} {:>8} {:>8} {:>7}",
        "payload bytes", "median", "min", "mean", "max", "rounds"
    );
    for row in &rows {
        println!(
            "{:>14} {:>8} {:>8} {:>8} {:>8} {:>7}",
            row.payload, row.median, row.min, row.mean, row.max, row.rounds
        );
    }
    let dir: PathBuf = build_dir.join("bench");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut csv = String::from(CSV_HEADER);
    csv.push('\n');
    for row in &rows {
        csv.push_str(&format!(
            "{},{},{},{},{},{}\n",
            row.payload, row.median, row.min, row.mean, row.max, row.rounds
        ));
    }
    let path = dir.join("ipc.csv");
    fs::write(&path, csv).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(0)
}

/// One `bench-vmm:` line of the exit benchmark guest: an exit round trip measured by the
/// guest (`rdtsc; op; rdtsc`, 1000 rounds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitRow {
    /// `vmm` (through the VMM service) or `kernel` (the in-kernel reflect floor).
    pub via: String,
    /// `cpuid`, `vmcall` or `out`.
    pub op: String,
    pub min: u64,
    pub median: u64,
    /// Measured by the second run, with exit tracing on (the VM named [`TRACED_VM`]).
    pub traced: bool,
}

impl ExitRow {
    /// The `via` column of `build/bench/vmm.csv`: `vmm`, `kernel`, `vmm-traced`, `kernel-traced`.
    pub fn csv_via(&self) -> String {
        if self.traced {
            format!("{}-traced", self.via)
        } else {
            self.via.clone()
        }
    }
}

pub const VMM_CSV_HEADER: &str = "op,via,median_cycles,min_cycles";

/// The VM of the benchmark's second run, with tracing on (the first is `bench`).
pub const TRACED_VM: &str = "bench-traced";

/// Exit round trips of one run: 3 ops, via the VMM and via the kernel.
pub const EXIT_ROWS: usize = 6;

/// The exits the benchmark guest measures.
pub const EXIT_OPS: [&str; 3] = ["cpuid", "vmcall", "out"];

/// The `<vm>: bench-vmm: via=V op=O min=N median=N` lines of a log (`<vm>` is the VMM's prefix
/// of the guest's console: `bench`, or [`TRACED_VM`] for the run with tracing on).
pub fn parse_exit_rows(log: &str) -> Vec<ExitRow> {
    log.lines()
        .filter_map(|l| l.split_once("bench-vmm: via="))
        .filter_map(|(head, rest)| {
            let vm = head
                .trim_end()
                .strip_suffix(':')
                .and_then(|h| h.split_ascii_whitespace().last());
            let mut words = rest.split_ascii_whitespace();
            let via = words.next()?.to_string();
            let mut op = None;
            let mut min = None;
            let mut median = None;
            for w in words {
                match w.split_once('=')? {
                    ("op", v) => op = Some(v.to_string()),
                    ("min", v) => min = v.parse().ok(),
                    ("median", v) => median = v.parse().ok(),
                    _ => {}
                }
            }
            Some(ExitRow {
                via,
                op: op?,
                min: min?,
                median: median?,
                traced: vm == Some(TRACED_VM),
            })
        })
        .collect()
}

/// The bench-vmm report: each exit round trip via the VMM, with tracing on next to it when
/// the log has the traced run (else a line saying it was not measured), then the in-kernel
/// floor and the ratio.
pub fn exit_table(rows: &[ExitRow]) -> String {
    let find = |via: &str, op: &str, traced: bool| {
        rows.iter()
            .find(|r| r.via == via && r.op == op && r.traced == traced)
            .map(|r| r.median)
    };
    let has_traced = rows.iter().any(|r| r.traced);
    let mut out = String::from(
        "VM exit round trip measured by the guest (rdtsc; op; rdtsc), Bochs cycles (= instructions), median of 1000:\n",
    );
    if has_traced {
        out += &format!(
            "{:>8} {:>12} {:>14} {:>9} {:>14} {:>8}\n",
            "exit", "via VMM", "tracing on", "overhead", "kernel floor", "ratio"
        );
    } else {
        out += &format!(
            "{:>8} {:>12} {:>14} {:>8}\n",
            "exit", "via VMM", "kernel floor", "ratio"
        );
    }
    for op in EXIT_OPS {
        let (Some(v), Some(k)) = (find("vmm", op, false), find("kernel", op, false)) else {
            continue;
        };
        let ratio = v as f64 / k.max(1) as f64;
        if has_traced {
            let (on, overhead) = match find("vmm", op, true) {
                Some(t) => (
                    t.to_string(),
                    format!("{:+.1}%", 100.0 * (t as f64 - v as f64) / v.max(1) as f64),
                ),
                None => ("-".to_string(), "-".to_string()),
            };
            out += &format!(
                "{:>8} {:>12} {:>14} {:>9} {:>14} {:>7.1}x\n",
                op, v, on, overhead, k, ratio
            );
        } else {
            out += &format!("{:>8} {:>12} {:>14} {:>7.1}x\n", op, v, k, ratio);
        }
    }
    if has_traced {
        out +=
            "  tracing on = the same guest again with every exit time-stamped into the trace ring \
                (VM bench-traced);\n  overhead = (tracing on - via VMM) / via VMM\n";
    } else {
        out += "  tracing on: not measured (this ISO's bench-vmm has no bench-traced run)\n";
    }
    out
}

/// `build/bench/vmm.csv`: a row per op and path; the traced run's rows say `vmm-traced` and
/// `kernel-traced` in the `via` column.
pub fn vmm_csv(rows: &[ExitRow]) -> String {
    let mut csv = String::from(VMM_CSV_HEADER);
    csv.push('\n');
    for row in rows {
        csv.push_str(&format!(
            "{},{},{},{}\n",
            row.op,
            row.csv_via(),
            row.median,
            row.min
        ));
    }
    csv
}

/// `make bench`, second part: boots `scenario=bench-vmm` in Bochs and prints each exit round
/// trip through the VMM service next to the same with tracing on and the in-kernel floor;
/// writes `build/bench/vmm.csv`.
pub fn run_vmm(iso: &Path, build_dir: &Path) -> Result<u8, String> {
    let (passed, log, log_path) = boot_bench(abi::scenario::BENCH_VMM, iso, build_dir)?;
    let rows = parse_exit_rows(&log);
    let untraced = rows.iter().filter(|r| !r.traced).count();
    let traced = rows.len() - untraced;
    if !passed || untraced != EXIT_ROWS || !(traced == 0 || traced == EXIT_ROWS) {
        return Err(format!(
            "bench-vmm did not complete ({untraced} rows, {traced} with tracing on; see {})",
            log_path.display()
        ));
    }
    println!();
    print!("{}", exit_table(&rows));
    let dir: PathBuf = build_dir.join("bench");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join("vmm.csv");
    fs::write(&path, vmm_csv(&rows)).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(0)
}

/// One `mmubench:` line of a shadow-MMU benchmark guest (rt/mmubench.s): an op measured by
/// the guest, `rdtsc; op; rdtsc`, over `n` samples. `policy` and `spaces` are the guest's
/// command line, which it echoes (`policy=P spaces=N`; spaces 0 is the micro-benchmark run).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MmuFigure {
    pub mode: String,
    pub policy: String,
    pub spaces: u32,
    /// `first_touch`, `cr3_hit`, `cr3_miss` (micro run) or `switch_touch` (workload run).
    pub op: String,
    pub median: u64,
    pub mean: u64,
    pub min: u64,
    pub n: u64,
}

/// The `mmubench: mode=M policy=P spaces=N op=O median=N mean=N min=N n=N` lines of a log.
pub fn parse_mmu_figures(log: &str) -> Vec<MmuFigure> {
    log.lines()
        .filter_map(|l| l.split_once("mmubench: ").map(|(_, rest)| rest))
        .filter_map(|rest| {
            let mut f = MmuFigure {
                mode: String::new(),
                policy: String::new(),
                spaces: u32::MAX,
                op: String::new(),
                median: u64::MAX,
                mean: u64::MAX,
                min: u64::MAX,
                n: 0,
            };
            for w in rest.split_ascii_whitespace() {
                match w.split_once('=')? {
                    ("mode", v) => f.mode = v.to_string(),
                    ("policy", v) => f.policy = v.to_string(),
                    ("spaces", v) => f.spaces = v.parse().ok()?,
                    ("op", v) => f.op = v.to_string(),
                    ("median", v) => f.median = v.parse().ok()?,
                    ("mean", v) => f.mean = v.parse().ok()?,
                    ("min", v) => f.min = v.parse().ok()?,
                    ("n", v) => f.n = v.parse().ok()?,
                    _ => {}
                }
            }
            let complete = !f.mode.is_empty()
                && !f.policy.is_empty()
                && !f.op.is_empty()
                && f.spaces != u32::MAX
                && f.median != u64::MAX
                && f.mean != u64::MAX
                && f.min != u64::MAX
                && f.n > 0;
            complete.then_some(f)
        })
        .collect()
}

/// One `bench-mmu: csv` line of the suite: the MMU service's counters after one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MmuCounters {
    pub mode: String,
    pub policy: String,
    pub spaces: u32,
    /// prev_roots hits and misses in the guest's paging mode.
    pub hits: u64,
    pub misses: u64,
    pub faults: u64,
    pub cr3_loads: u64,
    pub pool_used: u64,
}

/// The data rows of the `bench-mmu: csv mode,policy,spaces,hits,misses,faults,cr3_loads,pool_used`
/// lines of a log (the header line is skipped).
pub fn parse_mmu_counters(log: &str) -> Vec<MmuCounters> {
    log.lines()
        .filter_map(|l| l.split_once("bench-mmu: csv ").map(|(_, rest)| rest.trim()))
        .filter_map(|rest| {
            let f: Vec<&str> = rest.split(',').map(str::trim).collect();
            let [mode, policy, spaces, hits, misses, faults, cr3_loads, pool_used] = f[..] else {
                return None;
            };
            Some(MmuCounters {
                mode: mode.to_string(),
                policy: policy.to_string(),
                spaces: spaces.parse().ok()?,
                hits: hits.parse().ok()?,
                misses: misses.parse().ok()?,
                faults: faults.parse().ok()?,
                cr3_loads: cr3_loads.parse().ok()?,
                pool_used: pool_used.parse().ok()?,
            })
        })
        .collect()
}

/// One row of `build/bench/mmu.csv`: a paging mode, a root-caching policy and a number of
/// address spaces. The micro-benchmark figures (median cycles; they do not depend on the
/// number of spaces) come from that mode's and policy's micro run, the rest from its workload
/// run.
#[derive(Clone, Debug, PartialEq)]
pub struct MmuRow {
    pub mode: String,
    pub policy: String,
    pub spaces: u32,
    pub first_touch: u64,
    pub cr3_hit: u64,
    pub cr3_miss: u64,
    /// Median cycles of a workload step: `mov cr3` plus a read of the new space's window.
    pub switch_touch: u64,
    pub hits: u64,
    pub misses: u64,
}

impl MmuRow {
    /// How many times a CR3 load that hits is cheaper than one that misses.
    pub fn miss_hit_ratio(&self) -> f64 {
        self.cr3_miss as f64 / self.cr3_hit.max(1) as f64
    }

    /// prev_roots hits per CR3 load of the workload, in percent.
    pub fn hit_rate(&self) -> f64 {
        100.0 * self.hits as f64 / (self.hits + self.misses).max(1) as f64
    }
}

pub const MMU_CSV_HEADER: &str = "mode,policy,spaces,first_touch_cycles,cr3_hit_cycles,cr3_miss_cycles,miss_hit_ratio,switch_touch_cycles,hits,misses,hit_rate_percent";

/// Joins the guests' figures with the suite's counters: a row per workload run (spaces > 0),
/// ordered by mode (as first seen), spaces, then policy (`umbra` before `kvm`), so the two
/// policies of a mode sit side by side. A workload run without its figures, or without the
/// micro figures of its mode and policy, is left out.
pub fn join_mmu(figures: &[MmuFigure], counters: &[MmuCounters]) -> Vec<MmuRow> {
    let fig = |mode: &str, policy: &str, spaces: u32, op: &str| {
        figures
            .iter()
            .find(|f| f.mode == mode && f.policy == policy && f.spaces == spaces && f.op == op)
            .map(|f| f.median)
    };
    let mut modes: Vec<&str> = Vec::new();
    for c in counters {
        if !modes.contains(&c.mode.as_str()) {
            modes.push(&c.mode);
        }
    }
    let mut rows: Vec<MmuRow> = counters
        .iter()
        .filter(|c| c.spaces > 0)
        .filter_map(|c| {
            let (m, p) = (c.mode.as_str(), c.policy.as_str());
            Some(MmuRow {
                mode: c.mode.clone(),
                policy: c.policy.clone(),
                spaces: c.spaces,
                first_touch: fig(m, p, 0, "first_touch")?,
                cr3_hit: fig(m, p, 0, "cr3_hit")?,
                cr3_miss: fig(m, p, 0, "cr3_miss")?,
                switch_touch: fig(m, p, c.spaces, "switch_touch")?,
                hits: c.hits,
                misses: c.misses,
            })
        })
        .collect();
    rows.sort_by_key(|r| {
        (
            modes.iter().position(|m| *m == r.mode),
            r.spaces,
            r.policy != "umbra",
            r.policy.clone(),
        )
    });
    rows
}

/// `build/bench/mmu.csv`.
pub fn mmu_csv(rows: &[MmuRow]) -> String {
    let mut csv = String::from(MMU_CSV_HEADER);
    csv.push('\n');
    for r in rows {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{:.1},{},{},{},{:.1}\n",
            r.mode,
            r.policy,
            r.spaces,
            r.first_touch,
            r.cr3_hit,
            r.cr3_miss,
            r.miss_hit_ratio(),
            r.switch_touch,
            r.hits,
            r.misses,
            r.hit_rate()
        ));
    }
    csv
}

/// The targets, reported (never asserted): a shadow #PF round trip within 2,500
/// cycles, a CR3 hit at least 10x cheaper than a miss in every mode, PAE and 2-level hit
/// rates equal to the 64-bit one at each number of spaces (KVM's policy: 0 %).
pub fn mmu_targets(rows: &[MmuRow]) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let umbra: Vec<&MmuRow> = rows.iter().filter(|r| r.policy == "umbra").collect();
    let mut seen: Vec<&str> = Vec::new();
    for r in &umbra {
        if seen.contains(&r.mode.as_str()) {
            continue;
        }
        seen.push(&r.mode);
        out.push((
            format!(
                "{}: shadow #PF round trip (first touch) {} <= 2500 cycles",
                r.mode, r.first_touch
            ),
            r.first_touch <= 2500,
        ));
        out.push((
            format!(
                "{}: CR3 hit {} at least 10x cheaper than a miss {} ({:.1}x)",
                r.mode,
                r.cr3_hit,
                r.cr3_miss,
                r.miss_hit_ratio()
            ),
            r.miss_hit_ratio() >= 10.0,
        ));
    }
    for r in &umbra {
        if r.mode == "64-bit" {
            continue;
        }
        if let Some(base) = umbra
            .iter()
            .find(|b| b.mode == "64-bit" && b.spaces == r.spaces)
        {
            out.push((
                format!(
                    "{} hit rate {:.1} % = 64-bit {:.1} % over {} spaces",
                    r.mode,
                    r.hit_rate(),
                    base.hit_rate(),
                    r.spaces
                ),
                (r.hits, r.misses) == (base.hits, base.misses),
            ));
        }
    }
    for r in rows.iter().filter(|r| r.policy == "kvm") {
        out.push((
            format!(
                "{} with KVM's policy: hit rate {:.1} % = 0 over {} spaces",
                r.mode,
                r.hit_rate(),
                r.spaces
            ),
            r.hits == 0,
        ));
    }
    out
}

/// Workload runs of `bench-mmu`: (64-bit, PAE and 2-level with Umbra's policy, PAE and
/// 2-level with KVM's) x (2, 4, 8, 16 spaces).
pub const MMU_ROWS: usize = 5 * 4;

/// `make bench`, third part: boots `scenario=bench-mmu` in Bochs, joins the guests' cycle
/// figures with the MMU's counters, prints the table and the targets, and writes
/// `build/bench/mmu.csv`.
pub fn run_mmu(iso: &Path, build_dir: &Path) -> Result<u8, String> {
    let (passed, log, log_path) = boot_bench(abi::scenario::BENCH_MMU, iso, build_dir)?;
    let rows = join_mmu(&parse_mmu_figures(&log), &parse_mmu_counters(&log));
    if !passed || rows.len() != MMU_ROWS {
        return Err(format!(
            "bench-mmu did not complete ({} of {MMU_ROWS} rows; see {})",
            rows.len(),
            log_path.display()
        ));
    }
    println!();
    println!("Shadow MMU, measured by the guest in Bochs cycles (= instructions; deterministic), medians:");
    println!("  first touch = a write to a page mapped by the guest but not yet shadowed (a #PF round trip");
    println!("  through the MMU service); CR3 hit = `mov cr3` ping-pong between 2 spaces (the target is the");
    println!("  latest previous root: a hit unless the policy never caches it); CR3 miss = `mov cr3` round-robin");
    println!("  over 16 spaces (prev_roots 8); switch+touch = `mov cr3` and a read in the new space, median of");
    println!("  the workload (400 switches round-robin over the spaces); hits, misses, hit rate = the MMU's");
    println!("  prev_roots counters for that workload (its first load of each space misses). umbra = the");
    println!(
        "  default configuration; kvm = Linux KVM's policy (per-vCPU PAE roots never cached)."
    );
    println!(
        "{:>8} {:>6} {:>6} {:>11} {:>8} {:>8} {:>8} {:>12} {:>6} {:>6} {:>8}",
        "mode",
        "policy",
        "spaces",
        "first touch",
        "CR3 hit",
        "CR3 miss",
        "miss/hit",
        "switch+touch",
        "hits",
        "misses",
        "hit rate"
    );
    for r in &rows {
        println!(
            "{:>8} {:>6} {:>6} {:>11} {:>8} {:>8} {:>7.1}x {:>12} {:>6} {:>6} {:>7.1}%",
            r.mode,
            r.policy,
            r.spaces,
            r.first_touch,
            r.cr3_hit,
            r.cr3_miss,
            r.miss_hit_ratio(),
            r.switch_touch,
            r.hits,
            r.misses,
            r.hit_rate()
        );
    }
    println!("targets (reported, not asserted):");
    for (what, met) in mmu_targets(&rows) {
        println!("  {:<8} {what}", if met { "met" } else { "NOT MET" });
    }
    let dir: PathBuf = build_dir.join("bench");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join("mmu.csv");
    fs::write(&path, mmu_csv(&rows)).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(0)
}

#[cfg(test)]
#[path = "bench_tests.rs"]
mod tests;
