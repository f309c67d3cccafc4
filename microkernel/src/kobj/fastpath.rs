//! The IPC fast path: `call` to a waiting receiver and `reply_recv` to a waiting caller with
//! nothing queued, no capability transfer and a payload that fits, handled in one pass with a
//! single user-to-user copy and a direct switch. Anything else (and any failure before the
//! first state change) takes the general path in `ipc.rs`, which gives the same results;
//! `tests.rs` checks that both paths agree.

use abi::ipc::MAX_PAYLOAD;
use abi::{CapKind, Rights, NO_CAP};

use super::captable::{Cap, ObjRef};
use super::ids::{EndpointId, TaskId, ThreadId};
use super::kernel::{Kernel, Next};
use super::machine::Machine;
use super::objects::{slot_at, slot_at_mut, slot_get, EndpointState, ThreadState};

/// What both IPC fast paths read first: the arguments `(ep, buf, len, buf_cap, _, grant)`
/// of the calling thread, its task, the endpoint capability, whether its buffer is known
/// writable, and whom it owes a reply. The label is read where the commit stores it: held
/// through the checks, it cost a spill.
struct FastArgs {
    task: TaskId,
    cap: Cap,
    buf: u64,
    len: u64,
    /// At most [`MAX_PAYLOAD`].
    buf_cap: u64,
    /// The buffer `[buf, buf + buf_cap)` was found writable and nothing was unmapped since.
    known: bool,
    reply_to: Option<ThreadId>,
}

impl<M: Machine> Kernel<M> {
    /// The [`FastArgs`] of thread `c`'s syscall arguments (read where the entry saved
    /// them), when the capability is an endpoint with `need` and the message has no grant
    /// and fits; `None` otherwise.
    #[inline(always)]
    fn fast_args(&self, c: ThreadId, need: Rights) -> Option<FastArgs> {
        let th = self.threads.get(c)?;
        let (_, a) = th.regs.syscall_args();
        let (ep_slot, buf, len, buf_cap) = (a[0], a[1], a[2], a[3]);
        if a[5] != NO_CAP || len > MAX_PAYLOAD as u64 {
            return None;
        }
        let buf_cap = buf_cap.min(MAX_PAYLOAD as u64);
        let task = slot_at(&self.tasks, th.task).ok()?;
        let cap = task.caps.get(ep_slot).ok()?;
        if cap.obj.kind != CapKind::Endpoint || !cap.rights.contains(need) {
            return None;
        }
        Some(FastArgs {
            task: th.task,
            cap,
            buf,
            len,
            buf_cap,
            known: th
                .checked_buf
                .is_some_and(|b| b.holds(buf, buf_cap, task.unmaps)),
            reply_to: th.reply_to,
        })
    }

    /// Copies `len` bytes from `from`'s buffer at `src` to the receive buffer of thread `to`:
    /// the part of the fast paths that only a payload pays for, out of line (the receiver's
    /// task and buffer are read here, so the checks before it need not hold them). `None`
    /// leaves everything as it was (the copy checks both ranges before it writes).
    #[inline(never)]
    fn fast_copy(&mut self, from: TaskId, src: u64, len: u64, to: ThreadId) -> Option<()> {
        let (rt, rbuf) = {
            let th = self.threads.get(to)?;
            (th.task, th.buf)
        };
        let tasks = &self.tasks;
        let src_space = &slot_at(tasks, from).ok()?.space;
        let dst_space = &slot_at(tasks, rt).ok()?.space;
        self.machine
            .copy_user_to_user(src_space, src, dst_space, rbuf, len as usize)
            .ok()
    }

    /// The thread waiting to receive on endpoint `ep` (open) that a fast path may hand a
    /// message and the CPU: a plain thread (not a vCPU) owing no reply, with no thread of
    /// higher priority ready. With its `(task, buffer, capacity)`.
    #[inline(always)]
    pub(crate) fn waiting_receiver(&self, ep: ObjRef) -> Option<(ThreadId, (TaskId, u64, u64))> {
        let e = slot_get(&self.endpoints, ep)?;
        if e.state == EndpointState::Closed {
            return None;
        }
        let r = e.receivers.head?;
        let th = self.threads.get(r)?;
        if th.reply_to.is_some() || th.vcpu.is_some() || self.run_queue.outranks(th.prio) {
            return None;
        }
        Some((r, (th.task, th.buf, th.buf_cap)))
    }

    /// `call(ep, buf, len, buf_cap, label, grant)` straight to a waiting receiver, which
    /// runs next (returned).
    #[inline(always)]
    pub(crate) fn fast_call(&mut self, c: ThreadId) -> Option<ThreadId> {
        let f = self.fast_args(c, Rights::SEND)?;
        let (ct, cap, buf, len, buf_cap) = (f.task, f.cap, f.buf, f.len, f.buf_cap);
        let (r, (_, _, rcap)) = self.waiting_receiver(cap.obj)?;
        if len > rcap || (!f.known && self.check_receive_buffer(c, buf, buf_cap).is_none()) {
            return None;
        }
        if len > 0 {
            self.fast_copy(ct, buf, len, r)?;
        }
        // Committed: nothing below fails (the lookups found these objects above).
        let epi: EndpointId = cap.obj.id();
        let e = slot_at_mut(&mut self.endpoints, epi).ok()?;
        e.receivers.pop_front(&mut self.threads);
        let label = {
            let th = self.threads.get_mut(c)?;
            th.buf = buf;
            th.buf_cap = buf_cap;
            th.state = ThreadState::BlockedReply { server: r, ep: epi };
            // Read here, not held through the checks above.
            th.regs.syscall_args().1[4]
        };
        let th = self.threads.get_mut(r)?;
        th.regs.set_result(0, [len, label, cap.badge, NO_CAP]);
        th.reply_to = Some(c);
        th.state = ThreadState::Ready;
        self.current = Some(r);
        Some(r)
    }

    /// An exit message (already in vCPU thread `t`'s message buffer) called to portal `cap`
    /// when a handler waits there with a buffer that takes it and owes no other reply: what
    /// `send_loaded` would do, in one pass (`tests_vm.rs` runs exits both ways). `None`
    /// leaves everything as it was (the general path then delivers or queues it).
    pub(crate) fn fast_send_exit(&mut self, t: ThreadId, cap: Cap) -> Option<ThreadId> {
        let (r, (rt, rbuf, rcap)) = self.waiting_receiver(cap.obj)?;
        let (len, label, badge) = {
            let m = &self.threads.get(t)?.msg;
            (m.len, m.label, m.badge)
        };
        if len as u64 > rcap {
            return None;
        }
        let to = self.receive_buffer(r, rbuf, rcap)?;
        {
            let data = self.threads.get(t)?.msg.data.get(..len)?;
            match to {
                // Checked writable and in one page: no walk of the handler's tables.
                Some(phys) => self.machine.write_user_frame(phys, data),
                None => {
                    let space = &slot_at(&self.tasks, rt).ok()?.space;
                    self.machine.copy_to_user(space, rbuf, data).ok()?;
                }
            }
        }
        // Committed: nothing below fails (the lookups found these objects above).
        self.exit_delivered(t, r, cap.obj.id(), (len, label, badge))
    }

    /// The end of a fast exit delivery: vCPU thread `t`'s exit message (`len` bytes, with
    /// `label` and `badge`), already in the buffer of `r` (waiting at endpoint `epi`), is
    /// received: `t` waits for the reply and `r` runs. The callers found both threads and
    /// the endpoint: nothing here fails.
    #[inline(always)]
    pub(crate) fn exit_delivered(
        &mut self,
        t: ThreadId,
        r: ThreadId,
        epi: EndpointId,
        (len, label, badge): (usize, u64, u64),
    ) -> Option<ThreadId> {
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
        Some(r)
    }

    /// `reply_recv(ep, buf, reply_len, buf_cap, label, grant)` answering a caller when the
    /// endpoint has nothing queued: the server blocks receiving, the caller runs.
    #[inline(always)]
    pub(crate) fn fast_reply_recv(&mut self, c: ThreadId) -> Option<Next> {
        let f = self.fast_args(c, Rights::RECV)?;
        let (ct, cap, buf, len, buf_cap) = (f.task, f.cap, f.buf, f.len, f.buf_cap);
        let (known, caller) = (f.known, f.reply_to?);
        let ep = slot_get(&self.endpoints, cap.obj)?;
        if !ep.senders.is_empty() || !ep.notices.is_empty() {
            return None;
        }
        let (kcap, vcpu) = {
            let th = self.threads.get(caller)?;
            let waits = matches!(th.state, ThreadState::BlockedReply { server, .. } if server == c);
            if !waits || self.run_queue.outranks(th.prio) {
                return None;
            }
            (th.buf_cap, th.vcpu)
        };
        if vcpu.is_some() {
            // The answer to an exit message: into the vCPU thread's message buffer, where
            // `vcpu_prepare` reads it; only from inside the server's checked receive buffer,
            // so the copy cannot fail half way (the exit message must stay intact for a
            // re-send).
            if len > buf_cap {
                return None;
            }
            let from = self.receive_buffer(c, buf, buf_cap)?;
            let label = self.threads.get(c)?.regs.syscall_args().1[4];
            let vth = self.threads.get_mut(caller)?;
            let out = vth.msg.data.get_mut(..len as usize)?;
            match from {
                // Checked writable (so readable) and in one page: no walk.
                Some(phys) => self.machine.read_user_frame(phys, out),
                None => {
                    let space = &slot_at(&self.tasks, ct).ok()?.space;
                    self.machine.copy_from_user(space, buf, out).ok()?;
                }
            }
            vth.msg.len = len as usize;
            vth.msg.label = label;
        } else {
            if !known && self.check_receive_buffer(c, buf, buf_cap).is_none() {
                return None;
            }
            if len > kcap {
                return None;
            }
            if len > 0 {
                self.fast_copy(ct, buf, len, caller)?;
            }
        }
        // Committed: nothing below fails (the lookups found these objects above).
        let epi: EndpointId = cap.obj.id();
        let label = {
            let th = self.threads.get_mut(c)?;
            th.reply_to = None;
            th.buf = buf;
            th.buf_cap = buf_cap;
            th.state = ThreadState::BlockedRecv { ep: epi };
            th.regs.syscall_args().1[4]
        };
        let e = slot_at_mut(&mut self.endpoints, epi).ok()?;
        e.receivers.push_back(&mut self.threads, c);
        if let Some(vi) = vcpu {
            self.current = Some(caller);
            return Some(self.vcpu_replied(caller, vi));
        }
        let th = self.threads.get_mut(caller)?;
        th.regs.set_result(0, [len, label, 0, NO_CAP]);
        th.state = ThreadState::Ready;
        self.current = Some(caller);
        Some(Next::User(caller))
    }
}
