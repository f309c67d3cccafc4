//! Unit tests of `bench`: the log parsers, the joins and the tables, on hand-written logs.

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
            median: 3610,
            traced: false,
        }
    );
    assert_eq!(rows[1].via, "kernel");
}

/// The six lines of one run of the benchmark guest, for VM `vm`, each op's figures
/// `(vmm, kernel)` medians (min = median - 1).
fn exit_log(vm: &str, figures: [(u64, u64); 3]) -> String {
    let mut log = format!("[vmm-service] vmm: {vm}: starting guest-bench\n");
    for (op, (v, k)) in EXIT_OPS.iter().zip(figures) {
        log += &format!(
            "[vmm-service] {vm}: bench-vmm: via=vmm op={op} min={} median={v}\n",
            v - 1
        );
        log += &format!(
            "[vmm-service] {vm}: bench-vmm: via=kernel op={op} min={} median={k}\n",
            k - 1
        );
    }
    log
}

#[test]
fn traced_run_sits_beside_the_untraced_one() {
    let log = exit_log("bench", [(3610, 323), (3500, 300), (3700, 330)])
        + "[vmm-suite] trace: vm=bench-traced id=3 exits=6000 time=1 dropped=0 lost=0\n"
        + &exit_log(TRACED_VM, [(3971, 400), (3850, 380), (4070, 410)]);
    let rows = parse_exit_rows(&log);
    assert_eq!(rows.len(), 2 * EXIT_ROWS);
    assert_eq!(rows.iter().filter(|r| r.traced).count(), EXIT_ROWS);
    let t = rows
        .iter()
        .find(|r| r.traced && r.via == "vmm" && r.op == "cpuid")
        .unwrap();
    assert_eq!(
        (t.median, t.min, t.csv_via()),
        (3971, 3970, "vmm-traced".into())
    );

    let table = exit_table(&rows);
    println!("{table}");
    let cpuid: Vec<&str> = table
        .lines()
        .find(|l| l.trim_start().starts_with("cpuid"))
        .unwrap()
        .split_whitespace()
        .collect();
    // 3971 / 3610 = +10.0 %; the floor stays the untraced run's.
    assert_eq!(cpuid, ["cpuid", "3610", "3971", "+10.0%", "323", "11.2x"]);
    assert!(table.contains("tracing on"));
    assert!(!table.contains("not measured"));

    let csv = vmm_csv(&rows);
    assert!(csv.starts_with("op,via,median_cycles,min_cycles\ncpuid,vmm,3610,3609\n"));
    assert!(csv.contains("\ncpuid,vmm-traced,3971,3970\n"));
    assert!(csv.contains("\nout,kernel-traced,410,409\n"));
    assert_eq!(csv.lines().count(), 1 + 2 * EXIT_ROWS);
}

#[test]
fn without_the_traced_run_tracing_on_is_not_measured() {
    let rows = parse_exit_rows(&exit_log("bench", [(3610, 323), (3500, 300), (3700, 330)]));
    assert!(rows.iter().all(|r| !r.traced));
    let table = exit_table(&rows);
    assert!(table.contains("tracing on: not measured"));
    let out: Vec<&str> = table
        .lines()
        .find(|l| l.trim_start().starts_with("out"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(out, ["out", "3700", "330", "11.2x"]);
    let csv = vmm_csv(&rows);
    assert!(!csv.contains("traced"));
    assert_eq!(csv.lines().count(), 1 + EXIT_ROWS);
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
/// A log as `bench-mmu` prints it, for one mode and policy with 2 spaces.
fn mmu_log(mode: &str, policy: &str, hits: u64, misses: u64) -> String {
    format!(
        "[vmm-service] {mode}-{policy}-0: mmubench: mode={mode} policy={policy} spaces=0 op=first_touch median=2100 mean=2110 min=2090 n=256\n\
         [vmm-service] {mode}-{policy}-0: mmubench: mode={mode} policy={policy} spaces=0 op=cr3_hit median=1800 mean=1810 min=1790 n=256\n\
         [vmm-service] {mode}-{policy}-0: mmubench: mode={mode} policy={policy} spaces=0 op=cr3_miss median=9000 mean=9100 min=8900 n=64\n\
         [vmm-suite] bench-mmu: csv {mode},{policy},0,200,70,400,330,60\n\
         [vmm-service] {mode}-{policy}-2: mmubench: mode={mode} policy={policy} spaces=2 op=switch_touch median=1900 mean=1950 min=1880 n=400\n\
         [vmm-suite] bench-mmu: csv {mode},{policy},2,{hits},{misses},20,400,40\n"
    )
}

#[test]
fn parses_mmu_figures() {
    let log = "[vmm-service] pae-kvm-0: hello: shadow MMU benchmark, command line \"policy=kvm spaces=0\"\n\
               [vmm-service] pae-kvm-0: mmubench: mode=pae policy=kvm spaces=0 op=cr3_hit median=5000 mean=5010 min=4990 n=256\n\
               [vmm-service] pae-kvm-0: mmubench: mode=pae policy=kvm spaces=0 op=cr3_hit median=x mean=5010 min=4990 n=256\n\
               [vmm-service] pae-kvm-0: mmubench: mode=pae spaces=0 op=cr3_hit median=5000 mean=5010 min=4990 n=256\n";
    let f = parse_mmu_figures(log);
    assert_eq!(f.len(), 1);
    assert_eq!(
        f[0],
        MmuFigure {
            mode: "pae".into(),
            policy: "kvm".into(),
            spaces: 0,
            op: "cr3_hit".into(),
            median: 5000,
            mean: 5010,
            min: 4990,
            n: 256
        }
    );
}

#[test]
fn parses_mmu_counters_and_skips_the_header() {
    let log =
        "[vmm-suite] bench-mmu: csv mode,policy,spaces,hits,misses,faults,cr3_loads,pool_used\n\
               [vmm-suite] bench-mmu: csv 2-level,kvm,16,0,401,900,400,70\n\
               [vmm-suite] bench-mmu: csv 2-level,kvm,16,0,401\n";
    let c = parse_mmu_counters(log);
    assert_eq!(c.len(), 1);
    assert_eq!(
        c[0],
        MmuCounters {
            mode: "2-level".into(),
            policy: "kvm".into(),
            spaces: 16,
            hits: 0,
            misses: 401,
            faults: 900,
            cr3_loads: 400,
            pool_used: 70
        }
    );
}

#[test]
fn joins_figures_with_counters_policies_side_by_side() {
    let log = mmu_log("64-bit", "umbra", 399, 2)
        + &mmu_log("pae", "umbra", 399, 2)
        + &mmu_log("pae", "kvm", 0, 401);
    let rows = join_mmu(&parse_mmu_figures(&log), &parse_mmu_counters(&log));
    let keys: Vec<(&str, &str, u32)> = rows
        .iter()
        .map(|r| (r.mode.as_str(), r.policy.as_str(), r.spaces))
        .collect();
    assert_eq!(
        keys,
        [
            ("64-bit", "umbra", 2),
            ("pae", "umbra", 2),
            ("pae", "kvm", 2)
        ]
    );
    let r = &rows[2];
    assert_eq!(
        (r.first_touch, r.cr3_hit, r.cr3_miss, r.switch_touch),
        (2100, 1800, 9000, 1900)
    );
    assert_eq!((r.hits, r.misses), (0, 401));
    assert_eq!(r.hit_rate(), 0.0);
    assert!((rows[0].hit_rate() - 99.5).abs() < 0.01);
    assert_eq!(rows[0].miss_hit_ratio(), 5.0);
    let csv = mmu_csv(&rows);
    assert!(csv.starts_with(MMU_CSV_HEADER));
    assert!(csv.contains("\npae,kvm,2,2100,1800,9000,5.0,1900,0,401,0.0\n"));
    assert_eq!(csv.lines().count(), 4);
}

#[test]
fn a_workload_run_without_figures_is_left_out() {
    let mut log = mmu_log("pae", "umbra", 399, 2);
    log = log.replace("op=switch_touch", "op=other");
    let rows = join_mmu(&parse_mmu_figures(&log), &parse_mmu_counters(&log));
    assert!(rows.is_empty());
}

#[test]
fn targets_are_reported() {
    let log = mmu_log("64-bit", "umbra", 399, 2)
        + &mmu_log("pae", "umbra", 399, 2)
        + &mmu_log("pae", "kvm", 0, 401)
        + &mmu_log("2-level", "umbra", 398, 3);
    let rows = join_mmu(&parse_mmu_figures(&log), &parse_mmu_counters(&log));
    let t = mmu_targets(&rows);
    let met = |prefix: &str| {
        t.iter()
            .find(|(w, _)| w.starts_with(prefix))
            .map(|(_, m)| *m)
    };
    assert_eq!(met("64-bit: shadow #PF"), Some(true));
    assert_eq!(met("64-bit: CR3 hit"), Some(false)); // 5x
    assert_eq!(met("pae hit rate"), Some(true));
    assert_eq!(met("2-level hit rate"), Some(false));
    assert_eq!(met("pae with KVM's policy"), Some(true));
}
