//! Boot-loader configuration: the GRUB menu and the Limine menu (both generated from the
//! scenario table and checked in), and the per-run config disk that selects a scenario
//! without rebuilding the ISO.
//!
//! How one ISO serves every scenario: `grub.cfg` sources `(hd0)/umbra.cfg` when that file
//! exists. The harness attaches a small FAT disk image as the first hard disk holding that
//! file, which sets `umbra_cmdline`, `default=harness` and `timeout=0`; `grub.cfg` then adds a
//! `harness` entry booting the kernel with that command line. On real hardware the file is
//! absent and the menu (every scenario, default `kernel`) is shown.
//! A floppy works too but costs ~18 s of emulated floppy seeks in Bochs; a disk costs nothing.
//!
//! Every entry also loads the user services as boot modules ([`BOOT_MODULES`]): the module's
//! command line is its boot-manifest line (`name key=value...`, parsed by
//! `userlib::manifest`), which the supervisor reads to start and restart the services.

use std::fs;
use std::io;
use std::path::Path;
use std::process::Command;

use crate::emu::{cfg_disk_bytes, CFG_DISK_CYLINDERS, CFG_DISK_HEADS, CFG_DISK_SPT};
use crate::scenarios::{Scenario, DEFAULT_SCENARIO, SCENARIOS};

/// Where the kernel lives inside the ISO.
pub const KERNEL_PATH_IN_ISO: &str = "/boot/umbra-kernel";

/// A boot module every menu entry loads: a user service and its manifest line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootModule {
    /// Where the file lives inside the ISO (`make iso` copies `services/<name>` there).
    pub path: &'static str,
    /// The module's command line: the service name first, then `key=value` words.
    pub manifest: &'static str,
}

/// The boot manifest: the modules every GRUB and Limine entry loads, in this order (module 0
/// is the supervisor, the first task the kernel starts).
pub const BOOT_MODULES: &[BootModule] = &[
    BootModule {
        path: "/boot/services/supervisor",
        manifest: "supervisor",
    },
    // The first task of the `kernel` scenario, which the kernel starts in the supervisor's
    // place (the supervisor never runs there, so it never starts it).
    BootModule {
        path: "/boot/services/kernel-tests",
        manifest: "kernel-tests run=kernel",
    },
    BootModule {
        path: "/boot/services/echo",
        manifest: "echo restart=8 backoff=1",
    },
    BootModule {
        path: "/boot/services/ipc-suite",
        manifest: "ipc-suite run=ipc needs=echo",
    },
    BootModule {
        path: "/boot/services/bench-ipc",
        manifest: "bench-ipc run=bench-ipc needs=echo",
    },
    BootModule {
        path: "/boot/services/mmu-service",
        manifest: "mmu-service run=demo,vmm,bench-vmm,shadow,bench-mmu,isolation,fuzz,mmu-restart,fuzz-vm,trace,guest needs=boot restart=250 backoff=0 pages=8192",
    },
    BootModule {
        path: "/boot/services/trace",
        manifest: "trace run=demo,vmm,bench-vmm,shadow,bench-mmu,isolation,fuzz,mmu-restart,fuzz-vm,trace,guest needs=trace-ring,boot restart=20 backoff=0 pages=600",
    },
    BootModule {
        path: "/boot/services/vmm-service",
        manifest:
            "vmm-service run=demo,vmm,bench-vmm,shadow,bench-mmu,isolation,fuzz,mmu-restart,fuzz-vm,trace,guest needs=mmu-service,boot,vmx,trace pages=266240",
    },
    BootModule {
        path: "/boot/services/vmm-suite",
        manifest:
            "vmm-suite run=demo,vmm,bench-vmm,shadow,bench-mmu,isolation,mmu-restart,trace,guest needs=boot,vmm-service,mmu-service,trace",
    },
    BootModule {
        path: "/boot/services/fuzz",
        manifest: "fuzz run=fuzz,fuzz-vm needs=echo,vmm-service,mmu-service,trace,boot,spawn,vmx pages=2048",
    },
    BootModule {
        path: "/boot/guests/guest-multiboot",
        manifest: "guest-multiboot image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-msr",
        manifest: "guest-msr image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-long",
        manifest: "guest-long image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-pae",
        manifest: "guest-pae image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-fpu",
        manifest: "guest-fpu image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-uart-rtc",
        manifest: "guest-uart-rtc image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-bench.bin",
        manifest: "guest-bench image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-isolation.bin",
        manifest: "guest-isolation image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-badmem",
        manifest: "guest-badmem image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-mmio",
        manifest: "guest-mmio image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-unsupported",
        manifest: "guest-unsupported image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-triple",
        manifest: "guest-triple image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-exits",
        manifest: "guest-exits image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-timer",
        manifest: "guest-timer image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-lapic",
        manifest: "guest-lapic image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-smp",
        manifest: "guest-smp image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-ioapic",
        manifest: "guest-ioapic image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-acpi",
        manifest: "guest-acpi image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-reboot",
        manifest: "guest-reboot image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-random",
        manifest: "guest-random image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-spaces64",
        manifest: "guest-spaces64 image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-spacespae",
        manifest: "guest-spacespae image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-spaces32",
        manifest: "guest-spaces32 image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-mmubench64",
        manifest: "guest-mmubench64 image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-mmubenchpae",
        manifest: "guest-mmubenchpae image=guest",
    },
    BootModule {
        path: "/boot/guests/guest-mmubench32",
        manifest: "guest-mmubench32 image=guest",
    },
];

/// The `module2` lines of one GRUB entry, each indented by `indent`.
fn grub_modules(indent: &str) -> String {
    BOOT_MODULES
        .iter()
        .map(|m| format!("{indent}module2 {} {}\n", m.path, m.manifest))
        .collect()
}

/// The `module_path`/`module_cmdline` pairs of one Limine entry.
fn limine_modules() -> String {
    BOOT_MODULES
        .iter()
        .map(|m| {
            format!(
                "    module_path: boot():{}\n    module_cmdline: {}\n",
                m.path, m.manifest
            )
        })
        .collect()
}

/// The manifest words after a user's guest's name (its file name): an image for the VMM.
pub const USER_GUEST_MANIFEST: &str = "image=guest";
/// Where a user's guest goes in a per-run Limine ISO.
pub const USER_GUEST_DIR_IN_ISO: &str = "/boot/user";

/// A user's own guest kernel, or its initramfs, on the boot media of one run (`make run
/// GUEST=...`): the boot module `<name> image=guest` holding the file at `path`.
#[derive(Clone, Copy, Debug)]
pub struct GuestFile<'a> {
    /// The module's name: the file's name (the first word of the guest's command line).
    pub name: &'a str,
    pub path: &'a Path,
}

/// The name of the harness' GRUB script on the config disk.
pub const HARNESS_SCRIPT: &str = "umbra.cfg";

/// Seconds the menus wait before booting the default scenario.
pub const MENU_TIMEOUT_SECS: u32 = 5;

/// `tests/boot/grub.cfg`, generated from the scenario table.
pub fn grub_cfg() -> String {
    grub_cfg_for(SCENARIOS)
}

fn grub_cfg_for(scenarios: &[Scenario]) -> String {
    let mut s = String::new();
    s.push_str(
        "# Umbra boot menu for GRUB (Multiboot2). GENERATED by `make boot-configs` from the\n\
         # scenario table (tests/src/scenarios.rs) and BOOT_MODULES (tests/src/bootcfg.rs); edit\n\
         # those, not this file.\n\
         #\n\
         # Console on COM1 (115200 8N1) and the screen. One ISO serves every scenario: the test\n\
         # harness attaches a small FAT disk as the first hard disk holding umbra.cfg, which sets\n\
         # umbra_cmdline, default=harness and timeout=0. Without it this menu is shown.\n\
         serial --unit=0 --speed=115200 --word=8 --parity=no --stop=1\n\
         terminal_input serial console\n\
         terminal_output serial console\n",
    );
    s.push_str(&format!(
        "set timeout={MENU_TIMEOUT_SECS}\nset default={DEFAULT_SCENARIO}\n\n"
    ));
    s.push_str(&format!(
        "if [ -f (hd0)/{HARNESS_SCRIPT} ]; then\n  source (hd0)/{HARNESS_SCRIPT}\nfi\n\
         if [ -n \"$umbra_cmdline\" ]; then\n\
         \x20 menuentry \"Umbra (harness): $umbra_cmdline\" --id harness {{\n\
         \x20   multiboot2 {KERNEL_PATH_IN_ISO} $umbra_cmdline\n\
         {modules}\
         \x20   if [ -n \"$umbra_guest\" ]; then\n\
         \x20     module2 (hd0)/$umbra_guest $umbra_guest {USER_GUEST_MANIFEST}\n\
         \x20   fi\n\
         \x20   if [ -n \"$umbra_initrd\" ]; then\n\
         \x20     module2 (hd0)/$umbra_initrd $umbra_initrd {USER_GUEST_MANIFEST}\n\
         \x20   fi\n\
         \x20   boot\n\
         \x20 }}\n\
         fi\n",
        modules = grub_modules("    "),
    ));
    for sc in scenarios {
        s.push_str(&format!(
            "\nmenuentry \"Umbra: {name} - {title}\" --id {name} {{\n  multiboot2 {KERNEL_PATH_IN_ISO} {cmdline}\n{modules}  boot\n}}\n",
            name = sc.name,
            title = sc.title(),
            cmdline = sc.kernel_cmdline(),
            modules = grub_modules("  "),
        ));
    }
    s
}

/// `limine.cfg` (Limine >= 8 syntax, i.e. the file Limine looks for as `limine.conf`),
/// generated from the scenario table.
pub fn limine_cfg() -> String {
    limine_cfg_for(SCENARIOS)
}

fn limine_cfg_for(scenarios: &[Scenario]) -> String {
    let default_index = scenarios
        .iter()
        .position(|s| s.name == DEFAULT_SCENARIO)
        .unwrap_or(0)
        + 1;
    let mut s = String::new();
    s.push_str(
        "# Umbra boot menu for Limine (Limine protocol). GENERATED by `make boot-configs` from the\n\
         # scenario table (tests/src/scenarios.rs) and BOOT_MODULES (tests/src/bootcfg.rs); edit\n\
         # those, not this file.\n\
         #\n\
         # Syntax of Limine >= 8: `make iso` puts this file into the Limine ISO as\n\
         # /boot/limine/limine.conf, the name those versions look for.\n",
    );
    s.push_str(&format!(
        "timeout: {MENU_TIMEOUT_SECS}\nserial: yes\ndefault_entry: {default_index}\n"
    ));
    for sc in scenarios {
        s.push_str(&limine_entry(
            &format!("Umbra: {} - {}", sc.name, sc.title()),
            &sc.kernel_cmdline(),
        ));
    }
    s
}

/// One Limine menu entry booting the kernel with `cmdline` and every boot module.
fn limine_entry(title: &str, cmdline: &str) -> String {
    format!(
        "\n/{title}\n    protocol: limine\n    kernel_path: boot():{KERNEL_PATH_IN_ISO}\n    cmdline: {cmdline}\n{modules}",
        modules = limine_modules(),
    )
}

/// The Limine configuration of one harness run: no menu, one entry booting `cmdline`. (Limine
/// reads its configuration only from the boot volume, so each run gets its own ISO; see
/// `crate::limine`.)
pub fn limine_run_cfg(cmdline: &str, guest: &[GuestFile<'_>]) -> String {
    // A line break would end the option; command lines never hold one, but keep the file valid.
    let cmdline = cmdline.replace(['\n', '\r'], " ");
    let mut cfg = format!(
        "# Written by umbra-harness: boot one scenario without showing the menu.\n\
         timeout: 0\nserial: yes\n{}",
        limine_entry(&format!("Umbra (harness): {cmdline}"), &cmdline)
    );
    for g in guest {
        cfg.push_str(&format!(
            "    module_path: boot():{USER_GUEST_DIR_IN_ISO}/{name}\n    module_cmdline: {name} {USER_GUEST_MANIFEST}\n",
            name = g.name
        ));
    }
    cfg
}

/// The GRUB variables that name a user's guest files on the config disk, in the order the
/// files come (the kernel, then a Linux guest's initramfs).
pub const GUEST_FILE_VARIABLES: [&str; 2] = ["umbra_guest", "umbra_initrd"];

/// The GRUB script the harness puts on the config disk to boot `cmdline` at once.
pub fn harness_script(cmdline: &str, guest: &[&str]) -> String {
    // GRUB double-quoted strings treat `"`, `$` and `\` specially; scenario names never
    // contain them, but escape anyway so any command line arrives intact.
    let mut quoted = String::new();
    for c in cmdline.chars() {
        if matches!(c, '"' | '$' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    format!(
        "# Written by umbra-harness: boot one scenario without showing the menu.\n\
         set umbra_cmdline=\"{quoted}\"\n\
         export umbra_cmdline\n\
         set default=harness\n\
         set timeout=0\n{guest}",
        // The user's guest is on this disk under its own name (checked to be a plain name).
        guest = GUEST_FILE_VARIABLES
            .iter()
            .zip(guest)
            .map(|(var, name)| format!("set {var}=\"{name}\"\nexport {var}\n"))
            .collect::<String>()
    )
}

/// Cylinders of a config disk that holds `guest_bytes` of a user's guest besides the script
/// (with room for the FAT and directories).
pub fn cfg_disk_cylinders(guest_bytes: u64) -> u32 {
    if guest_bytes == 0 {
        return CFG_DISK_CYLINDERS;
    }
    let per_cylinder = cfg_disk_bytes(1);
    let need = guest_bytes + guest_bytes / 16 + cfg_disk_bytes(CFG_DISK_CYLINDERS);
    need.div_ceil(per_cylinder)
        .max(u64::from(CFG_DISK_CYLINDERS)) as u32
}

/// Writes the config disk: a FAT superfloppy holding [`HARNESS_SCRIPT`] (mtools).
/// With `guest`, the disk also holds the user's guest file under its name, and the script
/// has GRUB load it as a boot module (the disk is then [`cfg_disk_cylinders`] large).
pub fn write_cfg_disk(image: &Path, cmdline: &str, guest: &[GuestFile<'_>]) -> io::Result<()> {
    if guest.len() > GUEST_FILE_VARIABLES.len() {
        return Err(io::Error::other(
            "more guest files than the GRUB menu loads",
        ));
    }
    let script_path = image.with_extension("cfg");
    let names: Vec<&str> = guest.iter().map(|g| g.name).collect();
    fs::write(&script_path, harness_script(cmdline, &names))?;
    let mut guest_bytes = 0;
    for g in guest {
        guest_bytes += fs::metadata(g.path)?.len();
    }
    let cylinders = cfg_disk_cylinders(guest_bytes);
    let _ = fs::remove_file(image);
    // Bochs leaves `<image>.lock` behind when it is killed; a stale one refuses the next run.
    let _ = fs::remove_file(format!("{}.lock", image.display()));
    let file = fs::File::create(image)?;
    file.set_len(cfg_disk_bytes(cylinders))?;
    drop(file);
    run_tool(
        Command::new("mformat")
            .arg("-i")
            .arg(image)
            .args(["-t", &cylinders.to_string()])
            .args(["-h", &CFG_DISK_HEADS.to_string()])
            .args(["-s", &CFG_DISK_SPT.to_string()])
            .args(["-v", "UMBRARUN", "::"]),
    )?;
    run_tool(
        Command::new("mcopy")
            .arg("-o")
            .arg("-i")
            .arg(image)
            .arg(&script_path)
            .arg(format!("::{HARNESS_SCRIPT}")),
    )?;
    for g in guest {
        run_tool(
            Command::new("mcopy")
                .arg("-o")
                .arg("-i")
                .arg(image)
                .arg(g.path)
                .arg(format!("::{}", g.name)),
        )?;
    }
    Ok(())
}

fn run_tool(cmd: &mut Command) -> io::Result<()> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot run `{program}` ({e}); run `make setup` (package mtools)"),
        )
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`{program}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The words of a `NAME := ...` list in the repository's Makefile (continuation lines
/// joined): the Makefile's `SERVICES`, `GUESTS` and `FLAT_GUESTS` are the one definition of
/// what is built and copied into the ISO, which [`BOOT_MODULES`] and the clippy step of
/// `orchestrate` must match (checked by the tests).
#[cfg(test)]
pub(crate) fn makefile_list(name: &str) -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Makefile");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let joined = text.replace("\\\n", " ");
    let prefix = format!("{name} :=");
    let mut found = joined.lines().filter_map(|l| l.strip_prefix(&prefix));
    let words: Vec<String> = found
        .next()
        .unwrap_or_else(|| panic!("no `{prefix}` line in the Makefile"))
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert!(
        found.next().is_none(),
        "two `{prefix}` lines in the Makefile"
    );
    assert!(!words.is_empty(), "`{prefix}` is empty");
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::find;

    fn repo_file(rel: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    }

    #[test]
    fn checked_in_grub_cfg_is_up_to_date() {
        assert!(
            repo_file("tests/boot/grub.cfg") == grub_cfg(),
            "tests/boot/grub.cfg is stale: run `make boot-configs` after editing tests/src/scenarios.rs"
        );
    }

    #[test]
    fn checked_in_limine_cfg_is_up_to_date() {
        assert!(
            repo_file("limine.cfg") == limine_cfg(),
            "limine.cfg is stale: run `make boot-configs` after editing tests/src/scenarios.rs"
        );
    }

    #[test]
    fn every_scenario_has_a_menu_entry() {
        let grub = grub_cfg();
        let limine = limine_cfg();
        for sc in SCENARIOS {
            assert!(grub.contains(&format!("--id {} {{", sc.name)));
            let cmdline = sc.kernel_cmdline();
            assert!(grub.contains(&format!("multiboot2 /boot/umbra-kernel {cmdline}\n")));
            assert!(limine.contains(&format!("    cmdline: {cmdline}\n")));
        }
        assert!(grub.contains(&format!("set default={DEFAULT_SCENARIO}\n")));
        assert!(grub.contains("source (hd0)/umbra.cfg"));
    }

    #[test]
    fn every_entry_loads_every_module_with_its_manifest_line() {
        let grub = grub_cfg();
        let limine = limine_cfg();
        let entries = SCENARIOS.len();
        for m in BOOT_MODULES {
            // The scenario entries plus the harness entry.
            let line = format!("module2 {} {}\n", m.path, m.manifest);
            assert_eq!(grub.matches(&line).count(), entries + 1, "{line}");
            let pair = format!(
                "    module_path: boot():{}\n    module_cmdline: {}\n",
                m.path, m.manifest
            );
            assert_eq!(limine.matches(&pair).count(), entries, "{pair}");
        }
        // Modules follow the kernel line, in table order.
        assert!(grub.contains(
            "  module2 /boot/guests/guest-mmubench32 guest-mmubench32 image=guest\n  boot\n"
        ));
        assert!(grub.contains(
            "    multiboot2 /boot/umbra-kernel $umbra_cmdline\n    module2 /boot/services/supervisor supervisor\n"
        ));
        assert!(grub.contains(
            "  module2 /boot/services/ipc-suite ipc-suite run=ipc needs=echo\n  module2 /boot/services/bench-ipc bench-ipc run=bench-ipc needs=echo\n  module2 /boot/services/mmu-service"
        ));
    }

    #[test]
    fn boot_modules_are_services_named_by_their_manifest() {
        assert_eq!(BOOT_MODULES[0].manifest, "supervisor");
        for m in BOOT_MODULES {
            let name = m.manifest.split(' ').next().unwrap();
            if m.manifest.ends_with(" image=guest") {
                // Guests: ELF images, or flat binaries (`.bin`).
                assert!(
                    m.path == format!("/boot/guests/{name}")
                        || m.path == format!("/boot/guests/{name}.bin"),
                    "{}",
                    m.path
                );
            } else {
                assert_eq!(m.path, format!("/boot/services/{name}"));
            }
            // The kernel keeps module command lines up to abi::MODULE_CMDLINE_MAX bytes, and
            // the supervisor reads them into buffers of that size.
            assert!(
                m.manifest.len() <= abi::MODULE_CMDLINE_MAX,
                "{}",
                m.manifest
            );
            // The supervisor's own parser takes every line.
            assert!(
                userlib::manifest::parse(m.manifest).is_ok(),
                "{}: {:?}",
                m.manifest,
                userlib::manifest::parse(m.manifest)
            );
        }
    }

    /// The Makefile's `SERVICES`, `GUESTS` and `FLAT_GUESTS` are the definition: every built
    /// service and guest is a boot module (services first, in the Makefile's order, with the
    /// supervisor as module 0) and no module names a file the Makefile does not copy.
    #[test]
    fn boot_modules_match_the_makefile_lists() {
        let services = makefile_list("SERVICES");
        let in_iso: Vec<&str> = BOOT_MODULES
            .iter()
            .filter_map(|m| m.path.strip_prefix("/boot/services/"))
            .collect();
        assert_eq!(
            in_iso, services,
            "BOOT_MODULES services vs Makefile SERVICES"
        );
        assert_eq!(BOOT_MODULES[0].path, "/boot/services/supervisor");
        assert!(BOOT_MODULES[..services.len()]
            .iter()
            .all(|m| m.path.starts_with("/boot/services/")));
        let mut guests: Vec<String> = makefile_list("GUESTS");
        guests.extend(
            makefile_list("FLAT_GUESTS")
                .iter()
                .map(|g| format!("{g}.bin")),
        );
        guests.sort();
        let mut modules: Vec<&str> = BOOT_MODULES
            .iter()
            .filter_map(|m| m.path.strip_prefix("/boot/guests/"))
            .collect();
        modules.sort();
        assert_eq!(
            modules, guests,
            "BOOT_MODULES guests vs Makefile GUESTS/FLAT_GUESTS"
        );
        assert_eq!(in_iso.len() + modules.len(), BOOT_MODULES.len());
    }

    #[test]
    fn limine_default_entry_is_one_based() {
        let default = find(DEFAULT_SCENARIO).unwrap();
        let cfg = limine_cfg_for(&[*find("fault-selftest").unwrap(), *default]);
        assert!(cfg.contains("default_entry: 2\n"));
        assert!(cfg.contains(&format!("/Umbra: {DEFAULT_SCENARIO} - ")));
        assert!(cfg.contains("    kernel_path: boot():/boot/umbra-kernel\n"));
        assert!(cfg.contains("    protocol: limine\n"));
    }

    #[test]
    fn harness_script_selects_the_harness_entry() {
        let s = harness_script("scenario=kernel", &[]);
        assert!(s.contains("set umbra_cmdline=\"scenario=kernel\"\n"));
        assert!(s.contains("export umbra_cmdline\n"));
        assert!(s.contains("set default=harness\n"));
        assert!(s.contains("set timeout=0\n"));
        assert!(!s.contains("umbra_guest"));
        let g = harness_script("scenario=guest", &["kernel.elf"]);
        assert!(g.contains("set umbra_guest=\"kernel.elf\"\nexport umbra_guest\n"));
        assert!(!g.contains("umbra_initrd"));
        let l = harness_script("scenario=guest", &["vmlinuz", "initramfs"]);
        assert!(l.contains("set umbra_initrd=\"initramfs\"\nexport umbra_initrd\n"));
        assert!(harness_script("a=\"$x\\\"", &[]).contains(r#"set umbra_cmdline="a=\"\$x\\\"""#));
    }
}
