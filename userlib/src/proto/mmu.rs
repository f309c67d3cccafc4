//! The MMU service protocol: the VMM hands a VM to the MMU service, which owns its
//! guest-physical mappings from then on: the EPT of an EPT VM (it answers EPT violations), or
//! the shadow page tables of a shadow-paged VM (it answers #PF, CR access and INVLPG exits).
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

use super::{ids, ProtoError, Protocol};
use crate::codec::{label, Message};

pub const PROTOCOL_ID: u16 = ids::MMU;
/// 3: `AttachVm` carries the VMM's key; `InjectFaults`, `Recovery`.
pub const VERSION: u16 = 3;
/// `0x0003_0003`.
pub const LABEL: u64 = label(PROTOCOL_ID, VERSION);

/// The vCPU id (reported in every exit message) that names VM `handle` of the MMU service
/// and its vCPU `index`.
pub const fn vcpu_id(handle: u32, index: u16) -> u32 {
    (handle << 16) | index as u32
}

/// The MMU service's VM handle in a vCPU id made by [`vcpu_id`].
pub const fn handle_of(vcpu_id: u32) -> u32 {
    vcpu_id >> 16
}

/// VMs the MMU service tracks at once.
pub const MAX_VMS: usize = 4;
// The stop codes of the MMU service's "stop VM" replies are in `super::stop_code`
// (`OUTSIDE_RAM`, `MMU_ERROR`, `UNEMULATED`), one number space with the VMM's.

pub type Error = ProtoError<MmuError>;

#[derive(Clone, Copy, Debug)]
pub struct Mmu;

impl Protocol for Mmu {
    const PROTOCOL_ID: u16 = PROTOCOL_ID;
    const VERSION: u16 = VERSION;
    type Request = Request;
    type Response = Response;
    type ServiceError = MmuError;

    fn error_response(error: Error) -> Response {
        Response::Error(error)
    }
}

/// A shadow-paged VM as the MMU service serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowParams {
    /// Previous roots per vCPU.
    pub prev_roots: u8,
    /// Pages of the pool the service allocates (and registers with `VmSetShadow`).
    pub pool_pages: u32,
    /// Never cache per-vCPU PAE roots (Linux KVM's policy).
    pub kvm_policy: bool,
    /// The guest's MAXPHYADDR (CPUID 0x80000008 as the VMM reports it): gpte address bits
    /// beyond it are reserved.
    pub maxphyaddr: u8,
    /// The guest's CPUID has 1 GiB pages (0x80000001:EDX.26); without it PS in a PDPTE is
    /// reserved.
    pub gbpages: bool,
}

/// The MMU service's counters of a shadow-paged VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowStats {
    /// #PF exits handled, of which fixed by building shadow entries.
    pub faults: u64,
    pub faults_fixed: u64,
    /// #PFs injected into the guest.
    pub pf_injected: u64,
    /// Guest page-table writes emulated.
    pub emulated_writes: u64,
    /// Shadow pages zapped.
    pub zaps: u64,
    /// CR3 loads handled.
    pub cr3_loads: u64,
    /// INVLPGs handled.
    pub invlpg: u64,
    /// Fast CR3 switch hits and misses, by paging mode: no paging, 2-level, PAE, 4-level.
    pub prev_roots_hits: [u64; 4],
    pub prev_roots_misses: [u64; 4],
    /// Pool pages in use and in all.
    pub pool_used: u32,
    pub pool_pages: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Grants the VM capability; answered with [`Response::Attached`]. The VMM then creates
    /// the vCPUs with ids [`vcpu_id`]`(handle, n)` and points their EPT-violation portals (an
    /// EPT VM) or #PF, CR-access and INVLPG portals (`shadow`) at the MMU endpoint. A shadow
    /// VM also needs [`Request::GrantRam`] before it runs.
    ///
    /// `key` is the VMM's name for the VM: an `AttachVm` with the key of a VM the service
    /// already has (a retry after the service restarted during the first one) answers with
    /// that VM's handle, and the VM capability sent along is dropped.
    AttachVm {
        key: u64,
        ram_pages: u64,
        shadow: Option<ShadowParams>,
    },
    /// Grants the VM's RAM (a memory object), which the service maps to walk the guest's
    /// tables. Shadow-paged VMs only.
    GrantRam { handle: u32 },
    /// Forgets the VM (its capability is deleted).
    DetachVm { handle: u32 },
    /// Answered with [`Response::Stats`].
    Stats { handle: u32 },
    /// Grants a read-only capability to vCPU `index` of shadow-paged VM `handle`: the service
    /// reads the registers and segments an emulated page-table write needs from it (the #PF
    /// exit message carries only what every fault needs).
    AttachVcpu { handle: u32, index: u16 },
    /// Test suites only (refused unless the kernel command line says `mmu.inject`): crash the
    /// service at about one exit in `every` from now on, `limit` times, sparing the first
    /// exit a new instance handles if `spare_first`; repeatable from `seed`. Answered with
    /// [`Response::Injecting`].
    InjectFaults {
        every: u32,
        limit: u32,
        spare_first: bool,
        seed: u64,
    },
    /// Answered with [`Response::Recovery`].
    Recovery,
}

impl Message for Request {
    const OPCODE_COUNT: u32 = 7;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Error(Error),
    Attached {
        handle: u32,
    },
    Detached,
    /// EPT violations answered, pages mapped, VMs stopped for an access outside RAM, and
    /// the shadow MMU's counters for a shadow-paged VM.
    Stats {
        violations: u64,
        pages_mapped: u64,
        stopped: u64,
        shadow: Option<ShadowStats>,
    },
    RamGranted,
    VcpuAttached,
    Injecting,
    /// Crashes injected (in all, and in the current `InjectFaults` phase), new instances
    /// whose first exit was the one a crash left unanswered (re-sent by the kernel), instances
    /// that recovered their VMs, and the cost of a restart: TSC ticks from a crash until the
    /// new instance answered the exit the crash left (Bochs: instructions), over `measured`
    /// restarts.
    Recovery {
        crashes: u32,
        phase_crashes: u32,
        resent: u32,
        recoveries: u32,
        measured: u32,
        median: u64,
        max: u64,
    },
}

impl Message for Response {
    const OPCODE_COUNT: u32 = 8;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmuError {
    /// The request came without the capability it needs, or with one of another kind (a VM
    /// for `AttachVm`, memory for `GrantRam`, a vCPU for `AttachVcpu`).
    NoGrant,
    /// All VM slots are taken.
    Full,
    /// No VM with that handle.
    UnknownVm,
    /// A kernel call failed with this error code.
    Kernel { error: u64 },
    /// The request needs a shadow-paged VM (or the parameters are out of range).
    NotShadow,
    /// The service has no memory left for the VM's shadow MMU.
    NoMemory,
    /// Fault injection is not enabled on this boot.
    NotPermitted,
}
