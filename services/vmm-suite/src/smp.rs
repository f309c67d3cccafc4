//! Two vCPUs (issue 12): `guest-smp` brings its application processor up with INIT/SIPI/SIPI
//! (a 16-bit trampoline below 1 MiB), checks each vCPU's APIC ID in CPUID and the x2APIC
//! ID register, plays 20 rounds of IPI ping-pong (each side waits in HLT for the other's
//! fixed IPI), wakes a halted AP with an IPI, and restarts the AP with INIT then SIPI (the
//! VMM stops its vCPU until the SIPI, or restarts it at once if the SIPI came first). On EPT
//! and on shadow paging, audited: there the AP's real mode runs on the VM's EPT with
//! unrestricted guest, and leaving it puts the AP on shadow tables.
//!
//! The same guest with one vCPU must fail (its AP never reports in): the checks can fail.

use abi::vmx::reason;
use userlib::proto::vmm::{EntryMode, VmResult, GUEST_FAIL};
use userlib::suite::Suite;

pub fn suite(t: &mut Suite) {
    let mut cfg = crate::config("smp", "guest-smp", 16, EntryMode::Multiboot);
    cfg.vcpus = 2;
    let ept = cfg.clone();
    let shadow = crate::shadow(&cfg, true);
    let what = [
        "2 vCPUs: AP started by INIT/SIPI, APIC IDs, IPI ping-pong, a halted vCPU woken by an IPI and by an NMI, INIT restart (EPT)",
        "2 vCPUs: the same on shadow paging, audited",
    ];
    for (what, c) in what.into_iter().zip([&ept, &shadow]) {
        let Some(s) = crate::passing_guest(t, what, c) else {
            continue;
        };
        let hlt = crate::exits_of(&s, reason::HLT);
        let deadlines = crate::exits_of(&s, reason::PREEMPTION_TIMER);
        t.check(
            "  each side waited in HLT and was woken by a kick (deadline exits)",
            hlt >= 20 && deadlines >= 20,
            format_args!(
                "{hlt} hlt, {deadlines} preemption-timer exits: {:?}",
                s.exits
            ),
        );
        if let Some(m) = s.shadow {
            // The AP's real mode ran on the EPT (violations went to the MMU service); its
            // protected mode, like the BSP's, on shadow tables.
            let violations = crate::exits_of(&s, reason::EPT_VIOLATION);
            t.check(
                "  the AP's real mode ran on the EPT, then both vCPUs on shadow tables",
                violations > 0 && m.faults > 0,
                format_args!("{violations} EPT violations, {m:?}"),
            );
        }
    }
    cfg.vcpus = 1;
    crate::stopped(
        t,
        "the same guest with 1 vCPU fails: no AP reports in",
        &cfg,
        |r| *r == VmResult::DebugExit { code: GUEST_FAIL },
    );
}
