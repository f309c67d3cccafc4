//! `make trace`: the exit trace report of each traced VM, parsed from the serial log.
//!
//! The on-target suite prints, after every traced VM run, these lines (behind its
//! `[vmm-suite] ` prefix; times in cycles, histogram buckets `[lo, hi)`, nonzero ones only,
//! ascending, a long list continued on the next line):
//!
//! ```text
//! trace: vm=<name> id=<u32> exits=<u64> time=<u64> dropped=<u64> lost=<0|1>
//! trace: vm=<name> reason=<reason> code=<u16> count=.. min=.. p50=.. p90=.. p99=.. max=.. total=.. handler_p50=.. handler_total=..
//! trace-hist: vm=<name> reason=<reason> share=<full|handler> buckets=<lo>-<hi>:<count>,...
//! trace: vm=<name> end
//! ```
//!
//! [`parse_log`] turns a whole log into one [`TraceReport`] per VM block; [`render_table`]
//! prints one as a `perf kvm stat`-like table; [`write_csv`] and [`draw_svg`] write the files
//! `make trace` leaves in `build/trace/`. Times are TSC cycles (in Bochs: instructions).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

pub use crate::trace_svg::draw_svg;

/// One exit reason of a VM's report (a `trace: vm=.. reason=..` line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceRow {
    /// `abi::vmx::reason::name(code)`, or `reason-<code>`.
    pub reason: String,
    pub code: u16,
    /// Exits of this reason (including those that stopped the vCPU, which have no time).
    pub count: u64,
    /// Exit-to-entry cycles of those exits: minimum, percentiles, maximum and sum.
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub total: u64,
    /// The handler's share (`t_reply - t_recv`): median and sum.
    pub handler_p50: u64,
    pub handler_total: u64,
}

/// Which time a histogram counts: the trace protocol's own, named in `share=` as
/// [`Share::name`] says.
pub use userlib::proto::trace::Share;

/// One histogram bucket: `count` exits took `[lo, hi)` cycles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub lo: u64,
    pub hi: u64,
    pub count: u64,
}

/// The latency histogram of one reason and share (its nonzero buckets, ascending).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceHist {
    pub reason: String,
    pub share: Share,
    pub buckets: Vec<Bucket>,
}

impl TraceHist {
    /// Exits counted in the histogram.
    pub fn samples(&self) -> u64 {
        self.buckets.iter().map(|b| b.count).sum()
    }
}

/// The trace report of one VM run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceReport {
    pub vm: String,
    /// The VM's trace id.
    pub id: u32,
    /// Exits traced, and the sum of their exit-to-entry cycles.
    pub exits: u64,
    pub time: u64,
    /// Records the kernel's ring dropped (ring full) since the trace service started.
    pub dropped: u64,
    /// The trace service restarted after this VM's tracing began.
    pub lost: bool,
    /// One row per reason, in the order printed (highest total first).
    pub rows: Vec<TraceRow>,
    pub hists: Vec<TraceHist>,
}

impl TraceReport {
    /// The exits the percentages divide: the header's count, or the rows' sum if it is 0.
    fn exits_base(&self) -> u64 {
        if self.exits > 0 {
            self.exits
        } else {
            self.rows.iter().map(|r| r.count).sum()
        }
    }

    /// The cycles the percentages divide: the header's time, or the rows' sum if it is 0.
    fn time_base(&self) -> u64 {
        if self.time > 0 {
            self.time
        } else {
            self.rows.iter().map(|r| r.total).sum()
        }
    }

    /// `row`'s share of the VM's exits, in percent.
    pub fn share_exits(&self, row: &TraceRow) -> f64 {
        percent(row.count, self.exits_base())
    }

    /// `row`'s share of the VM's exit-to-entry time, in percent.
    pub fn share_time(&self, row: &TraceRow) -> f64 {
        percent(row.total, self.time_base())
    }

    /// The rows by share of time, largest first (ties: more exits first, then by name).
    pub fn rows_by_time(&self) -> Vec<&TraceRow> {
        let mut rows: Vec<&TraceRow> = self.rows.iter().collect();
        rows.sort_by(|a, b| {
            b.total
                .cmp(&a.total)
                .then(b.count.cmp(&a.count))
                .then(a.reason.cmp(&b.reason))
        });
        rows
    }

    /// The histogram of `reason` and `share`, if the log had one.
    pub fn hist(&self, reason: &str, share: Share) -> Option<&TraceHist> {
        self.hists
            .iter()
            .find(|h| h.reason == reason && h.share == share)
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// What a trace line of the log says.
enum Line<'a> {
    Header {
        vm: &'a str,
        id: u32,
        exits: u64,
        time: u64,
        dropped: u64,
        lost: bool,
    },
    Row {
        vm: &'a str,
        row: TraceRow,
    },
    Hist {
        vm: &'a str,
        hist: TraceHist,
    },
    End {
        vm: &'a str,
    },
}

/// The body of a trace line (`trace: vm=..` or `trace-hist: vm=..`) after an optional
/// `[task] ` prefix; `None` for every other line.
fn trace_body(line: &str) -> Option<&str> {
    let line = line.trim_end();
    let body = match line.strip_prefix('[') {
        Some(rest) => match rest.split_once("] ") {
            Some((task, body)) if !task.contains(char::is_whitespace) => body,
            _ => line,
        },
        None => line,
    };
    let body = body.trim_start();
    (body.starts_with("trace: vm=") || body.starts_with("trace-hist: vm=")).then_some(body)
}

/// The `key=value` words of a line, in order.
struct Fields<'a> {
    pairs: Vec<(&'a str, &'a str)>,
}

impl<'a> Fields<'a> {
    fn new(words: &'a str) -> Result<Fields<'a>, String> {
        let mut pairs = Vec::new();
        for w in words.split_ascii_whitespace() {
            let (k, v) = w
                .split_once('=')
                .ok_or_else(|| format!("`{w}` is not key=value"))?;
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(format!("`{k}` appears twice"));
            }
            pairs.push((k, v));
        }
        Ok(Fields { pairs })
    }

    fn has(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| *k == key)
    }

    fn str(&self, key: &str) -> Result<&'a str, String> {
        self.pairs
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("no `{key}=`"))
    }

    fn num<T: std::str::FromStr>(&self, key: &str) -> Result<T, String> {
        let v = self.str(key)?;
        // Decimal digits only: `+5` or `-0` from a broken printer is an error too.
        if !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("`{key}={v}` is not a decimal number"));
        }
        v.parse()
            .map_err(|_| format!("`{key}={v}` is out of range"))
    }
}

fn parse_buckets(list: &str) -> Result<Vec<Bucket>, String> {
    let mut out = Vec::new();
    for item in list.split(',').filter(|s| !s.is_empty()) {
        let bad = || format!("bucket `{item}` is not <lo>-<hi>:<count>");
        let (range, count) = item.split_once(':').ok_or_else(bad)?;
        let (lo, hi) = range.split_once('-').ok_or_else(bad)?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(lo) || !digits(hi) || !digits(count) {
            return Err(bad());
        }
        let num = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| format!("bucket `{item}`: `{s}` is out of range"))
        };
        let b = Bucket {
            lo: num(lo)?,
            hi: num(hi)?,
            count: num(count)?,
        };
        if b.lo >= b.hi {
            return Err(format!("bucket `{item}`: lo is not below hi"));
        }
        if out.last().is_some_and(|prev: &Bucket| b.lo < prev.hi) {
            return Err(format!("bucket `{item}`: buckets overlap or go back"));
        }
        out.push(b);
    }
    if out.is_empty() {
        return Err("no buckets".into());
    }
    Ok(out)
}

fn parse_line(body: &str) -> Result<Line<'_>, String> {
    if let Some(words) = body.strip_prefix("trace-hist: ") {
        let f = Fields::new(words)?;
        let share = f.str("share")?;
        let share = Share::from_name(share)
            .ok_or_else(|| format!("`share={share}` is neither full nor handler"))?;
        return Ok(Line::Hist {
            vm: f.str("vm")?,
            hist: TraceHist {
                reason: f.str("reason")?.to_string(),
                share,
                buckets: parse_buckets(f.str("buckets")?)?,
            },
        });
    }
    let words = body.strip_prefix("trace: ").expect("trace_body checked");
    let mut it = words.split_ascii_whitespace();
    if let (Some(vm), Some("end"), None) = (it.next(), it.next(), it.next()) {
        if let Some(vm) = vm.strip_prefix("vm=").filter(|v| !v.is_empty()) {
            return Ok(Line::End { vm });
        }
    }
    let f = Fields::new(words)?;
    let vm = f.str("vm")?;
    if f.has("reason") {
        return Ok(Line::Row {
            vm,
            row: TraceRow {
                reason: f.str("reason")?.to_string(),
                code: f.num("code")?,
                count: f.num("count")?,
                min: f.num("min")?,
                p50: f.num("p50")?,
                p90: f.num("p90")?,
                p99: f.num("p99")?,
                max: f.num("max")?,
                total: f.num("total")?,
                handler_p50: f.num("handler_p50")?,
                handler_total: f.num("handler_total")?,
            },
        });
    }
    let lost = match f.str("lost")? {
        "0" => false,
        "1" => true,
        other => return Err(format!("`lost={other}` is neither 0 nor 1")),
    };
    Ok(Line::Header {
        vm,
        id: f.num("id")?,
        exits: f.num("exits")?,
        time: f.num("time")?,
        dropped: f.num("dropped")?,
        lost,
    })
}

/// Every VM's trace report in a serial log (the whole text), in the order they were printed.
/// Other lines are skipped; a malformed trace line, a line of a VM outside its block, or a
/// block without its `end` line is an error that says which (line numbers count from 1).
pub fn parse_log(log: &str) -> Result<Vec<TraceReport>, String> {
    let mut done: Vec<TraceReport> = Vec::new();
    let mut open: Option<(TraceReport, usize)> = None;
    for (i, line) in log.lines().enumerate() {
        let n = i + 1;
        let Some(body) = trace_body(line) else {
            continue;
        };
        let parsed =
            parse_line(body).map_err(|why| format!("trace line {n}: {why}: `{}`", body))?;
        let cut_short = |r: &TraceReport, start: usize| {
            format!(
                "trace report of VM {} (line {start}) is cut short: line {n} comes before its `end` line",
                r.vm
            )
        };
        match parsed {
            Line::Header {
                vm,
                id,
                exits,
                time,
                dropped,
                lost,
            } => {
                if let Some((r, start)) = &open {
                    return Err(cut_short(r, *start));
                }
                open = Some((
                    TraceReport {
                        vm: vm.to_string(),
                        id,
                        exits,
                        time,
                        dropped,
                        lost,
                        rows: Vec::new(),
                        hists: Vec::new(),
                    },
                    n,
                ));
            }
            Line::Row { vm, row } => {
                let r = block(&mut open, vm, n, body)?;
                if r.rows.iter().any(|x| x.reason == row.reason) {
                    return Err(format!(
                        "trace line {n}: VM {vm} has two rows for reason {}: `{body}`",
                        row.reason
                    ));
                }
                r.rows.push(row);
            }
            Line::Hist { vm, hist } => {
                let r = block(&mut open, vm, n, body)?;
                // A long list continues on the next line: the same reason and share again.
                match r.hists.last_mut() {
                    Some(last) if last.reason == hist.reason && last.share == hist.share => {
                        if let (Some(prev), Some(next)) =
                            (last.buckets.last(), hist.buckets.first())
                        {
                            if next.lo < prev.hi {
                                return Err(format!(
                                    "trace line {n}: buckets of {vm} {} {} overlap or go back: `{body}`",
                                    hist.reason,
                                    hist.share.name()
                                ));
                            }
                        }
                        last.buckets.extend(hist.buckets);
                    }
                    _ => {
                        if r.hist(&hist.reason, hist.share).is_some() {
                            return Err(format!(
                                "trace line {n}: a second {} histogram of {vm} {} after others: `{body}`",
                                hist.share.name(),
                                hist.reason
                            ));
                        }
                        r.hists.push(hist);
                    }
                }
            }
            Line::End { vm } => {
                block(&mut open, vm, n, body)?;
                let (r, _) = open.take().expect("block checked");
                done.push(r);
            }
        }
    }
    if let Some((r, start)) = open {
        return Err(format!(
            "trace report of VM {} (line {start}) is cut short: the log ends before its `end` line",
            r.vm
        ));
    }
    Ok(done)
}

/// The open block, if `vm` is its VM.
fn block<'a>(
    open: &'a mut Option<(TraceReport, usize)>,
    vm: &str,
    n: usize,
    body: &str,
) -> Result<&'a mut TraceReport, String> {
    match open {
        Some((r, start)) if r.vm != vm => Err(format!(
            "trace report of VM {} (line {start}) is cut short: line {n} is VM {vm}'s: `{body}`",
            r.vm
        )),
        Some((r, _)) => Ok(r),
        None => Err(format!(
            "trace line {n}: VM {vm} has no `trace: vm={vm} id=..` line before it: `{body}`"
        )),
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The cells of one line of the table.
type Cells = [String; COLUMNS.len()];

/// A time of `row`, or `-` when none of its exits had one (each stopped the vCPU).
fn cycles(row: &TraceRow, t: u64) -> String {
    if row.max == 0 {
        "-".to_string()
    } else {
        thousands(t)
    }
}

/// The columns of the table: header, and whether the column is left-aligned.
const COLUMNS: [(&str, bool); 9] = [
    ("reason", true),
    ("count", false),
    ("% exits", false),
    ("% time", false),
    ("min", false),
    ("median", false),
    ("p99", false),
    ("max", false),
    ("handler median", false),
];

/// The report of one VM as a `perf kvm stat`-like table: a row per exit reason by share of
/// time, then the totals and, if records were dropped or lost, a warning.
pub fn render_table(r: &TraceReport) -> String {
    let mut cells: Vec<Cells> = Vec::new();
    for row in r.rows_by_time() {
        cells.push([
            row.reason.clone(),
            thousands(row.count),
            format!("{:.2}%", r.share_exits(row)),
            format!("{:.2}%", r.share_time(row)),
            cycles(row, row.min),
            cycles(row, row.p50),
            cycles(row, row.p99),
            cycles(row, row.max),
            if row.handler_total == 0 {
                "-".to_string()
            } else {
                thousands(row.handler_p50)
            },
        ]);
    }
    let rows_exits: u64 = r.rows.iter().map(|x| x.count).sum();
    let rows_time: u64 = r.rows.iter().map(|x| x.total).sum();
    let total: Cells = [
        "total".to_string(),
        thousands(rows_exits),
        format!("{:.2}%", percent(rows_exits, r.exits_base())),
        format!("{:.2}%", percent(rows_time, r.time_base())),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    ];
    let mut width: [usize; COLUMNS.len()] = COLUMNS.map(|(h, _)| h.len());
    for line in cells.iter().chain(std::iter::once(&total)) {
        for (w, c) in width.iter_mut().zip(line) {
            *w = (*w).max(c.chars().count());
        }
    }
    let fmt_line = |line: &Cells| {
        let mut s = String::from(" ");
        for (i, c) in line.iter().enumerate() {
            let w = width[i];
            if COLUMNS[i].1 {
                let _ = write!(s, " {c:<w$}");
            } else {
                let _ = write!(s, "  {c:>w$}");
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = format!(
        "VM {} (trace id {}): exit to entry, in cycles (Bochs: instructions); rows by share of time\n",
        r.vm, r.id
    );
    out += &fmt_line(&COLUMNS.map(|(h, _)| h.to_string()));
    let line_len: usize = 1 + width
        .iter()
        .zip(COLUMNS)
        .map(|(w, (_, left))| w + if left { 1 } else { 2 })
        .sum::<usize>();
    let rule = format!("  {}\n", "-".repeat(line_len - 2));
    out += &rule;
    for line in &cells {
        out += &fmt_line(line);
    }
    out += &rule;
    out += &fmt_line(&total);
    let _ = writeln!(
        out,
        "  {} exits, {} cycles from exit to entry, {} records dropped{}",
        thousands(r.exits),
        thousands(r.time),
        thousands(r.dropped),
        if r.lost {
            ", trace service restarted"
        } else {
            ""
        }
    );
    if rows_exits != r.exits {
        let _ = writeln!(
            out,
            "  note: the rows count {} exits, the VM's line {}",
            thousands(rows_exits),
            thousands(r.exits)
        );
    }
    if r.dropped > 0 {
        let _ = writeln!(
            out,
            "  WARNING: the kernel's trace ring dropped {} records (it was full): the figures miss those exits",
            thousands(r.dropped)
        );
    }
    if r.lost {
        let _ = writeln!(
            out,
            "  WARNING: the trace service restarted during this VM's run: the exits before the restart are missing"
        );
    }
    out
}

/// The CSV header of `build/trace/<name>.csv` (shares are percentages).
pub const CSV_HEADER: &str = "vm,reason,code,count,share_exits,share_time,min,p50,p90,p99,max,total,handler_p50,handler_total";

/// A CSV field, quoted if it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The CSV text: the header, then a row per (VM, reason), each VM's rows by share of time.
pub fn csv_text(reports: &[TraceReport]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for r in reports {
        for row in r.rows_by_time() {
            let _ = writeln!(
                out,
                "{},{},{},{},{:.2},{:.2},{},{},{},{},{},{},{},{}",
                csv_field(&r.vm),
                csv_field(&row.reason),
                row.code,
                row.count,
                r.share_exits(row),
                r.share_time(row),
                row.min,
                row.p50,
                row.p90,
                row.p99,
                row.max,
                row.total,
                row.handler_p50,
                row.handler_total
            );
        }
    }
    out
}

/// Writes [`csv_text`] to `path` (creating its directory).
pub fn write_csv(path: &Path, reports: &[TraceReport]) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    fs::write(path, csv_text(reports)).map_err(|e| format!("{}: {e}", path.display()))
}

/// What `make trace` tells when the log has no trace report.
pub const NO_TRACE_LINES: &str =
    "no trace lines in the log: is the trace service in this scenario?";

/// `make trace` after the run: parses the (cleaned) serial log, prints the table of every
/// traced VM, writes `<out_dir>/<name>.csv` and `<out_dir>/<name>.svg` and prints their
/// paths. An error when the log has no trace report or a malformed one.
pub fn report(log: &str, name: &str, out_dir: &Path) -> Result<Vec<TraceReport>, String> {
    let reports = parse_log(log)?;
    if reports.is_empty() {
        return Err(NO_TRACE_LINES.to_string());
    }
    for r in &reports {
        println!();
        print!("{}", render_table(r));
    }
    println!();
    let csv = out_dir.join(format!("{name}.csv"));
    write_csv(&csv, &reports)?;
    let svg = out_dir.join(format!("{name}.svg"));
    draw_svg(&svg, &reports)?;
    println!("wrote {} (a row per VM and exit reason)", csv.display());
    println!(
        "wrote {} (latency distribution per exit reason, one row of panels per VM)",
        svg.display()
    );
    Ok(reports)
}

#[cfg(test)]
#[path = "trace_tests.rs"]
mod tests;
