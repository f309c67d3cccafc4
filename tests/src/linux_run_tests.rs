//! Unit tests of `linux_run`: a run's figures read from the VMM's summary lines, the verdict.

use super::*;

/// The tail of a shadow-paged run's console as the harness keeps it.
const SHADOW_RUN: &str = "\
[vmm-service] guest: umbra-init: tsc 7000000000
[vmm-service] guest: umbra-init: kernel 6.1.0-57-686-pae i686
[vmm-service] guest: umbra-init: pipes 524288 bytes through 5 processes, md5 f4bf52a92fef001b9740b71469e0c62f expected f4bf52a92fef001b9740b71469e0c62f: ok
[vmm-service] guest: umbra-init: context switches 44217
[vmm-service] guest: umbra-init: memory 32 MiB filled and checksummed: ok
[vmm-service] guest: umbra-init: end tsc 9000000000
[vmm-service] guest: umbra-init: result pass
[vmm-service] vmm: guest: result PoweredOff, last rip 0xc1000000
[vmm-service] vmm: guest: powered off (ACPI S5 through PM1a_CNT)
[vmm-service] vmm: guest: 791081 exits: cr-access=448410 exception=202649
[vmm-service] vmm: guest: shadow: 202649 faults (134382 fixed), 8364 #PF injected, 57467 writes emulated, 14475 zaps, 256866 CR3 loads, 71978 invlpg, pool 263/2048 pages
[vmm-service] vmm: guest: shadow: prev_roots hits/root loads by mode: unpaged=0/2 pae=255852/256871
";

#[test]
fn a_runs_figures_come_from_the_summary_lines() {
    let run = LinuxRun::from_console(SHADOW_RUN);
    assert!(run.powered_off);
    assert_eq!(run.exits, Some(791_081));
    let s = run.shadow.unwrap();
    assert_eq!(
        s,
        ShadowFigures {
            faults: 202_649,
            zaps: 14_475,
            cr3_loads: 256_866,
            hits: 255_852,
            root_loads: 256_873,
        }
    );
    assert!((s.hit_rate() - 99.6).abs() < 0.05, "{}", s.hit_rate());
    let r = run.report.as_ref().unwrap();
    assert_eq!((r.tsc, r.end_tsc), (7_000_000_000, Some(9_000_000_000)));
    assert!(run.failures(Arch::I386).is_empty());
    assert_eq!(run.failures(Arch::Amd64).len(), 1, "uname -m says i686");
    // An EPT run has no shadow lines.
    let ept = LinuxRun::from_console(&SHADOW_RUN.replace("shadow: ", "x: "));
    assert_eq!(ept.shadow, None);
}

#[test]
fn a_run_fails_without_power_off_enough_switches_or_a_report() {
    let mut tally = PassFail::default();
    let (ok, _) = judge(SHADOW_RUN, Arch::I386, &mut tally);
    assert!(ok && tally.ok());
    let no_off = SHADOW_RUN.replace("result PoweredOff", "result Halted");
    let run = LinuxRun::from_console(&no_off);
    assert_eq!(
        run.failures(Arch::I386),
        ["the VMM reported no clean ACPI power-off"]
    );
    let few = SHADOW_RUN.replace("context switches 44217", "context switches 9999");
    assert_eq!(LinuxRun::from_console(&few).failures(Arch::I386).len(), 1);
    let cut: String = SHADOW_RUN
        .lines()
        .take(3)
        .map(|l| format!("{l}\n"))
        .collect();
    let mut t = PassFail::default();
    let (ok, run) = judge(&cut, Arch::I386, &mut t);
    assert!(!ok && !t.ok() && run.report.is_err());
}

#[test]
fn guest_names_stand_for_the_arches() {
    assert_eq!(named("linux64"), Some(Arch::Amd64));
    assert_eq!(named("linux-pae"), Some(Arch::I386));
    assert_eq!(named("linux"), None);
    for (name, arch) in NAMES {
        assert_eq!(name_of(arch), name);
    }
}
