//! Unit tests of `trace` and `trace_svg`, on a log written by hand in the format of the
//! suite's trace lines (see `trace`'s module documentation).

use super::*;
use crate::trace_svg::cdf_points;

/// Two traced VMs, with other console lines around and between them. `demo`'s rows come in
/// the printed order except `cpuid` (moved up: the table sorts by time itself), and its `io`
/// histogram spans two lines. `spaces64` dropped records and lost its trace service once.
pub(crate) const SAMPLE: &str = "\
[info] scenario: running 'demo'
[vmm-service] vmm: demo: starting guest-multiboot (16 MiB RAM, Multiboot, entry 0x100010)
[vmm-service] vmm: demo: 648 exits: io=634 vmcall=3 rdmsr=3 ept-violation=3 cpuid=2 wrmsr=2 hlt=1
[vmm-suite] trace: vm=demo id=1 exits=648 time=2079360 dropped=0 lost=0
[vmm-suite] trace: vm=demo reason=io code=30 count=634 min=2810 p50=3105 p90=3560 p99=5120 max=9875 total=1997100 handler_p50=1650 handler_total=1070000
[vmm-suite] trace: vm=demo reason=cpuid code=10 count=2 min=3500 p50=3500 p90=3610 p99=3610 max=3610 total=7110 handler_p50=1700 handler_total=3450
[vmm-suite] trace: vm=demo reason=ept-violation code=48 count=3 min=14020 p50=15110 p90=21500 p99=21500 max=21500 total=50630 handler_p50=11900 handler_total=40100
[vmm-suite] trace: vm=demo reason=vmcall code=18 count=3 min=2900 p50=3020 p90=3300 p99=3300 max=3300 total=9220 handler_p50=1500 handler_total=4600
[vmm-suite] trace: vm=demo reason=rdmsr code=31 count=3 min=2950 p50=3000 p90=3100 p99=3100 max=3100 total=9050 handler_p50=1400 handler_total=4300
[vmm-suite] trace: vm=demo reason=wrmsr code=32 count=2 min=3050 p50=3050 p90=3200 p99=3200 max=3200 total=6250 handler_p50=1500 handler_total=3050
[vmm-suite] trace: vm=demo reason=hlt code=12 count=1 min=0 p50=0 p90=0 p99=0 max=0 total=0 handler_p50=0 handler_total=0
[vmm-suite] trace-hist: vm=demo reason=io share=full buckets=2048-2560:12,2560-3072:280,3072-3584:290
[vmm-suite] trace-hist: vm=demo reason=io share=full buckets=3584-4096:40,4096-5120:6,5120-6144:4,8192-10240:2
[vmm-suite] trace-hist: vm=demo reason=io share=handler buckets=1024-1536:120,1536-2048:500,2048-3072:10,4096-6144:4
[vmm-suite] trace-hist: vm=demo reason=ept-violation share=full buckets=12288-16384:2,16384-24576:1
[vmm-suite] trace-hist: vm=demo reason=ept-violation share=handler buckets=8192-12288:2,16384-24576:1
[vmm-suite] trace-hist: vm=demo reason=vmcall share=full buckets=2560-3072:2,3072-3584:1
[vmm-suite] trace-hist: vm=demo reason=vmcall share=handler buckets=1024-1536:2,1536-2048:1
[vmm-suite] trace-hist: vm=demo reason=rdmsr share=full buckets=2560-3072:2,3072-3584:1
[vmm-suite] trace-hist: vm=demo reason=rdmsr share=handler buckets=1024-1536:3
[vmm-suite] trace-hist: vm=demo reason=cpuid share=full buckets=3072-3584:1,3584-4096:1
[vmm-suite] trace-hist: vm=demo reason=cpuid share=handler buckets=1536-2048:2
[vmm-suite] trace-hist: vm=demo reason=wrmsr share=full buckets=2560-3072:1,3072-3584:1
[vmm-suite] trace-hist: vm=demo reason=wrmsr share=handler buckets=1024-1536:1,1536-2048:1
[vmm-suite] trace: vm=demo end
[vmm-suite] demo: ok   demo guest ran and exited cleanly
trace: vm=spaces64 id=2 exits=2319 time=5220000 dropped=12 lost=1
[vmm-suite] trace: vm=spaces64 reason=cr-access code=28 count=2032 min=1500 p50=1800 p90=2100 p99=2900 max=6000 total=3700000 handler_p50=0 handler_total=0
[vmm-suite] trace: vm=spaces64 reason=exception code=0 count=287 min=4000 p50=5200 p90=6100 p99=9000 max=12000 total=1520000 handler_p50=3900 handler_total=1150000
[vmm-suite] trace-hist: vm=spaces64 reason=cr-access share=full buckets=1024-2048:1500,2048-4096:530,4096-8192:2
[vmm-suite] trace-hist: vm=spaces64 reason=exception share=full buckets=4096-8192:280,8192-16384:7
[vmm-suite] trace-hist: vm=spaces64 reason=exception share=handler buckets=2048-4096:100,4096-8192:187
[vmm-suite] trace: vm=spaces64 end
[vmm-suite] demo: 1 passed, 0 failed
umbra: exit 0
";

fn sample() -> Vec<TraceReport> {
    parse_log(SAMPLE).expect("the sample parses")
}

#[test]
fn parses_the_sample_log() {
    let reports = sample();
    assert_eq!(reports.len(), 2);
    let demo = &reports[0];
    assert_eq!(
        (
            demo.vm.as_str(),
            demo.id,
            demo.exits,
            demo.time,
            demo.dropped,
            demo.lost
        ),
        ("demo", 1, 648, 2_079_360, 0, false)
    );
    assert_eq!(demo.rows.len(), 7);
    assert_eq!(
        demo.rows[0],
        TraceRow {
            reason: "io".into(),
            code: 30,
            count: 634,
            min: 2810,
            p50: 3105,
            p90: 3560,
            p99: 5120,
            max: 9875,
            total: 1_997_100,
            handler_p50: 1650,
            handler_total: 1_070_000,
        }
    );
    // The io histogram's two lines are one list.
    let io = demo.hist("io", Share::Full).expect("io histogram");
    assert_eq!(io.buckets.len(), 7);
    assert_eq!(io.samples(), 634);
    assert_eq!(
        io.buckets[6],
        Bucket {
            lo: 8192,
            hi: 10240,
            count: 2
        }
    );
    assert_eq!(
        demo.hist("io", Share::Handler).map(|h| h.samples()),
        Some(634)
    );
    assert!(demo.hist("hlt", Share::Full).is_none());
    assert_eq!(demo.hists.len(), 12);
    let spaces = &reports[1];
    assert_eq!(
        (spaces.dropped, spaces.lost, spaces.rows.len()),
        (12, true, 2)
    );
}

#[test]
fn a_log_without_trace_lines_has_no_reports() {
    let log = "[vmm-suite] demo: 1 passed, 0 failed\nbench: bench-vmm: via=vmm op=cpuid min=1 median=1\ntrace on\n[trace] trace: started\numbra: exit 0\n";
    assert_eq!(parse_log(log), Ok(Vec::new()));
}

#[test]
fn the_table_sorts_by_time_and_shares_add_up() {
    let demo = &sample()[0];
    let shares_exits: f64 = demo.rows.iter().map(|r| demo.share_exits(r)).sum();
    let shares_time: f64 = demo.rows.iter().map(|r| demo.share_time(r)).sum();
    assert!((shares_exits - 100.0).abs() < 1e-9, "{shares_exits}");
    assert!((shares_time - 100.0).abs() < 1e-9, "{shares_time}");

    let table = render_table(demo);
    println!("{table}");
    let reasons: Vec<&str> = table
        .lines()
        .skip(3)
        .take(7)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "io",
            "ept-violation",
            "vmcall",
            "rdmsr",
            "cpuid",
            "wrmsr",
            "hlt"
        ]
    );
    let io = table.lines().nth(3).unwrap();
    let cells: Vec<&str> = io.split_whitespace().collect();
    assert_eq!(
        cells,
        ["io", "634", "97.84%", "96.04%", "2,810", "3,105", "5,120", "9,875", "1,650"]
    );
    // hlt stopped the vCPU: no times, shown as `-`.
    let hlt: Vec<&str> = table.lines().nth(9).unwrap().split_whitespace().collect();
    assert_eq!(hlt, ["hlt", "1", "0.15%", "0.00%", "-", "-", "-", "-", "-"]);
    let total = table.lines().find(|l| l.trim_start().starts_with("total"));
    let total: Vec<&str> = total.expect("a totals line").split_whitespace().collect();
    assert_eq!(total, ["total", "648", "100.00%", "100.00%"]);
    assert!(table.contains("648 exits, 2,079,360 cycles from exit to entry, 0 records dropped"));
    assert!(!table.contains("WARNING"));
    // Aligned: the header, the rows and the rules are one width.
    let widths: Vec<usize> = table.lines().skip(1).take(10).map(str::len).collect();
    assert!(widths.iter().all(|w| *w == widths[0]), "{widths:?}");
}

#[test]
fn the_table_warns_of_dropped_and_lost_records() {
    let table = render_table(&sample()[1]);
    assert!(table.contains("WARNING: the kernel's trace ring dropped 12 records"));
    assert!(table.contains("WARNING: the trace service restarted"));
    assert!(table.contains("12 records dropped, trace service restarted"));
}

#[test]
fn the_csv_has_the_header_and_a_row_per_vm_and_reason() {
    let csv = csv_text(&sample());
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("vm,reason,code,count,share_exits,share_time,min,p50,p90,p99,max,total,handler_p50,handler_total")
    );
    assert_eq!(
        lines.next(),
        Some("demo,io,30,634,97.84,96.04,2810,3105,3560,5120,9875,1997100,1650,1070000")
    );
    assert_eq!(csv.lines().count(), 1 + 7 + 2);
    assert!(csv.contains(
        "\nspaces64,exception,0,287,12.38,29.12,4000,5200,6100,9000,12000,1520000,3900,1150000\n"
    ));
    let dir = std::env::temp_dir().join(format!("umbra-trace-csv-{}", std::process::id()));
    let path = dir.join("sub").join("demo.csv");
    write_csv(&path, &sample()).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), csv);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_block_without_its_end_is_cut_short() {
    let log = SAMPLE.replace("[vmm-suite] trace: vm=demo end\n", "");
    let e = parse_log(&log).unwrap_err();
    assert!(e.contains("trace report of VM demo"), "{e}");
    assert!(e.contains("is cut short"), "{e}");
    let log = SAMPLE.replace("[vmm-suite] trace: vm=spaces64 end\n", "");
    let e = parse_log(&log).unwrap_err();
    assert!(
        e.starts_with("trace report of VM spaces64 (line 27) is cut short: the log ends"),
        "{e}"
    );
    // The log ends in the middle of a block.
    let cut = &SAMPLE[..SAMPLE.find("trace-hist: vm=demo reason=rdmsr").unwrap()];
    assert!(parse_log(cut)
        .unwrap_err()
        .contains("VM demo (line 4) is cut short"));
}

#[test]
fn a_malformed_number_names_the_line() {
    let log = SAMPLE.replace("count=634", "count=6x4");
    let e = parse_log(&log).unwrap_err();
    assert!(
        e.starts_with("trace line 5: `count=6x4` is not a decimal number"),
        "{e}"
    );
    assert!(e.contains("reason=io code=30 count=6x4"), "{e}");
    let log = SAMPLE.replace("code=30", "code=70000");
    assert!(parse_log(&log)
        .unwrap_err()
        .contains("`code=70000` is out of range"));
    let log = SAMPLE.replace("time=2079360", "time=-1");
    assert!(parse_log(&log).unwrap_err().starts_with("trace line 4:"));
}

#[test]
fn other_malformed_lines_are_errors() {
    let bad = [
        ("lost=0", "lost=2", "`lost=2` is neither 0 nor 1"),
        (" max=9875", "", "no `max=`"),
        (
            "share=handler buckets=1024-1536:120",
            "share=both buckets=1024-1536:120",
            "`share=both`",
        ),
        ("2048-2560:12,", "2560-2048:12,", "lo is not below hi"),
        ("2048-2560:12,", "2048-2560,", "is not <lo>-<hi>:<count>"),
        ("id=1 exits", "id=1 id=1 exits", "`id` appears twice"),
        ("4096-5120:6", "3000-5120:6", "overlap or go back"),
    ];
    for (from, to, why) in bad {
        let log = SAMPLE.replacen(from, to, 1);
        assert_ne!(log, SAMPLE, "{from}");
        let e = parse_log(&log).unwrap_err();
        assert!(e.contains(why), "{from} -> {to}: {e}");
    }
}

#[test]
fn lines_outside_their_block_are_errors() {
    // A row of another VM inside demo's block.
    let log = SAMPLE.replacen(
        "trace: vm=demo reason=vmcall",
        "trace: vm=other reason=vmcall",
        1,
    );
    let e = parse_log(&log).unwrap_err();
    assert!(
        e.contains("VM demo (line 4) is cut short: line 8 is VM other's"),
        "{e}"
    );
    // A row before any header.
    let e = parse_log("trace: vm=x reason=io code=30 count=1 min=1 p50=1 p90=1 p99=1 max=1 total=1 handler_p50=0 handler_total=0\n").unwrap_err();
    assert!(
        e.contains("trace line 1: VM x has no `trace: vm=x id=..` line"),
        "{e}"
    );
    // A second row for one reason.
    let row = SAMPLE.lines().nth(4).unwrap();
    let log = SAMPLE.replacen(row, &format!("{row}\n{row}"), 1);
    assert!(parse_log(&log)
        .unwrap_err()
        .contains("two rows for reason io"));
}

#[test]
fn thousands_separators() {
    assert_eq!(thousands(0), "0");
    assert_eq!(thousands(999), "999");
    assert_eq!(thousands(1000), "1,000");
    assert_eq!(thousands(2_079_360), "2,079,360");
    assert_eq!(thousands(u64::MAX), "18,446,744,073,709,551,615");
}

#[test]
fn the_cdf_rises_to_100_percent() {
    let demo = &sample()[0];
    let pts = cdf_points(demo.hist("io", Share::Full).unwrap());
    assert_eq!(pts.first(), Some(&(2048.0, 0.0)));
    assert_eq!(pts.last(), Some(&(10240.0, 100.0)));
    assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
    // The gap 6144..8192 is flat.
    let at = |x: f64| {
        pts.iter()
            .filter(|p| p.0 == x)
            .map(|p| p.1)
            .collect::<Vec<_>>()
    };
    assert_eq!(at(6144.0), at(8192.0));
}

#[test]
fn draw_svg_writes_an_svg_per_call() {
    let dir = std::env::temp_dir().join(format!("umbra-trace-svg-{}", std::process::id()));
    let path = dir.join("trace").join("sample.svg");
    draw_svg(&path, &sample()).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.contains("<svg"));
    for text in [
        "VM demo: exit to entry",
        "VM spaces64: handler",
        "io (634)",
        "ept-violation (3)",
        "cr-access (2,032)",
    ] {
        assert!(svg.contains(text), "{text} missing");
    }
    // Every reason with a histogram is a line (polyline) of its own, per panel.
    // One line per reason with a histogram in each panel (6 + 6 for demo, 2 + 1 for
    // spaces64), and its legend mark: the only strokes 2 pixels wide.
    assert_eq!(
        svg.matches("stroke-width=\"2\"").count(),
        2 * (6 + 6 + 2 + 1)
    );
    if let Ok(keep) = std::env::var("UMBRA_TRACE_SAMPLE_SVG") {
        std::fs::copy(&path, keep).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(draw_svg(&path, &[])
        .unwrap_err()
        .contains("no trace report"));
}
