//! The kernel object model's state and its lifecycle: scheduling, task creation and death.
//! Syscalls are in `syscalls.rs` and `ipc.rs`; the machine is behind [`Machine`].

use abi::cap::slot;
use abi::ipc::layout::{STACK_PAGES, STACK_TOP};
use abi::ipc::{FaultNotice, FAULT_LABEL};
use abi::{CapKind, Error, Rights};
use heapless::String;

use super::captable::{Cap, CapTable, ObjRef};
use super::ids::{EndpointId, Gone, MemoryId, NotificationId, TaskId, ThreadId, VcpuId};
use super::image;
use super::machine::{Machine, PageAccess};
use super::objects::*;
use super::queue::RunQueue;
use super::regs::UserRegs;
use super::threads::Threads;
use super::vm::{Vcpu, Vm, MAX_VCPUS, MAX_VMS};
use crate::PAGE_SIZE;

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
    /// Whether `call` and `reply_recv` may take the fast path (tests turn it off to compare).
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
    #[inline]
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

    // ----- scheduling -----

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

    // ----- objects and references -----

    /// Counts a new reference (capability or mapping) to the object `r` names.
    pub(crate) fn acquire(&mut self, r: ObjRef) {
        match r.kind {
            CapKind::Endpoint => {
                if let Some(e) = slot_get_mut(&mut self.endpoints, r) {
                    e.refs += 1;
                }
            }
            CapKind::Notification => {
                if let Some(n) = slot_get_mut(&mut self.notifications, r) {
                    n.refs += 1;
                }
            }
            CapKind::Memory => {
                if let Some(m) = slot_get_mut(&mut self.memory, r) {
                    m.refs += 1;
                }
            }
            CapKind::Vm | CapKind::Vcpu => self.acquire_vm_object(r),
            _ => {}
        }
    }

    /// Drops a reference; the object is destroyed when none is left.
    pub(crate) fn release(&mut self, r: ObjRef) {
        let last = match r.kind {
            CapKind::Endpoint => slot_get_mut(&mut self.endpoints, r).map(|e| {
                e.refs = e.refs.saturating_sub(1);
                e.refs == 0
            }),
            CapKind::Notification => slot_get_mut(&mut self.notifications, r).map(|n| {
                n.refs = n.refs.saturating_sub(1);
                n.refs == 0
            }),
            CapKind::Memory => slot_get_mut(&mut self.memory, r).map(|m| {
                m.refs = m.refs.saturating_sub(1);
                m.refs == 0
            }),
            CapKind::Vm | CapKind::Vcpu => Some(self.release_vm_object(r)),
            _ => None,
        };
        if last == Some(true) {
            self.destroy(r);
        }
    }

    /// Destroys the object `r` names now: waiters get `StaleCap`, capabilities go stale.
    pub(crate) fn destroy(&mut self, r: ObjRef) {
        match r.kind {
            CapKind::Endpoint => {
                if slot_get(&self.endpoints, r).is_none() {
                    return;
                }
                while let Some(ep) = slot_get_mut(&mut self.endpoints, r) {
                    let t = match ep.senders.pop_front(&mut self.threads) {
                        Some(t) => t,
                        None => match ep.receivers.pop_front(&mut self.threads) {
                            Some(t) => t,
                            None => break,
                        },
                    };
                    self.complete(t, Err((Error::StaleCap, 0)));
                }
                slot_remove(&mut self.endpoints, r.id::<EndpointId>());
            }
            CapKind::Notification => {
                if slot_get(&self.notifications, r).is_none() {
                    return;
                }
                while let Some(n) = slot_get_mut(&mut self.notifications, r) {
                    match n.waiters.pop_front(&mut self.threads) {
                        Some(t) => self.complete(t, Err((Error::StaleCap, 0))),
                        None => break,
                    }
                }
                slot_remove(&mut self.notifications, r.id::<NotificationId>());
            }
            CapKind::Memory => {
                // Mappings hold references, so a memory object mapped somewhere is only
                // destroyed by revocation: unmap it from every task first.
                for ti in (0..MAX_TASKS).map(TaskId::from_index) {
                    for mi in 0..MAX_MAPPINGS {
                        let m = self.task(ti).ok().and_then(|t| t.mappings[mi]);
                        if let Some(m) = m.filter(|m| m.mem == r) {
                            self.unmap_mapping(ti, mi, m, false);
                        }
                    }
                }
                if let Some(m) = slot_remove(&mut self.memory, r.id::<MemoryId>()) {
                    self.machine.frames_free(m.phys, m.pages);
                }
            }
            CapKind::Task => {
                if slot_get(&self.tasks, r).is_some() {
                    self.end_task(r.id(), Death::Killed);
                }
            }
            CapKind::Vm | CapKind::Vcpu => self.destroy_vm_object(r),
            CapKind::Spawn | CapKind::Machine | CapKind::Boot | CapKind::Vmx | CapKind::Trace => {}
        }
    }

    /// Whether the object a capability names still exists.
    pub(crate) fn alive(&self, r: ObjRef) -> bool {
        match r.kind {
            CapKind::Endpoint => slot_get(&self.endpoints, r).is_some(),
            CapKind::Notification => slot_get(&self.notifications, r).is_some(),
            CapKind::Memory => slot_get(&self.memory, r).is_some(),
            CapKind::Task => slot_get(&self.tasks, r).is_some(),
            CapKind::Vm => slot_get(&self.vms, r).is_some(),
            CapKind::Vcpu => slot_get(&self.vcpus, r).is_some(),
            CapKind::Spawn | CapKind::Machine | CapKind::Boot | CapKind::Vmx | CapKind::Trace => {
                true
            }
        }
    }

    /// Looks up a capability of the current task and checks that its object lives.
    pub(crate) fn cap(&self, slot: u64, kind: CapKind, rights: Rights) -> Result<Cap, Error> {
        let cap = self
            .task(self.cur_task()?)?
            .caps
            .lookup(slot, kind, rights)?;
        if !self.alive(cap.obj) {
            return Err(Error::StaleCap);
        }
        Ok(cap)
    }

    /// Puts a capability into a task's table, counting the reference.
    pub(crate) fn insert_cap(&mut self, task: TaskId, cap: Cap) -> Result<u64, Error> {
        let slot = self.task_mut(task)?.caps.insert(cap)?;
        self.acquire(cap.obj);
        Ok(slot)
    }

    // ----- tasks -----

    /// Loads boot module `module` into a new task with one suspended thread.
    pub fn spawn(
        &mut self,
        module: usize,
        generation: u64,
        prio: u8,
        fault_ep: Option<Cap>,
    ) -> Result<TaskId, Error> {
        if prio as usize >= super::queue::PRIORITIES {
            return Err(Error::InvalidArgument);
        }
        let (name, plan) = {
            let (cmdline, bytes) = self.machine.module(module).ok_or(Error::InvalidArgument)?;
            let plan = image::plan(bytes).map_err(|_| Error::BadImage)?;
            let word = cmdline.split_whitespace().next().unwrap_or("task");
            let word = word.rsplit('/').next().unwrap_or(word);
            let mut name: String<16> = String::new();
            for c in word.chars() {
                if name.push(c).is_err() {
                    break;
                }
            }
            (name, plan)
        };
        if !self.tasks.iter().any(|s| s.obj.is_none())
            || !self.threads.0.iter().any(Option::is_none)
        {
            return Err(Error::NoMemory);
        }
        let space = self.machine.space_new().ok_or(Error::NoMemory)?;
        let task = Task {
            name,
            generation,
            space,
            caps: CapTable::new(),
            prio,
            fault_ep: None,
            mappings: [None; MAX_MAPPINGS],
            threads: 0,
            main_thread: ThreadId::new(0),
            unmaps: 0,
            page_budget: 0,
        };
        let ti = match slot_insert(&mut self.tasks, task) {
            Ok((ti, _)) => ti,
            Err(task) => {
                self.machine.space_destroy(task.space);
                return Err(Error::NoMemory);
            }
        };
        if let Err(e) = self.load_image(ti, module, &plan) {
            self.end_task(ti, Death::Killed);
            return Err(e);
        }
        let Some(t) = self.new_thread(ti, UserRegs::new_thread(plan.entry, STACK_TOP, 0), prio)
        else {
            self.end_task(ti, Death::Killed);
            return Err(Error::NoMemory);
        };
        self.task_mut(ti)?.main_thread = t;
        if let Some(cap) = fault_ep {
            self.acquire(cap.obj);
            self.task_mut(ti)?.fault_ep = Some(cap);
        }
        Ok(ti)
    }

    fn load_image(
        &mut self,
        ti: TaskId,
        module: usize,
        plan: &image::LoadPlan,
    ) -> Result<(), Error> {
        for seg in &plan.segments {
            let mem = self.new_memory(seg.pages, None)?;
            let phys = slot_get(&self.memory, mem).ok_or(Gone)?.phys;
            // Copy through a bounce buffer: the module and the machine are both `self`.
            let mut off = 0;
            let mut chunk = [0u8; 256];
            while off < seg.file_len {
                let n = (seg.file_len - off).min(chunk.len());
                let from = seg.file_start + off;
                // The plan was made from these bytes: the segment lies inside them.
                let bytes = self
                    .machine
                    .module(module)
                    .and_then(|(_, bytes)| bytes.get(from..from + n));
                let Some(bytes) = bytes else {
                    self.destroy(mem);
                    return Err(Error::BadImage);
                };
                chunk[..n].copy_from_slice(bytes);
                self.machine
                    .write_phys(phys + seg.page_offset + off as u64, &chunk[..n]);
                off += n;
            }
            let access = PageAccess {
                write: seg.write,
                exec: seg.exec,
            };
            let r = self.map_memory(ti, mem, seg.va_start, access);
            if r.is_err() {
                self.destroy(mem);
            }
            r?;
        }
        let stack = self.new_memory(STACK_PAGES, None)?;
        let access = PageAccess {
            write: true,
            exec: false,
        };
        let r = self.map_memory(ti, stack, STACK_TOP - STACK_PAGES * PAGE_SIZE, access);
        if r.is_err() {
            self.destroy(stack);
        }
        r
    }

    /// A new suspended thread in task `ti`.
    pub(crate) fn new_thread(&mut self, ti: TaskId, regs: UserRegs, prio: u8) -> Option<ThreadId> {
        self.task(ti).ok()?;
        let i = self.threads.0.iter().position(Option::is_none)?;
        self.threads.fill(
            i,
            Thread {
                task: ti,
                prio,
                state: ThreadState::Suspended,
                regs,
                msg: Message::empty(),
                reply_to: None,
                buf: 0,
                buf_cap: 0,
                checked_buf: None,
                vcpu: None,
            },
        );
        let t = ThreadId::from_index(i);
        if let Ok(task) = self.task_mut(ti) {
            task.threads += 1;
        }
        self.xstate_new_thread(t);
        Some(t)
    }

    /// Takes a thread out of whatever it waits on and answers the callers it owes replies
    /// (`dying_task`: the task it goes with, if it goes with one).
    pub(crate) fn detach(&mut self, t: ThreadId, dying_task: Option<TaskId>) {
        let Some((state, prio)) = self.threads.get(t).map(|th| (th.state, th.prio)) else {
            return;
        };
        match state {
            ThreadState::Ready if self.current != Some(t) => {
                self.run_queue.remove(&mut self.threads, t, prio)
            }
            ThreadState::BlockedSend { ep, .. } => {
                if let Ok(e) = slot_at_mut(&mut self.endpoints, ep) {
                    e.senders.remove(&mut self.threads, t);
                }
            }
            ThreadState::BlockedRecv { ep } => {
                if let Ok(e) = slot_at_mut(&mut self.endpoints, ep) {
                    e.receivers.remove(&mut self.threads, t);
                }
            }
            ThreadState::BlockedWait { ntfn } => {
                if let Ok(n) = slot_at_mut(&mut self.notifications, ntfn) {
                    n.waiters.remove(&mut self.threads, t);
                }
            }
            ThreadState::BlockedReply { server, .. } => {
                if let Some(s) = self.threads.get_mut(server) {
                    if s.reply_to == Some(t) {
                        s.reply_to = None;
                    }
                }
            }
            ThreadState::BlockedRun { vcpu } => {
                // The vCPU stops with its runner: nobody else could hear why it stops, nor
                // run it again meanwhile (`Busy`).
                if let Ok(v) = slot_at_mut(&mut self.vcpus, vcpu) {
                    if v.runner == Some(t) {
                        v.runner = None;
                        self.vcpu_stop(vcpu, abi::vmx::stop::PORTAL_GONE);
                    }
                }
            }
            _ => {}
        }
        let caller = self.threads.get_mut(t).and_then(|th| th.reply_to.take());
        if let Some(caller) = caller {
            let ep = match self.threads.get(caller).map(|th| th.state) {
                Some(ThreadState::BlockedReply { ep, .. }) => Some(ep),
                _ => None,
            };
            let result = self.restart_result(ep, dying_task);
            self.complete(caller, Err(result));
        }
    }

    /// What a caller whose server died hears: `ServerRestarted` with the generation of the
    /// next incarnation when the endpoint is bound to the dying task, else `ServerGone`.
    fn restart_result(&self, ep: Option<EndpointId>, dying_task: Option<TaskId>) -> (Error, u64) {
        let Some(e) = ep.and_then(|ep| slot_at(&self.endpoints, ep).ok()) else {
            return (Error::ServerGone, 0);
        };
        // The dying task is still in its slot (`end_task` frees it after its threads).
        let dying = dying_task
            .filter(|&d| e.server.is_some_and(|(ti, _)| ti == d))
            .and_then(|d| self.task(d).ok());
        if let Some(task) = dying.filter(|_| e.state != EndpointState::Closed) {
            (Error::ServerRestarted, task.generation + 1)
        } else if e.state == EndpointState::Restarting {
            (Error::ServerRestarted, e.generation + 1)
        } else {
            (Error::ServerGone, 0)
        }
    }

    /// Ends a task: detaches and frees its threads, answers callers, marks the endpoints it
    /// served as restarting, drops its capabilities and mappings, frees its address space,
    /// and sends the notice (if any) to its fault endpoint.
    pub fn end_task(&mut self, ti: TaskId, death: Death) {
        if self.task(ti).is_err() {
            return;
        }
        // vCPUs run on threads of the task that created them: they go with it.
        for vi in (0..MAX_VCPUS).map(VcpuId::from_index) {
            let Some(s) = self.vcpus.get(vi.index()) else {
                continue;
            };
            let mine = s
                .obj
                .as_ref()
                .is_some_and(|v| self.threads.get(v.thread).is_some_and(|th| th.task == ti));
            if mine {
                let r = ObjRef::new(CapKind::Vcpu, vi, s.generation);
                self.destroy_vm_object(r);
            }
        }
        for t in (0..MAX_THREADS).map(ThreadId::from_index) {
            if self.threads.get(t).is_some_and(|th| th.task == ti) {
                self.detach(t, Some(ti));
                self.threads.clear(t);
                if self.current == Some(t) {
                    self.current = None;
                }
            }
        }
        for slot in self.endpoints.iter_mut() {
            if let Some(e) = slot.obj.as_mut() {
                if e.server.is_some_and(|(t, _)| t == ti) {
                    e.server = None;
                    if e.state == EndpointState::Open {
                        e.state = EndpointState::Restarting;
                    }
                }
            }
        }
        let mut caps: heapless::Vec<Cap, { abi::cap::CAP_SLOTS }> = heapless::Vec::new();
        if let Ok(task) = self.task_mut(ti) {
            for cap in task.caps.drain() {
                let _ = caps.push(cap);
            }
        }
        for cap in caps {
            self.release(cap.obj);
        }
        // The address space goes whole, its leaf entries with its tables (one pass over the
        // tables, not a walk per mapped page); then the memory objects the mappings held.
        let mut held: heapless::Vec<ObjRef, MAX_MAPPINGS> = heapless::Vec::new();
        let Some(task) = slot_remove(&mut self.tasks, ti) else {
            return;
        };
        for m in task.mappings.iter().flatten() {
            let _ = held.push(m.mem);
        }
        self.machine.space_destroy(task.space);
        for mem in held {
            self.release(mem);
        }
        if let Some(fault_ep) = task.fault_ep {
            if let Death::Notice(notice) = death {
                self.post_notice(fault_ep, notice);
            }
            self.release(fault_ep.obj);
        }
    }

    /// Delivers a fault notice on an endpoint: to a waiting receiver, else into its queue.
    fn post_notice(&mut self, cap: Cap, notice: FaultNotice) {
        let Some(ep) = slot_get_mut(&mut self.endpoints, cap.obj) else {
            return;
        };
        if let Some(r) = ep.receivers.pop_front(&mut self.threads) {
            let mut msg = Message::empty();
            msg.label = FAULT_LABEL;
            msg.len = FaultNotice::SIZE;
            msg.data[..FaultNotice::SIZE].copy_from_slice(&notice.to_bytes());
            msg.badge = cap.badge;
            self.deliver(r, &msg);
            self.make_ready(r);
        } else if ep.notices.push_back((notice, cap.badge)).is_err() {
            // Full: the oldest notice is dropped in favour of the newest.
            ep.notices.pop_front();
            let _ = ep.notices.push_back((notice, cap.badge));
        }
    }

    /// Ends the current task because of a CPU exception in user mode.
    pub fn on_user_fault(
        &mut self,
        regs: &UserRegs,
        vector: u64,
        error_code: u64,
        address: u64,
    ) -> Next {
        if let Some(c) = self.current {
            if let Some(th) = self.threads.get_mut(c) {
                th.regs = *regs;
            }
            self.fault_current(vector, error_code, address);
        }
        self.schedule()
    }

    /// Ends the current thread's task with a notice.
    pub(crate) fn fault_current(&mut self, vector: u64, error_code: u64, address: u64) {
        let Some(th) = self.current.and_then(|c| self.threads.get(c)) else {
            return;
        };
        let (ti, rip) = (th.task, th.regs.rip);
        let Ok(task) = self.task(ti) else {
            return;
        };
        let notice = FaultNotice {
            task: ti.raw() as u64,
            generation: task.generation,
            vector,
            error_code,
            address,
            rip,
        };
        self.end_task(ti, Death::Notice(notice));
    }

    /// Starts the first task (the supervisor, or `kernel-tests` in the `kernel` scenario)
    /// from module `module` with the spawn, machine and boot capabilities in their fixed
    /// slots and `arg` in its first thread's `rdi`.
    pub fn start_init(&mut self, module: usize, arg: u64) -> Result<TaskId, Error> {
        let ti = self.spawn(module, 1, super::queue::PRIORITIES as u8 - 2, None)?;
        self.init_task = Some(ti);
        self.task_mut(ti)?.page_budget = u64::MAX;
        let spawn = Cap {
            obj: ObjRef {
                kind: CapKind::Spawn,
                index: 0,
                generation: 0,
            },
            rights: Rights::all(),
            badge: 0,
        };
        let machine = Cap {
            obj: ObjRef {
                kind: CapKind::Machine,
                ..spawn.obj
            },
            ..spawn
        };
        let boot = Cap {
            obj: ObjRef {
                kind: CapKind::Boot,
                ..spawn.obj
            },
            rights: Rights::READ | Rights::GRANT,
            ..spawn
        };
        let vmx = Cap {
            obj: ObjRef {
                kind: CapKind::Vmx,
                ..spawn.obj
            },
            ..boot
        };
        let caps = &mut self.task_mut(ti)?.caps;
        caps.insert_at(slot::SPAWN, spawn);
        caps.insert_at(slot::MACHINE, machine);
        caps.insert_at(slot::BOOT, boot);
        caps.insert_at(slot::VMX, vmx);
        let trace = Cap {
            obj: ObjRef {
                kind: CapKind::Trace,
                ..spawn.obj
            },
            ..boot
        };
        caps.insert_at(slot::TRACE, trace);
        let t = self.task(ti)?.main_thread;
        self.thread_mut(t)?.regs.rdi = arg;
        self.make_ready(t);
        Ok(ti)
    }
}
