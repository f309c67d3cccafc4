//! `userlib::proto`: the typed IPC protocols of the services.
//!
//! Each protocol module has a `PROTOCOL_ID`, a `VERSION`, the message `LABEL` built from both
//! (see [`crate::codec::label`]), a `Request` and a `Response` enum encoded with postcard, and
//! the service's error enum. A unit struct in each module implements [`Protocol`], which is
//! what [`crate::client::Client`] and [`crate::server::serve_one`] are generic over.
//!
//! Every `Response` enum has `Error(ProtoError<E>)` as its variant 0, so an error reply starts
//! with the byte `0x00` followed by the [`ProtoError`] in every protocol and version.
//! Changing an encoding is a deliberate version bump: the golden tests in
//! `userlib/tests/golden.rs` pin every variant.
//!
//! [`stop_code`] is not a protocol: it holds the stop codes the VMM and the MMU service put in
//! a stopping exit reply, one number space for both, and says where the other stop and exit
//! numbers live.
#![forbid(unsafe_code)]

pub mod echo;
pub mod mmu;
pub mod stop_code;
pub mod supervisor;
pub mod trace;
pub mod vmm;

use serde::{Deserialize, Serialize};

use crate::codec::{DecodeError, Message};

/// Protocol ids (bits 16..32 of a message label). 0 is never a protocol: labels below
/// `0x1_0000`, such as the kernel's fault notice label `0xfa17`, are not protocol messages.
pub mod ids {
    /// [`super::supervisor`].
    pub const SUPERVISOR: u16 = 0x0001;
    /// [`super::vmm`].
    pub const VMM: u16 = 0x0002;
    /// [`super::mmu`].
    pub const MMU: u16 = 0x0003;
    /// [`super::trace`].
    pub const TRACE: u16 = 0x0004;
    /// [`super::echo`], the test helper server of the on-target IPC suite.
    pub const ECHO: u16 = 0x0100;
}

/// The error carried by a `Response::Error`: the codec and label errors every server can
/// report, plus `Service(E)` for the errors of one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProtoError<E> {
    /// The request payload ended early.
    Truncated,
    /// The request's opcode (enum variant) is unknown to this server.
    UnknownOpcode,
    /// The request payload is not a valid encoding.
    Malformed,
    /// The label names this protocol with another version.
    VersionMismatch { expected: u16, got: u16 },
    /// The label names another protocol (`got` is its protocol id).
    WrongProtocol { got: u16 },
    /// The response would not fit one message.
    TooLarge,
    /// An error of the service itself.
    Service(E),
}

impl<E> From<DecodeError> for ProtoError<E> {
    fn from(error: DecodeError) -> Self {
        match error {
            DecodeError::Truncated => ProtoError::Truncated,
            DecodeError::UnknownOpcode => ProtoError::UnknownOpcode,
            DecodeError::Malformed => ProtoError::Malformed,
            DecodeError::TooLarge => ProtoError::TooLarge,
        }
    }
}

/// One IPC protocol: its label and message types.
pub trait Protocol {
    /// Bits 16..32 of the label.
    const PROTOCOL_ID: u16;
    /// Bits 0..16 of the label.
    const VERSION: u16;
    /// The label of every request and reply: `(PROTOCOL_ID << 16) | VERSION`.
    const LABEL: u64 = crate::codec::label(Self::PROTOCOL_ID, Self::VERSION);
    /// What the client sends.
    type Request: Message;
    /// What the server answers.
    type Response: Message;
    /// The service's own errors (the `E` of `ProtoError<E>`).
    type ServiceError;
    /// Wraps an error in the protocol's `Response::Error`.
    fn error_response(error: ProtoError<Self::ServiceError>) -> Self::Response;
}
