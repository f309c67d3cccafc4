//! The wire codec of every IPC protocol: postcard encoding into a fixed buffer, strict decoding,
//! and the message label convention.
//!
//! A message is a `label: u64` and a payload of at most [`abi::ipc::MAX_PAYLOAD`] bytes. The
//! label names the protocol and its version, `label = (protocol_id << 16) | version`; the
//! payload is one `Request` or `Response` value encoded with postcard. Decoding never panics:
//! every malformed input gives a [`DecodeError`].
#![forbid(unsafe_code)]

use abi::ipc::MAX_PAYLOAD;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a payload could not be encoded or decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The payload ended before the value did.
    Truncated,
    /// The first byte(s) name no variant of the top-level `Request`/`Response` enum.
    UnknownOpcode,
    /// Anything else: a bad varint, bool, char or UTF-8 string, a sequence over its capacity,
    /// a nested enum variant out of range, or bytes left over after the value.
    Malformed,
    /// Encoding: the value does not fit the buffer or [`MAX_PAYLOAD`].
    TooLarge,
}

/// A top-level IPC message (a protocol's `Request` or `Response` enum).
///
/// `OPCODE_COUNT` is the number of variants: the encoding starts with the variant index as a
/// varint, and an index at or past `OPCODE_COUNT` decodes as [`DecodeError::UnknownOpcode`].
pub trait Message: Serialize + DeserializeOwned {
    /// Number of variants of the enum.
    const OPCODE_COUNT: u32;
}

/// Builds a message label from a protocol id and a protocol version.
pub const fn label(protocol_id: u16, version: u16) -> u64 {
    ((protocol_id as u64) << 16) | version as u64
}

/// The protocol id of a label (bits 16..32).
pub const fn label_protocol_id(label: u64) -> u16 {
    (label >> 16) as u16
}

/// The protocol version of a label (bits 0..16).
pub const fn label_version(label: u64) -> u16 {
    label as u16
}

/// True if the label uses only bits 0..32, as every protocol label does.
pub const fn label_is_protocol(label: u64) -> bool {
    label >> 32 == 0
}

/// Encodes `value` at the start of `buf` and returns the encoded length. At most
/// [`MAX_PAYLOAD`] bytes are used, whatever the length of `buf`.
pub fn encode<T: Serialize>(value: &T, buf: &mut [u8]) -> Result<usize, DecodeError> {
    let limit = buf.len().min(MAX_PAYLOAD);
    match postcard::to_slice(value, &mut buf[..limit]) {
        Ok(used) => Ok(used.len()),
        Err(postcard::Error::SerializeBufferFull) => Err(DecodeError::TooLarge),
        Err(_) => Err(DecodeError::Malformed),
    }
}

/// Decodes a top-level message, checking its opcode first and rejecting trailing bytes.
pub fn decode<M: Message>(bytes: &[u8]) -> Result<M, DecodeError> {
    match read_opcode(bytes)? {
        Some(opcode) if opcode < M::OPCODE_COUNT => decode_value(bytes),
        _ => Err(DecodeError::UnknownOpcode),
    }
}

/// Decodes any value that must fill `bytes` exactly (no opcode check).
pub fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, _trailing)) => Err(DecodeError::Malformed),
        Err(postcard::Error::DeserializeUnexpectedEnd) => Err(DecodeError::Truncated),
        Err(_) => Err(DecodeError::Malformed),
    }
}

/// Reads the leading varint (the enum variant index). `Ok(None)` if it does not fit a `u32`
/// (postcard would reject it as a bad enum); `Err(Truncated)` if the bytes end inside it.
fn read_opcode(bytes: &[u8]) -> Result<Option<u32>, DecodeError> {
    let mut value: u64 = 0;
    for (i, byte) in bytes.iter().take(5).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(u32::try_from(value).ok());
        }
    }
    if bytes.len() >= 5 {
        Ok(None)
    } else {
        Err(DecodeError::Truncated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_parts() {
        let l = label(0x1234, 0x0005);
        assert_eq!(l, 0x1234_0005);
        assert_eq!(label_protocol_id(l), 0x1234);
        assert_eq!(label_version(l), 5);
        assert!(label_is_protocol(l));
        assert!(!label_is_protocol(1 << 32));
    }

    #[test]
    fn opcode_varint() {
        assert_eq!(read_opcode(&[]), Err(DecodeError::Truncated));
        assert_eq!(read_opcode(&[0x05, 0xff]), Ok(Some(5)));
        assert_eq!(read_opcode(&[0x80, 0x01]), Ok(Some(128)));
        assert_eq!(read_opcode(&[0x80]), Err(DecodeError::Truncated));
        assert_eq!(
            read_opcode(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
            Ok(Some(u32::MAX))
        );
        assert_eq!(read_opcode(&[0xff, 0xff, 0xff, 0xff, 0x10]), Ok(None));
        assert_eq!(read_opcode(&[0x80, 0x80, 0x80, 0x80, 0x80]), Ok(None));
        assert_eq!(
            read_opcode(&[0x80, 0x80, 0x80, 0x80]),
            Err(DecodeError::Truncated)
        );
    }

    #[test]
    fn encode_respects_max_payload() {
        let mut big = [0u8; 2 * MAX_PAYLOAD];
        let bytes = [7u8; MAX_PAYLOAD];
        // A byte slice encodes as a 2-byte varint length (for 128..16384) and the bytes.
        assert_eq!(encode(&&bytes[..510], &mut big), Ok(MAX_PAYLOAD));
        assert_eq!(encode(&&bytes[..511], &mut big), Err(DecodeError::TooLarge));
        let mut small = [0u8; 4];
        assert_eq!(encode(&&bytes[..3], &mut small), Ok(4));
        assert_eq!(encode(&&bytes[..4], &mut small), Err(DecodeError::TooLarge));
    }

    #[test]
    fn decode_value_rejects_trailing_bytes() {
        assert_eq!(decode_value::<u8>(&[1]), Ok(1));
        assert_eq!(decode_value::<u8>(&[1, 2]), Err(DecodeError::Malformed));
        assert_eq!(decode_value::<u32>(&[0x80]), Err(DecodeError::Truncated));
        assert_eq!(decode_value::<bool>(&[2]), Err(DecodeError::Malformed));
    }
}
