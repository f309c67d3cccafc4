//! Extended state (x87, MMX, SSE, AVX) and debug registers per thread and per vCPU (part
//! `fpu` of issue 17).
//!
//! Each thread has an extended-state area (the machine keeps it: [`Machine::xstate_switch`]).
//! The registers hold the state of one thread, the *owner*; the kernel itself never touches
//! them (it is built without SSE). Switching is lazy for user threads and eager for vCPUs:
//! - before a vCPU thread enters its guest, a different owner's state is saved and the
//!   guest's loaded (the guest's own CR0 is in force in the guest, so a trap could not
//!   help);
//! - a user thread that is not the owner runs with CR0.TS set ([`Machine::xstate_trap`]): its
//!   first x87/SSE/AVX instruction raises #NM, and only then is the owner's state saved and
//!   its own loaded ([`Kernel::on_device_not_available`]). The services do not use those
//!   registers, so an exit handled in ring 3 moves no extended state at all.
//!
//! A new thread starts from the initial state, so nothing passes from a dead thread to the
//! one that reuses its slot.
//!
//! A vCPU's XCR0 and debug registers are the pseudo-fields of `abi::vmx::field`'s `fpu`
//! block, which the machine keeps with the VMCS and loads around VM entry; the values a
//! service writes are checked here ([`Kernel::fpu_value_ok`]) so the kernel never executes
//! an XSETBV or MOV DR that faults.

use abi::cpu::xcr0;
use abi::vmx::field;

use super::ids::ThreadId;
use super::kernel::{Kernel, Next};
use super::machine::Machine;

impl<M: Machine> Kernel<M> {
    /// Before the machine runs `next`: if it runs a thread other than the owner of the
    /// extended state, the owner's state is saved (unless it is dead) and the thread's loaded.
    #[inline(always)]
    pub fn switch_xstate(&mut self, next: Next) {
        match next {
            Next::Guest(t) => {
                if !t.is_in(self.xstate_owner) {
                    self.take_xstate(t);
                }
            }
            Next::User(t) => self.machine.xstate_trap(!t.is_in(self.xstate_owner)),
            Next::Idle | Next::MachineExit(_) => {}
        }
    }

    /// Saves the owner's state (unless it is dead) and loads `t`'s; `t` owns it from now.
    fn take_xstate(&mut self, t: ThreadId) {
        let from = self.xstate_owner.filter(|&o| self.threads.get(o).is_some());
        self.machine.xstate_switch(from, t);
        self.xstate_owner = Some(t);
    }

    /// #NM in ring 3: the current thread used the extended-state registers while another
    /// thread owned them (CR0.TS was set). It takes them and runs the instruction again.
    pub fn on_device_not_available(&mut self, regs: &super::regs::UserRegs) -> Next {
        let Some(c) = self.current else {
            return self.schedule();
        };
        if let Ok(th) = self.thread_mut(c) {
            th.regs = *regs;
        }
        if !c.is_in(self.xstate_owner) {
            self.take_xstate(c);
        }
        Next::User(c)
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
