//! The exit path: what happens when the guest leaves. An exit is counted and traced, then
//! goes where the vCPU's portal for its basic reason says: the kernel answers it
//! ([`Portal::Reflect`]: CPUID, VMCALL, port I/O), the vCPU stops ([`Portal::None`], or a
//! failed entry), or the vCPU thread calls the portal endpoint with an exit message holding
//! just the state groups the portal asked for.
//!
//! The rule that lives here: the exit message's layout (`abi::vmx::ExitMessage`), written
//! straight into the vCPU thread's message buffer on every exit; a closed portal endpoint
//! stops the vCPU ([`stop::PORTAL_GONE`]).

use abi::vmx::{self, field, group, layout, reason, stop};
use core::mem::{offset_of, size_of};

use super::{Portal, VcpuRun, VmExit};
use crate::kobj::captable::Cap;
use crate::kobj::ids::{Gone, ThreadId, VcpuId};
use crate::kobj::kernel::{Kernel, Next};
use crate::kobj::machine::Machine;
use crate::kobj::objects::*;
use crate::kobj::queue::RunQueue;
use crate::kobj::regs::UserRegs;

/// The windows a handler asks for, which `on_vm_exit` closes before their portal. With
/// [`reason::KERNEL_HANDLED`], the reasons it handles before (or instead of) their portal;
/// any other reason goes to its portal (after the NMI blocking is mended, for
/// [`NMI_BLOCKING_AT_EXIT`], which the one-pass path mends too).
const WINDOWS: [u32; 2] = [reason::INTERRUPT_WINDOW, reason::NMI_WINDOW];

/// [`reason::KERNEL_HANDLED`] and [`WINDOWS`]: the reasons the one-pass exit path leaves to
/// `on_vm_exit` (one list, tested in one go on every exit).
const SPECIAL_AT_EXIT: [u32; 4] = {
    let mut all = [0; 4];
    let mut i = 0;
    while i < all.len() {
        all[i] = if i < reason::KERNEL_HANDLED.len() {
            reason::KERNEL_HANDLED[i]
        } else {
            WINDOWS[i - reason::KERNEL_HANDLED.len()]
        };
        i += 1;
    }
    all
};

/// The exits whose NMI blocking `on_vm_exit` mends before their portal
/// ([`Kernel::nmi_blocking_at_exit`]).
const NMI_BLOCKING_AT_EXIT: [u32; 2] = [reason::EPT_VIOLATION, reason::EXCEPTION_NMI];

/// The [`group::QUAL`] fields after the qualification: each VMCS field with its offset in
/// [`layout::Qual`] (a 32-bit value there).
const QUAL_FIELDS: [(u64, usize); 5] = [
    (field::EXIT_INTR_INFO, offset_of!(layout::Qual, intr_info)),
    (
        field::EXIT_INTR_ERROR_CODE,
        offset_of!(layout::Qual, intr_error),
    ),
    (
        field::IDT_VECTORING_INFO,
        offset_of!(layout::Qual, idt_vectoring_info),
    ),
    (
        field::IDT_VECTORING_ERROR_CODE,
        offset_of!(layout::Qual, idt_vectoring_error),
    ),
    (
        field::EXIT_INSTRUCTION_INFO,
        offset_of!(layout::Qual, instruction_info),
    ),
];

/// CPUID leaf 0xD (XSAVE features and sizes, which follow XCR0).
const XSAVE_LEAF: u32 = 0xd;

/// Interruption type NMI (bits 10:8 of the interruption information).
pub(super) const NMI_TYPE: u64 = 2;
/// Bit 12 of an EPT violation's qualification and of an exception's interruption
/// information: NMI unblocking due to IRET.
const NMI_UNBLOCKING_BY_IRET: u64 = 1 << 12;

impl<M: Machine> Kernel<M> {
    /// A VM exit of the current thread's vCPU; its guest registers are already in the
    /// thread's register file. A vCPU found gone on the way (none is: `destroy_vm_object`
    /// takes its thread along) ends the handling; `vcpu_prepare` then parks the thread.
    pub fn on_vm_exit(&mut self, exit: VmExit) -> Next {
        match self.fast_vm_exit(exit) {
            Some(r) => Next::User(r),
            None => self.general_vm_exit(exit),
        }
    }

    /// The one-pass delivery of a VM exit of the current thread's vCPU to a waiting
    /// handler ([`Self::exit_to_waiting_handler`]), which runs next (returned). `None`
    /// changes nothing: [`Self::general_vm_exit`] then takes the exit. Always inlined into
    /// the kernel's exit entry (`kentry::vm_exit`), which runs the handler from there.
    #[inline(always)]
    pub fn fast_vm_exit(&mut self, exit: VmExit) -> Option<ThreadId> {
        let c = self.current?;
        self.exit_to_waiting_handler(c, exit)
    }

    /// [`Self::on_vm_exit`] of an exit that [`Self::fast_vm_exit`] did not take.
    pub fn general_vm_exit(&mut self, exit: VmExit) -> Next {
        /// The value of a lookup, or (the vCPU is gone) on to the scheduler.
        macro_rules! or_schedule {
            ($e:expr) => {
                match $e {
                    Ok(v) => v,
                    Err(Gone) => return self.schedule(),
                }
            };
        }
        let Some(c) = self.current else {
            return self.schedule();
        };
        let Some(vi) = self.vcpu_of(c) else {
            return self.schedule();
        };
        let basic = exit.reason & 0xffff;
        let portal = {
            let v = or_schedule!(self.vcpu_mut(vi));
            if let Some(n) = v.exits.get_mut(basic as usize) {
                *n = n.saturating_add(1);
            }
            v.last_exit = (exit.reason, exit.qualification, exit.instruction_len);
            v.forwarded = false;
            v.portals
                .get(basic as usize)
                .copied()
                .unwrap_or(Portal::None)
        };
        self.trace_exit(vi, exit.reason, exit.qualification, exit.tsc);
        if exit.reason & (1 << 31) != 0 {
            self.vcpu_stop(vi, stop::ENTRY_FAILED | basic as u64);
            return self.schedule();
        }
        let exited = basic;
        let mut exit = exit;
        let mut basic = basic;
        if reason::KERNEL_HANDLED.contains(&basic) {
            // An event the exit interrupted on its way into the guest is delivered again
            // (the handler hears of the deadline at the next exit, after it).
            let reinjected = or_schedule!(self.reinject_vectoring(vi));
            if reinjected || !or_schedule!(self.deadline_passed(vi, exit.tsc)) {
                self.trace_kernel_handled(vi);
                // The run's slice ended (or a host interrupt the machine already took):
                // counted, and the vCPU stays runnable.
                return self.schedule();
            }
            // The vCPU's deadline: its handler hears of it as a preemption-timer exit.
            basic = reason::PREEMPTION_TIMER;
            exit.reason = basic;
            exit.qualification = 0;
            exit.instruction_len = 0;
            or_schedule!(self.vcpu_mut(vi)).last_exit = (exit.reason, 0, 0);
        } else if WINDOWS.contains(&basic) {
            // The window the handler asked for is open: the request ends here.
            let window = if basic == reason::NMI_WINDOW {
                vmx::proc_based::NMI_WINDOW_EXITING
            } else {
                vmx::proc_based::INTR_WINDOW_EXITING
            };
            let p = or_schedule!(self.vmcs_read(vi, field::PROC_BASED_CONTROLS));
            or_schedule!(self.vmcs_write(vi, field::PROC_BASED_CONTROLS, p & !window));
        } else if NMI_BLOCKING_AT_EXIT.contains(&basic) {
            or_schedule!(self.nmi_blocking_at_exit(vi, basic, exit.qualification));
        }
        let portal = if basic == exited {
            portal
        } else {
            // A deadline became a preemption-timer exit: that reason's portal.
            or_schedule!(self.vcpu(vi))
                .portals
                .get(basic as usize)
                .copied()
                .unwrap_or(Portal::None)
        };
        match portal {
            Portal::Reflect => self.reflect_and_go_on(c, vi, basic, exit.instruction_len),
            Portal::None => {
                self.vcpu_stop(vi, stop::UNHANDLED | basic as u64);
                self.schedule()
            }
            Portal::Endpoint { cap, mask } => {
                self.write_exit_message(vi, exit, mask, cap.badge);
                match self.send_exit(vi, cap) {
                    // What `schedule` would pick: the handler the fast path made current,
                    // ready, with nothing of higher priority ready (its check), when no
                    // rotation is due.
                    Some(r) if !self.rotate => Next::User(r),
                    _ => self.schedule(),
                }
            }
        }
    }

    /// The common exit in one pass: an exit of the current vCPU thread `t` whose reason
    /// `on_vm_exit` handles only through its portal (none of [`SPECIAL_AT_EXIT`]; the NMI
    /// blocking of an EPT violation or an exception mended as there), to a portal endpoint
    /// where a handler waits with a checked buffer in one page that takes the message, with
    /// the fast paths on and no rotation due. Counted, traced and written as `on_vm_exit`
    /// does, delivered as `fast_send_exit` does, with one lookup of each object; returns the
    /// handler, now current. `None` leaves everything as it was (the general path then takes
    /// the exit; `tests_exit_fast.rs` runs exits both ways).
    #[inline(always)]
    fn exit_to_waiting_handler(&mut self, t: ThreadId, exit: VmExit) -> Option<ThreadId> {
        let basic = exit.reason & 0xffff;
        if !self.fast_ipc
            || self.rotate
            || exit.reason & (1 << 31) != 0
            || SPECIAL_AT_EXIT.contains(&basic)
        {
            return None;
        }
        let vi = self.threads.get(t)?.vcpu?;
        let Some(&Portal::Endpoint { cap, mask }) =
            slot_at(&self.vcpus, vi).ok()?.portals.get(basic as usize)
        else {
            return None;
        };
        let (r, (_, rbuf, rcap)) = self.waiting_receiver(cap.obj)?;
        if layout::size_of_mask(mask) as u64 > rcap {
            return None;
        }
        // A buffer across pages takes the general path.
        let phys = self.receive_buffer(r, rbuf, rcap)??;
        // Committed: nothing below fails (the lookups found these objects above).
        self.trace_exit(vi, exit.reason, exit.qualification, exit.tsc);
        if NMI_BLOCKING_AT_EXIT.contains(&basic) {
            // Before the message, which holds the interruptibility state.
            self.nmi_blocking_at_exit(vi, basic, exit.qualification)
                .ok()?;
        }
        let v = slot_at_mut(&mut self.vcpus, vi).ok()?;
        if let Some(n) = v.exits.get_mut(basic as usize) {
            *n = n.saturating_add(1);
        }
        v.last_exit = (exit.reason, exit.qualification, exit.instruction_len);
        v.forwarded = false;
        v.run = VcpuRun::AwaitingReply;
        v.call_result = None;
        v.call_ep = Some(cap);
        let th = self.threads.get_mut(t)?;
        let len = Self::put_exit_message(&mut self.machine, v, th, exit, mask, cap.badge);
        self.machine.write_user_frame(phys, th.msg.data.get(..len)?);
        self.exit_delivered(t, r, cap.obj.id(), (len, vmx::EXIT_LABEL, cap.badge))
    }

    /// The machine left the guest of the current vCPU thread `t` with exit `reason` at
    /// time-stamp `tsc` (every exit, before anything else looks at it). An exit with the
    /// entry-failure bit (31) leaves the launch state as it was: a failed VMLAUNCH must be
    /// retried with VMLAUNCH, or the vCPU could never run again.
    ///
    /// The floor's fast path ([`Portal::Reflect`]): when the guest goes straight on afterwards
    /// ([`Self::guest_continues`]) and `t` owns the extended-state registers, so that entering
    /// it again needs nothing of the host's, the exit is counted, answered and traced exactly
    /// as [`Kernel::on_vm_exit`] would (`read` gives the qualification and the instruction
    /// length, read only on this path), the entry traced as the machine's entry does, and the
    /// registers and VMCS to enter again come back: the same VMCS, launched, with the state
    /// the machine keeps beside it (CR2, DR0..DR3, DR6, XCR0) still the guest's in the CPU.
    /// Otherwise `save` gets the VMCS, to keep what the machine keeps beside it (CR2, DR6) in
    /// it, and the exit goes on to `on_vm_exit` (`None`, also when the thread or its vCPU is
    /// gone): the floor's CR2 and DR6 stay in the CPU, where the next exit that leaves the
    /// guest reads them.
    #[inline(always)]
    pub fn vm_exited(
        &mut self,
        t: ThreadId,
        reason: u32,
        tsc: u64,
        read: impl FnOnce() -> (u64, u64),
        save: impl FnOnce(&mut M::Vmcs),
    ) -> Option<(&mut UserRegs, &mut M::Vmcs)> {
        let failed = reason & (1 << 31) != 0;
        let vi = {
            let vi = self.threads.get(t)?.vcpu?;
            let v = slot_at_mut(&mut self.vcpus, vi).ok()?;
            if !failed {
                v.launched = true;
            }
            if v.portals.get((reason & 0xffff) as usize) != Some(&Portal::Reflect) {
                save(&mut v.hw);
                return None;
            }
            vi
        };
        if failed || !t.is_in(self.xstate_owner) || !self.may_go_on(t) {
            save(&mut slot_at_mut(&mut self.vcpus, vi).ok()?.hw);
            return None;
        }
        if self.traced_vms != 0 {
            return self.reflect_traced(t, vi, reason, tsc, read, save);
        }
        self.reflect_at_once(t, vi, reason, read, save)
            .map(|(regs, hw, _)| (regs, hw))
    }

    /// [`Self::reflect_at_once`] while a VM is traced: the exit traced after it was answered
    /// (the trace hooks touch only the trace record and ring).
    #[inline(never)] // off the untraced exits
    fn reflect_traced(
        &mut self,
        t: ThreadId,
        vi: VcpuId,
        reason: u32,
        tsc: u64,
        read: impl FnOnce() -> (u64, u64),
        save: impl FnOnce(&mut M::Vmcs),
    ) -> Option<(&mut UserRegs, &mut M::Vmcs)> {
        let (_, _, qualification) = self.reflect_at_once(t, vi, reason, read, save)?;
        self.trace_exit(vi, reason, qualification, tsc);
        self.trace_kernel_handled(vi);
        self.trace_entry(t);
        // Found above: these lookups do not fail.
        let th = self.threads.get_mut(t)?;
        let v = slot_at_mut(&mut self.vcpus, vi).ok()?;
        Some((&mut th.regs, &mut v.hw))
    }

    /// The floor's answer to the exit `reason` of vCPU `vi` (thread `t`, whose portal for it
    /// is [`Portal::Reflect`], with the kernel-wide conditions met) when the thread and its
    /// vCPU go straight on too: counted and answered as `on_vm_exit` would, but for the trace.
    /// Also returns the exit's qualification. Otherwise `save` gets the VMCS.
    #[inline(always)]
    fn reflect_at_once(
        &mut self,
        t: ThreadId,
        vi: VcpuId,
        reason: u32,
        read: impl FnOnce() -> (u64, u64),
        save: impl FnOnce(&mut M::Vmcs),
    ) -> Option<(&mut UserRegs, &mut M::Vmcs, u64)> {
        let basic = reason & 0xffff;
        let th = self.threads.get_mut(t)?;
        let v = slot_at_mut(&mut self.vcpus, vi).ok()?;
        let floor = Self::thread_goes_on(&self.run_queue, th, v)
            // CPUID leaf 0xD's answer depends on the XCR0 in force, which the machine leaves
            // the guest's on this path: the general path answers it, with the host's.
            && !(basic == reason::CPUID && th.regs.rax as u32 == XSAVE_LEAF);
        if !floor {
            save(&mut v.hw);
            return None;
        }
        let (qualification, len) = read();
        if let Some(n) = v.exits.get_mut(basic as usize) {
            *n = n.saturating_add(1);
        }
        v.last_exit = (reason, qualification, len);
        v.forwarded = false;
        answer(&mut self.machine, &mut v.hw, &mut th.regs, basic, len);
        Some((&mut th.regs, &mut v.hw, qualification))
    }

    /// An exit the kernel answers itself ([`Portal::Reflect`], the benchmark floor) that
    /// [`Self::vm_exited`] did not take: answered ([`Self::reflect`]), then, if
    /// [`Kernel::schedule`] would pick vCPU thread `t` again and enter its guest at once
    /// (judged without changing anything), straight back into it. A run with a time limit,
    /// a shadow vCPU (audits), an event to check, a thread that should run instead or the
    /// machine's end go through `schedule` (`tests_vm.rs` runs the floor both ways; the
    /// shortcut is off without `fast_ipc`).
    #[inline(never)] // off the exits a handler takes, which it would otherwise slow down
    fn reflect_and_go_on(&mut self, t: ThreadId, vi: VcpuId, basic: u32, len: u64) -> Next {
        self.trace_kernel_handled(vi);
        if self.reflect(vi, basic, len).is_ok() && self.guest_continues(t, vi) {
            Next::Guest(t)
        } else {
            self.schedule()
        }
    }

    #[inline(always)]
    fn guest_continues(&self, t: ThreadId, vi: VcpuId) -> bool {
        match (self.threads.get(t), slot_at(&self.vcpus, vi).ok()) {
            (Some(th), Some(v)) => self.continues(t, th, v),
            _ => false,
        }
    }

    /// [`Self::guest_continues`] of thread `t` (`th`) and its vCPU `v`, at hand.
    #[inline(always)]
    fn continues(&self, t: ThreadId, th: &Thread, v: &super::Vcpu<M::Vmcs>) -> bool {
        self.may_go_on(t) && Self::thread_goes_on(&self.run_queue, th, v)
    }

    /// The kernel-wide half of [`Self::continues`]: the fast paths are on, the machine goes
    /// on, no rotation is due and `t` is the current thread.
    #[inline(always)]
    fn may_go_on(&self, t: ThreadId) -> bool {
        self.fast_ipc && !self.rotate && self.current == Some(t)
    }

    /// The half of [`Self::continues`] that the thread `th` and its vCPU `v` decide (with
    /// the run queue: nothing of higher priority is ready).
    #[inline(always)]
    fn thread_goes_on(run_queue: &RunQueue, th: &Thread, v: &super::Vcpu<M::Vmcs>) -> bool {
        matches!(th.state, ThreadState::Ready)
            && !run_queue.outranks(th.prio)
            && v.run == VcpuRun::Running
            && v.run_ticks == 0
            && v.check_event.is_none()
            && !v.shadow
    }

    /// After an exit the kernel handles itself: if the exit interrupted the delivery of an
    /// event (IDT-vectoring information valid), VM entry delivers it again, as SDM 28.2.4
    /// asks (with its error code and, for software events, the instruction length).
    /// Returns whether there was one.
    fn reinject_vectoring(&mut self, vi: VcpuId) -> Result<bool, Gone> {
        let info = self.vmcs_read(vi, field::IDT_VECTORING_INFO)?;
        if info & (1 << 31) == 0 {
            return Ok(false);
        }
        let error = self.vmcs_read(vi, field::IDT_VECTORING_ERROR_CODE)?;
        let len = self.vmcs_read(vi, field::EXIT_INSTRUCTION_LEN)?;
        // Valid, type, vector and deliver-error-code; bit 12 (NMI unblocking) is not part of
        // the entry format.
        self.vmcs_write(vi, field::VM_ENTRY_INTR_INFO, info & 0x8000_0fff)?;
        if (info >> 8) & 7 == NMI_TYPE {
            // An NMI cut short leaves NMI blocking set; VM entry refuses to inject one under
            // it (SDM 26.3.1.5), and the delivery sets it again (as KVM and bhyve do).
            let b = self.vmcs_read(vi, field::GUEST_INTERRUPTIBILITY)?;
            let nmi = u64::from(vmx::interruptibility::NMI);
            self.vmcs_write(vi, field::GUEST_INTERRUPTIBILITY, b & !nmi)?;
        }
        self.vmcs_write(vi, field::VM_ENTRY_EXCEPTION_ERROR_CODE, error)?;
        self.vmcs_write(vi, field::VM_ENTRY_INSTRUCTION_LEN, len)?;
        Ok(true)
    }

    /// NMI blocking at an exit a handler may answer by delivering an event again (an EPT
    /// violation, an exception such as a shadow-paging #PF), with virtual NMIs:
    /// - the exit interrupted an NMI's delivery (IDT-vectoring information, type NMI): the
    ///   CPU set virtual-NMI blocking for it (SDM 28.2.3), under which VM entry refuses to
    ///   inject an NMI (26.3.1.5). The NMI was not delivered: the blocking is cleared, and
    ///   the handler's redelivery sets it again (as KVM and bhyve do);
    /// - the exit came from a fault during the guest's IRET (bit 12 of the exit
    ///   qualification, for an EPT violation, or of the interruption information): the CPU
    ///   cleared the blocking the IRET was ending. The IRET did not complete and runs again
    ///   (or the handler injects its fault): the blocking is set again (as KVM does), so no
    ///   NMI comes before the IRET completes.
    fn nmi_blocking_at_exit(
        &mut self,
        vi: VcpuId,
        basic: u32,
        qualification: u64,
    ) -> Result<(), Gone> {
        let vectoring = self.vmcs_read(vi, field::IDT_VECTORING_INFO)?;
        let vectoring_nmi = vectoring & (1 << 31) != 0 && (vectoring >> 8) & 7 == NMI_TYPE;
        let iret = vectoring & (1 << 31) == 0
            && NMI_UNBLOCKING_BY_IRET
                & if basic == reason::EPT_VIOLATION {
                    qualification
                } else {
                    self.vmcs_read(vi, field::EXIT_INTR_INFO)?
                }
                != 0;
        if !(vectoring_nmi || iret)
            || self.vmcs_read(vi, field::PIN_BASED_CONTROLS)? & vmx::pin_based::VIRTUAL_NMIS == 0
        {
            return Ok(());
        }
        let b = self.vmcs_read(vi, field::GUEST_INTERRUPTIBILITY)?;
        let nmi = u64::from(vmx::interruptibility::NMI);
        let b = if iret { b | nmi } else { b & !nmi };
        self.vmcs_write(vi, field::GUEST_INTERRUPTIBILITY, b)
    }

    /// Whether vCPU `vi`'s deadline ([`field::DEADLINE`]) has passed at time-stamp `tsc`
    /// and its portal for [`reason::PREEMPTION_TIMER`] is an endpoint to tell. A passed
    /// deadline is cleared either way.
    fn deadline_passed(&mut self, vi: VcpuId, tsc: u64) -> Result<bool, Gone> {
        let deadline = self.vmcs_read(vi, field::DEADLINE)?;
        if deadline == 0 || tsc < deadline {
            return Ok(false);
        }
        self.vmcs_write(vi, field::DEADLINE, 0)?;
        Ok(matches!(
            self.vcpu(vi)?
                .portals
                .get(reason::PREEMPTION_TIMER as usize),
            Some(Portal::Endpoint { .. })
        ))
    }

    /// Counts (and traces) an exit the machine handled itself (an external interrupt) at
    /// time-stamp `tsc`; an event the interrupt cut short on its way into the guest is
    /// delivered again at the next entry ([`Self::reinject_vectoring`]).
    pub fn count_exit(&mut self, t: ThreadId, reason: u32, tsc: u64) {
        if let Some(vi) = self.vcpu_of(t) {
            // Gone: nothing to deliver again, nothing to count.
            let _ = self.reinject_vectoring(vi);
            let n = self
                .vcpu_mut(vi)
                .ok()
                .and_then(|v| v.exits.get_mut((reason & 0xffff) as usize));
            if let Some(n) = n {
                *n = n.saturating_add(1);
            }
            self.trace_exit(vi, reason, 0, tsc);
            self.trace_kernel_handled(vi);
        }
    }

    /// VMLAUNCH or VMRESUME of the current vCPU failed with VM-instruction error `error`.
    pub fn on_entry_failed(&mut self, error: u64) -> Next {
        if let Some(vi) = self.current.and_then(|c| self.vcpu_of(c)) {
            if let Ok(v) = self.vcpu_mut(vi) {
                v.last_exit = (1 << 31, error, 0);
                self.vcpu_stop(vi, stop::ENTRY_FAILED);
            }
        }
        self.schedule()
    }

    /// Answers CPUID, VMCALL and port I/O in the kernel (the floor of an exit round trip).
    #[inline(always)]
    fn reflect(&mut self, vi: VcpuId, basic: u32, len: u64) -> Result<(), Gone> {
        let v = slot_at_mut(&mut self.vcpus, vi)?;
        let r = &mut self.threads.get_mut(v.thread).ok_or(Gone)?.regs;
        answer(&mut self.machine, &mut v.hw, r, basic, len);
        Ok(())
    }

    /// Writes the exit message with the groups in `mask` straight into the vCPU thread's
    /// message buffer (the `ExitMessage` layout of `abi::vmx`, without building the struct:
    /// this is on every exit), as a message with [`vmx::EXIT_LABEL`] and `badge` (the
    /// portal capability's). Returns its length.
    pub(super) fn write_exit_message(
        &mut self,
        vi: VcpuId,
        exit: VmExit,
        mask: u32,
        badge: u64,
    ) -> usize {
        let Ok(v) = slot_at_mut(&mut self.vcpus, vi) else {
            return 0;
        };
        let Some(th) = self.threads.get_mut(v.thread) else {
            return 0;
        };
        Self::put_exit_message(&mut self.machine, v, th, exit, mask, badge)
    }

    /// [`Self::write_exit_message`] of vCPU `v` and its thread `th`, at hand.
    #[inline(always)]
    fn put_exit_message(
        m: &mut M,
        v: &mut super::Vcpu<M::Vmcs>,
        th: &mut Thread,
        exit: VmExit,
        mask: u32,
        badge: u64,
    ) -> usize {
        th.msg.label = vmx::EXIT_LABEL;
        th.msg.badge = badge;
        th.msg.grant = None;
        let len = Self::exit_message_bytes(m, v, th, exit, mask);
        th.msg.len = len;
        len
    }

    /// The bytes of [`Self::write_exit_message`], into `th`'s message buffer; their length.
    #[inline(always)]
    fn exit_message_bytes(
        m: &mut M,
        v: &mut super::Vcpu<M::Vmcs>,
        th: &mut Thread,
        exit: VmExit,
        mask: u32,
    ) -> usize {
        let hw = &mut v.hw;
        let out = &mut th.msg.data;
        let mut at = 0;
        if mask & group::GPRS != 0 {
            // The header and the registers in one pass: this is what most portals ask for.
            let r = &th.regs;
            let rsp = m.vmcs_read(hw, field::GUEST_RSP);
            let gprs = layout::group_at(mask, group::GPRS);
            let dst: Option<&mut [u8; size_of::<layout::Gprs>()]> = out
                .get_mut(gprs..gprs + size_of::<layout::Gprs>())
                .and_then(|d| d.try_into().ok());
            if let Some(dst) = dst {
                // Each register stored as it is read, in straight-line code (an array of all
                // sixteen first would be spilled to the stack and read back; a closure may
                // be called sixteen times).
                macro_rules! put {
                    ($($n:literal: $v:expr),*) => {
                        $(dst[$n * 8..$n * 8 + 8].copy_from_slice(&$v.to_le_bytes());)*
                    };
                }
                put!(0: r.rax, 1: r.rcx, 2: r.rdx, 3: r.rbx, 4: rsp, 5: r.rbp, 6: r.rsi,
                    7: r.rdi, 8: r.r8, 9: r.r9, 10: r.r10, 11: r.r11, 12: r.r12, 13: r.r13,
                    14: r.r14, 15: r.r15);
            }
            at = gprs + size_of::<layout::Gprs>();
        }
        if let Some(h) = out.get_mut(..layout::HEADER) {
            for (field, value) in [
                (offset_of!(layout::Header, reason), exit.reason),
                (offset_of!(layout::Header, mask), mask),
                (offset_of!(layout::Header, vcpu), v.id),
                (offset_of!(layout::Header, reserved), 0),
            ] {
                h[field..field + 4].copy_from_slice(&value.to_le_bytes());
            }
        }
        if at == 0 {
            at = layout::HEADER;
        }
        let mut put = |bytes: &[u8]| {
            if let Some(d) = out.get_mut(at..at + bytes.len()) {
                d.copy_from_slice(bytes);
            }
            at += bytes.len();
        };
        // Each group's fields are real VMCS fields, read with one VMCS load per group.
        if mask & group::RIP != 0 {
            let [rip, rflags, blocking] = m.vmcs_read_plain(
                hw,
                [
                    field::GUEST_RIP,
                    field::GUEST_RFLAGS,
                    field::GUEST_INTERRUPTIBILITY,
                ],
            );
            put(&rip.to_le_bytes());
            put(&rflags.to_le_bytes());
            put(&((exit.instruction_len & 0xffff_ffff) | blocking << 32).to_le_bytes());
        }
        if mask & group::CRS != 0 {
            let [cr0, cr4, mask0, mask4, shadow0, shadow4] = m.vmcs_read_plain(
                hw,
                [
                    field::GUEST_CR0,
                    field::GUEST_CR4,
                    field::CR0_GUEST_HOST_MASK,
                    field::CR4_GUEST_HOST_MASK,
                    field::CR0_READ_SHADOW,
                    field::CR4_READ_SHADOW,
                ],
            );
            // A shadow vCPU's guest has its own CR3 and EFER.
            let [cr3, efer] = if v.shadow {
                [v.guest_cr3, v.guest_efer]
            } else {
                m.vmcs_read_plain(hw, [field::GUEST_CR3, field::GUEST_IA32_EFER])
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
                let [selector, ar, limit, base] = m.vmcs_read_plain(
                    hw,
                    [
                        field::GUEST_ES_SELECTOR + 2 * n,
                        field::GUEST_ES_AR + 2 * n,
                        field::GUEST_ES_LIMIT + 2 * n,
                        field::GUEST_ES_BASE + 2 * n,
                    ],
                );
                put(&(selector as u16).to_le_bytes());
                put(&0u16.to_le_bytes());
                put(&(ar as u32).to_le_bytes());
                put(&(limit as u32).to_le_bytes());
                put(&0u32.to_le_bytes());
                put(&base.to_le_bytes());
            }
        }
        if mask & group::QUAL != 0 {
            // Built whole, then put once.
            let info = m.vmcs_read_plain(hw, QUAL_FIELDS.map(|(f, _)| f));
            let mut q = [0u8; size_of::<layout::Qual>()];
            let at = offset_of!(layout::Qual, qualification);
            q[at..at + 8].copy_from_slice(&exit.qualification.to_le_bytes());
            for ((_, at), v) in QUAL_FIELDS.into_iter().zip(info) {
                q[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes());
            }
            put(&q);
        }
        if mask & group::ADDR != 0 {
            let [gpa, gla] = m.vmcs_read_plain(
                hw,
                [field::GUEST_PHYSICAL_ADDRESS, field::GUEST_LINEAR_ADDRESS],
            );
            put(&gpa.to_le_bytes());
            put(&gla.to_le_bytes());
        }
        at.min(out.len())
    }

    /// Calls the portal endpoint with the exit message held in the vCPU thread. Returns the
    /// handler when the fast path handed it the message and made it current.
    pub(super) fn send_exit(&mut self, vi: VcpuId, cap: Cap) -> Option<ThreadId> {
        let t = {
            let Ok(v) = self.vcpu_mut(vi) else {
                return None;
            };
            v.run = VcpuRun::AwaitingReply;
            v.call_result = None;
            v.call_ep = Some(cap);
            v.thread
        };
        if self.fast_ipc {
            if let Some(r) = self.fast_send_exit(t, cap) {
                return Some(r);
            }
        }
        let open =
            slot_get(&self.endpoints, cap.obj).is_some_and(|e| e.state != EndpointState::Closed);
        if !open {
            self.vcpu_stop(vi, stop::PORTAL_GONE);
            return None;
        }
        // A call always blocks the caller (`Ok(None)`); delivery errors go to the receiver.
        let _ = self.send_loaded(t, cap.obj.id(), true);
        None
    }
}

/// The floor's answer to a reflected exit of basic reason `basic` (CPUID from the host,
/// VMCALL 0 in RAX, port I/O nothing) and RIP past the `len`-byte instruction.
#[inline(always)]
fn answer<M: Machine>(m: &mut M, hw: &mut M::Vmcs, r: &mut UserRegs, basic: u32, len: u64) {
    if basic == reason::CPUID {
        let out = m.host_cpuid(r.rax as u32, r.rcx as u32);
        r.rax = out[0] as u64;
        r.rbx = out[1] as u64;
        r.rcx = out[2] as u64;
        r.rdx = out[3] as u64;
    } else if basic == reason::VMCALL {
        r.rax = 0;
    }
    let rip = m.vmcs_read(hw, field::GUEST_RIP);
    m.vmcs_write(hw, field::GUEST_RIP, rip.wrapping_add(len));
}
