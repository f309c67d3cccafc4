//! The entry path: what runs before a vCPU thread enters the guest
//! ([`Kernel::vcpu_prepare`]). The handler's reply is applied (the common "registers and
//! advance RIP" reply straight from its bytes, any other through `ExitReply::decode`), an
//! exit whose handler restarted is re-sent to its successor, and the entry is refused
//! (stopping the vCPU) when it would fail or do harm.
//!
//! The rules that live here: a malformed reply stops the vCPU ([`stop::BAD_REPLY`]); a run
//! past its time limit stops ([`stop::TIME_LIMIT`]); an event VM entry would refuse is caught
//! before entry ([`entry_event_ok`]); only the VM's MMU endpoint may set a shadow vCPU's root
//! and only to a root the kernel may enter with ([`stop::BAD_ROOT`]); an audited shadow VM's
//! tables name only its own RAM and pool ([`stop::AUDIT`]).

use abi::cpu::cr0::PE as CR0_PE;
use abi::vmx::{self, field, reply, stop, ExitReply};
use abi::Error;

use super::{Vcpu, VcpuRun};
use crate::kobj::ids::{Gone, ThreadId, VcpuId};
use crate::kobj::kernel::{Kernel, Next};
use crate::kobj::machine::Machine;
use crate::kobj::objects::*;
use crate::kobj::regs::UserRegs;
use crate::kobj::shadow;

/// Guest interruptibility state: blocking by STI (bit 0) and by MOV SS (bit 1).
const INTERRUPTIBILITY_STI_MOV_SS: u64 = vmx::interruptibility::ONE_INSTRUCTION as u64;

impl<M: Machine> Kernel<M> {
    /// Runs before a vCPU thread enters the guest: applies the handler's reply, re-sends an
    /// exit whose handler restarted, or stops the vCPU; audits a shadow VM's tables when
    /// asked to. Returns whether to enter.
    pub(crate) fn vcpu_prepare(&mut self, t: ThreadId) -> bool {
        let Some(vi) = self.vcpu_of(t) else {
            return false;
        };
        match self.prepare_vcpu(vi, t) {
            Ok(enter) => enter,
            Err(Gone) => {
                // A vCPU thread outlives its vCPU only if `destroy_vm_object` failed to take
                // it along: it never runs again, rather than have the scheduler pick it
                // over and over.
                if let Ok(th) = self.thread_mut(t) {
                    th.state = ThreadState::Suspended;
                }
                false
            }
        }
    }

    /// The handler's reply to vCPU thread `t`'s exit is in `t`'s message buffer (put there
    /// by the `reply_recv` fast path; `t` is current): the thread is ready and its guest is
    /// entered ([`Next::Guest`]) if [`Self::vcpu_prepare`] lets it, otherwise the scheduler
    /// picks. The common case in one pass, as `vcpu_prepare` would judge it: a vCPU with no
    /// time limit, no event to check and no shadow tables to audit, and a simple reply.
    #[inline(always)]
    pub(crate) fn vcpu_replied(&mut self, t: ThreadId, vi: VcpuId) -> Next {
        self.trace_replied(vi);
        if let (Some(th), Ok(v)) = (self.threads.get_mut(t), slot_at_mut(&mut self.vcpus, vi)) {
            th.state = ThreadState::Ready;
            let plain = v.run == VcpuRun::AwaitingReply
                && v.run_ticks == 0
                && v.check_event.is_none()
                && !v.shadow;
            if plain && Self::simple_reply_applied(&mut self.machine, th, v) {
                return Next::Guest(t);
            }
            v.call_result = Some(Ok(()));
        }
        if self.vcpu_prepare(t) {
            Next::Guest(t)
        } else {
            self.schedule()
        }
    }

    fn prepare_vcpu(&mut self, vi: VcpuId, t: ThreadId) -> Result<bool, Gone> {
        if self.over_time_limit(vi)? {
            self.vcpu_stop(vi, stop::TIME_LIMIT);
            return Ok(false);
        }
        let enter = self.prepare_entry(vi, t)?;
        if enter && !self.entry_event_checked(vi)? {
            return Ok(false);
        }
        if enter && self.vcpu(vi)?.shadow {
            return self.audit_entry(vi);
        }
        Ok(enter)
    }

    /// Checks the event VM entry would inject if its fields changed since the last entry;
    /// stops the vCPU (and returns `false`) when VM entry would refuse it.
    fn entry_event_checked(&mut self, vi: VcpuId) -> Result<bool, Gone> {
        let Some(code) = self.vcpu_mut(vi)?.check_event.take() else {
            return Ok(true);
        };
        let info = self.vmcs_read(vi, field::VM_ENTRY_INTR_INFO)?;
        let error = self.vmcs_read(vi, field::VM_ENTRY_EXCEPTION_ERROR_CODE)?;
        let len = self.vmcs_read(vi, field::VM_ENTRY_INSTRUCTION_LEN)?;
        let pe = self.vmcs_read(vi, field::GUEST_CR0)? & CR0_PE != 0;
        let blocking = self.vmcs_read(vi, field::GUEST_INTERRUPTIBILITY)?;
        if entry_event_ok(info, error, len, pe) && entry_blocking_ok(info, blocking) {
            return Ok(true);
        }
        if code == stop::ENTRY_FAILED {
            // As the hardware reports it: VMfail, "invalid control field(s)".
            self.vcpu_mut(vi)?.last_exit = (1 << 31, VMFAIL_INVALID_CONTROL, 0);
        }
        self.vcpu_stop(vi, code);
        Ok(false)
    }

    /// Whether vCPU `vi`'s run has lasted its time limit ([`field::RUN_TICKS`]).
    fn over_time_limit(&self, vi: VcpuId) -> Result<bool, Gone> {
        let v = self.vcpu(vi)?;
        Ok(v.run_ticks != 0
            && v.run != VcpuRun::Stopped
            && self.machine.clock().0.saturating_sub(v.run_start) >= v.run_ticks)
    }

    #[inline]
    fn prepare_entry(&mut self, vi: VcpuId, t: ThreadId) -> Result<bool, Gone> {
        let v = self.vcpu_mut(vi)?;
        let call_result = match v.run {
            VcpuRun::Running => return Ok(true),
            VcpuRun::Stopped => {
                self.thread_mut(t)?.state = ThreadState::Suspended;
                return Ok(false);
            }
            VcpuRun::AwaitingReply => v.call_result.take(),
        };
        Ok(match call_result {
            None => {
                // Woken without an answer: wait on.
                false
            }
            Some(Ok(())) => {
                if let Some(entered) = self.apply_simple_reply(vi, t)? {
                    return Ok(entered);
                }
                let reply = {
                    let msg = &self.thread(t)?.msg;
                    ExitReply::decode(&msg.data[..msg.len.min(msg.data.len())])
                };
                match reply {
                    Ok(r) if r.flags & reply::FORWARD != 0 => self.forward_exit(vi, &r)?,
                    Ok(r) => {
                        self.vcpu_mut(vi)?.run = VcpuRun::Running;
                        self.apply_reply(vi, &r)?
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
                let cap = self.vcpu(vi)?.call_ep;
                match cap {
                    Some(cap) if self.alive(cap.obj) => {
                        self.thread_mut(t)?.msg.label = vmx::EXIT_LABEL;
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
        })
    }

    /// The common reply (registers and "advance RIP", nothing else) applied straight from
    /// its bytes, without building an `ExitReply`; `None` for any other reply (including a
    /// malformed one), which the general path decodes and judges.
    fn apply_simple_reply(&mut self, vi: VcpuId, t: ThreadId) -> Result<Option<bool>, Gone> {
        // One lookup of each for the whole reply: this is on every exit a handler answers.
        let th = self.threads.get_mut(t).ok_or(Gone)?;
        let v = slot_at_mut(&mut self.vcpus, vi)?;
        Ok(Self::simple_reply_applied(&mut self.machine, th, v).then_some(true))
    }

    /// Applies the reply in vCPU thread `th`'s message buffer to it and its vCPU `v` if it is
    /// a simple one (see [`Self::apply_simple_reply`]): the registers, RSP, RIP past the
    /// instruction, and the vCPU running. `false`, with nothing changed, for any other reply.
    #[inline(always)]
    fn simple_reply_applied(m: &mut M, th: &mut Thread, v: &mut Vcpu<M::Vmcs>) -> bool {
        let Some((flags, rsp)) = Self::simple_reply_gprs(&th.msg, &mut th.regs) else {
            return false;
        };
        v.run = VcpuRun::Running;
        if let Some(rsp) = rsp {
            m.vmcs_write(&mut v.hw, field::GUEST_RSP, rsp);
        }
        if flags & reply::ADVANCE_RIP != 0 {
            Self::skip_instruction(m, v);
        }
        true
    }

    /// The general-purpose registers of a simple reply (see
    /// [`Self::apply_simple_reply`]) into `regs`: its flags and the RSP it sets, if any.
    /// `None`, with `regs` untouched, for any other reply.
    #[inline(always)]
    fn simple_reply_gprs(msg: &Message, regs: &mut UserRegs) -> Option<(u32, Option<u64>)> {
        // Straight from the bytes into the registers: this is on every exit a handler answers.
        let bytes = msg.data.get(..msg.len)?;
        let (flags, gpr_mask, reserved) = vmx::layout::reply_header(bytes)?;
        if flags & !reply::ADVANCE_RIP != 0
            || reserved != 0
            || bytes.len() != ExitReply::size_of(flags, gpr_mask)
        {
            return None;
        }
        let mut rsp = None;
        if gpr_mask == 0 {
            return Some((flags, rsp));
        }
        // The length was checked above: there is a word for every register of the mask, so
        // `next()?` never returns half way.
        let mut words = bytes[vmx::layout::REPLY_HEADER..].chunks_exact(8);
        let mut next = || words.next().and_then(|b| b.first_chunk::<8>().copied());
        // RAX, RCX, RDX and RBX (what CPUID and most hypercalls answer in) unrolled: a test
        // and a store each, where the loop below pays a jump through its table.
        for n in 0..4 {
            if gpr_mask & (1 << n) != 0 {
                Self::set_gpr(regs, n, u64::from_le_bytes(next()?));
            }
        }
        let mut mask = gpr_mask & !0xf;
        while mask != 0 {
            let n = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let v = u64::from_le_bytes(next()?);
            if !Self::set_gpr(regs, n, v) {
                rsp = Some(v);
            }
        }
        Some((flags, rsp))
    }

    /// Moves RIP past the exiting instruction. The instruction completed, so blocking by STI
    /// or MOV SS, which lasts one instruction, ends with it (as KVM's skip does): an
    /// interrupt injected next is legal.
    fn advance_rip(&mut self, vi: VcpuId) -> Result<(), Gone> {
        let v = slot_at_mut(&mut self.vcpus, vi)?;
        Self::skip_instruction(&mut self.machine, v);
        Ok(())
    }

    /// [`Self::advance_rip`] of a vCPU at hand.
    #[inline(always)]
    fn skip_instruction(m: &mut M, v: &mut Vcpu<M::Vmcs>) {
        m.vmcs_skip_instruction(&mut v.hw, v.last_exit.2);
    }

    /// Applies a handler's reply; `false` when it stopped the vCPU.
    fn apply_reply(&mut self, vi: VcpuId, r: &ExitReply) -> Result<bool, Gone> {
        let t = self.vcpu(vi)?.thread;
        let mut regs = r.gpr_mask;
        while regs != 0 {
            let n = regs.trailing_zeros() as usize;
            regs &= regs - 1;
            if !Self::set_gpr(&mut self.thread_mut(t)?.regs, n, r.gprs[n]) {
                self.vmcs_write(vi, field::GUEST_RSP, r.gprs[n])?;
            }
        }
        if r.flags & reply::SET_RIP != 0 {
            self.vmcs_write(vi, field::GUEST_RIP, r.rip)?;
        }
        if r.flags & reply::ADVANCE_RIP != 0 {
            self.advance_rip(vi)?;
        }
        if r.flags & reply::SET_RFLAGS != 0 {
            self.write_state(vi, field::GUEST_RFLAGS, r.rflags)?;
        }
        let paging = reply::SET_CR0 | reply::SET_CR3 | reply::SET_CR4 | reply::SET_EFER;
        if r.flags & reply::SET_CR0 != 0 {
            self.write_state(vi, field::GUEST_CR0, r.cr0)?;
        }
        if r.flags & reply::SET_CR3 != 0 {
            self.write_state(vi, field::GUEST_CR3, r.cr3)?;
        }
        if r.flags & reply::SET_CR4 != 0 {
            self.write_state(vi, field::GUEST_CR4, r.cr4)?;
        }
        if r.flags & reply::SET_EFER != 0 {
            self.write_state(vi, field::GUEST_IA32_EFER, r.efer)?;
        }
        if r.flags & paging != 0 {
            self.refresh_paging(vi)?;
        }
        if r.flags & reply::SET_CR2 != 0 {
            self.vmcs_write(vi, field::GUEST_CR2, r.cr2)?;
        }
        if r.flags & reply::SET_SHADOW_CR3 != 0 && !self.set_shadow_root(vi, r.shadow_cr3)? {
            self.vcpu_stop(vi, stop::BAD_ROOT);
            return Ok(false);
        }
        if r.flags & reply::INJECT != 0 {
            // Valid bit, type and vector, deliver-error-code: reserved bits 30:12 clear.
            let info = (r.inject as u32) & 0x8000_0fff;
            // An event delivered by VM entry leaves the guest active (a halted guest wakes).
            self.vmcs_write(vi, field::GUEST_ACTIVITY_STATE, vmx::activity::ACTIVE)?;
            self.vmcs_write(vi, field::VM_ENTRY_INTR_INFO, info as u64)?;
            self.vmcs_write(vi, field::VM_ENTRY_EXCEPTION_ERROR_CODE, r.inject >> 32)?;
            let len = self.vcpu(vi)?.last_exit.2;
            self.vmcs_write(vi, field::VM_ENTRY_INSTRUCTION_LEN, len)?;
            self.vcpu_mut(vi)?.check_event = Some(stop::BAD_REPLY);
        }
        let requests = reply::INTR_WINDOW | reply::NMI_WINDOW | reply::HALT | reply::SET_DEADLINE;
        if r.flags & requests != 0 {
            self.apply_interrupt_requests(vi, r)?;
        }
        if r.flags & reply::STOP != 0 {
            self.vcpu_stop(vi, stop::HANDLER | (r.stop_code & !stop::KIND_MASK));
            return Ok(false);
        }
        Ok(true)
    }

    /// The reply's interrupt-delivery requests (issue 12): the deadline, the
    /// interrupt-window request and the HLT activity state. An injection in the same reply
    /// wakes the guest instead of halting it: VM entry delivers the event in the active state.
    fn apply_interrupt_requests(&mut self, vi: VcpuId, r: &ExitReply) -> Result<(), Gone> {
        if r.flags & reply::SET_DEADLINE != 0 {
            self.vmcs_write(vi, field::DEADLINE, r.deadline)?;
        }
        let mut window = 0;
        if r.flags & reply::INTR_WINDOW != 0 {
            window |= vmx::proc_based::INTR_WINDOW_EXITING;
        }
        if r.flags & reply::NMI_WINDOW != 0 {
            // NMI-window exiting needs virtual NMIs (SDM 26.2.1.1); without them the
            // interrupt window stands in (see `reply::NMI_WINDOW`).
            let pin = self.vmcs_read(vi, field::PIN_BASED_CONTROLS)?;
            window |= if pin & vmx::pin_based::VIRTUAL_NMIS != 0 {
                vmx::proc_based::NMI_WINDOW_EXITING
            } else {
                vmx::proc_based::INTR_WINDOW_EXITING
            };
        }
        if window != 0 {
            let p = self.vmcs_read(vi, field::PROC_BASED_CONTROLS)?;
            self.vmcs_write(vi, field::PROC_BASED_CONTROLS, p | window)?;
        }
        if r.flags & reply::HALT != 0 && r.flags & reply::INJECT == 0 {
            self.vmcs_write(vi, field::GUEST_ACTIVITY_STATE, vmx::activity::HLT)?;
        }
        Ok(())
    }

    /// Makes `root` the hardware CR3 of shadow vCPU `vi` if the exit being answered went to
    /// the VM's MMU endpoint and `root` is one the kernel may enter with
    /// ([`ShadowVm::root_ok`](crate::kobj::shadow::ShadowVm::root_ok)). Returns whether it did; nothing changes otherwise.
    fn set_shadow_root(&mut self, vi: VcpuId, root: u64) -> Result<bool, Gone> {
        // One lookup of the vCPU and one of its VM, no copies: this is on every CR3 load of
        // a shadow-paged guest.
        let v = slot_at_mut(&mut self.vcpus, vi)?;
        let Some(s) = slot_get(&self.vms, v.vm).and_then(|vm| vm.shadow.as_ref()) else {
            return Ok(false);
        };
        let from_mmu = match (s.pool, v.call_ep) {
            (Some(pool), Some(ep)) => ep.obj == pool.mmu_ep,
            _ => false,
        };
        let cr0 = self.machine.vmcs_read(&mut v.hw, field::CR0_READ_SHADOW);
        let long = shadow::long_mode(cr0, v.guest_efer);
        if !from_mmu || !s.root_ok(root, long) {
            v.last_exit.1 = root;
            return Ok(false);
        }
        self.machine.vmcs_write(&mut v.hw, field::GUEST_CR3, root);
        Ok(true)
    }

    /// Audit mode: walks the shadow tables vCPU `vi` is about to enter with; stops it (with
    /// the physical address of the bad entry as the qualification) when one names a frame
    /// outside the VM's RAM or pool. Returns whether to enter.
    #[inline(always)]
    fn audit_entry(&mut self, vi: VcpuId) -> Result<bool, Gone> {
        let Some(vm) = slot_get(&self.vms, self.vcpu(vi)?.vm) else {
            return Ok(true);
        };
        // Audit off (the usual case): nothing to copy or read.
        let Some(&s) = vm.shadow.as_ref().filter(|s| s.audit) else {
            return Ok(true);
        };
        let (ram_phys, ram_pages) = (vm.ram_phys, vm.ram_pages);
        let Some(pool) = s.pool else {
            return Ok(true);
        };
        let root = self.vmcs_read(vi, field::GUEST_CR3)?;
        if root == s.empty_root {
            return Ok(true);
        }
        let cr0 = self.vmcs_read(vi, field::CR0_READ_SHADOW)?;
        let long = shadow::long_mode(cr0, self.vcpu(vi)?.guest_efer);
        let m = &self.machine;
        let mut read = |pa: u64| {
            let mut b = [0u8; 8];
            m.read_phys(pa, &mut b);
            u64::from_le_bytes(b)
        };
        match shadow::audit(root, long, &pool, ram_phys, ram_pages, &mut read) {
            Ok(()) => Ok(true),
            Err(at) => {
                self.vcpu_mut(vi)?.last_exit.1 = at;
                self.vcpu_stop(vi, stop::AUDIT);
                Ok(false)
            }
        }
    }

    /// Records the outcome of the vCPU thread's pending exit call (instead of writing
    /// syscall results into guest registers).
    pub(crate) fn vcpu_call_done(&mut self, vi: VcpuId, result: Result<(), Error>) {
        // Stamped whatever the outcome (one test while nothing is traced): a failed call
        // stops the vCPU or re-sends the exit, which stamps again.
        self.trace_replied(vi);
        if let Ok(v) = self.vcpu_mut(vi) {
            v.call_result = Some(result);
        }
    }
}

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

/// Whether VM entry accepts event `info` in guest interruptibility state `blocking` (SDM
/// 26.3.1.5, "Checks on Guest Non-Register State"): an external interrupt under neither
/// STI nor MOV SS blocking; an NMI under no blocking at all (MOV SS and, with virtual NMIs,
/// NMI blocking are refused; some processors refuse STI blocking too). Without virtual NMIs
/// an NMI under NMI blocking would be accepted by the CPU but nest in the guest's handler:
/// refused as well.
pub(crate) fn entry_blocking_ok(info: u64, blocking: u64) -> bool {
    if info & (1 << 31) == 0 {
        return true;
    }
    match (info >> 8) & 7 {
        0 => blocking & INTERRUPTIBILITY_STI_MOV_SS == 0,
        2 => vmx::interruptibility::nmi_ok(blocking as u32) && blocking >> 32 == 0,
        _ => true,
    }
}
