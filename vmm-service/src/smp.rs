//! The application processors of a VM with more than one vCPU.
//!
//! Design: an application processor (AP) stays out of the guest until its SIPI. The kernel
//! does not enter a vCPU in the wait-for-SIPI activity state: there, neither an external
//! interrupt nor the VMX-preemption timer makes it exit (SDM 26.1 and 26.5.1), and the host's
//! only CPU would stay in the guest. So an AP's vCPU is simply not run: its runner thread
//! waits on a notification. When the AP's local APIC has received INIT and SIPI
//! ([`vmm_service::devices::lapic::Lapic::take_sipi`]), the exit that sent the SIPI writes the
//! AP's state (real mode at CS = vector << 8, [`vmm_service::loader::entry::sipi_entry`])
//! and wakes the runner, which runs the vCPU (`VcpuRun`) until it stops. An INIT to a running
//! AP stops its vCPU at its next exit (a [`stop_code::PARKED`] stop: the runner waits
//! again), unless the SIPI has come too, then it restarts at once.
//!
//! Waking a vCPU: an interrupt for another vCPU (an IPI, an IOAPIC message) goes into that
//! vCPU's local APIC, and its `field::DEADLINE` is set to 1 through `VcpuState` (a kick).
//! One host CPU: the target is not in the guest while the handler runs, so its next entry
//! exits at once (a passed deadline makes the preemption timer 0) with a preemption-timer
//! exit, and that exit delivers the interrupt ([`vmm_service::irq`]).
//!
//! The end: the first vCPU to stop ends the VM. Every other running vCPU is kicked, and each
//! exit of a VM that is ending stops its vCPU ([`stop_code::VM_ENDED`] when the model has no
//! result of its own); the main thread waits until every runner is back.

use abi::vmx::{field, ExitReply};
use abi::{CapSlot, Error};
use core::sync::atomic::{AtomicUsize, Ordering};
use spin::Once;
use userlib::sys::{self, ThreadStack};
use vmm_service::loader::entry::sipi_entry;
use vmm_service::vm::stop_code;

use crate::exit_thread::{lock_run, Run};

/// Runner threads: one per application processor (vCPU index n is served by runner n - 1).
const RUNNERS: usize = vmm_service::irq::MAX_VCPUS - 1;

/// The notifications: each runner's (it is woken to run its vCPU) and the main thread's (a
/// runner's vCPU stopped).
struct Signals {
    runners: [CapSlot; RUNNERS],
    done: CapSlot,
}

static SIGNALS: Once<Signals> = Once::new();
/// Runner threads started.
static STARTED: AtomicUsize = AtomicUsize::new(0);
static STACKS: [ThreadStack<8192>; RUNNERS] = [const { ThreadStack::new() }; RUNNERS];

/// Creates the notifications and starts the runner threads (once; an error leaves the
/// VMM able to run single-vCPU VMs only).
pub fn start() -> Result<(), Error> {
    let mut runners = [abi::NO_CAP; RUNNERS];
    for r in runners.iter_mut() {
        *r = sys::notification_create()?;
    }
    let done = sys::notification_create()?;
    SIGNALS.call_once(|| Signals { runners, done });
    for (i, stack) in STACKS.iter().enumerate() {
        let stack = stack.take().ok_or(Error::NoMemory)?;
        sys::thread_spawn(runner, stack, i as u64 + 1, 10)?;
        STARTED.store(i + 1, Ordering::Release);
    }
    Ok(())
}

/// The most vCPUs a VM can have: the bootstrap processor and one per runner thread.
pub fn max_vcpus() -> usize {
    1 + STARTED.load(Ordering::Acquire)
}

extern "C" fn runner(index: u64) -> ! {
    let index = index as usize;
    let Some(signals) = SIGNALS.get() else {
        sys::thread_exit()
    };
    let me = signals.runners[index - 1];
    loop {
        if sys::wait(me).is_err() {
            continue;
        }
        let vcpu = lock_run()
            .as_ref()
            .filter(|r| r.running & (1 << index) != 0)
            .and_then(|r| r.vcpus.get(index).copied());
        let Some(vcpu) = vcpu else {
            continue;
        };
        let stop = sys::vcpu_run(vcpu);
        if let Some(run) = lock_run().as_mut() {
            let parked = matches!(stop, Ok(s) if is_parked(&s));
            if !parked {
                // (A parked vCPU was taken off `running` by the exit that parked it: a SIPI
                // may have started it again since.)
                run.running &= !(1 << index);
            }
            let ended = matches!(stop, Ok(s) if kind_is(&s, stop_code::VM_ENDED));
            if !parked && !ended && run.ap_stop.is_none() {
                // Its own stop (the first): what the VM's result reports if it ended it.
                run.ap_stop = Some((index, stop));
            }
            if !parked && !run.ending {
                end_run(run);
            }
        }
        let _ = sys::signal(signals.done, 1 << index);
    }
}

/// A vCPU stopped because INIT put its AP back in wait-for-SIPI.
fn is_parked(s: &sys::VcpuStop) -> bool {
    kind_is(s, stop_code::PARKED)
}

/// Whether the VMM's reply stopped the vCPU with a stop code of `kind`.
pub fn kind_is(s: &sys::VcpuStop, kind: u64) -> bool {
    s.stop & abi::vmx::stop::KIND_MASK == abi::vmx::stop::HANDLER
        && s.stop & stop_code::KIND_MASK == kind
}

/// Marks the VM as ending and kicks every running vCPU, so that its next exit stops it.
fn end_run(run: &mut Run) {
    run.ending = true;
    for i in 0..run.vcpus.len() {
        if run.running & (1 << i) != 0 {
            kick(run, i);
        }
    }
}

/// Makes vCPU `i`'s next entry exit at once (a deadline that has passed).
fn kick(run: &mut Run, i: usize) {
    if let Some(&v) = run.vcpus.get(i) {
        if sys::vcpu_write(v, &[(field::DEADLINE, 1)]).is_ok() {
            run.model.irq.kicked(i);
        }
    }
}

/// Before vCPU `index`'s exit is handled: the reply that stops it if the VM is ending, or if
/// INIT put it back in wait-for-SIPI; it restarts at once if the SIPI came too.
pub(crate) fn before_exit(run: &mut Run, index: usize, vcpu: CapSlot) -> Option<ExitReply> {
    if run.ending {
        // The model's own stop if it has one (already reported), else "ended".
        let code = run
            .model
            .result()
            .map_or(stop_code::VM_ENDED, |r| r.stop_code());
        return Some(ExitReply::stop(code));
    }
    let lapic = run.model.irq.lapics.get_mut(index)?;
    if index == 0 || !lapic.take_init() {
        return None;
    }
    match lapic.take_sipi() {
        Some(vector) if write_sipi_state(vcpu, vector).is_ok() => {
            run.model.irq.restarted(index);
            Some(ExitReply::resume())
        }
        _ => {
            // Not running from now on, for the exits that follow (a SIPI starts it again),
            // even before its runner hears of the stop.
            run.running &= !(1 << index);
            Some(ExitReply::stop(stop_code::PARKED))
        }
    }
}

/// After vCPU `index`'s exit was handled (with a stop reply if `stopped`): the other vCPUs
/// that received an interrupt are kicked, an AP whose SIPI came is started, and a stop ends
/// the VM.
#[inline]
pub(crate) fn after_exit(run: &mut Run, index: usize, stopped: bool) {
    if run.vcpus.len() >= 2 {
        after_exit_smp(run, index, stopped);
    }
}

/// [`after_exit`] with application processors.
fn after_exit_smp(run: &mut Run, index: usize, stopped: bool) {
    let kicks = run.model.irq.take_kicks();
    for i in 0..run.vcpus.len() {
        if i == index {
            continue;
        }
        if run.running & (1 << i) != 0 {
            if kicks & (1 << i) != 0 {
                kick(run, i);
            }
            continue;
        }
        if i != 0 && !run.ending {
            start_if_sipi(run, i);
        }
    }
    if stopped && !run.ending {
        end_run(run);
    }
}

/// Starts AP `i` (not running) if its local APIC received a SIPI.
fn start_if_sipi(run: &mut Run, i: usize) {
    let Some(lapic) = run.model.irq.lapics.get_mut(i) else {
        return;
    };
    let _ = lapic.take_init(); // it is not running: nothing more to reset
    let Some(vector) = lapic.take_sipi() else {
        return;
    };
    let (Some(&vcpu), Some(signals)) = (run.vcpus.get(i), SIGNALS.get()) else {
        return;
    };
    if let Err(e) = write_sipi_state(vcpu, vector) {
        userlib::println!("vmm: vCPU {i}: its SIPI state was refused ({e:?}); it stays stopped");
        return;
    }
    run.model.irq.restarted(i);
    run.running |= 1 << i;
    let _ = sys::signal(signals.runners[i - 1], 1);
}

/// Writes the state of an AP started by a SIPI with `vector`, with no deadline.
fn write_sipi_state(vcpu: CapSlot, vector: u8) -> Result<(), Error> {
    let pairs = sipi_entry(vector);
    for chunk in pairs.chunks(32) {
        sys::vcpu_write(vcpu, chunk).map_err(|(e, _)| e)?;
    }
    sys::vcpu_write(vcpu, &[(field::DEADLINE, 0)]).map_err(|(e, _)| e)
}

/// After the bootstrap processor's `VcpuRun` returned: ends the VM and waits until every
/// AP's runner is back.
pub fn finish() {
    {
        let mut g = lock_run();
        let Some(run) = g.as_mut() else {
            return;
        };
        run.running &= !1;
        if !run.ending {
            end_run(run);
        }
    }
    let Some(signals) = SIGNALS.get() else {
        return;
    };
    loop {
        let busy = lock_run().as_ref().is_some_and(|r| r.running != 0);
        if !busy {
            return;
        }
        let _ = sys::wait(signals.done);
    }
}
