//! The VM and vCPU objects' lives: `VmCreate`, the shadow-pool registration
//! (`VmSetShadow`), EPT mapping (`VmMapRam`, `VmUnmap`), `VcpuCreate`, `VcpuPortal` and
//! `VcpuRun`; stopping a vCPU; and the reference counts that destroy a VM (its vCPUs first)
//! or a vCPU when the last capability goes.
//!
//! The rule that lives here: a VM's EPT only ever maps its own RAM, a portal names a
//! non-kernel-handled exit reason and only CPUID, VMCALL and port I/O may be reflected, and
//! a destroyed object leaves no thread, queue entry or reference behind.

use abi::vmx::{self, field, group, reason, stop, vm_flags, EXIT_REASONS};
use abi::{CapKind, Error, Rights, NO_CAP};

use super::{Portal, Vcpu, VcpuRun, Vm, MAX_VCPUS};
use crate::kobj::captable::ObjRef;
use crate::kobj::ids::{ThreadId, VcpuId, VmId};
use crate::kobj::ipc::{err, SysResult};
use crate::kobj::kernel::Kernel;
use crate::kobj::machine::Machine;
use crate::kobj::objects::*;
use crate::kobj::shadow::{self, Pool, ShadowVm};
use crate::PAGE_SIZE;

impl<M: Machine> Kernel<M> {
    pub(crate) fn sys_vm_create(&mut self, ram: u64, flags: u64) -> SysResult {
        if !self.machine.vmx_available() {
            return Err(err(Error::NoVmx));
        }
        let audit_alone = flags & vm_flags::AUDIT != 0 && flags & vm_flags::SHADOW == 0;
        if flags & !vm_flags::ALL != 0 || audit_alone {
            return Err(err(Error::InvalidArgument));
        }
        let cap = self
            .cap(ram, CapKind::Memory, Rights::READ | Rights::WRITE)
            .map_err(err)?;
        let (ram_phys, ram_pages) = {
            let m = slot_get(&self.memory, cap.obj).ok_or(err(Error::StaleCap))?;
            (m.phys, m.pages)
        };
        if !self.vms.iter().any(|s| s.obj.is_none()) {
            return Err(err(Error::NoMemory));
        }
        self.check_cap_slot()?;
        let shadow = if flags & vm_flags::SHADOW != 0 {
            let root = self.machine.frames_alloc(1).ok_or(err(Error::NoMemory))?;
            if root >= 1 << 32 {
                self.machine.frames_free(root, 1);
                return Err(err(Error::NoMemory));
            }
            Some(ShadowVm {
                empty_root: root,
                audit: flags & vm_flags::AUDIT != 0,
                pool: None,
            })
        } else {
            None
        };
        let Some(ept) = self.machine.ept_new() else {
            if let Some(s) = shadow {
                self.machine.frames_free(s.empty_root, 1);
            }
            return Err(err(Error::NoMemory));
        };
        let vm = Vm {
            ram: cap.obj,
            ram_phys,
            ram_pages,
            ept,
            shadow,
            refs: 0,
            trace_id: self.next_vm_trace_id,
            traced: false,
        };
        let (index, generation) = match slot_insert::<VmId, _>(&mut self.vms, vm) {
            Ok(slot) => slot,
            Err(vm) => {
                self.machine.ept_destroy(vm.ept);
                if let Some(s) = vm.shadow {
                    self.machine.frames_free(s.empty_root, 1);
                }
                return Err(err(Error::NoMemory));
            }
        };
        self.next_vm_trace_id = self.next_vm_trace_id.wrapping_add(1).max(1);
        self.acquire(cap.obj);
        let vm = ObjRef::new(CapKind::Vm, index, generation);
        let slot = self.new_cap_for_current(vm)?;
        Ok(Some([slot, 0, 0, 0]))
    }

    /// `VmSetShadow(vm, pool, ep)`.
    pub(crate) fn sys_vm_set_shadow(&mut self, a: [u64; 6]) -> SysResult {
        let vm = self.cap(a[0], CapKind::Vm, Rights::WRITE).map_err(err)?;
        let pool = self
            .cap(a[1], CapKind::Memory, Rights::READ | Rights::WRITE)
            .map_err(err)?;
        let ep = self
            .cap(a[2], CapKind::Endpoint, Rights::empty())
            .map_err(err)?;
        let (phys, pages) = {
            let m = slot_get(&self.memory, pool.obj).ok_or(err(Error::StaleCap))?;
            (m.phys, m.pages)
        };
        let v = slot_get_mut(&mut self.vms, vm.obj).ok_or(err(Error::StaleCap))?;
        let Some(s) = v.shadow.as_mut() else {
            return Err(err(Error::InvalidArgument));
        };
        // Once set, only the registered MMU endpoint's holder may register again (a restarted
        // MMU service recovering the VM, or retrying an attach its dead predecessor began).
        let old = match s.pool {
            Some(old) if old.mmu_ep != ep.obj => return Err(err(Error::Busy)),
            old => old,
        };
        s.pool = Some(Pool {
            mem: pool.obj,
            phys,
            pages,
            mmu_ep: ep.obj,
        });
        self.acquire(pool.obj);
        self.acquire(ep.obj);
        if let Some(old) = old {
            // Every vCPU of the VM leaves the roots the old registration set: none enters the
            // guest on a table its new MMU instance has not built.
            self.release(old.mem);
            self.release(old.mmu_ep);
            let vcpus: heapless::Vec<VcpuId, MAX_VCPUS> = (0..MAX_VCPUS)
                .map(VcpuId::from_index)
                .filter(|&i| slot_at(&self.vcpus, i).is_ok_and(|c| c.vm == vm.obj))
                .collect();
            for vi in vcpus {
                self.drop_shadow_root(vi)?;
            }
        }
        Ok(Some([0; 4]))
    }

    pub(crate) fn sys_vm_map_ram(&mut self, a: [u64; 6]) -> SysResult {
        let (gpa, pages, rights) = (a[1], a[2], a[3]);
        let cap = self.cap(a[0], CapKind::Vm, Rights::WRITE).map_err(err)?;
        let rights = Rights::from_bits(rights).ok_or(err(Error::InvalidArgument))?;
        let ept_rights = rights & (Rights::READ | Rights::WRITE | Rights::EXEC);
        if ept_rights != rights || !rights.contains(Rights::READ) {
            return Err(err(Error::InvalidArgument)); // EPT: write or execute needs read
        }
        let vm = slot_get_mut(&mut self.vms, cap.obj).ok_or(err(Error::StaleCap))?;
        // A shadow-paged VM's EPT holds what its vCPUs in real mode see (`kobj::shadow`).
        let end = pages
            .checked_mul(PAGE_SIZE)
            .and_then(|len| gpa.checked_add(len));
        let Some(end) = end.filter(|&e| e <= vm.ram_pages * PAGE_SIZE) else {
            return Err(err(Error::InvalidArgument));
        };
        if !gpa.is_multiple_of(PAGE_SIZE) || pages == 0 {
            return Err(err(Error::InvalidArgument));
        }
        let mut g = gpa;
        while g < end {
            let hpa = vm.ram_phys + g;
            self.machine
                .ept_map(&mut vm.ept, g, hpa, ept_rights.bits())
                .map_err(|_| err(Error::NoMemory))?;
            g += PAGE_SIZE;
        }
        Ok(Some([0; 4]))
    }

    pub(crate) fn sys_vm_unmap(&mut self, a: [u64; 6]) -> SysResult {
        let (gpa, pages) = (a[1], a[2]);
        let cap = self.cap(a[0], CapKind::Vm, Rights::WRITE).map_err(err)?;
        let vm = slot_get_mut(&mut self.vms, cap.obj).ok_or(err(Error::StaleCap))?;
        if !gpa.is_multiple_of(PAGE_SIZE) || pages > vm.ram_pages {
            return Err(err(Error::InvalidArgument));
        }
        for i in 0..pages {
            let g = gpa.saturating_add(i * PAGE_SIZE);
            self.machine.ept_unmap(&mut vm.ept, g);
        }
        Ok(Some([0; 4]))
    }

    pub(crate) fn sys_vcpu_create(&mut self, vm_slot: u64, id: u64) -> SysResult {
        let cap = self.cap(vm_slot, CapKind::Vm, Rights::WRITE).map_err(err)?;
        if !self.vcpus.iter().any(|s| s.obj.is_none()) {
            return Err(err(Error::NoMemory));
        }
        self.check_cap_slot()?;
        let ti = self.cur_task()?;
        let prio = self.thread(self.cur()?)?.prio;
        let vm = slot_get(&self.vms, cap.obj).ok_or(err(Error::StaleCap))?;
        let shadow = vm.shadow;
        let trace = vm.traced.then_some(vm.trace_id);
        let hw = self
            .machine
            .vmcs_new(&vm.ept, id as u16, shadow.is_some())
            .ok_or(err(Error::NoMemory))?;
        let Some(t) = self.new_thread(ti, Default::default(), prio) else {
            self.machine.vmcs_destroy(hw);
            return Err(err(Error::NoMemory));
        };
        let inserted = slot_insert::<VcpuId, _>(
            &mut self.vcpus,
            Vcpu {
                vm: cap.obj,
                id: id as u32,
                thread: t,
                hw,
                portals: [Portal::None; EXIT_REASONS],
                mmio_portal: Portal::None,
                forwarded: false,
                run: VcpuRun::Stopped,
                runner: None,
                exits: [0; EXIT_REASONS],
                last_exit: (0, 0, 0),
                call_result: None,
                call_ep: None,
                shadow: shadow.is_some(),
                guest_cr3: 0,
                guest_efer: 0,
                launched: false,
                run_ticks: 0,
                run_start: 0,
                check_event: None,
                refs: 0,
                trace,
                trace_record: None,
            },
        );
        let (index, generation) = match inserted {
            Ok(slot) => slot,
            Err(v) => {
                self.machine.vmcs_destroy(v.hw);
                self.end_vcpu_thread(t);
                return Err(err(Error::NoMemory));
            }
        };
        self.thread_mut(t)?.vcpu = Some(index);
        self.acquire(cap.obj);
        let vcpu = ObjRef::new(CapKind::Vcpu, index, generation);
        let slot = self.new_cap_for_current(vcpu)?;
        // The kernel's share of the CR masks.
        self.write_state(index, field::CR0_GUEST_HOST_MASK, 0)?;
        self.write_state(index, field::CR4_GUEST_HOST_MASK, 0)?;
        if let Some(s) = shadow {
            // #PF exits; the initial guest state (vmcs_new's) as the guest's view, on the
            // empty root.
            self.write_state(index, field::EXCEPTION_BITMAP, 0)?;
            let cr0 = self.vmcs_read(index, field::CR0_READ_SHADOW)?;
            self.write_state(index, field::GUEST_CR0, cr0)?;
            self.set_real_mode_ept(index, shadow::real_mode(cr0))?;
            self.write_state(index, field::GUEST_CR4, 0)?;
            self.write_state(index, field::GUEST_IA32_EFER, 0)?;
            self.vmcs_write(index, field::GUEST_CR3, s.empty_root)?;
            self.refresh_paging(index)?;
        }
        Ok(Some([slot, 0, 0, 0]))
    }

    pub(crate) fn sys_vcpu_portal(&mut self, a: [u64; 6]) -> SysResult {
        let cap = self.cap(a[0], CapKind::Vcpu, Rights::WRITE).map_err(err)?;
        let r = a[1] as usize;
        let mmio = a[1] == reason::MMIO as u64;
        if (a[1] >= EXIT_REASONS as u64 && !mmio) || reason::NO_PORTAL.contains(&(r as u32)) {
            return Err(err(Error::InvalidArgument));
        }
        let portal = match a[2] {
            NO_CAP => Portal::None,
            vmx::PORTAL_REFLECT => {
                if mmio || !super::REFLECT_REASONS.contains(&(r as u32)) {
                    return Err(err(Error::InvalidArgument));
                }
                Portal::Reflect
            }
            ep => {
                let ep = self.cap(ep, CapKind::Endpoint, Rights::SEND).map_err(err)?;
                let mask = a[3] as u32;
                if a[3] & !(group::ALL as u64) != 0 {
                    return Err(err(Error::InvalidArgument));
                }
                Portal::Endpoint { cap: ep, mask }
            }
        };
        let vcpu = slot_get_mut(&mut self.vcpus, cap.obj).ok_or(err(Error::StaleCap))?;
        match vcpu.portals.get_mut(r) {
            Some(p) => *p = portal,
            None => vcpu.mmio_portal = portal,
        }
        Ok(Some([0; 4]))
    }

    /// `VcpuRun(vcpu)`: the caller waits until the vCPU stops.
    pub(crate) fn sys_vcpu_run(&mut self, slot: u64) -> SysResult {
        let cap = self.cap(slot, CapKind::Vcpu, Rights::WRITE).map_err(err)?;
        let vi: VcpuId = cap.obj.id();
        let c = self.cur()?;
        let (t, run) = {
            let v = self.vcpu(vi)?;
            (v.thread, v.run)
        };
        if run != VcpuRun::Stopped || self.threads.get(t).is_none() {
            return Err(err(Error::Busy));
        }
        let now = self.machine.clock().0;
        let v = self.vcpu_mut(vi)?;
        v.run = VcpuRun::Running;
        v.runner = Some(c);
        v.call_result = None;
        v.run_start = now;
        self.thread_mut(c)?.state = ThreadState::BlockedRun { vcpu: vi };
        self.make_ready(t);
        Ok(None)
    }

    /// Stops a vCPU and answers the thread waiting in `VcpuRun`.
    pub(crate) fn vcpu_stop(&mut self, vi: VcpuId, code: u64) {
        self.trace_stopped(vi);
        let Ok(v) = self.vcpu_mut(vi) else {
            return;
        };
        v.run = VcpuRun::Stopped;
        v.call_ep = None;
        let (t, runner, last) = (v.thread, v.runner.take(), v.last_exit);
        if self.threads.get(t).is_some() {
            // Out of every queue it is in (run queue, a portal's senders, a handler's
            // `reply_to`), so nothing names the thread once it is stopped or destroyed.
            self.detach(t, None);
            if let Ok(th) = self.thread_mut(t) {
                th.state = ThreadState::Suspended;
            }
        }
        if let Some(r) = runner {
            if self.threads.get(r).is_some() {
                self.complete(r, Ok([code, (last.0 & 0xffff) as u64, last.1, 0]));
            }
        }
    }

    /// Frees vCPU thread `t` (its vCPU is gone or never was), counting it off its task.
    fn end_vcpu_thread(&mut self, t: ThreadId) {
        let Some(task) = self.threads.get(t).map(|th| th.task) else {
            return;
        };
        self.detach(t, None);
        self.threads.clear(t);
        if self.current == Some(t) {
            self.current = None;
        }
        if let Ok(task) = self.task_mut(task) {
            task.threads = task.threads.saturating_sub(1);
        }
    }

    /// Whether memory object `r` is a live VM's RAM or shadow page pool.
    pub(crate) fn memory_used_by_vm(&self, r: ObjRef) -> bool {
        self.vms
            .iter()
            .filter_map(|s| s.obj.as_ref())
            .any(|vm| vm.ram == r || vm.shadow.and_then(|s| s.pool).is_some_and(|p| p.mem == r))
    }

    /// Drops a reference to a VM or vCPU; destroys it at zero.
    pub(crate) fn release_vm_object(&mut self, r: ObjRef) -> bool {
        match r.kind {
            CapKind::Vm => slot_get_mut(&mut self.vms, r).is_some_and(|v| {
                v.refs = v.refs.saturating_sub(1);
                v.refs == 0
            }),
            CapKind::Vcpu => slot_get_mut(&mut self.vcpus, r).is_some_and(|v| {
                v.refs = v.refs.saturating_sub(1);
                v.refs == 0
            }),
            _ => false,
        }
    }

    pub(crate) fn acquire_vm_object(&mut self, r: ObjRef) {
        match r.kind {
            CapKind::Vm => {
                if let Some(v) = slot_get_mut(&mut self.vms, r) {
                    v.refs += 1;
                }
            }
            CapKind::Vcpu => {
                if let Some(v) = slot_get_mut(&mut self.vcpus, r) {
                    v.refs += 1;
                }
            }
            _ => {}
        }
    }

    /// Destroys a VM (its vCPUs first) or a vCPU.
    pub(crate) fn destroy_vm_object(&mut self, r: ObjRef) {
        match r.kind {
            CapKind::Vcpu => {
                if slot_get(&self.vcpus, r).is_none() {
                    return;
                }
                let vi: VcpuId = r.id();
                self.vcpu_stop(vi, stop::PORTAL_GONE);
                let Some(v) = slot_remove(&mut self.vcpus, vi) else {
                    return;
                };
                self.end_vcpu_thread(v.thread);
                self.machine.vmcs_destroy(v.hw);
                self.release(v.vm);
            }
            CapKind::Vm => {
                if slot_get(&self.vms, r).is_none() {
                    return;
                }
                let mut of_vm: heapless::Vec<ObjRef, MAX_VCPUS> = heapless::Vec::new();
                for (i, s) in self.vcpus.iter().enumerate() {
                    if s.obj.as_ref().is_some_and(|v| v.vm == r) {
                        let vcpu = ObjRef::new(CapKind::Vcpu, VcpuId::from_index(i), s.generation);
                        of_vm.push(vcpu).ok();
                    }
                }
                for vcpu in of_vm {
                    self.destroy_vm_object(vcpu);
                }
                if let Some(vm) = slot_remove(&mut self.vms, r.id::<VmId>()) {
                    if vm.traced {
                        self.traced_vms -= 1;
                    }
                    self.machine.ept_destroy(vm.ept);
                    self.release(vm.ram);
                    if let Some(s) = vm.shadow {
                        self.machine.frames_free(s.empty_root, 1);
                        if let Some(pool) = s.pool {
                            self.release(pool.mem);
                            self.release(pool.mmu_ep);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}
