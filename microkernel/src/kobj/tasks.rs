//! Tasks: loaded from boot modules with their first thread, their threads created and
//! detached, their death and the notice it sends, and the first task's start.

use abi::cap::slot;
use abi::ipc::layout::{STACK_PAGES, STACK_TOP};
use abi::ipc::{FaultNotice, FAULT_LABEL};
use abi::{CapKind, Error, Rights};
use heapless::String;

use super::captable::{Cap, CapTable, ObjRef};
use super::ids::{EndpointId, Gone, TaskId, ThreadId, VcpuId};
use super::image;
use super::kernel::{Death, Kernel, Next};
use super::machine::{Machine, PageAccess};
use super::objects::*;
use super::regs::UserRegs;
use super::vm::MAX_VCPUS;
use crate::PAGE_SIZE;

impl<M: Machine> Kernel<M> {
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
