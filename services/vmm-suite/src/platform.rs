//! Issue 12, part `platform`: `guest-acpi` walks the ACPI tables (RSDP search, RSDT, XSDT,
//! FADT, DSDT `_S5`, MADT, every checksum), checks the memory map reserves them, the PM
//! timer, fw_cfg and PCI mechanism #1, and then ends the way its command line says. Every
//! end is only reached when all its checks passed, so the result alone tells:
//! - no `reset=` word: ACPI S5 through PM1a_CNT: the VM is powered off, on EPT and on shadow
//!   paging;
//! - `reset=92`, `reset=64`, `reset=cf9`: port 0x92, the keyboard controller's 0xFE, the
//!   FADT's reset register: the VM stops with a reset through that port (not restarted),
//!   on EPT and on shadow paging.

use core::fmt::Write;

use heapless::String;
use userlib::proto::vmm::{EntryMode, VmConfig, VmResult};
use userlib::tally::Tally;

use crate::{config, finished, run, shadow};

/// Runs `cfg` and checks it ended with `want`.
fn ends_with(t: &mut Tally, what: &str, cfg: &VmConfig, want: VmResult) {
    let r = run(cfg);
    let ok = finished(&r).is_some_and(|s| s.result == want);
    t.check(what, ok, format_args!("want {want:?}, got {r:?}"));
}

pub fn platform_suite(t: &mut Tally) {
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
