//! Virtual machines and vCPUs as kernel objects, and exit portals.
//!
//! A VM owns guest RAM (a memory object at guest-physical 0) and an EPT (`Machine::Ept`) that
//! only ever maps that RAM. A vCPU is a VMCS (`Machine::Vmcs`) plus a kernel thread of the
//! task that created it: the thread's register file holds the guest's general-purpose
//! registers, and the scheduler runs it like any thread, except that "running" means a VM
//! entry ([`Next::Guest`](super::Next::Guest)).
//!
//! On an exit the kernel looks up the vCPU's portal for the basic exit reason. A portal is an
//! endpoint plus a mask of state groups: the vCPU thread *calls* that endpoint with an
//! [`ExitMessage`] holding just those groups, and stays blocked until the handler replies with
//! an [`ExitReply`], which is applied when the vCPU is next scheduled ([`Kernel::vcpu_prepare`]).
//! A caller whose server restarts re-sends the same exit, so a restarted handler sees it again
//! and the guest notices nothing. No portal, a malformed reply, a closed endpoint, a failed VM
//! entry or a reply asking to stop: the vCPU stops, and the thread waiting in `VcpuRun` gets
//! why.
//!
//! The rules live in one file each:
//! - `lifecycle.rs`: the VM and vCPU objects, their syscalls and reference counts;
//! - `state.rs`: the state-access policy (`VcpuState`, what a write forces, shadow state);
//! - `exit_path.rs`: an exit to its portal, and the exit message;
//! - `entry_path.rs`: before an entry, the reply applied and the entry checked;
//! - `forward.rs`: an exit the MMU endpoint forwards to the MMIO portal (`reply::FORWARD`).
//!
//! [`ExitMessage`]: abi::vmx::ExitMessage
//! [`ExitReply`]: abi::vmx::ExitReply

use abi::cpu::cr0::{NE as CR0_NE, PE as CR0_PE, PG as CR0_PG};
use abi::cpu::cr4::VMXE as CR4_VMXE;
use abi::vmx::{reason, EXIT_REASONS};
use abi::Error;

use super::captable::{Cap, ObjRef};
use super::ids::{Gone, ThreadId, VcpuId};
use super::kernel::Kernel;
use super::machine::Machine;
use super::objects::{slot_at, slot_at_mut};
use super::shadow::ShadowVm;

mod entry_path;
mod exit_path;
mod forward;
mod lifecycle;
mod state;

pub const MAX_VMS: usize = 4;
pub const MAX_VCPUS: usize = 8;

/// The CR0 bits the kernel always intercepts: NE must stay set under VMX, and PE/PG
/// changes decide long mode and PAE PDPTE loading.
pub const CR0_OWNED: u64 = CR0_NE | CR0_PE | CR0_PG;
/// The CR4 bits the kernel always intercepts (VMXE must stay set and is hidden).
pub const CR4_OWNED: u64 = CR4_VMXE;

/// The exits a portal may answer in the kernel ([`Portal::Reflect`], the benchmark floor).
pub(super) const REFLECT_REASONS: [u32; 3] = [reason::CPUID, reason::VMCALL, reason::IO];

/// Where an exit reason goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Portal {
    /// Nowhere: the vCPU stops ([`stop::UNHANDLED`](abi::vmx::stop::UNHANDLED)).
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
    /// Where the VM's MMU endpoint forwards device accesses ([`abi::vmx::reason::MMIO`],
    /// `reply::FORWARD`).
    pub mmio_portal: Portal,
    /// The exit being handled was forwarded to the MMIO portal (it cannot be again).
    pub forwarded: bool,
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
    /// ([`stop::BAD_REPLY`](abi::vmx::stop::BAD_REPLY) for a reply's event,
    /// [`stop::ENTRY_FAILED`](abi::vmx::stop::ENTRY_FAILED) for `VcpuState`).
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
    #[inline(always)]
    fn vcpu(&self, vi: VcpuId) -> Result<&Vcpu<M::Vmcs>, Gone> {
        slot_at(&self.vcpus, vi)
    }

    #[inline(always)]
    fn vcpu_mut(&mut self, vi: VcpuId) -> Result<&mut Vcpu<M::Vmcs>, Gone> {
        slot_at_mut(&mut self.vcpus, vi)
    }

    /// The vCPU a thread runs, if it is a vCPU thread.
    #[inline]
    pub fn vcpu_of(&self, t: ThreadId) -> Option<VcpuId> {
        self.threads.get(t).and_then(|th| th.vcpu)
    }

    /// The guest register file and VMCS to enter for a [`Next::Guest`](super::Next::Guest) thread, and whether
    /// the VMCS was launched (VMRESUME) or not (VMLAUNCH).
    #[inline(always)]
    pub fn guest_context(
        &mut self,
        t: ThreadId,
    ) -> Result<(&mut super::regs::UserRegs, &mut M::Vmcs, bool), Gone> {
        let th = self.threads.get_mut(t).ok_or(Gone)?;
        let v = slot_at_mut(&mut self.vcpus, th.vcpu.ok_or(Gone)?)?;
        Ok((&mut th.regs, &mut v.hw, v.launched))
    }
}
