//! The supervisor protocol: find services, ask their state, restart them, end the scenario.
#![forbid(unsafe_code)]

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

use super::{ids, ProtoError, Protocol};
use crate::codec::{label, Message};

pub const PROTOCOL_ID: u16 = ids::SUPERVISOR;
/// 2: [`Request::Wiring`]; 3: [`Request::Keep`], [`Request::Fetch`], [`Request::Forget`].
pub const VERSION: u16 = 3;
/// `0x0001_0003`.
pub const LABEL: u64 = label(PROTOCOL_ID, VERSION);

/// Longest service name, in bytes.
pub const NAME_LEN: usize = 16;
/// Most services a [`Response::Services`] lists.
pub const MAX_SERVICES: usize = 8;
/// Most entries of a [`Response::Wiring`]: one per `needs=` name of the manifest.
pub const MAX_WIRES: usize = crate::manifest::MAX_NEEDS;

/// A service name (its boot module name).
pub type ServiceName = String<NAME_LEN>;

/// The error of a [`Response::Error`].
pub type Error = ProtoError<SupervisorError>;

/// The supervisor protocol, for [`crate::client::Client`] and [`crate::server::serve_one`].
#[derive(Clone, Copy, Debug)]
pub struct Supervisor;

impl Protocol for Supervisor {
    const PROTOCOL_ID: u16 = PROTOCOL_ID;
    const VERSION: u16 = VERSION;
    type Request = Request;
    type Response = Response;
    type ServiceError = SupervisorError;

    fn error_response(error: Error) -> Response {
        Response::Error(error)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Answered with [`Response::Version`].
    Version,
    /// Answered with [`Response::Services`].
    ListServices,
    /// Answered with [`Response::Status`].
    ServiceStatus { name: ServiceName },
    /// Answered with [`Response::Granted`]; the reply message grants a capability to the
    /// service's endpoint (the codec does not see capabilities: it travels beside the payload).
    Lookup { name: ServiceName },
    /// Kills the service and starts its next generation; answered with [`Response::Restarted`].
    Restart { name: ServiceName },
    /// Ends the scenario with exit code `code` (an `abi::ExitCode`); answered with
    /// [`Response::ShuttingDown`].
    Shutdown { code: u32 },
    /// Where the capabilities the caller's manifest line `needs=` landed in its table;
    /// answered with [`Response::Wiring`] (see `userlib::wiring`).
    Wiring,
    /// Keeps the capability sent with the request under the caller's `key`, across the
    /// caller's restarts (see `userlib::kept`); answered with [`Response::Kept`].
    Keep { key: u32 },
    /// Answered with [`Response::Granted`]: the reply carries a copy of what the caller kept
    /// under `key` ([`SupervisorError::NotKept`] if nothing).
    Fetch { key: u32 },
    /// Deletes what the caller kept under `key`; answered with [`Response::Forgotten`].
    Forget { key: u32 },
}

impl Message for Request {
    const OPCODE_COUNT: u32 = 10;
}

// Messages are fixed-size values (no heap in a service), so the size difference is the point.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The request failed.
    Error(Error),
    /// The protocol id and version the supervisor speaks.
    Version {
        protocol: u16,
        version: u16,
    },
    /// Every service the supervisor runs.
    Services(Vec<ServiceInfo, MAX_SERVICES>),
    /// One service.
    Status(ServiceInfo),
    /// The reply carries the service's endpoint capability.
    Granted,
    /// The service was restarted; `generation` is the new one.
    Restarted {
        generation: u32,
    },
    /// The scenario ends; no other request will be answered.
    ShuttingDown,
    /// The caller's capabilities by name, in manifest order.
    Wiring(Vec<Wire, MAX_WIRES>),
    Kept,
    Forgotten,
}

/// One capability a service was given at start: the `needs=` name and its slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wire {
    pub name: ServiceName,
    pub slot: u32,
}

impl Message for Response {
    const OPCODE_COUNT: u32 = 10;
}

/// What the supervisor knows of one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: ServiceName,
    /// Generation of the running (or next) task of the service; 1 for the first start.
    pub generation: u32,
    pub state: ServiceState,
    /// Restarts since boot.
    pub restarts: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceState {
    Running,
    /// It died; its next generation is being started.
    Restarting,
    /// It ended on its own, or was shut down.
    Stopped,
    /// It died too often; the supervisor no longer restarts it.
    GaveUp,
}

/// Errors of the supervisor itself (`ProtoError::Service`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SupervisorError {
    /// No service has that name.
    NoSuchService,
    /// The service is not running (stopped, or the supervisor gave up on it).
    ServiceDown,
    /// The caller may not make this request (e.g. restart or shut down).
    NotPermitted,
    /// Nothing is kept under that key.
    NotKept,
    /// The caller keeps as many capabilities as it may (or sent none to keep).
    KeepFull,
}
