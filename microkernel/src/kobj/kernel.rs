//! The kernel object model's state and the accessors of its tables. Scheduling is in
//! `sched.rs`, references to objects in `refs.rs`, tasks' lifecycle in `tasks.rs`, syscalls in
//! `syscalls.rs` and `ipc.rs`; the machine is behind [`Machine`].

use abi::ipc::FaultNotice;

use super::ids::{Gone, TaskId, ThreadId};
use super::machine::Machine;
use super::objects::*;
use super::queue::RunQueue;
use super::regs::UserRegs;
use super::threads::Threads;
use super::vm::{Vcpu, Vm, MAX_VCPUS, MAX_VMS};

/// What the machine runs after a kernel entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Return to this thread's saved registers in its task's address space.
    User(ThreadId),
    /// Nothing is ready: halt until an interrupt.
    Idle,
    /// A task with the machine capability ended the scenario with this code.
    MachineExit(u32),
    /// Enter the guest of this vCPU thread ([`Kernel::guest_context`]).
    Guest(ThreadId),
}

/// Why a task ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Death {
    /// Destroyed by `TaskKill`: no notice.
    Killed,
    /// A fault, a panic or an exit: the notice goes to the task's fault endpoint.
    Notice(FaultNotice),
}

/// The kernel object model. Its state is the kernel's own: the modules of `kobj` keep its
/// invariants (queues, reference counts, capability tables); the binary and the tests reach
/// it through the accessors below.
pub struct Kernel<M: Machine> {
    pub(crate) machine: M,
    pub(crate) threads: Threads,
    pub(crate) tasks: [Slot<Task<M::Space>>; MAX_TASKS],
    pub(crate) endpoints: [Slot<Endpoint>; MAX_ENDPOINTS],
    pub(crate) notifications: [Slot<Notification>; MAX_NOTIFICATIONS],
    pub(crate) memory: [Slot<Memory>; MAX_MEMORY],
    pub(crate) vms: [Slot<Vm<M::Ept>>; MAX_VMS],
    pub(crate) vcpus: [Slot<Vcpu<M::Vmcs>>; MAX_VCPUS],
    pub(crate) run_queue: RunQueue,
    pub(crate) current: Option<ThreadId>,
    /// Set by yield and the timer: the current thread goes behind its peers.
    pub(crate) rotate: bool,
    /// Set when a syscall ends the scenario.
    pub(crate) exit_code: Option<u32>,
    /// Whether the fast paths may run (`call`, `reply_recv`, the one-pass exit and reply,
    /// the floor): tests turn it off to compare, and the machine's exit (`exit_code`) ends
    /// it, so that one test covers both.
    pub(crate) fast_ipc: bool,
    /// The first task (the supervisor): its objects are not counted against a quota.
    pub(crate) init_task: Option<TaskId>,
    /// The exit trace ring.
    pub(crate) trace: super::trace::TraceRing,
    /// The trace id the next VM gets (its `vm` in trace records).
    pub(crate) next_vm_trace_id: u32,
    /// Live VMs with tracing on: at 0, every trace hook returns at its first test.
    pub(crate) traced_vms: u32,
    /// The thread whose extended state (x87/SSE/AVX) is in the registers ([`Kernel::switch_xstate`]).
    pub(crate) xstate_owner: Option<ThreadId>,
}

impl<M: Machine> Kernel<M> {
    pub const fn new(machine: M) -> Self {
        Kernel {
            machine,
            threads: Threads::new(),
            tasks: [const { Slot::empty() }; MAX_TASKS],
            endpoints: [const { Slot::empty() }; MAX_ENDPOINTS],
            notifications: [const { Slot::empty() }; MAX_NOTIFICATIONS],
            memory: [const { Slot::empty() }; MAX_MEMORY],
            vms: [const { Slot::empty() }; MAX_VMS],
            vcpus: [const { Slot::empty() }; MAX_VCPUS],
            run_queue: RunQueue::new(),
            current: None,
            rotate: false,
            exit_code: None,
            fast_ipc: true,
            init_task: None,
            trace: super::trace::TraceRing::new(),
            next_vm_trace_id: 1,
            traced_vms: 0,
            xstate_owner: None,
        }
    }

    /// The machine the kernel runs on.
    #[inline]
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// The thread running (or last picked to run).
    #[inline]
    pub fn current(&self) -> Option<ThreadId> {
        self.current
    }

    /// The live thread `t`.
    #[inline(always)]
    pub fn thread(&self, t: ThreadId) -> Result<&Thread, Gone> {
        self.threads.get(t).ok_or(Gone)
    }

    #[inline(always)]
    pub(crate) fn thread_mut(&mut self, t: ThreadId) -> Result<&mut Thread, Gone> {
        self.threads.get_mut(t).ok_or(Gone)
    }

    /// The live task `ti`.
    #[inline]
    pub fn task(&self, ti: TaskId) -> Result<&Task<M::Space>, Gone> {
        slot_at(&self.tasks, ti)
    }

    #[inline]
    pub(crate) fn task_mut(&mut self, ti: TaskId) -> Result<&mut Task<M::Space>, Gone> {
        slot_at_mut(&mut self.tasks, ti)
    }

    /// Task `ti` as an owner of objects: (its id, its slot generation).
    pub(crate) fn owner_of(&self, ti: TaskId) -> Result<(TaskId, u32), Gone> {
        let s = self.tasks.get(ti.index()).ok_or(Gone)?;
        s.obj.as_ref().ok_or(Gone)?;
        Ok((ti, s.generation))
    }

    /// The registers and address space to return to for a [`Next::User`] thread.
    #[inline(always)]
    pub fn context(&self, t: ThreadId) -> Result<(&UserRegs, &M::Space), Gone> {
        let th = self.thread(t)?;
        Ok((&th.regs, &self.task(th.task)?.space))
    }

    /// The current thread (a syscall's caller).
    #[inline(always)]
    pub(crate) fn cur(&self) -> Result<ThreadId, Gone> {
        self.current.ok_or(Gone)
    }

    /// The current thread's task.
    #[inline]
    pub(crate) fn cur_task(&self) -> Result<TaskId, Gone> {
        Ok(self.thread(self.cur()?)?.task)
    }
}
