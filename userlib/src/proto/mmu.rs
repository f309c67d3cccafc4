//! The MMU service protocol: the VMM hands a VM to the MMU service, which owns its
//! guest-physical mappings (EPT) from then on and answers the VM's EPT-violation exits.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

use super::{ids, ProtoError, Protocol};
use crate::codec::{label, Message};

pub const PROTOCOL_ID: u16 = ids::MMU;
pub const VERSION: u16 = 1;
/// `0x0003_0001`.
pub const LABEL: u64 = label(PROTOCOL_ID, VERSION);

/// The vCPU id (reported in every exit message) that names VM `handle` of the MMU service
/// and its vCPU `index`.
pub const fn vcpu_id(handle: u32, index: u16) -> u64 {
    ((handle as u64) << 16) | index as u64
}

/// The MMU service's VM handle in a vCPU id made by [`vcpu_id`].
pub const fn handle_of(vcpu_id: u32) -> u32 {
    vcpu_id >> 16
}

/// VMs the MMU service tracks at once.
pub const MAX_VMS: usize = 4;
/// Stop code the MMU service puts in a "stop VM" reply for an access outside RAM (kind in
/// bits 24..32, like the VMM's own stop codes); the guest page number (gpa >> 12) is in the
/// low 24 bits ([`outside_ram_code`]).
pub const STOP_OUTSIDE_RAM: u64 = 0x0a << 24;

/// The stop code for an access at `gpa` outside RAM.
pub fn outside_ram_code(gpa: u64) -> u64 {
    STOP_OUTSIDE_RAM | ((gpa >> 12) & 0xff_ffff)
}

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Grants the VM capability; answered with [`Response::Attached`]. The VMM then creates
    /// the vCPUs with ids [`vcpu_id`]`(handle, n)` and points their EPT-violation portals at
    /// the MMU endpoint.
    AttachVm { ram_pages: u64 },
    /// Forgets the VM (its capability is deleted).
    DetachVm { handle: u32 },
    /// Answered with [`Response::Stats`].
    Stats { handle: u32 },
}

impl Message for Request {
    const OPCODE_COUNT: u32 = 3;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Error(Error),
    Attached {
        handle: u32,
    },
    Detached,
    /// EPT violations answered, pages mapped, VMs stopped for an access outside RAM.
    Stats {
        violations: u64,
        pages_mapped: u64,
        stopped: u64,
    },
}

impl Message for Response {
    const OPCODE_COUNT: u32 = 4;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmuError {
    /// `AttachVm` came without a VM capability.
    NoGrant,
    /// All VM slots are taken.
    Full,
    /// No VM with that handle.
    UnknownVm,
    /// A kernel call failed with this error code.
    Kernel { error: u64 },
}
