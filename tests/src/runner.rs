//! Booting one scenario: write the config disk, start the emulator, stream the console,
//! stop it on a timeout, keep the serial log, judge it and print the verdict.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::bootcfg;
use crate::emu::{self, BochsFiles, Emu, Firmware, Loader};
use crate::judge::{self, clean_console, End, Verdict};
use crate::limine;
use crate::scenarios::{self, Expect};
use crate::userguest::UserGuest;

/// Lines of log shown when a run fails.
pub const TAIL_LINES: usize = 30;

/// What to boot.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The emulator.
    pub emu: Emu,
    /// The scenario name (`scenario=NAME` on the kernel command line).
    pub scenario: String,
    /// More kernel command-line words after `scenario=NAME` (e.g. `fuzz.seed=7`).
    pub extra_cmdline: Option<String>,
    /// Wall-clock limit; `None`: the scenario table's, or the default.
    pub timeout_secs: Option<u64>,
    /// Expectation; `None`: [`Expect::Pass`] (the table's expectation is for `make test`).
    pub expect: Option<Expect>,
    /// The ISO to boot (the GRUB one; Limine runs build their own from `build_dir`).
    pub iso: PathBuf,
    /// Where logs and per-run files go (`build/`).
    pub build_dir: PathBuf,
    /// The boot loader.
    pub loader: Loader,
    /// The firmware (UEFI: QEMU only).
    pub firmware: Firmware,
    /// A user's own guest (`make run GUEST=...`, scenario `guest`): on the boot media as a
    /// module, its `guest.*` words on the kernel command line, the machine sized for its RAM.
    pub guest: Option<UserGuest>,
    /// Bochs only: debugger commands instead of "continue" (`umbra-harness profile`); the
    /// instructions the debugger traces go to `trace.txt` in the run's directory.
    pub bochs_debugger: Option<String>,
}

impl RunOptions {
    /// A GRUB, BIOS run of `scenario` on `emu` (what most callers want).
    pub fn grub(emu: Emu, scenario: &str, iso: PathBuf, build_dir: PathBuf) -> RunOptions {
        RunOptions {
            emu,
            scenario: scenario.to_string(),
            extra_cmdline: None,
            timeout_secs: None,
            expect: None,
            iso,
            build_dir,
            loader: Loader::Grub,
            firmware: Firmware::Bios,
            guest: None,
            bochs_debugger: None,
        }
    }

    /// `qemu`, `qemu-limine`, `qemu-limine-uefi`: names the run's files.
    pub fn machine_tag(&self) -> String {
        let mut tag = self.emu.name().to_string();
        if self.loader != Loader::Grub {
            tag.push('-');
            tag.push_str(self.loader.name());
        }
        if self.firmware != Firmware::Bios {
            tag.push('-');
            tag.push_str(self.firmware.name());
        }
        tag
    }

    /// `kernel on qemu`, `kernel on qemu (limine, uefi)`.
    pub fn label(&self) -> String {
        if self.loader == Loader::Grub && self.firmware == Firmware::Bios {
            format!("{} on {}", self.scenario, self.emu)
        } else {
            format!(
                "{} on {} ({}, {})",
                self.scenario,
                self.emu,
                self.loader.name(),
                self.firmware.name()
            )
        }
    }
}

/// The result of one run.
#[derive(Debug)]
pub struct RunResult {
    /// The verdict.
    pub verdict: Verdict,
    /// The serial log kept for this run.
    pub log_path: PathBuf,
    /// Wall-clock time of the emulator run.
    pub elapsed: Duration,
}

/// Why a run could not even start.
#[derive(Debug)]
pub struct SetupError(pub String);

impl From<io::Error> for SetupError {
    fn from(e: io::Error) -> Self {
        SetupError(e.to_string())
    }
}

/// Whether `program` is found on `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Boots `opts.scenario` on `opts.emu` and judges it. Prints as it goes.
pub fn run(opts: &RunOptions) -> Result<RunResult, SetupError> {
    let entry = scenarios::find(&opts.scenario);
    if !scenarios::valid_name(&opts.scenario) {
        return Err(SetupError(format!(
            "scenario name `{}` must be letters, digits, `-` or `_`",
            opts.scenario
        )));
    }
    // `make run` judges the scenario itself; only `make test` (or --expect-crash) inverts it.
    let expect = opts.expect.unwrap_or(Expect::Pass);
    if opts.expect.is_none() && entry.is_some_and(|s| s.expect == Expect::Crash) {
        println!(
            "umbra-harness: note: `{}` crashes on purpose: this run is judged a failure; \
             `make test` (or --expect-crash) counts that crash as a pass of the harness",
            opts.scenario
        );
    }
    let timeout = opts
        .timeout_secs
        .or(entry.map(|s| s.timeout_secs))
        .unwrap_or(scenarios::DEFAULT_TIMEOUT_SECS);
    if entry.is_none() {
        let known: Vec<&str> = scenarios::SCENARIOS.iter().map(|s| s.name).collect();
        println!(
            "umbra-harness: note: `{}` is not in the scenario table ({}); booting it anyway",
            opts.scenario,
            known.join(", ")
        );
    }
    for tool in [opts.emu.program(), "mformat", "mcopy"] {
        if !on_path(tool) {
            return Err(SetupError(format!(
                "`{tool}` is not installed: run `make setup`"
            )));
        }
    }
    if opts.emu == Emu::Kvm && !Path::new("/dev/kvm").exists() {
        return Err(SetupError(
            "EMU=kvm needs /dev/kvm; use EMU=qemu or EMU=bochs".into(),
        ));
    }
    if opts.loader == Loader::Grub && !opts.iso.is_file() {
        return Err(SetupError(format!(
            "{} does not exist: run `make iso`",
            opts.iso.display()
        )));
    }
    if opts.firmware == Firmware::Uefi {
        if opts.emu == Emu::Bochs {
            return Err(SetupError(
                "UEFI runs need QEMU (Bochs has no UEFI firmware here)".into(),
            ));
        }
        if !Path::new(limine::OVMF).is_file() {
            return Err(SetupError(format!(
                "{} is missing (package ovmf): run `make setup`",
                limine::OVMF
            )));
        }
    }

    let build_dir = absolute(&opts.build_dir)?;
    let tag = format!("{}-{}", opts.machine_tag(), opts.scenario);
    let run_dir = build_dir.join("run").join(&tag);
    let _ = fs::remove_dir_all(&run_dir);
    fs::create_dir_all(&run_dir)?;
    let log_path = build_dir.join(format!("serial-{tag}.log"));
    let _ = fs::remove_file(&log_path);

    let mut cmdline = scenarios::cmdline_for(&opts.scenario);
    if let Some(extra) = opts
        .extra_cmdline
        .as_deref()
        .filter(|e| !e.trim().is_empty())
    {
        cmdline.push(' ');
        cmdline.push_str(extra.trim());
    }
    if let Some(g) = &opts.guest {
        cmdline.push(' ');
        cmdline.push_str(&g.kernel_cmdline_words());
        println!(
            "umbra-harness: guest {} ({} bytes, {} MiB RAM, {:?}, {}) as boot module `{} {}`; \
             machine memory {} MiB",
            g.path.display(),
            g.bytes,
            g.ram_mib,
            g.mmu,
            g.kind_words(),
            g.name,
            bootcfg::USER_GUEST_MANIFEST,
            g.machine_mib()
        );
    }
    let guest_files = opts
        .guest
        .as_ref()
        .map(UserGuest::files)
        .unwrap_or_default();
    let cfg_disk = run_dir.join("cfg.img");
    bootcfg::write_cfg_disk(&cfg_disk, &cmdline, &guest_files)?;
    let cfg_disk_cylinders =
        bootcfg::cfg_disk_cylinders(opts.guest.as_ref().map_or(0, UserGuest::files_bytes));
    let memory_mib = opts
        .guest
        .as_ref()
        .map_or(emu::MACHINE_MIB, UserGuest::machine_mib);
    let iso = match opts.loader {
        Loader::Grub => absolute(&opts.iso)?,
        Loader::Limine => {
            // Limine reads its configuration only from the boot volume: a per-run ISO.
            let parts = limine::Parts::find(&build_dir).map_err(SetupError)?;
            let conf = run_dir.join("limine.conf");
            fs::write(&conf, bootcfg::limine_run_cfg(&cmdline, &guest_files))?;
            let iso = run_dir.join(limine::ISO);
            let grafts: Vec<(String, PathBuf)> = guest_files
                .iter()
                .map(|g| {
                    (
                        format!("{}/{}", bootcfg::USER_GUEST_DIR_IN_ISO, g.name),
                        g.path.to_path_buf(),
                    )
                })
                .collect();
            limine::build_iso_grafting(&parts, &conf, &grafts, &iso).map_err(SetupError)?;
            iso
        }
    };
    // GRUB finds the scenario on the config disk; Limine has it in its configuration.
    let qemu_cfg_disk = (opts.loader == Loader::Grub).then_some(cfg_disk.as_path());

    let what = match expect {
        Expect::Pass => "",
        Expect::Crash => ", expecting a crash report",
    };
    println!(
        "umbra-harness: booting {} on {} with `{cmdline}` (timeout {timeout} s{what})",
        rel(&iso),
        opts.emu
    );
    println!("umbra-harness: serial log: {}", rel(&log_path));
    flush_stdout();

    let start = Instant::now();
    let (end, streamed, extra) = match opts.emu {
        Emu::Qemu | Emu::Kvm => run_qemu(
            (opts.emu, opts.firmware),
            &iso,
            qemu_cfg_disk,
            &run_dir,
            &log_path,
            timeout,
            memory_mib,
        )?,
        Emu::Bochs => {
            let files = BochsFiles {
                iso: &iso,
                cfg_disk: &cfg_disk,
                com1: &run_dir.join("com1.raw"),
                log: &run_dir.join("bochs.log"),
                cfg_disk_cylinders,
                memory_mib,
            };
            run_bochs(
                &files,
                &run_dir,
                &log_path,
                timeout,
                opts.bochs_debugger.as_deref(),
            )?
        }
    };
    let elapsed = start.elapsed();

    let log = fs::read_to_string(&log_path).unwrap_or_default();
    if !streamed && !log.trim().is_empty() {
        // Nothing reached the terminal live (no port-0xe9 mirror): show the log now.
        println!("umbra-harness: (console was not streamed; serial log follows)");
        print!("{log}");
        if !log.ends_with('\n') {
            println!();
        }
    }
    let facts = judge::read_facts(&log, &opts.scenario);
    let verdict = judge::judge(&opts.scenario, expect, opts.emu, &facts, &end);
    report(opts, expect, &verdict, &log, &log_path, elapsed, &extra);
    Ok(RunResult {
        verdict,
        log_path,
        elapsed,
    })
}

fn report(
    opts: &RunOptions,
    expect: Expect,
    v: &Verdict,
    log: &str,
    log_path: &Path,
    elapsed: Duration,
    extra: &[String],
) {
    let secs = elapsed.as_secs_f64();
    let label = opts.label();
    if v.check_passed {
        match expect {
            Expect::Pass => println!("PASS {label}: {} ({secs:.1} s)", v.seen),
            Expect::Crash => println!(
                "PASS {label} (expected crash): judged a failure and the exception report is present: {} ({secs:.1} s)",
                v.seen
            ),
        }
    } else {
        match expect {
            Expect::Pass => println!("FAIL {label}: {} ({secs:.1} s)", v.seen),
            Expect::Crash => println!("FAIL {label} (expected crash): {} ({secs:.1} s)", v.seen),
        }
        for r in &v.reasons {
            println!("  reason: {r}");
        }
        for e in extra {
            println!("  {e}");
        }
        let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
        let from = lines.len().saturating_sub(TAIL_LINES);
        println!(
            "  --- last {} lines of {} ---",
            lines.len() - from,
            rel(log_path)
        );
        for l in &lines[from..] {
            println!("  | {l}");
        }
        println!("  --- end of log ---");
    }
    flush_stdout();
}

type Outcome = (End, bool, Vec<String>);

fn run_qemu(
    (emu, firmware): (Emu, Firmware),
    iso: &Path,
    cfg_disk: Option<&Path>,
    run_dir: &Path,
    log_path: &Path,
    timeout: u64,
    memory_mib: u32,
) -> Result<Outcome, SetupError> {
    let stderr_path = run_dir.join("qemu-stderr.txt");
    let mut cmd = emu::qemu_command_sized(emu, iso, cfg_disk, firmware, None, memory_mib);
    fs::write(run_dir.join("command.txt"), format!("{cmd:?}\n"))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr_path)?);
    let mut child = spawn(cmd, emu.program())?;
    let mut log = File::create(log_path)?;
    let streamed = Arc::new(Mutex::new(false));
    let seen = Arc::clone(&streamed);
    let reader = stream_lines(child.stdout.take(), move |line| {
        *seen.lock().unwrap_or_else(|e| e.into_inner()) = true;
        println!("{line}");
        let _ = writeln!(log, "{line}");
    });
    let end = wait_with_timeout(&mut child, timeout);
    let _ = reader.join();
    let mut extra = Vec::new();
    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    if !stderr.trim().is_empty() {
        eprint!("{stderr}");
        extra.push(format!(
            "qemu stderr: {}",
            stderr.trim().replace('\n', "\n    ")
        ));
    }
    let streamed = *streamed.lock().unwrap_or_else(|e| e.into_inner());
    Ok((end, streamed, extra))
}

fn run_bochs(
    files: &BochsFiles<'_>,
    run_dir: &Path,
    log_path: &Path,
    timeout: u64,
    debugger: Option<&str>,
) -> Result<Outcome, SetupError> {
    for f in [
        "/usr/share/bochs/BIOS-bochs-latest",
        "/usr/share/bochs/VGABIOS-lgpl-latest",
    ] {
        if !Path::new(f).exists() {
            return Err(SetupError(format!(
                "{f} is missing (packages bochsbios, vgabios): run `make setup`"
            )));
        }
    }
    let com1 = files.com1;
    let bochs_log = files.log;
    let stderr_path = run_dir.join("bochs-stderr.txt");
    let config = run_dir.join("bochsrc.txt");
    let debugger_cmds = run_dir.join("debugger-cmds.txt");
    fs::write(&config, emu::bochs_config(files))?;
    fs::write(&debugger_cmds, debugger.unwrap_or("c\n"))?;
    let mut trace = match debugger {
        Some(_) => Some(File::create(run_dir.join("trace.txt"))?),
        None => None,
    };
    let mut cmd = emu::bochs_command(&config, &debugger_cmds);
    cmd.current_dir(run_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&stderr_path)?);
    let mut child = spawn(cmd, "bochs")?;
    let mirror = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&mirror);
    let reader = stream_lines(child.stdout.take(), move |line| {
        if let Some(t) = trace.as_mut().filter(|_| line.starts_with("(0)")) {
            let _ = writeln!(t, "{line}");
            return;
        }
        if !emu::is_bochs_chatter(line) {
            println!("{line}");
            let mut m = sink.lock().unwrap_or_else(|e| e.into_inner());
            m.push_str(line);
            m.push('\n');
        }
    });
    let end = wait_with_timeout(&mut child, timeout);
    let _ = reader.join();
    let mirror = std::mem::take(&mut *mirror.lock().unwrap_or_else(|e| e.into_inner()));

    // COM1 is the log of record; Bochs completes the file when it exits.
    let serial = clean_console(&fs::read(com1).unwrap_or_default());
    let mut extra = Vec::new();
    if serial.trim().is_empty() && !mirror.trim().is_empty() {
        fs::write(log_path, &mirror)?;
        extra.push("COM1 file was empty; the log holds the port-0xe9 mirror instead".to_string());
    } else if !has_exit_line(&serial) && has_exit_line(&mirror) {
        // The UART had not finished sending when the machine stopped; the mirror has the end.
        fs::write(log_path, &mirror)?;
        extra.push(
            "COM1 lost the end of the output; the log holds the port-0xe9 mirror instead"
                .to_string(),
        );
    } else {
        fs::write(log_path, &serial)?;
    }
    if end != End::Exited(Some(1)) || serial.trim().is_empty() {
        extra.extend(bochs_diagnostics(&stderr_path, bochs_log));
    }
    Ok((end, !mirror.trim().is_empty(), extra))
}

/// Bochs' own explanation of why it stopped: the "exiting" message on stderr and any panic or
/// triple-fault lines of its log.
fn bochs_diagnostics(stderr_path: &Path, bochs_log: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let stderr = fs::read_to_string(stderr_path).unwrap_or_default();
    if let Some(at) = stderr.find("Bochs is exiting with the following message:") {
        let msg: Vec<&str> = stderr[at..]
            .lines()
            .skip(1)
            .filter(|l| !l.starts_with("===="))
            .take(3)
            .collect();
        out.push(format!("bochs says: {}", msg.join(" ").trim()));
    }
    let log = fs::read_to_string(bochs_log).unwrap_or_default();
    for l in log
        .lines()
        .filter(|l| {
            l.contains("PANIC") || l.contains("with no resolution") || l.contains("triple fault")
        })
        .take(5)
    {
        out.push(format!("bochs.log: {}", l.trim()));
    }
    out.push(format!(
        "(bochs files: {})",
        rel(stderr_path.parent().unwrap_or(Path::new(".")))
    ));
    out
}

pub(crate) fn spawn(mut cmd: Command, program: &str) -> Result<Child, SetupError> {
    cmd.spawn().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            SetupError(format!("`{program}` is not installed: run `make setup`"))
        } else {
            SetupError(format!("cannot start `{program}`: {e}"))
        }
    })
}

/// Reads `out` line by line on a thread, cleaning each line and handing it to `sink`.
pub(crate) fn stream_lines<R, F>(out: Option<R>, mut sink: F) -> thread::JoinHandle<()>
where
    R: Read + Send + 'static,
    F: FnMut(&str) + Send + 'static,
{
    thread::spawn(move || {
        let Some(out) = out else { return };
        let mut reader = BufReader::new(out);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = clean_console(&buf);
                    sink(line.strip_suffix('\n').unwrap_or(&line));
                    flush_stdout();
                }
            }
        }
    })
}

/// Waits for the child; after `timeout` seconds stops it (SIGTERM, then SIGKILL).
pub(crate) fn wait_with_timeout(child: &mut Child, timeout: u64) -> End {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return End::Exited(status.code()),
            Ok(None) => {}
            Err(_) => return End::Exited(None),
        }
        if Instant::now() >= deadline {
            println!("umbra-harness: TIMEOUT: no end after {timeout} s; stopping the emulator");
            flush_stdout();
            // SIGTERM first: it lets Bochs flush its COM1 file.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let grace = Instant::now() + Duration::from_secs(3);
            while Instant::now() < grace {
                if let Ok(Some(_)) = child.try_wait() {
                    return End::TimedOut(timeout);
                }
                thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            return End::TimedOut(timeout);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn absolute(p: &Path) -> io::Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(p))
    }
}

/// A path relative to the current directory when it is below it, for shorter messages.
pub fn rel(p: &Path) -> String {
    match std::env::current_dir() {
        Ok(cwd) => p.strip_prefix(&cwd).unwrap_or(p).display().to_string(),
        Err(_) => p.display().to_string(),
    }
}

/// Flushes stdout (the harness' output is interleaved with children's).
pub fn flush_stdout() {
    let _ = io::stdout().flush();
}

fn has_exit_line(log: &str) -> bool {
    log.lines()
        .any(|l| judge::parse_exit_line(l.trim()).is_some())
}
