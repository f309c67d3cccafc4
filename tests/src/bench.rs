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

/// Runs the benchmark; returns the process exit code.
pub fn run_ipc(iso: &Path, build_dir: &Path) -> Result<u8, String> {
    let opts = RunOptions {
        emu: Emu::Bochs,
        scenario: abi::scenario::BENCH_IPC.to_string(),
        timeout_secs: None,
        expect: Some(Expect::Pass),
        iso: iso.to_path_buf(),
        build_dir: build_dir.to_path_buf(),
    };
    let r = runner::run(&opts).map_err(|e| e.0)?;
    let log =
        fs::read_to_string(&r.log_path).map_err(|e| format!("{}: {e}", r.log_path.display()))?;
    let rows = parse_ipc_rows(&crate::judge::clean_console(log.as_bytes()));
    if !r.verdict.check_passed || rows.len() != 3 {
        return Err(format!(
            "bench-ipc did not complete ({} rows; see {})",
            rows.len(),
            r.log_path.display()
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

#[cfg(test)]
mod tests {
    use super::*;

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
