//! The IPC fast path: `call` to a waiting receiver and `reply_recv` to a waiting caller with
//! nothing queued, no capability transfer and a payload that fits, handled in one pass with a
//! single user-to-user copy and a direct switch. Anything else (and any failure before the
//! first state change) takes the general path in `ipc.rs`, which gives the same results;
//! `tests.rs` checks that both paths agree.

use abi::ipc::MAX_PAYLOAD;
use abi::{CapKind, Rights, NO_CAP};

use super::captable::ObjRef;
use super::ids::{EndpointId, TaskId, ThreadId};
use super::kernel::{Kernel, Next};
use super::machine::Machine;
use super::objects::{slot_at, slot_at_mut, slot_get, EndpointState, ThreadState};

impl<M: Machine> Kernel<M> {
    /// The part both fast paths share: `c`'s next receive buffer `[buf, buf + buf_cap)` must
    /// be writable, and its `len` payload bytes at `buf` go to `to = (task, buffer, capacity)`
    /// (which must hold them all). `None` leaves everything as it was.
    fn fast_transfer(
        &mut self,
        c: ThreadId,
        buf: u64,
        buf_cap: u64,
        len: u64,
        to: (TaskId, u64, u64),
    ) -> Option<()> {
        let (to_task, to_buf, to_cap) = to;
        if len > to_cap || !self.buffer_writable(c, buf, buf_cap) {
            return None;
        }
        if len > 0 {
            let tasks = &self.tasks;
            let src = &slot_at(tasks, self.threads.get(c)?.task).ok()?.space;
            let dst = &slot_at(tasks, to_task).ok()?.space;
            self.machine
                .copy_user_to_user(src, buf, dst, to_buf, len as usize)
                .ok()?;
        }
        Some(())
    }

    /// The thread waiting to receive on endpoint `ep` (open) that a fast path may hand a
    /// message and the CPU: a plain thread (not a vCPU) owing no reply, with no thread of
    /// higher priority ready. With its `(task, buffer, capacity)`.
    #[inline(always)]
    fn waiting_receiver(&self, ep: ObjRef) -> Option<(ThreadId, (TaskId, u64, u64))> {
        let e = slot_get(&self.endpoints, ep)?;
        if e.state == EndpointState::Closed {
            return None;
        }
        let r = e.receivers.head?;
        let th = self.threads.get(r)?;
        if th.reply_to.is_some()
            || th.vcpu.is_some()
            || self.run_queue.highest().is_some_and(|h| h > th.prio)
        {
            return None;
        }
        Some((r, (th.task, th.buf, th.buf_cap)))
    }

    /// `call(ep, buf, len, buf_cap, label, grant)` straight to a waiting receiver.
    pub(crate) fn fast_call(&mut self, c: ThreadId, a: [u64; 6]) -> Option<Next> {
        let (ep_slot, buf, len, buf_cap, label) = (a[0], a[1], a[2], a[3], a[4]);
        if a[5] != NO_CAP || len > MAX_PAYLOAD as u64 {
            return None;
        }
        let buf_cap = buf_cap.min(MAX_PAYLOAD as u64);
        let ct = self.threads.get(c)?.task;
        let cap = self.task(ct).ok()?.caps.get(ep_slot).ok()?;
        if cap.obj.kind != CapKind::Endpoint || !cap.rights.contains(Rights::SEND) {
            return None;
        }
        let (r, to) = self.waiting_receiver(cap.obj)?;
        self.fast_transfer(c, buf, buf_cap, len, to)?;
        // Committed: nothing below fails (the lookups found these objects above).
        let epi: EndpointId = cap.obj.id();
        let e = slot_at_mut(&mut self.endpoints, epi).ok()?;
        e.receivers.remove(&mut self.threads, r);
        {
            let th = self.threads.get_mut(c)?;
            th.buf = buf;
            th.buf_cap = buf_cap;
            th.state = ThreadState::BlockedReply { server: r, ep: epi };
        }
        let th = self.threads.get_mut(r)?;
        th.regs.set_result(0, [len, label, cap.badge, NO_CAP]);
        th.reply_to = Some(c);
        th.state = ThreadState::Ready;
        self.current = Some(r);
        Some(Next::User(r))
    }

    /// An exit message (already in vCPU thread `t`'s message buffer) called to portal `cap`
    /// when a handler waits there with a buffer that takes it and owes no other reply: what
    /// `send_loaded` would do, in one pass (`tests_vm.rs` runs exits both ways). `None`
    /// leaves everything as it was (the general path then delivers or queues it).
    pub(crate) fn fast_send_exit(&mut self, t: ThreadId, cap: super::captable::Cap) -> Option<()> {
        let (r, (rt, rbuf, rcap)) = self.waiting_receiver(cap.obj)?;
        let (len, label, badge) = {
            let m = &self.threads.get(t)?.msg;
            (m.len, m.label, m.badge)
        };
        if len as u64 > rcap || !self.buffer_writable(r, rbuf, rcap) {
            return None;
        }
        {
            let space = &slot_at(&self.tasks, rt).ok()?.space;
            let msg = &self.threads.get(t)?.msg;
            self.machine
                .copy_to_user(space, rbuf, msg.data.get(..len)?)
                .ok()?;
        }
        // Committed: nothing below fails (the lookups found these objects above).
        let epi: EndpointId = cap.obj.id();
        let e = slot_at_mut(&mut self.endpoints, epi).ok()?;
        e.receivers.remove(&mut self.threads, r);
        self.threads.get_mut(t)?.state = ThreadState::BlockedReply { server: r, ep: epi };
        let th = self.threads.get_mut(r)?;
        th.regs.set_result(0, [len as u64, label, badge, NO_CAP]);
        th.reply_to = Some(t);
        th.state = ThreadState::Ready;
        self.current = Some(r);
        // A traced VM's record notes the delivery, as `transfer` does.
        self.trace_received(t);
        Some(())
    }

    /// `reply_recv(ep, buf, reply_len, buf_cap, label, grant)` answering a caller when the
    /// endpoint has nothing queued: the server blocks receiving, the caller runs.
    pub(crate) fn fast_reply_recv(&mut self, c: ThreadId, a: [u64; 6]) -> Option<Next> {
        let (ep_slot, buf, len, buf_cap, label) = (a[0], a[1], a[2], a[3], a[4]);
        if a[5] != NO_CAP || len > MAX_PAYLOAD as u64 {
            return None;
        }
        let buf_cap = buf_cap.min(MAX_PAYLOAD as u64);
        let (ct, caller) = {
            let th = self.threads.get(c)?;
            (th.task, th.reply_to?)
        };
        let cap = self.task(ct).ok()?.caps.get(ep_slot).ok()?;
        if cap.obj.kind != CapKind::Endpoint || !cap.rights.contains(Rights::RECV) {
            return None;
        }
        let ep = slot_get(&self.endpoints, cap.obj)?;
        if !ep.senders.is_empty() || !ep.notices.is_empty() {
            return None;
        }
        let (kt, kbuf, kcap, kprio, vcpu) = {
            let th = self.threads.get(caller)?;
            if !matches!(th.state, ThreadState::BlockedReply { server, .. } if server == c) {
                return None;
            }
            (th.task, th.buf, th.buf_cap, th.prio, th.vcpu)
        };
        if self.run_queue.highest().is_some_and(|h| h > kprio) {
            return None;
        }
        if vcpu.is_some() {
            // The answer to an exit message: into the vCPU thread's message buffer, where
            // `vcpu_prepare` reads it. Only from inside the checked buffer, so the copy cannot
            // fail half way (the exit message must stay intact for a re-send).
            if len > buf_cap || !self.buffer_writable(c, buf, buf_cap) {
                return None;
            }
            let vth = self.threads.get_mut(caller)?;
            let space = &slot_at(&self.tasks, ct).ok()?.space;
            self.machine
                .copy_from_user(space, buf, &mut vth.msg.data[..len as usize])
                .ok()?;
            vth.msg.len = len as usize;
            vth.msg.label = label;
        } else {
            self.fast_transfer(c, buf, buf_cap, len, (kt, kbuf, kcap))?;
        }
        // Committed: nothing below fails (the lookups found these objects above).
        let epi: EndpointId = cap.obj.id();
        {
            let th = self.threads.get_mut(c)?;
            th.reply_to = None;
            th.buf = buf;
            th.buf_cap = buf_cap;
            th.state = ThreadState::BlockedRecv { ep: epi };
        }
        let e = slot_at_mut(&mut self.endpoints, epi).ok()?;
        e.receivers.push_back(&mut self.threads, c);
        if let Some(vi) = vcpu {
            self.threads.get_mut(caller)?.state = ThreadState::Ready;
            self.current = Some(caller);
            self.vcpu_call_done(vi, Ok(()));
            return Some(if self.vcpu_prepare(caller) {
                Next::Guest(caller)
            } else {
                self.schedule()
            });
        }
        let th = self.threads.get_mut(caller)?;
        th.regs.set_result(0, [len, label, 0, NO_CAP]);
        th.state = ThreadState::Ready;
        self.current = Some(caller);
        Some(Next::User(caller))
    }
}
