//! Protocol, malformed-input, capability and crash checks.

use abi::ipc::MAX_PAYLOAD;
use abi::{Error, Rights};
use heapless::Vec;
use userlib::client::ClientError;
use userlib::codec;
use userlib::proto::echo::{self, CrashKind, Echo, EchoError, ECHO_CAPACITY};
use userlib::proto::supervisor::{self, ServiceState, Supervisor, SupervisorError};
use userlib::proto::{ProtoError, Protocol};
use userlib::sys::{self, SysError};

use crate::{echo, Suite, SUPERVISOR};

fn name(s: &str) -> supervisor::ServiceName {
    let mut n = supervisor::ServiceName::new();
    let _ = n.push_str(s);
    n
}

fn generation_of(service: &str) -> Option<u32> {
    let mut sup = userlib::ipc::client::<Supervisor>(SUPERVISOR);
    match sup.call(&supervisor::Request::ServiceStatus {
        name: name(service),
    }) {
        Ok(supervisor::Response::Status(info)) => Some(info.generation),
        _ => None,
    }
}

pub fn supervisor_protocol(t: &mut Suite) {
    let mut sup = userlib::ipc::client::<Supervisor>(SUPERVISOR);
    let r = sup.call(&supervisor::Request::Version);
    t.check(
        "supervisor Version",
        matches!(
            r,
            Ok(supervisor::Response::Version {
                protocol: supervisor::PROTOCOL_ID,
                version: supervisor::VERSION
            })
        ),
        format_args!("{r:?}"),
    );
    // The manifest says `needs=echo`: the wiring names echo, in a slot that holds an endpoint.
    let r = sup.call(&supervisor::Request::Wiring);
    let wired = match &r {
        Ok(supervisor::Response::Wiring(w)) => {
            w.len() == 1
                && w[0].name == "echo"
                && u64::from(w[0].slot) == echo()
                && sys::cap_info(echo()).map(|i| i.kind) == Ok(Some(abi::CapKind::Endpoint))
        }
        _ => false,
    };
    t.check(
        "supervisor Wiring: echo's endpoint, by name",
        wired,
        format_args!("{r:?}"),
    );
    let r = sup.call(&supervisor::Request::ListServices);
    let listed = match &r {
        Ok(supervisor::Response::Services(list)) => {
            list.iter().any(|s| s.name == "echo") && list.iter().any(|s| s.name == "ipc-suite")
        }
        _ => false,
    };
    t.check(
        "supervisor ListServices names echo and ipc-suite",
        listed,
        format_args!("{r:?}"),
    );
    let r = sup.call(&supervisor::Request::ServiceStatus { name: name("echo") });
    let running = matches!(&r, Ok(supervisor::Response::Status(i)) if i.state == ServiceState::Running && i.generation >= 1);
    t.check(
        "supervisor ServiceStatus echo: running",
        running,
        format_args!("{r:?}"),
    );
    let r = sup.call(&supervisor::Request::ServiceStatus { name: name("nope") });
    t.check(
        "supervisor ServiceStatus unknown service: NoSuchService",
        matches!(
            r,
            Ok(supervisor::Response::Error(ProtoError::Service(
                SupervisorError::NoSuchService
            )))
        ),
        format_args!("{r:?}"),
    );
    let r = sup.call_with_cap(&supervisor::Request::Lookup { name: name("echo") }, None);
    match r {
        Ok(reply)
            if matches!(reply.response, supervisor::Response::Granted) && reply.cap.is_some() =>
        {
            let cap = reply.cap.unwrap_or(abi::NO_CAP);
            let mut echo = userlib::ipc::client::<Echo>(cap);
            let p = echo.call(&echo::Request::Ping);
            t.check(
                "supervisor Lookup grants a working echo capability",
                matches!(p, Ok(echo::Response::Pong { .. })),
                format_args!("{p:?}"),
            );
            let _ = sys::cap_delete(cap);
        }
        other => t.check(
            "supervisor Lookup grants a working echo capability",
            false,
            format_args!("{other:?}"),
        ),
    }
    let r = sup.call(&supervisor::Request::Lookup { name: name("nope") });
    t.check(
        "supervisor Lookup unknown service: NoSuchService",
        matches!(
            r,
            Ok(supervisor::Response::Error(ProtoError::Service(
                SupervisorError::NoSuchService
            )))
        ),
        format_args!("{r:?}"),
    );
    let r = sup.call(&supervisor::Request::Restart { name: name("nope") });
    t.check(
        "supervisor Restart unknown service: NoSuchService",
        matches!(
            r,
            Ok(supervisor::Response::Error(ProtoError::Service(
                SupervisorError::NoSuchService
            )))
        ),
        format_args!("{r:?}"),
    );
}

pub fn echo_protocol(t: &mut Suite) {
    let mut echo = userlib::ipc::client::<Echo>(echo());
    let r = echo.call(&echo::Request::Ping);
    t.check(
        "echo Ping",
        matches!(r, Ok(echo::Response::Pong { generation }) if generation >= 1),
        format_args!("{r:?}"),
    );
    for size in [0usize, 64, ECHO_CAPACITY] {
        let mut data: Vec<u8, ECHO_CAPACITY> = Vec::new();
        for i in 0..size {
            let _ = data.push((i * 7 + 3) as u8);
        }
        let r = echo.call(&echo::Request::Echo { data: data.clone() });
        let ok = matches!(&r, Ok(echo::Response::Echo { data: back }) if *back == data);
        t.check(
            match size {
                0 => "echo Echo, empty",
                64 => "echo Echo, 64 bytes",
                _ => "echo Echo, maximum payload (509 bytes, 512 encoded)",
            },
            ok,
            format_args!("{:?}", r.map(|_| ())),
        );
    }
    let values: Vec<u32, 64> = (0..64u32).map(|i| i * 1000 + 1).collect();
    let want: u64 = values.iter().map(|&v| u64::from(v)).sum();
    let r = echo.call(&echo::Request::Sum { values });
    t.check(
        "echo Sum, 64 values",
        matches!(r, Ok(echo::Response::Sum { total }) if total == want),
        format_args!("{r:?}"),
    );
    let r = echo.call(&echo::Request::Sum { values: Vec::new() });
    t.check(
        "echo Sum, none",
        matches!(r, Ok(echo::Response::Sum { total: 0 })),
        format_args!("{r:?}"),
    );
    let before = match echo.call(&echo::Request::Stats) {
        Ok(echo::Response::Stats { calls, .. }) => calls,
        _ => 0,
    };
    let r = echo.call(&echo::Request::Stats);
    t.check(
        "echo Stats counts calls",
        matches!(r, Ok(echo::Response::Stats { calls, .. }) if calls == before + 1),
        format_args!("{r:?} after {before}"),
    );
    // A memory object shared with the call: the server maps it and sums its bytes.
    let shared = (|| {
        let mem = sys::mem_alloc(1).map_err(|e| ("mem_alloc", e))?;
        sys::with_mapped(mem, 0x2000_0000, |bytes| {
            for (i, b) in bytes.iter_mut().enumerate().take(1000) {
                *b = (i % 251) as u8;
            }
        })
        .map_err(|e| ("map", e))?;
        let want: u64 = (0..1000u64).map(|i| i % 251).sum();
        let r = echo.call_with_cap(&echo::Request::SumShared { len: 1000 }, Some(mem));
        let ok = matches!(&r, Ok(reply) if matches!(reply.response, echo::Response::Sum { total } if total == want));
        let too_long = echo.call_with_cap(&echo::Request::SumShared { len: 5000 }, Some(mem));
        let long_ok = matches!(&too_long, Ok(reply) if matches!(reply.response, echo::Response::Error(ProtoError::Service(EchoError::LengthTooLarge))));
        let _ = sys::cap_delete(mem);
        Ok::<_, (&str, Error)>((ok, long_ok))
    })();
    t.check(
        "echo SumShared over a granted memory object",
        matches!(shared, Ok((true, _))),
        format_args!("{shared:?}"),
    );
    t.check(
        "echo SumShared longer than the object: LengthTooLarge",
        matches!(shared, Ok((_, true))),
        format_args!("{shared:?}"),
    );
    let r = echo.call(&echo::Request::SumShared { len: 4 });
    t.check(
        "echo SumShared without a capability: NoGrant",
        matches!(
            r,
            Ok(echo::Response::Error(ProtoError::Service(
                EchoError::NoGrant
            )))
        ),
        format_args!("{r:?}"),
    );
}

/// Sends raw bytes with a label to echo; returns the decoded reply.
fn raw_echo(label: u64, bytes: &[u8]) -> Result<echo::Response, SysError> {
    let mut buf = [0u8; MAX_PAYLOAD];
    buf[..bytes.len()].copy_from_slice(bytes);
    let r = sys::call(echo(), &mut buf, bytes.len(), label, None)?;
    codec::decode::<echo::Response>(&buf[..r.len])
        .map_err(|_| SysError::Other(Error::InvalidArgument))
}

fn is_error(r: &Result<echo::Response, SysError>, want: ProtoError<EchoError>) -> bool {
    matches!(r, Ok(echo::Response::Error(e)) if *e == want)
}

pub fn malformed(t: &mut Suite) {
    let label = Echo::LABEL;
    let r = raw_echo(label, &[]);
    t.check(
        "empty payload: Truncated",
        is_error(&r, ProtoError::Truncated),
        format_args!("{r:?}"),
    );
    // Echo (opcode 1) claiming 10 bytes but carrying 3.
    let r = raw_echo(label, &[1, 10, 1, 2, 3]);
    t.check(
        "truncated postcard: Truncated",
        is_error(&r, ProtoError::Truncated),
        format_args!("{r:?}"),
    );
    let r = raw_echo(label, &[0x7f]);
    t.check(
        "unknown opcode: UnknownOpcode",
        is_error(&r, ProtoError::UnknownOpcode),
        format_args!("{r:?}"),
    );
    let r = raw_echo(label, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    t.check(
        "garbage varint: an error reply",
        matches!(r, Ok(echo::Response::Error(_))),
        format_args!("{r:?}"),
    );
    let r = raw_echo(label, &[0, 0, 0]);
    t.check(
        "trailing bytes: Malformed",
        is_error(&r, ProtoError::Malformed),
        format_args!("{r:?}"),
    );
    let r = raw_echo(userlib::codec::label(echo::PROTOCOL_ID, 9), &[0]);
    t.check(
        "wrong version: VersionMismatch",
        is_error(
            &r,
            ProtoError::VersionMismatch {
                expected: echo::VERSION,
                got: 9,
            },
        ),
        format_args!("{r:?}"),
    );
    let r = raw_echo(supervisor::LABEL, &[0]);
    t.check(
        "wrong protocol: WrongProtocol",
        matches!(
            r,
            Ok(echo::Response::Error(ProtoError::WrongProtocol { .. }))
        ),
        format_args!("{r:?}"),
    );
    let mut big = [0u8; MAX_PAYLOAD + 1];
    let r = sys::call(echo(), &mut big, MAX_PAYLOAD + 1, label, None);
    t.check(
        "oversize payload (513 bytes): BadLength",
        matches!(r, Err(SysError::Other(Error::BadLength))),
        format_args!("{r:?}"),
    );
    let mut echo = userlib::ipc::client::<Echo>(echo());
    let r = echo.call(&echo::Request::Ping);
    t.check(
        "server still answers after malformed input",
        matches!(r, Ok(echo::Response::Pong { .. })),
        format_args!("{r:?}"),
    );
}

pub fn capabilities(t: &mut Suite) {
    let mut buf = [0u8; 16];
    let r = sys::call(40, &mut buf, 0, 0, None);
    t.check(
        "call on an empty slot: InvalidCap",
        matches!(r, Err(SysError::Other(Error::InvalidCap))),
        format_args!("{r:?}"),
    );
    let ntfn = sys::notification_create();
    let r = ntfn.map(|n| sys::call(n, &mut buf, 0, 0, None));
    t.check(
        "call on a notification: WrongCapKind",
        matches!(r, Ok(Err(SysError::Other(Error::WrongCapKind)))),
        format_args!("{r:?}"),
    );
    if let Ok(n) = ntfn {
        let s = sys::signal(n, 0b101);
        let w = sys::wait(n);
        let p = sys::poll(n);
        t.check(
            "notification signal, wait and poll",
            s.is_ok() && w == Ok(0b101) && p == Ok(0),
            format_args!("{s:?} {w:?} {p:?}"),
        );
        let _ = sys::cap_delete(n);
    }
    let recv_only = sys::cap_copy(echo(), Rights::RECV, 0);
    let r = recv_only.map(|c| sys::call(c, &mut buf, 0, Echo::LABEL, None));
    t.check(
        "call without the send right: NoRights",
        matches!(r, Ok(Err(SysError::Other(Error::NoRights)))),
        format_args!("{r:?}"),
    );
    let no_grant = sys::cap_copy(echo(), Rights::SEND, 0);
    let mem = sys::mem_alloc(1);
    let r = match (no_grant, mem) {
        (Ok(c), Ok(m)) => Ok(sys::call(c, &mut buf, 0, Echo::LABEL, Some(m))),
        (a, b) => Err((a, b)),
    };
    t.check(
        "granting through a capability without the grant right: NoRights",
        matches!(r, Ok(Err(SysError::Other(Error::NoRights)))),
        format_args!("{r:?}"),
    );
    if let Ok(c) = recv_only {
        let d = sys::cap_delete(c);
        let again = sys::call(c, &mut buf, 0, 0, None);
        t.check(
            "deleted capability: InvalidCap",
            d.is_ok() && matches!(again, Err(SysError::Other(Error::InvalidCap))),
            format_args!("{d:?} {again:?}"),
        );
    }
    if let Ok(m) = mem {
        let ro = sys::cap_copy(m, Rights::READ, 0);
        let r = ro.map(|c| sys::with_mapped(c, 0x3000_0000, |_| ()));
        t.check(
            "mapping writable through a read-only copy: NoRights",
            matches!(r, Ok(Err(Error::NoRights))),
            format_args!("{r:?}"),
        );
        let revoke = sys::cap_revoke(m);
        let stale = ro.map(sys::mem_info);
        t.check(
            "revoked memory object: copies are stale",
            revoke.is_ok() && matches!(stale, Ok(Err(Error::StaleCap))),
            format_args!("{revoke:?} {stale:?}"),
        );
        if let Ok(c) = ro {
            let _ = sys::cap_delete(c);
        }
    }
    let ep = sys::endpoint_create();
    let copy = ep.and_then(|e| sys::cap_copy(e, Rights::SEND, 5));
    let revoke = ep.and_then(sys::cap_revoke);
    let r = copy.map(|c| sys::call(c, &mut buf, 0, 0, None));
    t.check(
        "revoked endpoint: calls through a copy get StaleCap",
        revoke.is_ok() && matches!(r, Ok(Err(SysError::Other(Error::StaleCap)))),
        format_args!("{revoke:?} {r:?}"),
    );
    if let Ok(c) = copy {
        let _ = sys::cap_delete(c);
    }
    if let Ok(c) = no_grant {
        let _ = sys::cap_delete(c);
    }
}

/// The echo server dies mid-call in each way; the caller sees `ServerRestarted` with the next
/// generation, and its retry is answered by that generation.
pub fn crash_mid_call(t: &mut Suite) {
    let mut echo = userlib::ipc::client::<Echo>(echo());
    for kind in [
        CrashKind::PageFault,
        CrashKind::InvalidOpcode,
        CrashKind::GeneralProtection,
        CrashKind::Panic,
    ] {
        let before = generation_of("echo").unwrap_or(0);
        let r = echo.call(&echo::Request::Crash { kind });
        let restarted = matches!(r, Err(ClientError::ServerRestarted { generation }) if generation == u64::from(before) + 1);
        userlib::println!("ipc: crash {kind:?} mid-call -> {r:?}; retrying");
        let retry = echo.call(&echo::Request::Ping);
        let served =
            matches!(retry, Ok(echo::Response::Pong { generation }) if generation == before + 1);
        userlib::println!("ipc: retry after {kind:?} -> {retry:?}");
        t.check(
            match kind {
                CrashKind::PageFault => "server page fault mid-call: ServerRestarted, retry served by the next generation",
                CrashKind::InvalidOpcode => "server #UD mid-call: ServerRestarted, retry served by the next generation",
                CrashKind::GeneralProtection => "server #GP mid-call: ServerRestarted, retry served by the next generation",
                CrashKind::Panic => "server panic mid-call: ServerRestarted, retry served by the next generation",
            },
            restarted && served,
            format_args!("generation before {before}: {r:?}, retry {retry:?}"),
        );
    }
}

pub fn restart_on_request(t: &mut Suite) {
    let mut sup = userlib::ipc::client::<Supervisor>(SUPERVISOR);
    let before = generation_of("echo").unwrap_or(0);
    let r = sup.call(&supervisor::Request::Restart { name: name("echo") });
    let mut echo = userlib::ipc::client::<Echo>(echo());
    let p = echo.call(&echo::Request::Ping);
    t.check(
        "supervisor Restart: new generation serves",
        matches!(r, Ok(supervisor::Response::Restarted { generation }) if generation == before + 1)
            && matches!(p, Ok(echo::Response::Pong { generation }) if generation == before + 1),
        format_args!("{r:?} then {p:?}"),
    );
}
