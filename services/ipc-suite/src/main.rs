//! The IPC protocol suite (`scenario=ipc`): every request of every protocol, payload limits,
//! malformed input, capability checks, bad arguments to every syscall, concurrent clients and
//! a server crashing mid-call. Prints `ipc: N passed, M failed`, then asks the supervisor to end
//! the scenario with the matching exit code.
//!
//! Capabilities (from the supervisor, manifest `needs=echo,supervisor`): slot 2 = own endpoint,
//! 3 = supervisor, 4 = echo, 5 = supervisor again.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

mod checks;
mod concurrency;
mod hostile;

use core::fmt;

use abi::CapSlot;
use userlib::proto::supervisor::{Request as SupRequest, Supervisor};

userlib::entry!(suite_main);

pub const SUPERVISOR: CapSlot = 3;
pub const ECHO: CapSlot = 4;

/// Counts and prints check results.
pub struct Tally {
    pub passed: u32,
    pub failed: u32,
}

impl Tally {
    pub fn check(&mut self, name: &str, ok: bool, detail: fmt::Arguments<'_>) {
        if ok {
            self.passed += 1;
            userlib::println!("ipc: ok   {name}");
        } else {
            self.failed += 1;
            userlib::println!("ipc: FAIL {name}: {detail}");
        }
    }
}

fn suite_main(generation: u64) {
    userlib::println!("ipc: suite starting (generation {generation})");
    let mut t = Tally {
        passed: 0,
        failed: 0,
    };
    checks::supervisor_protocol(&mut t);
    checks::echo_protocol(&mut t);
    checks::malformed(&mut t);
    checks::capabilities(&mut t);
    hostile::bad_arguments(&mut t);
    concurrency::concurrent_clients(&mut t);
    checks::crash_mid_call(&mut t);
    checks::restart_on_request(&mut t);
    userlib::println!("ipc: {} passed, {} failed", t.passed, t.failed);
    let code = u32::from(t.failed > 0);
    let mut sup = userlib::ipc::client::<Supervisor>(SUPERVISOR);
    let r = sup.call(&SupRequest::Shutdown { code });
    userlib::println!("ipc: shutdown request returned {r:?}");
}
