//! Golden bytes: the postcard encoding of every request and response variant of every
//! protocol, pinned. A failure here means the wire format changed: bump the protocol VERSION.
//!
//! Reading the bytes: an enum starts with its variant index as a varint; a `u16`/`u32`/`u64`
//! is a varint (7 bits per byte, low first, bit 7 = more); a `u8` is one raw byte; a string or
//! vector is a varint length then its elements; struct fields follow in declaration order.

mod common;

use core::fmt::Debug;

use common::{bytes, hex, name};
use heapless::Vec;
use userlib::codec::{self, DecodeError, Message};
use userlib::proto::echo::{self, CrashKind, EchoError};
use userlib::proto::supervisor::{self, ServiceInfo, ServiceState, SupervisorError};
use userlib::proto::ProtoError;

/// Every value encodes to exactly its bytes and decodes back; the first bytes cover every
/// opcode `0..OPCODE_COUNT`, so the table holds every variant.
fn check_golden<M: Message + PartialEq + Debug>(cases: &[(M, &str)]) {
    let mut opcodes_seen = std::collections::BTreeSet::new();
    for (value, text) in cases {
        let expected = hex(text);
        let mut buf = [0u8; 512];
        let len = codec::encode(value, &mut buf).expect("encodes");
        assert_eq!(&buf[..len], &expected[..], "encoding of {value:?}");
        assert_eq!(codec::decode::<M>(&expected).as_ref(), Ok(value));
        opcodes_seen.insert(expected[0]);
    }
    let all: std::collections::BTreeSet<u8> = (0..M::OPCODE_COUNT as u8).collect();
    assert_eq!(opcodes_seen, all, "golden table misses a variant");
    assert_eq!(
        codec::decode::<M>(&[M::OPCODE_COUNT as u8]),
        Err(DecodeError::UnknownOpcode),
        "OPCODE_COUNT is larger than the number of variants"
    );
}

#[test]
fn labels() {
    assert_eq!(supervisor::LABEL, 0x0001_0001);
    assert_eq!(echo::LABEL, 0x0100_0001);
}

#[test]
fn supervisor_requests() {
    use supervisor::Request;
    check_golden(&[
        (Request::Version, "00"),
        (Request::ListServices, "01"),
        (
            Request::ServiceStatus { name: name("echo") },
            "02 04 65 63 68 6f",
        ),
        (
            Request::Lookup {
                name: name("supervisor"),
            },
            "03 0a 73 75 70 65 72 76 69 73 6f 72",
        ),
        (Request::Restart { name: name("mmu") }, "04 03 6d 6d 75"),
        (Request::Restart { name: name("") }, "04 00"),
        // 300 = 0b10_0101100: 0x2c | 0x80, then 2.
        (Request::Shutdown { code: 300 }, "05 ac 02"),
        (Request::Shutdown { code: 0 }, "05 00"),
    ]);
}

#[test]
fn supervisor_responses() {
    use supervisor::Response;
    check_golden(&[
        (Response::Error(ProtoError::Truncated), "00 00"),
        (Response::Error(ProtoError::UnknownOpcode), "00 01"),
        (Response::Error(ProtoError::Malformed), "00 02"),
        (
            Response::Error(ProtoError::VersionMismatch {
                expected: 1,
                got: 2,
            }),
            "00 03 01 02",
        ),
        // 0x100 = 256: 0x00 | 0x80, then 2.
        (
            Response::Error(ProtoError::WrongProtocol { got: 0x100 }),
            "00 04 80 02",
        ),
        (Response::Error(ProtoError::TooLarge), "00 05"),
        (
            Response::Error(ProtoError::Service(SupervisorError::NoSuchService)),
            "00 06 00",
        ),
        (
            Response::Error(ProtoError::Service(SupervisorError::ServiceDown)),
            "00 06 01",
        ),
        (
            Response::Error(ProtoError::Service(SupervisorError::NotPermitted)),
            "00 06 02",
        ),
        (
            Response::Version {
                protocol: 1,
                version: 1,
            },
            "01 01 01",
        ),
        (Response::Services(Vec::new()), "02 00"),
        // Two entries; 200 = 0x48 | 0x80, then 1.
        (
            Response::Services(Vec::from_iter([
                ServiceInfo {
                    name: name("echo"),
                    generation: 1,
                    state: ServiceState::Running,
                    restarts: 0,
                },
                ServiceInfo {
                    name: name("mmu"),
                    generation: 200,
                    state: ServiceState::GaveUp,
                    restarts: 127,
                },
            ])),
            "02 02  04 65 63 68 6f 01 00 00  03 6d 6d 75 c8 01 03 7f",
        ),
        (
            Response::Status(ServiceInfo {
                name: name("vmm"),
                generation: 3,
                state: ServiceState::Restarting,
                restarts: 2,
            }),
            "03 03 76 6d 6d 03 01 02",
        ),
        (
            Response::Status(ServiceInfo {
                name: name(""),
                generation: 0,
                state: ServiceState::Stopped,
                restarts: 0,
            }),
            "03 00 00 02 00",
        ),
        (Response::Granted, "04"),
        (Response::Restarted { generation: 128 }, "05 80 01"),
        (Response::ShuttingDown, "06"),
    ]);
}

#[test]
fn echo_requests() {
    use echo::Request;
    check_golden(&[
        (Request::Ping, "00"),
        (
            Request::Echo {
                data: bytes(&[1, 2, 0xff]),
            },
            "01 03 01 02 ff",
        ),
        (Request::Echo { data: Vec::new() }, "01 00"),
        // u32::MAX takes five bytes: four 0xff, then 0x0f.
        (
            Request::Sum {
                values: Vec::from_slice(&[1, 128, u32::MAX]).unwrap(),
            },
            "02 03 01 80 01 ff ff ff ff 0f",
        ),
        (
            Request::Crash {
                kind: CrashKind::PageFault,
            },
            "03 00",
        ),
        (
            Request::Crash {
                kind: CrashKind::InvalidOpcode,
            },
            "03 01",
        ),
        (
            Request::Crash {
                kind: CrashKind::GeneralProtection,
            },
            "03 02",
        ),
        (
            Request::Crash {
                kind: CrashKind::Panic,
            },
            "03 03",
        ),
        // 4096 = 0x1000: 0x00 | 0x80, then 0x20.
        (Request::SumShared { len: 4096 }, "04 80 20"),
        (Request::Stats, "05"),
    ]);
}

#[test]
fn echo_responses() {
    use echo::Response;
    check_golden(&[
        (Response::Error(ProtoError::Truncated), "00 00"),
        (Response::Error(ProtoError::UnknownOpcode), "00 01"),
        (Response::Error(ProtoError::Malformed), "00 02"),
        (
            Response::Error(ProtoError::VersionMismatch {
                expected: 1,
                got: 0,
            }),
            "00 03 01 00",
        ),
        (
            Response::Error(ProtoError::WrongProtocol { got: 1 }),
            "00 04 01",
        ),
        (Response::Error(ProtoError::TooLarge), "00 05"),
        (
            Response::Error(ProtoError::Service(EchoError::NoGrant)),
            "00 06 00",
        ),
        (
            Response::Error(ProtoError::Service(EchoError::MapFailed)),
            "00 06 01",
        ),
        (
            Response::Error(ProtoError::Service(EchoError::LengthTooLarge)),
            "00 06 02",
        ),
        (Response::Pong { generation: 1 }, "01 01"),
        (
            Response::Echo {
                data: bytes(&[0x00, 0x80]),
            },
            "02 02 00 80",
        ),
        // u64::MAX takes ten bytes: nine 0xff (63 bits), then 0x01.
        (
            Response::Sum { total: u64::MAX },
            "03 ff ff ff ff ff ff ff ff ff 01",
        ),
        (
            Response::Stats {
                calls: 300,
                generation: 2,
            },
            "04 ac 02 02",
        ),
    ]);
}

/// Encoded length of every maximal value; each must fit one message.
fn encoded_lengths<M: Message>(values: &[M]) -> std::vec::Vec<usize> {
    values
        .iter()
        .map(|value| {
            let mut buf = [0u8; 4096];
            let len = postcard::to_slice(value, &mut buf).expect("encodes").len();
            assert!(len <= abi::ipc::MAX_PAYLOAD, "{len} bytes");
            assert_eq!(codec::encode(value, &mut [0u8; 512]), Ok(len));
            len
        })
        .collect()
}

#[test]
fn maximal_messages_fit_one_payload() {
    // name: 1 + 16; ServiceInfo: 17 + 5 + 1 + 5 = 28; Services: 1 + 1 + 8 * 28 = 226.
    assert_eq!(
        encoded_lengths(&common::maximal_supervisor_requests()),
        [1, 1, 18, 18, 18, 6]
    );
    assert_eq!(
        encoded_lengths(&common::maximal_supervisor_responses()),
        [8, 7, 226, 29, 1, 6, 1]
    );
    // Echo: 1 + 2 + 509 = 512 exactly; Sum: 1 + 1 + 64 * 5 = 322.
    assert_eq!(
        encoded_lengths(&common::maximal_echo_requests()),
        [1, 512, 322, 2, 6, 1]
    );
    assert_eq!(
        encoded_lengths(&common::maximal_echo_responses()),
        [8, 6, 512, 11, 16]
    );
}

#[test]
fn echo_capacity_is_the_largest_that_fits() {
    // One more byte of data than ECHO_CAPACITY, with the same opcode and length prefix
    // layout, does not fit.
    let data = [0xffu8; echo::ECHO_CAPACITY + 1];
    let mut buf = [0u8; 1024];
    assert_eq!(
        codec::encode(&(1u8, &data[..]), &mut buf),
        Err(DecodeError::TooLarge)
    );
    assert_eq!(
        codec::encode(&(1u8, &data[..echo::ECHO_CAPACITY]), &mut buf),
        Ok(512)
    );
}
