//! References to objects: counted by capabilities and mappings, an object destroyed with
//! its last, and the capability lookups every syscall starts with.

use abi::{CapKind, Error, Rights};

use super::captable::{Cap, ObjRef};
use super::ids::{EndpointId, MemoryId, NotificationId, TaskId};
use super::kernel::{Death, Kernel};
use super::machine::Machine;
use super::objects::*;

impl<M: Machine> Kernel<M> {
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
}
