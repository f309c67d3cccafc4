//! Interrupts reach a guest on time (issue 12): `guest-timer` programs the 8259 pair and the
//! PIT like a kernel and checks periodic and one-shot ticks, masking and port 0x61;
//! `guest-lapic` checks the local APIC through its x2APIC MSRs (the timer in its three modes,
//! self-IPIs, TPR masking); `guest-ioapic` reaches the local APIC's xAPIC page and the IOAPIC
//! by MMIO and takes the PIT's ticks through the IOAPIC. All on EPT and on shadow paging. The VM's summary must show the
//! exits that carried the ticks: deadline (preemption-timer) exits and HLTs.

use abi::vmx::reason;
use userlib::proto::vmm::EntryMode;
use userlib::suite::Suite;

pub fn suite(t: &mut Suite) {
    let cfg = crate::config("timer", "guest-timer", 16, EntryMode::Multiboot);
    for (mode, cfg) in [("EPT", cfg.clone()), ("shadow", crate::shadow(&cfg, false))] {
        let what = if mode == "EPT" {
            "PIT and 8259 interrupts reach the guest on time (EPT)"
        } else {
            "PIT and 8259 interrupts reach the guest on time (shadow paging)"
        };
        if let Some(s) = crate::passing_guest(t, what, &cfg) {
            let deadlines = crate::exits_of(&s, reason::PREEMPTION_TIMER);
            let hlt = crate::exits_of(&s, reason::HLT);
            t.check(
                "  its ticks came through deadline exits and HLT waits",
                deadlines >= 40 && hlt >= 20,
                format_args!(
                    "{deadlines} preemption-timer exits, {hlt} hlt: {:?}",
                    s.exits
                ),
            );
        }
    }
    let cfg = crate::config("lapic", "guest-lapic", 16, EntryMode::Multiboot);
    for (mode, cfg) in [("EPT", cfg.clone()), ("shadow", crate::shadow(&cfg, false))] {
        let what = if mode == "EPT" {
            "local APIC timer, self-IPIs, TPR and a self-NMI through x2APIC MSRs (EPT)"
        } else {
            "local APIC timer, self-IPIs, TPR and a self-NMI through x2APIC MSRs (shadow paging)"
        };
        crate::passing_guest(t, what, &cfg);
    }
    let cfg = crate::config("ioapic", "guest-ioapic", 16, EntryMode::Multiboot);
    for (mode, cfg) in [("EPT", cfg.clone()), ("shadow", crate::shadow(&cfg, false))] {
        let what = if mode == "EPT" {
            "xAPIC page and IOAPIC by MMIO, PIT ticks through the IOAPIC (EPT)"
        } else {
            "xAPIC page and IOAPIC by MMIO, PIT ticks through the IOAPIC (shadow paging)"
        };
        crate::passing_guest(t, what, &cfg);
    }
}
