//! The IPC protocol suite (`scenario=ipc`): every request of every protocol, payload limits,
//! malformed input, capability checks, bad arguments to every syscall, concurrent clients and
//! a server crashing mid-call. Prints `ipc: N passed, M failed`, then asks the supervisor to end
//! the scenario with the matching exit code.
//!
//! Capabilities (manifest `needs=echo`, taken by name through `userlib::wiring`): its own
//! endpoint, the supervisor's and echo's.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

mod checks;
mod concurrency;
mod hostile;
mod xstate;

use abi::CapSlot;
use core::sync::atomic::{AtomicU64, Ordering};
use userlib::proto::supervisor::{Request as SupRequest, Supervisor};
use userlib::wiring::Wiring;

userlib::entry!(suite_main);

pub const SUPERVISOR: CapSlot = userlib::wiring::SUPERVISOR;
/// Echo's endpoint, found by name at start.
static ECHO: AtomicU64 = AtomicU64::new(abi::NO_CAP);

/// Echo's endpoint.
pub fn echo() -> CapSlot {
    ECHO.load(Ordering::Relaxed)
}

pub use userlib::suite::Suite;

fn suite_main(generation: u64) {
    userlib::println!("ipc: suite starting (generation {generation})");
    match Wiring::fetch().and_then(|w| w.endpoint("echo")) {
        Ok(ep) => ECHO.store(ep, Ordering::Relaxed),
        Err(e) => userlib::println!("ipc: no echo endpoint: {e}"),
    }
    let mut t = Suite::new("ipc");
    checks::supervisor_protocol(&mut t);
    checks::echo_protocol(&mut t);
    checks::malformed(&mut t);
    checks::capabilities(&mut t);
    hostile::bad_arguments(&mut t);
    hostile::page_budget(&mut t);
    concurrency::concurrent_clients(&mut t);
    checks::crash_mid_call(&mut t);
    checks::restart_on_request(&mut t);
    xstate::threads_keep_their_registers(&mut t);
    xstate::threads_keep_their_ymm(&mut t);
    t.summary();
    let code = t.exit_code() as u32;
    let mut sup = userlib::ipc::client::<Supervisor>(SUPERVISOR);
    let r = sup.call(&SupRequest::Shutdown { code });
    userlib::println!("ipc: shutdown request returned {r:?}");
}
