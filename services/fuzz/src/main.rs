//! Umbra's on-target fuzzer (`scenario=fuzz`).
//!
//! 1. Messages: random and mutated valid requests of every protocol to every service
//!    (supervisor, echo, VMM, MMU, trace; [`messages`]). Each must be answered with an error or a
//!    valid reply; a service that dies (its caller sees `ServerRestarted`) fails the run.
//! 2. Syscalls: random syscalls with random arguments from a hostile child task
//!    ([`syscalls`], [`child`]); a call that ends or blocks the child ends only the child.
//! 3. Checks: every service still answers and nothing another task owns changed
//!    ([`checks`]).
//!
//! Scenario `fuzz-vm` (the same service, chosen by `scenario=fuzz-vm` on the command line):
//! a hostile exit handler answering the exits of the fuzzer's own VMs ([`exitfuzz`]), then
//! guests running random code and random page tables through the VMM service
//! ([`guestfuzz`]), then the same checks.
//!
//! The kernel command line sets the run: `fuzz.seed=S` and `fuzz.count=N` (N messages and
//! N/10 syscalls; defaults [`DEFAULT_SEED`] and [`DEFAULT_COUNT`], the short run of
//! `make test`; `make fuzz SEED=.. COUNT=..` sets both). Prints the counts, then
//! `fuzz: N passed, M failed`, and asks the supervisor to end the scenario.
//!
//! Capabilities (manifest `needs=echo,vmm-service,mmu-service,trace,boot,spawn,vmx`, taken by
//! name and kind at start through `userlib::wiring`): the supervisor's, echo's, the VMM
//! service's, the MMU service's and the trace service's endpoints, boot (the command line and the fuzzer's own module) and spawn
//! (the hostile child).
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

mod checks;
mod child;
mod counts;
mod exitfuzz;
mod guestfuzz;
mod messages;
mod rng;
mod syscalls;

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use abi::{CapSlot, Rights};
use heapless::Vec;
use userlib::proto::supervisor::{Request as SupRequest, ServiceName, Supervisor, MAX_SERVICES};
use userlib::sys::{self, Mapping, ThreadStack};
use userlib::wiring::{Wiring, WiringError};

userlib::entry!(fuzz_main);

pub const SUPERVISOR: CapSlot = userlib::wiring::SUPERVISOR;

/// The capabilities the manifest names, found by name and kind at start.
struct Caps {
    echo: CapSlot,
    vmm: CapSlot,
    mmu: CapSlot,
    trace: CapSlot,
    boot: CapSlot,
    spawn: CapSlot,
    vmx: CapSlot,
}

static CAPS: spin::Once<Caps> = spin::Once::new();

fn cap(pick: fn(&Caps) -> CapSlot) -> CapSlot {
    CAPS.get().map_or(abi::NO_CAP, pick)
}

pub fn echo() -> CapSlot {
    cap(|c| c.echo)
}

pub fn vmm() -> CapSlot {
    cap(|c| c.vmm)
}

pub fn mmu() -> CapSlot {
    cap(|c| c.mmu)
}

pub fn trace() -> CapSlot {
    cap(|c| c.trace)
}

fn boot() -> CapSlot {
    cap(|c| c.boot)
}

pub fn spawn() -> CapSlot {
    cap(|c| c.spawn)
}

pub fn vmx() -> CapSlot {
    cap(|c| c.vmx)
}
/// Start-argument bit of the hostile child (the supervisor starts the fuzzer with its
/// generation, a small number).
pub const CHILD_ARG: u64 = 1 << 63;
/// The short run of `make test`.
pub const DEFAULT_SEED: u64 = 1;
pub const DEFAULT_COUNT: u64 = 20_000;
/// Scenario `fuzz-vm`: `fuzz.count=N` is N vCPU runs against the hostile exit handler and
/// N / [`RUNS_PER_GUEST`] random guests through the VMM; the short run of `make test`.
pub const VM_DEFAULT_COUNT: u64 = 300;
pub const RUNS_PER_GUEST: u64 = 2;
/// Messages per syscall.
pub const MESSAGES_PER_SYSCALL: u64 = 10;
/// A service that does not answer one message for this long hangs (a failure).
const HANG_SECS: u64 = 30;
/// Where the canary memory object is mapped.
const CANARY_VA: u64 = 0x7000_0000;

/// Bumped by every message sent and every report received; read by the watchdog.
pub static PROGRESS: AtomicU64 = AtomicU64::new(0);
/// Running scenario `fuzz-vm`.
static VM_SCENARIO: AtomicBool = AtomicBool::new(false);
static PHASE: AtomicU8 = AtomicU8::new(PHASE_SETUP);
const PHASE_SETUP: u8 = 0;
const PHASE_MESSAGES: u8 = 1;
const PHASE_SYSCALLS: u8 = 2;
const PHASE_VM: u8 = 3;
/// The watchdog's capability to the child endpoint.
static WATCHDOG_EP: AtomicU64 = AtomicU64::new(abi::NO_CAP);
static WATCHDOG_STACK: ThreadStack<16384> = ThreadStack::new();

pub use userlib::suite::Suite;

fn fuzz_main(arg: u64) {
    if arg & CHILD_ARG != 0 {
        child::run();
    }
    let mut t = Suite::new("fuzz");
    if let Err(why) = fuzz(&mut t) {
        t.check("setup", false, format_args!("{why}"));
    }
    // The verdict line the harness reads names the scenario.
    let scenario = if VM_SCENARIO.load(Ordering::Relaxed) {
        abi::scenario::FUZZ_VM
    } else {
        abi::scenario::FUZZ
    };
    t.summary_as(scenario);
    let code = t.exit_code() as u32;
    let r = userlib::ipc::client::<Supervisor>(SUPERVISOR).call(&SupRequest::Shutdown { code });
    userlib::println!("fuzz: shutdown request returned {r:?}");
}

/// Finds the capabilities the manifest promises, by name and kind.
fn check_caps() -> Result<(), &'static str> {
    let found = (|| {
        let w = Wiring::fetch()?;
        Ok::<_, WiringError>(Caps {
            echo: w.endpoint("echo")?,
            vmm: w.endpoint("vmm-service")?,
            mmu: w.endpoint("mmu-service")?,
            trace: w.endpoint("trace")?,
            boot: w.boot()?,
            spawn: w.spawn()?,
            vmx: w.vmx()?,
        })
    })();
    match found {
        Ok(caps) => {
            CAPS.call_once(|| caps);
            Ok(())
        }
        Err(_) => Err("a capability is missing or of another kind (manifest needs=?)"),
    }
}

/// A number in decimal or `0x` hexadecimal.
fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The run the kernel command line asks for.
struct Config {
    seed: u64,
    /// `None`: the default of the scenario.
    count: Option<u64>,
    /// Scenario `fuzz-vm`.
    vm: bool,
    /// `fuzz.guest=HEX`: run only this guest seed (in each kind) instead of random ones.
    guest: Option<u32>,
}

/// `fuzz.seed`, `fuzz.count` and the scenario from the kernel command line.
fn config() -> Result<Config, &'static str> {
    let mut line = [0u8; 256];
    let n = sys::kernel_cmdline(boot(), &mut line).map_err(|_| "no kernel command line")?;
    let text = core::str::from_utf8(&line[..n.min(line.len())]).unwrap_or("");
    let value = |key: &str| {
        text.split_ascii_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    };
    let seed = match value("fuzz.seed") {
        Some(v) => parse_number(v).ok_or("fuzz.seed is not a number")?,
        None => DEFAULT_SEED,
    };
    let count = match value("fuzz.count") {
        Some(v) => Some(parse_number(v).ok_or("fuzz.count is not a number")?),
        None => None,
    };
    let vm = value("scenario") == Some(abi::scenario::FUZZ_VM);
    let guest = match value("fuzz.guest") {
        Some(v) => Some(u32::from_str_radix(v, 16).map_err(|_| "fuzz.guest is not hex")?),
        None => None,
    };
    Ok(Config {
        seed,
        count,
        vm,
        guest,
    })
}

/// The index of this service's own boot module (the child's image).
fn own_module() -> Result<u64, &'static str> {
    let mut buf = [0u8; abi::MODULE_CMDLINE_MAX];
    let count = sys::module_info(boot(), 0, &mut buf)
        .map_err(|_| "no boot modules")?
        .count;
    for i in 0..count {
        let info = sys::module_info(boot(), i, &mut buf).map_err(|_| "module info")?;
        let text = core::str::from_utf8(&buf[..info.name_len.min(buf.len())]).unwrap_or("");
        if text.split_ascii_whitespace().next() == Some("fuzz") {
            return Ok(i);
        }
    }
    Err("no boot module named fuzz")
}

fn fuzz(t: &mut Suite) -> Result<(), &'static str> {
    check_caps()?;
    let cfg = config()?;
    if cfg.vm {
        VM_SCENARIO.store(true, Ordering::Relaxed);
        return fuzz_vm(
            cfg.seed,
            cfg.count.unwrap_or(VM_DEFAULT_COUNT),
            cfg.guest,
            t,
        );
    }
    let (seed, count) = (cfg.seed, cfg.count.unwrap_or(DEFAULT_COUNT));
    let syscalls = count / MESSAGES_PER_SYSCALL;
    userlib::println!("fuzz: seed {seed}, count {count}: {count} messages, {syscalls} syscalls");
    let module = own_module()?;
    let mut rng = rng::Rng::new(seed);

    // A memory object other tasks get read-only: its bytes must not change.
    let canary = sys::mem_alloc(1).map_err(|_| "no memory")?;
    let mut canary_map = Mapping::new(canary, CANARY_VA).map_err(|_| "cannot map the canary")?;
    rng.fill(canary_map.bytes_mut());
    let mut pattern = [0u8; 4096];
    pattern.copy_from_slice(canary_map.bytes());

    let child_ep = sys::endpoint_create().map_err(|_| "no endpoint")?;
    let canary_ro = sys::cap_copy(canary, Rights::READ, 0).map_err(|_| "cap copy")?;
    let grantables = [
        canary_ro,
        sys::notification_create().map_err(|_| "no notification")?,
        sys::cap_copy(child_ep, Rights::SEND, 0xbad).map_err(|_| "cap copy")?,
    ];
    let before = checks::snapshot()?;
    checks::mmu_refuses_foreign_vm(canary_ro, t);
    let mut services: Vec<ServiceName, MAX_SERVICES> = Vec::new();
    for s in &before.services {
        let _ = services.push(s.name.clone());
    }

    let watchdog =
        sys::cap_copy(child_ep, Rights::SEND, syscalls::WATCHDOG_BADGE).map_err(|_| "cap copy")?;
    WATCHDOG_EP.store(watchdog, Ordering::Relaxed);
    let stack = WATCHDOG_STACK.take().ok_or("watchdog stack")?;
    sys::thread_spawn(watchdog_main, stack, 0, 10).map_err(|_| "no watchdog thread")?;

    PHASE.store(PHASE_MESSAGES, Ordering::Relaxed);
    let mut m = messages::MessageFuzz {
        rng: &mut rng,
        services: &services,
        grantables: &grantables,
        sent: 0,
        filtered: 0,
        replies: counts::Counts::new(),
        kernel: counts::Counts::new(),
        failures: 0,
    };
    m.run(count);
    userlib::println!(
        "fuzz: messages sent: {} ({} deliberate requests drawn and replaced)",
        m.sent,
        m.filtered
    );
    m.replies.print("replies by kind");
    m.kernel.print("kernel errors of the calls");
    let (sent, message_failures) = (m.sent, m.failures);

    PHASE.store(PHASE_SYSCALLS, Ordering::Relaxed);
    let mut s = syscalls::SyscallFuzz {
        rng: &mut rng,
        module,
        child_ep,
        canary: canary_ro,
        issued: 0,
        results: counts::Counts::new(),
        ends: counts::Counts::new(),
        children: 0,
        failures: 0,
    };
    let run = s.run(syscalls);
    PHASE.store(PHASE_SETUP, Ordering::Relaxed);
    userlib::println!(
        "fuzz: syscalls issued: {} by {} hostile children",
        s.issued,
        s.children
    );
    s.results.print("syscall results");
    s.ends.print("children ended by");

    t.check(
        "messages: every service answered every message",
        message_failures == 0 && sent == count,
        format_args!("{message_failures} failure(s), {sent} of {count} sent"),
    );
    t.check(
        "syscalls: every call returned a defined result or ended the child",
        run.is_ok() && s.failures == 0 && s.issued == syscalls,
        format_args!(
            "{run:?}, {} failure(s), {} of {syscalls} issued",
            s.failures, s.issued
        ),
    );
    checks::stray_grants(canary_ro);
    let answering = checks::verify(&before, canary_ro, &pattern, t);
    t.check(
        "canary memory (granted read-only to the services and the children) unchanged",
        canary_map.bytes() == pattern,
        format_args!("its bytes changed"),
    );
    userlib::println!(
        "fuzz: services still answering: {answering} of 5 (supervisor, echo, vmm-service, mmu-service, trace)"
    );
    userlib::println!(
        "fuzz: seed {seed}, count {count}: {sent} messages sent, {} syscalls issued",
        s.issued
    );
    Ok(())
}

/// Scenario `fuzz-vm`: `runs` vCPU runs against a hostile exit handler, `runs /
/// RUNS_PER_GUEST` random guests through the VMM, then every service must still answer as
/// before and no VM object may have leaked.
fn fuzz_vm(seed: u64, runs: u64, guest: Option<u32>, t: &mut Suite) -> Result<(), &'static str> {
    let guests = runs / RUNS_PER_GUEST;
    userlib::println!(
        "fuzz: seed {seed}, count {runs}: {runs} hostile-handler runs, {guests} random guests"
    );
    let canary = sys::mem_alloc(1).map_err(|_| "no memory")?;
    let mut canary_map = Mapping::new(canary, CANARY_VA).map_err(|_| "cannot map the canary")?;
    let rng = rng::Rng::new(seed);
    rng.fill(canary_map.bytes_mut());
    let mut pattern = [0u8; 4096];
    pattern.copy_from_slice(canary_map.bytes());
    // The handler's endpoint exists before the snapshot: it is not a leak.
    let ep = sys::endpoint_create().map_err(|_| "no endpoint")?;
    let before = checks::snapshot()?;
    let vms_before = checks::creatable_vms();

    let stack = WATCHDOG_STACK.take().ok_or("watchdog stack")?;
    sys::thread_spawn(watchdog_main, stack, 0, 10).map_err(|_| "no watchdog thread")?;
    PHASE.store(PHASE_VM, Ordering::Relaxed);
    exitfuzz::run(seed, runs, ep, t)?;
    guestfuzz::run(seed, guests, guest, t);
    PHASE.store(PHASE_SETUP, Ordering::Relaxed);

    let answering = checks::verify(&before, canary, &pattern, t);
    let vms_after = checks::creatable_vms();
    t.check(
        "no VM or vCPU leaked",
        vms_after == vms_before,
        format_args!("creatable (VMs, vCPUs) {vms_before:?} -> {vms_after:?}"),
    );
    t.check(
        "canary memory unchanged",
        canary_map.bytes() == pattern,
        format_args!("its bytes changed"),
    );
    userlib::println!(
        "fuzz: services still answering: {answering} of 5 (supervisor, echo, vmm-service, mmu-service, trace)"
    );
    userlib::println!(
        "fuzz: seed {seed}, count {runs}: {runs} hostile-handler runs, {guests} random guests"
    );
    Ok(())
}

/// Watches [`PROGRESS`]: while messages are sent, a service that does not answer for
/// [`HANG_SECS`] fails the run; while syscalls run, a child that makes no progress for a
/// few ticks is blocked, and the fuzzer is told to replace it.
extern "C" fn watchdog_main(_: u64) -> ! {
    let hz = sys::clock().map(|(_, hz)| hz).unwrap_or(100).max(1);
    let period = (hz / 20).max(2);
    let mut last = PROGRESS.load(Ordering::Relaxed);
    let mut stalled = 0;
    loop {
        let _ = sys::sleep(period);
        let now = PROGRESS.load(Ordering::Relaxed);
        if now != last {
            (last, stalled) = (now, 0);
            continue;
        }
        stalled += period;
        match PHASE.load(Ordering::Relaxed) {
            PHASE_MESSAGES | PHASE_VM if stalled >= HANG_SECS * hz => {
                userlib::println!(
                    "fuzz: FAIL a service did not answer message {now} for {HANG_SECS} s (hang)"
                );
                let scenario = if VM_SCENARIO.load(Ordering::Relaxed) {
                    abi::scenario::FUZZ_VM
                } else {
                    abi::scenario::FUZZ
                };
                userlib::println!("{scenario}: 0 passed, 1 failed");
                let _ =
                    userlib::ipc::client::<Supervisor>(SUPERVISOR).call(&SupRequest::Shutdown {
                        code: abi::ExitCode::Failure as u32,
                    });
            }
            PHASE_SYSCALLS => {
                let ep = WATCHDOG_EP.load(Ordering::Relaxed);
                let _ = sys::send(ep, &now.to_le_bytes(), syscalls::WATCHDOG_LABEL, None);
            }
            _ => {}
        }
    }
}
