//! Virtual machines and vCPUs as kernel objects, and exit portals.
//!
//! A VM owns guest RAM (a memory object at guest-physical 0) and an EPT (`Machine::Ept`) that
//! only ever maps that RAM. A vCPU is a VMCS (`Machine::Vmcs`) plus a kernel thread of the
//! task that created it: the thread's register file holds the guest's general-purpose
//! registers, and the scheduler runs it like any thread, except that "running" means a VM
//! entry ([`Next::Guest`]).
//!
//! On an exit the kernel looks up the vCPU's portal for the basic exit reason. A portal is an
//! endpoint plus a mask of state groups: the vCPU thread *calls* that endpoint with an
//! [`ExitMessage`] holding just those groups, and stays blocked until the handler replies with
//! an [`ExitReply`], which is applied when the vCPU is next scheduled ([`Kernel::vcpu_prepare`]).
//! A caller whose server restarts re-sends the same exit, so a restarted handler sees it again
//! and the guest notices nothing. No portal, a malformed reply, a closed endpoint, a failed VM
//! entry or a reply asking to stop: the vCPU stops, and the thread waiting in `VcpuRun` gets
//! why.

use abi::vmx::{self, field, group, reason, reply, stop, vm_flags, ExitReply, EXIT_REASONS};
use abi::{CapKind, Error, Rights, NO_CAP};

use super::captable::{Cap, ObjRef};
use super::ipc::{err, SysResult};
use super::kernel::{Kernel, Next};
use super::machine::Machine;
use super::objects::*;
use super::queue::ThreadId;
use super::shadow::{self, Pool, ShadowVm};
use crate::PAGE_SIZE;

pub const MAX_VMS: usize = 4;
pub const MAX_VCPUS: usize = 8;

use abi::cpu::cr0::{NE as CR0_NE, PE as CR0_PE, PG as CR0_PG};
use abi::cpu::cr4::{PAE as CR4_PAE, VMXE as CR4_VMXE};
use abi::cpu::efer::{LMA as EFER_LMA, LME as EFER_LME};
/// VM-entry control "IA-32e mode guest".
const ENTRY_IA32E: u64 = 1 << 9;
/// The CR0 bits the kernel always intercepts: NE must stay set under VMX, and PE/PG
/// changes decide long mode and PAE PDPTE loading.
pub const CR0_OWNED: u64 = CR0_NE | CR0_PE | CR0_PG;
/// The CR4 bits the kernel always intercepts (VMXE must stay set and is hidden).
pub const CR4_OWNED: u64 = CR4_VMXE;

/// Where an exit reason goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Portal {
    /// Nowhere: the vCPU stops ([`stop::UNHANDLED`]).
    None,
    /// A call on the endpoint with the state groups in `mask`.
    Endpoint { cap: Cap, mask: u32 },
    /// The kernel answers (CPUID, VMCALL, port I/O): the measurement floor.
    Reflect,
}

#[derive(Debug)]
pub struct Vm<E> {
    pub ram: ObjRef,
    pub ram_phys: u64,
    pub ram_pages: u64,
    pub ept: E,
    /// `Some` for a shadow-paged VM (the EPT is then unused).
    pub shadow: Option<ShadowVm>,
    pub refs: u32,
    /// Its id in exit trace records, and whether its exits are traced ([`abi::Sys::VmTrace`]).
    pub trace_id: u32,
    pub traced: bool,
}

/// What a vCPU is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuRun {
    /// Not running (never started, or stopped).
    Stopped,
    /// In the guest, or ready to enter it.
    Running,
    /// Blocked on an exit message until the handler replies.
    AwaitingReply,
}

#[derive(Debug)]
pub struct Vcpu<V> {
    pub vm: ObjRef,
    pub id: u32,
    pub thread: ThreadId,
    pub hw: V,
    pub portals: [Portal; EXIT_REASONS],
    pub run: VcpuRun,
    /// The thread waiting in `VcpuRun`.
    pub runner: Option<ThreadId>,
    pub exits: [u32; EXIT_REASONS],
    /// The last exit: (full reason, qualification, instruction length).
    pub last_exit: (u32, u64, u64),
    /// The outcome of the pending exit call, set when the handler replies (or the call
    /// fails); the reply itself is in the thread's message buffer.
    pub call_result: Option<Result<(), Error>>,
    /// The portal endpoint the pending exit went to.
    pub call_ep: Option<Cap>,
    /// Whether its VM is shadow-paged.
    pub shadow: bool,
    /// Shadow-paged vCPUs: the guest's own CR3 and EFER (the VMCS holds the hardware's).
    pub guest_cr3: u64,
    pub guest_efer: u64,
    /// Whether its VMCS was launched: the next entry is VMRESUME. Set by the first exit
    /// that follows a successful entry ([`Kernel::vm_exited`]), never by a failed entry.
    pub launched: bool,
    /// The time limit of a run in timer ticks (0: none) and the tick its run started at.
    pub run_ticks: u64,
    pub run_start: u64,
    /// The VM-entry event fields (or CR0) changed since the last entry: they are checked
    /// before the next one, which stops the vCPU with this code if they are invalid
    /// ([`stop::BAD_REPLY`] for a reply's event, [`stop::ENTRY_FAILED`] for `VcpuState`).
    pub check_event: Option<u64>,
    pub refs: u32,
    /// Its VM's trace id while the VM is traced, and the record of the exit being handled.
    pub trace: Option<u32>,
    pub trace_record: Option<abi::trace::Record>,
}

/// An exit as the machine reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmExit {
    pub reason: u32,
    pub qualification: u64,
    pub instruction_len: u64,
    /// The time-stamp counter at the exit.
    pub tsc: u64,
}

impl<M: Machine> Kernel<M> {
    fn vcpu(&self, vi: u16) -> &Vcpu<M::Vmcs> {
        self.vcpus[vi as usize].obj.as_ref().expect("live vcpu")
    }

    fn vcpu_mut(&mut self, vi: u16) -> &mut Vcpu<M::Vmcs> {
        self.vcpus[vi as usize].obj.as_mut().expect("live vcpu")
    }

    /// The vCPU a thread runs, if it is a vCPU thread.
    #[inline]
    pub fn vcpu_of(&self, t: ThreadId) -> Option<u16> {
        self.threads.0[t as usize].as_ref().and_then(|th| th.vcpu)
    }

    /// The guest register file and VMCS to enter for a [`Next::Guest`] thread, and whether
    /// the VMCS was launched (VMRESUME) or not (VMLAUNCH).
    pub fn guest_context(
        &mut self,
        t: ThreadId,
    ) -> (&mut super::regs::UserRegs, &mut M::Vmcs, bool) {
        let vi = self.vcpu_of(t).expect("a vcpu thread");
        let th = self.threads.0[t as usize].as_mut().expect("live");
        let v = self.vcpus[vi as usize].obj.as_mut().expect("live vcpu");
        (&mut th.regs, &mut v.hw, v.launched)
    }

    /// The machine left the guest of thread `t` with exit `reason` (every exit, before it is
    /// handled). An exit with the entry-failure bit (31) leaves the launch state as it was:
    /// a failed VMLAUNCH must be retried with VMLAUNCH, or the vCPU could never run again.
    pub fn vm_exited(&mut self, t: ThreadId, reason: u32) {
        if reason & (1 << 31) != 0 {
            return;
        }
        if let Some(vi) = self.vcpu_of(t) {
            self.vcpu_mut(vi).launched = true;
        }
    }

    // ----- syscalls -----

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
        let (index, generation) = slot_insert(
            &mut self.vms,
            Vm {
                ram: cap.obj,
                ram_phys,
                ram_pages,
                ept,
                shadow,
                refs: 0,
                trace_id: self.next_vm_trace_id,
                traced: false,
            },
        )
        .expect("checked for a free slot");
        self.next_vm_trace_id = self.next_vm_trace_id.wrapping_add(1).max(1);
        self.acquire(cap.obj);
        let vm = ObjRef {
            kind: CapKind::Vm,
            index,
            generation,
        };
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
            let vcpus: heapless::Vec<u16, MAX_VCPUS> = (0..MAX_VCPUS as u16)
                .filter(|&i| {
                    self.vcpus[i as usize]
                        .obj
                        .as_ref()
                        .is_some_and(|c| c.vm == vm.obj)
                })
                .collect();
            for vi in vcpus {
                self.drop_shadow_root(vi);
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
        if vm.shadow.is_some() {
            return Err(err(Error::InvalidArgument)); // no EPT: the MMU service shadows
        }
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
        let ti = self.cur_task();
        let prio = self.thread(self.current.expect("current")).prio;
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
        let (index, generation) = slot_insert(
            &mut self.vcpus,
            Vcpu {
                vm: cap.obj,
                id: id as u32,
                thread: t,
                hw,
                portals: [Portal::None; EXIT_REASONS],
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
        )
        .expect("checked for a free slot");
        self.thread_mut(t).vcpu = Some(index);
        self.acquire(cap.obj);
        let vcpu = ObjRef {
            kind: CapKind::Vcpu,
            index,
            generation,
        };
        let slot = self.new_cap_for_current(vcpu)?;
        // The kernel's share of the CR masks.
        self.write_state(index, field::CR0_GUEST_HOST_MASK, 0);
        self.write_state(index, field::CR4_GUEST_HOST_MASK, 0);
        if let Some(s) = shadow {
            // #PF exits; the initial guest state (vmcs_new's) as the guest's view, on the
            // empty root.
            self.write_state(index, field::EXCEPTION_BITMAP, 0);
            let cr0 = self.vmcs_read(index, field::CR0_READ_SHADOW);
            self.write_state(index, field::GUEST_CR0, cr0);
            self.write_state(index, field::GUEST_CR4, 0);
            self.write_state(index, field::GUEST_IA32_EFER, 0);
            self.vmcs_write(index, field::GUEST_CR3, s.empty_root);
            self.refresh_paging(index);
        }
        Ok(Some([slot, 0, 0, 0]))
    }

    pub(crate) fn sys_vcpu_portal(&mut self, a: [u64; 6]) -> SysResult {
        let cap = self.cap(a[0], CapKind::Vcpu, Rights::WRITE).map_err(err)?;
        let r = a[1] as usize;
        if a[1] >= EXIT_REASONS as u64 || reason::KERNEL_HANDLED.contains(&(r as u32)) {
            return Err(err(Error::InvalidArgument));
        }
        let portal = match a[2] {
            NO_CAP => Portal::None,
            vmx::PORTAL_REFLECT => {
                if ![reason::CPUID, reason::VMCALL, reason::IO].contains(&(r as u32)) {
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
        vcpu.portals[r] = portal;
        Ok(Some([0; 4]))
    }

    /// `VcpuState(vcpu, pairs, count, write)`.
    pub(crate) fn sys_vcpu_state(&mut self, a: [u64; 6]) -> SysResult {
        const BATCH: usize = 32;
        let (buf, count, write) = (a[1], a[2], a[3] != 0);
        let rights = if write { Rights::WRITE } else { Rights::READ };
        let cap = self.cap(a[0], CapKind::Vcpu, rights).map_err(err)?;
        let vi = cap.obj.index;
        if count as usize > BATCH {
            return Err(err(Error::BadLength));
        }
        let n = count as usize;
        let mut bytes = [0u8; BATCH * 16];
        {
            let ti = self.cur_task();
            let space = &self.tasks[ti as usize].obj.as_ref().expect("live").space;
            self.machine
                .copy_from_user(space, buf, &mut bytes[..n * 16])
                .map_err(|_| err(Error::BadPointer))?;
        }
        let word = |b: &[u8], i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            u64::from_le_bytes(w)
        };
        // Every pair is checked before any is applied: a refused batch changes nothing.
        for i in 0..n {
            let f = word(&bytes, 2 * i);
            let ok = match field::access(f) {
                field::Access::None => false,
                field::Access::ReadOnly => !write,
                field::Access::ReadWrite => {
                    !write || {
                        let v = word(&bytes, 2 * i + 1);
                        value_ok(f, v) && self.fpu_value_ok(f, v)
                    }
                }
            };
            if !ok {
                return Err((Error::InvalidArgument, i as u64));
            }
        }
        for i in 0..n {
            let f = word(&bytes, 2 * i);
            if write {
                let v = word(&bytes, 2 * i + 1);
                self.write_state(vi, f, v);
            } else {
                let v = self.read_state(vi, f);
                bytes[(2 * i + 1) * 8..(2 * i + 2) * 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        if write {
            self.refresh_paging(vi);
        } else {
            self.copy_to_current_raw(buf, &bytes[..n * 16])?;
        }
        Ok(Some([0; 4]))
    }

    fn copy_to_current_raw(&mut self, buf: u64, data: &[u8]) -> Result<(), (Error, u64)> {
        let ti = self.cur_task();
        let space = &self.tasks[ti as usize].obj.as_ref().expect("live").space;
        self.machine
            .copy_to_user(space, buf, data)
            .map_err(|_| err(Error::BadPointer))
    }

    /// `VcpuRun(vcpu)`: the caller waits until the vCPU stops.
    pub(crate) fn sys_vcpu_run(&mut self, slot: u64) -> SysResult {
        let cap = self.cap(slot, CapKind::Vcpu, Rights::WRITE).map_err(err)?;
        let vi = cap.obj.index;
        let c = self.current.expect("current");
        let (t, run) = {
            let v = self.vcpu(vi);
            (v.thread, v.run)
        };
        if run != VcpuRun::Stopped || self.threads.0[t as usize].is_none() {
            return Err(err(Error::Busy));
        }
        let now = self.machine.clock().0;
        let v = self.vcpu_mut(vi);
        v.run = VcpuRun::Running;
        v.runner = Some(c);
        v.call_result = None;
        v.run_start = now;
        self.thread_mut(c).state = ThreadState::BlockedRun { vcpu: vi };
        self.make_ready(t);
        Ok(None)
    }

    // ----- state access -----

    fn gpr_mut(regs: &mut super::regs::UserRegs, n: usize) -> Option<&mut u64> {
        Some(match n {
            0 => &mut regs.rax,
            1 => &mut regs.rcx,
            2 => &mut regs.rdx,
            3 => &mut regs.rbx,
            5 => &mut regs.rbp,
            6 => &mut regs.rsi,
            7 => &mut regs.rdi,
            8 => &mut regs.r8,
            9 => &mut regs.r9,
            10 => &mut regs.r10,
            11 => &mut regs.r11,
            12 => &mut regs.r12,
            13 => &mut regs.r13,
            14 => &mut regs.r14,
            15 => &mut regs.r15,
            _ => return None, // 4 is RSP, in the VMCS
        })
    }

    /// Guest register `n` (Intel order) from the thread's register file; `None` for RSP.
    fn gpr(regs: &super::regs::UserRegs, n: usize) -> Option<u64> {
        Some(match n {
            0 => regs.rax,
            1 => regs.rcx,
            2 => regs.rdx,
            3 => regs.rbx,
            5 => regs.rbp,
            6 => regs.rsi,
            7 => regs.rdi,
            8 => regs.r8,
            9 => regs.r9,
            10 => regs.r10,
            11 => regs.r11,
            12 => regs.r12,
            13 => regs.r13,
            14 => regs.r14,
            15 => regs.r15,
            _ => return None,
        })
    }

    fn read_state(&mut self, vi: u16, f: u64) -> u64 {
        if (field::GPR_BASE..field::GPR_BASE + 16).contains(&f) {
            let n = (f - field::GPR_BASE) as usize;
            let t = self.vcpu(vi).thread;
            return match Self::gpr(&self.thread(t).regs, n) {
                Some(r) => r,
                None => self.vmcs_read(vi, field::GUEST_RSP),
            };
        }
        if (field::EXIT_COUNT_BASE..field::EXIT_COUNT_BASE + EXIT_REASONS as u64).contains(&f) {
            return self.vcpu(vi).exits[(f - field::EXIT_COUNT_BASE) as usize] as u64;
        }
        let v = self.vcpu(vi);
        match f {
            field::GUEST_CR3 if v.shadow => v.guest_cr3,
            field::GUEST_IA32_EFER if v.shadow => v.guest_efer,
            field::SHADOW_CR3 => self.vmcs_read(vi, field::GUEST_CR3),
            field::RUN_TICKS => v.run_ticks,
            field::GUEST_FEATURES => {
                let proc2 = self.vmcs_read(vi, PROC_BASED_CONTROLS2);
                vmx::guest_features::CONTROLS
                    .iter()
                    .filter(|(_, ctl)| proc2 & u64::from(*ctl) != 0)
                    .fold(0, |acc, (bit, _)| acc | bit)
            }
            _ => self.vmcs_read(vi, f),
        }
    }

    /// The shadow state of vCPU `vi`'s VM (`None` for an EPT VM).
    fn shadow_vm(&self, vi: u16) -> Option<ShadowVm> {
        slot_get(&self.vms, self.vcpu(vi).vm).and_then(|vm| vm.shadow)
    }

    /// A shadow vCPU's guest paging state changed other than through its MMU endpoint: back
    /// to the empty root, so that the next guest access faults to the MMU service, which then
    /// builds the root for the new state.
    fn drop_shadow_root(&mut self, vi: u16) {
        if let Some(s) = self.shadow_vm(vi) {
            self.vmcs_write(vi, field::GUEST_CR3, s.empty_root);
        }
    }

    /// [`Kernel::write_state`] for the paging registers of a shadow vCPU: `value` is the
    /// guest's view; the hardware gets what [`shadow`] derives from it. Returns `false` for
    /// the fields that are the same in both modes.
    fn write_shadow_state(&mut self, vi: u16, f: u64, value: u64) -> bool {
        // Whether the write changes how the guest's tables are read: only then is the root
        // dropped (a write of the same value keeps it, which the MMU service relies on).
        let changed = match f {
            field::GUEST_CR0 | field::CR0_READ_SHADOW => {
                let old = self.vmcs_read(vi, field::CR0_READ_SHADOW);
                self.vmcs_write(vi, field::GUEST_CR0, shadow::hw_cr0(value));
                self.vmcs_write(vi, field::CR0_READ_SHADOW, value);
                // The hardware's SMEP/SMAP follow the guest's CR0.PG.
                let cr4 = self.vmcs_read(vi, field::CR4_READ_SHADOW);
                self.vmcs_write(vi, field::GUEST_CR4, shadow::hw_cr4(cr4, value));
                (old ^ value) & shadow::CR0_OWNED != 0
            }
            field::GUEST_CR4 | field::CR4_READ_SHADOW => {
                let old = self.vmcs_read(vi, field::CR4_READ_SHADOW);
                let cr0 = self.vmcs_read(vi, field::CR0_READ_SHADOW);
                self.vmcs_write(vi, field::GUEST_CR4, shadow::hw_cr4(value, cr0));
                self.vmcs_write(vi, field::CR4_READ_SHADOW, value & !CR4_VMXE);
                (old ^ value) & shadow::CR4_OWNED & !CR4_VMXE != 0
            }
            field::GUEST_CR3 => {
                core::mem::replace(&mut self.vcpu_mut(vi).guest_cr3, value) != value
            }
            field::GUEST_IA32_EFER => {
                let old = core::mem::replace(&mut self.vcpu_mut(vi).guest_efer, value);
                (old ^ value) & !EFER_LMA != 0 // LMA follows LME and CR0.PG
            }
            field::CR0_GUEST_HOST_MASK => {
                self.vmcs_write(vi, f, value | CR0_OWNED | shadow::CR0_OWNED);
                return true;
            }
            field::CR4_GUEST_HOST_MASK => {
                self.vmcs_write(vi, f, value | CR4_OWNED | shadow::CR4_OWNED);
                return true;
            }
            field::EXCEPTION_BITMAP => {
                self.vmcs_write(vi, f, value | shadow::PF_EXITS);
                return true;
            }
            _ => return false,
        };
        if changed {
            self.drop_shadow_root(vi);
        }
        true
    }

    fn vmcs_read(&mut self, vi: u16, f: u64) -> u64 {
        let v = self.vcpus[vi as usize].obj.as_mut().expect("live vcpu");
        self.machine.vmcs_read(&mut v.hw, f)
    }

    fn vmcs_write(&mut self, vi: u16, f: u64, value: u64) {
        let v = self.vcpus[vi as usize].obj.as_mut().expect("live vcpu");
        self.machine.vmcs_write(&mut v.hw, f, value);
    }

    /// Writes a field the caller may write, forcing what VMX and the kernel need.
    fn write_state(&mut self, vi: u16, f: u64, value: u64) {
        if matches!(
            f,
            field::VM_ENTRY_INTR_INFO
                | field::VM_ENTRY_EXCEPTION_ERROR_CODE
                | field::VM_ENTRY_INSTRUCTION_LEN
                | field::GUEST_CR0
        ) {
            let v = self.vcpu_mut(vi);
            v.check_event = v.check_event.or(Some(stop::ENTRY_FAILED));
        }
        if self.vcpu(vi).shadow && self.write_shadow_state(vi, f, value) {
            return;
        }
        match f {
            field::RUN_TICKS => self.vcpu_mut(vi).run_ticks = value,
            _ if (field::GPR_BASE..field::GPR_BASE + 16).contains(&f) => {
                let n = (f - field::GPR_BASE) as usize;
                let t = self.vcpu(vi).thread;
                match Self::gpr_mut(&mut self.thread_mut(t).regs, n) {
                    Some(r) => *r = value,
                    None => self.vmcs_write(vi, field::GUEST_RSP, value),
                }
            }
            field::GUEST_CR0 => {
                self.vmcs_write(vi, field::GUEST_CR0, value | CR0_NE);
                self.vmcs_write(vi, field::CR0_READ_SHADOW, value);
            }
            field::GUEST_CR4 => {
                self.vmcs_write(vi, field::GUEST_CR4, value | CR4_VMXE);
                self.vmcs_write(vi, field::CR4_READ_SHADOW, value & !CR4_VMXE);
            }
            field::CR0_GUEST_HOST_MASK => self.vmcs_write(vi, f, value | CR0_OWNED),
            field::CR4_GUEST_HOST_MASK => self.vmcs_write(vi, f, value | CR4_OWNED),
            field::CR4_READ_SHADOW => self.vmcs_write(vi, f, value & !CR4_VMXE),
            field::GUEST_RFLAGS => self.vmcs_write(vi, f, sanitize_rflags(value)),
            _ => self.vmcs_write(vi, f, value),
        }
    }

    /// After CR0, CR3, CR4 or EFER changed: EFER.LMA and the IA-32e entry control follow
    /// EFER.LME and CR0.PG, and PAE paging without long mode gets its PDPTEs loaded from the
    /// guest's CR3 (the VMCS holds them under EPT).
    fn refresh_paging(&mut self, vi: u16) {
        if self.vcpu(vi).shadow {
            // The guest's view decides long mode; the PDPTEs come from the shadow root at
            // VM entry (no EPT).
            let cr0 = self.vmcs_read(vi, field::CR0_READ_SHADOW);
            let efer = self.vcpu(vi).guest_efer;
            self.vcpu_mut(vi).guest_efer = shadow::guest_efer(efer, cr0);
            self.vmcs_write(vi, field::GUEST_IA32_EFER, shadow::hw_efer(efer, cr0));
            let ctl = self.vmcs_read(vi, field::VM_ENTRY_CONTROLS);
            let ctl = if shadow::long_mode(cr0, efer) {
                ctl | ENTRY_IA32E
            } else {
                ctl & !ENTRY_IA32E
            };
            self.vmcs_write(vi, field::VM_ENTRY_CONTROLS, ctl);
            return;
        }
        let cr0 = self.vmcs_read(vi, field::GUEST_CR0);
        let cr4 = self.vmcs_read(vi, field::GUEST_CR4);
        let efer = self.vmcs_read(vi, field::GUEST_IA32_EFER);
        let lma = efer & EFER_LME != 0 && cr0 & CR0_PG != 0;
        let new_efer = if lma {
            efer | EFER_LMA
        } else {
            efer & !EFER_LMA
        };
        if new_efer != efer {
            self.vmcs_write(vi, field::GUEST_IA32_EFER, new_efer);
        }
        let ctl = self.vmcs_read(vi, field::VM_ENTRY_CONTROLS);
        let new_ctl = if lma {
            ctl | ENTRY_IA32E
        } else {
            ctl & !ENTRY_IA32E
        };
        if new_ctl != ctl {
            self.vmcs_write(vi, field::VM_ENTRY_CONTROLS, new_ctl);
        }
        if cr0 & CR0_PG != 0 && cr4 & CR4_PAE != 0 && !lma {
            let cr3 = self.vmcs_read(vi, field::GUEST_CR3) & 0xffff_ffe0;
            let vm = slot_get(&self.vms, self.vcpu(vi).vm).map(|v| (v.ram_phys, v.ram_pages));
            let mut pdptes = [0u64; 4];
            if let Some((phys, pages)) = vm {
                if cr3 + 32 <= pages * PAGE_SIZE {
                    let mut b = [0u8; 32];
                    self.machine.read_phys(phys + cr3, &mut b);
                    for (i, p) in pdptes.iter_mut().enumerate() {
                        let mut w = [0u8; 8];
                        w.copy_from_slice(&b[i * 8..i * 8 + 8]);
                        *p = u64::from_le_bytes(w);
                    }
                }
            }
            for (i, p) in pdptes.into_iter().enumerate() {
                self.vmcs_write(vi, field::GUEST_PDPTE0 + 2 * i as u64, p);
            }
        }
    }

    // ----- exits -----

    /// A VM exit of the current thread's vCPU; its guest registers are already in the
    /// thread's register file.
    pub fn on_vm_exit(&mut self, exit: VmExit) -> Next {
        let Some(c) = self.current else {
            return self.schedule();
        };
        let Some(vi) = self.vcpu_of(c) else {
            return self.schedule();
        };
        let basic = exit.reason & 0xffff;
        {
            let v = self.vcpu_mut(vi);
            if let Some(n) = v.exits.get_mut(basic as usize) {
                *n = n.saturating_add(1);
            }
            v.last_exit = (exit.reason, exit.qualification, exit.instruction_len);
        }
        self.trace_exit(vi, exit.reason, exit.qualification, exit.tsc);
        if exit.reason & (1 << 31) != 0 {
            self.vcpu_stop(vi, stop::ENTRY_FAILED | basic as u64);
            return self.schedule();
        }
        if reason::KERNEL_HANDLED.contains(&basic) {
            self.trace_kernel_handled(vi);
            // The run's slice ended (or a host interrupt the machine already took): counted,
            // and the vCPU stays runnable.
            return self.schedule();
        }
        let portal = self
            .vcpu(vi)
            .portals
            .get(basic as usize)
            .copied()
            .unwrap_or(Portal::None);
        match portal {
            Portal::Reflect => {
                self.trace_kernel_handled(vi);
                self.reflect(vi, basic, exit.instruction_len);
                self.schedule()
            }
            Portal::None => {
                self.vcpu_stop(vi, stop::UNHANDLED | basic as u64);
                self.schedule()
            }
            Portal::Endpoint { cap, mask } => {
                let len = self.write_exit_message(vi, exit, mask);
                let th = self.thread_mut(c);
                th.msg.label = vmx::EXIT_LABEL;
                th.msg.badge = cap.badge;
                th.msg.grant = None;
                th.msg.len = len;
                self.send_exit(vi, cap);
                self.schedule()
            }
        }
    }

    /// Counts (and traces) an exit the machine handled itself (an external interrupt) at
    /// time-stamp `tsc`.
    pub fn count_exit(&mut self, t: ThreadId, reason: u32, tsc: u64) {
        if let Some(vi) = self.vcpu_of(t) {
            if let Some(n) = self.vcpu_mut(vi).exits.get_mut((reason & 0xffff) as usize) {
                *n = n.saturating_add(1);
            }
            self.trace_exit(vi, reason, 0, tsc);
            self.trace_kernel_handled(vi);
        }
    }

    /// VMLAUNCH or VMRESUME of the current vCPU failed with VM-instruction error `error`.
    pub fn on_entry_failed(&mut self, error: u64) -> Next {
        if let Some(vi) = self.current.and_then(|c| self.vcpu_of(c)) {
            self.vcpu_mut(vi).last_exit = (1 << 31, error, 0);
            self.vcpu_stop(vi, stop::ENTRY_FAILED);
        }
        self.schedule()
    }

    /// Answers CPUID, VMCALL and port I/O in the kernel (the floor of an exit round trip).
    fn reflect(&mut self, vi: u16, basic: u32, len: u64) {
        let t = self.vcpu(vi).thread;
        if basic == reason::CPUID {
            let (leaf, sub) = {
                let r = &self.thread(t).regs;
                (r.rax as u32, r.rcx as u32)
            };
            let v = self.machine.host_cpuid(leaf, sub);
            let r = &mut self.thread_mut(t).regs;
            r.rax = v[0] as u64;
            r.rbx = v[1] as u64;
            r.rcx = v[2] as u64;
            r.rdx = v[3] as u64;
        } else if basic == reason::VMCALL {
            self.thread_mut(t).regs.rax = 0;
        }
        let rip = self.vmcs_read(vi, field::GUEST_RIP);
        self.vmcs_write(vi, field::GUEST_RIP, rip.wrapping_add(len));
    }

    /// Writes the exit message with the groups in `mask` straight into the vCPU thread's
    /// message buffer (the `ExitMessage` layout of `abi::vmx`, without building the struct:
    /// this is on every exit). Returns its length.
    fn write_exit_message(&mut self, vi: u16, exit: VmExit, mask: u32) -> usize {
        let Some(v) = self.vcpus[vi as usize].obj.as_mut() else {
            return 0;
        };
        let Some(th) = self.threads.0[v.thread as usize].as_mut() else {
            return 0;
        };
        let m = &mut self.machine;
        let hw = &mut v.hw;
        let out = &mut th.msg.data;
        let mut at = 0;
        if mask & group::GPRS != 0 {
            // The header and the registers in one pass: this is what most portals ask for.
            let r = &th.regs;
            let rsp = m.vmcs_read(hw, field::GUEST_RSP);
            let words = [
                r.rax, r.rcx, r.rdx, r.rbx, rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11,
                r.r12, r.r13, r.r14, r.r15,
            ];
            if let Some(dst) = out.get_mut(16..16 + 128) {
                for (w, v) in dst.chunks_exact_mut(8).zip(words) {
                    w.copy_from_slice(&v.to_le_bytes());
                }
            }
            at = 16 + 128;
        }
        if let Some(h) = out.get_mut(..16) {
            h[..4].copy_from_slice(&exit.reason.to_le_bytes());
            h[4..8].copy_from_slice(&mask.to_le_bytes());
            h[8..12].copy_from_slice(&v.id.to_le_bytes());
            h[12..16].copy_from_slice(&0u32.to_le_bytes());
        }
        if at == 0 {
            at = 16;
        }
        let mut put = |bytes: &[u8]| {
            if let Some(d) = out.get_mut(at..at + bytes.len()) {
                d.copy_from_slice(bytes);
            }
            at += bytes.len();
        };
        let mut rd = |f: u64| m.vmcs_read(hw, f);
        if mask & group::RIP != 0 {
            put(&rd(field::GUEST_RIP).to_le_bytes());
            put(&rd(field::GUEST_RFLAGS).to_le_bytes());
            put(&exit.instruction_len.to_le_bytes());
        }
        if mask & group::CRS != 0 {
            let (cr0, cr4) = (rd(field::GUEST_CR0), rd(field::GUEST_CR4));
            let (mask0, mask4) = (
                rd(field::CR0_GUEST_HOST_MASK),
                rd(field::CR4_GUEST_HOST_MASK),
            );
            let (shadow0, shadow4) = (rd(field::CR0_READ_SHADOW), rd(field::CR4_READ_SHADOW));
            // A shadow vCPU's guest has its own CR3 and EFER.
            let (cr3, efer) = if v.shadow {
                (v.guest_cr3, v.guest_efer)
            } else {
                (rd(field::GUEST_CR3), rd(field::GUEST_IA32_EFER))
            };
            put(&cr0.to_le_bytes());
            put(&cr3.to_le_bytes());
            put(&cr4.to_le_bytes());
            put(&efer.to_le_bytes());
            // What the guest reads: the shadow for the intercepted bits, the rest as is.
            put(&((cr0 & !mask0) | (shadow0 & mask0)).to_le_bytes());
            put(&((cr4 & !mask4) | (shadow4 & mask4)).to_le_bytes());
        }
        if mask & group::SEGS != 0 {
            // cs, ss, ds, es, fs, gs, tr, ldtr: VMCS index (es = 0, cs = 1, ss = 2, ds = 3,
            // fs = 4, gs = 5, ldtr = 6, tr = 7).
            for n in [1u64, 2, 3, 0, 4, 5, 7, 6] {
                put(&(rd(field::GUEST_ES_SELECTOR + 2 * n) as u16).to_le_bytes());
                put(&0u16.to_le_bytes());
                put(&(rd(field::GUEST_ES_AR + 2 * n) as u32).to_le_bytes());
                put(&(rd(field::GUEST_ES_LIMIT + 2 * n) as u32).to_le_bytes());
                put(&0u32.to_le_bytes());
                put(&rd(field::GUEST_ES_BASE + 2 * n).to_le_bytes());
            }
        }
        if mask & group::QUAL != 0 {
            put(&exit.qualification.to_le_bytes());
            for f in [
                field::EXIT_INTR_INFO,
                field::EXIT_INTR_ERROR_CODE,
                field::IDT_VECTORING_INFO,
                field::IDT_VECTORING_ERROR_CODE,
                field::EXIT_INSTRUCTION_INFO,
            ] {
                put(&(rd(f) as u32).to_le_bytes());
            }
            put(&0u32.to_le_bytes());
        }
        if mask & group::ADDR != 0 {
            put(&rd(field::GUEST_PHYSICAL_ADDRESS).to_le_bytes());
            put(&rd(field::GUEST_LINEAR_ADDRESS).to_le_bytes());
        }
        at.min(out.len())
    }

    /// Calls the portal endpoint with the exit message held in the vCPU thread.
    fn send_exit(&mut self, vi: u16, cap: Cap) {
        let t = self.vcpu(vi).thread;
        {
            let v = self.vcpu_mut(vi);
            v.run = VcpuRun::AwaitingReply;
            v.call_result = None;
            v.call_ep = Some(cap);
        }
        let open =
            slot_get(&self.endpoints, cap.obj).is_some_and(|e| e.state != EndpointState::Closed);
        if !open {
            self.vcpu_stop(vi, stop::PORTAL_GONE);
            return;
        }
        // A call always blocks the caller (`Ok(None)`); delivery errors go to the receiver.
        let _ = self.send_loaded(t, cap.obj.index, true);
    }

    /// Runs before a vCPU thread enters the guest: applies the handler's reply, re-sends an
    /// exit whose handler restarted, or stops the vCPU; audits a shadow VM's tables when
    /// asked to. Returns whether to enter.
    pub(crate) fn vcpu_prepare(&mut self, t: ThreadId) -> bool {
        let Some(vi) = self.vcpu_of(t) else {
            return false;
        };
        if self.over_time_limit(vi) {
            self.vcpu_stop(vi, stop::TIME_LIMIT);
            return false;
        }
        let enter = self.prepare_entry(vi, t);
        if enter && !self.entry_event_checked(vi) {
            return false;
        }
        if enter && self.vcpu(vi).shadow {
            return self.audit_entry(vi);
        }
        enter
    }

    /// Checks the event VM entry would inject if its fields changed since the last entry;
    /// stops the vCPU (and returns `false`) when VM entry would refuse it.
    fn entry_event_checked(&mut self, vi: u16) -> bool {
        let Some(code) = self.vcpu_mut(vi).check_event.take() else {
            return true;
        };
        let info = self.vmcs_read(vi, field::VM_ENTRY_INTR_INFO);
        let error = self.vmcs_read(vi, field::VM_ENTRY_EXCEPTION_ERROR_CODE);
        let len = self.vmcs_read(vi, field::VM_ENTRY_INSTRUCTION_LEN);
        let pe = self.vmcs_read(vi, field::GUEST_CR0) & CR0_PE != 0;
        if entry_event_ok(info, error, len, pe) {
            return true;
        }
        if code == stop::ENTRY_FAILED {
            // As the hardware reports it: VMfail, "invalid control field(s)".
            self.vcpu_mut(vi).last_exit = (1 << 31, VMFAIL_INVALID_CONTROL, 0);
        }
        self.vcpu_stop(vi, code);
        false
    }

    /// Whether vCPU `vi`'s run has lasted its time limit ([`field::RUN_TICKS`]).
    fn over_time_limit(&self, vi: u16) -> bool {
        let v = self.vcpu(vi);
        v.run_ticks != 0
            && v.run != VcpuRun::Stopped
            && self.machine.clock().0.saturating_sub(v.run_start) >= v.run_ticks
    }

    #[inline]
    fn prepare_entry(&mut self, vi: u16, t: ThreadId) -> bool {
        match self.vcpu(vi).run {
            VcpuRun::Running => return true,
            VcpuRun::Stopped => {
                self.thread_mut(t).state = ThreadState::Suspended;
                return false;
            }
            VcpuRun::AwaitingReply => {}
        }
        match self.vcpu_mut(vi).call_result.take() {
            None => {
                // Woken without an answer: wait on.
                false
            }
            Some(Ok(())) => {
                if let Some(entered) = self.apply_simple_reply(vi, t) {
                    return entered;
                }
                let reply = {
                    let msg = &self.thread(t).msg;
                    ExitReply::decode(&msg.data[..msg.len.min(msg.data.len())])
                };
                match reply {
                    Ok(r) => {
                        self.vcpu_mut(vi).run = VcpuRun::Running;
                        self.apply_reply(vi, &r)
                    }
                    Err(_) => {
                        self.vcpu_stop(vi, stop::BAD_REPLY);
                        false
                    }
                }
            }
            Some(Err(Error::ServerRestarted)) => {
                // The handler died before answering: the same exit goes to its successor
                // (the message is still in the thread). Rebuild it (the reply did not
                // overwrite it, but be safe about the label).
                let cap = self.vcpu(vi).call_ep;
                match cap {
                    Some(cap) if self.alive(cap.obj) => {
                        self.thread_mut(t).msg.label = vmx::EXIT_LABEL;
                        self.send_exit(vi, cap);
                    }
                    _ => self.vcpu_stop(vi, stop::PORTAL_GONE),
                }
                false
            }
            Some(Err(_)) => {
                self.vcpu_stop(vi, stop::PORTAL_GONE);
                false
            }
        }
    }

    /// The common reply (registers and "advance RIP", nothing else) applied straight from
    /// its bytes, without building an `ExitReply`; `None` for any other reply (including a
    /// malformed one), which the general path decodes and judges.
    fn apply_simple_reply(&mut self, vi: u16, t: ThreadId) -> Option<bool> {
        let mut words = [0u64; 16];
        let (flags, gpr_mask) = {
            let msg = &self.thread(t).msg;
            let bytes = msg.data.get(..msg.len)?;
            let h = bytes.get(..8)?;
            let flags = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
            let gpr_mask = u16::from_le_bytes([h[4], h[5]]);
            if flags & !reply::ADVANCE_RIP != 0
                || h[6] != 0
                || h[7] != 0
                || bytes.len() != ExitReply::size_of(flags, gpr_mask)
            {
                return None;
            }
            for (w, b) in words.iter_mut().zip(bytes[8..].chunks_exact(8)) {
                *w = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
            }
            (flags, gpr_mask)
        };
        self.vcpu_mut(vi).run = VcpuRun::Running;
        let mut regs = gpr_mask;
        let mut next = words.into_iter();
        while regs != 0 {
            let n = regs.trailing_zeros() as usize;
            regs &= regs - 1;
            let v = next.next().unwrap_or(0);
            match Self::gpr_mut(&mut self.thread_mut(t).regs, n) {
                Some(reg) => *reg = v,
                None => self.vmcs_write(vi, field::GUEST_RSP, v),
            }
        }
        if flags & reply::ADVANCE_RIP != 0 {
            let len = self.vcpu(vi).last_exit.2;
            let rip = self.vmcs_read(vi, field::GUEST_RIP);
            self.vmcs_write(vi, field::GUEST_RIP, rip.wrapping_add(len));
        }
        Some(true)
    }

    /// Applies a handler's reply; `false` when it stopped the vCPU.
    fn apply_reply(&mut self, vi: u16, r: &ExitReply) -> bool {
        let t = self.vcpu(vi).thread;
        let mut regs = r.gpr_mask;
        while regs != 0 {
            let n = regs.trailing_zeros() as usize;
            regs &= regs - 1;
            match Self::gpr_mut(&mut self.thread_mut(t).regs, n) {
                Some(reg) => *reg = r.gprs[n],
                None => self.vmcs_write(vi, field::GUEST_RSP, r.gprs[n]),
            }
        }
        if r.flags & reply::SET_RIP != 0 {
            self.vmcs_write(vi, field::GUEST_RIP, r.rip);
        }
        if r.flags & reply::ADVANCE_RIP != 0 {
            let len = self.vcpu(vi).last_exit.2;
            let rip = self.vmcs_read(vi, field::GUEST_RIP);
            self.vmcs_write(vi, field::GUEST_RIP, rip.wrapping_add(len));
        }
        if r.flags & reply::SET_RFLAGS != 0 {
            self.write_state(vi, field::GUEST_RFLAGS, r.rflags);
        }
        let paging = reply::SET_CR0 | reply::SET_CR3 | reply::SET_CR4 | reply::SET_EFER;
        if r.flags & reply::SET_CR0 != 0 {
            self.write_state(vi, field::GUEST_CR0, r.cr0);
        }
        if r.flags & reply::SET_CR3 != 0 {
            self.write_state(vi, field::GUEST_CR3, r.cr3);
        }
        if r.flags & reply::SET_CR4 != 0 {
            self.write_state(vi, field::GUEST_CR4, r.cr4);
        }
        if r.flags & reply::SET_EFER != 0 {
            self.write_state(vi, field::GUEST_IA32_EFER, r.efer);
        }
        if r.flags & paging != 0 {
            self.refresh_paging(vi);
        }
        if r.flags & reply::SET_CR2 != 0 {
            self.vmcs_write(vi, field::GUEST_CR2, r.cr2);
        }
        if r.flags & reply::SET_SHADOW_CR3 != 0 && !self.set_shadow_root(vi, r.shadow_cr3) {
            self.vcpu_stop(vi, stop::BAD_ROOT);
            return false;
        }
        if r.flags & reply::INJECT != 0 {
            // Valid bit, type and vector, deliver-error-code: reserved bits 30:12 clear.
            let info = (r.inject as u32) & 0x8000_0fff;
            self.vmcs_write(vi, field::VM_ENTRY_INTR_INFO, info as u64);
            self.vmcs_write(vi, field::VM_ENTRY_EXCEPTION_ERROR_CODE, r.inject >> 32);
            let len = self.vcpu(vi).last_exit.2;
            self.vmcs_write(vi, field::VM_ENTRY_INSTRUCTION_LEN, len);
            self.vcpu_mut(vi).check_event = Some(stop::BAD_REPLY);
        }
        if r.flags & reply::STOP != 0 {
            self.vcpu_stop(vi, stop::HANDLER | (r.stop_code & !stop::KIND_MASK));
            return false;
        }
        true
    }

    /// Makes `root` the hardware CR3 of shadow vCPU `vi` if the exit being answered went to
    /// the VM's MMU endpoint and `root` is one the kernel may enter with
    /// ([`ShadowVm::root_ok`]). Returns whether it did; nothing changes otherwise.
    fn set_shadow_root(&mut self, vi: u16, root: u64) -> bool {
        let Some(s) = self.shadow_vm(vi) else {
            return false;
        };
        let from_mmu = match (s.pool, self.vcpu(vi).call_ep) {
            (Some(pool), Some(ep)) => ep.obj == pool.mmu_ep,
            _ => false,
        };
        let cr0 = self.vmcs_read(vi, field::CR0_READ_SHADOW);
        let long = shadow::long_mode(cr0, self.vcpu(vi).guest_efer);
        if !from_mmu || !s.root_ok(root, long) {
            self.vcpu_mut(vi).last_exit.1 = root;
            return false;
        }
        self.vmcs_write(vi, field::GUEST_CR3, root);
        true
    }

    /// Audit mode: walks the shadow tables vCPU `vi` is about to enter with; stops it (with
    /// the physical address of the bad entry as the qualification) when one names a frame
    /// outside the VM's RAM or pool. Returns whether to enter.
    fn audit_entry(&mut self, vi: u16) -> bool {
        let Some(vm) = slot_get(&self.vms, self.vcpu(vi).vm) else {
            return true;
        };
        let (Some(s), ram_phys, ram_pages) = (vm.shadow, vm.ram_phys, vm.ram_pages) else {
            return true;
        };
        let root = self.vmcs_read(vi, field::GUEST_CR3);
        let (true, Some(pool)) = (s.audit, s.pool) else {
            return true;
        };
        if root == s.empty_root {
            return true;
        }
        let cr0 = self.vmcs_read(vi, field::CR0_READ_SHADOW);
        let long = shadow::long_mode(cr0, self.vcpu(vi).guest_efer);
        let m = &self.machine;
        let mut read = |pa: u64| {
            let mut b = [0u8; 8];
            m.read_phys(pa, &mut b);
            u64::from_le_bytes(b)
        };
        match shadow::audit(root, long, &pool, ram_phys, ram_pages, &mut read) {
            Ok(()) => true,
            Err(at) => {
                self.vcpu_mut(vi).last_exit.1 = at;
                self.vcpu_stop(vi, stop::AUDIT);
                false
            }
        }
    }

    /// Stops a vCPU and answers the thread waiting in `VcpuRun`.
    pub(crate) fn vcpu_stop(&mut self, vi: u16, code: u64) {
        self.trace_stopped(vi);
        let (t, runner, last) = {
            let v = self.vcpu_mut(vi);
            v.run = VcpuRun::Stopped;
            v.call_ep = None;
            (v.thread, v.runner.take(), v.last_exit)
        };
        if self.threads.0[t as usize].is_some() {
            // Out of every queue it is in (run queue, a portal's senders, a handler's
            // `reply_to`), so nothing names the thread once it is stopped or destroyed.
            self.detach(t, u16::MAX);
            self.thread_mut(t).state = ThreadState::Suspended;
        }
        if let Some(r) = runner {
            if self.threads.0[r as usize].is_some() {
                self.complete(r, Ok([code, (last.0 & 0xffff) as u64, last.1, 0]));
            }
        }
    }

    /// Records the outcome of the vCPU thread's pending exit call (instead of writing
    /// syscall results into guest registers).
    pub(crate) fn vcpu_call_done(&mut self, vi: u16, result: Result<(), Error>) {
        // Stamped whatever the outcome (one test while nothing is traced): a failed call
        // stops the vCPU or re-sends the exit, which stamps again.
        self.trace_replied(vi);
        self.vcpu_mut(vi).call_result = Some(result);
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
                self.vcpu_stop(r.index, stop::PORTAL_GONE);
                let v = slot_remove(&mut self.vcpus, r.index).expect("checked");
                let t = v.thread;
                if let Some(th) = self.threads.0[t as usize].as_ref() {
                    let task = th.task;
                    self.detach(t, u16::MAX);
                    self.threads.0[t as usize] = None;
                    if self.current == Some(t) {
                        self.current = None;
                    }
                    if let Some(task) = self.tasks[task as usize].obj.as_mut() {
                        task.threads = task.threads.saturating_sub(1);
                    }
                }
                self.machine.vmcs_destroy(v.hw);
                self.release(v.vm);
            }
            CapKind::Vm => {
                if slot_get(&self.vms, r).is_none() {
                    return;
                }
                for i in 0..MAX_VCPUS as u16 {
                    let of_vm = self.vcpus[i as usize]
                        .obj
                        .as_ref()
                        .is_some_and(|v| v.vm == r);
                    if of_vm {
                        let generation = self.vcpus[i as usize].generation;
                        self.destroy_vm_object(ObjRef {
                            kind: CapKind::Vcpu,
                            index: i,
                            generation,
                        });
                    }
                }
                if let Some(vm) = slot_remove(&mut self.vms, r.index) {
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

/// Whether `value` may be written to field `f`. The activity state may only be the ones the
/// kernel manages: active (0) or HLT (1). In shutdown or wait-for-SIPI an external interrupt
/// does not exit, and the only CPU would stay in the guest for good.
fn value_ok(f: u64, value: u64) -> bool {
    match f {
        field::GUEST_ACTIVITY_STATE => value <= 1,
        // Part `msr`: the values WRMSR or VM entry would refuse.
        _ => field::msr_value_ok(f, value),
    }
}

/// The secondary processor-based VM-execution controls (read for [`field::GUEST_FEATURES`]).
const PROC_BASED_CONTROLS2: u64 = 0x401e;

/// The VM-instruction error of a VM entry with invalid control fields.
const VMFAIL_INVALID_CONTROL: u64 = 7;

/// Whether VM entry accepts this event (SDM vol. 3, 27.2.1.3, "Checks on VM-Entry Control
/// Fields", event injection): `info` the VM-entry interruption information, `error` the
/// exception error code, `len` the instruction length, `pe` the guest CR0.PE. Checked by the
/// kernel because not every CPU (nor emulator) fails cleanly on a bad one: Bochs stops the
/// whole machine on type 7.
pub(crate) fn entry_event_ok(info: u64, error: u64, len: u64, pe: bool) -> bool {
    if info & (1 << 31) == 0 {
        return true; // nothing to inject
    }
    if info & !0x8000_0fff != 0 {
        return false; // reserved bits 30:12 (and nothing above bit 31)
    }
    let vector = info & 0xff;
    let kind = (info >> 8) & 7;
    let deliver = info & (1 << 11) != 0;
    let kind_ok = match kind {
        0 | 4 | 5 | 6 => true, // external interrupt, software interrupt or exception
        2 => vector == 2,      // NMI
        3 => vector <= 31,     // hardware exception
        _ => false,            // 1 reserved, 7 "other event" (MTF, unused)
    };
    // An error code exactly for the exceptions that push one, in protected mode.
    let wants_error = kind == 3 && pe && matches!(vector, 8 | 10..=14 | 17);
    let error_ok = deliver == wants_error && (!deliver || error <= 0xffff);
    let len_ok = !matches!(kind, 4..=6) || (1..=15).contains(&len);
    kind_ok && error_ok && len_ok
}

/// RFLAGS a guest may hold: reserved bits clear, bit 1 set.
fn sanitize_rflags(v: u64) -> u64 {
    (v & 0x003f_7fd5) | 2
}
