//! Issue 12, part `mmio`: `guest-mmio` drives Umbra's MMIO test device with every instruction
//! form the emulator handles (each width, sign and zero extension, flags after CMP/TEST, REP
//! MOVS/STOS between the device and RAM) and checks the results itself; then reads the device
//! with MOVDQU, which is not emulated, so the VM must stop there as an unhandled exit of the
//! basic reason the MMU service forwarded (an EPT violation, or a #PF on shadow paging). A
//! failed check ends the guest through the debug-exit port instead, which fails the check here.
//! On EPT and on shadow paging; each run must have gone through the forwarded exits.

use abi::vmx::reason;
use userlib::proto::vmm::{EntryMode, VmResult};
use userlib::suite::Suite;

use crate::{config, exits_of, finished, run, shadow};

/// Device accesses the guest makes before the last one (a lower bound: REP MOVS/STOS exit
/// once per element).
const MIN_ACCESSES: u32 = 60;

pub fn suite(t: &mut Suite) {
    let cfg = config("mmio", "guest-mmio", 16, EntryMode::Multiboot);
    for (mode, cfg, basic) in [
        ("EPT", cfg.clone(), reason::EPT_VIOLATION),
        ("shadow paging", shadow(&cfg, false), reason::EXCEPTION_NMI),
    ] {
        let r = run(&cfg);
        let s = finished(&r);
        let want = VmResult::Unhandled { reason: basic };
        t.check(
            match mode {
                "EPT" => "MMIO: every instruction form against the test device, then MOVDQU stops the VM (EPT)",
                _ => "MMIO: every instruction form against the test device, then MOVDQU stops the VM (shadow paging)",
            },
            s.is_some_and(|s| s.result == want),
            format_args!("{r:?}"),
        );
        if let Some(s) = s {
            let n = exits_of(s, basic);
            t.check(
                "  through forwarded exits",
                n >= MIN_ACCESSES,
                format_args!("{n} exits of reason {basic}"),
            );
        }
    }
}
