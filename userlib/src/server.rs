//! The server side of a protocol: [`serve_one`] turns one received message into one reply.
#![forbid(unsafe_code)]

use crate::codec::{self, label_is_protocol, label_protocol_id, label_version};
use crate::proto::{ProtoError, Protocol};

/// Handles one request of protocol `P` and writes the reply into `reply_buf`.
///
/// Checks the label (another protocol id gives `WrongProtocol`, another version
/// `VersionMismatch`), decodes the request (a bad payload gives `Truncated`, `UnknownOpcode`
/// or `Malformed`), calls `handler`, and encodes its response (a response too large for one
/// message is replaced by `TooLarge`). Errors are answered as `Response::Error`; this function
/// never panics. Returns the reply label (always `P::LABEL`) and the reply length, which is 0
/// only if `reply_buf` cannot even hold an error response.
///
/// Capabilities travel beside the payload: a handler that needs the granted capability, or
/// grants one in the reply, gets and returns it through its own captured state.
pub fn serve_one<P: Protocol>(
    label: u64,
    request_bytes: &[u8],
    reply_buf: &mut [u8],
    mut handler: impl FnMut(P::Request) -> P::Response,
) -> (u64, usize) {
    let response = match check_label::<P>(label) {
        Err(error) => P::error_response(error),
        Ok(()) => match codec::decode::<P::Request>(request_bytes) {
            Ok(request) => handler(request),
            Err(error) => P::error_response(error.into()),
        },
    };
    let len = match codec::encode(&response, reply_buf) {
        Ok(len) => len,
        Err(error) => codec::encode(&P::error_response(error.into()), reply_buf).unwrap_or(0),
    };
    (P::LABEL, len)
}

/// `Ok` if `label` is `P::LABEL`, the error to answer otherwise.
pub fn check_label<P: Protocol>(label: u64) -> Result<(), ProtoError<P::ServiceError>> {
    let got = label_protocol_id(label);
    if !label_is_protocol(label) || got != P::PROTOCOL_ID {
        return Err(ProtoError::WrongProtocol { got });
    }
    let version = label_version(label);
    if version != P::VERSION {
        return Err(ProtoError::VersionMismatch {
            expected: P::VERSION,
            got: version,
        });
    }
    Ok(())
}
