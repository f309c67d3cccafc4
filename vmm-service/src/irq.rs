//! Interrupt delivery: from the devices' outputs to an event VM entry injects.
//!
//! After the model answers an exit, [`Interrupts::finish`] brings the devices up to date
//! (the PIT's channel 0 edges raise ISA line 0 of the 8259 pair) and decides how the reply
//! delivers what the PIC requests:
//! - **inject now** (an external interrupt in `ExitReply::inject`) when the guest can take
//!   it at the next entry: the exit is an interrupt-window exit, or the guest waits in HLT
//!   with RFLAGS.IF set, or the reply moves RIP past an instruction that ran with IF set
//!   (the kernel ends STI/MOV SS blocking when it advances RIP);
//! - **ask for the window** (`reply::INTR_WINDOW`) otherwise: the guest exits as soon as it
//!   can take an interrupt, and that exit injects it.
//!
//! The acknowledge (the PIC's INTA) happens when the reply injects, so IRR and ISR are what
//! the guest would see on hardware. An exit that stops the VM or already injects an
//! exception delivers nothing (the request stays in the PIC for the next exit).
//!
//! Time: the reply also carries the vCPU's deadline (`reply::SET_DEADLINE`), the host TSC
//! of the next device event (the PIT's next OUT edge), so that the guest exits when a timer
//! fires even if it never exits otherwise. The kernel clears a deadline when it fires
//! (a preemption-timer exit); [`Interrupts`] remembers what the kernel holds and sends a
//! deadline only when it changes.
//!
//! HLT with IF set: the VMM answers with `reply::HALT` and the guest waits in the HLT
//! activity state until its deadline or an injection wakes it. With nothing armed (no
//! timer running, nothing requested) nothing could ever wake it: the model resumes the guest
//! after the HLT instead, as if an event had woken it, rather than leave it halted for good.

use abi::vmx::{group, reason, reply, ExitMessage, ExitReply};

use crate::devices::bus::PortBus;
use crate::devices::pit::PIT_HZ;

/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;
/// VM-entry interruption information: valid, type 0 (external interrupt).
const EXTERNAL_INTERRUPT: u64 = 1 << 31;

/// The host clock: the TSC now and its rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    pub tsc: u64,
    /// Hz; 0 when the kernel could not measure it (then `ticks` comes from its tick count).
    pub tsc_hz: u64,
    /// PIT input-clock periods at `tsc`.
    pub ticks: u64,
}

impl Clock {
    /// The first host TSC at which device time has reached `ticks` PIT periods; `None` if
    /// the TSC's rate is unknown.
    pub fn tsc_at(&self, ticks: u64) -> Option<u64> {
        if self.tsc_hz == 0 {
            return None;
        }
        // Device time is the TSC scaled ([`Clock::ticks_at`]): the inverse, rounded up.
        let tsc = (ticks as u128 * self.tsc_hz as u128).div_ceil(PIT_HZ as u128);
        Some(u64::try_from(tsc).unwrap_or(u64::MAX))
    }

    /// PIT periods at host TSC `tsc` for a TSC of `tsc_hz` Hz.
    pub fn ticks_at(tsc: u64, tsc_hz: u64) -> u64 {
        (tsc as u128 * PIT_HZ as u128 / tsc_hz.max(1) as u128) as u64
    }
}

/// The vCPU's interrupt-delivery state and its statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interrupts {
    /// The guest waits in the HLT activity state (the model put it there; RFLAGS.IF is set).
    halted: bool,
    /// The deadline the kernel holds (0: none).
    deadline: u64,
    /// External interrupts injected.
    pub injected: u64,
    /// Interrupt-window exits asked for.
    pub windows: u64,
    /// PIT periods whose IRQ 0 edge found the previous one still unacknowledged.
    pub lost_ticks: u64,
    /// HLTs the guest waited in.
    pub halts: u64,
}

impl Interrupts {
    /// Whether the guest waits in HLT.
    pub fn halted(&self) -> bool {
        self.halted
    }

    /// Brings the devices' outputs up to time `clock` (the PIT's channel 0 edges to IRQ 0).
    fn poll(&mut self, bus: &mut PortBus, clock: &Clock) {
        let edges = bus.pit.out_edges(0, clock.ticks);
        if edges > 0 {
            // The 8259 latches one edge: the others are lost ticks, as on hardware.
            self.lost_ticks += edges - 1;
            bus.pic.set_irq(0, true);
            bus.pic.set_irq(0, false);
        }
    }

    /// The next time a device's output may change, as a host TSC (`None`: nothing armed).
    fn next_event(bus: &PortBus, clock: &Clock) -> Option<u64> {
        clock.tsc_at(bus.pit.next_edge(0, clock.ticks)?)
    }

    /// Whether a HLT now would wait for something: a request is pending or a timer runs.
    pub fn can_wake(&mut self, bus: &mut PortBus, clock: &Clock) -> bool {
        self.poll(bus, clock);
        bus.pic.pending().is_some() || Self::next_event(bus, clock).is_some()
    }

    /// Completes `r`, the model's answer to exit `m`: delivers what the devices request and
    /// sets the deadline (see the module's description).
    pub fn finish(&mut self, m: &ExitMessage, r: &mut ExitReply, bus: &mut PortBus, clock: &Clock) {
        if r.flags & reply::STOP != 0 {
            return;
        }
        let basic = m.basic_reason();
        if basic == reason::PREEMPTION_TIMER {
            self.deadline = 0; // the kernel cleared it when it fired
        }
        if r.flags & reply::HALT != 0 {
            self.halted = true;
            self.halts += 1;
        }
        self.poll(bus, clock);
        if r.flags & reply::INJECT == 0 && bus.pic.pending().is_some() {
            let rflags = if r.flags & reply::SET_RFLAGS != 0 {
                r.rflags
            } else {
                m.rflags
            };
            let past_instruction = r.flags & reply::ADVANCE_RIP != 0
                && m.mask & group::RIP != 0
                && rflags & RFLAGS_IF != 0;
            if basic == reason::INTERRUPT_WINDOW || self.halted || past_instruction {
                let vector = bus.pic.ack();
                r.flags |= reply::INJECT;
                r.inject = EXTERNAL_INTERRUPT | u64::from(vector);
                self.halted = false;
                self.injected += 1;
            } else {
                r.flags |= reply::INTR_WINDOW;
                self.windows += 1;
            }
        }
        if r.flags & reply::INJECT != 0 {
            self.halted = false;
        }
        let next = Self::next_event(bus, clock).unwrap_or(0);
        if next != self.deadline {
            r.flags |= reply::SET_DEADLINE;
            r.deadline = next;
            self.deadline = next;
        }
    }
}

#[cfg(test)]
mod tests;
