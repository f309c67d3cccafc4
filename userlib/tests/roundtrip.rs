//! Round trips: every arbitrary message encodes within one payload and decodes to itself.

mod common;

use core::fmt::Debug;

use common::*;
use proptest::prelude::*;
use userlib::codec::{self, Message};

fn round_trip<M: Message + PartialEq + Debug>(value: &M) -> Result<(), TestCaseError> {
    let mut buf = [0u8; abi::ipc::MAX_PAYLOAD];
    let len = codec::encode(value, &mut buf).expect("every value fits one payload");
    let decoded = codec::decode::<M>(&buf[..len]);
    prop_assert_eq!(decoded.as_ref(), Ok(value));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn supervisor_request(value in any_supervisor_request()) {
        round_trip(&value)?;
    }

    #[test]
    fn supervisor_response(value in any_supervisor_response()) {
        round_trip(&value)?;
    }

    #[test]
    fn echo_request(value in any_echo_request()) {
        round_trip(&value)?;
    }

    #[test]
    fn echo_response(value in any_echo_response()) {
        round_trip(&value)?;
    }

    #[test]
    fn trace_request(value in any_trace_request()) {
        round_trip(&value)?;
    }

    #[test]
    fn trace_response(value in any_trace_response()) {
        round_trip(&value)?;
    }
}
