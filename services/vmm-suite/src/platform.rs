//! Issue 12, part `platform`: `guest-acpi` walks the ACPI tables (RSDP search, RSDT, XSDT,
//! FADT, DSDT `_S5`, MADT, every checksum), checks the memory map reserves them, the PM
//! timer, fw_cfg and PCI mechanism #1, and then ends the way its command line says. Every
//! end is only reached when all its checks passed, so the result alone tells:
//! - no `reset=` word: ACPI S5 through PM1a_CNT: the VM is powered off, on EPT and on shadow
//!   paging;
//! - `reset=92`, `reset=64`, `reset=cf9`: port 0x92, the keyboard controller's 0xFE, the
//!   FADT's reset register: the VM stops with a reset through that port (`max_resets` 0:
//!   not restarted), on EPT and on shadow paging.
//!
//! Then `guest-reboot` (see its header): a reset restarts the VM. It resets itself through
//! port 0x92, the keyboard controller, 0xCF9 and a triple fault on its boots 0 to 3, checking
//! at each boot that the machine started again from the top (entry state, the image loaded
//! again, devices at power-on, paging off, RAM and CMOS kept), and powers off on boot 4. With
//! 8 resets allowed the VM is powered off and the summary counts 4 (EPT and shadow paging);
//! with 2 it stops at boot 2's reset through 0xCF9 after 2 restarts, with 3 at boot 3's
//! triple fault.

use core::fmt::Write;

use heapless::String;
use userlib::proto::vmm::{EntryMode, VmConfig, VmResult};
use userlib::suite::Suite;

use crate::{config, finished, run, shadow};

/// Boots of `guest-reboot` that reset (its fifth powers off).
const REBOOT_RESETS: u32 = 4;

/// Runs `cfg` and checks it ended with `want` after `resets` restarts.
fn restarts(t: &mut Suite, what: &str, cfg: &VmConfig, want: VmResult, resets: u32) {
    let r = run(cfg);
    let ok = finished(&r).is_some_and(|s| s.result == want && s.resets == resets);
    t.check(
        what,
        ok,
        format_args!("want {want:?} after {resets} resets, got {r:?}"),
    );
}

/// `guest-reboot` with `max_resets` resets allowed.
fn reboot_config(max_resets: u8) -> VmConfig {
    VmConfig {
        max_resets,
        ..config("reboot", "guest-reboot", 16, EntryMode::Multiboot)
    }
}

pub fn reboot_suite(t: &mut Suite) {
    let cfg = reboot_config(8);
    restarts(
        t,
        "a reset reboots the VM: four resets (0x92, 0x64, 0xCF9, triple fault), each boot from the top, then S5 (EPT)",
        &cfg,
        VmResult::PoweredOff,
        REBOOT_RESETS,
    );
    restarts(
        t,
        "a reset reboots the VM: four resets (0x92, 0x64, 0xCF9, triple fault), each boot from the top, then S5 (shadow paging)",
        &shadow(&cfg, false),
        VmResult::PoweredOff,
        REBOOT_RESETS,
    );
    restarts(
        t,
        "the reset after max_resets = 2 restarts stops the VM (0xCF9, EPT)",
        &reboot_config(2),
        VmResult::Reset { port: 0xcf9 },
        2,
    );
    restarts(
        t,
        "the triple fault after max_resets = 3 restarts stops the VM (shadow paging)",
        &shadow(&reboot_config(3), false),
        VmResult::TripleFault,
        3,
    );
}

/// Runs `cfg` and checks it ended with `want`.
fn ends_with(t: &mut Suite, what: &str, cfg: &VmConfig, want: VmResult) {
    let r = run(cfg);
    let ok = finished(&r).is_some_and(|s| s.result == want);
    t.check(what, ok, format_args!("want {want:?}, got {r:?}"));
}

pub fn platform_suite(t: &mut Suite) {
    let cfg = config("acpi", "guest-acpi", 16, EntryMode::Multiboot);
    ends_with(
        t,
        "ACPI tables, fw_cfg, PCI and the PM timer as a kernel finds them; S5 powers off (EPT)",
        &cfg,
        VmResult::PoweredOff,
    );
    ends_with(
        t,
        "ACPI tables, fw_cfg, PCI and the PM timer as a kernel finds them; S5 powers off (shadow paging)",
        &shadow(&cfg, false),
        VmResult::PoweredOff,
    );
    for (word, port, how) in [
        ("reset=92", 0x92, "port 0x92 bit 0"),
        (
            "reset=64",
            0x64,
            "the keyboard controller (0xFE to port 0x64)",
        ),
        ("reset=cf9", 0xcf9, "the FADT's reset register (0xCF9)"),
    ] {
        let mut c = cfg.clone();
        c.cmdline.clear();
        let _ = write!(c.cmdline, "umbra-test-guest {word}");
        for (mode, c) in [("EPT", c.clone()), ("shadow paging", shadow(&c, false))] {
            let mut what: String<112> = String::new();
            let _ = write!(what, "the guest resets itself through {how} ({mode})");
            ends_with(t, &what, &c, VmResult::Reset { port });
        }
    }
}
