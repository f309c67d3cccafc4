//! The typed client over an in-process loopback transport that calls `serve_one`, and over
//! transports that fail the way the kernel does.

mod common;

use abi::cap::CapSlot;
use abi::ipc::MAX_PAYLOAD;
use common::{bytes, name};
use heapless::Vec;
use userlib::client::{CallReply, Client, ClientError, Reply, Transport, TransportError};
use userlib::codec::{self, DecodeError};
use userlib::proto::echo::{self, CrashKind, Echo, EchoError};
use userlib::proto::supervisor::{self, Supervisor, SupervisorError};
use userlib::proto::{ProtoError, Protocol};
use userlib::server::serve_one;

/// A transport that serves each call in-process with `serve_one::<P>`. The handler gets the
/// granted capability and returns the response and the capability to grant back.
struct Loopback<P: Protocol, H> {
    handler: H,
    protocol: core::marker::PhantomData<P>,
}

impl<P, H> Loopback<P, H>
where
    P: Protocol,
    H: FnMut(P::Request, Option<CapSlot>) -> (P::Response, Option<CapSlot>),
{
    fn new(handler: H) -> Self {
        Loopback {
            handler,
            protocol: core::marker::PhantomData,
        }
    }
}

impl<P, H> Transport for Loopback<P, H>
where
    P: Protocol,
    H: FnMut(P::Request, Option<CapSlot>) -> (P::Response, Option<CapSlot>),
{
    fn call(
        &mut self,
        label: u64,
        buf: &mut [u8; MAX_PAYLOAD],
        send_len: usize,
        grant: Option<CapSlot>,
    ) -> Result<CallReply, TransportError> {
        let request = buf[..send_len].to_vec();
        let mut reply_cap = None;
        let (label, len) = serve_one::<P>(label, &request, buf, |request| {
            let (response, cap) = (self.handler)(request, grant);
            reply_cap = cap;
            response
        });
        Ok(CallReply {
            label,
            len,
            cap: reply_cap,
        })
    }
}

/// The echo server's logic, as the on-target server will run it (without the crashes).
struct EchoServer {
    generation: u32,
    calls: u64,
}

impl EchoServer {
    fn handle(&mut self, request: echo::Request, grant: Option<CapSlot>) -> echo::Response {
        use echo::{Request, Response};
        self.calls += 1;
        match request {
            Request::Ping => Response::Pong {
                generation: self.generation,
            },
            Request::Echo { data } => Response::Echo { data },
            Request::Sum { values } => Response::Sum {
                total: values.iter().map(|v| u64::from(*v)).sum(),
            },
            Request::Crash { .. } => unreachable!("the transport kills the server first"),
            Request::SumShared { len } => match grant {
                None => Response::Error(ProtoError::Service(EchoError::NoGrant)),
                Some(_) if len > 4096 => {
                    Response::Error(ProtoError::Service(EchoError::LengthTooLarge))
                }
                // The "memory object" holds bytes 0, 1, 2, ...
                Some(_) => Response::Sum {
                    total: (0..u64::from(len)).map(|i| i % 256).sum(),
                },
            },
            Request::Stats => Response::Stats {
                calls: self.calls,
                generation: self.generation,
            },
        }
    }
}

/// An echo server that "dies" on `Crash`: the call fails with `ServerRestarted` and the next
/// call reaches a fresh server of the next generation.
struct RestartingEcho {
    server: EchoServer,
}

impl Transport for RestartingEcho {
    fn call(
        &mut self,
        label: u64,
        buf: &mut [u8; MAX_PAYLOAD],
        send_len: usize,
        grant: Option<CapSlot>,
    ) -> Result<CallReply, TransportError> {
        if let Ok(echo::Request::Crash { .. }) = codec::decode(&buf[..send_len]) {
            let generation = self.server.generation + 1;
            self.server = EchoServer {
                generation,
                calls: 0,
            };
            return Err(TransportError::from_syscall(
                abi::Error::ServerRestarted,
                u64::from(generation),
            ));
        }
        let request = buf[..send_len].to_vec();
        let server = &mut self.server;
        let (label, len) = serve_one::<Echo>(label, &request, buf, |r| server.handle(r, grant));
        Ok(CallReply {
            label,
            len,
            cap: None,
        })
    }
}

/// A transport that always fails with `error`.
struct Failing(TransportError);

impl Transport for Failing {
    fn call(
        &mut self,
        _: u64,
        _: &mut [u8; MAX_PAYLOAD],
        _: usize,
        _: Option<CapSlot>,
    ) -> Result<CallReply, TransportError> {
        Err(self.0)
    }
}

/// A transport that answers every call with fixed bytes and label.
struct Canned {
    label: u64,
    payload: std::vec::Vec<u8>,
    len: usize,
}

impl Transport for Canned {
    fn call(
        &mut self,
        _: u64,
        buf: &mut [u8; MAX_PAYLOAD],
        _: usize,
        _: Option<CapSlot>,
    ) -> Result<CallReply, TransportError> {
        buf[..self.payload.len()].copy_from_slice(&self.payload);
        Ok(CallReply {
            label: self.label,
            len: self.len,
            cap: None,
        })
    }
}

fn echo_client(generation: u32) -> Client<impl Transport, Echo> {
    let mut server = EchoServer {
        generation,
        calls: 0,
    };
    Client::new(Loopback::<Echo, _>::new(move |request, grant| {
        (server.handle(request, grant), None)
    }))
}

#[test]
fn echo_calls_over_loopback() {
    use echo::{Request, Response};
    let mut client = echo_client(3);
    assert_eq!(
        client.call(&Request::Ping),
        Ok(Response::Pong { generation: 3 })
    );
    let data = bytes::<{ echo::ECHO_CAPACITY }>(&[0x5a; echo::ECHO_CAPACITY]);
    assert_eq!(
        client.call(&Request::Echo { data: data.clone() }),
        Ok(Response::Echo { data })
    );
    let values = Vec::from_slice(&[u32::MAX; echo::SUM_CAPACITY]).unwrap();
    assert_eq!(
        client.call(&Request::Sum { values }),
        Ok(Response::Sum {
            total: u64::from(u32::MAX) * 64
        })
    );
    assert_eq!(
        client.call(&Request::Stats),
        Ok(Response::Stats {
            calls: 4,
            generation: 3
        })
    );
}

#[test]
fn grants_travel_both_ways() {
    use echo::{Request, Response};
    let mut client = echo_client(1);
    // No capability granted: a typed service error, still an Ok response.
    assert_eq!(
        client.call(&Request::SumShared { len: 10 }),
        Ok(Response::Error(ProtoError::Service(EchoError::NoGrant)))
    );
    assert_eq!(
        client.call_with_cap(&Request::SumShared { len: 300 }, Some(7)),
        Ok(Reply {
            response: Response::Sum {
                total: (0..256).sum::<u64>() + (0..44).sum::<u64>()
            },
            cap: None,
        })
    );

    let mut supervisor =
        Client::<_, Supervisor>::new(Loopback::<Supervisor, _>::new(|request, _| match request {
            supervisor::Request::Lookup { name } if name == "echo" => {
                (supervisor::Response::Granted, Some(12))
            }
            _ => (
                supervisor::Response::Error(ProtoError::Service(SupervisorError::NoSuchService)),
                None,
            ),
        }));
    assert_eq!(
        supervisor.call_with_cap(&supervisor::Request::Lookup { name: name("echo") }, None),
        Ok(Reply {
            response: supervisor::Response::Granted,
            cap: Some(12)
        })
    );
    assert_eq!(
        supervisor.call(&supervisor::Request::Lookup { name: name("nope") }),
        Ok(supervisor::Response::Error(ProtoError::Service(
            SupervisorError::NoSuchService
        )))
    );
}

#[test]
fn crash_gives_server_restarted_then_retry_reaches_next_generation() {
    use echo::{Request, Response};
    let mut client = Client::<_, Echo>::new(RestartingEcho {
        server: EchoServer {
            generation: 1,
            calls: 0,
        },
    });
    assert_eq!(
        client.call(&Request::Ping),
        Ok(Response::Pong { generation: 1 })
    );
    for (kind, generation) in [
        (CrashKind::PageFault, 2),
        (CrashKind::InvalidOpcode, 3),
        (CrashKind::GeneralProtection, 4),
        (CrashKind::Panic, 5),
    ] {
        assert_eq!(
            client.call(&Request::Crash { kind }),
            Err(ClientError::ServerRestarted { generation })
        );
        assert_eq!(
            client.call(&Request::Ping),
            Ok(Response::Pong {
                generation: generation as u32
            })
        );
    }
    assert_eq!(
        client.call(&Request::Stats),
        Ok(Response::Stats {
            calls: 2,
            generation: 5
        })
    );
}

#[test]
fn kernel_errors_map_to_client_errors() {
    let cases = [
        (
            TransportError::from_syscall(abi::Error::ServerRestarted, 42),
            ClientError::ServerRestarted { generation: 42 },
        ),
        (
            TransportError::from_syscall(abi::Error::ServerGone, 0),
            ClientError::ServerGone,
        ),
        (
            TransportError::Kernel(abi::Error::ServerGone),
            ClientError::ServerGone,
        ),
        (
            TransportError::from_syscall(abi::Error::NoRights, 0),
            ClientError::Kernel(abi::Error::NoRights),
        ),
        (
            TransportError::from_syscall(abi::Error::StaleCap, 0),
            ClientError::Kernel(abi::Error::StaleCap),
        ),
    ];
    for (transport_error, client_error) in cases {
        let mut client = Client::<_, Echo>::new(Failing(transport_error));
        assert_eq!(client.call(&echo::Request::Ping), Err(client_error));
    }
}

#[test]
fn bad_replies_are_typed_errors() {
    let canned = |label, payload: &[u8], len| {
        Client::<_, Echo>::new(Canned {
            label,
            payload: payload.to_vec(),
            len,
        })
    };
    let ping = echo::Request::Ping;
    assert_eq!(
        canned(supervisor::LABEL, &[0x01, 0x01], 2).call(&ping),
        Err(ClientError::BadReplyLabel {
            got: supervisor::LABEL
        })
    );
    assert_eq!(
        canned(echo::LABEL, &[0x01, 0x01], 2).call(&ping),
        Ok(echo::Response::Pong { generation: 1 })
    );
    assert_eq!(
        canned(echo::LABEL, &[0x01], 1).call(&ping),
        Err(ClientError::Decode(DecodeError::Truncated))
    );
    assert_eq!(
        canned(echo::LABEL, &[0x09], 1).call(&ping),
        Err(ClientError::Decode(DecodeError::UnknownOpcode))
    );
    assert_eq!(
        canned(echo::LABEL, &[0x01, 0x01, 0x00], 3).call(&ping),
        Err(ClientError::Decode(DecodeError::Malformed))
    );
    assert_eq!(
        canned(echo::LABEL, &[], MAX_PAYLOAD + 1).call(&ping),
        Err(ClientError::Decode(DecodeError::TooLarge))
    );
}

/// Echo types under another version: the server answers with its own label, so the client
/// sees `BadReplyLabel`; the payload is `Error(VersionMismatch)`.
struct EchoV2;

impl Protocol for EchoV2 {
    const PROTOCOL_ID: u16 = echo::PROTOCOL_ID;
    const VERSION: u16 = 2;
    type Request = echo::Request;
    type Response = echo::Response;
    type ServiceError = EchoError;
    fn error_response(error: echo::Error) -> echo::Response {
        echo::Response::Error(error)
    }
}

#[test]
fn version_mismatch_is_answered_with_the_servers_label() {
    let mut server = EchoServer {
        generation: 1,
        calls: 0,
    };
    let mut client = Client::<_, EchoV2>::new(Loopback::<Echo, _>::new(move |request, grant| {
        (server.handle(request, grant), None)
    }));
    assert_eq!(
        client.call(&echo::Request::Ping),
        Err(ClientError::BadReplyLabel { got: echo::LABEL })
    );
    let mut buf = [0u8; MAX_PAYLOAD];
    let (label, len) = serve_one::<Echo>(EchoV2::LABEL, &[0x00], &mut buf, |_| unreachable!());
    assert_eq!(label, echo::LABEL);
    assert_eq!(
        codec::decode(&buf[..len]),
        Ok(echo::Response::Error(ProtoError::VersionMismatch {
            expected: 1,
            got: 2
        }))
    );
    let (_, len) = serve_one::<Echo>(supervisor::LABEL, &[0x00], &mut buf, |_| unreachable!());
    assert_eq!(
        codec::decode(&buf[..len]),
        Ok(echo::Response::Error(ProtoError::WrongProtocol {
            got: supervisor::PROTOCOL_ID
        }))
    );
    let (_, len) = serve_one::<Echo>(echo::LABEL | 1 << 32, &[0x00], &mut buf, |_| unreachable!());
    assert_eq!(
        codec::decode(&buf[..len]),
        Ok(echo::Response::Error(ProtoError::WrongProtocol {
            got: echo::PROTOCOL_ID
        }))
    );
}

#[test]
fn oversized_response_is_answered_too_large() {
    // A reply buffer too small for the handler's response: serve_one answers TooLarge.
    let mut small = [0u8; 8];
    let data = bytes::<{ echo::ECHO_CAPACITY }>(&[1; 16]);
    let (_, len) = serve_one::<Echo>(echo::LABEL, &[0x00], &mut small, |_| echo::Response::Echo {
        data: data.clone(),
    });
    assert_eq!(
        codec::decode(&small[..len]),
        Ok(echo::Response::Error(ProtoError::TooLarge))
    );
    // A buffer that cannot even hold the error: nothing is written.
    let mut tiny = [0u8; 1];
    let (label, len) = serve_one::<Echo>(echo::LABEL, &[0x00], &mut tiny, |_| {
        echo::Response::Echo { data: data.clone() }
    });
    assert_eq!((label, len), (echo::LABEL, 0));
}
