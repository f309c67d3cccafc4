//! The real [`Transport`]: typed clients over an endpoint capability and the `call` syscall.
#![forbid(unsafe_code)]

use abi::ipc::MAX_PAYLOAD;
use abi::CapSlot;

use crate::client::{CallReply, Client, Transport, TransportError};
use crate::proto::Protocol;
use crate::sys::{self, SysError};

/// Calls through one endpoint capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint(pub CapSlot);

impl Transport for Endpoint {
    fn call(
        &mut self,
        label: u64,
        buf: &mut [u8; MAX_PAYLOAD],
        send_len: usize,
        grant: Option<CapSlot>,
    ) -> Result<CallReply, TransportError> {
        match sys::call(self.0, buf, send_len, label, grant) {
            Ok(r) => Ok(CallReply {
                label: r.label,
                len: r.len,
                cap: r.cap,
            }),
            Err(SysError::ServerRestarted { generation }) => {
                Err(TransportError::ServerRestarted { generation })
            }
            Err(e) => Err(TransportError::Kernel(e.code())),
        }
    }
}

/// A typed client of protocol `P` over endpoint capability `ep`.
pub fn client<P: Protocol>(ep: CapSlot) -> Client<Endpoint, P> {
    Client::new(Endpoint(ep))
}
