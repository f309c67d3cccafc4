//! Issue 17, part `msr`: `guest-msr` checks that its MSRs are its real state (GS base,
//! SWAPGS, SYSCALL/SYSRET on its own LSTAR, SYSENTER, TSC and TSC_ADJUST writes), and that
//! CPUID promises only what is provided; on EPT and on shadow paging. Each run must also
//! have gone through RDMSR and WRMSR exits (the guest really asked the VMM).

use abi::vmx::reason;
use userlib::proto::vmm::EntryMode;
use userlib::suite::Suite;

use crate::{config, exits_of, passing_guest, passing_shadow_guest};

pub fn msr_suite(t: &mut Suite) {
    let cfg = config("msr", "guest-msr", 16, EntryMode::Multiboot);
    if let Some(s) = passing_guest(t, "guest MSRs are its real state (EPT)", &cfg) {
        let (rd, wr) = (exits_of(&s, reason::RDMSR), exits_of(&s, reason::WRMSR));
        t.check(
            "  through RDMSR and WRMSR exits",
            rd >= 10 && wr >= 10,
            format_args!("rdmsr {rd}, wrmsr {wr}"),
        );
    }
    passing_shadow_guest(
        t,
        "guest MSRs are its real state (shadow paging)",
        &cfg,
        false,
    );
}
