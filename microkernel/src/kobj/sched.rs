//! Scheduling: threads made ready, woken and completed, the choice of what runs next, and
//! the timer tick.

use abi::Error;

use super::ids::ThreadId;
use super::kernel::{Kernel, Next};
use super::machine::Machine;
use super::objects::*;
use super::regs::UserRegs;

impl<M: Machine> Kernel<M> {
    /// Makes a blocked or new thread ready.
    pub(crate) fn make_ready(&mut self, t: ThreadId) {
        let prio = {
            let Ok(th) = self.thread_mut(t) else {
                return;
            };
            th.state = ThreadState::Ready;
            th.prio
        };
        if self.current != Some(t) {
            self.run_queue.push(&mut self.threads, t, prio);
        }
    }

    /// Wakes `t` and, when the current thread just blocked and nothing more urgent waits,
    /// runs it next without a trip through the run queue (the IPC fast path).
    pub(crate) fn wake_direct(&mut self, t: ThreadId) {
        let cur_blocked = self.current.is_some_and(|c| {
            self.thread(c)
                .is_ok_and(|th| th.state != ThreadState::Ready)
        });
        let Some(th) = self.threads.get_mut(t) else {
            return;
        };
        if cur_blocked && self.run_queue.highest().is_none_or(|h| h <= th.prio) {
            th.state = ThreadState::Ready;
            self.current = Some(t);
        } else {
            self.make_ready(t);
        }
    }

    /// Sets a blocked thread's syscall result and makes it ready.
    pub(crate) fn complete(&mut self, t: ThreadId, result: Result<[u64; 4], (Error, u64)>) {
        let Ok(th) = self.thread_mut(t) else {
            return;
        };
        if let Some(vi) = th.vcpu {
            self.vcpu_call_done(vi, result.map(drop).map_err(|e| e.0));
            self.make_ready(t);
            return;
        }
        let regs = &mut th.regs;
        match result {
            Ok(ret) => regs.set_result(0, ret),
            Err((e, info)) => regs.set_result(e as u64, [info, 0, 0, 0]),
        }
        self.make_ready(t);
    }

    /// Picks what runs next: a user thread, a guest, idle or the end.
    pub fn schedule(&mut self) -> Next {
        loop {
            match self.schedule_thread() {
                (Next::User(t), true) => {
                    if self.vcpu_prepare(t) {
                        return Next::Guest(t);
                    }
                    // It blocked again or stopped: pick another.
                }
                (next, _) => return next,
            }
        }
    }

    /// Picks the next thread (vCPU threads included), and whether it is a vCPU thread.
    fn schedule_thread(&mut self) -> (Next, bool) {
        if let Some(code) = self.exit_code {
            return (Next::MachineExit(code), false);
        }
        let rotate = core::mem::take(&mut self.rotate);
        if let Some(c) = self.current {
            // A current thread that is gone (none is) is not run again.
            let (state, prio, vcpu) = match self.threads.get(c) {
                Some(th) => (th.state, th.prio, th.vcpu.is_some()),
                None => (ThreadState::Suspended, 0, false),
            };
            if state == ThreadState::Ready {
                let higher = self.run_queue.highest().is_some_and(|h| h > prio);
                let peer = self.run_queue.highest().is_some_and(|h| h == prio);
                if !(higher || rotate && peer) {
                    return (Next::User(c), vcpu);
                }
                self.run_queue.push(&mut self.threads, c, prio);
            }
        }
        self.current = self.run_queue.pop(&mut self.threads);
        match self.current {
            Some(t) => (
                Next::User(t),
                self.threads.get(t).is_some_and(|th| th.vcpu.is_some()),
            ),
            None => (Next::Idle, false),
        }
    }

    /// A timer tick: wakes sleepers whose time came and rotates the current thread.
    pub fn on_tick(&mut self, regs: Option<&UserRegs>) -> Next {
        if let (Some(c), Some(r)) = (self.current, regs) {
            if let Some(th) = self.threads.get_mut(c) {
                th.regs = *r;
            }
        }
        let now = self.machine.clock().0;
        for t in (0..MAX_THREADS).map(ThreadId::from_index) {
            let due = matches!(
                self.threads.get(t).map(|th| th.state),
                Some(ThreadState::Sleeping { until }) if until <= now
            );
            if due {
                self.complete(t, Ok([0; 4]));
            }
        }
        self.rotate = true;
        self.schedule()
    }
}
