//! `umbra-harness`: the command-line front of the test harness. The Makefile is the user's
//! entry point; it calls these subcommands.

use std::path::PathBuf;
use std::process::ExitCode;

use umbra_tests::emu::{Emu, Firmware, Loader};
use umbra_tests::linux_run;
use umbra_tests::orchestrate::{self, TestOptions};
use umbra_tests::pass_fail::PassFail;
use umbra_tests::runner::{self, RunOptions};
use umbra_tests::scenarios::{self, Expect};
use umbra_tests::userguest::{self, UserGuest};
use umbra_tests::{bench, bootcfg, judge, limine, linux, screen, trace};

const USAGE: &str = "\
usage: umbra-harness <command> [options]

commands:
  run --emu qemu|kvm|bochs|auto --scenario NAME [--timeout SECS] [--expect-crash]
      [--cmdline WORDS] [--loader limine|grub|auto] [--firmware bios|uefi]
                       boot the ISO with one scenario, stream the console, judge the log;
                       exit 0 iff it passed (with --expect-crash: iff it crashed as expected);
                       --cmdline adds kernel command-line words (e.g. `fuzz.seed=7 fuzz.count=1000`);
                       --loader: auto (default) is limine when `make iso` built its parts, else grub;
                       --firmware uefi boots OVMF (QEMU only)
  run --guest PATH [--ram SIZE] [--mmu ept|shadow] [--vcpus N] [--guest-cmdline WORDS] [--flat]
      [--initrd PATH] [--pool PAGES] [--prev-roots N] [--kvm-policy] [options of run]
                       run a user's own kernel (scenario `guest`): PATH is a multiboot (v1) ELF
                       kernel, a Linux bzImage (found by its header; --initrd its initramfs,
                       --pool the shadow page pool; --prev-roots the previous roots each shadow-paged
                       vCPU caches, --kvm-policy no PAE root caching), or with --flat a flat 64-bit image loaded and
                       entered at 2 MiB; it is
                       checked with the VMM's loader against its RAM (SIZE: 64M default, up to 1G)
                       first, then put on the boot media as the module `<file name> image=guest`;
                       its command line is `<file name> WORDS`; exit 0 iff it wrote 0 to port 0xf4
  example-guest        make test's run of the example kernel (BUILD/example-kernel.elf, `make
                       example-kernel`) as a user's guest in 1 GiB on Bochs, its console checked
  check-guest --guest PATH [--ram SIZE] [--mmu ept|shadow] [--vcpus N] [--guest-cmdline WORDS] [--flat]
                       only the checks of `run --guest` (what `make run GUEST=...` does before building)
  trace --scenario NAME [--emu bochs|kvm|qemu] [--timeout SECS] [--loader limine|grub|auto]
      [--cmdline WORDS] [--log PATH]
                       boot the scenario like `run` with `trace` added to the kernel command line,
                       then print each traced VM's exit report (count, share of exits and of time,
                       min / median / p99 / max cycles per exit reason), write BUILD/trace/NAME.csv
                       and BUILD/trace/NAME.svg; exit 0 iff the run passed and its log held a
                       trace report; --log PATH: boot nothing, report on an existing serial log
                       (NAME: --scenario, else the log file's name)
  profile --scenario NAME --break ADDR|ELF:FUNCTION:BYTES [--skip N] [--steps N] [--kernel ELF]
                       boot the scenario in Bochs with its debugger: stop at the address (or at
                       the first BYTES, in hex, inside FUNCTION of ELF), let N more hits pass
                       (--skip, default 8), trace --steps instructions (default 3000) and name
                       each with the kernel's symbols (--kernel, default the release kernel):
                       the path cut at syscall / return / VM entry / VM exit, instructions per
                       function; written to BUILD/profile/NAME.txt
  linux-report         `make linux`: Debian's 64-bit and PAE kernels natively and under Umbra (EPT,
                       shadow paging, the PAE kernel also with KVM's root policy) on Bochs: each
                       init's checks, boot ratios, prev_roots hit rates, BUILD/linux/report.csv
  linux-native --arch amd64|i386 [--timeout SECS]
                       boot Debian's kernel and the test initramfs (`make linux-assets`) through
                       GRUB in Bochs without Umbra, stream COM1, print the init's report (the
                       TSC at its first line: instructions from power-on); exit 0 iff it passed
                       and powered off
  limine-iso           build BUILD/umbra-limine.iso (the menu, limine.cfg) from BUILD/limine-root
  screen-check         boot scenario=kernel through Limine on UEFI in QEMU and check that the
                       screen (QEMU's screendump) shows the log's last lines
  test                 everything `make test` runs; the last line is `N passed, M failed`
  list                 the scenario table
  bench-ipc            boot scenario=bench-ipc in Bochs; print the round trips, write BUILD/bench/ipc.csv
  bench-vmm            boot scenario=bench-vmm in Bochs; print exit round trips via the VMM and the
                       in-kernel floor, write BUILD/bench/vmm.csv
  bench-mmu            boot scenario=bench-mmu in Bochs; print the shadow MMU's first touch, CR3 hit and
                       miss and hit rates per paging mode and policy, write BUILD/bench/mmu.csv
  default-emu          print the emulator `make run` uses by default
  boot-configs [--check]
                       write tests/boot/grub.cfg and limine.cfg from the scenario table
                       (--check: only report whether they are up to date)

common options:
  --iso PATH           the ISO to boot (default build/umbra.iso)
  --build-dir PATH     logs and per-run files (default build)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match real_main(&args) {
        Ok(code) => ExitCode::from(code),
        Err(msg) => {
            eprintln!("umbra-harness: error: {msg}");
            ExitCode::from(2)
        }
    }
}

struct Args {
    command: String,
    emu: Option<String>,
    scenario: Option<String>,
    cmdline: Option<String>,
    timeout: Option<u64>,
    expect_crash: bool,
    check: bool,
    loader: Option<String>,
    firmware: Option<String>,
    log: Option<PathBuf>,
    guest: Option<PathBuf>,
    ram: Option<String>,
    mmu: Option<String>,
    guest_cmdline: Option<String>,
    vcpus: Option<String>,
    initrd: Option<PathBuf>,
    pool: Option<String>,
    prev_roots: Option<String>,
    flat: bool,
    kvm_policy: bool,
    break_at: Option<String>,
    skip: Option<u32>,
    steps: Option<u32>,
    kernel: Option<PathBuf>,
    arch: Option<String>,
    iso: PathBuf,
    build_dir: PathBuf,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut it = args.iter();
    let command = it
        .next()
        .ok_or_else(|| format!("missing command\n{USAGE}"))?
        .clone();
    let mut a = Args {
        command,
        emu: None,
        scenario: None,
        cmdline: None,
        timeout: None,
        expect_crash: false,
        check: false,
        loader: None,
        firmware: None,
        log: None,
        guest: None,
        ram: None,
        mmu: None,
        guest_cmdline: None,
        vcpus: None,
        initrd: None,
        pool: None,
        prev_roots: None,
        break_at: None,
        skip: None,
        steps: None,
        kernel: None,
        arch: None,
        flat: false,
        kvm_policy: false,
        iso: PathBuf::from("build/umbra.iso"),
        build_dir: PathBuf::from("build"),
    };
    while let Some(arg) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match arg.as_str() {
            "--emu" => a.emu = Some(value("--emu")?),
            "--scenario" => a.scenario = Some(value("--scenario")?),
            "--cmdline" => a.cmdline = Some(value("--cmdline")?),
            "--timeout" => {
                let v = value("--timeout")?;
                a.timeout = Some(
                    v.parse()
                        .map_err(|_| format!("--timeout {v}: not a number of seconds"))?,
                );
            }
            "--expect-crash" => a.expect_crash = true,
            "--loader" => a.loader = Some(value("--loader")?),
            "--firmware" => a.firmware = Some(value("--firmware")?),
            "--check" => a.check = true,
            "--log" => a.log = Some(PathBuf::from(value("--log")?)),
            "--guest" => a.guest = Some(PathBuf::from(value("--guest")?)),
            "--ram" => a.ram = Some(value("--ram")?),
            "--mmu" => a.mmu = Some(value("--mmu")?),
            "--guest-cmdline" => a.guest_cmdline = Some(value("--guest-cmdline")?),
            "--flat" => a.flat = true,
            "--kvm-policy" => a.kvm_policy = true,
            "--vcpus" => a.vcpus = Some(value("--vcpus")?),
            "--initrd" => a.initrd = Some(PathBuf::from(value("--initrd")?)),
            "--pool" => a.pool = Some(value("--pool")?),
            "--prev-roots" => a.prev_roots = Some(value("--prev-roots")?),
            "--break" => a.break_at = Some(value("--break")?),
            "--skip" => a.skip = Some(number("--skip", &value("--skip")?)?),
            "--steps" => a.steps = Some(number("--steps", &value("--steps")?)?),
            "--kernel" => a.kernel = Some(PathBuf::from(value("--kernel")?)),
            "--arch" => a.arch = Some(value("--arch")?),
            "--iso" => a.iso = PathBuf::from(value("--iso")?),
            "--build-dir" => a.build_dir = PathBuf::from(value("--build-dir")?),
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(a)
}

/// The options of `run` (and `trace`) from the command line, with `cmdline` as the extra
/// kernel command-line words.
fn run_options(a: &Args, cmdline: Option<String>) -> Result<RunOptions, String> {
    let emu = match a.emu.as_deref() {
        None | Some("auto") | Some("") => Emu::host_default(),
        Some(e) => {
            Emu::parse(e).ok_or_else(|| format!("unknown emulator `{e}` (qemu, kvm or bochs)"))?
        }
    };
    let guest = user_guest(a)?;
    let scenario = match (&guest, a.scenario.as_deref()) {
        (Some(_), None | Some("") | Some(abi::scenario::GUEST)) => abi::scenario::GUEST.to_string(),
        (Some(_), Some(s)) if linux_run::named(s).is_some() => abi::scenario::GUEST.to_string(),
        (Some(_), Some(other)) => {
            return Err(format!(
                "--guest runs scenario `{}`, not `{other}`",
                abi::scenario::GUEST
            ))
        }
        (None, _) => a
            .scenario
            .clone()
            .unwrap_or_else(|| scenarios::DEFAULT_SCENARIO.to_string()),
    };
    let loader = match a.loader.as_deref() {
        None | Some("auto") | Some("") => match limine::Parts::find(&a.build_dir) {
            Ok(_) => Loader::Limine,
            Err(why) => {
                println!("umbra-harness: booting through GRUB: {why}");
                Loader::Grub
            }
        },
        Some(l) => {
            Loader::parse(l).ok_or_else(|| format!("unknown loader `{l}` (limine or grub)"))?
        }
    };
    let firmware = match a.firmware.as_deref() {
        None | Some("") => Firmware::Bios,
        Some(f) => {
            Firmware::parse(f).ok_or_else(|| format!("unknown firmware `{f}` (bios or uefi)"))?
        }
    };
    Ok(RunOptions {
        extra_cmdline: cmdline,
        emu,
        scenario,
        timeout_secs: a
            .timeout
            .or(linux_alias(a).map(|_| linux_run::TIMEOUT_SECS)),
        expect: a.expect_crash.then_some(Expect::Crash),
        iso: a.iso.clone(),
        build_dir: a.build_dir.clone(),
        loader,
        firmware,
        guest,
        bochs_debugger: None,
    })
}

/// The Linux guest `--guest` (or `--scenario`) names: `linux64` or `linux-pae`, unless a file
/// of that name exists.
fn linux_alias(a: &Args) -> Option<linux::Arch> {
    match &a.guest {
        Some(p) if !p.exists() => p.to_str().and_then(linux_run::named),
        Some(_) => None,
        None => a.scenario.as_deref().and_then(linux_run::named),
    }
}

/// The user's guest of `--guest`, checked (a clear error before anything boots).
fn user_guest(a: &Args) -> Result<Option<UserGuest>, String> {
    if let Some(arch) = linux_alias(a) {
        let ram = match a.ram.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(r) => Some(userguest::parse_ram(r)?),
        };
        let mmu = userguest::parse_mmu(a.mmu.as_deref().unwrap_or(""))?;
        let o = linux_run::Options {
            ram_mib: ram,
            shadow: mmu == userguest::GuestMmu::Shadow,
            kvm_policy: a.kvm_policy,
            cmdline: a.guest_cmdline.as_deref(),
            pool: a.pool.as_deref().filter(|p| !p.trim().is_empty()),
            prev_roots: a.prev_roots.as_deref().filter(|p| !p.trim().is_empty()),
        };
        return linux_run::guest(&a.build_dir, arch, &o).map(Some);
    }
    let Some(path) = &a.guest else {
        if a.ram.is_some()
            || a.mmu.is_some()
            || a.guest_cmdline.is_some()
            || a.flat
            || a.vcpus.is_some()
            || a.initrd.is_some()
            || a.pool.is_some()
            || a.prev_roots.is_some()
            || a.kvm_policy
        {
            return Err(
                "--ram, --mmu, --guest-cmdline, --vcpus, --initrd, --pool, --prev-roots, --kvm-policy and \
                 --flat go with --guest PATH"
                    .into(),
            );
        }
        return Ok(None);
    };
    let ram = match a.ram.as_deref().map(str::trim) {
        None | Some("") => userguest::DEFAULT_RAM_MIB,
        Some(r) => userguest::parse_ram(r)?,
    };
    let mmu = userguest::parse_mmu(a.mmu.as_deref().unwrap_or(""))?;
    let cmdline = a.guest_cmdline.as_deref().unwrap_or("");
    let mut guest = UserGuest::new(path, ram, mmu, a.flat, cmdline)?;
    if let Some(n) = a.vcpus.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        guest = guest.with_vcpus(n)?;
    }
    if let Some(i) = a.initrd.as_deref().filter(|i| !i.as_os_str().is_empty()) {
        guest = guest.with_initrd(i)?;
    }
    if let Some(p) = a.pool.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
        guest = guest.with_pool(p)?;
    }
    if let Some(n) = a
        .prev_roots
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        guest = guest.with_prev_roots(n)?;
    }
    if a.kvm_policy {
        guest = guest.with_kvm_policy()?;
    }
    Ok(Some(guest))
}

/// `trace`: boots the scenario with `trace` on the kernel command line (or takes `--log`),
/// then prints and writes the trace report ([`trace::report`]).
fn trace(a: &Args) -> Result<u8, String> {
    let (log_path, name, run_passed) = match &a.log {
        Some(path) => {
            let name = match &a.scenario {
                Some(s) => s.clone(),
                None => path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .ok_or_else(|| format!("--log {}: not a file name", path.display()))?,
            };
            (path.clone(), name, true)
        }
        None => {
            let words = match a.cmdline.as_deref().map(str::trim) {
                Some(extra) if !extra.is_empty() => format!("trace {extra}"),
                _ => "trace".to_string(),
            };
            let opts = run_options(a, Some(words))?;
            let r = runner::run(&opts).map_err(|e| e.0)?;
            (r.log_path, opts.scenario, r.verdict.check_passed)
        }
    };
    let raw = std::fs::read(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log = judge::clean_console(&raw);
    let out_dir = a.build_dir.join("trace");
    let reported = match trace::report(&log, &name, &out_dir) {
        Ok(_) => true,
        Err(why) => {
            println!("umbra-harness: trace: {why} (log: {})", log_path.display());
            false
        }
    };
    if !run_passed {
        println!(
            "umbra-harness: trace: the run of `{name}` failed (see above){}",
            if reported {
                "; the report covers what the log holds"
            } else {
                ""
            }
        );
    }
    Ok(if run_passed && reported { 0 } else { 1 })
}

fn number(flag: &str, v: &str) -> Result<u32, String> {
    v.parse().map_err(|_| format!("{flag} {v}: not a number"))
}

/// `profile`: one path's instructions from a Bochs trace ([`umbra_tests::profile`]).
fn profile(a: &Args) -> Result<u8, String> {
    use umbra_tests::profile as p;
    let spec = a.break_at.as_deref().ok_or("profile needs --break")?;
    let break_at = p::resolve_break(spec)?;
    let kernel = a
        .kernel
        .clone()
        .unwrap_or_else(|| PathBuf::from("target/x86_64-unknown-none/release/umbra-kernel"));
    let symbols = p::Symbols::from_elf(
        &std::fs::read(&kernel).map_err(|e| format!("{}: {e}", kernel.display()))?,
    )?;
    let mut opts = run_options(a, a.cmdline.clone())?;
    opts.emu = umbra_tests::emu::Emu::Bochs;
    opts.bochs_debugger = Some(p::debugger_commands(
        break_at,
        a.skip.unwrap_or(8),
        a.steps.unwrap_or(3000),
    ));
    let r = runner::run(&opts).map_err(|e| e.0)?;
    let run_dir = r
        .log_path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let trace_path = run_dir
        .join(format!("bochs-{}", opts.scenario))
        .join("trace.txt");
    let trace_path = if trace_path.exists() {
        trace_path
    } else {
        find_trace(&a.build_dir, &opts.scenario).ok_or("the run left no trace.txt")?
    };
    let text = std::fs::read_to_string(&trace_path)
        .map_err(|e| format!("{}: {e}", trace_path.display()))?;
    let steps = p::parse_trace(&text);
    if steps.is_empty() {
        return Err(format!(
            "nothing traced: the breakpoint {break_at:#x} was never hit {} times (see {})",
            a.skip.unwrap_or(8) + 1,
            trace_path.display()
        ));
    }
    let title = format!("{} from {spec}", opts.scenario);
    let report = p::render(&p::profile(&steps, &symbols), &title);
    print!("{report}");
    let out = a.build_dir.join("profile");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let file = out.join(format!("{}.txt", opts.scenario));
    std::fs::write(&file, &report).map_err(|e| e.to_string())?;
    println!("umbra-harness: profile written to {}", file.display());
    Ok(0)
}

/// The newest `trace.txt` of a Bochs run of `scenario` under `build/run`.
fn find_trace(build: &std::path::Path, scenario: &str) -> Option<PathBuf> {
    std::fs::read_dir(build.join("run"))
        .ok()?
        .flatten()
        .map(|e| e.path().join("trace.txt"))
        .filter(|p| p.exists() && p.to_string_lossy().contains(scenario))
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

fn real_main(args: &[String]) -> Result<u8, String> {
    let a = parse(args)?;
    match a.command.as_str() {
        "run" => {
            let opts = run_options(&a, a.cmdline.clone())?;
            let r = runner::run(&opts).map_err(|e| e.0)?;
            let mut passed = r.verdict.check_passed;
            if opts.guest.is_some() {
                let log = judge::clean_console(&std::fs::read(&r.log_path).unwrap_or_default());
                for line in userguest::result_lines(&log) {
                    println!("umbra-harness: {line}");
                }
                // A Linux guest of ours passes when its init's checks pass.
                if let Some(arch) = linux_alias(&a) {
                    let mut tally = PassFail::default();
                    passed &= linux_run::judge(&log, arch, &mut tally).0;
                }
            }
            Ok(if passed { 0 } else { 1 })
        }
        "example-guest" => {
            let (ok, seen, tally) = userguest::run_example(&a.build_dir, &a.iso)?;
            println!(
                "{} example kernel: {seen} -> {tally}",
                if ok { "PASS" } else { "FAIL" }
            );
            Ok(u8::from(!ok))
        }
        "check-guest" => {
            let g = user_guest(&a)?.ok_or("check-guest needs --guest PATH")?;
            println!(
                "umbra-harness: GUEST={}: {} bytes, a {} that fits {} MiB of RAM{}; its command line: \"{}\"",
                g.path.display(),
                g.bytes,
                g.kind_words(),
                g.ram_mib,
                match &g.initrd {
                    Some((p, _, bytes)) => format!(" with its initramfs {} ({bytes} bytes)", p.display()),
                    None => String::new(),
                },
                g.guest_cmdline()
            );
            Ok(0)
        }
        "trace" => trace(&a),
        "profile" => profile(&a),
        "linux-report" => linux_run::report_main(&a.build_dir, &a.iso),
        "linux-native" => {
            let arch = linux::Arch::parse(a.arch.as_deref().ok_or("linux-native needs --arch")?)?;
            linux::native_main(&a.build_dir, arch, a.timeout)
        }
        "limine-iso" => {
            let parts = limine::Parts::find(&a.build_dir)?;
            let out = a.build_dir.join(limine::ISO);
            limine::build_iso(&parts, std::path::Path::new("limine.cfg"), &out)?;
            println!(
                "built {} (Limine, BIOS and UEFI; menu of every scenario, default `{}`)",
                out.display(),
                scenarios::DEFAULT_SCENARIO
            );
            Ok(0)
        }
        "screen-check" => match screen::check(&a.build_dir) {
            Ok(seen) => {
                println!("PASS screen console on {}: {seen}", screen::machine_label());
                Ok(0)
            }
            Err(why) => {
                println!("FAIL screen console on {}: {why}", screen::machine_label());
                Ok(1)
            }
        },
        "test" => {
            let make = std::env::var("MAKE").unwrap_or_else(|_| "make".to_string());
            let code = orchestrate::test(&TestOptions {
                iso: a.iso,
                build_dir: a.build_dir,
                make,
            });
            Ok(if code == 0 { 0 } else { 1 })
        }
        "list" => {
            for s in scenarios::SCENARIOS {
                let on: Vec<&str> = s.test_on.iter().map(|e| e.name()).collect();
                let expect = match s.expect {
                    Expect::Pass => "passes",
                    Expect::Crash => "must crash",
                };
                println!(
                    "{:<16} {} ({expect}; make test: {}; timeout {} s)",
                    s.name,
                    s.title(),
                    on.join(", "),
                    s.timeout_secs
                );
            }
            for (name, arch) in linux_run::NAMES {
                println!(
                    "{name:<16} Debian's {} kernel and the test init as a user's guest (GUEST={name}; \
                     bochs; make test: {}; timeout {} s)",
                    arch.name(),
                    if orchestrate::LINUX_TEST.0 == arch {
                        "on shadow paging"
                    } else {
                        "no (make linux)"
                    },
                    linux_run::TIMEOUT_SECS
                );
            }
            Ok(0)
        }
        "bench-ipc" => bench::run_ipc(&a.iso, &a.build_dir),
        "bench-vmm" => bench::run_vmm(&a.iso, &a.build_dir),
        "bench-mmu" => bench::run_mmu(&a.iso, &a.build_dir),
        "default-emu" => {
            println!("{}", Emu::host_default());
            Ok(0)
        }
        "boot-configs" => {
            let files = [
                ("tests/boot/grub.cfg", bootcfg::grub_cfg()),
                ("limine.cfg", bootcfg::limine_cfg()),
            ];
            let mut stale = false;
            for (path, text) in files {
                let current = std::fs::read_to_string(path).unwrap_or_default();
                if current == text {
                    println!("{path}: up to date");
                } else if a.check {
                    println!("{path}: STALE (run `make boot-configs`)");
                    stale = true;
                } else {
                    if let Some(dir) = std::path::Path::new(path).parent() {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| format!("{}: {e}", dir.display()))?;
                    }
                    std::fs::write(path, text).map_err(|e| format!("{path}: {e}"))?;
                    println!("{path}: written");
                }
            }
            Ok(u8::from(stale))
        }
        other => Err(format!("unknown command `{other}`\n{USAGE}")),
    }
}
