//! Syscall entry: decoding and every syscall except the endpoint ones (`ipc.rs`).

use abi::ipc::layout::{USER_END, USER_MIN};
use abi::ipc::{FAULT_EXIT, FAULT_PANIC};
use abi::{CapKind, Error, Rights, Sys, NO_CAP};

use super::captable::{Cap, ObjRef};
use super::ids::{EndpointId, NotificationId, TaskId, ThreadId};
use super::ipc::{err, SysResult};
use super::kernel::{Death, Kernel, Next};
use super::machine::{Machine, PageAccess};
use super::objects::*;
use super::queue::PRIORITIES;
use super::regs::UserRegs;

/// Threads one task may create (its vCPU threads count too while they exist). The VMM
/// service needs 9: its main and exit threads and a runner per application processor of an
/// 8-vCPU VM.
pub const MAX_THREADS_PER_TASK: u16 = 12;
/// Longest `DebugWrite`.
pub const MAX_DEBUG_WRITE: u64 = 4096;

fn user_addr(va: u64) -> bool {
    (USER_MIN..USER_END).contains(&va)
}

impl<M: Machine> Kernel<M> {
    /// A `syscall` from the current thread, whose registers are `regs`.
    pub fn on_syscall(&mut self, regs: &UserRegs) -> Next {
        if let Some(th) = self.current.and_then(|c| self.threads.get_mut(c)) {
            th.regs = *regs;
        }
        self.on_syscall_saved()
    }

    /// [`Kernel::on_syscall`] with the registers already in the current thread's storage
    /// (the entry saved them there). Always inlined into the kernel's one caller
    /// (`kentry::syscall_saved`): the fast paths then run in that frame, with no call and no
    /// second prologue.
    #[inline(always)]
    pub fn on_syscall_saved(&mut self) -> Next {
        let Some((c, th)) = self.current.and_then(|c| Some((c, self.threads.get(c)?))) else {
            return self.schedule();
        };
        if self.fast_ipc {
            // The fast paths read the arguments where the entry saved them.
            match th.regs.rax {
                n if n == Sys::Call as u64 => {
                    if let Some(r) = self.fast_call(c) {
                        return Next::User(r);
                    }
                }
                n if n == Sys::ReplyRecv as u64 => {
                    if let Some(next) = self.fast_reply_recv(c) {
                        return next;
                    }
                }
                _ => {}
            }
        }
        let Some(th) = self.threads.get(c) else {
            return self.schedule();
        };
        let (n, a) = th.regs.syscall_args();
        let result = match Sys::from_u64(n) {
            Some(sys) => self.dispatch(sys, a),
            None => Err(err(Error::UnknownSyscall)),
        };
        if let Some(th) = self.threads.get_mut(c) {
            match result {
                Ok(Some(ret)) => th.regs.set_result(0, ret),
                Err((e, info)) => th.regs.set_result(e as u64, [info, 0, 0, 0]),
                Ok(None) => {}
            }
        }
        self.schedule()
    }

    fn dispatch(&mut self, sys: Sys, a: [u64; 6]) -> SysResult {
        match sys {
            Sys::DebugWrite => self.sys_debug_write(a[0], a[1]),
            Sys::TaskExit => {
                self.fault_current(FAULT_EXIT, a[0], 0);
                Ok(None)
            }
            Sys::Panic => self.sys_panic(a[0], a[1]),
            Sys::Yield => {
                self.rotate = true;
                Ok(Some([0; 4]))
            }
            Sys::Clock => {
                let (ticks, hz) = self.machine.clock();
                Ok(Some([ticks, hz, self.machine.tsc_hz(), 0]))
            }
            Sys::Sleep => self.sys_sleep(a[0]),
            Sys::ThreadCreate => self.sys_thread_create(a),
            Sys::ThreadExit => self.sys_thread_exit(),
            Sys::Call => self.sys_call(a),
            Sys::Send => self.sys_send(a),
            Sys::Recv => self.sys_recv(a),
            Sys::Reply => self.sys_reply(a),
            Sys::ReplyRecv => self.sys_reply_recv(a),
            Sys::EndpointCreate => self.sys_endpoint_create(),
            Sys::NotificationCreate => self.sys_notification_create(),
            Sys::Signal => self.sys_signal(a[0], a[1]),
            Sys::Wait => self.sys_wait(a[0], true),
            Sys::Poll => self.sys_wait(a[0], false),
            Sys::MemAlloc => self.sys_mem_alloc(a[0]),
            Sys::MemMap => self.sys_mem_map(a[0], a[1], a[2]),
            Sys::MemUnmap => self.sys_mem_unmap(a[0], a[1]),
            Sys::MemInfo => {
                let cap = self
                    .cap(a[0], CapKind::Memory, Rights::empty())
                    .map_err(err)?;
                let m = slot_get(&self.memory, cap.obj).ok_or(err(Error::StaleCap))?;
                Ok(Some([m.pages, m.phys, 0, 0]))
            }
            Sys::CapCopy => self.sys_cap_copy(a[0], a[1], a[2]),
            Sys::CapDelete => {
                let ti = self.cur_task()?;
                let cap = self.task_mut(ti)?.caps.remove(a[0]).map_err(err)?;
                self.release(cap.obj);
                Ok(Some([0; 4]))
            }
            Sys::CapRevoke => self.sys_cap_revoke(a[0]),
            Sys::CapInfo => {
                let cap = self.task(self.cur_task()?)?.caps.get(a[0]).map_err(err)?;
                if !self.alive(cap.obj) {
                    return Err(err(Error::StaleCap));
                }
                Ok(Some([cap.obj.kind as u64, cap.rights.bits(), cap.badge, 0]))
            }
            Sys::TaskSpawn => self.sys_task_spawn(a),
            Sys::TaskGrant => self.sys_task_grant(a[0], a[1], a[2]),
            Sys::TaskStart => self.sys_task_start(a[0], a[1]),
            Sys::TaskSetPages => self.sys_task_set_pages(a[0], a[1]),
            Sys::TaskKill => {
                let cap = self.cap(a[0], CapKind::Task, Rights::WRITE).map_err(err)?;
                self.end_task(cap.obj.id(), Death::Killed);
                Ok(Some([0; 4]))
            }
            Sys::EndpointBind => self.sys_endpoint_bind(a[0], a[1]),
            Sys::EndpointClose => self.sys_endpoint_close(a[0]),
            Sys::ModuleInfo => {
                self.cap(a[3], CapKind::Boot, Rights::READ).map_err(err)?;
                self.sys_module_info(a[0], a[1], a[2])
            }
            Sys::MachineExit => {
                self.cap(a[0], CapKind::Machine, Rights::empty())
                    .map_err(err)?;
                self.exit_code = Some(a[1] as u32);
                // No fast path runs past the exit: the general path schedules it.
                self.fast_ipc = false;
                Ok(Some([0; 4]))
            }
            Sys::ModuleRead => {
                self.cap(a[4], CapKind::Boot, Rights::READ).map_err(err)?;
                self.sys_module_read(a)
            }
            Sys::VmCreate => {
                self.cap(a[2], CapKind::Vmx, Rights::empty()).map_err(err)?;
                self.sys_vm_create(a[0], a[1])
            }
            Sys::VmMapRam => self.sys_vm_map_ram(a),
            Sys::VmUnmap => self.sys_vm_unmap(a),
            Sys::VcpuCreate => self.sys_vcpu_create(a[0], a[1]),
            Sys::VcpuPortal => self.sys_vcpu_portal(a),
            Sys::VcpuState => self.sys_vcpu_state(a),
            Sys::VcpuRun => self.sys_vcpu_run(a[0]),
            Sys::VmSetShadow => self.sys_vm_set_shadow(a),
            Sys::TraceAttach => self.sys_trace_attach(a[0], a[1]),
            Sys::TraceAck => self.sys_trace_ack(a[0], a[1]),
            Sys::VmTrace => self.sys_vm_trace(a[0], a[1]),
            Sys::KernelCmdline => {
                self.cap(a[2], CapKind::Boot, Rights::READ).map_err(err)?;
                let mut tmp = [0u8; 256];
                let line = self.machine.cmdline().as_bytes();
                let n = line.len().min(tmp.len());
                tmp[..n].copy_from_slice(&line[..n]);
                self.copy_to_current(a[0], a[1], &tmp[..n])?;
                Ok(Some([n as u64, 0, 0, 0]))
            }
        }
    }

    /// Copies `data` to the current task at `buf` (capacity `cap`): `BadLength` if it does
    /// not fit, `BadPointer` if the buffer is not writable.
    fn copy_to_current(&mut self, buf: u64, cap: u64, data: &[u8]) -> Result<(), (Error, u64)> {
        if (data.len() as u64) > cap {
            return Err((Error::BadLength, data.len() as u64));
        }
        let ti = self.cur_task()?;
        let space = &slot_at(&self.tasks, ti)?.space;
        self.machine
            .copy_to_user(space, buf, data)
            .map_err(|_| err(Error::BadPointer))
    }

    /// `ModuleRead(index, offset, buf, len) -> (copied)`.
    fn sys_module_read(&mut self, a: [u64; 6]) -> SysResult {
        let (index, offset, buf, len) = (a[0], a[1], a[2], a[3]);
        let size = {
            let (_, bytes) = self
                .machine
                .module(index as usize)
                .ok_or(err(Error::InvalidArgument))?;
            bytes.len() as u64
        };
        let n = len.min(size.saturating_sub(offset));
        let ti = self.cur_task()?;
        if n > 0
            && !self
                .machine
                .user_range_ok(&self.task(ti)?.space, buf, n, true)
        {
            return Err(err(Error::BadPointer));
        }
        let mut chunk = [0u8; 512];
        let mut done = 0;
        while done < n {
            let k = (n - done).min(chunk.len() as u64) as usize;
            let from = (offset + done) as usize;
            {
                // Inside the module: `n` stops at its end.
                let bytes = self
                    .machine
                    .module(index as usize)
                    .and_then(|(_, bytes)| bytes.get(from..from + k))
                    .ok_or(err(Error::InvalidArgument))?;
                chunk[..k].copy_from_slice(bytes);
            }
            self.copy_to_current(buf + done, k as u64, &chunk[..k])?;
            done += k as u64;
        }
        Ok(Some([n, 0, 0, 0]))
    }

    fn sys_debug_write(&mut self, ptr: u64, len: u64) -> SysResult {
        if len > MAX_DEBUG_WRITE {
            return Err(err(Error::BadLength));
        }
        let ti = self.cur_task()?;
        let space = &self.task(ti)?.space;
        if !self.machine.user_range_ok(space, ptr, len, false) {
            return Err(err(Error::BadPointer));
        }
        let name = self.task(ti)?.name.clone();
        let mut chunk = [0u8; 256];
        let mut off = 0;
        while off < len {
            let n = (len - off).min(chunk.len() as u64) as usize;
            let space = &slot_at(&self.tasks, ti)?.space;
            self.machine
                .copy_from_user(space, ptr + off, &mut chunk[..n])
                .map_err(|_| err(Error::BadPointer))?;
            self.machine.console_write(&name, &chunk[..n]);
            off += n as u64;
        }
        Ok(Some([len, 0, 0, 0]))
    }

    fn sys_panic(&mut self, ptr: u64, len: u64) -> SysResult {
        let ti = self.cur_task()?;
        let mut line = [0u8; 220];
        line[..7].copy_from_slice(b"panic: ");
        let n = len.min(200) as usize;
        let space = &slot_at(&self.tasks, ti)?.space;
        let mut end = if self
            .machine
            .copy_from_user(space, ptr, &mut line[7..7 + n])
            .is_ok()
        {
            7 + n
        } else {
            let what = b"(message at a bad address)";
            line[7..7 + what.len()].copy_from_slice(what);
            7 + what.len()
        };
        if line[end - 1] != b'\n' {
            line[end] = b'\n';
            end += 1;
        }
        let name = self.task(ti)?.name.clone();
        self.machine.console_write(&name, &line[..end]);
        let rip = self.thread(self.cur()?)?.regs.rip;
        self.fault_current(FAULT_PANIC, 0, rip);
        Ok(None)
    }

    fn sys_sleep(&mut self, ticks: u64) -> SysResult {
        if ticks == 0 {
            self.rotate = true;
            return Ok(Some([0; 4]));
        }
        let now = self.machine.clock().0;
        let c = self.cur()?;
        self.thread_mut(c)?.state = ThreadState::Sleeping {
            until: now.saturating_add(ticks),
        };
        Ok(None)
    }

    fn sys_thread_create(&mut self, a: [u64; 6]) -> SysResult {
        let (entry, stack_top, arg, prio) = (a[0], a[1], a[2], a[3]);
        let ti = self.cur_task()?;
        if !user_addr(entry) || !user_addr(stack_top.wrapping_sub(8)) || stack_top % 16 != 0 {
            return Err(err(Error::InvalidArgument));
        }
        if prio >= PRIORITIES as u64 || prio > self.task(ti)?.prio as u64 {
            return Err(err(Error::InvalidArgument));
        }
        if self.task(ti)?.threads >= MAX_THREADS_PER_TASK {
            return Err(err(Error::NoMemory));
        }
        let regs = UserRegs::new_thread(entry, stack_top, arg);
        let t = self
            .new_thread(ti, regs, prio as u8)
            .ok_or(err(Error::NoMemory))?;
        self.make_ready(t);
        Ok(Some([t.raw() as u64, 0, 0, 0]))
    }

    fn sys_thread_exit(&mut self) -> SysResult {
        let ti = self.cur_task()?;
        if self.task(ti)?.threads <= 1 {
            self.fault_current(FAULT_EXIT, 0, 0);
            return Ok(None);
        }
        let c = self.cur()?;
        self.end_thread(c);
        Ok(None)
    }

    /// The decode check of every syscall that creates an object: the capability to it needs
    /// a slot, found before anything is made (a refused call leaves no trace, not an object
    /// made and destroyed again).
    pub(crate) fn check_cap_slot(&self) -> Result<(), (Error, u64)> {
        if self.task(self.cur_task()?)?.caps.has_free_slot() {
            Ok(())
        } else {
            Err(err(Error::NoMemory))
        }
    }

    /// Puts a capability with every right to a new object into the current task. The caller
    /// checked for a slot ([`Kernel::check_cap_slot`]); were there none, the object goes.
    pub(crate) fn new_cap_for_current(&mut self, obj: ObjRef) -> Result<u64, (Error, u64)> {
        let ti = self.cur_task()?;
        let cap = Cap {
            obj,
            rights: Rights::all(),
            badge: 0,
        };
        match self.insert_cap(ti, cap) {
            Ok(slot) => Ok(slot),
            Err(e) => {
                self.destroy(obj);
                Err(err(e))
            }
        }
    }

    /// Whether the calling task may create one more endpoint or notification, owning `owned`
    /// live ones of that kind with `free` slots left in the table: the first task always;
    /// others up to [`OBJECT_QUOTA`], and never into the supervisor's reserve.
    fn within_quota(&self, owned: usize, free: usize) -> bool {
        self.cur_task().is_ok_and(|t| self.init_task == Some(t))
            || (owned < OBJECT_QUOTA && free > SUPERVISOR_RESERVE)
    }

    fn sys_endpoint_create(&mut self) -> SysResult {
        let owner = self.owner_of(self.cur_task()?)?;
        let owned = self
            .endpoints
            .iter()
            .filter(|s| s.obj.as_ref().is_some_and(|e| e.owner == owner))
            .count();
        let free = self.endpoints.iter().filter(|s| s.obj.is_none()).count();
        if !self.within_quota(owned, free) {
            return Err(err(Error::NoMemory));
        }
        self.check_cap_slot()?;
        let (index, generation) = slot_insert::<EndpointId, _>(
            &mut self.endpoints,
            Endpoint {
                senders: Default::default(),
                receivers: Default::default(),
                server: None,
                generation: 0,
                state: EndpointState::Open,
                notices: heapless::Deque::new(),
                refs: 0,
                owner,
            },
        )
        .map_err(|_| err(Error::NoMemory))?;
        let obj = ObjRef::new(CapKind::Endpoint, index, generation);
        Ok(Some([self.new_cap_for_current(obj)?, 0, 0, 0]))
    }

    fn sys_notification_create(&mut self) -> SysResult {
        let owner = self.owner_of(self.cur_task()?)?;
        let owned = self
            .notifications
            .iter()
            .filter(|s| s.obj.as_ref().is_some_and(|n| n.owner == owner))
            .count();
        let free = self
            .notifications
            .iter()
            .filter(|s| s.obj.is_none())
            .count();
        if !self.within_quota(owned, free) {
            return Err(err(Error::NoMemory));
        }
        self.check_cap_slot()?;
        let (index, generation) = slot_insert::<NotificationId, _>(
            &mut self.notifications,
            Notification {
                bits: 0,
                waiters: Default::default(),
                refs: 0,
                owner,
            },
        )
        .map_err(|_| err(Error::NoMemory))?;
        let obj = ObjRef::new(CapKind::Notification, index, generation);
        Ok(Some([self.new_cap_for_current(obj)?, 0, 0, 0]))
    }

    fn sys_signal(&mut self, slot: u64, bits: u64) -> SysResult {
        let cap = self
            .cap(slot, CapKind::Notification, Rights::WRITE)
            .map_err(err)?;
        self.signal_object(cap.obj, bits);
        Ok(Some([0; 4]))
    }

    /// Sets `bits` in notification `r` (if it lives) and wakes its first waiter.
    pub(crate) fn signal_object(&mut self, r: ObjRef, bits: u64) {
        let Some(n) = slot_get_mut(&mut self.notifications, r) else {
            return;
        };
        n.bits |= bits;
        if n.bits != 0 {
            if let Some(w) = n.waiters.pop_front(&mut self.threads) {
                let got = slot_get_mut(&mut self.notifications, r)
                    .map_or(0, |n| core::mem::take(&mut n.bits));
                self.complete(w, Ok([got, 0, 0, 0]));
            }
        }
    }

    fn sys_wait(&mut self, slot: u64, block: bool) -> SysResult {
        let cap = self
            .cap(slot, CapKind::Notification, Rights::READ)
            .map_err(err)?;
        let c = self.cur()?;
        let n = slot_get_mut(&mut self.notifications, cap.obj).ok_or(err(Error::StaleCap))?;
        let bits = core::mem::take(&mut n.bits);
        if bits != 0 || !block {
            return Ok(Some([bits, 0, 0, 0]));
        }
        n.waiters.push_back(&mut self.threads, c);
        self.thread_mut(c)?.state = ThreadState::BlockedWait { ntfn: cap.obj.id() };
        Ok(None)
    }

    /// `MemAlloc(pages)`: everything is checked before a frame is taken: the length, the
    /// caller's page budget (the first task has none), the frames only the first task may
    /// use ([`FRAME_RESERVE`]) and a free capability slot.
    fn sys_mem_alloc(&mut self, pages: u64) -> SysResult {
        if pages == 0 || pages > MAX_MEMORY_PAGES {
            return Err(err(Error::BadLength));
        }
        let ti = self.cur_task()?;
        let owner = self.owner_of(ti)?;
        if self.init_task != Some(ti) {
            let budget = self.task(ti)?.page_budget;
            let in_use = self.pages_owned(owner);
            let available = self.machine.frames_available();
            if in_use + pages > budget || available < pages + FRAME_RESERVE {
                return Err(err(Error::NoMemory));
            }
        }
        self.check_cap_slot()?;
        let owner = (self.init_task != Some(ti)).then_some(owner);
        let obj = self.new_memory(pages, owner).map_err(err)?;
        Ok(Some([self.new_cap_for_current(obj)?, 0, 0, 0]))
    }

    /// `TaskSetPages(task, pages) -> (previous, in_use)`.
    fn sys_task_set_pages(&mut self, task: u64, pages: u64) -> SysResult {
        let cap = self.cap(task, CapKind::Task, Rights::WRITE).map_err(err)?;
        let ti: TaskId = cap.obj.id();
        let in_use = self.pages_owned((ti, cap.obj.generation));
        let previous = core::mem::replace(&mut self.task_mut(ti)?.page_budget, pages);
        Ok(Some([previous, in_use, 0, 0]))
    }

    fn sys_mem_map(&mut self, slot: u64, va: u64, rights: u64) -> SysResult {
        let want = Rights::from_bits(rights).ok_or(err(Error::InvalidArgument))?;
        let map_rights = Rights::READ | Rights::WRITE | Rights::EXEC;
        if !map_rights.contains(want)
            || !want.contains(Rights::READ)
            || want.contains(Rights::WRITE | Rights::EXEC)
        {
            return Err(err(Error::InvalidArgument));
        }
        let cap = self.cap(slot, CapKind::Memory, want).map_err(err)?;
        let access = PageAccess {
            write: want.contains(Rights::WRITE),
            exec: want.contains(Rights::EXEC),
        };
        let ti = self.cur_task()?;
        self.map_memory(ti, cap.obj, va, access).map_err(err)?;
        Ok(Some([0; 4]))
    }

    fn sys_mem_unmap(&mut self, slot: u64, va: u64) -> SysResult {
        let cap = self
            .cap(slot, CapKind::Memory, Rights::empty())
            .map_err(err)?;
        let ti = self.cur_task()?;
        let found = self
            .task(ti)?
            .mappings
            .iter()
            .enumerate()
            .find_map(|(i, m)| m.filter(|m| m.va == va && m.mem == cap.obj).map(|m| (i, m)));
        let (mi, m) = found.ok_or(err(Error::InvalidArgument))?;
        self.unmap_mapping(ti, mi, m, true);
        Ok(Some([0; 4]))
    }

    fn sys_cap_copy(&mut self, slot: u64, rights: u64, badge: u64) -> SysResult {
        let ti = self.cur_task()?;
        let mut cap = self.task(ti)?.caps.get(slot).map_err(err)?;
        if !self.alive(cap.obj) {
            return Err(err(Error::StaleCap));
        }
        if matches!(cap.obj.kind, CapKind::Spawn | CapKind::Machine) {
            return Err(err(Error::WrongCapKind));
        }
        cap.rights &= Rights::from_bits_truncate(rights);
        if cap.obj.kind == CapKind::Endpoint && cap.badge == 0 {
            cap.badge = badge;
        }
        Ok(Some([self.insert_cap(ti, cap).map_err(err)?, 0, 0, 0]))
    }

    fn sys_cap_revoke(&mut self, slot: u64) -> SysResult {
        let ti = self.cur_task()?;
        let cap = self.task(ti)?.caps.get(slot).map_err(err)?;
        if !cap.rights.contains(Rights::REVOKE) {
            return Err(err(Error::NoRights));
        }
        if matches!(cap.obj.kind, CapKind::Spawn | CapKind::Machine) {
            return Err(err(Error::WrongCapKind));
        }
        if !self.alive(cap.obj) {
            return Err(err(Error::StaleCap));
        }
        // Guest RAM and shadow page pools stay while a VM uses them: the hardware reaches
        // their frames through the EPT or the shadow root without any mapping the kernel
        // could take away (freeing them would hand a guest the frames' next owner).
        if cap.obj.kind == CapKind::Memory && self.memory_used_by_vm(cap.obj) {
            return Err(err(Error::Busy));
        }
        let own_task = cap.obj.kind == CapKind::Task && cap.obj.id::<TaskId>() == ti;
        if !own_task {
            let _ = self.task_mut(ti)?.caps.remove(slot);
        }
        self.destroy(cap.obj);
        Ok(Some([0; 4]))
    }

    fn sys_task_spawn(&mut self, a: [u64; 6]) -> SysResult {
        let (module, generation, prio, fault_slot, spawn_slot) = (a[0], a[1], a[2], a[3], a[4]);
        self.cap(spawn_slot, CapKind::Spawn, Rights::empty())
            .map_err(err)?;
        let fault_ep = if fault_slot == NO_CAP {
            None
        } else {
            Some(
                self.cap(fault_slot, CapKind::Endpoint, Rights::SEND)
                    .map_err(err)?,
            )
        };
        let ti = self.cur_task()?;
        if prio > self.task(ti)?.prio as u64 {
            return Err(err(Error::InvalidArgument));
        }
        let module = usize::try_from(module).map_err(|_| err(Error::InvalidArgument))?;
        // Everything that can fail is checked before the task exists: a refused spawn leaves
        // no trace (not a task started and killed again).
        self.check_cap_slot()?;
        let new = self
            .spawn(module, generation, prio as u8, fault_ep)
            .map_err(err)?;
        let Ok((_, generation)) = self.owner_of(new) else {
            return Err(err(Error::NoMemory));
        };
        let obj = ObjRef::new(CapKind::Task, new, generation);
        let cap = Cap {
            obj,
            rights: Rights::all(),
            badge: 0,
        };
        match self.insert_cap(ti, cap) {
            Ok(slot) => Ok(Some([slot, 0, 0, 0])),
            Err(e) => {
                self.end_task(new, Death::Killed);
                Err(err(e))
            }
        }
    }

    fn sys_task_grant(&mut self, task: u64, slot: u64, rights: u64) -> SysResult {
        let tcap = self.cap(task, CapKind::Task, Rights::WRITE).map_err(err)?;
        let ti = self.cur_task()?;
        let mut cap = self.task(ti)?.caps.get(slot).map_err(err)?;
        if !self.alive(cap.obj) {
            return Err(err(Error::StaleCap));
        }
        cap.rights &= Rights::from_bits_truncate(rights);
        let got = self.insert_cap(tcap.obj.id(), cap).map_err(err)?;
        Ok(Some([got, 0, 0, 0]))
    }

    fn sys_task_start(&mut self, task: u64, arg: u64) -> SysResult {
        let tcap = self.cap(task, CapKind::Task, Rights::WRITE).map_err(err)?;
        let ti: TaskId = tcap.obj.id();
        let t = self.task(ti)?.main_thread;
        // The main thread may have exited since (and its slot been reused): only a live,
        // never-started thread of this task, not a vCPU's, is started.
        let startable = self.threads.get(t).is_some_and(|th| {
            th.task == ti && th.state == ThreadState::Suspended && th.vcpu.is_none()
        });
        if !startable {
            return Err(err(Error::InvalidArgument));
        }
        self.thread_mut(t)?.regs.rdi = arg;
        self.make_ready(t);
        Ok(Some([0; 4]))
    }

    fn sys_endpoint_bind(&mut self, ep: u64, task: u64) -> SysResult {
        let ecap = self
            .cap(ep, CapKind::Endpoint, Rights::REVOKE)
            .map_err(err)?;
        let tcap = self.cap(task, CapKind::Task, Rights::WRITE).map_err(err)?;
        let generation = self.task(tcap.obj.id())?.generation;
        let e = slot_get_mut(&mut self.endpoints, ecap.obj).ok_or(err(Error::StaleCap))?;
        e.server = Some((tcap.obj.id(), tcap.obj.generation));
        e.generation = generation;
        e.state = EndpointState::Open;
        Ok(Some([0; 4]))
    }

    fn sys_endpoint_close(&mut self, ep: u64) -> SysResult {
        let ecap = self
            .cap(ep, CapKind::Endpoint, Rights::REVOKE)
            .map_err(err)?;
        let e = slot_get_mut(&mut self.endpoints, ecap.obj).ok_or(err(Error::StaleCap))?;
        e.state = EndpointState::Closed;
        e.server = None;
        while let Some(e) = slot_get_mut(&mut self.endpoints, ecap.obj) {
            match e.senders.pop_front(&mut self.threads) {
                Some(s) => self.complete(s, Err(err(Error::ServerGone))),
                None => break,
            }
        }
        Ok(Some([0; 4]))
    }

    fn sys_module_info(&mut self, index: u64, buf: u64, cap: u64) -> SysResult {
        let count = self.machine.module_count() as u64;
        let i = usize::try_from(index).map_err(|_| err(Error::InvalidArgument))?;
        let (name, size) = {
            let (name, bytes) = self.machine.module(i).ok_or(err(Error::InvalidArgument))?;
            let mut tmp: heapless::Vec<u8, { abi::MODULE_CMDLINE_MAX }> = heapless::Vec::new();
            let n = name.len().min(abi::MODULE_CMDLINE_MAX);
            let _ = tmp.extend_from_slice(&name.as_bytes()[..n]);
            (tmp, bytes.len() as u64)
        };
        self.copy_to_current(buf, cap, &name)?;
        Ok(Some([name.len() as u64, size, count, 0]))
    }

    /// Ends one thread of a task that keeps others.
    fn end_thread(&mut self, t: ThreadId) {
        let Ok(ti) = self.thread(t).map(|th| th.task) else {
            return;
        };
        self.detach(t, Some(ti));
        self.threads.clear(t);
        if let Ok(task) = self.task_mut(ti) {
            task.threads -= 1;
        }
        if self.current == Some(t) {
            self.current = None;
        }
    }
}
