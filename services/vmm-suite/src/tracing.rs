//! Exit tracing from the client's side: the report of a traced VM (the console lines
//! `make trace` reads, see `tests/src/trace.rs`), and the `trace` scenario's suite — the
//! trace service's counts against the VMM's and the MMU service's, and a trace-service
//! restart.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use abi::vmx::reason;
use heapless::{String, Vec};
use userlib::client::ClientError;
use userlib::proto::trace::{Request, Response, Row, Share, Totals, Trace, TraceError};
use userlib::proto::vmm::{EntryMode, VmSummary};
use userlib::proto::ProtoError;
use userlib::suite::Suite;

/// The trace service's endpoint (when the manifest wires it).
pub static TRACE: AtomicU64 = AtomicU64::new(abi::NO_CAP);
/// The kernel command line has the word `trace`: every VM the suite runs is traced.
pub static TRACE_ALL: AtomicBool = AtomicBool::new(false);

/// Most exit reasons a report holds.
const MAX_ROWS: usize = 32;

/// What the trace service answered about one VM (the harness parses the lines
/// [`print_report`] makes into its own `umbra_tests::trace::TraceReport`).
pub struct TraceReport {
    pub totals: Totals,
    pub rows: Vec<Row, MAX_ROWS>,
}

fn client() -> userlib::client::Client<userlib::ipc::Endpoint, Trace> {
    userlib::ipc::client::<Trace>(TRACE.load(Ordering::Relaxed))
}

/// Every row of VM `vm` (all pages).
pub fn query(vm: u32) -> Result<TraceReport, String<96>> {
    let mut c = client();
    let mut from = 0;
    let mut rows: Vec<Row, MAX_ROWS> = Vec::new();
    loop {
        match c.call(&Request::Query {
            vm,
            from_reason: from,
        }) {
            Ok(Response::Rows {
                totals,
                rows: page,
                next,
                ..
            }) => {
                rows.extend(page.iter().take(MAX_ROWS - rows.len()).cloned());
                match next {
                    Some(n) if n > from => from = n,
                    _ => return Ok(TraceReport { totals, rows }),
                }
            }
            other => return Err(what(format_args!("query of VM {vm}: {other:?}"))),
        }
    }
}

fn what(args: core::fmt::Arguments<'_>) -> String<96> {
    let mut s = String::new();
    let _ = core::fmt::write(&mut s, args);
    s
}

fn reason_name(code: u16) -> String<24> {
    match reason::name(u32::from(code)) {
        Some(n) => String::try_from(n).unwrap_or_default(),
        None => what(format_args!("reason-{code}"))
            .chars()
            .take(24)
            .collect(),
    }
}

/// Prints VM `vm`'s report in the console format of `make trace` and returns it.
pub fn print_report(name: &str, vm: u32) -> Option<TraceReport> {
    let report = match query(vm) {
        Ok(r) => r,
        Err(e) => {
            userlib::println!("trace: vm={name} id={vm}: no report: {e}");
            return None;
        }
    };
    let t = &report.totals;
    userlib::println!(
        "trace: vm={name} id={vm} exits={} time={} dropped={} lost={}",
        t.exits,
        t.time,
        t.dropped,
        u8::from(t.lost)
    );
    let mut order: Vec<usize, MAX_ROWS> = (0..report.rows.len()).collect();
    order.sort_unstable_by(|&a, &b| report.rows[b].total.cmp(&report.rows[a].total));
    for &i in &order {
        let r = &report.rows[i];
        userlib::println!(
            "trace: vm={name} reason={} code={} count={} min={} p50={} p90={} p99={} max={} total={} handler_p50={} handler_total={}",
            reason_name(r.reason),
            r.reason,
            r.count,
            r.min,
            r.p50,
            r.p90,
            r.p99,
            r.max,
            r.total,
            r.handler_p50,
            r.handler_total
        );
    }
    for &i in &order {
        let code = report.rows[i].reason;
        for share in [Share::Full, Share::Handler] {
            print_buckets(name, vm, code, share);
        }
    }
    userlib::println!("trace: vm={name} end");
    Some(report)
}

/// One `trace-hist:` line per page of nonzero buckets.
fn print_buckets(name: &str, vm: u32, code: u16, share: Share) {
    let mut c = client();
    let mut from = 0;
    let share_name = share.name();
    loop {
        let Ok(Response::Buckets { buckets, next }) = c.call(&Request::Buckets {
            vm,
            reason: code,
            share,
            from,
        }) else {
            return;
        };
        if buckets.is_empty() {
            return;
        }
        // A console line stays under the 256-byte print buffer: five buckets a line.
        for group in buckets.chunks(5) {
            let mut line: String<200> = String::new();
            for (i, b) in group.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let _ = core::fmt::write(
                    &mut line,
                    format_args!("{sep}{}-{}:{}", b.lo, b.hi, b.count),
                );
            }
            userlib::println!(
                "trace-hist: vm={name} reason={} share={share_name} buckets={}",
                reason_name(code),
                line.as_str()
            );
        }
        match next {
            Some(n) if n > from => from = n,
            _ => return,
        }
    }
}

/// The trace service's counts of a run against the VMM's summary (the kernel's per-reason
/// counters) and, for a shadow VM, the MMU service's.
fn counts_agree(t: &mut Suite, label: &str, s: &VmSummary) -> Option<TraceReport> {
    let Some(vm) = s.trace else {
        t.check(label, false, format_args!("the run was not traced: {s:?}"));
        return None;
    };
    let report = query(vm);
    let Ok(report) = report else {
        t.check(label, false, format_args!("{:?}", report.err()));
        return None;
    };
    let count_of = |code: u32| {
        report
            .rows
            .iter()
            .find(|r| u32::from(r.reason) == code)
            .map_or(0, |r| r.count)
    };
    let per_reason = s
        .exits
        .iter()
        .all(|&(r, n)| count_of(u32::from(r)) == u64::from(n));
    let total = report.totals.exits == s.total_exits;
    t.check(
        label,
        per_reason && total,
        format_args!(
            "trace {} exits, VMM {}; VMM per reason {:?}; trace rows {:?}",
            report.totals.exits,
            s.total_exits,
            s.exits,
            report
                .rows
                .iter()
                .map(|r| (r.reason, r.count))
                .collect::<Vec<_, MAX_ROWS>>()
        ),
    );
    t.check(
        "  no record dropped or lost",
        report.totals.dropped == 0 && !report.totals.lost,
        format_args!("{:?}", report.totals),
    );
    if let Some(m) = &s.shadow {
        let pf = count_of(reason::EXCEPTION_NMI);
        let invlpg = count_of(reason::INVLPG);
        t.check(
            "  #PF and INVLPG exits equal the MMU service's",
            pf == m.faults && invlpg == m.invlpg,
            format_args!("trace #PF {pf}, INVLPG {invlpg}; MMU {m:?}"),
        );
    }
    Some(report)
}

/// Whether the handler's share was measured for a reason the VMM handles.
fn handler_measured(report: &TraceReport, code: u32) -> bool {
    report
        .rows
        .iter()
        .find(|r| u32::from(r.reason) == code)
        .is_some_and(|r| r.handler_total > 0 && r.handler_total < r.total && r.min <= r.p50)
}

fn status() -> Result<userlib::proto::trace::Status, ClientError> {
    match client().call(&Request::Status) {
        Ok(Response::Status(s)) => Ok(s),
        Ok(other) => {
            userlib::println!("trace: status: {other:?}");
            Err(ClientError::Kernel(abi::Error::InvalidArgument))
        }
        Err(e) => Err(e),
    }
}

/// The `trace` scenario.
pub fn trace_suite(t: &mut Suite) {
    let demo = crate::config("demo", "guest-multiboot", 16, EntryMode::Multiboot);
    if let Some(s) = crate::passing_guest(t, "demo guest, traced", &demo) {
        if let Some(r) = counts_agree(t, "  trace counts equal the VMM's, reason by reason", &s) {
            t.check(
                "  the handler's share of CPUID and I/O exits measured",
                handler_measured(&r, reason::CPUID) && handler_measured(&r, reason::IO),
                format_args!("{:?}", r.rows),
            );
        }
    }
    let spaces = crate::shadow(
        &crate::config("spaces64", "guest-spaces64", 16, EntryMode::Multiboot),
        false,
    );
    if let Some(s) = crate::passing_guest(t, "64-bit shadow guest, traced", &spaces) {
        counts_agree(
            t,
            "  trace counts equal the VMM's and the MMU service's",
            &s,
        );
    }
    let untraced = userlib::proto::vmm::VmConfig {
        trace: false,
        ..demo.clone()
    };
    if let Some(s) = crate::passing_guest(t, "demo guest, not traced", &untraced) {
        t.check(
            "  no trace id for an untraced run",
            s.trace.is_none(),
            format_args!("{s:?}"),
        );
    }
    // Bad requests: an id nobody traces, a start without a VM capability.
    let r = client().call(&Request::Query {
        vm: u32::MAX,
        from_reason: 0,
    });
    t.check(
        "a query of an unknown VM: UnknownVm",
        matches!(
            r,
            Ok(Response::Error(ProtoError::Service(TraceError::UnknownVm)))
        ),
        format_args!("{r:?}"),
    );
    let r = client().call(&Request::Start {
        name: String::try_from("nocap").unwrap_or_default(),
    });
    t.check(
        "a start without a VM capability: NoVmCapability",
        matches!(
            r,
            Ok(Response::Error(ProtoError::Service(
                TraceError::NoVmCapability
            )))
        ),
        format_args!("{r:?}"),
    );
    restart(t, &demo);
}

/// The trace service crashes on request; its next generation says the histograms are lost,
/// knows nothing of the VMs before, and traces the next run like the first.
fn restart(t: &mut Suite, demo: &userlib::proto::vmm::VmConfig) {
    let before = status();
    let Ok(before) = before else {
        t.check("trace service status", false, format_args!("{before:?}"));
        return;
    };
    let r = client().call(&Request::Crash);
    t.check(
        "a crash request kills the trace service mid-call",
        matches!(r, Err(ClientError::ServerRestarted { .. })),
        format_args!("{r:?}"),
    );
    let after = status();
    t.check(
        "  its next generation says the histograms are lost",
        after
            .as_ref()
            .is_ok_and(|a| a.restarted && a.generation > before.generation && a.vms == 0),
        format_args!("before {before:?}, after {after:?}"),
    );
    if let Some(s) = crate::passing_guest(t, "demo guest, traced after the restart", demo) {
        counts_agree(t, "  trace counts equal the VMM's again", &s);
    }
}
