//! The emulators: how each one is started, headless, on the ISO plus the per-run config disk.

use std::fmt;
use std::path::Path;
use std::process::Command;

/// An emulator the harness can boot the ISO on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emu {
    /// QEMU with TCG (`-cpu max`): fast, no VMX.
    Qemu,
    /// QEMU with KVM (`-enable-kvm -cpu host`): real VMX on an Intel host with nested VMX.
    Kvm,
    /// Bochs (`corei7_skylake_x`): emulated VMX with EPT; deterministic instruction counts.
    Bochs,
}

impl Emu {
    /// Every emulator, for listings.
    pub const ALL: [Emu; 3] = [Emu::Qemu, Emu::Kvm, Emu::Bochs];

    /// Parses `qemu`, `kvm` or `bochs`.
    pub fn parse(s: &str) -> Option<Emu> {
        match s {
            "qemu" => Some(Emu::Qemu),
            "kvm" => Some(Emu::Kvm),
            "bochs" => Some(Emu::Bochs),
            _ => None,
        }
    }

    /// The name used on the command line and in log file names.
    pub fn name(self) -> &'static str {
        match self {
            Emu::Qemu => "qemu",
            Emu::Kvm => "kvm",
            Emu::Bochs => "bochs",
        }
    }

    /// Whether the emulator's exit status carries the kernel's exit code (`isa-debug-exit`).
    pub fn exit_status_is_meaningful(self) -> bool {
        matches!(self, Emu::Qemu | Emu::Kvm)
    }

    /// The program to run.
    pub fn program(self) -> &'static str {
        match self {
            Emu::Qemu | Emu::Kvm => "qemu-system-x86_64",
            Emu::Bochs => "bochs",
        }
    }

    /// The default emulator: KVM where `/dev/kvm` exists and the CPU has `vmx`, else Bochs.
    pub fn host_default() -> Emu {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        if Path::new("/dev/kvm").exists() && cpuinfo_has_vmx(&cpuinfo) {
            Emu::Kvm
        } else {
            Emu::Bochs
        }
    }
}

impl fmt::Display for Emu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The boot loader on the ISO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loader {
    /// GRUB, Multiboot2 (`build/umbra.iso`; the scenario comes from the config disk).
    Grub,
    /// Limine, Limine protocol (a per-run ISO built from `build/limine-root`).
    Limine,
}

impl Loader {
    /// Parses `grub` or `limine`.
    pub fn parse(s: &str) -> Option<Loader> {
        match s {
            "grub" => Some(Loader::Grub),
            "limine" => Some(Loader::Limine),
            _ => None,
        }
    }

    /// The name used on the command line and in file names.
    pub fn name(self) -> &'static str {
        match self {
            Loader::Grub => "grub",
            Loader::Limine => "limine",
        }
    }
}

/// The machine's firmware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// Legacy BIOS (SeaBIOS in QEMU, Bochs' BIOS).
    Bios,
    /// UEFI (OVMF, QEMU only).
    Uefi,
}

impl Firmware {
    /// Parses `bios` or `uefi`.
    pub fn parse(s: &str) -> Option<Firmware> {
        match s {
            "bios" => Some(Firmware::Bios),
            "uefi" => Some(Firmware::Uefi),
            _ => None,
        }
    }

    /// The name used on the command line and in file names.
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

/// Whether a `/proc/cpuinfo` text lists the `vmx` flag.
pub fn cpuinfo_has_vmx(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|w| w == "vmx"))
}

/// Geometry of the per-run config disk (a superfloppy FAT image): Bochs needs the CHS values
/// of a flat disk image to multiply out to its size.
pub const CFG_DISK_CYLINDERS: u32 = 2;
/// Heads of the config disk.
pub const CFG_DISK_HEADS: u32 = 16;
/// Sectors per track of the config disk.
pub const CFG_DISK_SPT: u32 = 63;
/// Size of the config disk in bytes.
pub const CFG_DISK_BYTES: u64 = cfg_disk_bytes(CFG_DISK_CYLINDERS);

/// Size of a config disk of `cylinders` cylinders (a larger one carries a user's guest).
pub const fn cfg_disk_bytes(cylinders: u32) -> u64 {
    (cylinders * CFG_DISK_HEADS * CFG_DISK_SPT) as u64 * 512
}

/// The emulated machine's memory (MiB) for every run but a large user guest's.
pub const MACHINE_MIB: u32 = 256;

/// The QEMU command line: CD-ROM boot, the config disk (if any) as the first IDE disk (GRUB's
/// `hd0`), COM1 on stdout, `isa-debug-exit` for the verdict, OVMF for UEFI. With `monitor`, the
/// human monitor listens on that Unix socket instead and there is no `isa-debug-exit`: the
/// kernel halts at the end and the machine stays up for the harness (the screen check).
pub fn qemu_command(
    emu: Emu,
    iso: &Path,
    cfg_disk: Option<&Path>,
    firmware: Firmware,
    monitor: Option<&Path>,
) -> Command {
    qemu_command_sized(emu, iso, cfg_disk, firmware, monitor, MACHINE_MIB)
}

/// [`qemu_command`] with `memory_mib` of memory.
pub fn qemu_command_sized(
    emu: Emu,
    iso: &Path,
    cfg_disk: Option<&Path>,
    firmware: Firmware,
    monitor: Option<&Path>,
    memory_mib: u32,
) -> Command {
    let mut cmd = Command::new(emu.program());
    if emu == Emu::Kvm {
        cmd.args(["-enable-kvm", "-cpu", "host"]);
    } else {
        cmd.args(["-cpu", "max"]);
    }
    cmd.arg("-m").arg(format!("{memory_mib}M"));
    cmd.args(["-display", "none", "-no-reboot", "-nic", "none"]);
    match monitor {
        Some(socket) => cmd
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", qemu_path(socket))),
        None => cmd.args(["-monitor", "none"]),
    };
    cmd.arg("-drive").arg(format!(
        "file={},format=raw,if=ide,index=2,media=cdrom,readonly=on",
        qemu_path(iso)
    ));
    if let Some(cfg_disk) = cfg_disk {
        cmd.arg("-drive").arg(format!(
            "file={},format=raw,if=ide,index=0,media=disk",
            qemu_path(cfg_disk)
        ));
    }
    if firmware == Firmware::Uefi {
        cmd.arg("-bios").arg(crate::limine::OVMF);
    }
    cmd.args(["-boot", "order=d", "-serial", "stdio"]);
    if monitor.is_none() {
        cmd.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    }
    cmd
}

/// QEMU's `-drive` option list uses `,` as a separator; a literal comma is written `,,`.
fn qemu_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// Files of one Bochs run.
pub struct BochsFiles<'a> {
    /// The ISO to boot.
    pub iso: &'a Path,
    /// The per-run config disk.
    pub cfg_disk: &'a Path,
    /// Where Bochs writes COM1 (complete only after Bochs exits).
    pub com1: &'a Path,
    /// Bochs' own log.
    pub log: &'a Path,
    /// Cylinders of the config disk (`CFG_DISK_CYLINDERS` unless it carries a user's guest).
    pub cfg_disk_cylinders: u32,
    /// The machine's memory in MiB ([`MACHINE_MIB`] unless a user's guest needs more).
    pub memory_mib: u32,
}

/// The Bochs configuration (see `docs/bochs-vmx.md`), headless: Debian's Bochs has no `nogui`
/// or `term` display library unless extra packages are installed, so `rfb` with no wait.
pub fn bochs_config(f: &BochsFiles<'_>) -> String {
    format!(
        "# Written by umbra-harness for one run; see docs/bochs-vmx.md.\n\
         display_library: rfb, options=\"timeout=0\"\n\
         romimage: file=/usr/share/bochs/BIOS-bochs-latest, options=fastboot\n\
         vgaromimage: file=/usr/share/bochs/VGABIOS-lgpl-latest\n\
         memory: guest={mib}, host={mib}\n\
         ata0-master: type=cdrom, path=\"{iso}\", status=inserted\n\
         ata0-slave: type=disk, path=\"{disk}\", mode=flat, cylinders={c}, heads={h}, spt={s}\n\
         boot: cdrom\n\
         cpu: model=corei7_skylake_x, count=1, ips=100000000, reset_on_triple_fault=0\n\
         clock: sync=none\n\
         com1: enabled=1, mode=file, dev=\"{com1}\"\n\
         port_e9_hack: enabled=1\n\
         speaker: enabled=0\n\
         sound: waveoutdrv=dummy, waveindrv=dummy, midioutdrv=dummy\n\
         log: \"{log}\"\n\
         panic: action=fatal\n",
        iso = f.iso.display(),
        disk = f.cfg_disk.display(),
        c = f.cfg_disk_cylinders,
        h = CFG_DISK_HEADS,
        mib = f.memory_mib,
        s = CFG_DISK_SPT,
        com1 = f.com1.display(),
        log = f.log.display(),
    )
}

/// `bochs -q -f <config> -rc <debugger commands>`: Debian's Bochs includes the debugger, which
/// stops before the first instruction; the commands file holds `c` (continue).
pub fn bochs_command(config: &Path, debugger_cmds: &Path) -> Command {
    let mut cmd = Command::new("bochs");
    cmd.arg("-q")
        .arg("-f")
        .arg(config)
        .arg("-rc")
        .arg(debugger_cmds);
    cmd
}

/// Whether a line on Bochs' stdout is Bochs' own chatter (banner, debugger) rather than the
/// kernel's port-0xe9 console mirror.
pub fn is_bochs_chatter(line: &str) -> bool {
    let t = line.trim();
    t.starts_with("====")
        || t.starts_with("Bochs x86 Emulator")
        || t.starts_with("Built from SVN")
        || t.starts_with("Timestamp:")
        || t.starts_with("Next at t=")
        || t.starts_with("<bochs:")
        || (t.starts_with("(0)") && t.contains("[0x"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmx_flag_detection() {
        assert!(cpuinfo_has_vmx(
            "processor : 0\nflags\t\t: fpu vme vmx sse\n"
        ));
        assert!(!cpuinfo_has_vmx(
            "flags\t\t: fpu vme svm sse\nvmx flags : ept\n"
        ));
        assert!(!cpuinfo_has_vmx(""));
    }

    #[test]
    fn emu_names_round_trip() {
        for e in Emu::ALL {
            assert_eq!(Emu::parse(e.name()), Some(e));
        }
        assert_eq!(Emu::parse("vbox"), None);
    }

    #[test]
    fn config_disk_geometry_matches_size() {
        assert_eq!(CFG_DISK_BYTES, 2 * 16 * 63 * 512);
    }

    #[test]
    fn bochs_chatter_is_recognised() {
        assert!(is_bochs_chatter("Next at t=0"));
        assert!(is_bochs_chatter(
            "(0) [0x0000fffffff0] f000:fff0 (unk. ctxt): jmpf 0xf000:e05b"
        ));
        assert!(is_bochs_chatter(
            "(0).[2331531777] [0x00000ff1b421] 0008:000000000ff1b421 (unk. ctxt): out dx, ax"
        ));
        assert!(!is_bochs_chatter("kernel: 12 passed, 0 failed"));
        assert!(!is_bochs_chatter("umbra: exit 0"));
    }

    #[test]
    fn bochs_config_has_what_the_harness_relies_on() {
        let f = BochsFiles {
            iso: Path::new("/b/umbra.iso"),
            cfg_disk: Path::new("/b/run/cfg.img"),
            com1: Path::new("/b/run/com1.raw"),
            log: Path::new("/b/run/bochs.log"),
            cfg_disk_cylinders: CFG_DISK_CYLINDERS,
            memory_mib: MACHINE_MIB,
        };
        let c = bochs_config(&f);
        for want in [
            "display_library: rfb, options=\"timeout=0\"\n",
            "options=fastboot\n",
            "ata0-master: type=cdrom, path=\"/b/umbra.iso\", status=inserted\n",
            "ata0-slave: type=disk, path=\"/b/run/cfg.img\", mode=flat, cylinders=2, heads=16, spt=63\n",
            "boot: cdrom\n",
            "cpu: model=corei7_skylake_x,",
            "clock: sync=none\n",
            "com1: enabled=1, mode=file, dev=\"/b/run/com1.raw\"\n",
            "port_e9_hack: enabled=1\n",
            "memory: guest=256,",
        ] {
            assert!(c.contains(want), "missing {want:?} in\n{c}");
        }
    }

    #[test]
    fn qemu_command_lines() {
        let args = |e| -> Vec<String> {
            qemu_command(
                e,
                Path::new("/b/umbra.iso"),
                Some(Path::new("/b/cfg.img")),
                Firmware::Bios,
                None,
            )
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
        };
        let tcg = args(Emu::Qemu).join(" ");
        assert!(tcg.starts_with("-cpu max "), "{tcg}");
        assert!(tcg.contains("-display none -no-reboot"));
        assert!(tcg.contains("file=/b/umbra.iso,format=raw,if=ide,index=2,media=cdrom"));
        assert!(tcg.contains("file=/b/cfg.img,format=raw,if=ide,index=0,media=disk"));
        assert!(tcg.contains("-serial stdio"));
        assert!(tcg.contains("-device isa-debug-exit,iobase=0xf4,iosize=0x04"));
        assert!(!tcg.contains("kvm"));
        assert!(tcg.contains("-monitor none"));
        assert!(!tcg.contains("-bios"));
        let kvm = args(Emu::Kvm).join(" ");
        assert!(kvm.starts_with("-enable-kvm -cpu host "), "{kvm}");
    }

    #[test]
    fn qemu_uefi_and_monitor_runs() {
        let cmd = qemu_command(
            Emu::Qemu,
            Path::new("/b/x.iso"),
            None,
            Firmware::Uefi,
            Some(Path::new("/b/run/mon.sock")),
        );
        let line: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let line = line.join(" ");
        assert!(line.contains("-bios /usr/share/ovmf/OVMF.fd"), "{line}");
        assert!(line.contains("-monitor unix:/b/run/mon.sock,server=on,wait=off"));
        assert!(
            !line.contains("isa-debug-exit"),
            "the machine must stay up: {line}"
        );
        assert!(!line.contains("media=disk"));
    }

    #[test]
    fn qemu_paths_escape_commas() {
        assert_eq!(qemu_path(Path::new("/a,b/c.iso")), "/a,,b/c.iso");
    }
}
