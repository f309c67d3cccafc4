//! The client side of a protocol: a [`Transport`] that makes one IPC call, and a typed
//! [`Client`] that encodes the request, calls, checks the reply label and decodes the reply.
#![forbid(unsafe_code)]

use core::marker::PhantomData;

use abi::cap::CapSlot;
use abi::ipc::MAX_PAYLOAD;

use crate::codec::{self, DecodeError};
use crate::proto::Protocol;

/// Why a [`Transport::call`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportError {
    /// The server died during the call and is being restarted; `generation` is the generation
    /// of the server that will handle a retry (the kernel returns it in `rdi`).
    ServerRestarted { generation: u64 },
    /// Any other kernel error ([`abi::Error::ServerGone`] when the endpoint is closed).
    Kernel(abi::Error),
}

impl TransportError {
    /// Builds the error from a failed `call`: its error code and the `rdi` result register.
    pub fn from_syscall(error: abi::Error, rdi: u64) -> TransportError {
        match error {
            abi::Error::ServerRestarted => TransportError::ServerRestarted { generation: rdi },
            other => TransportError::Kernel(other),
        }
    }
}

/// What a successful [`Transport::call`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallReply {
    /// The reply's label.
    pub label: u64,
    /// Bytes of the reply payload at the start of the buffer.
    pub len: usize,
    /// The capability the reply granted, if any (a slot in the caller's table).
    pub cap: Option<CapSlot>,
}

/// One IPC call on one endpoint (the kernel's `call` syscall, or a test double).
pub trait Transport {
    /// Sends `buf[..send_len]` with `label`, granting `grant` if given, and waits for the
    /// reply, which overwrites `buf`.
    fn call(
        &mut self,
        label: u64,
        buf: &mut [u8; MAX_PAYLOAD],
        send_len: usize,
        grant: Option<CapSlot>,
    ) -> Result<CallReply, TransportError>;
}

/// Why a [`Client`] call failed. A server's error answer is not a `ClientError`: it is an
/// `Ok(Response::Error(..))` for the caller to match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// The request did not encode (too large for one message).
    Encode(DecodeError),
    /// The reply payload did not decode.
    Decode(DecodeError),
    /// The kernel refused the call.
    Kernel(abi::Error),
    /// The server died during the call; a retry goes to `generation`.
    ServerRestarted { generation: u64 },
    /// The endpoint is closed for good.
    ServerGone,
    /// The reply's label is not the protocol's label (another protocol or version answered).
    BadReplyLabel { got: u64 },
}

impl From<TransportError> for ClientError {
    fn from(error: TransportError) -> Self {
        match error {
            TransportError::ServerRestarted { generation } => {
                ClientError::ServerRestarted { generation }
            }
            TransportError::Kernel(abi::Error::ServerGone) => ClientError::ServerGone,
            TransportError::Kernel(other) => ClientError::Kernel(other),
        }
    }
}

/// A decoded reply and the capability it granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply<R> {
    pub response: R,
    pub cap: Option<CapSlot>,
}

/// A typed client of protocol `P` over transport `T`.
pub struct Client<T: Transport, P: Protocol> {
    transport: T,
    buf: [u8; MAX_PAYLOAD],
    protocol: PhantomData<P>,
}

impl<T: Transport, P: Protocol> Client<T, P> {
    pub fn new(transport: T) -> Self {
        Client {
            transport,
            buf: [0; MAX_PAYLOAD],
            protocol: PhantomData,
        }
    }

    /// Sends `request` and returns the decoded response. A capability granted by the reply
    /// is dropped from the result (use [`Client::call_with_cap`] to keep it).
    pub fn call(&mut self, request: &P::Request) -> Result<P::Response, ClientError> {
        self.call_with_cap(request, None)
            .map(|reply| reply.response)
    }

    /// Sends `request`, granting `grant` if given, and returns the decoded response with the
    /// capability the reply granted.
    pub fn call_with_cap(
        &mut self,
        request: &P::Request,
        grant: Option<CapSlot>,
    ) -> Result<Reply<P::Response>, ClientError> {
        let send_len = codec::encode(request, &mut self.buf).map_err(ClientError::Encode)?;
        let reply = self
            .transport
            .call(P::LABEL, &mut self.buf, send_len, grant)?;
        if reply.label != P::LABEL {
            return Err(ClientError::BadReplyLabel { got: reply.label });
        }
        let payload = self
            .buf
            .get(..reply.len)
            .ok_or(ClientError::Decode(DecodeError::TooLarge))?;
        let response = codec::decode(payload).map_err(ClientError::Decode)?;
        Ok(Reply {
            response,
            cap: reply.cap,
        })
    }

    pub fn transport(&mut self) -> &mut T {
        &mut self.transport
    }

    pub fn into_transport(self) -> T {
        self.transport
    }
}
