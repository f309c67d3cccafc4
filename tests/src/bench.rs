//! `make bench`: boots `scenario=bench-ipc` in Bochs (whose TSC counts instructions, so the
//! figures are deterministic path lengths), reads the `bench-ipc: csv ...` lines from the
//! serial log, prints them as a table and writes `build/bench/ipc.csv`.

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
        emu: Emu::Bochs,
        scenario: scenario.to_string(),
        timeout_secs: None,
        expect: Some(Expect::Pass),
        iso: iso.to_path_buf(),
        build_dir: build_dir.to_path_buf(),
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
}

pub const VMM_CSV_HEADER: &str = "op,via,median_cycles,min_cycles";

/// The `bench-vmm: via=V op=O min=N median=N` lines of a log.
pub fn parse_exit_rows(log: &str) -> Vec<ExitRow> {
    log.lines()
        .filter_map(|l| l.split_once("bench-vmm: via=").map(|(_, rest)| rest))
        .filter_map(|rest| {
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
            })
        })
        .collect()
}

/// `make bench`, second part: boots `scenario=bench-vmm` in Bochs and prints each exit round
/// trip through the VMM service next to the in-kernel floor; writes `build/bench/vmm.csv`.
pub fn run_vmm(iso: &Path, build_dir: &Path) -> Result<u8, String> {
    let (passed, log, log_path) = boot_bench(abi::scenario::BENCH_VMM, iso, build_dir)?;
    let rows = parse_exit_rows(&log);
    if !passed || rows.len() != 6 {
        return Err(format!(
            "bench-vmm did not complete ({} rows; see {})",
            rows.len(),
            log_path.display()
        ));
    }
    let find = |via: &str, op: &str| rows.iter().find(|r| r.via == via && r.op == op);
    println!();
    println!("VM exit round trip measured by the guest (rdtsc; op; rdtsc), Bochs cycles (= instructions), median of 1000:");
    println!(
        "{:>8} {:>12} {:>14} {:>8}",
        "exit", "via VMM", "kernel floor", "ratio"
    );
    for op in ["cpuid", "vmcall", "out"] {
        if let (Some(v), Some(k)) = (find("vmm", op), find("kernel", op)) {
            let ratio = v.median as f64 / k.median.max(1) as f64;
            println!(
                "{:>8} {:>12} {:>14} {:>7.1}x",
                op, v.median, k.median, ratio
            );
        }
    }
    let dir: PathBuf = build_dir.join("bench");
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut csv = String::from(VMM_CSV_HEADER);
    csv.push('\n');
    for row in &rows {
        csv.push_str(&format!(
            "{},{},{},{}\n",
            row.op, row.via, row.median, row.min
        ));
    }
    let path = dir.join("vmm.csv");
    fs::write(&path, csv).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exit_lines() {
        let log = "[vmm-service] bench: bench-vmm: via=vmm op=cpuid min=3609 median=3610\n\
                   [vmm-service] bench: bench-vmm: via=kernel op=out min=323 median=323\n\
                   [vmm-service] bench: bench-vmm: via=kernel op=out min=x median=323\n\
                   [vmm-service] bench: bench-vmm: start, 1000 rounds per op\n";
        let rows = parse_exit_rows(log);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            ExitRow {
                via: "vmm".into(),
                op: "cpuid".into(),
                min: 3609,
                median: 3610
            }
        );
        assert_eq!(rows[1].via, "kernel");
    }

    #[test]
    fn parses_csv_lines_and_skips_the_header() {
        let log = "[bench-ipc] bench-ipc: csv payload_bytes,median_cycles,min_cycles,mean_cycles,max_cycles,rounds\n\
                   [bench-ipc] bench-ipc: csv 0,400,390,402,900,1000\n\
                   noise\n\
                   [bench-ipc] bench-ipc: csv 64,450,440,451,950,1000\n\
                   [bench-ipc] bench-ipc: csv 64,broken\n";
        let rows = parse_ipc_rows(log);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].median, 400);
        assert_eq!(rows[1].payload, 64);
    }
}
