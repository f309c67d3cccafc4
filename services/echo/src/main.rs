//! Umbra's echo service: the helper server of the IPC protocol suite and of the IPC benchmark.
//! It answers `proto::echo` requests (echo, sums, a sum over a shared memory object, stats,
//! and deliberate crashes mid-call) and, on [`BENCH_LABEL`], returns the raw payload as is.
//!
//! Capabilities (granted by the supervisor): slot 2 = its own endpoint (receive).
//! Start argument: its generation.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

use abi::ipc::MAX_PAYLOAD;
use abi::CapSlot;
use userlib::proto::echo::{CrashKind, Echo, EchoError, Request, Response};
use userlib::proto::ProtoError;
use userlib::server::serve_one;
use userlib::sys;

userlib::entry!(echo_main);

/// The service's endpoint (receive right).
const OWN_EP: CapSlot = abi::cap::slot::FIRST_GRANTED;
/// Where a memory object sent with `SumShared` is mapped while it is summed.
const SHARED_VA: u64 = 0x1000_0000;
/// Label of the raw benchmark message: the reply is the same bytes, nothing decoded.
pub const BENCH_LABEL: u64 = 0xbe7c;

struct State {
    generation: u32,
    calls: u64,
}

fn echo_main(generation: u64) {
    let mut state = State {
        generation: generation as u32,
        calls: 0,
    };
    userlib::println!("echo: serving, generation {generation}");
    let mut buf = [0u8; MAX_PAYLOAD];
    let mut request = [0u8; MAX_PAYLOAD];
    let mut msg = match sys::recv(OWN_EP, &mut buf) {
        Ok(m) => m,
        Err(e) => panic!("echo: recv failed: {e}"),
    };
    loop {
        let mut grant = msg.cap;
        let (label, len) = if msg.label == BENCH_LABEL {
            (BENCH_LABEL, msg.len)
        } else {
            state.calls += 1;
            let n = msg.len.min(MAX_PAYLOAD);
            request[..n].copy_from_slice(&buf[..n]);
            serve_one::<Echo>(msg.label, &request[..n], &mut buf, |req| {
                handle(&mut state, req, &mut grant)
            })
        };
        if let Some(cap) = grant {
            // Sent with a message that takes none (a raw benchmark message, a request other
            // than `SumShared`, a malformed one): dropped, or the capability table fills and
            // `SumShared` stops working.
            let _ = sys::cap_delete(cap);
        }
        msg = loop {
            match sys::reply_recv(OWN_EP, &mut buf, len, label, None) {
                Ok(m) => break m,
                // A caller that sent more than fits is answered like any other; a failed
                // receive is retried (the kernel kept nothing from it).
                Err(e) => userlib::println!("echo: reply_recv: {e}"),
            }
        };
    }
}

/// Handles one request; `SumShared` takes the granted capability (`grant` is left `None`).
fn handle(state: &mut State, req: Request, grant: &mut Option<CapSlot>) -> Response {
    match req {
        Request::Ping => Response::Pong {
            generation: state.generation,
        },
        Request::Echo { data } => Response::Echo { data },
        Request::Sum { values } => Response::Sum {
            total: values.iter().map(|&v| u64::from(v)).sum(),
        },
        Request::Stats => Response::Stats {
            calls: state.calls,
            generation: state.generation,
        },
        Request::Crash { kind } => crash(kind),
        Request::SumShared { len } => match sum_shared(grant.take(), len) {
            Ok(total) => Response::Sum { total },
            Err(e) => Response::Error(ProtoError::Service(e)),
        },
    }
}

/// Sums the first `len` bytes of the memory object granted with the call, then lets go of it.
fn sum_shared(grant: Option<CapSlot>, len: u32) -> Result<u64, EchoError> {
    let cap = grant.ok_or(EchoError::NoGrant)?;
    let result = (|| {
        let (pages, _) = sys::mem_info(cap).map_err(|_| EchoError::MapFailed)?;
        if u64::from(len) > pages * 4096 {
            return Err(EchoError::LengthTooLarge);
        }
        sys::with_mapped_read(cap, SHARED_VA, |bytes| {
            bytes[..len as usize].iter().map(|&b| u64::from(b)).sum()
        })
        .map_err(|_| EchoError::MapFailed)
    })();
    let _ = sys::cap_delete(cap);
    result
}

/// Dies in the way asked for, before replying: the caller sees `ServerRestarted`.
fn crash(kind: CrashKind) -> ! {
    userlib::println!("echo: crashing on request ({kind:?})");
    match kind {
        CrashKind::PageFault => sys::crash::page_fault(),
        CrashKind::InvalidOpcode => sys::crash::invalid_opcode(),
        CrashKind::GeneralProtection => sys::crash::general_protection(),
        CrashKind::Panic => panic!("echo: asked to panic"),
    }
}
