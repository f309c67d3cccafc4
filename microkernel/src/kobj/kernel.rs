//! The kernel object model's state and its lifecycle: scheduling, task creation and death.
//! Syscalls are in `syscalls.rs` and `ipc.rs`; the machine is behind [`Machine`].

use abi::cap::slot;
use abi::ipc::layout::{STACK_PAGES, STACK_TOP};
use abi::ipc::{FaultNotice, FAULT_LABEL};
use abi::{CapKind, Error, Rights};
use heapless::String;

use super::captable::{Cap, CapTable, ObjRef};
use super::image;
use super::machine::{Machine, PageAccess};
use super::objects::*;
use super::queue::{LinkArena, Links, RunQueue, ThreadId};
use super::regs::UserRegs;
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

/// Thread slots, as the queues see them.
pub struct Threads(pub [Option<Thread>; MAX_THREADS]);

impl LinkArena for Threads {
    #[inline]
    fn links(&mut self, t: ThreadId) -> &mut Links {
        &mut self.0[t as usize]
            .as_mut()
            .expect("queued thread exists")
            .links
    }
}

/// Why a task ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Death {
    /// Destroyed by `TaskKill`: no notice.
    Killed,
    /// A fault, a panic or an exit: the notice goes to the task's fault endpoint.
    Notice(FaultNotice),
}

pub struct Kernel<M: Machine> {
    pub machine: M,
    pub threads: Threads,
    pub tasks: [Slot<Task<M::Space>>; MAX_TASKS],
    pub endpoints: [Slot<Endpoint>; MAX_ENDPOINTS],
    pub notifications: [Slot<Notification>; MAX_NOTIFICATIONS],
    pub memory: [Slot<Memory>; MAX_MEMORY],
    pub vms: [Slot<Vm<M::Ept>>; MAX_VMS],
    pub vcpus: [Slot<Vcpu<M::Vmcs>>; MAX_VCPUS],
    pub run_queue: RunQueue,
    pub current: Option<ThreadId>,
    /// Set by yield and the timer: the current thread goes behind its peers.
    pub(crate) rotate: bool,
    /// Set when a syscall ends the scenario.
    pub(crate) exit_code: Option<u32>,
    /// Whether `call` and `reply_recv` may take the fast path (tests turn it off to compare).
    pub fast_ipc: bool,
    /// The first task (the supervisor): its objects are not counted against a quota.
    pub(crate) init_task: Option<u16>,
    /// The exit trace ring.
    pub trace: super::trace::TraceRing,
    /// The trace id the next VM gets (its `vm` in trace records).
    pub(crate) next_vm_trace_id: u32,
    /// Live VMs with tracing on: at 0, every trace hook returns at its first test.
    pub(crate) traced_vms: u32,
    /// The thread whose extended state (x87/SSE/AVX) is in the registers ([`Kernel::switch_xstate`]).
    pub xstate_owner: Option<ThreadId>,
}

impl<M: Machine> Kernel<M> {
    pub const fn new(machine: M) -> Self {
        Kernel {
            machine,
            threads: Threads([const { None }; MAX_THREADS]),
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

    #[inline(always)]
    pub fn thread(&self, t: ThreadId) -> &Thread {
        self.threads.0[t as usize].as_ref().expect("live thread")
    }

    #[inline(always)]
    pub fn thread_mut(&mut self, t: ThreadId) -> &mut Thread {
        self.threads.0[t as usize].as_mut().expect("live thread")
    }

    #[inline]
    pub fn task(&self, index: u16) -> &Task<M::Space> {
        self.tasks[index as usize].obj.as_ref().expect("live task")
    }

    #[inline]
    pub fn task_mut(&mut self, index: u16) -> &mut Task<M::Space> {
        self.tasks[index as usize].obj.as_mut().expect("live task")
    }

    /// The registers and address space to return to for a [`Next::User`] thread.
    #[inline]
    pub fn context(&self, t: ThreadId) -> (&UserRegs, &M::Space) {
        let th = self.thread(t);
        (&th.regs, &self.task(th.task).space)
    }

    /// The current thread's task index.
    pub(crate) fn cur_task(&self) -> u16 {
        self.thread(self.current.expect("a current thread")).task
    }

    // ----- scheduling -----

    /// Makes a blocked or new thread ready.
    pub(crate) fn make_ready(&mut self, t: ThreadId) {
        let prio = {
            let th = self.thread_mut(t);
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
        let cur_blocked = self
            .current
            .is_some_and(|c| self.thread(c).state != ThreadState::Ready);
        let prio = self.thread(t).prio;
        if cur_blocked && self.run_queue.highest().is_none_or(|h| h <= prio) {
            self.thread_mut(t).state = ThreadState::Ready;
            self.current = Some(t);
        } else {
            self.make_ready(t);
        }
    }

    /// Sets a blocked thread's syscall result and makes it ready.
    pub(crate) fn complete(&mut self, t: ThreadId, result: Result<[u64; 4], (Error, u64)>) {
        if let Some(vi) = self.thread(t).vcpu {
            self.vcpu_call_done(vi, result.map(drop).map_err(|e| e.0));
            self.make_ready(t);
            return;
        }
        let regs = &mut self.thread_mut(t).regs;
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
                Next::User(t)
                    if self.threads.0[t as usize]
                        .as_ref()
                        .is_some_and(|th| th.vcpu.is_some()) =>
                {
                    if self.vcpu_prepare(t) {
                        return Next::Guest(t);
                    }
                    // It blocked again or stopped: pick another.
                }
                next => return next,
            }
        }
    }

    /// Picks the next thread (vCPU threads included).
    fn schedule_thread(&mut self) -> Next {
        if let Some(code) = self.exit_code {
            return Next::MachineExit(code);
        }
        let rotate = core::mem::take(&mut self.rotate);
        if let Some(c) = self.current {
            let (state, prio) = {
                let th = self.thread(c);
                (th.state, th.prio)
            };
            if state == ThreadState::Ready {
                let higher = self.run_queue.highest().is_some_and(|h| h > prio);
                let peer = self.run_queue.highest().is_some_and(|h| h == prio);
                if !(higher || rotate && peer) {
                    return Next::User(c);
                }
                self.run_queue.push(&mut self.threads, c, prio);
            }
        }
        self.current = self.run_queue.pop(&mut self.threads);
        match self.current {
            Some(t) => Next::User(t),
            None => Next::Idle,
        }
    }

    /// A timer tick: wakes sleepers whose time came and rotates the current thread.
    pub fn on_tick(&mut self, regs: Option<&UserRegs>) -> Next {
        if let (Some(c), Some(r)) = (self.current, regs) {
            self.thread_mut(c).regs = *r;
        }
        let now = self.machine.clock().0;
        for t in 0..MAX_THREADS as ThreadId {
            let due = matches!(
                self.threads.0[t as usize].as_ref().map(|th| th.state),
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
                loop {
                    let ep = slot_get_mut(&mut self.endpoints, r).expect("checked");
                    let t = match ep.senders.pop_front(&mut self.threads) {
                        Some(t) => t,
                        None => match ep.receivers.pop_front(&mut self.threads) {
                            Some(t) => t,
                            None => break,
                        },
                    };
                    self.complete(t, Err((Error::StaleCap, 0)));
                }
                slot_remove(&mut self.endpoints, r.index);
            }
            CapKind::Notification => {
                if slot_get(&self.notifications, r).is_none() {
                    return;
                }
                loop {
                    let n = slot_get_mut(&mut self.notifications, r).expect("checked");
                    match n.waiters.pop_front(&mut self.threads) {
                        Some(t) => self.complete(t, Err((Error::StaleCap, 0))),
                        None => break,
                    }
                }
                slot_remove(&mut self.notifications, r.index);
            }
            CapKind::Memory => {
                // Mappings hold references, so a memory object mapped somewhere is only
                // destroyed by revocation: unmap it from every task first.
                for ti in 0..MAX_TASKS as u16 {
                    if self.tasks[ti as usize].obj.is_none() {
                        continue;
                    }
                    for mi in 0..MAX_MAPPINGS {
                        let m = self.task(ti).mappings[mi];
                        if let Some(m) = m.filter(|m| m.mem == r) {
                            self.unmap_mapping(ti, mi, m, false);
                        }
                    }
                }
                if let Some(m) = slot_remove(&mut self.memory, r.index) {
                    self.machine.frames_free(m.phys, m.pages);
                }
            }
            CapKind::Task => {
                if slot_get(&self.tasks, r).is_some() {
                    self.end_task(r.index, Death::Killed);
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
        let cap = self.task(self.cur_task()).caps.lookup(slot, kind, rights)?;
        if !self.alive(cap.obj) {
            return Err(Error::StaleCap);
        }
        Ok(cap)
    }

    /// Puts a capability into a task's table, counting the reference.
    pub(crate) fn insert_cap(&mut self, task: u16, cap: Cap) -> Result<u64, Error> {
        let slot = self.task_mut(task).caps.insert(cap)?;
        self.acquire(cap.obj);
        Ok(slot)
    }

    /// A new memory object of `pages` zeroed frames, with no references yet.
    pub(crate) fn new_memory(
        &mut self,
        pages: u64,
        owner: Option<(u16, u32)>,
    ) -> Result<ObjRef, Error> {
        if pages == 0 || pages > MAX_MEMORY_PAGES {
            return Err(Error::BadLength);
        }
        if !self.memory.iter().any(|s| s.obj.is_none()) {
            return Err(Error::NoMemory);
        }
        let phys = self.machine.frames_alloc(pages).ok_or(Error::NoMemory)?;
        let (index, generation) = slot_insert(
            &mut self.memory,
            Memory {
                phys,
                pages,
                refs: 0,
                owner,
            },
        )
        .expect("checked for a free slot");
        Ok(ObjRef {
            kind: CapKind::Memory,
            index,
            generation,
        })
    }

    /// Pages of live memory objects that `owner` (task index, slot generation) allocated.
    pub(crate) fn pages_owned(&self, owner: (u16, u32)) -> u64 {
        self.memory
            .iter()
            .filter_map(|s| s.obj.as_ref())
            .filter(|m| m.owner == Some(owner))
            .map(|m| m.pages)
            .sum()
    }

    /// Maps a memory object into a task; the mapping holds a reference.
    pub(crate) fn map_memory(
        &mut self,
        task: u16,
        mem: ObjRef,
        va: u64,
        access: PageAccess,
    ) -> Result<(), Error> {
        let (phys, pages) = {
            let m = slot_get(&self.memory, mem).ok_or(Error::StaleCap)?;
            (m.phys, m.pages)
        };
        let end = va
            .checked_add(pages * PAGE_SIZE)
            .ok_or(Error::InvalidArgument)?;
        if !va.is_multiple_of(PAGE_SIZE)
            || va < abi::ipc::layout::USER_MIN
            || end > abi::ipc::layout::USER_END
        {
            return Err(Error::InvalidArgument);
        }
        let t = self.task(task);
        let overlaps = t
            .mappings
            .iter()
            .flatten()
            .any(|m| va < m.va + m.pages * PAGE_SIZE && m.va < end);
        if overlaps {
            return Err(Error::AddressInUse);
        }
        let free = t
            .mappings
            .iter()
            .position(Option::is_none)
            .ok_or(Error::NoMemory)?;
        let task_ref = self.tasks[task as usize].obj.as_mut().expect("live task");
        let r = self
            .machine
            .map_range(&mut task_ref.space, va, phys, pages, access);
        if let Err((e, mapped)) = r {
            self.task_mut(task).unmaps += 1;
            for j in 0..mapped {
                let task_ref = self.tasks[task as usize].obj.as_mut().expect("live task");
                self.machine.unmap(&mut task_ref.space, va + j * PAGE_SIZE);
            }
            return Err(match e {
                super::machine::MapError::AlreadyMapped => Error::AddressInUse,
                super::machine::MapError::NoMemory => Error::NoMemory,
                super::machine::MapError::BadAddress => Error::InvalidArgument,
            });
        }
        self.task_mut(task).mappings[free] = Some(Mapping { va, pages, mem });
        self.acquire(mem);
        Ok(())
    }

    /// Removes mapping `mi` of a task; `release` drops its reference (false while the
    /// object is being destroyed anyway).
    pub(crate) fn unmap_mapping(&mut self, task: u16, mi: usize, m: Mapping, release: bool) {
        self.task_mut(task).unmaps += 1;
        for i in 0..m.pages {
            let task_ref = self.tasks[task as usize].obj.as_mut().expect("live task");
            self.machine
                .unmap(&mut task_ref.space, m.va + i * PAGE_SIZE);
        }
        self.task_mut(task).mappings[mi] = None;
        if release {
            self.release(m.mem);
        }
    }

    // ----- tasks -----

    /// Loads boot module `module` into a new task with one suspended thread.
    pub fn spawn(
        &mut self,
        module: usize,
        generation: u64,
        prio: u8,
        fault_ep: Option<Cap>,
    ) -> Result<u16, Error> {
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
        let (ti, _) = slot_insert(
            &mut self.tasks,
            Task {
                name,
                generation,
                space,
                caps: CapTable::new(),
                prio,
                fault_ep: None,
                mappings: [None; MAX_MAPPINGS],
                threads: 0,
                main_thread: 0,
                unmaps: 0,
                page_budget: 0,
            },
        )
        .expect("checked for a free slot");
        if let Err(e) = self.load_image(ti, module, &plan) {
            self.end_task(ti, Death::Killed);
            return Err(e);
        }
        let t = self
            .new_thread(ti, UserRegs::new_thread(plan.entry, STACK_TOP, 0), prio)
            .expect("checked for a free thread");
        self.task_mut(ti).main_thread = t;
        if let Some(cap) = fault_ep {
            self.acquire(cap.obj);
            self.task_mut(ti).fault_ep = Some(cap);
        }
        Ok(ti)
    }

    fn load_image(&mut self, ti: u16, module: usize, plan: &image::LoadPlan) -> Result<(), Error> {
        for seg in &plan.segments {
            let mem = self.new_memory(seg.pages, None)?;
            let phys = slot_get(&self.memory, mem).expect("new").phys;
            // Copy through a bounce buffer: the module and the machine are both `self`.
            let mut off = 0;
            let mut chunk = [0u8; 256];
            while off < seg.file_len {
                let n = (seg.file_len - off).min(chunk.len());
                let (_, bytes) = self.machine.module(module).expect("checked");
                let from = seg.file_start + off;
                chunk[..n].copy_from_slice(&bytes[from..from + n]);
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
    pub(crate) fn new_thread(&mut self, ti: u16, regs: UserRegs, prio: u8) -> Option<ThreadId> {
        let i = self.threads.0.iter().position(Option::is_none)?;
        self.threads.0[i] = Some(Thread {
            task: ti,
            prio,
            state: ThreadState::Suspended,
            links: Links::default(),
            regs,
            msg: Message::empty(),
            reply_to: None,
            buf: 0,
            buf_cap: 0,
            checked_buf: None,
            vcpu: None,
        });
        self.task_mut(ti).threads += 1;
        self.xstate_new_thread(i as ThreadId);
        Some(i as ThreadId)
    }

    /// Takes a thread out of whatever it waits on and answers the callers it owes replies.
    pub(crate) fn detach(&mut self, t: ThreadId, dying_task: u16) {
        let (state, prio) = {
            let th = self.thread(t);
            (th.state, th.prio)
        };
        match state {
            ThreadState::Ready if self.current != Some(t) => {
                self.run_queue.remove(&mut self.threads, t, prio)
            }
            ThreadState::BlockedSend { ep, .. } => {
                if let Some(e) = self.endpoints[ep as usize].obj.as_mut() {
                    e.senders.remove(&mut self.threads, t);
                }
            }
            ThreadState::BlockedRecv { ep } => {
                if let Some(e) = self.endpoints[ep as usize].obj.as_mut() {
                    e.receivers.remove(&mut self.threads, t);
                }
            }
            ThreadState::BlockedWait { ntfn } => {
                if let Some(n) = self.notifications[ntfn as usize].obj.as_mut() {
                    n.waiters.remove(&mut self.threads, t);
                }
            }
            ThreadState::BlockedReply { server, .. } => {
                if let Some(s) = self.threads.0[server as usize].as_mut() {
                    if s.reply_to == Some(t) {
                        s.reply_to = None;
                    }
                }
            }
            ThreadState::BlockedRun { vcpu } => {
                // The vCPU stops with its runner: nobody else could hear why it stops, nor
                // run it again meanwhile (`Busy`).
                if let Some(v) = self.vcpus[vcpu as usize].obj.as_mut() {
                    if v.runner == Some(t) {
                        v.runner = None;
                        self.vcpu_stop(vcpu, abi::vmx::stop::PORTAL_GONE);
                    }
                }
            }
            _ => {}
        }
        if let Some(caller) = self.thread_mut(t).reply_to.take() {
            let ep = match self.thread(caller).state {
                ThreadState::BlockedReply { ep, .. } => ep,
                _ => u16::MAX,
            };
            let result = self.restart_result(ep, dying_task);
            self.complete(caller, Err(result));
        }
    }

    /// What a caller whose server died hears: `ServerRestarted` with the generation of the
    /// next incarnation when the endpoint is bound to the dying task, else `ServerGone`.
    fn restart_result(&self, ep: u16, dying_task: u16) -> (Error, u64) {
        let Some(e) = self.endpoints.get(ep as usize).and_then(|s| s.obj.as_ref()) else {
            return (Error::ServerGone, 0);
        };
        let bound_here = e.server.is_some_and(|(ti, _)| ti == dying_task);
        if bound_here && e.state != EndpointState::Closed {
            (Error::ServerRestarted, self.task(dying_task).generation + 1)
        } else if e.state == EndpointState::Restarting {
            (Error::ServerRestarted, e.generation + 1)
        } else {
            (Error::ServerGone, 0)
        }
    }

    /// Ends a task: detaches and frees its threads, answers callers, marks the endpoints it
    /// served as restarting, drops its capabilities and mappings, frees its address space,
    /// and sends the notice (if any) to its fault endpoint.
    pub fn end_task(&mut self, ti: u16, death: Death) {
        if self.tasks[ti as usize].obj.is_none() {
            return;
        }
        // vCPUs run on threads of the task that created them: they go with it.
        for vi in 0..MAX_VCPUS as u16 {
            let s = &self.vcpus[vi as usize];
            let mine = s.obj.as_ref().is_some_and(|v| {
                self.threads.0[v.thread as usize]
                    .as_ref()
                    .is_some_and(|th| th.task == ti)
            });
            if mine {
                let r = ObjRef {
                    kind: CapKind::Vcpu,
                    index: vi,
                    generation: s.generation,
                };
                self.destroy_vm_object(r);
            }
        }
        for t in 0..MAX_THREADS as ThreadId {
            if self.threads.0[t as usize]
                .as_ref()
                .is_some_and(|th| th.task == ti)
            {
                self.detach(t, ti);
                self.threads.0[t as usize] = None;
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
        for cap in self.task_mut(ti).caps.drain() {
            let _ = caps.push(cap);
        }
        for cap in caps {
            self.release(cap.obj);
        }
        // The address space goes whole, its leaf entries with its tables (one pass over the
        // tables, not a walk per mapped page); then the memory objects the mappings held.
        let mut held: heapless::Vec<ObjRef, MAX_MAPPINGS> = heapless::Vec::new();
        for m in self
            .task_mut(ti)
            .mappings
            .iter_mut()
            .filter_map(Option::take)
        {
            let _ = held.push(m.mem);
        }
        let task = slot_remove(&mut self.tasks, ti).expect("checked");
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
            self.thread_mut(c).regs = *regs;
            self.fault_current(vector, error_code, address);
        }
        self.schedule()
    }

    /// Ends the current thread's task with a notice.
    pub(crate) fn fault_current(&mut self, vector: u64, error_code: u64, address: u64) {
        let c = self.current.expect("a current thread");
        let ti = self.thread(c).task;
        let notice = FaultNotice {
            task: ti as u64,
            generation: self.task(ti).generation,
            vector,
            error_code,
            address,
            rip: self.thread(c).regs.rip,
        };
        self.end_task(ti, Death::Notice(notice));
    }

    /// Starts the first task (the supervisor, or `kernel-tests` in the `kernel` scenario)
    /// from module `module` with the spawn, machine and boot capabilities in their fixed
    /// slots and `arg` in its first thread's `rdi`.
    pub fn start_init(&mut self, module: usize, arg: u64) -> Result<u16, Error> {
        let ti = self.spawn(module, 1, super::queue::PRIORITIES as u8 - 2, None)?;
        self.init_task = Some(ti);
        self.task_mut(ti).page_budget = u64::MAX;
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
        let caps = &mut self.task_mut(ti).caps;
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
        let t = self.task(ti).main_thread;
        self.thread_mut(t).regs.rdi = arg;
        self.make_ready(t);
        Ok(ti)
    }
}
