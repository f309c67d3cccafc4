//! Endpoint IPC: `call`, `send`, `recv`, `reply`, `reply_recv`. A message is copied from the
//! sender into the kernel when it is sent (so a bad buffer fails the sender at once) and from
//! the kernel into the receiver's buffer, which was checked when it started receiving.

use abi::ipc::{FaultNotice, FAULT_LABEL, MAX_PAYLOAD};
use abi::{CapKind, Error, Rights, NO_CAP};

use super::ids::{EndpointId, Gone, TaskId, ThreadId};
use super::kernel::Kernel;
use super::machine::Machine;
use super::objects::*;
use crate::PAGE_SIZE;

/// A syscall's outcome: results now, or `None` when the thread blocked (its result is set
/// when it wakes); errors carry one extra value for `rdi`.
pub type SysResult = Result<Option<[u64; 4]>, (Error, u64)>;

pub(crate) fn err(e: Error) -> (Error, u64) {
    (e, 0)
}

/// Copies a kernel-held message into a task's buffer. Returns the bytes copied and whether
/// the message was cut short.
fn copy_out<M: Machine>(
    machine: &mut M,
    tasks: &[Slot<Task<M::Space>>],
    task: TaskId,
    buf: u64,
    buf_cap: u64,
    msg: &Message,
) -> Result<bool, Error> {
    let n = msg.len.min(buf_cap as usize);
    let space = &slot_at(tasks, task)?.space;
    machine
        .copy_to_user(space, buf, &msg.data[..n])
        .map_err(|_| Error::BadPointer)?;
    Ok(n < msg.len)
}

impl<M: Machine> Kernel<M> {
    /// Copies the current thread's outgoing message in from its buffer.
    fn load_message(
        &mut self,
        ep_cap: super::captable::Cap,
        buf: u64,
        len: u64,
        label: u64,
        grant: u64,
    ) -> Result<(), (Error, u64)> {
        if len > MAX_PAYLOAD as u64 {
            return Err(err(Error::BadLength));
        }
        let grant_cap = if grant == NO_CAP {
            None
        } else {
            if !ep_cap.rights.contains(Rights::GRANT) {
                return Err(err(Error::NoRights));
            }
            let g = self.task(self.cur_task()?)?.caps.get(grant).map_err(err)?;
            if !self.alive(g.obj) {
                return Err(err(Error::StaleCap));
            }
            Some(g)
        };
        let c = self.cur()?;
        let ti = self.cur_task()?;
        let th = self.threads.get_mut(c).ok_or(Gone)?;
        let space = &slot_at(&self.tasks, ti)?.space;
        self.machine
            .copy_from_user(space, buf, &mut th.msg.data[..len as usize])
            .map_err(|_| err(Error::BadPointer))?;
        th.msg.len = len as usize;
        th.msg.label = label;
        th.msg.grant = grant_cap;
        th.msg.badge = ep_cap.badge;
        Ok(())
    }

    /// Checks and records where the current thread takes its next message.
    fn set_receive_buffer(&mut self, buf: u64, buf_cap: u64) -> Result<(), (Error, u64)> {
        let cap = buf_cap.min(MAX_PAYLOAD as u64);
        let c = self.cur()?;
        if !self.buffer_writable(c, buf, cap) {
            return Err(err(Error::BadPointer));
        }
        let th = self.thread_mut(c)?;
        th.buf = buf;
        th.buf_cap = cap;
        Ok(())
    }

    /// Whether thread `t` may receive into `[buf, buf + cap)`, remembering a positive answer
    /// until its task unmaps something.
    pub(crate) fn buffer_writable(&mut self, t: ThreadId, buf: u64, cap: u64) -> bool {
        self.receive_buffer(t, buf, cap).is_some()
    }

    /// [`Kernel::buffer_writable`], with where the buffer is in physical memory when it
    /// lies in one page (`Some(None)` when it does not): `None` if it is not writable.
    #[inline(always)]
    pub(crate) fn receive_buffer(
        &mut self,
        t: ThreadId,
        buf: u64,
        cap: u64,
    ) -> Option<Option<u64>> {
        let th = self.threads.get(t)?;
        let unmaps = slot_at(&self.tasks, th.task).ok()?.unmaps;
        match &th.checked_buf {
            Some(known) if known.holds(buf, cap, unmaps) => Some(known.phys),
            _ => self.check_receive_buffer(t, buf, cap).map(|b| b.phys),
        }
    }

    /// [`Kernel::receive_buffer`] without a remembered answer: walks the task's tables.
    #[inline(never)]
    pub(crate) fn check_receive_buffer(
        &mut self,
        t: ThreadId,
        buf: u64,
        cap: u64,
    ) -> Option<CheckedBuf> {
        let th = self.threads.get_mut(t)?;
        let task = slot_at(&self.tasks, th.task).ok()?;
        let unmaps = task.unmaps;
        if !self.machine.user_range_ok(&task.space, buf, cap, true) {
            return None;
        }
        let one_page = cap > 0 && (buf & (PAGE_SIZE - 1)) + cap <= PAGE_SIZE;
        let checked = CheckedBuf {
            buf,
            cap,
            unmaps,
            phys: if one_page {
                self.machine.user_frame(&task.space, buf, true)
            } else {
                None
            },
        };
        th.checked_buf = Some(checked);
        Some(checked)
    }

    /// Moves the message held by `from` (a sender, or a replier) to `to`'s buffer, with its
    /// capability. Returns `to`'s syscall result.
    fn transfer(&mut self, from: ThreadId, to: ThreadId) -> Result<[u64; 4], (Error, u64)> {
        if self.traced_vms != 0 && self.thread(from)?.vcpu.is_some() {
            // An exit message of a traced VM's vCPU reaches its handler.
            self.trace_received(from);
        }
        if self.thread(to)?.vcpu.is_some() {
            // A reply to an exit message: the kernel keeps it for `vcpu_prepare` (only the
            // bytes; a grant to a vCPU is dropped).
            let (len, label) = {
                let m = &self.thread(from)?.msg;
                (m.len.min(MAX_PAYLOAD), m.label)
            };
            let [Some(src), Some(dst)] = self
                .threads
                .0
                .get_disjoint_mut([from.index(), to.index()])
                .map_err(|_| err(Error::InvalidArgument))?
            else {
                return Err(err(Error::InvalidArgument));
            };
            dst.msg.data[..len].copy_from_slice(&src.msg.data[..len]);
            dst.msg.len = len;
            dst.msg.label = label;
            return Ok([len as u64, label, 0, NO_CAP]);
        }
        let (to_task, buf, buf_cap) = {
            let t = self.thread(to)?;
            (t.task, t.buf, t.buf_cap)
        };
        let msg = &self.threads.get(from).ok_or(Gone)?.msg;
        let (label, len, badge, grant) = (msg.label, msg.len, msg.badge, msg.grant);
        let cut =
            copy_out(&mut self.machine, &self.tasks, to_task, buf, buf_cap, msg).map_err(err)?;
        let got = match grant {
            Some(g) if self.alive(g.obj) => self.insert_cap(to_task, g).unwrap_or(NO_CAP),
            _ => NO_CAP,
        };
        if cut {
            return Err((Error::Truncated, len as u64));
        }
        Ok([len as u64, label, badge, got])
    }

    /// Delivers a fault notice to the current thread, which is receiving.
    fn take_notice(&mut self, notice: FaultNotice, badge: u64) -> SysResult {
        let c = self.cur()?;
        let (task, buf, buf_cap) = {
            let t = self.thread(c)?;
            (t.task, t.buf, t.buf_cap)
        };
        let mut msg = Message::empty();
        msg.label = FAULT_LABEL;
        msg.len = FaultNotice::SIZE;
        msg.data[..FaultNotice::SIZE].copy_from_slice(&notice.to_bytes());
        let cut =
            copy_out(&mut self.machine, &self.tasks, task, buf, buf_cap, &msg).map_err(err)?;
        if cut {
            return Err((Error::Truncated, FaultNotice::SIZE as u64));
        }
        Ok(Some([FaultNotice::SIZE as u64, FAULT_LABEL, badge, NO_CAP]))
    }

    /// Delivers a kernel-built message (a fault notice) to a thread blocked in `recv`.
    pub(crate) fn deliver(&mut self, to: ThreadId, msg: &Message) {
        let Ok(t) = self.thread(to) else {
            return;
        };
        let (to_task, buf, buf_cap) = (t.task, t.buf, t.buf_cap);
        let result = match copy_out(&mut self.machine, &self.tasks, to_task, buf, buf_cap, msg) {
            Ok(false) => (0, [msg.len as u64, msg.label, msg.badge, NO_CAP]),
            Ok(true) => (Error::Truncated as u64, [msg.len as u64, 0, 0, 0]),
            Err(e) => (e as u64, [0; 4]),
        };
        if let Ok(th) = self.thread_mut(to) {
            th.regs.set_result(result.0, result.1);
        }
    }

    /// `call(ep, buf, send_len, buf_cap, label, grant)`.
    pub(crate) fn sys_call(&mut self, a: [u64; 6]) -> SysResult {
        self.sys_send_common(a[0], a[1], a[2], Some(a[3]), a[4], a[5])
    }

    /// `send(ep, buf, len, label, grant)`.
    pub(crate) fn sys_send(&mut self, a: [u64; 6]) -> SysResult {
        self.sys_send_common(a[0], a[1], a[2], None, a[3], a[4])
    }

    fn sys_send_common(
        &mut self,
        ep: u64,
        buf: u64,
        len: u64,
        reply_cap: Option<u64>,
        label: u64,
        grant: u64,
    ) -> SysResult {
        let cap = self.cap(ep, CapKind::Endpoint, Rights::SEND).map_err(err)?;
        if len > MAX_PAYLOAD as u64 {
            return Err(err(Error::BadLength));
        }
        let call = reply_cap.is_some();
        if let Some(rc) = reply_cap {
            self.set_receive_buffer(buf, rc)?;
        }
        self.load_message(cap, buf, len, label, grant)?;
        let c = self.cur()?;
        let epi = cap.obj.id();
        let e = slot_at(&self.endpoints, epi)?;
        if e.state == EndpointState::Closed {
            return Err(err(Error::ServerGone));
        }
        self.send_loaded(c, epi, call)
    }

    /// Sends the message thread `c` holds on endpoint `epi` (open): to a waiting receiver,
    /// or into the sender queue. A `call` then waits for the reply.
    pub(crate) fn send_loaded(&mut self, c: ThreadId, epi: EndpointId, call: bool) -> SysResult {
        let e = slot_at_mut(&mut self.endpoints, epi)?;
        let Some(r) = e.receivers.pop_front(&mut self.threads) else {
            e.senders.push_back(&mut self.threads, c);
            self.thread_mut(c)?.state = ThreadState::BlockedSend { ep: epi, call };
            return Ok(None);
        };
        let result = self.transfer(c, r);
        self.set_regs(r, result);
        if call {
            self.thread_mut(c)?.state = ThreadState::BlockedReply { server: r, ep: epi };
            self.set_reply_to(r, c);
            self.wake_direct(r);
            Ok(None)
        } else {
            self.make_ready(r);
            Ok(Some([0; 4]))
        }
    }

    fn set_regs(&mut self, t: ThreadId, result: Result<[u64; 4], (Error, u64)>) {
        let Some(th) = self.threads.get_mut(t) else {
            return;
        };
        if let Some(vi) = th.vcpu {
            self.vcpu_call_done(vi, result.map(drop).map_err(|e| e.0));
            return;
        }
        let regs = &mut th.regs;
        match result {
            Ok(ret) => regs.set_result(0, ret),
            Err((e, info)) => regs.set_result(e as u64, [info, 0, 0, 0]),
        }
    }

    /// Records that `server` owes `caller` a reply; a caller it still owed one to is told
    /// the server moved on.
    fn set_reply_to(&mut self, server: ThreadId, caller: ThreadId) {
        let old = self
            .threads
            .get_mut(server)
            .and_then(|th| th.reply_to.replace(caller));
        if let Some(old) = old {
            self.complete(old, Err(err(Error::ServerGone)));
        }
    }

    /// `recv(ep, buf, buf_cap)`.
    pub(crate) fn sys_recv(&mut self, a: [u64; 6]) -> SysResult {
        let cap = self
            .cap(a[0], CapKind::Endpoint, Rights::RECV)
            .map_err(err)?;
        self.set_receive_buffer(a[1], a[2])?;
        self.receive(cap.obj.id())
    }

    /// The receiving half: a pending notice, a queued sender, or block.
    fn receive(&mut self, epi: EndpointId) -> SysResult {
        let c = self.cur()?;
        let e = slot_at_mut(&mut self.endpoints, epi)?;
        if let Some((notice, badge)) = e.notices.pop_front() {
            return self.take_notice(notice, badge);
        }
        let Some(s) = e.senders.pop_front(&mut self.threads) else {
            e.receivers.push_back(&mut self.threads, c);
            self.thread_mut(c)?.state = ThreadState::BlockedRecv { ep: epi };
            return Ok(None);
        };
        let result = self.transfer(s, c);
        match self.thread(s)?.state {
            ThreadState::BlockedSend { call: true, .. } => {
                self.thread_mut(s)?.state = ThreadState::BlockedReply { server: c, ep: epi };
                self.set_reply_to(c, s);
            }
            _ => self.complete(s, Ok([0; 4])),
        }
        result.map(Some)
    }

    /// The replying half: copies the reply in and hands it to the caller. Returns the
    /// caller to wake (the caller of `reply_recv` wakes it after receiving).
    fn reply_part(
        &mut self,
        buf: u64,
        len: u64,
        label: u64,
        grant: u64,
    ) -> Result<ThreadId, (Error, u64)> {
        let c = self.cur()?;
        let caller = self.thread(c)?.reply_to.ok_or(err(Error::NoCaller))?;
        let reply_ep = super::captable::Cap {
            obj: super::captable::ObjRef {
                kind: CapKind::Endpoint,
                index: 0,
                generation: 0,
            },
            rights: Rights::GRANT,
            badge: 0,
        };
        self.load_message(reply_ep, buf, len, label, grant)?;
        self.thread_mut(c)?.reply_to = None;
        let result = self.transfer(c, caller);
        self.set_regs(caller, result);
        Ok(caller)
    }

    /// `reply(buf, len, label, grant)`.
    pub(crate) fn sys_reply(&mut self, a: [u64; 6]) -> SysResult {
        let caller = self.reply_part(a[0], a[1], a[2], a[3])?;
        self.make_ready(caller);
        Ok(Some([0; 4]))
    }

    /// `reply_recv(ep, buf, reply_len, buf_cap, label, grant)`: no caller to answer is not an
    /// error here (the first call of a server loop, or a caller that died).
    pub(crate) fn sys_reply_recv(&mut self, a: [u64; 6]) -> SysResult {
        let cap = self
            .cap(a[0], CapKind::Endpoint, Rights::RECV)
            .map_err(err)?;
        // The receive buffer is checked before the reply goes: a call refused for it must not
        // have answered the caller.
        self.set_receive_buffer(a[1], a[3])?;
        let c = self.cur()?;
        let caller = if self.thread(c)?.reply_to.is_some() {
            Some(self.reply_part(a[1], a[2], a[4], a[5])?)
        } else {
            None
        };
        let received = self.receive(cap.obj.id());
        if let Some(caller) = caller {
            // The caller's registers already hold its result.
            self.wake_direct(caller);
        }
        received
    }
}
