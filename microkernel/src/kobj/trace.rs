//! The exit trace ring ([`abi::trace`] is its layout): the kernel writes one record per exit
//! of a traced VM, time-stamped at the exit, when the handler receives the exit message, when
//! its reply arrives and at the VM entry that follows; the trace service reads the ring
//! through a read-only memory capability ([`abi::Sys::TraceAttach`]).
//!
//! The exit path never waits for the reader: a record that finds the ring full is dropped
//! and counted. A vCPU of an untraced VM pays one test per exit (`Vcpu::trace` is `None`).
//! While no VM is traced, every hook returns at its first test (`Kernel::traced_vms`).
//! One CPU runs everything, so there is one ring (the header names CPU 0).

use abi::trace::{self, flags, header, Record};
use abi::{CapKind, Error, Rights};

use super::captable::{Cap, ObjRef};
use super::ids::{ThreadId, VcpuId};
use super::ipc::err;
use super::ipc::SysResult;
use super::kernel::Kernel;
use super::machine::Machine;
use super::objects::{slot_at_mut, slot_get_mut};

/// The ring's state in the kernel (the header in the ring is a copy for the reader).
#[derive(Debug)]
pub struct TraceRing {
    /// The ring's memory object (the kernel holds one reference: it is never freed), made
    /// at the first [`abi::Sys::TraceAttach`].
    pub mem: Option<(ObjRef, u64)>,
    /// Records written since boot.
    pub head: u64,
    /// What the reader acknowledged.
    pub tail: u64,
    /// Records dropped because the ring was full.
    pub dropped: u64,
    /// The notification signalled when the unread records reach [`trace::WAKE_AT`].
    pub wake: Option<ObjRef>,
    /// Signalled since the last acknowledgement.
    pub woken: bool,
}

impl TraceRing {
    pub const fn new() -> Self {
        TraceRing {
            mem: None,
            head: 0,
            tail: 0,
            dropped: 0,
            wake: None,
            woken: false,
        }
    }
}

impl Default for TraceRing {
    fn default() -> Self {
        Self::new()
    }
}

// `write_ring_counters` writes head, dropped and tail in one go.
const _: () = assert!(header::DROPPED == header::HEAD + 8 && header::TAIL == header::HEAD + 16);

/// The notification bit the kernel signals (the trace service waits on nothing else there).
pub const WAKE_BIT: u64 = 1;

impl<M: Machine> Kernel<M> {
    /// `TraceAttach(trace, notification) -> (ring)`.
    pub(crate) fn sys_trace_attach(&mut self, trace_slot: u64, ntfn_slot: u64) -> SysResult {
        self.cap(trace_slot, CapKind::Trace, Rights::READ)
            .map_err(err)?;
        let ntfn = self
            .cap(ntfn_slot, CapKind::Notification, Rights::WRITE)
            .map_err(err)?;
        self.check_cap_slot()?;
        let mem = match self.trace.mem {
            Some((mem, _)) => mem,
            None => {
                let mem = self
                    .new_memory(trace::RING_PAGES as u64, None)
                    .map_err(err)?;
                self.acquire(mem);
                let phys = slot_get_mut(&mut self.memory, mem).map(|m| m.phys);
                let phys = phys.ok_or(err(Error::NoMemory))?;
                self.trace.mem = Some((mem, phys));
                self.write_ring_header_constants(phys);
                self.write_ring_counters();
                mem
            }
        };
        let cap = Cap {
            obj: mem,
            rights: Rights::READ,
            badge: 0,
        };
        let slot = self.insert_cap(self.cur_task()?, cap).map_err(err)?;
        self.trace.wake = Some(ntfn.obj);
        self.trace.woken = false;
        self.wake_reader_if_due();
        Ok(Some([slot, 0, 0, 0]))
    }

    /// `TraceAck(trace, tail)`.
    pub(crate) fn sys_trace_ack(&mut self, trace_slot: u64, tail: u64) -> SysResult {
        self.cap(trace_slot, CapKind::Trace, Rights::READ)
            .map_err(err)?;
        if tail < self.trace.tail || tail > self.trace.head {
            return Err(err(Error::InvalidArgument));
        }
        self.trace.tail = tail;
        self.trace.woken = false;
        self.write_ring_counters();
        self.wake_reader_if_due();
        Ok(Some([0; 4]))
    }

    /// `VmTrace(vm, on) -> (trace id)`.
    pub(crate) fn sys_vm_trace(&mut self, vm_slot: u64, on: u64) -> SysResult {
        let cap = self.cap(vm_slot, CapKind::Vm, Rights::WRITE).map_err(err)?;
        if on > 1 {
            return Err(err(Error::InvalidArgument));
        }
        let (id, was) = {
            let vm = slot_get_mut(&mut self.vms, cap.obj).ok_or(err(Error::StaleCap))?;
            let was = core::mem::replace(&mut vm.traced, on == 1);
            (vm.trace_id, was)
        };
        match (was, on == 1) {
            (false, true) => self.traced_vms += 1,
            (true, false) => self.traced_vms -= 1,
            _ => {}
        }
        let traced = (on == 1).then_some(id);
        for s in self.vcpus.iter_mut() {
            if let Some(v) = s.obj.as_mut().filter(|v| v.vm == cap.obj) {
                v.trace = traced;
                if traced.is_none() {
                    // An exit being handled when tracing stops is not recorded: no hook
                    // looks at it again once nothing is traced.
                    v.trace_record = None;
                }
            }
        }
        Ok(Some([u64::from(id), 0, 0, 0]))
    }

    /// A traced vCPU left the guest: starts its record (a record still open, whose entry
    /// never came, is written first).
    #[inline(always)]
    pub(crate) fn trace_exit(&mut self, vi: VcpuId, reason: u32, qualification: u64, tsc: u64) {
        if self.traced_vms != 0 {
            self.trace_exit_record(vi, reason, qualification, tsc);
        }
    }

    fn trace_exit_record(&mut self, vi: VcpuId, reason: u32, qualification: u64, tsc: u64) {
        let Ok(v) = slot_at_mut(&mut self.vcpus, vi) else {
            return;
        };
        let Some(vm) = v.trace else {
            return;
        };
        let open = v.trace_record.replace(Record {
            vm,
            vcpu: v.id,
            reason,
            flags: 0,
            qualification,
            t_exit: tsc,
            ..Record::default()
        });
        if let Some(r) = open {
            self.trace_push(r);
        }
    }

    /// Marks the open record of vCPU `vi` as answered by the kernel (no handler stamps).
    #[inline]
    pub(crate) fn trace_kernel_handled(&mut self, vi: VcpuId) {
        if self.traced_vms == 0 {
            return;
        }
        if let Some(r) = slot_at_mut(&mut self.vcpus, vi)
            .ok()
            .and_then(|v| v.trace_record.as_mut())
        {
            r.flags |= flags::KERNEL;
        }
    }

    /// The handler took the exit message of vCPU thread `t`.
    #[inline]
    pub(crate) fn trace_received(&mut self, t: ThreadId) {
        if self.traced_vms == 0 {
            return;
        }
        if let Some(vi) = self.vcpu_of(t) {
            self.trace_stamp(vi, |r, now| r.t_recv = now);
        }
    }

    /// The handler's reply to vCPU `vi`'s exit arrived.
    #[inline]
    pub(crate) fn trace_replied(&mut self, vi: VcpuId) {
        if self.traced_vms == 0 {
            return;
        }
        self.trace_stamp(vi, |r, now| r.t_reply = now);
    }

    /// Stamps vCPU `vi`'s open record (if any) with the time now.
    fn trace_stamp(&mut self, vi: VcpuId, set: impl FnOnce(&mut Record, u64)) {
        if let Some(r) = slot_at_mut(&mut self.vcpus, vi)
            .ok()
            .and_then(|v| v.trace_record.as_mut())
        {
            set(r, self.machine.tsc());
        }
    }

    /// Thread `t` enters its guest now: closes and writes its vCPU's open record.
    #[inline(always)]
    pub fn trace_entry(&mut self, t: ThreadId) {
        if self.traced_vms != 0 {
            self.trace_entry_record(t);
        }
    }

    fn trace_entry_record(&mut self, t: ThreadId) {
        if let Some(vi) = self.vcpu_of(t) {
            let now = self.machine.tsc();
            self.trace_close(vi, |r| r.t_entry = now);
        }
    }

    /// vCPU `vi` stopped: its open record is written without an entry.
    pub(crate) fn trace_stopped(&mut self, vi: VcpuId) {
        if self.traced_vms == 0 {
            return;
        }
        self.trace_close(vi, |r| r.flags |= flags::STOPPED);
    }

    /// Takes vCPU `vi`'s open record (if any), finishes it with `finish` and writes it.
    fn trace_close(&mut self, vi: VcpuId, finish: impl FnOnce(&mut Record)) {
        if let Some(mut r) = slot_at_mut(&mut self.vcpus, vi)
            .ok()
            .and_then(|v| v.trace_record.take())
        {
            finish(&mut r);
            self.trace_push(r);
        }
    }

    /// Writes a record into the ring, or counts it dropped when the ring is full or not
    /// made yet (nobody attached).
    fn trace_push(&mut self, r: Record) {
        let Some((_, phys)) = self.trace.mem else {
            self.trace.dropped += 1;
            return;
        };
        let t = &mut self.trace;
        if t.head - t.tail >= trace::CAPACITY as u64 {
            t.dropped += 1;
            let dropped = t.dropped;
            self.machine
                .write_owned_words(phys + header::DROPPED as u64, &[dropped]);
            return;
        }
        let slot = (t.head % trace::CAPACITY as u64) as usize;
        t.head += 1;
        let head = t.head;
        self.machine
            .write_owned_words(phys + trace::record_offset(slot) as u64, &r.words());
        self.machine
            .write_owned_words(phys + header::HEAD as u64, &[head]);
        self.wake_reader_if_due();
    }

    /// Signals the reader once when the unread records reach [`trace::WAKE_AT`].
    fn wake_reader_if_due(&mut self) {
        let t = &self.trace;
        if t.woken || t.head - t.tail < trace::WAKE_AT as u64 {
            return;
        }
        if let Some(n) = t.wake {
            self.trace.woken = true;
            self.signal_object(n, WAKE_BIT);
        }
    }

    fn write_ring_header_constants(&mut self, phys: u64) {
        let mut h = [0u8; header::SIZE];
        h[header::MAGIC..header::MAGIC + 4].copy_from_slice(&trace::MAGIC.to_le_bytes());
        h[header::VERSION..header::VERSION + 2].copy_from_slice(&trace::VERSION.to_le_bytes());
        h[header::RECORD_SIZE..header::RECORD_SIZE + 2]
            .copy_from_slice(&(trace::RECORD_SIZE as u16).to_le_bytes());
        h[header::CAPACITY..header::CAPACITY + 4]
            .copy_from_slice(&(trace::CAPACITY as u32).to_le_bytes());
        self.machine.write_phys(phys, &h);
    }

    /// Copies head, dropped and tail into the ring's header.
    fn write_ring_counters(&mut self) {
        let Some((_, phys)) = self.trace.mem else {
            return;
        };
        let t = &self.trace;
        let words = [t.head, t.dropped, t.tail];
        self.machine
            .write_owned_words(phys + header::HEAD as u64, &words);
    }
}
