//! Linux guests (issue #13): the assets `make linux-assets` leaves in `build/linux/<arch>/`
//! (Debian's kernel, busybox-static, the test initramfs of `tests/linux/`), the report the
//! test init prints ([`InitReport`]), and the native baseline: the same kernel and initramfs
//! booted by GRUB in Bochs without Umbra (`umbra-harness linux-native`, `make linux-native`).
//!
//! The init's lines (tests/linux/init), each on a line of its own, possibly after a prefix
//! (the VMM's console prefix):
//!
//! ```text
//! umbra-init: tsc <decimal>
//! umbra-init: kernel <uname -r> <uname -m>
//! umbra-init: pipes <bytes> bytes through <n> processes, md5 <got> expected <want>: ok|FAIL
//! umbra-init: context switches <n>
//! umbra-init: memory <MiB> MiB filled and checksummed: ok|FAIL
//! umbra-init: end tsc <decimal>
//! umbra-init: result pass|fail
//! ```

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::emu::{self, BochsFiles};
use crate::judge::{clean_console, End};
use crate::runner::{absolute, flush_stdout, rel, spawn, wait_with_timeout};

/// The Linux kernel command line, for the native boot and for the VMM's Linux guests alike:
/// the console on COM1, a panic ends the machine at once (no 180 s wait), and no KASLR (the
/// same layout on every boot, so instruction counts compare between runs).
pub const CMDLINE: &str = "console=ttyS0,115200 panic=-1 nokaslr";

/// Where the assets are, under the build directory.
pub const ASSETS_DIR: &str = "linux";

/// What starts each line of the init's report.
pub const MARKER: &str = "umbra-init: ";

/// The native boot's default wall-clock limit (seconds): about 100 s of Bochs per arch.
pub const NATIVE_TIMEOUT_SECS: u64 = 900;

/// Memory of the native machine (MiB): the harness' usual machine.
pub const NATIVE_MIB: u32 = emu::MACHINE_MIB;

/// What Bochs prints when the guest powers off through ACPI (S5).
const BOCHS_POWER_OFF: &str = "ACPI control: soft power off";

/// A Linux flavour of the assets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Debian's `linux-image-amd64`, amd64 busybox: 64-bit.
    Amd64,
    /// Debian's `linux-image-686-pae` (i386), i386 busybox: 32-bit PAE.
    I386,
}

impl Arch {
    /// Both, in the order `make linux-assets` builds them.
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::I386];

    /// Parses `amd64` or `i386`.
    pub fn parse(s: &str) -> Result<Arch, String> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| format!("unknown Linux arch `{s}` (amd64 or i386)"))
    }

    /// Debian's name (the directory under `build/linux/`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::I386 => "i386",
        }
    }

    /// What the kernel's `uname -m` says.
    pub fn uname_machine(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::I386 => "i686",
        }
    }
}

/// The files of one arch's Linux guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assets {
    /// The bzImage (`vmlinuz`).
    pub kernel: PathBuf,
    /// The test initramfs (`initramfs.cpio.gz`, newc cpio, gzip).
    pub initramfs: PathBuf,
    /// busybox-static's binary (inside the initramfs too).
    pub busybox: PathBuf,
}

impl Assets {
    /// `linux-image-... <version>` from the file `fetch.sh` writes beside the kernel.
    pub fn kernel_package(&self) -> String {
        let file = self.kernel.with_file_name("kernel-version");
        fs::read_to_string(file)
            .ok()
            .and_then(|t| t.lines().next().map(str::to_string))
            .unwrap_or_else(|| "(kernel-version missing)".to_string())
    }
}

/// The assets of `arch` under `build/`.
pub fn assets(arch: Arch) -> Result<Assets, String> {
    assets_in(Path::new("build"), arch)
}

/// The assets of `arch` under `build_dir`, or which one is missing.
pub fn assets_in(build_dir: &Path, arch: Arch) -> Result<Assets, String> {
    let dir = build_dir.join(ASSETS_DIR).join(arch.name());
    let a = Assets {
        kernel: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.cpio.gz"),
        busybox: dir.join("busybox"),
    };
    for p in [&a.kernel, &a.initramfs, &a.busybox] {
        if !p.is_file() {
            return Err(format!(
                "{} is missing: run `make linux-assets`",
                p.display()
            ));
        }
    }
    Ok(a)
}

/// The init's report, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitReport {
    /// The TSC at the init's first line (in Bochs: instructions since power-on).
    pub tsc: u64,
    /// `uname -r`.
    pub kernel_release: String,
    /// `uname -m`.
    pub machine: String,
    /// Bytes through the pipeline.
    pub pipe_bytes: u64,
    /// Processes in the pipeline.
    pub pipe_processes: u32,
    /// MD5 of what came out of the pipeline.
    pub pipe_md5: String,
    /// MD5 of the same bytes without the pipeline.
    pub pipe_md5_expected: String,
    /// The init's verdict on the pipes (`ok`).
    pub pipes_ok: bool,
    /// Context switches over the pipe workload (`/proc/stat` ctxt).
    pub context_switches: u64,
    /// MiB filled and checksummed.
    pub memory_mib: u64,
    /// The init's verdict on the memory (`ok`).
    pub memory_ok: bool,
    /// `result pass`.
    pub result_pass: bool,
    /// The time-stamp counter when the workloads ended (the `end tsc` line; absent from
    /// inits older than it).
    pub end_tsc: Option<u64>,
}

impl InitReport {
    /// Parses the init's lines out of a console log (other lines are ignored). An error names
    /// the first line that is missing or malformed (the init did not get that far, or the
    /// formats of tests/linux/init and this parser differ).
    pub fn parse(console: &str) -> Result<InitReport, String> {
        let lines: Vec<&str> = console
            .lines()
            .filter_map(|l| l.find(MARKER).map(|at| l[at + MARKER.len()..].trim_end()))
            .collect();
        if lines.is_empty() {
            return Err(
                "no `umbra-init:` line: the init never ran (or its console is not \
                        in this log)"
                    .into(),
            );
        }
        let first = lines[0];
        let tsc = field(first, "tsc ")
            .ok_or_else(|| format!("the init's first line is not `tsc <decimal>`: `{first}`"))?;
        let tsc = number(tsc, "tsc")?;
        let line = |key: &str| -> Result<&str, String> {
            let found: Vec<&str> = lines.iter().filter_map(|l| field(l, key)).collect();
            match found.as_slice() {
                [one] => Ok(one),
                [] => Err(format!("no `{MARKER}{key}...` line")),
                _ => Err(format!("{} `{MARKER}{key}...` lines", found.len())),
            }
        };

        let kernel = line("kernel ")?;
        let (kernel_release, machine) = kernel
            .split_once(' ')
            .filter(|(r, m)| !r.is_empty() && !m.is_empty() && !m.contains(' '))
            .ok_or_else(|| format!("malformed kernel line `kernel {kernel}`"))?;

        let pipes = line("pipes ")?;
        let bad_pipes = || format!("malformed pipes line `pipes {pipes}`");
        let (bytes, rest) = pipes.split_once(" bytes through ").ok_or_else(bad_pipes)?;
        let (procs, rest) = rest.split_once(" processes, md5 ").ok_or_else(bad_pipes)?;
        let (got, rest) = rest.split_once(" expected ").ok_or_else(bad_pipes)?;
        let (want, verdict) = rest.split_once(": ").ok_or_else(bad_pipes)?;
        let pipes_ok = ok_or_fail(verdict).ok_or_else(bad_pipes)?;

        let ctxt = line("context switches ")?;

        let memory = line("memory ")?;
        let bad_memory = || format!("malformed memory line `memory {memory}`");
        let (mib, verdict) = memory
            .split_once(" MiB filled and checksummed: ")
            .ok_or_else(bad_memory)?;
        let memory_ok = ok_or_fail(verdict).ok_or_else(bad_memory)?;

        let end_tsc = match line("end tsc ") {
            Ok(t) => Some(number(t, "end tsc")?),
            Err(_) if !lines.iter().any(|l| l.starts_with("end tsc")) => None,
            Err(e) => return Err(e),
        };
        let result = line("result ")?;
        let result_pass = match result {
            "pass" => true,
            "fail" => false,
            other => return Err(format!("malformed result line `result {other}`")),
        };

        Ok(InitReport {
            tsc,
            kernel_release: kernel_release.to_string(),
            machine: machine.to_string(),
            pipe_bytes: number(bytes, "pipe bytes")?,
            pipe_processes: number(procs, "pipe processes")?,
            pipe_md5: md5(got)?,
            pipe_md5_expected: md5(want)?,
            pipes_ok,
            context_switches: number(ctxt, "context switches")?,
            memory_mib: number(mib, "memory MiB")?,
            memory_ok,
            result_pass,
            end_tsc,
        })
    }

    /// Why this report is not a pass of `arch`'s guest (empty: it passed). The init's own
    /// verdicts are checked against what it printed (an `ok` with two different sums fails).
    pub fn failures(&self, arch: Arch) -> Vec<String> {
        let mut why = Vec::new();
        if self.machine != arch.uname_machine() {
            why.push(format!(
                "uname -m is `{}`, not `{}`",
                self.machine,
                arch.uname_machine()
            ));
        }
        if !self.pipes_ok || self.pipe_md5 != self.pipe_md5_expected {
            why.push(format!(
                "pipes: md5 {} expected {}",
                self.pipe_md5, self.pipe_md5_expected
            ));
        }
        if self.pipe_processes < 4 {
            why.push(format!(
                "pipes: {} processes (at least 4)",
                self.pipe_processes
            ));
        }
        if !self.memory_ok {
            why.push(format!("memory: {} MiB checksum FAIL", self.memory_mib));
        }
        if !self.result_pass {
            why.push("the init says `result fail`".into());
        }
        why
    }

    /// One line: the figures and the verdicts.
    pub fn summary(&self) -> String {
        let verdict = |ok| if ok { "ok" } else { "FAIL" };
        format!(
            "Linux {} {}: first init line at tsc {}; pipes {} bytes through {} processes {} \
             ({} context switches); memory {} MiB {}; result {}",
            self.kernel_release,
            self.machine,
            self.tsc,
            self.pipe_bytes,
            self.pipe_processes,
            verdict(self.pipes_ok && self.pipe_md5 == self.pipe_md5_expected),
            self.context_switches,
            self.memory_mib,
            verdict(self.memory_ok),
            if self.result_pass { "pass" } else { "fail" }
        )
    }
}

/// The text after `key` when `line` starts with it.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.strip_prefix(key)
}

fn number<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what}: `{s}` is not a decimal number"));
    }
    s.parse()
        .map_err(|_| format!("{what}: `{s}` is out of range"))
}

fn md5(s: &str) -> Result<String, String> {
    if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(format!("`{s}` is not an MD5 sum (32 hex digits)"))
    }
}

fn ok_or_fail(s: &str) -> Option<bool> {
    match s {
        "ok" => Some(true),
        "FAIL" => Some(false),
        _ => None,
    }
}

/// GRUB's configuration of the native boot: the kernel with [`CMDLINE`] and the initramfs,
/// no menu.
pub fn grub_cfg(cmdline: &str) -> String {
    format!(
        "# Written by umbra-harness linux-native: Linux without Umbra.\n\
         set timeout=0\n\
         set default=0\n\
         menuentry \"linux\" {{\n\
         \x20 linux /boot/vmlinuz {cmdline}\n\
         \x20 initrd /boot/initramfs.cpio.gz\n\
         }}\n"
    )
}

/// The outcome of a native boot.
#[derive(Debug)]
pub struct Native {
    /// The init's report, or why there is none.
    pub report: Result<InitReport, String>,
    /// Whether Bochs stopped on the guest's ACPI power-off.
    pub powered_off: bool,
    /// How the emulator ended.
    pub end: End,
    /// Wall-clock time of the Bochs run.
    pub elapsed: Duration,
    /// The serial log kept.
    pub log_path: PathBuf,
}

impl Native {
    /// Why the run did not pass (empty: it did).
    pub fn failures(&self, arch: Arch) -> Vec<String> {
        let mut why = match &self.report {
            Ok(r) => r.failures(arch),
            Err(e) => vec![e.clone()],
        };
        if !self.powered_off {
            why.push(format!(
                "Bochs did not stop on an ACPI power-off ({:?})",
                self.end
            ));
        }
        why
    }
}

/// Boots `arch`'s kernel and initramfs through GRUB in Bochs, without Umbra, streams COM1,
/// and parses the init's report. Errors: what could not be set up (assets, tools).
pub fn run_native(build_dir: &Path, arch: Arch, timeout_secs: u64) -> Result<Native, String> {
    let assets = assets_in(build_dir, arch)?;
    for tool in ["grub-mkrescue", "bochs"] {
        if !crate::runner::on_path(tool) {
            return Err(format!("`{tool}` is not installed: run `make setup`"));
        }
    }
    let io = |e: std::io::Error| e.to_string();
    let build_dir = absolute(build_dir).map_err(io)?;
    let run_dir = build_dir
        .join("run")
        .join(format!("linux-native-{}", arch.name()));
    let _ = fs::remove_dir_all(&run_dir);
    let root = run_dir.join("iso-root");
    fs::create_dir_all(root.join("boot/grub")).map_err(io)?;
    fs::copy(&assets.kernel, root.join("boot/vmlinuz")).map_err(io)?;
    fs::copy(&assets.initramfs, root.join("boot/initramfs.cpio.gz")).map_err(io)?;
    fs::write(root.join("boot/grub/grub.cfg"), grub_cfg(CMDLINE)).map_err(io)?;
    let iso = run_dir.join("linux.iso");
    let out = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(&iso)
        .arg(&root)
        .output()
        .map_err(|e| format!("grub-mkrescue: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "grub-mkrescue failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // The harness' machine has a config disk on ata0-slave; here it is an empty one.
    let disk = run_dir.join("empty-disk.img");
    fs::File::create(&disk)
        .and_then(|f| f.set_len(emu::CFG_DISK_BYTES))
        .map_err(io)?;
    let com1 = run_dir.join("com1.raw");
    let files = BochsFiles {
        iso: &iso,
        cfg_disk: &disk,
        com1: &com1,
        log: &run_dir.join("bochs.log"),
        cfg_disk_cylinders: emu::CFG_DISK_CYLINDERS,
        memory_mib: NATIVE_MIB,
    };
    let config = run_dir.join("bochsrc.txt");
    let debugger_cmds = run_dir.join("debugger-cmds.txt");
    fs::write(&config, emu::bochs_config(&files)).map_err(io)?;
    fs::write(&debugger_cmds, "c\n").map_err(io)?;
    let stderr_path = run_dir.join("bochs-stderr.txt");
    let log_path = build_dir.join(format!("serial-bochs-linux-native-{}.log", arch.name()));

    println!(
        "umbra-harness: booting {} ({}) natively in Bochs, {NATIVE_MIB} MiB, with `{CMDLINE}` \
         (timeout {timeout_secs} s)",
        rel(&assets.kernel),
        assets.kernel_package()
    );
    println!("umbra-harness: serial log: {}", rel(&log_path));
    flush_stdout();
    let mut cmd = emu::bochs_command(&config, &debugger_cmds);
    cmd.current_dir(&run_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&stderr_path).map_err(io)?);
    let start = Instant::now();
    let mut child = spawn(cmd, "bochs").map_err(|e| e.0)?;
    let done = Arc::new(AtomicBool::new(false));
    let tail = {
        let (com1, done) = (com1.clone(), Arc::clone(&done));
        thread::spawn(move || stream_file(&com1, &done))
    };
    let end = wait_with_timeout(&mut child, timeout_secs);
    let elapsed = start.elapsed();
    done.store(true, Ordering::SeqCst);
    let _ = tail.join();

    let console = clean_console(&fs::read(&com1).unwrap_or_default());
    fs::write(&log_path, &console).map_err(io)?;
    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    Ok(Native {
        report: InitReport::parse(&console),
        powered_off: stderr.contains(BOCHS_POWER_OFF),
        end,
        elapsed,
        log_path,
    })
}

/// Prints the complete lines appended to `path` (Bochs' COM1 file) until `done`, then the rest.
fn stream_file(path: &Path, done: &AtomicBool) {
    let mut offset = 0u64;
    let mut pending = Vec::new();
    loop {
        let finished = done.load(Ordering::SeqCst);
        if let Ok(mut f) = fs::File::open(path) {
            if f.seek(SeekFrom::Start(offset)).is_ok() {
                let mut buf = Vec::new();
                if let Ok(n) = f.read_to_end(&mut buf) {
                    offset += n as u64;
                    pending.extend_from_slice(&buf);
                }
            }
        }
        let cut = if finished {
            pending.len()
        } else {
            pending
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1)
        };
        if cut > 0 {
            let text = clean_console(&pending[..cut]);
            print!("{text}");
            if finished && !text.ends_with('\n') && !text.is_empty() {
                println!();
            }
            flush_stdout();
            pending.drain(..cut);
        }
        if finished {
            return;
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// `umbra-harness linux-native`: boots, prints the report; exit code 0 iff it passed.
pub fn native_main(build_dir: &Path, arch: Arch, timeout_secs: Option<u64>) -> Result<u8, String> {
    let n = run_native(build_dir, arch, timeout_secs.unwrap_or(NATIVE_TIMEOUT_SECS))?;
    let secs = n.elapsed.as_secs_f64();
    if let Ok(r) = &n.report {
        println!("umbra-harness: {}", r.summary());
    }
    let why = n.failures(arch);
    if why.is_empty() {
        let tsc = n.report.as_ref().map_or(0, |r| r.tsc);
        println!(
            "PASS linux-native {}: init's first line at tsc {tsc}, results pass, powered off \
             ({secs:.1} s)",
            arch.name()
        );
        Ok(0)
    } else {
        println!("FAIL linux-native {} ({secs:.1} s)", arch.name());
        for w in &why {
            println!("  reason: {w}");
        }
        println!("  (log: {})", rel(&n.log_path));
        Ok(1)
    }
}

#[cfg(test)]
#[path = "linux_tests.rs"]
mod tests;
