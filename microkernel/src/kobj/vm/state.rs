//! The state-access policy: which vCPU fields a VMM may read or write through `VcpuState`
//! (and a reply), and what the kernel forces on every write.
//!
//! The rules that live here: a refused batch changes nothing ([`Kernel::sys_vcpu_state`]
//! checks every pair before applying any); the CR0/CR4 bits VMX and the kernel need stay set
//! and hidden; RFLAGS and the activity state hold only values VM entry accepts; a shadow
//! vCPU's CR3 and EFER are the guest's view, and a change to how its tables are read drops
//! the hardware root back to the empty one; EFER.LMA, the IA-32e entry control and the PAE
//! PDPTEs follow CR0, CR4 and EFER ([`Kernel::refresh_paging`]).

use abi::cpu::cr0::{NE as CR0_NE, PG as CR0_PG};
use abi::cpu::cr4::{PAE as CR4_PAE, VMXE as CR4_VMXE};
use abi::cpu::efer::{LMA as EFER_LMA, LME as EFER_LME};
use abi::vmx::{self, field, stop, EXIT_REASONS};
use abi::{CapKind, Error, Rights};

use super::{CR0_OWNED, CR4_OWNED};
use crate::kobj::ids::{Gone, VcpuId};
use crate::kobj::ipc::{err, SysResult};
use crate::kobj::kernel::Kernel;
use crate::kobj::machine::Machine;
use crate::kobj::objects::*;
use crate::kobj::regs::UserRegs;
use crate::kobj::shadow::{self, ShadowVm};
use crate::PAGE_SIZE;

/// VM-entry control "IA-32e mode guest".
const ENTRY_IA32E: u64 = 1 << 9;

impl<M: Machine> Kernel<M> {
    /// `VcpuState(vcpu, pairs, count, write)`.
    pub(crate) fn sys_vcpu_state(&mut self, a: [u64; 6]) -> SysResult {
        const BATCH: usize = 32;
        let (buf, count, write) = (a[1], a[2], a[3] != 0);
        let rights = if write { Rights::WRITE } else { Rights::READ };
        let cap = self.cap(a[0], CapKind::Vcpu, rights).map_err(err)?;
        let vi: VcpuId = cap.obj.id();
        if count as usize > BATCH {
            return Err(err(Error::BadLength));
        }
        let n = count as usize;
        let mut bytes = [0u8; BATCH * 16];
        {
            let ti = self.cur_task()?;
            let space = &slot_at(&self.tasks, ti)?.space;
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
                self.write_state(vi, f, v)?;
            } else {
                let v = self.read_state(vi, f)?;
                bytes[(2 * i + 1) * 8..(2 * i + 2) * 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        if write {
            self.refresh_paging(vi)?;
        } else {
            self.copy_to_current_raw(buf, &bytes[..n * 16])?;
        }
        Ok(Some([0; 4]))
    }

    fn copy_to_current_raw(&mut self, buf: u64, data: &[u8]) -> Result<(), (Error, u64)> {
        let ti = self.cur_task()?;
        let space = &slot_at(&self.tasks, ti)?.space;
        self.machine
            .copy_to_user(space, buf, data)
            .map_err(|_| err(Error::BadPointer))
    }

    /// Sets guest register `n` (Intel order, below 16) in the thread's register file to
    /// `v` (a store in each arm, no reference returned: this is on every reply a handler
    /// sends); `false` for RSP (4), which is in the VMCS.
    #[inline(always)]
    pub(super) fn set_gpr(regs: &mut UserRegs, n: usize, v: u64) -> bool {
        match n {
            0 => regs.rax = v,
            1 => regs.rcx = v,
            2 => regs.rdx = v,
            3 => regs.rbx = v,
            5 => regs.rbp = v,
            6 => regs.rsi = v,
            7 => regs.rdi = v,
            8 => regs.r8 = v,
            9 => regs.r9 = v,
            10 => regs.r10 = v,
            11 => regs.r11 = v,
            12 => regs.r12 = v,
            13 => regs.r13 = v,
            14 => regs.r14 = v,
            15 => regs.r15 = v,
            _ => return false,
        }
        true
    }

    /// Guest register `n` (Intel order) from the thread's register file; `None` for RSP.
    fn gpr(regs: &UserRegs, n: usize) -> Option<u64> {
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

    fn read_state(&mut self, vi: VcpuId, f: u64) -> Result<u64, Gone> {
        if (field::GPR_BASE..field::GPR_BASE + 16).contains(&f) {
            let n = (f - field::GPR_BASE) as usize;
            let t = self.vcpu(vi)?.thread;
            return match Self::gpr(&self.thread(t)?.regs, n) {
                Some(r) => Ok(r),
                None => self.vmcs_read(vi, field::GUEST_RSP),
            };
        }
        let v = self.vcpu(vi)?;
        if (field::EXIT_COUNT_BASE..field::EXIT_COUNT_BASE + EXIT_REASONS as u64).contains(&f) {
            let n = v.exits.get((f - field::EXIT_COUNT_BASE) as usize);
            return Ok(n.copied().map_or(0, u64::from));
        }
        Ok(match f {
            field::GUEST_CR3 if v.shadow => v.guest_cr3,
            field::GUEST_IA32_EFER if v.shadow => v.guest_efer,
            field::SHADOW_CR3 => self.vmcs_read(vi, field::GUEST_CR3)?,
            field::RUN_TICKS => v.run_ticks,
            field::GUEST_FEATURES => {
                let proc2 = self.vmcs_read(vi, field::PROC_BASED_CONTROLS2)?;
                vmx::guest_features::CONTROLS
                    .iter()
                    .filter(|(_, ctl)| proc2 & u64::from(*ctl) != 0)
                    .fold(0, |acc, (bit, _)| acc | bit)
            }
            _ => self.vmcs_read(vi, f)?,
        })
    }

    /// The shadow state of vCPU `vi`'s VM (`None` for an EPT VM).
    pub(super) fn shadow_vm(&self, vi: VcpuId) -> Option<ShadowVm> {
        slot_get(&self.vms, self.vcpu(vi).ok()?.vm).and_then(|vm| vm.shadow)
    }

    /// A shadow vCPU's guest paging state changed other than through its MMU endpoint: back
    /// to the empty root, so that the next guest access faults to the MMU service, which then
    /// builds the root for the new state.
    pub(super) fn drop_shadow_root(&mut self, vi: VcpuId) -> Result<(), Gone> {
        if let Some(s) = self.shadow_vm(vi) {
            self.vmcs_write(vi, field::GUEST_CR3, s.empty_root)?;
        }
        Ok(())
    }

    /// [`Kernel::write_state`] for the paging registers of a shadow vCPU: `value` is the
    /// guest's view; the hardware gets what [`shadow`] derives from it. Returns `false` for
    /// the fields that are the same in both modes.
    fn write_shadow_state(&mut self, vi: VcpuId, f: u64, value: u64) -> Result<bool, Gone> {
        // Whether the write changes how the guest's tables are read: only then is the root
        // dropped (a write of the same value keeps it, which the MMU service relies on).
        let changed = match f {
            field::GUEST_CR0 | field::CR0_READ_SHADOW => {
                let old = self.vmcs_read(vi, field::CR0_READ_SHADOW)?;
                if shadow::real_mode(old) != shadow::real_mode(value) {
                    self.set_real_mode_ept(vi, shadow::real_mode(value))?;
                    if !shadow::real_mode(value) {
                        self.fix_protected_segments(vi)?;
                    }
                }
                self.vmcs_write(vi, field::GUEST_CR0, shadow::hw_cr0(value))?;
                self.vmcs_write(vi, field::CR0_READ_SHADOW, value)?;
                // The hardware's SMEP/SMAP follow the guest's CR0.PG.
                let cr4 = self.vmcs_read(vi, field::CR4_READ_SHADOW)?;
                self.vmcs_write(vi, field::GUEST_CR4, shadow::hw_cr4(cr4, value))?;
                (old ^ value) & shadow::CR0_OWNED != 0
            }
            field::GUEST_CR4 | field::CR4_READ_SHADOW => {
                let old = self.vmcs_read(vi, field::CR4_READ_SHADOW)?;
                let cr0 = self.vmcs_read(vi, field::CR0_READ_SHADOW)?;
                self.vmcs_write(vi, field::GUEST_CR4, shadow::hw_cr4(value, cr0))?;
                self.vmcs_write(vi, field::CR4_READ_SHADOW, value & !CR4_VMXE)?;
                (old ^ value) & shadow::CR4_OWNED & !CR4_VMXE != 0
            }
            field::GUEST_CR3 => {
                core::mem::replace(&mut self.vcpu_mut(vi)?.guest_cr3, value) != value
            }
            field::GUEST_IA32_EFER => {
                let old = core::mem::replace(&mut self.vcpu_mut(vi)?.guest_efer, value);
                (old ^ value) & !EFER_LMA != 0 // LMA follows LME and CR0.PG
            }
            field::CR0_GUEST_HOST_MASK => {
                self.vmcs_write(vi, f, value | CR0_OWNED | shadow::CR0_OWNED)?;
                return Ok(true);
            }
            field::CR4_GUEST_HOST_MASK => {
                self.vmcs_write(vi, f, value | CR4_OWNED | shadow::CR4_OWNED)?;
                return Ok(true);
            }
            field::EXCEPTION_BITMAP => {
                self.vmcs_write(vi, f, value | shadow::PF_EXITS)?;
                return Ok(true);
            }
            _ => return Ok(false),
        };
        if changed {
            self.drop_shadow_root(vi)?;
        }
        Ok(true)
    }

    /// Runs shadow vCPU `vi` on its VM's EPT with unrestricted guest (`on`: its guest entered
    /// real mode) or on shadow tables again.
    pub(super) fn set_real_mode_ept(&mut self, vi: VcpuId, on: bool) -> Result<(), Gone> {
        let v = slot_at_mut(&mut self.vcpus, vi)?;
        let ept = slot_get(&self.vms, v.vm).map(|vm| &vm.ept);
        self.machine
            .vmcs_real_mode_ept(&mut v.hw, ept.filter(|_| on));
        Ok(())
    }

    /// Shadow vCPU `vi` left real mode: its segments as VM entry without unrestricted guest
    /// accepts them ([`shadow::protected_mode_segment`]).
    fn fix_protected_segments(&mut self, vi: VcpuId) -> Result<(), Gone> {
        for n in 0..6 {
            let (sel_f, ar_f) = (field::GUEST_ES_SELECTOR + 2 * n, field::GUEST_ES_AR + 2 * n);
            let (sel, ar) = (self.vmcs_read(vi, sel_f)?, self.vmcs_read(vi, ar_f)?);
            let (sel, ar) = shadow::protected_mode_segment(n, sel, ar);
            self.vmcs_write(vi, sel_f, sel)?;
            self.vmcs_write(vi, ar_f, ar)?;
        }
        Ok(())
    }

    /// Field `f` of vCPU `vi`'s VMCS.
    #[inline]
    pub(super) fn vmcs_read(&mut self, vi: VcpuId, f: u64) -> Result<u64, Gone> {
        let v = slot_at_mut(&mut self.vcpus, vi)?;
        Ok(self.machine.vmcs_read(&mut v.hw, f))
    }

    #[inline]
    pub(super) fn vmcs_write(&mut self, vi: VcpuId, f: u64, value: u64) -> Result<(), Gone> {
        let v = slot_at_mut(&mut self.vcpus, vi)?;
        self.machine.vmcs_write(&mut v.hw, f, value);
        Ok(())
    }

    /// Writes a field the caller may write, forcing what VMX and the kernel need.
    pub(super) fn write_state(&mut self, vi: VcpuId, f: u64, value: u64) -> Result<(), Gone> {
        if matches!(
            f,
            field::VM_ENTRY_INTR_INFO
                | field::VM_ENTRY_EXCEPTION_ERROR_CODE
                | field::VM_ENTRY_INSTRUCTION_LEN
                | field::GUEST_CR0
                | field::GUEST_INTERRUPTIBILITY
        ) {
            let v = self.vcpu_mut(vi)?;
            v.check_event = v.check_event.or(Some(stop::ENTRY_FAILED));
        }
        if self.vcpu(vi)?.shadow && self.write_shadow_state(vi, f, value)? {
            return Ok(());
        }
        match f {
            field::RUN_TICKS => self.vcpu_mut(vi)?.run_ticks = value,
            _ if (field::GPR_BASE..field::GPR_BASE + 16).contains(&f) => {
                let n = (f - field::GPR_BASE) as usize;
                let t = self.vcpu(vi)?.thread;
                if !Self::set_gpr(&mut self.thread_mut(t)?.regs, n, value) {
                    self.vmcs_write(vi, field::GUEST_RSP, value)?;
                }
            }
            field::GUEST_CR0 => {
                self.vmcs_write(vi, field::GUEST_CR0, value | CR0_NE)?;
                self.vmcs_write(vi, field::CR0_READ_SHADOW, value)?;
            }
            field::GUEST_CR4 => {
                self.vmcs_write(vi, field::GUEST_CR4, value | CR4_VMXE)?;
                self.vmcs_write(vi, field::CR4_READ_SHADOW, value & !CR4_VMXE)?;
            }
            field::CR0_GUEST_HOST_MASK => self.vmcs_write(vi, f, value | CR0_OWNED)?,
            field::CR4_GUEST_HOST_MASK => self.vmcs_write(vi, f, value | CR4_OWNED)?,
            field::CR4_READ_SHADOW => self.vmcs_write(vi, f, value & !CR4_VMXE)?,
            field::GUEST_RFLAGS => self.vmcs_write(vi, f, sanitize_rflags(value))?,
            _ => self.vmcs_write(vi, f, value)?,
        }
        Ok(())
    }

    /// After CR0, CR3, CR4 or EFER changed: EFER.LMA and the IA-32e entry control follow
    /// EFER.LME and CR0.PG, and PAE paging without long mode gets its PDPTEs loaded from the
    /// guest's CR3 (the VMCS holds them under EPT).
    pub(super) fn refresh_paging(&mut self, vi: VcpuId) -> Result<(), Gone> {
        if self.vcpu(vi)?.shadow {
            // The guest's view decides long mode; the PDPTEs come from the shadow root at
            // VM entry (no EPT).
            let cr0 = self.vmcs_read(vi, field::CR0_READ_SHADOW)?;
            let efer = self.vcpu(vi)?.guest_efer;
            self.vcpu_mut(vi)?.guest_efer = shadow::guest_efer(efer, cr0);
            self.vmcs_write(vi, field::GUEST_IA32_EFER, shadow::hw_efer(efer, cr0))?;
            let ctl = self.vmcs_read(vi, field::VM_ENTRY_CONTROLS)?;
            let ctl = if shadow::long_mode(cr0, efer) {
                ctl | ENTRY_IA32E
            } else {
                ctl & !ENTRY_IA32E
            };
            self.vmcs_write(vi, field::VM_ENTRY_CONTROLS, ctl)?;
            return Ok(());
        }
        let cr0 = self.vmcs_read(vi, field::GUEST_CR0)?;
        let cr4 = self.vmcs_read(vi, field::GUEST_CR4)?;
        let efer = self.vmcs_read(vi, field::GUEST_IA32_EFER)?;
        let lma = efer & EFER_LME != 0 && cr0 & CR0_PG != 0;
        let new_efer = if lma {
            efer | EFER_LMA
        } else {
            efer & !EFER_LMA
        };
        if new_efer != efer {
            self.vmcs_write(vi, field::GUEST_IA32_EFER, new_efer)?;
        }
        let ctl = self.vmcs_read(vi, field::VM_ENTRY_CONTROLS)?;
        let new_ctl = if lma {
            ctl | ENTRY_IA32E
        } else {
            ctl & !ENTRY_IA32E
        };
        if new_ctl != ctl {
            self.vmcs_write(vi, field::VM_ENTRY_CONTROLS, new_ctl)?;
        }
        if cr0 & CR0_PG != 0 && cr4 & CR4_PAE != 0 && !lma {
            let cr3 = self.vmcs_read(vi, field::GUEST_CR3)? & 0xffff_ffe0;
            let vm = slot_get(&self.vms, self.vcpu(vi)?.vm).map(|v| (v.ram_phys, v.ram_pages));
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
                self.vmcs_write(vi, field::GUEST_PDPTE0 + 2 * i as u64, p)?;
            }
        }
        Ok(())
    }
}

/// Whether `value` may be written to field `f`. The activity state may only be the ones the
/// kernel manages: active (0) or HLT (1). In shutdown or wait-for-SIPI an external interrupt
/// does not exit (nor does the preemption timer count in wait-for-SIPI), and the only CPU
/// would stay in the guest for good. A VMM keeps an application processor out of the guest
/// until its SIPI instead (it does not run its vCPU), then enters it in real mode.
fn value_ok(f: u64, value: u64) -> bool {
    match f {
        field::GUEST_ACTIVITY_STATE => value <= vmx::activity::HLT,
        // Part `msr`: the values WRMSR or VM entry would refuse.
        _ => field::msr_value_ok(f, value),
    }
}

/// RFLAGS a guest may hold: reserved bits clear, bit 1 set.
fn sanitize_rflags(v: u64) -> u64 {
    (v & 0x003f_7fd5) | 2
}
