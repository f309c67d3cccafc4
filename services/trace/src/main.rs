//! Umbra's trace service: reads the kernel's exit trace ring ([`abi::trace`]) and keeps, per
//! traced VM and exit reason, histograms of the exit-to-entry time and of the handler's share;
//! answers `proto::trace` (start, stop, reset, query, buckets, status).
//!
//! Capabilities (by name, `userlib::wiring`): its own endpoint, `trace-ring` (the ring) and
//! `boot` (the kernel command line: `trace.inject` lets `Request::Crash` crash it, for the
//! restart tests). Start argument: its generation.
//!
//! Two threads: the main thread serves requests; the drain thread waits on the notification
//! the kernel signals when the ring is a quarter full and moves records into the histograms.
//! Every request that reads the histograms drains the ring first, so an answer counts every
//! exit recorded before it. A restarted service starts with empty histograms: it says so
//! ([`Status::restarted`], `Totals::lost` for VMs it learns of from the ring) and goes on.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

extern crate alloc;

use ::trace::ring::check_header;
use ::trace::stats::TraceStats;
use abi::ipc::MAX_PAYLOAD;
use abi::trace::{self, header, Record};
use abi::{CapKind, CapSlot, Error};
use heapless::Vec;
use spin::Mutex;
use userlib::proto::trace::{Request, Response, Status, Trace, TraceError};
use userlib::proto::ProtoError;
use userlib::server::serve_one;
use userlib::sys::{self, SharedRead, ThreadStack};
use userlib::wiring::Wiring;

userlib::entry!(trace_main);

const OWN_EP: CapSlot = userlib::wiring::OWN_ENDPOINT;
/// Where the ring is mapped (read-only).
const RING_VA: u64 = 0x2000_0000;
/// Heap pages: the histograms (about 6 KiB per exit reason of a VM).
const HEAP_PAGES: u64 = 512;
/// VMs this instance was asked to trace and still remembers (the oldest stopped one goes
/// when a new one comes and the list is full).
const MAX_TRACED: usize = 16;

/// A VM this instance traces or traced: its trace id, and the ring's drop count when its
/// tracing started and stopped (what `Totals::dropped` counts). The service keeps no VM
/// capability: it switches tracing on and deletes the capability, and the VMM, which owns
/// the VM, switches it off ([`abi::Sys::VmTrace`]); so a VM never outlives its VMM here.
struct Traced {
    vm: u32,
    dropped_at_start: u64,
    dropped_at_stop: Option<u64>,
}

struct State {
    stats: TraceStats,
    ring: SharedRead,
    ring_cap: CapSlot,
    tail: u64,
    records: u64,
    traced: Vec<Traced, MAX_TRACED>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);
static DRAIN_STACK: ThreadStack<16384> = ThreadStack::new();

/// Runs `f` on the state; a thread that finds it busy yields (the other thread holds it and
/// may have been preempted).
fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> Option<R> {
    loop {
        if let Some(mut guard) = STATE.try_lock() {
            return guard.as_mut().map(f);
        }
        sys::yield_now();
    }
}

impl State {
    /// Moves every record written since the last drain into the histograms and tells the
    /// kernel their slots are free.
    fn drain(&mut self) {
        let Some(head) = self.ring.read_u64(header::HEAD) else {
            return;
        };
        let unread = head.wrapping_sub(self.tail);
        if unread > trace::CAPACITY as u64 {
            // The kernel never lets this happen (it drops instead of overwriting).
            userlib::println!(
                "trace: ring head {head} is {unread} records past tail {}: skipped",
                self.tail
            );
            self.tail = head;
        }
        let mut bytes = [0u8; trace::RECORD_SIZE];
        while self.tail < head {
            let slot = (self.tail % trace::CAPACITY as u64) as usize;
            if self
                .ring
                .read(trace::record_offset(slot), &mut bytes)
                .is_some()
            {
                if let Some(r) = Record::decode(&bytes) {
                    self.stats.ingest(&r);
                    self.records += 1;
                }
            }
            self.tail += 1;
        }
        if let Err(e) = sys::trace_ack(self.ring_cap, self.tail) {
            userlib::println!("trace: TraceAck({}) failed: {e:?}", self.tail);
        }
    }

    fn dropped(&self) -> u64 {
        self.ring.read_u64(header::DROPPED).unwrap_or(0)
    }
}

extern "C" fn drain_thread(ntfn: u64) -> ! {
    loop {
        if sys::wait(ntfn).is_err() {
            sys::yield_now();
        }
        with_state(State::drain);
    }
}

/// The ring's capability, the notification and the mapping: the service cannot work without
/// them.
fn attach(ring_cap: CapSlot) -> Result<(State, CapSlot), &'static str> {
    let ntfn = sys::notification_create().map_err(|_| "no notification")?;
    let mem = sys::trace_attach(ring_cap, ntfn).map_err(|_| "TraceAttach refused")?;
    let ring = SharedRead::new(mem, RING_VA).map_err(|_| "cannot map the ring")?;
    let mut head = [0u8; header::SIZE];
    ring.read(0, &mut head).ok_or("the ring has no header")?;
    if ring.len() < trace::RING_PAGES * 4096 {
        return Err("the ring is smaller than abi::trace's");
    }
    check_header(&head).map_err(|_| "the ring's header is not abi::trace's layout")?;
    // Start where the last reader stopped (a restarted instance reads what its predecessor
    // left unread).
    let tail = ring.read_u64(header::TAIL).unwrap_or(0);
    let state = State {
        stats: TraceStats::new(),
        ring,
        ring_cap,
        tail,
        records: 0,
        traced: Vec::new(),
    };
    Ok((state, ntfn))
}

fn trace_main(generation: u64) {
    let wired = Wiring::fetch().and_then(|w| Ok((w.trace_ring()?, w.boot()?)));
    let (ring_cap, boot) = match wired {
        Ok(c) => c,
        Err(e) => {
            userlib::println!("trace: cannot start: the trace-ring or boot capability: {e}");
            sys::task_exit(1)
        }
    };
    let inject = sys::kernel_cmdline_has(boot, "trace.inject");
    if let Err(e) = sys::heap::init(HEAP_PAGES) {
        userlib::println!("trace: cannot start: no heap ({e:?})");
        sys::task_exit(1)
    }
    let (state, ntfn) = match attach(ring_cap) {
        Ok(s) => s,
        Err(why) => {
            userlib::println!("trace: cannot start: {why}");
            sys::task_exit(1)
        }
    };
    *STATE.lock() = Some(state);
    let Some(stack) = DRAIN_STACK.take() else {
        sys::task_exit(1)
    };
    if let Err(e) = sys::thread_spawn(drain_thread, stack, ntfn, 10) {
        userlib::println!("trace: cannot start the drain thread: {e:?}");
        sys::task_exit(1)
    }
    let restarted = generation > 1;
    if restarted {
        userlib::println!(
            "trace: serving, generation {generation}: the histograms of earlier generations are lost"
        );
    } else {
        userlib::println!("trace: serving, generation {generation}");
    }
    let mut buf = [0u8; MAX_PAYLOAD];
    let mut request = [0u8; MAX_PAYLOAD];
    let mut msg = loop {
        match sys::recv(OWN_EP, &mut buf) {
            Ok(m) => break m,
            Err(e) => userlib::println!("trace: recv: {e}"),
        }
    };
    loop {
        let mut grant = msg.cap;
        let n = msg.len.min(MAX_PAYLOAD);
        request[..n].copy_from_slice(&buf[..n]);
        let (label, len) = serve_one::<Trace>(msg.label, &request[..n], &mut buf, |req| {
            handle(req, &mut grant, generation, restarted, inject)
                .unwrap_or_else(|e| Response::Error(ProtoError::Service(e)))
        });
        if let Some(cap) = grant {
            // Sent with a request that takes none (or a refused start): dropped.
            let _ = sys::cap_delete(cap);
        }
        msg = loop {
            match sys::reply_recv(OWN_EP, &mut buf, len, label, None) {
                Ok(m) => break m,
                Err(e) => userlib::println!("trace: reply_recv: {e}"),
            }
        };
    }
}

fn handle(
    req: Request,
    grant: &mut Option<CapSlot>,
    generation: u64,
    restarted: bool,
    inject: bool,
) -> Result<Response, TraceError> {
    if let Request::Crash = req {
        if !inject {
            return Err(TraceError::InjectOff);
        }
        panic!("trace: crash requested (trace.inject)");
    }
    with_state(|s| {
        s.drain();
        match req {
            Request::Status => Ok(Response::Status(Status {
                generation,
                restarted,
                records: s.records,
                dropped: s.dropped(),
                vms: s.stats.vm_count() as u8,
            })),
            Request::Start { name } => {
                let cap = grant.ok_or(TraceError::NoVmCapability)?;
                let kind = sys::cap_info(cap).ok().and_then(|i| i.kind);
                if kind != Some(CapKind::Vm) {
                    return Err(TraceError::NotAVm);
                }
                if s.traced.is_full() {
                    // Room for one more: the oldest VM whose tracing stopped goes.
                    let i = s
                        .traced
                        .iter()
                        .position(|t| t.dropped_at_stop.is_some())
                        .ok_or(TraceError::TooManyVms)?;
                    s.traced.remove(i);
                }
                let vm = sys::vm_trace(cap, true).map_err(kernel_error)?;
                if let Err(e) = s.stats.start(vm, name.as_str()) {
                    let _ = sys::vm_trace(cap, false);
                    return Err(e);
                }
                let dropped_at_start = s.dropped();
                s.traced.retain(|t| t.vm != vm);
                let _ = s.traced.push(Traced {
                    vm,
                    dropped_at_start,
                    dropped_at_stop: None,
                });
                // The capability is not kept (the main loop deletes what `grant` holds).
                Ok(Response::Started { vm })
            }
            Request::Stop { vm } => {
                let known = s.stats.vm_ids().any(|id| id == vm);
                let now = s.dropped();
                match s.traced.iter_mut().find(|t| t.vm == vm) {
                    Some(t) => t.dropped_at_stop = Some(now),
                    None if !known => return Err(TraceError::UnknownVm),
                    None => {}
                }
                let _ = s.stats.stop(vm);
                Ok(Response::Done)
            }
            Request::Reset { vm } => {
                s.stats.reset(vm)?;
                Ok(Response::Done)
            }
            Request::Query { vm, from_reason } => {
                let (mut totals, rows, next) = s.stats.rows(vm, from_reason)?;
                // Drops while this VM was traced (since this instance started, for a VM it
                // learnt of from the ring).
                let now = s.dropped();
                let (since, until) = s.traced.iter().find(|t| t.vm == vm).map_or((0, now), |t| {
                    (t.dropped_at_start, t.dropped_at_stop.unwrap_or(now))
                });
                totals.dropped = until.saturating_sub(since);
                Ok(Response::Rows {
                    vm,
                    totals,
                    rows,
                    next,
                })
            }
            Request::Buckets {
                vm,
                reason,
                share,
                from,
            } => {
                let (buckets, next) = s.stats.buckets(vm, reason, share, from)?;
                Ok(Response::Buckets { buckets, next })
            }
            // Answered above, before the state was taken.
            Request::Crash => Err(TraceError::InjectOff),
        }
    })
    .unwrap_or(Err(TraceError::OutOfMemory))
}

fn kernel_error(e: Error) -> TraceError {
    TraceError::Kernel { code: e as u16 }
}
