//! The `guest` scenario: a user's own kernel (`make run GUEST=path`), put on the boot media by
//! the harness as a boot module named by its file name. The kernel command line says what to
//! run (`abi::scenario::GUEST_*` words): `guest.module=FILE guest.ram=MIB guest.mmu=ept|shadow
//! guest.entry=multiboot|flat|linux [guest.initrd=FILE] [guest.pool=PAGES] guest.cmdline=...`,
//! the guest's command line running to the end.
//!
//! The run prints the guest's console (the VMM's `guest:` lines), its result and the exit
//! summary, and passes iff the guest wrote 0 to the isa-debug-exit port (QEMU's convention:
//! status `(0 << 1) | 1`).

use core::fmt::Write;

use abi::scenario::{
    GUEST_CMDLINE, GUEST_ENTRY, GUEST_INITRD, GUEST_KVM_POLICY, GUEST_MMU, GUEST_MODULE,
    GUEST_POOL, GUEST_PREV_ROOTS, GUEST_RAM, GUEST_VCPUS,
};
use heapless::String;
use userlib::proto::vmm::{
    ConfigError, EntryMode, MmuMode, Response, ShadowConfig, VmConfig, VmResult, VmmError,
    CMDLINE_MAX, DEFAULT_FLAT_LOAD_GPA, MODULE_MAX, RAM_MAX_MIB, RAM_MIN_MIB,
};
use userlib::proto::ProtoError;
use userlib::suite::Suite;

/// The VM's name: the prefix of the guest's console lines.
pub const VM_NAME: &str = "guest";
/// Resets that reboot a user's guest (the image loaded again, RAM and CMOS kept); the one
/// after them stops the run, so that a guest caught in a reset loop still ends.
pub const MAX_RESETS: u8 = 8;

/// What the kernel command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestArgs {
    pub module: String<MODULE_MAX>,
    pub ram_mib: u32,
    pub shadow: bool,
    /// Shadow page pool pages (`guest.pool=`; absent: the default).
    pub pool_pages: Option<u32>,
    /// Previous roots cached per vCPU (`guest.prev-roots=`; absent: the default).
    pub prev_roots: Option<u8>,
    /// Shadow paging with KVM's policy (`guest.kvm-policy`).
    pub kvm_policy: bool,
    pub entry: GuestEntry,
    /// A Linux guest's initramfs module (`guest.initrd=`; empty: none).
    pub initrd: String<MODULE_MAX>,
    /// vCPUs (`guest.vcpus=`, 1 when absent).
    pub vcpus: u8,
    pub cmdline: String<CMDLINE_MAX>,
    /// The word `trace` before the guest's command line (`make trace GUEST=...`): its exits
    /// are traced and the report follows the run.
    pub trace: bool,
}

/// How the image is booted (`guest.entry=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestEntry {
    Multiboot,
    Flat,
    Linux,
}

impl GuestEntry {
    /// The word after `guest.entry=` and the kind in words, one row per entry.
    const WORDS: [(GuestEntry, &'static str, &'static str); 3] = [
        (GuestEntry::Multiboot, "multiboot", "Multiboot"),
        (GuestEntry::Flat, "flat", "flat 64-bit"),
        (GuestEntry::Linux, "linux", "Linux bzImage"),
    ];

    fn parse(w: &str) -> Option<GuestEntry> {
        Self::WORDS.iter().find(|r| r.1 == w).map(|r| r.0)
    }

    fn words(self) -> &'static str {
        Self::WORDS.iter().find(|r| r.0 == self).map_or("", |r| r.2)
    }
}

/// Reads the `guest.*` words of a kernel command line; the guest's command line is everything
/// after `guest.cmdline=` (so it must come last).
pub fn parse(line: &str) -> Result<GuestArgs, &'static str> {
    let (head, cmdline) = match line.find(GUEST_CMDLINE) {
        Some(at) => (&line[..at], line[at + GUEST_CMDLINE.len()..].trim()),
        None => (line, ""),
    };
    let mut args = GuestArgs {
        module: String::new(),
        ram_mib: 0,
        shadow: false,
        pool_pages: None,
        prev_roots: None,
        kvm_policy: false,
        entry: GuestEntry::Multiboot,
        initrd: String::new(),
        vcpus: 1,
        cmdline: String::try_from(cmdline).map_err(|_| "guest.cmdline= is too long")?,
        trace: false,
    };
    for w in head.split_ascii_whitespace() {
        if w == "trace" {
            args.trace = true;
        } else if w == GUEST_KVM_POLICY {
            args.kvm_policy = true;
        } else if let Some(v) = w.strip_prefix(GUEST_MODULE) {
            args.module = String::try_from(v).map_err(|_| "guest.module= is too long")?;
        } else if let Some(v) = w.strip_prefix(GUEST_RAM) {
            args.ram_mib = v.parse().map_err(|_| "guest.ram= is not a number of MiB")?;
        } else if let Some(v) = w.strip_prefix(GUEST_VCPUS) {
            args.vcpus = v.parse().map_err(|_| "guest.vcpus= is not a number")?;
        } else if let Some(v) = w.strip_prefix(GUEST_MMU) {
            args.shadow = match v {
                "ept" => false,
                "shadow" => true,
                _ => return Err("guest.mmu= is neither ept nor shadow"),
            };
        } else if let Some(v) = w.strip_prefix(GUEST_ENTRY) {
            args.entry =
                GuestEntry::parse(v).ok_or("guest.entry= is not multiboot, flat or linux")?;
        } else if let Some(v) = w.strip_prefix(GUEST_INITRD) {
            args.initrd = String::try_from(v).map_err(|_| "guest.initrd= is too long")?;
        } else if let Some(v) = w.strip_prefix(GUEST_POOL) {
            args.pool_pages = Some(v.parse().map_err(|_| "guest.pool= is not a number")?);
        } else if let Some(v) = w.strip_prefix(GUEST_PREV_ROOTS) {
            args.prev_roots = Some(v.parse().map_err(|_| "guest.prev-roots= is not a number")?);
        }
    }
    if args.module.is_empty() {
        return Err("no guest.module= on the kernel command line");
    }
    if !(RAM_MIN_MIB..=RAM_MAX_MIB).contains(&args.ram_mib) {
        return Err("guest.ram= is missing or outside the VMM's limits");
    }
    Ok(args)
}

/// The VMM configuration for `a`.
pub fn config(a: &GuestArgs) -> VmConfig {
    VmConfig {
        name: String::try_from(VM_NAME).unwrap_or_default(),
        module: a.module.clone(),
        ram_mib: a.ram_mib,
        entry: match a.entry {
            GuestEntry::Flat => EntryMode::Flat64 {
                load_gpa: DEFAULT_FLAT_LOAD_GPA,
            },
            GuestEntry::Multiboot => EntryMode::Multiboot,
            GuestEntry::Linux => EntryMode::Linux,
        },
        vcpus: a.vcpus,
        cmdline: a.cmdline.clone(),
        mmu: if a.shadow {
            MmuMode::Shadow(ShadowConfig {
                pool_pages: a.pool_pages.unwrap_or(ShadowConfig::DEFAULT.pool_pages),
                prev_roots: a.prev_roots.unwrap_or(ShadowConfig::DEFAULT.prev_roots),
                kvm_policy: a.kvm_policy,
                ..ShadowConfig::DEFAULT
            })
        } else {
            MmuMode::Ept
        },
        benchmark: false,
        time_limit_ms: 0,
        trace: a.trace,
        max_resets: MAX_RESETS,
        initrd: a.initrd.clone(),
    }
}

/// The guest's result in words, and whether it counts as success (debug-exit value 0).
pub fn describe(r: &VmResult) -> (String<120>, bool) {
    let mut s = String::new();
    // A clean ACPI power-off is a kernel's own way to end well.
    let ok = *r == VmResult::DebugExit { code: 1 } || *r == VmResult::PoweredOff;
    let _ = match *r {
        VmResult::DebugExit { code } => {
            write!(s, "debug-exit value {} (QEMU status {code:#x})", code >> 1)
        }
        VmResult::HypercallExit { code } => write!(s, "exit hypercall, code {code}"),
        VmResult::Halted { rip } => write!(
            s,
            "halted at rip {rip:#x} with interrupts off (nothing can wake it)"
        ),
        VmResult::TripleFault => write!(s, "triple fault, once more than the reboots allowed"),
        VmResult::Unhandled { reason } => write!(
            s,
            "stopped: exit reason {reason} ({}) is not handled",
            abi::vmx::reason::name(reason).unwrap_or("unknown")
        ),
        VmResult::EntryFailed { reason, error } => write!(
            s,
            "stopped: VM entry failed (reason {reason:#x}, error {error:#x})"
        ),
        VmResult::OutsideRam { gpa } => write!(
            s,
            "stopped: access at gpa {gpa:#x}, outside RAM and every device"
        ),
        VmResult::TimeLimit => write!(s, "stopped: time limit"),
        VmResult::PoweredOff => write!(s, "powered off (ACPI S5)"),
        VmResult::Reset { port } => {
            write!(
                s,
                "reset through port {port:#x}, once more than the reboots allowed"
            )
        }
        other => write!(s, "stopped: {other:?}"),
    };
    (s, ok)
}

/// Why a `RunVm` for the user's guest was refused, in words.
fn refusal(e: &VmmError) -> &'static str {
    match e {
        VmmError::NoSuchModule => "the guest's boot module is missing",
        VmmError::BadImage { .. } => {
            "the VMM refused the image (see the `vmm: image refused` line above)"
        }
        VmmError::InvalidConfig(ConfigError::RamSize) => "RAM outside the VMM's limits",
        VmmError::InvalidConfig(ConfigError::VcpuCount) => "VCPUS outside 1..=8",
        VmmError::InvalidConfig(_) => "the VMM refused the configuration",
        VmmError::NoVmx => "this machine has no usable VMX: run it on Bochs (EMU=bochs) or KVM",
        VmmError::Kernel { error } if *error == abi::Error::NoMemory as u64 => {
            "not enough free memory for the guest's RAM"
        }
        VmmError::Kernel { .. } => "a kernel call failed",
        VmmError::Mmu => "the MMU service refused the VM",
        VmmError::Trace => "tracing was refused",
    }
}

/// The scenario: runs the guest the command line names, one check (its result).
pub fn guest_suite(t: &mut Suite, kernel_cmdline: &str) {
    let args = match parse(kernel_cmdline) {
        Ok(a) => a,
        Err(why) => {
            t.check(
                "the guest's configuration",
                false,
                format_args!("{why} (boot it with `make run GUEST=path`)"),
            );
            return;
        }
    };
    let cfg = config(&args);
    userlib::println!(
        "guest: running {} ({} MiB RAM, {}, {}{}{}), command line \"{}{}{}\"",
        args.module.as_str(),
        args.ram_mib,
        args.entry.words(),
        match (args.shadow, args.kvm_policy) {
            (true, true) => "shadow paging, KVM's root policy",
            (true, false) => "shadow paging",
            _ => "EPT",
        },
        if args.initrd.is_empty() {
            ""
        } else {
            ", initramfs "
        },
        args.initrd.as_str(),
        // A multiboot kernel reads its file name first; a Linux kernel its command line alone.
        if args.entry == GuestEntry::Linux {
            ""
        } else {
            args.module.as_str()
        },
        if args.cmdline.is_empty() || args.entry == GuestEntry::Linux {
            ""
        } else {
            " "
        },
        args.cmdline.as_str()
    );
    let r = crate::run(&cfg);
    match &r {
        Ok(Response::Finished(s)) => {
            let (what, ok) = describe(&s.result);
            userlib::println!(
                "guest: result: {} (last rip {:#x}, {} exits, {} reboots)",
                what.as_str(),
                s.rip,
                s.total_exits,
                s.resets
            );
            t.check(
                "the guest wrote 0 to the debug-exit port or powered off",
                ok,
                format_args!("{}", what.as_str()),
            );
        }
        Ok(Response::Error(ProtoError::Service(e))) => {
            t.check(
                "the guest ran",
                false,
                format_args!("{}: {e:?}", refusal(e)),
            );
        }
        other => t.check(
            "the guest ran",
            false,
            format_args!("unexpected answer {other:?}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_word_and_the_command_line_to_the_end() {
        let a = parse(
            "scenario=guest guest.module=kernel.elf guest.ram=1024 guest.mmu=shadow \
             guest.entry=multiboot guest.cmdline=console=ttyS0  root=/dev/x guest.ram=2",
        )
        .unwrap();
        assert_eq!(a.module.as_str(), "kernel.elf");
        assert_eq!(a.ram_mib, 1024);
        assert!(a.shadow && a.entry == GuestEntry::Multiboot && !a.trace);
        assert_eq!(a.cmdline.as_str(), "console=ttyS0  root=/dev/x guest.ram=2");
        let traced =
            parse("scenario=guest trace guest.module=k guest.ram=8 guest.cmdline=x").unwrap();
        assert!(traced.trace && config(&traced).trace);
        let words = parse("guest.module=k guest.ram=8 guest.cmdline=trace").unwrap();
        assert!(!words.trace, "the guest's own words are not Umbra's");
        let c = config(&a);
        assert_eq!(c.module.as_str(), "kernel.elf");
        assert!(matches!(c.mmu, MmuMode::Shadow(_)));
        assert_eq!(c.entry, EntryMode::Multiboot);

        let b = parse("guest.module=k.bin guest.ram=64 guest.entry=flat").unwrap();
        assert!(b.entry == GuestEntry::Flat && !b.shadow && b.cmdline.is_empty());
        let l = parse(
            "guest.module=vmlinuz guest.ram=256 guest.entry=linux guest.initrd=initramfs \
             guest.mmu=shadow guest.pool=2048 guest.kvm-policy guest.prev-roots=16 \
             guest.cmdline=console=ttyS0",
        )
        .unwrap();
        let lc = config(&l);
        assert!(matches!(lc.mmu, MmuMode::Shadow(s) if s.kvm_policy));
        assert!(!matches!(config(&b).mmu, MmuMode::Shadow(s) if s.kvm_policy));
        assert_eq!(lc.entry, EntryMode::Linux);
        assert_eq!(lc.initrd.as_str(), "initramfs");
        assert!(matches!(lc.mmu, MmuMode::Shadow(s) if s.pool_pages == 2048));
        assert!(matches!(lc.mmu, MmuMode::Shadow(s) if s.prev_roots == 16));
        assert!(
            matches!(config(&parse("guest.module=k guest.ram=8 guest.mmu=shadow").unwrap()).mmu,
                MmuMode::Shadow(s) if s.prev_roots == ShadowConfig::DEFAULT.prev_roots)
        );
        assert!(parse("guest.module=k guest.ram=8 guest.prev-roots=300").is_err());
        assert!(parse("guest.module=k guest.ram=8 guest.entry=pe").is_err());
        assert!(parse("guest.module=k guest.ram=8 guest.pool=many").is_err());
        assert_eq!(config(&b).vcpus, 1, "one vCPU unless told");
        let smp = parse("guest.module=k guest.ram=8 guest.vcpus=2 guest.cmdline=x").unwrap();
        assert_eq!(config(&smp).vcpus, 2);
        assert!(parse("guest.module=k guest.ram=8 guest.vcpus=two").is_err());
        assert_eq!(
            config(&b).entry,
            EntryMode::Flat64 {
                load_gpa: DEFAULT_FLAT_LOAD_GPA
            }
        );
    }

    #[test]
    fn bad_words_are_refused() {
        assert!(parse("scenario=guest").is_err());
        assert!(parse("guest.module=k guest.ram=0").is_err());
        assert!(parse("guest.module=k guest.ram=1025").is_err());
        assert!(parse("guest.module=k guest.ram=64M").is_err());
        assert!(parse("guest.module=k guest.ram=64 guest.mmu=npt").is_err());
        assert!(parse("guest.module=k guest.ram=64 guest.entry=pe").is_err());
        let long = format!(
            "guest.module=k guest.ram=64 guest.cmdline={}",
            "x".repeat(129)
        );
        assert!(parse(&long).is_err());
    }

    #[test]
    fn only_debug_exit_zero_or_power_off_succeeds() {
        assert!(describe(&VmResult::DebugExit { code: 1 }).1);
        let (s, ok) = describe(&VmResult::DebugExit { code: 7 });
        assert!(!ok);
        assert_eq!(s.as_str(), "debug-exit value 3 (QEMU status 0x7)");
        assert!(!describe(&VmResult::HypercallExit { code: 0 }).1);
        assert!(describe(&VmResult::Halted { rip: 0x1000 })
            .0
            .contains("halted at rip 0x1000"));
        assert!(describe(&VmResult::PoweredOff).1);
        let (s, ok) = describe(&VmResult::Reset { port: 0x92 });
        assert!(!ok);
        assert_eq!(
            s.as_str(),
            "reset through port 0x92, once more than the reboots allowed"
        );
    }
}
