//! Forwarding (issue 12): the VM's MMU endpoint answers an access outside guest RAM with
//! [`reply::FORWARD`], and the kernel sends the same exit on to the vCPU's MMIO portal
//! ([`reason::MMIO`]) instead of resuming, with the device's guest-physical address as `gpa`
//! and the state groups that portal asked for. The VMM decides what is a device.
//!
//! The rules that live here:
//! - a FORWARD reply carries nothing else (no other flag, no register): anything more is a
//!   malformed reply ([`stop::BAD_REPLY`]);
//! - it is accepted only from the VM's MMU endpoint, answering the exit that endpoint takes:
//!   an EPT violation sent to the EPT-violation portal (an EPT VM; that portal names its MMU
//!   endpoint), or an exception (#PF) or a CR access (CR8, the VMM's TPR) sent to the shadow
//!   pool's MMU endpoint (a shadow VM);
//!   and only once per exit (the MMIO portal's handler cannot forward again). Otherwise:
//!   [`stop::BAD_REPLY`], nothing forwarded;
//! - a vCPU without an MMIO endpoint portal stops as an exit nobody handles
//!   ([`stop::UNHANDLED`], the exit's basic reason, the forwarded address as qualification).

use abi::vmx::{group, layout, reason, reply, stop, ExitReply};
use core::mem::offset_of;

use super::{Portal, VmExit};
use crate::kobj::ids::{Gone, VcpuId};
use crate::kobj::kernel::Kernel;
use crate::kobj::machine::Machine;

impl<M: Machine> Kernel<M> {
    /// Applies a reply with [`reply::FORWARD`] to vCPU `vi`: sends the exit on to the MMIO
    /// portal, or stops the vCPU. Returns whether to enter the guest (never).
    pub(super) fn forward_exit(&mut self, vi: VcpuId, r: &ExitReply) -> Result<bool, Gone> {
        if r.flags != reply::FORWARD || r.gpr_mask != 0 || !self.may_forward(vi)? {
            self.vcpu_stop(vi, stop::BAD_REPLY);
            return Ok(false);
        }
        let (cap, mask) = match self.vcpu(vi)?.mmio_portal {
            Portal::Endpoint { cap, mask } => (cap, mask),
            Portal::None | Portal::Reflect => {
                self.vcpu_mut(vi)?.last_exit.1 = r.forward_gpa;
                self.vcpu_stop(vi, stop::UNHANDLED);
                return Ok(false);
            }
        };
        let (reason, qualification, instruction_len) = self.vcpu(vi)?.last_exit;
        let exit = VmExit {
            reason,
            qualification,
            instruction_len,
            tsc: 0,
        };
        self.write_forwarded_message(vi, exit, mask, cap.badge, r.forward_gpa)?;
        self.vcpu_mut(vi)?.forwarded = true;
        self.send_exit(vi, cap);
        Ok(false)
    }

    /// Whether the exit vCPU `vi` is answering went to the VM's MMU endpoint (and was not
    /// forwarded already).
    fn may_forward(&self, vi: VcpuId) -> Result<bool, Gone> {
        let v = self.vcpu(vi)?;
        let Some(ep) = v.call_ep else {
            return Ok(false);
        };
        if v.forwarded {
            return Ok(false);
        }
        let basic = v.last_exit.0 & 0xffff;
        let sent_to_portal = |r: u32| {
            basic == r
                && matches!(v.portals.get(r as usize), Some(Portal::Endpoint { cap, .. })
                    if cap.obj == ep.obj)
        };
        if !v.shadow {
            return Ok(sent_to_portal(reason::EPT_VIOLATION));
        }
        let mmu_ep = self.shadow_vm(vi).and_then(|s| s.pool).map(|p| p.mmu_ep);
        // An EPT violation: a shadow vCPU in real mode runs on the VM's EPT.
        Ok((sent_to_portal(reason::EXCEPTION_NMI)
            || sent_to_portal(reason::CR_ACCESS)
            || sent_to_portal(reason::EPT_VIOLATION))
            && mmu_ep == Some(ep.obj))
    }

    /// The exit message of `exit` with the groups in `mask`, its guest-physical address
    /// replaced by `gpa`. Returns its length.
    fn write_forwarded_message(
        &mut self,
        vi: VcpuId,
        exit: VmExit,
        mask: u32,
        badge: u64,
        gpa: u64,
    ) -> Result<usize, Gone> {
        let len = self.write_exit_message(vi, exit, mask, badge);
        if mask & group::ADDR != 0 {
            let at = layout::group_at(mask, group::ADDR) + offset_of!(layout::Addr, gpa);
            let t = self.vcpu(vi)?.thread;
            if let Some(d) = self.thread_mut(t)?.msg.data.get_mut(at..at + 8) {
                d.copy_from_slice(&gpa.to_le_bytes());
            }
        }
        Ok(len)
    }
}
