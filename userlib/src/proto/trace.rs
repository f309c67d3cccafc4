//! The trace service protocol: switch the exit tracing of a VM on and off, and read the
//! per-reason statistics the trace service keeps of its exits (counts, and log-linear
//! histograms of the exit-to-entry time and of the handler's share of it).
//!
//! The service drains the kernel's exit trace ring ([`abi::trace`]) before it answers a
//! [`Request::Query`], [`Request::Buckets`] or [`Request::Stop`], so an answer counts every
//! exit recorded before the request. A restarted service has lost its histograms: its
//! [`Status::restarted`] says so, and a VM it knows only from records in the ring (tracing
//! began before the restart) is listed under the name `vm<id>` with [`Totals::lost`] set.
#![forbid(unsafe_code)]

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

use super::{ids, ProtoError, Protocol};
use crate::codec::{label, Message};

pub const PROTOCOL_ID: u16 = ids::TRACE;
pub const VERSION: u16 = 1;
/// `0x0004_0001`.
pub const LABEL: u64 = label(PROTOCOL_ID, VERSION);

/// Longest VM name (as the VMM names VMs).
pub const NAME_MAX: usize = super::vmm::NAME_MAX;
/// Rows per [`Response::Rows`]: the most that fit one message with every field at its
/// largest (a [`Row`] takes up to 93 bytes: a 3-byte `u16` and nine 10-byte `u64`s; the rest
/// of the response up to 59; five rows would need 524 of the 512 bytes).
pub const ROWS_MAX: usize = 4;
/// Buckets per [`Response::Buckets`]: a [`Bucket`] takes up to 30 bytes, the rest up to 6,
/// so 16 take at most 486 bytes (17 would need 516).
pub const BUCKETS_MAX: usize = 16;

/// The error of a [`Response::Error`].
pub type Error = ProtoError<TraceError>;

/// The trace protocol, for [`crate::client::Client`] and [`crate::server::serve_one`].
#[derive(Clone, Copy, Debug)]
pub struct Trace;

impl Protocol for Trace {
    const PROTOCOL_ID: u16 = PROTOCOL_ID;
    const VERSION: u16 = VERSION;
    type Request = Request;
    type Response = Response;
    type ServiceError = TraceError;

    fn error_response(error: Error) -> Response {
        Response::Error(error)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Answered with [`Response::Status`].
    Status,
    /// The call grants a VM capability: trace that VM's exits under `name`. Answered with
    /// [`Response::Started`] (the kernel's trace id of the VM, the `vm` of later requests).
    Start { name: String<NAME_MAX> },
    /// Stop tracing VM `vm` (records still in the ring are counted first; its statistics
    /// stay readable); answered with [`Response::Done`].
    Stop { vm: u32 },
    /// Forget VM `vm`'s statistics (tracing goes on); answered with [`Response::Done`].
    Reset { vm: u32 },
    /// Rows of VM `vm`, one per basic exit reason in ascending code order, starting at reason
    /// `from_reason`; answered with [`Response::Rows`].
    Query { vm: u32, from_reason: u16 },
    /// The nonzero histogram buckets of (`vm`, `reason`, `share`), ascending, from the
    /// `from`-th nonzero bucket on (none for a reason the VM has not exited with); answered
    /// with [`Response::Buckets`].
    Buckets {
        vm: u32,
        reason: u16,
        share: Share,
        from: u16,
    },
    /// Crash the service (tests of restarts). Honoured only when the kernel command line
    /// has the word `trace.inject`, else answered `Error(Service(TraceError::InjectOff))`.
    Crash,
}

impl Message for Request {
    const OPCODE_COUNT: u32 = 7;
}

/// Which time of an exit a histogram holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Share {
    /// From the exit to the next entry (`t_entry - t_exit`).
    Full,
    /// The handler's share: from its receive to its reply (`t_reply - t_recv`).
    Handler,
}

impl Share {
    /// Its word in the `share=` field of a `trace-hist:` console line, which the harness
    /// parses back with [`Share::from_name`].
    pub const fn name(self) -> &'static str {
        match self {
            Share::Full => "full",
            Share::Handler => "handler",
        }
    }

    /// The share a [`Share::name`] names.
    pub fn from_name(s: &str) -> Option<Share> {
        [Share::Full, Share::Handler]
            .into_iter()
            .find(|share| share.name() == s)
    }
}

/// The service's state ([`Response::Status`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The service task's generation (1 for the first instance).
    pub generation: u64,
    /// This instance is not the first: the statistics gathered before it are lost.
    pub restarted: bool,
    /// Records read from the ring by this instance.
    pub records: u64,
    /// Records the kernel dropped because the ring was full (since boot).
    pub dropped: u64,
    /// VMs in the service's table.
    pub vms: u8,
}

/// One VM's totals, at the head of every [`Response::Rows`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub name: String<NAME_MAX>,
    /// Exits counted.
    pub exits: u64,
    /// Sum of their exit-to-entry times (cycles; saturating).
    pub time: u64,
    /// Records the kernel dropped (ring full; since boot, all VMs).
    pub dropped: u64,
    /// Exits of this VM were lost: it was traced before the service restarted.
    pub lost: bool,
}

/// One basic exit reason of a VM. Times are cycles (TSC); the quantiles are bucket upper
/// bounds within 1/16 of the true value (exact below 16), clamped to `[min, max]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// Basic exit reason (bits 0..16 of the full reason).
    pub reason: u16,
    /// Exits of this reason, including those that stopped the vCPU (no entry followed, so
    /// they have no time: the quantiles and `total` cover the others).
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    /// Sum of the exit-to-entry times (saturating).
    pub total: u64,
    /// Median of the handler's share (0 if no exit of this reason went to a handler).
    pub handler_p50: u64,
    /// Sum of the handler's shares (saturating).
    pub handler_total: u64,
}

/// One histogram bucket: `count` values in `lo..=hi`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub lo: u64,
    pub hi: u64,
    pub count: u64,
}

// Messages are fixed-size values (no heap in a service), so the size difference is the point.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The request failed.
    Error(Error),
    Status(Status),
    /// Tracing is on; `vm` is the VM's trace id.
    Started {
        vm: u32,
    },
    Done,
    /// `next`: the `from_reason` of the next page, `None` when this was the last.
    Rows {
        vm: u32,
        totals: Totals,
        rows: Vec<Row, ROWS_MAX>,
        next: Option<u16>,
    },
    /// `next`: the `from` of the next page, `None` when this was the last.
    Buckets {
        buckets: Vec<Bucket, BUCKETS_MAX>,
        next: Option<u16>,
    },
}

impl Message for Response {
    const OPCODE_COUNT: u32 = 6;
}

/// Errors of the trace service itself (`ProtoError::Service`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TraceError {
    /// No VM with that trace id in the service's table.
    UnknownVm,
    /// [`Request::Start`] came without a capability.
    NoVmCapability,
    /// The capability sent with [`Request::Start`] is not a VM.
    NotAVm,
    /// The service's VM table is full of traced VMs.
    TooManyVms,
    /// The service's heap is exhausted.
    OutOfMemory,
    /// [`Request::Crash`] without `trace.inject` on the kernel command line.
    InjectOff,
    /// A kernel call failed with this error code.
    Kernel { code: u16 },
}
