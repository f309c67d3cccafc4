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

pub mod isolation;

pub const PROTOCOL_ID: u16 = ids::VMM;
pub const VERSION: u16 = 9;
/// `0x0002_0009`.
pub const LABEL: u64 = label(PROTOCOL_ID, VERSION);

/// Longest VM name, module name and guest command line.
pub const NAME_MAX: usize = 16;
pub const MODULE_MAX: usize = 32;
pub const CMDLINE_MAX: usize = 128;
/// Exit reasons listed in a summary.
pub const SUMMARY_REASONS: usize = 16;
/// Guest RAM limits (MiB). The kernel's largest memory object (`MAX_MEMORY_PAGES`) and the
/// VMM's page budget (its manifest line) are sized for [`RAM_MAX_MIB`].
pub const RAM_MIN_MIB: u32 = 2;
pub const RAM_MAX_MIB: u32 = 1024;
/// Where a user's flat 64-bit image is loaded (`make run GUEST=... FLAT=1`): 2 MiB.
pub const DEFAULT_FLAT_LOAD_GPA: u64 = 2 << 20;
/// vCPUs per VM this VMM runs: vCPU 0 is the bootstrap processor, the others wait for the
/// INIT/SIPI it sends. (The kernel's vCPU table holds 8 in all.)
pub const MAX_VCPUS: u8 = 8;

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
    /// A Linux bzImage, by the Linux/x86 boot protocol: the zero page with the e820 map, the
    /// command line and [`VmConfig::initrd`]; the 64-bit entry when the image has one, else the
    /// 32-bit protected-mode entry (`vmm_service::loader::linux`).
    Linux,
}

/// Default number of previous roots a shadow-paged vCPU caches (KVM: 3).
pub const DEFAULT_PREV_ROOTS: u8 = 8;
/// Most previous roots a vCPU may cache.
pub const MAX_PREV_ROOTS: u8 = 30;
/// Default shadow page pool of a VM (pages of 4 KiB).
pub const DEFAULT_POOL_PAGES: u32 = 512;
/// Pool size limits (pages).
pub const POOL_MIN_PAGES: u32 = 16;
pub const POOL_MAX_PAGES: u32 = 2048;

/// Who translates guest-physical addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmuMode {
    /// The hardware, through EPT tables the MMU service fills on demand.
    Ept,
    /// The MMU service's shadow page tables.
    Shadow(ShadowConfig),
}

/// How a shadow-paged VM is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowConfig {
    /// Previous roots cached per vCPU for the fast CR3 switch.
    pub prev_roots: u8,
    /// Pages of the shadow page pool.
    pub pool_pages: u32,
    /// Per-vCPU PAE roots are never cached, as in Linux KVM (for comparisons).
    pub kvm_policy: bool,
    /// The kernel audits the shadow tables before every VM entry.
    pub audit: bool,
}

impl ShadowConfig {
    /// The default: [`DEFAULT_PREV_ROOTS`], [`DEFAULT_POOL_PAGES`], Umbra's policy, no audit.
    pub const DEFAULT: ShadowConfig = ShadowConfig {
        prev_roots: DEFAULT_PREV_ROOTS,
        pool_pages: DEFAULT_POOL_PAGES,
        kvm_policy: false,
        audit: false,
    };
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
    /// The guest's command line (multiboot info), after the image's file name: the guest reads
    /// `<module> <cmdline>`, as a multiboot loader gives a kernel its path first.
    pub cmdline: String<CMDLINE_MAX>,
    pub mmu: MmuMode,
    /// The exit benchmark's hypercalls (3 and 4: switch CPUID, VMCALL and I/O exits to the
    /// kernel's reflect path and back) are honoured. Off, they fail like unknown hypercalls:
    /// a guest must not bypass the VMM's CPUID policy and devices.
    pub benchmark: bool,
    /// The most milliseconds the run may last (0: no limit); a guest still running then is
    /// stopped ([`VmResult::TimeLimit`]), whether or not it exits.
    pub time_limit_ms: u32,
    /// Trace the VM's exits with the trace service (`proto::trace`): the VMM starts the
    /// tracing before the first entry and stops it at the end; [`VmSummary::trace`] is the
    /// VM's trace id to query the service with.
    pub trace: bool,
    /// What a reset of the guest does (port 0x92, the keyboard controller, 0xCF9, or a triple
    /// fault): the VM restarts, as a PC reboots, up to this many times (the image loaded
    /// again, every vCPU and device at power-on, RAM and CMOS kept); the reset after those
    /// stops it ([`VmResult::Reset`], [`VmResult::TripleFault`]). 0: the first reset stops
    /// it (QEMU's `-no-reboot`). [`VmSummary::resets`] counts the restarts.
    pub max_resets: u8,
    /// The boot module holding the initramfs of a [`EntryMode::Linux`] guest (empty: none;
    /// other entries must leave it empty).
    pub initrd: String<MODULE_MAX>,
}

// A probe carries two configurations; requests are built once per VM run and the protocol
// types stay allocation-free.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Runs a VM to its end; answered with [`Response::Finished`].
    RunVm { config: VmConfig },
    /// Runs the isolation probe (see [`isolation`]): `neighbour` fills its RAM and stays
    /// alive while `probe` accesses its whole guest-physical space; answered with
    /// [`Response::Probed`]. Both must be flat 64-bit images of `guest-isolation`.
    ProbeIsolation {
        probe: VmConfig,
        neighbour: VmConfig,
    },
}

impl Message for Request {
    const OPCODE_COUNT: u32 = 2;
}

/// The test guests' verdict when every check passed: they write 0x10 to port 0xf4
/// (`finish32`/`finish64` in `services/guests/src/rt/`), reported as
/// `VmResult::DebugExit { code: GUEST_PASS }`.
pub const GUEST_PASS: u32 = abi::qemu_debug_exit_status(0x10) as u32;
/// The test guests' verdict after a failed check: 0x11 to port 0xf4.
pub const GUEST_FAIL: u32 = abi::qemu_debug_exit_status(0x11) as u32;

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
    /// VM entry failed (invalid guest state or a VM-instruction error): `reason` the full
    /// exit reason, `error` the failed entry's exit qualification (which check failed) or the
    /// VM-instruction error of a VMfail.
    EntryFailed { reason: u32, error: u64 },
    /// The MMU service stopped it: an access outside RAM and outside any device.
    OutsideRam { gpa: u64 },
    /// Any other stop (the kernel's stop value).
    Stopped { stop: u64 },
    /// HLT with interrupts disabled, at `rip`: nothing could ever wake the vCPU.
    Halted { rip: u64 },
    /// The VMM got an exit message it could not decode (full exit reason).
    BadExit { reason: u32 },
    /// The MMU service is gone for good (the supervisor gave up restarting it): an exit of
    /// basic reason `reason` that it handles had nobody to go to.
    MmuGone { reason: u32 },
    /// The run lasted its `time_limit_ms`.
    TimeLimit,
    /// The guest powered the VM off: SLP_EN with SLP_TYP = S5 (the DSDT's `_S5`) in the
    /// FADT's PM1a control block.
    PoweredOff,
    /// The guest reset the machine through `port`: 0x92 (fast reset), 0x64 (the keyboard
    /// controller's reset line) or 0xCF9 (the FADT's reset register), after it had restarted
    /// [`VmConfig::max_resets`] times.
    Reset { port: u16 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSummary {
    pub result: VmResult,
    /// The guest RIP at the last exit.
    pub rip: u64,
    /// (basic exit reason, count), highest counts first.
    pub exits: Vec<(u8, u32), SUMMARY_REASONS>,
    pub total_exits: u64,
    /// The MMU service's counters for a shadow-paged VM.
    pub shadow: Option<super::mmu::ShadowStats>,
    /// The VM's trace id when it was traced ([`VmConfig::trace`]); after a restart, the id of
    /// the last boot's trace.
    pub trace: Option<u32>,
    /// Resets that restarted the VM ([`VmConfig::max_resets`]); the exit counts are those of
    /// every boot together.
    pub resets: u32,
}

// The summary is large (exit counts, shadow MMU counters); one is sent per VM run, and the
// protocol types stay allocation-free.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Error(Error),
    Finished(VmSummary),
    Probed(isolation::IsolationReport),
}

impl Message for Response {
    const OPCODE_COUNT: u32 = 3;
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
    /// `prev_roots` above [`MAX_PREV_ROOTS`], or the pool outside
    /// [`POOL_MIN_PAGES`]..=[`POOL_MAX_PAGES`].
    ShadowConfig,
    /// An isolation probe's VM is not a flat 64-bit image, the probe's RAM does not hold its
    /// point list, or the neighbour's RAM ends at or below [`isolation::FILL_START`].
    ProbeConfig,
    /// An initramfs named for an entry other than [`EntryMode::Linux`].
    InitrdNotLinux,
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
    /// Tracing was asked for, and the trace service is not wired to the VMM or refused.
    Trace,
}
