//! The VMM service protocol: run a VM from a configuration and get its summary back.
//!
//! `RunVm` creates the VM (guest RAM, EPT through the MMU service, one vCPU), loads the guest
//! image from a boot module, runs it until it stops, prints the summary on the console and
//! answers with it. Invalid configurations are refused before anything is created.
#![forbid(unsafe_code)]

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

use super::{ids, ProtoError, Protocol};
use crate::codec::{label, Message};

pub const PROTOCOL_ID: u16 = ids::VMM;
pub const VERSION: u16 = 1;
/// `0x0002_0001`.
pub const LABEL: u64 = label(PROTOCOL_ID, VERSION);

/// Longest VM name, module name and guest command line.
pub const NAME_MAX: usize = 16;
pub const MODULE_MAX: usize = 32;
pub const CMDLINE_MAX: usize = 64;
/// Exit reasons listed in a summary.
pub const SUMMARY_REASONS: usize = 16;
/// Guest RAM limits (MiB).
pub const RAM_MIN_MIB: u32 = 2;
pub const RAM_MAX_MIB: u32 = 64;
/// vCPUs per VM this VMM runs (no APIC/SIPI emulation yet: one).
pub const MAX_VCPUS: u8 = 1;

pub type Error = ProtoError<VmmError>;

#[derive(Clone, Copy, Debug)]
pub struct Vmm;

impl Protocol for Vmm {
    const PROTOCOL_ID: u16 = PROTOCOL_ID;
    const VERSION: u16 = VERSION;
    type Request = Request;
    type Response = Response;
    type ServiceError = VmmError;

    fn error_response(error: Error) -> Response {
        Response::Error(error)
    }
}

/// How the guest image is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryMode {
    /// A Multiboot (v1) ELF kernel: 32-bit protected mode, `EAX = 0x2BADB002`, `EBX` → info.
    Multiboot,
    /// A flat 64-bit image loaded at `load_gpa` and entered there in long mode with identity
    /// paging of the first GiB.
    Flat64 { load_gpa: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfig {
    /// Prefix of the guest's console lines.
    pub name: String<NAME_MAX>,
    /// The boot module holding the guest image (its command line's first word).
    pub module: String<MODULE_MAX>,
    pub ram_mib: u32,
    pub entry: EntryMode,
    pub vcpus: u8,
    /// The guest's command line (multiboot info).
    pub cmdline: String<CMDLINE_MAX>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Runs a VM to its end; answered with [`Response::Finished`].
    RunVm { config: VmConfig },
}

impl Message for Request {
    const OPCODE_COUNT: u32 = 1;
}

/// How a VM ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmResult {
    /// The guest wrote `value` to the isa-debug-exit port: `code` = `(value << 1) | 1`.
    DebugExit { code: u32 },
    /// The guest called the exit hypercall.
    HypercallExit { code: u64 },
    /// An exit no handler takes (basic reason).
    Unhandled { reason: u32 },
    /// The guest triple-faulted.
    TripleFault,
    /// VM entry failed (invalid guest state or a VM-instruction error).
    EntryFailed { reason: u32, error: u64 },
    /// The MMU service stopped it: an access outside RAM and outside any device.
    OutsideRam { gpa: u64 },
    /// Any other stop (the kernel's stop value).
    Stopped { stop: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSummary {
    pub result: VmResult,
    /// The guest RIP at the last exit.
    pub rip: u64,
    /// (basic exit reason, count), highest counts first.
    pub exits: Vec<(u8, u32), SUMMARY_REASONS>,
    pub total_exits: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Error(Error),
    Finished(VmSummary),
}

impl Message for Response {
    const OPCODE_COUNT: u32 = 2;
}

/// Why a configuration is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfigError {
    /// `ram_mib` outside [`RAM_MIN_MIB`]..=[`RAM_MAX_MIB`].
    RamSize,
    /// `vcpus` is 0 or above [`MAX_VCPUS`].
    VcpuCount,
    /// A flat image's load address is not 2 MiB aligned, or lies outside RAM.
    LoadAddress,
    /// The name is empty.
    EmptyName,
}

/// Errors of the VMM service (`ProtoError::Service`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmmError {
    InvalidConfig(ConfigError),
    /// No boot module has that name.
    NoSuchModule,
    /// The image could not be loaded (`what` is a short code of the loader error).
    BadImage {
        what: u8,
    },
    /// This machine has no usable VMX.
    NoVmx,
    /// The MMU service refused or is unreachable.
    Mmu,
    /// A kernel call failed with this error code.
    Kernel {
        error: u64,
    },
}
