//! Hostile input: random bytes, truncated encodings, out-of-range opcodes and trailing bytes,
//! fed to every decoder and to `serve_one`. Nothing panics; every failure is a typed error.

mod common;

use core::fmt::Debug;

use common::*;
use proptest::prelude::*;
use userlib::codec::{self, label, DecodeError, Message};
use userlib::proto::echo::{self, Echo};
use userlib::proto::mmu::{self, Mmu};
use userlib::proto::supervisor::{self, Supervisor};
use userlib::proto::trace::{self, Trace};
use userlib::proto::vmm::{self, Vmm};
use userlib::proto::{ProtoError, Protocol};
use userlib::server::serve_one;

fn encode<M: Message>(value: &M) -> Vec<u8> {
    let mut buf = [0u8; abi::ipc::MAX_PAYLOAD];
    let len = codec::encode(value, &mut buf).expect("encodes");
    buf[..len].to_vec()
}

/// Postcard varint of `value`.
fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// Random bytes: a decode either fails with a typed error or gives a value that re-encodes
/// and decodes to itself; an out-of-range first byte is always `UnknownOpcode`.
fn random_bytes<M: Message + PartialEq + Debug>(bytes: &[u8]) -> Result<(), TestCaseError> {
    match codec::decode::<M>(bytes) {
        Ok(value) => {
            let again = encode(&value);
            prop_assert_eq!(codec::decode::<M>(&again), Ok(value));
        }
        Err(DecodeError::TooLarge) => prop_assert!(false, "TooLarge is an encode error"),
        Err(_) => {}
    }
    if let Some(&first) = bytes.first() {
        if first < 0x80 && u32::from(first) >= M::OPCODE_COUNT {
            prop_assert_eq!(codec::decode::<M>(bytes), Err(DecodeError::UnknownOpcode));
        }
    } else {
        prop_assert_eq!(codec::decode::<M>(bytes), Err(DecodeError::Truncated));
    }
    Ok(())
}

/// Every strict prefix of a valid encoding is `Truncated`; any trailing byte is `Malformed`;
/// the same body behind an out-of-range opcode is `UnknownOpcode`.
fn damaged<M: Message>(
    value: &M,
    cut: usize,
    extra: &[u8],
    opcode: u64,
) -> Result<(), TestCaseError> {
    let bytes = encode(value);
    let cut = cut % bytes.len();
    prop_assert_eq!(
        codec::decode::<M>(&bytes[..cut]).err(),
        Some(DecodeError::Truncated)
    );

    let mut longer = bytes.clone();
    longer.extend_from_slice(extra);
    prop_assert_eq!(
        codec::decode::<M>(&longer).err(),
        Some(DecodeError::Malformed)
    );

    // Every variant index here is below 128, so the opcode is the first byte.
    let opcode = u64::from(M::OPCODE_COUNT) + opcode;
    let mut renumbered = varint(opcode);
    renumbered.extend_from_slice(&bytes[1..]);
    prop_assert_eq!(
        codec::decode::<M>(&renumbered).err(),
        Some(DecodeError::UnknownOpcode)
    );
    Ok(())
}

/// Arbitrary values encode within one payload and decode to themselves.
fn round_trip<M: Message + PartialEq + Debug>(value: &M) -> Result<(), TestCaseError> {
    let bytes = encode(value);
    let decoded = codec::decode::<M>(&bytes);
    prop_assert_eq!(decoded.as_ref(), Ok(value));
    Ok(())
}

/// `serve_one` on any label and bytes: the reply always has the protocol's label and decodes
/// to the handler's response or to the error `decode`/`check_label` predicted.
fn serve_any<P: Protocol>(
    label: u64,
    bytes: &[u8],
    answer: P::Response,
) -> Result<(), TestCaseError>
where
    P::Response: PartialEq + Debug + Clone,
    P::ServiceError: PartialEq + Debug,
{
    let mut reply = [0u8; abi::ipc::MAX_PAYLOAD];
    let mut handled = 0;
    let (reply_label, len) = serve_one::<P>(label, bytes, &mut reply, |_| {
        handled += 1;
        answer.clone()
    });
    prop_assert_eq!(reply_label, P::LABEL);
    let response = codec::decode::<P::Response>(&reply[..len]);
    let decoded = userlib::server::check_label::<P>(label)
        .and_then(|()| codec::decode::<P::Request>(bytes).map_err(ProtoError::from));
    prop_assert_eq!(handled, usize::from(decoded.is_ok()));
    let expected = match decoded {
        Ok(_) => answer,
        Err(error) => P::error_response(error),
    };
    prop_assert_eq!(response, Ok(expected));
    Ok(())
}

fn any_label() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(supervisor::LABEL),
        Just(echo::LABEL),
        Just(vmm::LABEL),
        Just(mmu::LABEL),
        Just(trace::LABEL),
        any::<u16>().prop_map(|version| label(supervisor::PROTOCOL_ID, version)),
        any::<u16>().prop_map(|version| label(echo::PROTOCOL_ID, version)),
        any::<u16>().prop_map(|version| label(vmm::PROTOCOL_ID, version)),
        any::<u16>().prop_map(|version| label(mmu::PROTOCOL_ID, version)),
        any::<u16>().prop_map(|version| label(trace::PROTOCOL_ID, version)),
        any::<u64>(),
    ]
}

/// Random bytes, half of them behind a valid opcode so decoding gets past the first byte.
fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
    let random = proptest::collection::vec(any::<u8>(), 0..=600);
    prop_oneof![
        random.clone(),
        (0u8..7, random).prop_map(|(opcode, body)| {
            let mut bytes = vec![opcode];
            bytes.extend(body);
            bytes
        }),
    ]
}

/// A valid encoding with one to three bytes overwritten: reaches deeper into the nested
/// types than random bytes do (a bool or `Option` tag of 2, a string length over capacity,
/// a nested variant out of range, a varint that now runs on or ends early).
fn any_mutated<M: Message>(values: impl Strategy<Value = M>) -> impl Strategy<Value = Vec<u8>> {
    (
        values,
        proptest::collection::vec((any::<usize>(), any::<u8>()), 1..=3),
    )
        .prop_map(|(value, edits)| {
            let mut bytes = encode(&value);
            let len = bytes.len();
            for (at, byte) in edits {
                bytes[at % len] = byte;
            }
            bytes
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn random_bytes_supervisor(bytes in any_bytes()) {
        random_bytes::<supervisor::Request>(&bytes)?;
        random_bytes::<supervisor::Response>(&bytes)?;
    }

    #[test]
    fn random_bytes_echo(bytes in any_bytes()) {
        random_bytes::<echo::Request>(&bytes)?;
        random_bytes::<echo::Response>(&bytes)?;
    }

    #[test]
    fn random_bytes_vmm(bytes in any_bytes()) {
        random_bytes::<vmm::Request>(&bytes)?;
        random_bytes::<vmm::Response>(&bytes)?;
    }

    #[test]
    fn random_bytes_mmu(bytes in any_bytes()) {
        random_bytes::<mmu::Request>(&bytes)?;
        random_bytes::<mmu::Response>(&bytes)?;
    }

    #[test]
    fn random_bytes_trace(bytes in any_bytes()) {
        random_bytes::<trace::Request>(&bytes)?;
        random_bytes::<trace::Response>(&bytes)?;
    }

    #[test]
    fn mutated_trace_request(bytes in any_mutated(any_trace_request())) {
        random_bytes::<trace::Request>(&bytes)?;
    }

    #[test]
    fn mutated_trace_response(bytes in any_mutated(any_trace_response())) {
        random_bytes::<trace::Response>(&bytes)?;
    }

    #[test]
    fn mutated_vmm_request(bytes in any_mutated(any_vmm_request())) {
        random_bytes::<vmm::Request>(&bytes)?;
    }

    #[test]
    fn mutated_vmm_response(bytes in any_mutated(any_vmm_response())) {
        random_bytes::<vmm::Response>(&bytes)?;
    }

    #[test]
    fn mutated_mmu_request(bytes in any_mutated(any_mmu_request())) {
        random_bytes::<mmu::Request>(&bytes)?;
    }

    #[test]
    fn mutated_mmu_response(bytes in any_mutated(any_mmu_response())) {
        random_bytes::<mmu::Response>(&bytes)?;
    }

    #[test]
    fn damaged_supervisor_request(
        value in any_supervisor_request(), cut in any::<usize>(),
        extra in proptest::collection::vec(any::<u8>(), 1..8), opcode in 0..=u64::from(u32::MAX)
    ) {
        damaged(&value, cut, &extra, opcode)?;
    }

    #[test]
    fn damaged_supervisor_response(
        value in any_supervisor_response(), cut in any::<usize>(),
        extra in proptest::collection::vec(any::<u8>(), 1..8), opcode in 0..=u64::from(u32::MAX)
    ) {
        damaged(&value, cut, &extra, opcode)?;
    }

    #[test]
    fn damaged_echo_request(
        value in any_echo_request(), cut in any::<usize>(),
        extra in proptest::collection::vec(any::<u8>(), 1..8), opcode in 0..=u64::from(u32::MAX)
    ) {
        damaged(&value, cut, &extra, opcode)?;
    }

    #[test]
    fn damaged_echo_response(
        value in any_echo_response(), cut in any::<usize>(),
        extra in proptest::collection::vec(any::<u8>(), 1..8), opcode in 0..=u64::from(u32::MAX)
    ) {
        damaged(&value, cut, &extra, opcode)?;
    }

    #[test]
    fn damaged_vmm_request(
        value in any_vmm_request(), cut in any::<usize>(),
        extra in proptest::collection::vec(any::<u8>(), 1..8), opcode in 0..=u64::from(u32::MAX)
    ) {
        damaged(&value, cut, &extra, opcode)?;
    }

    #[test]
    fn damaged_vmm_response(
        value in any_vmm_response(), cut in any::<usize>(),
        extra in proptest::collection::vec(any::<u8>(), 1..8), opcode in 0..=u64::from(u32::MAX)
    ) {
        damaged(&value, cut, &extra, opcode)?;
    }

    #[test]
    fn damaged_mmu_request(
        value in any_mmu_request(), cut in any::<usize>(),
        extra in proptest::collection::vec(any::<u8>(), 1..8), opcode in 0..=u64::from(u32::MAX)
    ) {
        damaged(&value, cut, &extra, opcode)?;
    }

    #[test]
    fn damaged_mmu_response(
        value in any_mmu_response(), cut in any::<usize>(),
        extra in proptest::collection::vec(any::<u8>(), 1..8), opcode in 0..=u64::from(u32::MAX)
    ) {
        damaged(&value, cut, &extra, opcode)?;
    }

    #[test]
    fn damaged_trace_request(
        value in any_trace_request(), cut in any::<usize>(),
        extra in proptest::collection::vec(any::<u8>(), 1..8), opcode in 0..=u64::from(u32::MAX)
    ) {
        damaged(&value, cut, &extra, opcode)?;
    }

    #[test]
    fn damaged_trace_response(
        value in any_trace_response(), cut in any::<usize>(),
        extra in proptest::collection::vec(any::<u8>(), 1..8), opcode in 0..=u64::from(u32::MAX)
    ) {
        damaged(&value, cut, &extra, opcode)?;
    }

    #[test]
    fn round_trip_trace(request in any_trace_request(), response in any_trace_response()) {
        round_trip(&request)?;
        round_trip(&response)?;
    }

    #[test]
    fn round_trip_vmm(request in any_vmm_request(), response in any_vmm_response()) {
        round_trip(&request)?;
        round_trip(&response)?;
    }

    #[test]
    fn round_trip_mmu(request in any_mmu_request(), response in any_mmu_response()) {
        round_trip(&request)?;
        round_trip(&response)?;
    }

    #[test]
    fn serve_one_supervisor(label in any_label(), bytes in any_bytes(), answer in any_supervisor_response()) {
        serve_any::<Supervisor>(label, &bytes, answer)?;
    }

    #[test]
    fn serve_one_echo(label in any_label(), bytes in any_bytes(), answer in any_echo_response()) {
        serve_any::<Echo>(label, &bytes, answer)?;
    }

    #[test]
    fn serve_one_vmm(label in any_label(), bytes in any_bytes(), answer in any_vmm_response()) {
        serve_any::<Vmm>(label, &bytes, answer)?;
    }

    #[test]
    fn serve_one_mmu(label in any_label(), bytes in any_bytes(), answer in any_mmu_response()) {
        serve_any::<Mmu>(label, &bytes, answer)?;
    }

    #[test]
    fn serve_one_trace(label in any_label(), bytes in any_bytes(), answer in any_trace_response()) {
        serve_any::<Trace>(label, &bytes, answer)?;
    }

    /// Valid requests behind the right label reach the handler; behind a truncated body
    /// they are answered `Truncated` without calling it.
    #[test]
    fn serve_one_valid_and_truncated(value in any_echo_request(), cut in any::<usize>()) {
        let bytes = encode(&value);
        let mut reply = [0u8; abi::ipc::MAX_PAYLOAD];
        let mut seen = None;
        let (_, len) = serve_one::<Echo>(echo::LABEL, &bytes, &mut reply, |request| {
            seen = Some(request);
            echo::Response::Pong { generation: 9 }
        });
        prop_assert_eq!(seen.as_ref(), Some(&value));
        prop_assert_eq!(codec::decode(&reply[..len]), Ok(echo::Response::Pong { generation: 9 }));

        let cut = cut % bytes.len();
        let (_, len) = serve_one::<Echo>(echo::LABEL, &bytes[..cut], &mut reply, |_| {
            panic!("handler called on a truncated request")
        });
        prop_assert_eq!(
            codec::decode(&reply[..len]),
            Ok(echo::Response::Error(ProtoError::Truncated))
        );
    }
}

/// One example of each way a payload can be wrong, with the error it gets.
#[test]
fn typed_errors_by_example() {
    use supervisor::Request as Sup;
    let cases: &[(&str, &[u8], DecodeError)] = &[
        ("empty", &[], DecodeError::Truncated),
        ("opcode ends early", &[0x80], DecodeError::Truncated),
        (
            "opcode 10 (variants are 0..=9)",
            &[0x0a],
            DecodeError::UnknownOpcode,
        ),
        (
            "opcode 128, 2 bytes",
            &[0x80, 0x01],
            DecodeError::UnknownOpcode,
        ),
        (
            "opcode over u32",
            &[0xff, 0xff, 0xff, 0xff, 0x7f],
            DecodeError::UnknownOpcode,
        ),
        (
            "name ends early",
            &[0x02, 0x04, b'e', b'c'],
            DecodeError::Truncated,
        ),
        (
            "name of 17 bytes",
            &[
                0x02, 0x11, b'a', b'a', b'a', b'a', b'a', b'a', b'a', b'a', b'a', b'a', b'a', b'a',
                b'a', b'a', b'a', b'a', b'a',
            ],
            DecodeError::Malformed,
        ),
        (
            "name not UTF-8",
            &[0x02, 0x01, 0xff],
            DecodeError::Malformed,
        ),
        (
            "code varint over u32",
            &[0x05, 0xff, 0xff, 0xff, 0xff, 0x7f],
            DecodeError::Malformed,
        ),
        ("trailing byte", &[0x00, 0x00], DecodeError::Malformed),
    ];
    for (what, bytes, error) in cases {
        assert_eq!(codec::decode::<Sup>(bytes), Err(*error), "{what}");
    }

    use echo::Request as Echo;
    let mut too_long = vec![0x01, 0xfe, 0x03]; // Echo, length 510
    too_long.extend([0u8; 510]);
    let mut sixty_five = vec![0x02, 0x41]; // Sum, 65 values
    sixty_five.extend([0x01u8; 65]);
    let cases: &[(&str, &[u8], DecodeError)] = &[
        (
            "crash kind 4 (nested enum, variants are 0..=3)",
            &[0x03, 0x04],
            DecodeError::Malformed,
        ),
        ("echo data over capacity", &too_long, DecodeError::Malformed),
        ("sum of 65 values", &sixty_five, DecodeError::Malformed),
        (
            "sum values end early",
            &[0x02, 0x02, 0x01],
            DecodeError::Truncated,
        ),
    ];
    for (what, bytes, error) in cases {
        assert_eq!(codec::decode::<Echo>(bytes), Err(*error), "{what}");
    }
}

/// The same for the nested types of the VMM and MMU protocols.
#[test]
fn typed_errors_by_example_vmm_mmu() {
    // RunVm { name "a", module "m", ram 2, Multiboot, vcpus 1, cmdline "" } before its mmu
    // (and benchmark, time_limit_ms, trace, max_resets, initrd).
    let config = |mmu: &[u8]| {
        let mut bytes = vec![0x00, 0x01, b'a', 0x01, b'm', 0x02, 0x00, 0x01, 0x00];
        bytes.extend_from_slice(mmu);
        bytes
    };
    let mut name_17 = vec![0x00, 0x11];
    name_17.extend([b'a'; 17]);
    assert!(codec::decode::<vmm::Request>(&config(&[0x00, 0x00, 0x00, 0x00, 0x00, 0x00])).is_ok());
    // max_resets is a raw u8: 0xff is a value, not a varint's first byte.
    assert!(codec::decode::<vmm::Request>(&config(&[0x00, 0x00, 0x00, 0x00, 0xff, 0x00])).is_ok());
    let cases: &[(&str, Vec<u8>, DecodeError)] = &[
        ("mmu mode 2", config(&[0x02]), DecodeError::Malformed),
        (
            "ends before initrd",
            config(&[0x00, 0x00, 0x00, 0x00, 0x00]),
            DecodeError::Truncated,
        ),
        (
            "initrd of 33 bytes",
            {
                let mut b = config(&[0x00, 0x00, 0x00, 0x00, 0x00, 33]);
                b.extend([b'i'; 33]);
                b
            },
            DecodeError::Malformed,
        ),
        ("benchmark 2", config(&[0x00, 0x02]), DecodeError::Malformed),
        (
            "ends before benchmark",
            config(&[0x00]),
            DecodeError::Truncated,
        ),
        (
            "ends before time_limit_ms",
            config(&[0x00, 0x00]),
            DecodeError::Truncated,
        ),
        (
            "ends before trace",
            config(&[0x00, 0x00, 0x00]),
            DecodeError::Truncated,
        ),
        (
            "trace 2",
            config(&[0x00, 0x00, 0x00, 0x02]),
            DecodeError::Malformed,
        ),
        (
            "ends before max_resets",
            config(&[0x00, 0x00, 0x00, 0x00]),
            DecodeError::Truncated,
        ),
        (
            "kvm_policy 2",
            config(&[0x01, 0x08, 0x80, 0x04, 0x02, 0x00]),
            DecodeError::Malformed,
        ),
        (
            "ends inside pool_pages",
            config(&[0x01, 0x08, 0x80]),
            DecodeError::Truncated,
        ),
        (
            "entry mode 3",
            vec![0x00, 0x01, b'a', 0x01, b'm', 0x02, 0x03],
            DecodeError::Malformed,
        ),
        ("name of 17 bytes", name_17, DecodeError::Malformed),
        (
            "module not UTF-8",
            vec![0x00, 0x01, b'a', 0x01, 0xff],
            DecodeError::Malformed,
        ),
    ];
    for (what, bytes, error) in cases {
        assert_eq!(codec::decode::<vmm::Request>(bytes), Err(*error), "{what}");
    }

    // Finished { TripleFault, rip 0, 17 exits, total 0, None }.
    let mut exits_17 = vec![0x01, 0x03, 0x00, 0x11];
    for _ in 0..17 {
        exits_17.extend([0x01, 0x01]);
    }
    exits_17.extend([0x00, 0x00]);
    let cases: &[(&str, Vec<u8>, DecodeError)] = &[
        ("17 exit reasons", exits_17, DecodeError::Malformed),
        (
            "shadow Option tag 2",
            vec![0x01, 0x03, 0x00, 0x00, 0x00, 0x02],
            DecodeError::Malformed,
        ),
        ("vm result 13", vec![0x01, 0x0d], DecodeError::Malformed),
        (
            "config error 7",
            vec![0x00, 0x06, 0x00, 0x07],
            DecodeError::Malformed,
        ),
        (
            "vmm error 7",
            vec![0x00, 0x06, 0x07],
            DecodeError::Malformed,
        ),
        (
            "no shadow byte",
            vec![0x01, 0x03, 0x00, 0x00, 0x00],
            DecodeError::Truncated,
        ),
        (
            "no trace byte",
            vec![0x01, 0x03, 0x00, 0x00, 0x00, 0x00],
            DecodeError::Truncated,
        ),
        (
            "no resets",
            vec![0x01, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00],
            DecodeError::Truncated,
        ),
        (
            "resets an unterminated varint",
            vec![0x01, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80],
            DecodeError::Truncated,
        ),
    ];
    for (what, bytes, error) in cases {
        assert_eq!(codec::decode::<vmm::Response>(bytes), Err(*error), "{what}");
    }

    let cases: &[(&str, &[u8], DecodeError)] = &[
        (
            "shadow Option tag 2",
            &[0x00, 0x07, 0x00, 0x02],
            DecodeError::Malformed,
        ),
        (
            "kvm_policy 2",
            &[0x00, 0x07, 0x00, 0x01, 0x00, 0x10, 0x02],
            DecodeError::Malformed,
        ),
        (
            "spare_first 2",
            &[0x05, 0x01, 0x01, 0x02, 0x00],
            DecodeError::Malformed,
        ),
        (
            "handle varint over u32",
            &[0x01, 0xff, 0xff, 0xff, 0xff, 0x1f],
            DecodeError::Malformed,
        ),
        ("GrantRam without handle", &[0x01], DecodeError::Truncated),
    ];
    for (what, bytes, error) in cases {
        assert_eq!(codec::decode::<mmu::Request>(bytes), Err(*error), "{what}");
    }

    let mut short_stats = vec![0x03, 0x00, 0x00, 0x00, 0x01];
    short_stats.extend([0x00; 16]); // ShadowStats holds 17 varints
    let cases: &[(&str, Vec<u8>, DecodeError)] = &[
        (
            "mmu error 7",
            vec![0x00, 0x06, 0x07],
            DecodeError::Malformed,
        ),
        ("stats end early", short_stats, DecodeError::Truncated),
    ];
    for (what, bytes, error) in cases {
        assert_eq!(codec::decode::<mmu::Response>(bytes), Err(*error), "{what}");
    }
}

/// The same for the nested types of the trace protocol.
#[test]
fn typed_errors_by_example_trace() {
    let mut name_17 = vec![0x01, 0x11];
    name_17.extend([b'a'; 17]);
    assert!(codec::decode::<trace::Request>(&[0x05, 0x01, 0x0a, 0x01, 0x00]).is_ok());
    let cases: &[(&str, Vec<u8>, DecodeError)] = &[
        (
            "opcode 7 (variants are 0..=6)",
            vec![0x07],
            DecodeError::UnknownOpcode,
        ),
        ("VM name of 17 bytes", name_17, DecodeError::Malformed),
        (
            "VM name not UTF-8",
            vec![0x01, 0x01, 0xff],
            DecodeError::Malformed,
        ),
        (
            "share 2",
            vec![0x05, 0x01, 0x0a, 0x02, 0x00],
            DecodeError::Malformed,
        ),
        (
            "Buckets ends before from",
            vec![0x05, 0x01, 0x0a, 0x00],
            DecodeError::Truncated,
        ),
        (
            "from_reason varint over u16",
            vec![0x04, 0x01, 0xff, 0xff, 0x04],
            DecodeError::Malformed,
        ),
        ("Stop without vm", vec![0x02], DecodeError::Truncated),
        (
            "Crash with a trailing byte",
            vec![0x06, 0x00],
            DecodeError::Malformed,
        ),
    ];
    for (what, bytes, error) in cases {
        assert_eq!(
            codec::decode::<trace::Request>(bytes),
            Err(*error),
            "{what}"
        );
    }

    // Rows { vm 1, totals "a" 0 0 0 false, n rows of 10 zero varints, next None }.
    let rows = |n: u8| {
        let mut bytes = vec![0x04, 0x01, 0x01, b'a', 0x00, 0x00, 0x00, 0x00, n];
        for _ in 0..n {
            bytes.extend([0x00; 10]);
        }
        bytes.push(0x00);
        bytes
    };
    assert!(codec::decode::<trace::Response>(&rows(trace::ROWS_MAX as u8)).is_ok());
    let mut buckets_17 = vec![0x05, 0x11];
    buckets_17.extend([0x00; 17 * 3]);
    buckets_17.push(0x00);
    let mut lost_2 = rows(0);
    lost_2[7] = 0x02;
    let cases: &[(&str, Vec<u8>, DecodeError)] = &[
        (
            "one row over ROWS_MAX",
            rows(trace::ROWS_MAX as u8 + 1),
            DecodeError::Malformed,
        ),
        ("17 buckets", buckets_17, DecodeError::Malformed),
        ("lost 2", lost_2, DecodeError::Malformed),
        (
            "next Option tag 2",
            vec![0x05, 0x00, 0x02],
            DecodeError::Malformed,
        ),
        (
            "restarted 2",
            vec![0x01, 0x00, 0x02, 0x00, 0x00, 0x00],
            DecodeError::Malformed,
        ),
        (
            "Status without vms",
            vec![0x01, 0x00, 0x00, 0x00, 0x00],
            DecodeError::Truncated,
        ),
        (
            "trace error 7",
            vec![0x00, 0x06, 0x07],
            DecodeError::Malformed,
        ),
        (
            "kernel code over u16",
            vec![0x00, 0x06, 0x06, 0xff, 0xff, 0x04],
            DecodeError::Malformed,
        ),
        (
            "bucket ends early",
            vec![0x05, 0x01, 0x00, 0x00],
            DecodeError::Truncated,
        ),
    ];
    for (what, bytes, error) in cases {
        assert_eq!(
            codec::decode::<trace::Response>(bytes),
            Err(*error),
            "{what}"
        );
    }
}
