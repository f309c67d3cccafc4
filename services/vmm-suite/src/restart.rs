//! `mmu-restart`: the MMU service is crashed 100 times in each MMU mode while guests run a
//! workload that checks its own memory and switches address spaces (`guest-spaces64`: 2,000
//! CR3 switches, checksums of four spaces, page-table edits). Every guest must pass; the
//! service must come back each time and serve the same VMs. Then the give-up: the service is
//! made to crash at every exit until the supervisor stops restarting it, and the running VM
//! must stop with a report that the MMU service is gone.

use abi::CapSlot;
use core::sync::atomic::{AtomicU64, Ordering};
use userlib::proto::mmu::{self, Mmu};
use userlib::proto::supervisor::{self, ServiceState, Supervisor};
use userlib::proto::vmm::{EntryMode, Response, VmResult, GUEST_PASS};

use crate::{config, finished, run, shadow, Suite, SUPERVISOR};

/// The MMU service's endpoint (manifest `needs=mmu-service`), found by name at start.
pub static MMU: AtomicU64 = AtomicU64::new(abi::NO_CAP);
/// Crashes injected per MMU mode.
const CRASHES: u32 = 100;
/// Guest runs per mode at most (each EPT run has a few MMU exits, a shadow run thousands).
const MAX_RUNS: u32 = 120;
const SEED: u64 = 0x5eed;

fn mmu_ep() -> CapSlot {
    MMU.load(Ordering::Relaxed)
}

/// Sets the MMU service's fault-injection plan; the error is what it answered instead.
fn inject(every: u32, limit: u32, spare_first: bool) -> Result<(), heapless::String<96>> {
    let r = userlib::ipc::client::<Mmu>(mmu_ep()).call(&mmu::Request::InjectFaults {
        every,
        limit,
        spare_first,
        seed: SEED,
    });
    let mut why = heapless::String::new();
    match r {
        Ok(mmu::Response::Injecting) => return Ok(()),
        Ok(other) => core::fmt::Write::write_fmt(&mut why, format_args!("{other:?}")),
        Err(e) => core::fmt::Write::write_fmt(&mut why, format_args!("{e:?}")),
    }
    .ok();
    Err(why)
}

/// (crashes, phase crashes, re-sent, recoveries, measured, median, max).
fn recovery() -> Option<(u32, u32, u32, u32, u32, u64, u64)> {
    match userlib::ipc::client::<Mmu>(mmu_ep()).call(&mmu::Request::Recovery) {
        Ok(mmu::Response::Recovery {
            crashes,
            phase_crashes,
            resent,
            recoveries,
            measured,
            median,
            max,
        }) => Some((
            crashes,
            phase_crashes,
            resent,
            recoveries,
            measured,
            median,
            max,
        )),
        _ => None,
    }
}

fn mmu_service_status() -> Option<supervisor::ServiceInfo> {
    let mut name = supervisor::ServiceName::new();
    let _ = name.push_str("mmu-service");
    match userlib::ipc::client::<Supervisor>(SUPERVISOR)
        .call(&supervisor::Request::ServiceStatus { name })
    {
        Ok(supervisor::Response::Status(info)) => Some(info),
        _ => None,
    }
}

pub fn mmu_restart_suite(t: &mut Suite) {
    let restarts_before = mmu_service_status().map_or(0, |s| s.restarts);
    let base = config("restart", "guest-spaces64", 16, EntryMode::Multiboot);
    // EPT: only EPT violations reach the MMU service (a few per run), so it crashes at every
    // exit but the first of each new instance (the re-sent one, which must get through).
    // Shadow: every #PF, CR3 load and INVLPG does, so about one in eight.
    for (mode, cfg, every) in [
        ("ept", base.clone(), 1),
        ("shadow", shadow(&base, false), 8),
    ] {
        if let Err(r) = inject(every, CRASHES, true) {
            t.check(
                "the MMU service takes the fault-injection plan",
                false,
                format_args!("{r:?}"),
            );
            return;
        }
        let (mut runs, mut failed) = (0u32, 0u32);
        let mut phase = 0;
        while phase < CRASHES && runs < MAX_RUNS {
            let r = run(&cfg);
            runs += 1;
            let passed =
                finished(&r).is_some_and(|s| s.result == VmResult::DebugExit { code: GUEST_PASS });
            if !passed {
                failed += 1;
                userlib::println!("mmu-restart: {mode}: run {runs} did not pass: {r:?}");
            }
            phase = recovery().map_or(0, |r| r.1);
        }
        let (crashes, _, resent, recoveries, ..) = recovery().unwrap_or_default();
        userlib::println!(
            "mmu-restart: {mode}: crashes injected {phase}, guest runs {runs}, guest-visible errors {failed} (all modes so far: {crashes} crashes, {resent} exits re-sent, {recoveries} recoveries)"
        );
        t.check(
            "100 crashes injected under running guests",
            phase == CRASHES,
            format_args!("{mode}: {phase} crashes in {runs} runs"),
        );
        t.check(
            "  no guest noticed: every run passed",
            failed == 0 && runs > 0,
            format_args!("{mode}: {failed} of {runs} runs failed"),
        );
    }
    let Some((crashes, _, resent, recoveries, measured, median, max)) = recovery() else {
        t.check(
            "the MMU service answers",
            false,
            format_args!("no Recovery answer"),
        );
        return;
    };
    let restarts = mmu_service_status().map_or(0, |s| s.restarts) - restarts_before;
    userlib::println!(
        "mmu-restart: crashes injected {crashes}, restarts {restarts}, exits re-sent {resent}, recoveries {recoveries}"
    );
    userlib::println!(
        "mmu-restart: restart until the guest runs again: median {median} cycles, max {max} cycles ({measured} restarts measured)"
    );
    userlib::println!(
        "mmu-restart: csv crashes,restarts,resent,median_cycles,max_cycles\nmmu-restart: csv {crashes},{restarts},{resent},{median},{max}"
    );
    t.check(
        "the supervisor restarted the MMU service once per crash",
        restarts == crashes && crashes == 2 * CRASHES,
        format_args!("{restarts} restarts, {crashes} crashes"),
    );
    t.check(
        "each new instance got the exit its predecessor left unanswered, and recovered its VM",
        resent == crashes && recoveries == crashes,
        format_args!("{resent} re-sent, {recoveries} recoveries, {crashes} crashes"),
    );
    t.check(
        "every restart measured",
        measured == crashes,
        format_args!("{measured} of {crashes}"),
    );
    give_up(t);
}

/// The service crashes at every exit, the re-sent one too, until the supervisor gives up:
/// the VM stops, reported as the MMU service gone, and nothing hangs.
fn give_up(t: &mut Suite) {
    if let Err(r) = inject(1, u32::MAX, false) {
        t.check("give-up: injection", false, format_args!("{r:?}"));
        return;
    }
    let cfg = config("give-up", "guest-spaces64", 16, EntryMode::Multiboot);
    let r = run(&cfg);
    let gone = matches!(
        finished(&r).map(|s| &s.result),
        Some(VmResult::MmuGone { .. })
    );
    t.check(
        "give-up: the VM stops with the MMU service reported gone",
        gone,
        format_args!("{r:?}"),
    );
    let state = mmu_service_status().map(|s| s.state);
    t.check(
        "  the supervisor gave up on the MMU service",
        state == Some(ServiceState::GaveUp),
        format_args!("{state:?}"),
    );
    // A new VM is refused at once (the MMU service's endpoint is closed), not hung.
    let r = run(&cfg);
    t.check(
        "  a new VM is refused, not hung",
        !matches!(r, Ok(Response::Finished(ref s)) if s.result == VmResult::DebugExit { code: GUEST_PASS }),
        format_args!("{r:?}"),
    );
}
