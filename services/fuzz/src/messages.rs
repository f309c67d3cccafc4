//! Message fuzzing: valid requests of every protocol, encoded with the `userlib::proto` types,
//! then mutated (bit flips, truncation, extension, random opcodes, random lengths up to and
//! past [`MAX_PAYLOAD`], wrong labels, stray capabilities) and sent to the services. Each
//! service must answer every one with an error or a valid reply and keep answering; the
//! kernel refuses what no service may see (payloads over the limit).

use core::fmt::Debug;
use core::sync::atomic::Ordering;

use abi::ipc::{FAULT_LABEL, MAX_PAYLOAD};
use abi::{CapSlot, Error};
use heapless::{String, Vec};
use userlib::codec::{self, label, Message};
use userlib::proto::echo::{self, CrashKind, Echo};
use userlib::proto::mmu::{self, Mmu, ShadowParams};
use userlib::proto::supervisor::{self, ServiceName, Supervisor};
use userlib::proto::trace::{self as trace_proto, Trace};
use userlib::proto::vmm::{self, EntryMode, MmuMode, ShadowConfig, VmConfig, Vmm};
use userlib::proto::{ProtoError, Protocol};
use userlib::sys;

use crate::counts::{kind_name, Counts, NAME_MAX};
use crate::rng::Rng;
use crate::{echo, mmu, trace, vmm, PROGRESS, SUPERVISOR};

/// Longest message built: past [`MAX_PAYLOAD`], which the kernel must refuse.
const SEND_MAX: usize = 2 * MAX_PAYLOAD;
/// The echo service's raw benchmark label (answered with the same bytes).
pub const ECHO_BENCH_LABEL: u64 = 0xbe7c;
/// Failures described in full; later ones are only counted.
const FAILURES_SHOWN: u64 = 10;

/// What the message fuzzer knows and counts.
pub struct MessageFuzz<'a> {
    pub rng: &'a mut Rng,
    /// Services the supervisor runs (never restarted on purpose by the fuzzer).
    pub services: &'a [ServiceName],
    /// Capabilities the fuzzer may grant with a message (read-only or send-only copies).
    pub grantables: &'a [CapSlot],
    pub sent: u64,
    /// Requests that would change the system on purpose (shutdown, restart, crash), drawn
    /// and replaced by another.
    pub filtered: u64,
    /// Replies by service and kind.
    pub replies: Counts,
    /// Kernel errors of the `call`s (e.g. `BadLength` for payloads over the limit).
    pub kernel: Counts,
    /// A service died, hung up or answered something undecodable.
    pub failures: u64,
}

/// One protocol as the fuzzer drives it.
pub trait Fuzzed: Protocol {
    const NAME: &'static str;
    /// The capability slot of the service's endpoint.
    /// The service's endpoint.
    fn slot() -> CapSlot;
    /// A valid request with random fields.
    fn golden(rng: &mut Rng) -> Self::Request;
    /// False for a request that changes the system on purpose.
    fn allowed(req: &Self::Request, services: &[ServiceName]) -> bool;
    /// The error kind of an error response, `None` for any other response.
    fn error_of(resp: &Self::Response) -> Option<String<NAME_MAX>>;
    /// A label this service must not get from the fuzzer (messages it takes from the kernel).
    fn reserved_label(_label: u64) -> bool {
        false
    }
}

/// The name of a protocol error (`Service(NoSuchService)` keeps the service's error kind).
pub fn proto_error_name<E: Debug>(e: &ProtoError<E>) -> String<NAME_MAX> {
    match e {
        ProtoError::Service(inner) => {
            let inner = kind_name(format_args!("{inner:?}"));
            let mut s = String::new();
            let _ = s.push_str("Service(");
            let _ = s.push_str(&inner[..inner.len().min(NAME_MAX - 9)]);
            let _ = s.push(')');
            s
        }
        other => kind_name(format_args!("{other:?}")),
    }
}

fn random_name(rng: &mut Rng) -> ServiceName {
    let mut s = String::new();
    match rng.below(8) {
        0 => {
            for _ in 0..rng.below(17) {
                let _ = s.push((b' ' + rng.below(95) as u8) as char);
            }
        }
        i => {
            let names = [
                "",
                "echo",
                "vmm-service",
                "mmu-service",
                "fuzz",
                "supervisor",
                "x",
            ];
            let _ = s.push_str(names[(i - 1) as usize]);
        }
    }
    s
}

impl Fuzzed for Supervisor {
    const NAME: &'static str = "supervisor";
    fn slot() -> CapSlot {
        SUPERVISOR
    }

    fn golden(rng: &mut Rng) -> supervisor::Request {
        use supervisor::Request::*;
        match rng.below(7) {
            0 => Version,
            1 => ListServices,
            6 => Wiring,
            2 => ServiceStatus {
                name: random_name(rng),
            },
            3 => Lookup {
                name: random_name(rng),
            },
            4 => Restart {
                name: random_name(rng),
            },
            _ => Shutdown {
                code: rng.next() as u32,
            },
        }
    }

    fn allowed(req: &supervisor::Request, services: &[ServiceName]) -> bool {
        match req {
            supervisor::Request::Shutdown { .. } => false,
            supervisor::Request::Restart { name } => !services.contains(name),
            _ => true,
        }
    }

    fn error_of(resp: &supervisor::Response) -> Option<String<NAME_MAX>> {
        match resp {
            supervisor::Response::Error(e) => Some(proto_error_name(e)),
            _ => None,
        }
    }
}

impl Fuzzed for Echo {
    const NAME: &'static str = "echo";
    fn slot() -> CapSlot {
        echo()
    }

    fn golden(rng: &mut Rng) -> echo::Request {
        use echo::Request::*;
        match rng.below(6) {
            0 => Ping,
            1 => {
                let mut data = Vec::new();
                for _ in 0..rng.below(echo::ECHO_CAPACITY as u64 + 1) {
                    let _ = data.push(rng.next() as u8);
                }
                Echo { data }
            }
            2 => {
                let mut values = Vec::new();
                for _ in 0..rng.below(echo::SUM_CAPACITY as u64 + 1) {
                    let _ = values.push(rng.next() as u32);
                }
                Sum { values }
            }
            3 => Crash {
                kind: CrashKind::Panic,
            },
            4 => SumShared {
                len: rng.pick(&[0, 1, 4096, 4097, rng.next() as u32]),
            },
            _ => Stats,
        }
    }

    fn allowed(req: &echo::Request, _: &[ServiceName]) -> bool {
        !matches!(req, echo::Request::Crash { .. })
    }

    fn error_of(resp: &echo::Response) -> Option<String<NAME_MAX>> {
        match resp {
            echo::Response::Error(e) => Some(proto_error_name(e)),
            _ => None,
        }
    }
}

fn short_string<const N: usize>(rng: &mut Rng, words: &[&str]) -> String<N> {
    let mut s = String::new();
    if rng.chance(1, 4) {
        for _ in 0..rng.below(N as u64 + 1) {
            let _ = s.push((b'!' + rng.below(94) as u8) as char);
        }
    } else {
        let w = rng.pick(words);
        let _ = s.push_str(&w[..w.len().min(N)]);
    }
    s
}

impl Fuzzed for Vmm {
    const NAME: &'static str = "vmm-service";
    fn slot() -> CapSlot {
        vmm()
    }

    fn golden(rng: &mut Rng) -> vmm::Request {
        let modules = [
            "guest-multiboot",
            "guest-long",
            "guest-bench",
            "echo",
            "nope",
            "",
        ];
        let mmu = if rng.chance(1, 2) {
            MmuMode::Ept
        } else {
            MmuMode::Shadow(ShadowConfig {
                prev_roots: rng.pick(&[0, 8, 30, 31, rng.next() as u8]),
                pool_pages: rng.pick(&[0, 16, 512, 2048, 2049, rng.next() as u32]),
                kvm_policy: rng.chance(1, 2),
                audit: rng.chance(1, 2),
            })
        };
        let config = VmConfig {
            name: short_string(rng, &["fuzz", ""]),
            module: short_string(rng, &modules),
            // Mostly outside 2..=1024 MiB: a valid configuration allocates its RAM.
            ram_mib: rng.pick(&[0, 1, 2, 1025, 5000, u32::MAX, rng.below(80) as u32]),
            entry: match rng.below(3) {
                0 => EntryMode::Multiboot,
                1 => EntryMode::Linux,
                _ => EntryMode::Flat64 {
                    load_gpa: rng.pick(&[0, 0x20_0000, 0x10_0001, rng.next()]),
                },
            },
            vcpus: rng.pick(&[0, 1, 2, rng.next() as u8]),
            cmdline: short_string(rng, &["", "fuzz"]),
            mmu,
            benchmark: rng.chance(1, 2),
            time_limit_ms: rng.pick(&[0, 1, 1000, rng.next() as u32]),
            trace: rng.chance(1, 4),
            max_resets: rng.pick(&[0, 1, 8, rng.next() as u8]),
            initrd: short_string(rng, &modules),
        };
        vmm::Request::RunVm { config }
    }

    fn allowed(_: &vmm::Request, _: &[ServiceName]) -> bool {
        true
    }

    fn error_of(resp: &vmm::Response) -> Option<String<NAME_MAX>> {
        match resp {
            vmm::Response::Error(e) => Some(proto_error_name(e)),
            _ => None,
        }
    }
}

impl Fuzzed for Mmu {
    const NAME: &'static str = "mmu-service";
    fn slot() -> CapSlot {
        mmu()
    }

    fn golden(rng: &mut Rng) -> mmu::Request {
        use mmu::Request::*;
        let handle = rng.pick(&[0, 1, 3, 4, u32::MAX, rng.next() as u32]);
        match rng.below(7) {
            0 => AttachVm {
                key: rng.next(),
                ram_pages: rng.pick(&[0, 1, 512, 16384, rng.next()]),
                shadow: rng.chance(1, 2).then(|| ShadowParams {
                    prev_roots: rng.pick(&[0, 8, 31, rng.next() as u8]),
                    pool_pages: rng.pick(&[0, 16, 2049, rng.next() as u32]),
                    kvm_policy: rng.chance(1, 2),
                    maxphyaddr: rng.pick(&[0, 36, 52, 64, rng.next() as u8]),
                    gbpages: rng.chance(1, 2),
                }),
            },
            1 => GrantRam { handle },
            2 => DetachVm { handle },
            3 => Stats { handle },
            // Refused: the fuzz scenario's command line does not enable injection.
            4 => InjectFaults {
                every: rng.pick(&[0, 1, 100]),
                limit: rng.next() as u32,
                spare_first: rng.chance(1, 2),
                seed: rng.next(),
            },
            5 => Recovery,
            _ => AttachVcpu {
                handle,
                index: rng.next() as u16,
            },
        }
    }

    fn allowed(_: &mmu::Request, _: &[ServiceName]) -> bool {
        true
    }

    fn error_of(resp: &mmu::Response) -> Option<String<NAME_MAX>> {
        match resp {
            mmu::Response::Error(e) => Some(proto_error_name(e)),
            _ => None,
        }
    }

    /// Exit messages come from the kernel's portals (a hostile exit handler is another test).
    fn reserved_label(l: u64) -> bool {
        l == abi::vmx::EXIT_LABEL
    }
}

impl Fuzzed for Trace {
    const NAME: &'static str = "trace";
    fn slot() -> CapSlot {
        trace()
    }

    fn golden(rng: &mut Rng) -> trace_proto::Request {
        use trace_proto::Request::*;
        let vm = rng.pick(&[0, 1, 2, 7, u32::MAX, rng.next() as u32]);
        let share = if rng.chance(1, 2) {
            trace_proto::Share::Full
        } else {
            trace_proto::Share::Handler
        };
        match rng.below(7) {
            0 => Status,
            1 => {
                let mut name = String::new();
                for _ in 0..rng.below(trace_proto::NAME_MAX as u64 + 1) {
                    let _ = name.push((b' ' + rng.below(95) as u8) as char);
                }
                Start { name }
            }
            2 => Stop { vm },
            3 => Reset { vm },
            4 => Query {
                vm,
                from_reason: rng.pick(&[0, 10, 65, u16::MAX, rng.next() as u16]),
            },
            5 => Buckets {
                vm,
                reason: rng.pick(&[0, 10, 30, u16::MAX, rng.next() as u16]),
                share,
                from: rng.pick(&[0, 1, 16, u16::MAX, rng.next() as u16]),
            },
            _ => Crash,
        }
    }

    /// A crash (refused anyway without `trace.inject`) would restart the service on purpose.
    fn allowed(req: &trace_proto::Request, _: &[ServiceName]) -> bool {
        !matches!(req, trace_proto::Request::Crash)
    }

    fn error_of(resp: &trace_proto::Response) -> Option<String<NAME_MAX>> {
        match resp {
            trace_proto::Response::Error(e) => Some(proto_error_name(e)),
            _ => None,
        }
    }
}

/// Mutates the encoded request `buf[..len]`; returns the label and the new length.
fn mutate<P: Fuzzed>(rng: &mut Rng, buf: &mut [u8; SEND_MAX], mut len: usize) -> (u64, usize) {
    let opcodes = <P::Request as Message>::OPCODE_COUNT as u8;
    match rng.below(10) {
        // Sent as encoded: a valid request.
        0..=2 => {}
        3 => {
            for _ in 0..=rng.below(8) {
                if len > 0 {
                    let at = rng.below(len as u64) as usize;
                    buf[at] ^= 1 << rng.below(8);
                }
            }
        }
        4 => len = rng.below(len as u64 + 1) as usize,
        5 => {
            let end = (len + 1 + rng.below(64) as usize).min(SEND_MAX);
            rng.fill(&mut buf[len..end]);
            len = end;
        }
        6 => {
            buf[0] = rng.pick(&[
                opcodes,
                opcodes.wrapping_add(1),
                0x7f,
                0x80,
                0xff,
                rng.next() as u8,
            ]);
            len = len.max(1);
        }
        7 => {
            let new = rng.pick(&[
                0,
                MAX_PAYLOAD,
                MAX_PAYLOAD + 1,
                rng.below(SEND_MAX as u64 + 1) as usize,
            ]);
            if new > len {
                rng.fill(&mut buf[len..new]);
            }
            len = new;
        }
        8 => {
            len = rng.below(MAX_PAYLOAD as u64 + 1) as usize;
            rng.fill(&mut buf[..len]);
        }
        _ => {
            for _ in 0..=rng.below(4) {
                if len > 0 {
                    let at = rng.below(len as u64) as usize;
                    buf[at] = rng.pick(&[0, 1, 0x7f, 0x80, 0xff]);
                }
            }
        }
    }
    let l = if rng.chance(7, 8) {
        P::LABEL
    } else {
        rng.pick(&[
            supervisor::LABEL,
            echo::LABEL,
            vmm::LABEL,
            mmu::LABEL,
            trace_proto::LABEL,
            label(P::PROTOCOL_ID, P::VERSION.wrapping_add(1)),
            label(P::PROTOCOL_ID, 0),
            P::LABEL | 1 << 32,
            0,
            FAULT_LABEL,
            ECHO_BENCH_LABEL,
            abi::vmx::EXIT_LABEL,
            rng.next(),
        ])
    };
    (l, len)
}

impl MessageFuzz<'_> {
    /// Sends `count` messages, each to a random service.
    pub fn run(&mut self, count: u64) {
        for i in 0..count {
            PROGRESS.fetch_add(1, Ordering::Relaxed);
            match self.rng.below(5) {
                0 => self.one::<Supervisor>(i),
                1 => self.one::<Echo>(i),
                2 => self.one::<Vmm>(i),
                3 => self.one::<Trace>(i),
                _ => self.one::<Mmu>(i),
            }
        }
    }

    fn fail<P: Fuzzed>(&mut self, i: u64, what: core::fmt::Arguments<'_>, msg: (u64, &[u8])) {
        self.failures += 1;
        if self.failures <= FAILURES_SHOWN {
            userlib::println!(
                "fuzz: FAIL {} message {i}: {what}; label {:#x}, {} bytes {:02x?}",
                P::NAME,
                msg.0,
                msg.1.len(),
                &msg.1[..msg.1.len().min(48)]
            );
        }
    }

    /// Builds, sends and judges one message to the service of protocol `P`.
    fn one<P: Fuzzed>(&mut self, i: u64) {
        let mut buf = [0u8; SEND_MAX];
        let (label, len) = loop {
            let request = P::golden(self.rng);
            let encoded = codec::encode(&request, &mut buf).unwrap_or(0);
            let (label, len) = mutate::<P>(self.rng, &mut buf, encoded);
            let deliberate = label == P::LABEL
                && len <= MAX_PAYLOAD
                && codec::decode::<P::Request>(&buf[..len])
                    .is_ok_and(|r| !P::allowed(&r, self.services));
            if deliberate || P::reserved_label(label) {
                self.filtered += 1;
                continue;
            }
            break (label, len);
        };
        let grant = if self.rng.chance(1, 10) && !self.grantables.is_empty() {
            Some(self.rng.pick(self.grantables))
        } else {
            None
        };
        let sent = buf;
        self.sent += 1;
        match sys::call(P::slot(), &mut buf, len, label, grant) {
            Err(e) => {
                let code = e.code();
                self.kernel.add_fmt(format_args!("{code:?}"));
                match code {
                    Error::ServerRestarted | Error::ServerGone => self.fail::<P>(
                        i,
                        format_args!("the service died ({e})"),
                        (label, &sent[..len]),
                    ),
                    Error::BadLength if len > MAX_PAYLOAD => {}
                    other => self.fail::<P>(
                        i,
                        format_args!("the kernel refused the call ({other:?})"),
                        (label, &sent[..len]),
                    ),
                }
            }
            Ok(r) => {
                if let Some(cap) = r.cap {
                    let _ = sys::cap_delete(cap);
                }
                if label == ECHO_BENCH_LABEL && P::slot() == echo() && r.label == label {
                    self.replies.add("echo raw");
                    return;
                }
                if r.label != P::LABEL {
                    self.fail::<P>(
                        i,
                        format_args!("reply label {:#x}", r.label),
                        (label, &sent[..len]),
                    );
                    return;
                }
                match codec::decode::<P::Response>(&buf[..r.len.min(MAX_PAYLOAD)]) {
                    Ok(resp) => match P::error_of(&resp) {
                        Some(kind) => self.replies.add_fmt(format_args!("{} {kind}", P::NAME)),
                        None => self.replies.add_fmt(format_args!("{} reply", P::NAME)),
                    },
                    Err(e) => self.fail::<P>(
                        i,
                        format_args!("undecodable reply ({e:?}, {} bytes)", r.len),
                        (label, &sent[..len]),
                    ),
                }
            }
        }
    }
}
