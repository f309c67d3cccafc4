//! Issue 17, part `exits`: `guest-exits` checks, on EPT and on shadow paging, that each
//! instruction exit a kernel may cause has its architectural result (faults through the
//! guest's own IDT with the right error code and RF, values back, no stop), and that the exits
//! reached the VMM (counted by reason).

use abi::vmx::reason;
use userlib::proto::vmm::EntryMode;
use userlib::suite::Suite;

use crate::{config, exits_of, passing_guest, shadow};

/// The exits `guest-exits` causes whatever the CPU offers, four times each (so that they are
/// among the busiest reasons the summary lists).
const ALWAYS: [(&str, u32); 4] = [
    ("invd", reason::INVD),
    ("wbinvd", reason::WBINVD),
    ("rdpmc", reason::RDPMC),
    ("vmxon", 27),
];

pub fn suite(t: &mut Suite) {
    let cfg = config("exits", "guest-exits", 16, EntryMode::Multiboot);
    for (mode, cfg) in [("ept", cfg.clone()), ("shadow", shadow(&cfg, false))] {
        let what = if mode == "ept" {
            "instruction exits handled like hardware (guest-exits)"
        } else {
            "instruction exits handled like hardware (guest-exits) on shadow paging"
        };
        let Some(s) = passing_guest(t, what, &cfg) else {
            continue;
        };
        let missing: heapless::Vec<&str, 4> = ALWAYS
            .iter()
            .filter(|(_, r)| exits_of(&s, *r) == 0)
            .map(|(n, _)| *n)
            .collect();
        t.check(
            "  its instruction exits reached the VMM",
            missing.is_empty(),
            format_args!("{mode}: no exit counted for {missing:?}: {:?}", s.exits),
        );
    }
}
