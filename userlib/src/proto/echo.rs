//! The echo protocol: the test helper server of the on-target IPC suite. It answers pings,
//! echoes and sums data (inline or in a granted memory object), and crashes on request.
#![forbid(unsafe_code)]

use heapless::Vec;
use serde::{Deserialize, Serialize};

use super::{ids, ProtoError, Protocol};
use crate::codec::{label, Message};

pub const PROTOCOL_ID: u16 = ids::ECHO;
pub const VERSION: u16 = 1;
/// `0x0100_0001`.
pub const LABEL: u64 = label(PROTOCOL_ID, VERSION);

/// Most bytes a [`Request::Echo`] carries: 512 minus 1 byte of opcode and 2 bytes of length.
pub const ECHO_CAPACITY: usize = 509;
/// Most values a [`Request::Sum`] carries.
pub const SUM_CAPACITY: usize = 64;

/// The error of a [`Response::Error`].
pub type Error = ProtoError<EchoError>;

/// The echo protocol, for [`crate::client::Client`] and [`crate::server::serve_one`].
#[derive(Clone, Copy, Debug)]
pub struct Echo;

impl Protocol for Echo {
    const PROTOCOL_ID: u16 = PROTOCOL_ID;
    const VERSION: u16 = VERSION;
    type Request = Request;
    type Response = Response;
    type ServiceError = EchoError;

    fn error_response(error: Error) -> Response {
        Response::Error(error)
    }
}

// Messages are fixed-size values (no heap in a service), so the size difference is the point.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Answered with [`Response::Pong`].
    Ping,
    /// Answered with [`Response::Echo`] holding the same bytes.
    Echo { data: Vec<u8, ECHO_CAPACITY> },
    /// Answered with [`Response::Sum`] of the values.
    Sum { values: Vec<u32, SUM_CAPACITY> },
    /// The server crashes this way while handling the call, before replying.
    Crash { kind: CrashKind },
    /// The call grants a memory object; the server maps it and answers with [`Response::Sum`]
    /// of its first `len` bytes.
    SumShared { len: u32 },
    /// Answered with [`Response::Stats`].
    Stats,
}

impl Message for Request {
    const OPCODE_COUNT: u32 = 6;
}

// Messages are fixed-size values (no heap in a service), so the size difference is the point.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The request failed.
    Error(Error),
    /// `generation` is the server task's generation.
    Pong {
        generation: u32,
    },
    Echo {
        data: Vec<u8, ECHO_CAPACITY>,
    },
    Sum {
        total: u64,
    },
    /// Calls handled by this generation of the server.
    Stats {
        calls: u64,
        generation: u32,
    },
}

impl Message for Response {
    const OPCODE_COUNT: u32 = 5;
}

/// How [`Request::Crash`] makes the server die.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CrashKind {
    /// Reads an unmapped address.
    PageFault,
    /// Executes `ud2`.
    InvalidOpcode,
    /// Loads a non-canonical address.
    GeneralProtection,
    /// Calls `panic!`.
    Panic,
}

/// Errors of the echo server itself (`ProtoError::Service`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EchoError {
    /// [`Request::SumShared`] came without a memory capability.
    NoGrant,
    /// The granted capability could not be mapped.
    MapFailed,
    /// `len` is larger than the granted memory object.
    LengthTooLarge,
}
