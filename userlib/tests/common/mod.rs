//! Shared by the host test binaries: hex literals, proptest strategies for every message type,
//! and the maximal value of every variant.
#![allow(dead_code)]

use heapless::{String, Vec};
use proptest::prelude::*;
use userlib::proto::echo::{self, CrashKind, EchoError, ECHO_CAPACITY, SUM_CAPACITY};
use userlib::proto::supervisor::{
    self, ServiceInfo, ServiceName, ServiceState, SupervisorError, MAX_SERVICES, NAME_LEN,
};
use userlib::proto::ProtoError;

/// Parses `"02 04 65 63"` into bytes.
pub fn hex(text: &str) -> std::vec::Vec<u8> {
    text.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).expect("hex byte"))
        .collect()
}

pub fn name(text: &str) -> ServiceName {
    String::try_from(text).expect("name fits")
}

pub fn bytes<const N: usize>(data: &[u8]) -> Vec<u8, N> {
    Vec::from_slice(data).expect("data fits")
}

// ---- strategies ----

/// Names of 0..=16 bytes, with multi-byte UTF-8 characters.
pub fn any_name() -> impl Strategy<Value = ServiceName> {
    proptest::collection::vec(any::<char>(), 0..=NAME_LEN).prop_map(|chars| {
        let mut name = ServiceName::new();
        for c in chars {
            if name.push(c).is_err() {
                break;
            }
        }
        name
    })
}

pub fn any_proto_error<E: Clone + core::fmt::Debug>(
    service: impl Strategy<Value = E> + 'static,
) -> impl Strategy<Value = ProtoError<E>> {
    prop_oneof![
        Just(ProtoError::Truncated),
        Just(ProtoError::UnknownOpcode),
        Just(ProtoError::Malformed),
        (any::<u16>(), any::<u16>())
            .prop_map(|(expected, got)| ProtoError::VersionMismatch { expected, got }),
        any::<u16>().prop_map(|got| ProtoError::WrongProtocol { got }),
        Just(ProtoError::TooLarge),
        service.prop_map(ProtoError::Service),
    ]
}

pub fn any_supervisor_error() -> impl Strategy<Value = SupervisorError> {
    prop_oneof![
        Just(SupervisorError::NoSuchService),
        Just(SupervisorError::ServiceDown),
        Just(SupervisorError::NotPermitted),
    ]
}

pub fn any_service_state() -> impl Strategy<Value = ServiceState> {
    prop_oneof![
        Just(ServiceState::Running),
        Just(ServiceState::Restarting),
        Just(ServiceState::Stopped),
        Just(ServiceState::GaveUp),
    ]
}

pub fn any_service_info() -> impl Strategy<Value = ServiceInfo> {
    (any_name(), any::<u32>(), any_service_state(), any::<u32>()).prop_map(
        |(name, generation, state, restarts)| ServiceInfo {
            name,
            generation,
            state,
            restarts,
        },
    )
}

pub fn any_supervisor_request() -> impl Strategy<Value = supervisor::Request> {
    use supervisor::Request;
    prop_oneof![
        Just(Request::Version),
        Just(Request::ListServices),
        any_name().prop_map(|name| Request::ServiceStatus { name }),
        any_name().prop_map(|name| Request::Lookup { name }),
        any_name().prop_map(|name| Request::Restart { name }),
        any::<u32>().prop_map(|code| Request::Shutdown { code }),
    ]
}

pub fn any_supervisor_response() -> impl Strategy<Value = supervisor::Response> {
    use supervisor::Response;
    prop_oneof![
        any_proto_error(any_supervisor_error()).prop_map(Response::Error),
        (any::<u16>(), any::<u16>())
            .prop_map(|(protocol, version)| Response::Version { protocol, version }),
        proptest::collection::vec(any_service_info(), 0..=MAX_SERVICES)
            .prop_map(|list| Response::Services(Vec::from_iter(list))),
        any_service_info().prop_map(Response::Status),
        Just(Response::Granted),
        any::<u32>().prop_map(|generation| Response::Restarted { generation }),
        Just(Response::ShuttingDown),
    ]
}

pub fn any_crash_kind() -> impl Strategy<Value = CrashKind> {
    prop_oneof![
        Just(CrashKind::PageFault),
        Just(CrashKind::InvalidOpcode),
        Just(CrashKind::GeneralProtection),
        Just(CrashKind::Panic),
    ]
}

pub fn any_echo_error() -> impl Strategy<Value = EchoError> {
    prop_oneof![
        Just(EchoError::NoGrant),
        Just(EchoError::MapFailed),
        Just(EchoError::LengthTooLarge),
    ]
}

pub fn any_echo_data() -> impl Strategy<Value = Vec<u8, ECHO_CAPACITY>> {
    proptest::collection::vec(any::<u8>(), 0..=ECHO_CAPACITY).prop_map(|data| bytes(&data))
}

pub fn any_echo_request() -> impl Strategy<Value = echo::Request> {
    use echo::Request;
    prop_oneof![
        Just(Request::Ping),
        any_echo_data().prop_map(|data| Request::Echo { data }),
        proptest::collection::vec(any::<u32>(), 0..=SUM_CAPACITY).prop_map(|values| {
            Request::Sum {
                values: Vec::from_slice(&values).expect("values fit"),
            }
        }),
        any_crash_kind().prop_map(|kind| Request::Crash { kind }),
        any::<u32>().prop_map(|len| Request::SumShared { len }),
        Just(Request::Stats),
    ]
}

pub fn any_echo_response() -> impl Strategy<Value = echo::Response> {
    use echo::Response;
    prop_oneof![
        any_proto_error(any_echo_error()).prop_map(Response::Error),
        any::<u32>().prop_map(|generation| Response::Pong { generation }),
        any_echo_data().prop_map(|data| Response::Echo { data }),
        any::<u64>().prop_map(|total| Response::Sum { total }),
        (any::<u64>(), any::<u32>())
            .prop_map(|(calls, generation)| Response::Stats { calls, generation }),
    ]
}

// ---- maximal values: the longest encoding of every variant ----

/// 16 bytes: the longest name.
pub fn longest_name() -> ServiceName {
    name("abcdefghijklmnop")
}

/// The `ProtoError` with the longest encoding (two 3-byte varints).
pub fn longest_proto_error<E>() -> ProtoError<E> {
    ProtoError::VersionMismatch {
        expected: u16::MAX,
        got: u16::MAX,
    }
}

pub fn longest_service_info() -> ServiceInfo {
    ServiceInfo {
        name: longest_name(),
        generation: u32::MAX,
        state: ServiceState::GaveUp,
        restarts: u32::MAX,
    }
}

pub fn maximal_supervisor_requests() -> std::vec::Vec<supervisor::Request> {
    use supervisor::Request;
    vec![
        Request::Version,
        Request::ListServices,
        Request::ServiceStatus {
            name: longest_name(),
        },
        Request::Lookup {
            name: longest_name(),
        },
        Request::Restart {
            name: longest_name(),
        },
        Request::Shutdown { code: u32::MAX },
    ]
}

pub fn maximal_supervisor_responses() -> std::vec::Vec<supervisor::Response> {
    use supervisor::Response;
    vec![
        Response::Error(longest_proto_error()),
        Response::Version {
            protocol: u16::MAX,
            version: u16::MAX,
        },
        Response::Services(Vec::from_iter(
            core::iter::repeat_with(longest_service_info).take(MAX_SERVICES),
        )),
        Response::Status(longest_service_info()),
        Response::Granted,
        Response::Restarted {
            generation: u32::MAX,
        },
        Response::ShuttingDown,
    ]
}

pub fn maximal_echo_requests() -> std::vec::Vec<echo::Request> {
    use echo::Request;
    vec![
        Request::Ping,
        Request::Echo {
            data: bytes(&[0xff; ECHO_CAPACITY]),
        },
        Request::Sum {
            values: Vec::from_slice(&[u32::MAX; SUM_CAPACITY]).expect("values fit"),
        },
        Request::Crash {
            kind: CrashKind::Panic,
        },
        Request::SumShared { len: u32::MAX },
        Request::Stats,
    ]
}

pub fn maximal_echo_responses() -> std::vec::Vec<echo::Response> {
    use echo::Response;
    vec![
        Response::Error(longest_proto_error()),
        Response::Pong {
            generation: u32::MAX,
        },
        Response::Echo {
            data: bytes(&[0xff; ECHO_CAPACITY]),
        },
        Response::Sum { total: u64::MAX },
        Response::Stats {
            calls: u64::MAX,
            generation: u32::MAX,
        },
    ]
}
