//! Extended state (x87, MMX, SSE, AVX) and debug registers per thread and per vCPU (part
//! `fpu` of issue 17).
//!
//! Each thread has an extended-state area (the machine keeps it: [`Machine::xstate_switch`]).
//! The registers hold the state of one thread, the *owner*; before a different thread runs
//! (a user thread or a vCPU thread, whose state is its guest's), the owner's state is saved
//! and the next thread's loaded. Switching only when the thread changes is eager switching
//! without the cost of a save and restore on every kernel entry: the kernel itself never
//! touches these registers (it is built without SSE). A new thread starts from the initial
//! state, so nothing passes from a dead thread to the one that reuses its slot.
//!
//! A vCPU's XCR0 and debug registers are the pseudo-fields of `abi::vmx::field`'s `fpu`
//! block, which the machine keeps with the VMCS and loads around VM entry; the values a
//! service writes are checked here ([`Kernel::fpu_value_ok`]) so the kernel never executes
//! an XSETBV or MOV DR that faults.

use abi::cpu::xcr0;
use abi::vmx::field;

use super::kernel::{Kernel, Next};
use super::machine::Machine;
use super::queue::ThreadId;

impl<M: Machine> Kernel<M> {
    /// Before the machine runs `next`: if it runs a thread other than the owner of the
    /// extended state, the owner's state is saved (unless it is dead) and the thread's loaded.
    pub fn switch_xstate(&mut self, next: Next) {
        let t = match next {
            Next::User(t) | Next::Guest(t) => t,
            Next::Idle | Next::MachineExit(_) => return,
        };
        if self.xstate_owner == Some(t) {
            return;
        }
        let from = self
            .xstate_owner
            .filter(|&o| self.threads.0[o as usize].is_some());
        self.machine.xstate_switch(from, t);
        self.xstate_owner = Some(t);
    }

    /// A new thread in slot `t`: its area starts in the initial state, and whatever a dead
    /// thread of the same slot left in the registers is not saved over it.
    pub(crate) fn xstate_new_thread(&mut self, t: ThreadId) {
        if self.xstate_owner == Some(t) {
            self.xstate_owner = None;
        }
        self.machine.xstate_reset(t);
    }

    /// Whether `value` may be written to the `fpu` pseudo-field `f` (other fields: true): an
    /// XCR0 that XSETBV accepts on this CPU, a DR6 or DR7 with bits 63:32 clear (MOV to DR6
    /// or DR7 faults otherwise). DR0..DR3 take any value.
    pub(crate) fn fpu_value_ok(&self, f: u64, value: u64) -> bool {
        match f {
            field::GUEST_XCR0 => xcr0::valid(value, self.machine.xcr0_supported()),
            field::GUEST_DR6 | field::GUEST_DR7 => value >> 32 == 0,
            _ => true,
        }
    }
}
