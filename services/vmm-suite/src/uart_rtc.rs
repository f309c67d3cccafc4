//! Issue 12, part D: `guest-uart-rtc` drives COM1 as a kernel does (scratch register, divisor
//! latch, FIFO control, loopback with the modem lines, LSR data-ready/overrun, IIR for the
//! character timeout and THR empty) and reads the CMOS RTC (valid BCD after UIP clears, time
//! moving forward, the periodic flag with and without PIE, BCD and binary reads agreeing,
//! setting the time under SET and the carry into a new century); on EPT and on shadow paging.
//! Each run must have gone through I/O exits: the devices answered, not the CPU.

use abi::vmx::reason;
use userlib::proto::vmm::EntryMode;
use userlib::suite::Suite;

use crate::{config, exits_of, passing_guest, shadow};

pub fn suite(t: &mut Suite) {
    let cfg = config("uart-rtc", "guest-uart-rtc", 16, EntryMode::Multiboot);
    for (cfg, what) in [
        (
            cfg.clone(),
            "guest drives the 16550 UART and the CMOS RTC (EPT)",
        ),
        (
            shadow(&cfg, false),
            "guest drives the 16550 UART and the CMOS RTC (shadow paging)",
        ),
    ] {
        if let Some(s) = passing_guest(t, what, &cfg) {
            // Some 150 UART and RTC accesses besides the console's, and the RTC waits.
            let io = exits_of(&s, reason::IO);
            t.check(
                "  through I/O exits",
                io >= 300,
                format_args!("{io} io exits"),
            );
        }
    }
}
