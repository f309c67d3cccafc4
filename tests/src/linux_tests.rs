//! Unit tests of `linux`: the init report's parser on consoles written in the formats of
//! tests/linux/init, the asset paths, GRUB's configuration.

use super::*;

/// A native console: kernel messages around the init's lines (one of them in the middle).
const NATIVE: &str = "\
[    0.000000] Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org)
[    7.300000] Run /init as init process
umbra-init: tsc 6598661579
umbra-init: kernel 6.1.0-57-amd64 x86_64
umbra-init: pipes 524288 bytes through 5 processes, md5 f4bf52a92fef001b9740b71469e0c62f expected f4bf52a92fef001b9740b71469e0c62f: ok
umbra-init: context switches 30123
[    7.338471] clocksource: Switched to clocksource tsc
umbra-init: memory 32 MiB filled and checksummed: ok
umbra-init: end tsc 9123456789
umbra-init: result pass
[    7.524509] ACPI: PM: Preparing to enter system sleep state S5
";

const SUM: &str = "f4bf52a92fef001b9740b71469e0c62f";

#[test]
fn a_passing_console_parses_into_every_figure() {
    let r = InitReport::parse(NATIVE).expect("parses");
    assert_eq!(
        r,
        InitReport {
            tsc: 6_598_661_579,
            kernel_release: "6.1.0-57-amd64".into(),
            machine: "x86_64".into(),
            pipe_bytes: 524_288,
            pipe_processes: 5,
            pipe_md5: SUM.into(),
            pipe_md5_expected: SUM.into(),
            pipes_ok: true,
            context_switches: 30_123,
            memory_mib: 32,
            memory_ok: true,
            result_pass: true,
            end_tsc: Some(9_123_456_789),
        }
    );
    // An init without the end line still parses; a malformed one does not.
    let no_end = NATIVE.replace("umbra-init: end tsc 9123456789\n", "");
    assert_eq!(InitReport::parse(&no_end).unwrap().end_tsc, None);
    let bad_end = NATIVE.replace("end tsc 9123456789", "end tsc 9x");
    assert!(InitReport::parse(&bad_end).is_err());
    assert!(r.failures(Arch::Amd64).is_empty());
    // The amd64 kernel's report is not a pass of the i386 guest.
    assert_eq!(r.failures(Arch::I386).len(), 1);
    let s = r.summary();
    assert!(
        s.contains("tsc 6598661579") && s.contains("result pass"),
        "{s}"
    );
}

#[test]
fn lines_behind_the_vmm_prefix_parse_too() {
    let prefixed: String = NATIVE
        .lines()
        .map(|l| format!("[vmm-service] linux64: {l}\n"))
        .collect();
    let r = InitReport::parse(&prefixed).expect("parses");
    assert_eq!(r.tsc, 6_598_661_579);
    assert_eq!(r.context_switches, 30_123);
    // CR LF line ends (a serial console) change nothing.
    let crlf = NATIVE.replace('\n', "\r\n");
    assert_eq!(InitReport::parse(&crlf), InitReport::parse(NATIVE));
}

#[test]
fn failed_checks_parse_and_are_reported() {
    let bad = NATIVE
        .replace(
            &format!("md5 {SUM} expected {SUM}: ok"),
            &format!("md5 d41d8cd98f00b204e9800998ecf8427e expected {SUM}: FAIL"),
        )
        .replace("checksummed: ok", "checksummed: FAIL")
        .replace("result pass", "result fail");
    let r = InitReport::parse(&bad).expect("a failing report still parses");
    assert!(!r.pipes_ok && !r.memory_ok && !r.result_pass);
    let why = r.failures(Arch::Amd64);
    assert_eq!(why.len(), 3, "{why:?}");
    assert!(why[0].contains("pipes"), "{why:?}");
}

#[test]
fn an_ok_with_different_sums_is_not_believed() {
    let lying = NATIVE.replace(
        &format!("expected {SUM}: ok"),
        "expected 00000000000000000000000000000000: ok",
    );
    let r = InitReport::parse(&lying).expect("parses");
    assert_eq!(r.failures(Arch::Amd64).len(), 1);
    assert!(r.summary().contains("processes FAIL"), "{}", r.summary());
}

#[test]
fn too_few_processes_fail() {
    let r = InitReport::parse(&NATIVE.replace("through 5 processes", "through 3 processes"))
        .expect("parses");
    assert_eq!(r.failures(Arch::Amd64), ["pipes: 3 processes (at least 4)"]);
}

#[test]
fn an_unfinished_init_is_an_error_naming_the_missing_line() {
    // Stopped after the pipes: no memory line, no result.
    let cut: String = NATIVE
        .lines()
        .take_while(|l| !l.contains("memory"))
        .map(|l| format!("{l}\n"))
        .collect();
    let e = InitReport::parse(&cut).unwrap_err();
    assert!(e.contains("umbra-init: memory"), "{e}");
    let e = InitReport::parse("[    1.0] Kernel panic - not syncing\n").unwrap_err();
    assert!(e.contains("never ran"), "{e}");
    let e = InitReport::parse("").unwrap_err();
    assert!(e.contains("never ran"), "{e}");
}

#[test]
fn the_tsc_line_must_come_first() {
    let moved = NATIVE.replace("umbra-init: tsc 6598661579\n", "") + "umbra-init: tsc 6598661579\n";
    let e = InitReport::parse(&moved).unwrap_err();
    assert!(e.contains("first line"), "{e}");
}

#[test]
fn malformed_lines_are_errors() {
    for (from, to, want) in [
        ("tsc 6598661579", "tsc 65a", "tsc"),
        ("tsc 6598661579", "tsc ", "tsc"),
        (
            "tsc 6598661579",
            "tsc 99999999999999999999999",
            "out of range",
        ),
        (
            "kernel 6.1.0-57-amd64 x86_64",
            "kernel 6.1.0-57-amd64",
            "kernel",
        ),
        ("kernel 6.1.0-57-amd64 x86_64", "kernel a b c", "kernel"),
        (
            "through 5 processes",
            "through five processes",
            "pipe processes",
        ),
        ("524288 bytes", "-1 bytes", "pipe bytes"),
        (
            "md5 f4bf52a92fef001b9740b71469e0c62f expected",
            "md5 xyz expected",
            "MD5",
        ),
        (
            ": ok\numbra-init: context",
            ": maybe\numbra-init: context",
            "pipes",
        ),
        ("context switches 30123", "context switches many", "context"),
        ("memory 32 MiB", "memory 32 GiB", "memory"),
        ("checksummed: ok", "checksummed: yes", "memory"),
        ("result pass", "result maybe", "result"),
    ] {
        let text = NATIVE.replacen(from, to, 1);
        assert_ne!(text, NATIVE, "{from} not in the sample");
        let e = InitReport::parse(&text).expect_err(to);
        assert!(e.contains(want), "{to}: {e}");
    }
}

#[test]
fn a_repeated_line_is_an_error() {
    let twice = NATIVE.to_string() + "umbra-init: result pass\n";
    let e = InitReport::parse(&twice).unwrap_err();
    assert!(e.contains("2 `umbra-init: result"), "{e}");
}

#[test]
fn arches_round_trip_and_name_their_machine() {
    for a in Arch::ALL {
        assert_eq!(Arch::parse(a.name()), Ok(a));
    }
    assert_eq!(Arch::I386.uname_machine(), "i686");
    assert!(Arch::parse("arm64").unwrap_err().contains("amd64 or i386"));
}

#[test]
fn missing_assets_say_how_to_get_them() {
    let dir = std::env::temp_dir().join(format!("umbra-linux-assets-{}", std::process::id()));
    let arch_dir = dir.join(ASSETS_DIR).join("i386");
    fs::create_dir_all(&arch_dir).unwrap();
    let e = assets_in(&dir, Arch::I386).unwrap_err();
    assert!(
        e.contains("vmlinuz") && e.contains("make linux-assets"),
        "{e}"
    );
    for f in ["vmlinuz", "initramfs.cpio.gz"] {
        fs::write(arch_dir.join(f), b"x").unwrap();
    }
    let e = assets_in(&dir, Arch::I386).unwrap_err();
    assert!(e.contains("busybox"), "{e}");
    fs::write(arch_dir.join("busybox"), b"x").unwrap();
    let a = assets_in(&dir, Arch::I386).expect("all three present");
    assert_eq!(a.kernel, arch_dir.join("vmlinuz"));
    assert_eq!(a.initramfs, arch_dir.join("initramfs.cpio.gz"));
    assert_eq!(a.kernel_package(), "(kernel-version missing)");
    fs::write(
        arch_dir.join("kernel-version"),
        "linux-image-x 1.0\nmeta 1.0\n",
    )
    .unwrap();
    assert_eq!(a.kernel_package(), "linux-image-x 1.0");
    assert!(assets_in(&dir, Arch::Amd64).is_err());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn grub_boots_the_kernel_with_the_shared_command_line() {
    let cfg = grub_cfg(CMDLINE);
    assert!(cfg.contains("set timeout=0\n"));
    assert!(cfg.contains(&format!("  linux /boot/vmlinuz {CMDLINE}\n")));
    assert!(cfg.contains("  initrd /boot/initramfs.cpio.gz\n"));
    assert!(CMDLINE.contains("console=ttyS0"));
}

#[test]
fn the_init_script_prints_what_the_parser_reads() {
    // tests/linux/init is the other half of the format: every key the parser needs is there.
    let init = include_str!("../linux/init");
    for key in [
        "umbra-init: $*",
        "say \"kernel $(uname -r) $(uname -m)\"",
        "say \"pipes $PIPE_BYTES bytes through 5 processes, md5 $got expected $want: $v\"",
        "say \"context switches $((after - before))\"",
        "say \"memory $MEM_MIB MiB filled and checksummed: $v\"",
        "say \"end ${t#umbra-init: }\"",
        "say \"result pass\"",
        "say \"result fail\"",
    ] {
        assert!(init.contains(key), "tests/linux/init lacks {key:?}");
    }
    // /bin/tsc's line is the init's first output.
    let first = init
        .lines()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .unwrap();
    assert_eq!(first, "/bin/tsc");
    assert!(include_str!("../linux/tsc.S").contains(".ascii  \"umbra-init: tsc \""));
}
