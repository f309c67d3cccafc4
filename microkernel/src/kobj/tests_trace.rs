//! Host tests of the exit trace ring (`trace.rs`): attaching, the records of traced exits and
//! their stamps, drops when full, acknowledgements and the reader's wake-up.

use abi::trace::{self, flags, header, Record};
use abi::vmx::{reason, stop, ExitReply};
use abi::{Error, Rights, Sys};

use super::kernel::{Kernel, Next};
use super::machine::Machine;
use super::tests::{ok, status, sys, Model};
use super::tests_vm::{exit, reply_with, run, vmm_with, Vmm};

/// Attaches from the current thread (init): (notification slot, ring memory slot).
fn attach(k: &mut Kernel<Model>) -> (u64, u64) {
    let ntfn = ok(&sys(k, Sys::NotificationCreate, [0; 6]).1);
    let ring = ok(&sys(
        k,
        Sys::TraceAttach,
        [abi::cap::slot::TRACE, ntfn, 0, 0, 0, 0],
    )
    .1);
    (ntfn, ring)
}

fn ring_phys(k: &Kernel<Model>) -> u64 {
    k.trace.mem.expect("attached").1
}

fn header_u64(k: &Kernel<Model>, offset: usize) -> u64 {
    let mut b = [0u8; 8];
    k.machine.read_phys(ring_phys(k) + offset as u64, &mut b);
    u64::from_le_bytes(b)
}

fn record(k: &Kernel<Model>, n: u64) -> Record {
    let mut b = [0u8; trace::RECORD_SIZE];
    let slot = (n % trace::CAPACITY as u64) as usize;
    k.machine
        .read_phys(ring_phys(k) + trace::record_offset(slot) as u64, &mut b);
    Record::decode(&b).unwrap()
}

/// A VMM (init) attached to the ring, its VM traced: (the VMM, the VM's trace id).
fn traced_vmm() -> (Vmm, u32) {
    let mut v = vmm_with(0);
    attach(&mut v.k);
    let id = ok(&sys(&mut v.k, Sys::VmTrace, [v.vm, 1, 0, 0, 0, 0]).1) as u32;
    (v, id)
}

#[test]
fn attach_needs_the_trace_capability_and_a_notification_it_may_signal() {
    let mut v = vmm_with(0);
    let k = &mut v.k;
    let ntfn = ok(&sys(k, Sys::NotificationCreate, [0; 6]).1);
    let wait_only = ok(&sys(k, Sys::CapCopy, [ntfn, Rights::READ.bits(), 0, 0, 0, 0]).1);
    let attach_with = |k: &mut Kernel<Model>, trace_slot: u64, n: u64| {
        status(&sys(k, Sys::TraceAttach, [trace_slot, n, 0, 0, 0, 0]).1)
    };
    assert_eq!(
        attach_with(k, abi::cap::slot::VMX, ntfn),
        Err(Error::WrongCapKind),
        "the VMX capability is not the trace capability"
    );
    assert_eq!(
        attach_with(k, abi::cap::slot::TRACE, wait_only),
        Err(Error::NoRights)
    );
    assert!(k.trace.mem.is_none(), "a failed attach made no ring");
    let (_, ring) = attach(k);
    let (_, regs) = sys(k, Sys::MemInfo, [ring, 0, 0, 0, 0, 0]);
    assert_eq!(ok(&regs), trace::RING_PAGES as u64, "the ring's pages");
    // Read-only: it maps readable, never writable.
    let (_, regs) = sys(
        k,
        Sys::MemMap,
        [
            ring,
            0x4000_0000,
            (Rights::READ | Rights::WRITE).bits(),
            0,
            0,
            0,
        ],
    );
    assert_eq!(status(&regs), Err(Error::NoRights));
    ok(&sys(
        k,
        Sys::MemMap,
        [ring, 0x4000_0000, Rights::READ.bits(), 0, 0, 0],
    )
    .1);
    let mut h = [0u8; header::SIZE];
    k.machine.read_phys(ring_phys(k), &mut h);
    assert_eq!(&h[..4], b"UTRC");
    assert_eq!(
        u16::from_le_bytes([h[header::RECORD_SIZE], h[header::RECORD_SIZE + 1]]),
        trace::RECORD_SIZE as u16
    );
    // A second attach (a restarted reader) gets the same ring.
    let before = k.trace.mem;
    attach(k);
    assert_eq!(k.trace.mem, before);
}

#[test]
fn a_handled_exit_is_one_record_stamped_at_exit_receive_reply_and_entry() {
    let (mut v, id) = traced_vmm();
    let run = run(&mut v, true);
    let (k, vt) = (&mut v.k, v.vt);
    assert_eq!(exit(k, reason::CPUID, 0x77, 2), Next::User(run.server));
    assert_eq!(k.trace.head, 0, "written at the entry that follows");
    assert_eq!(reply_with(k, &ExitReply::advance()), Next::Guest(vt));
    k.trace_entry(vt);
    assert_eq!((k.trace.head, header_u64(k, header::HEAD)), (1, 1));
    let r = record(k, 0);
    assert_eq!(
        (r.vm, r.vcpu, r.reason, r.flags, r.qualification),
        (id, 3, reason::CPUID, 0, 0x77)
    );
    assert!(
        0 < r.t_exit && r.t_exit < r.t_recv && r.t_recv < r.t_reply && r.t_reply < r.t_entry,
        "{r:?}"
    );
    // The entry closed the record: the next entry writes nothing.
    k.trace_entry(vt);
    assert_eq!(k.trace.head, 1);
}

#[test]
fn kernel_exits_carry_no_handler_stamps_and_a_stop_has_no_entry() {
    let (mut v, _) = traced_vmm();
    let run = run(&mut v, true);
    let (k, vt) = (&mut v.k, v.vt);
    assert_eq!(exit(k, reason::PREEMPTION_TIMER, 0, 0), Next::Guest(vt));
    k.trace_entry(vt);
    let r = record(k, 0);
    assert_eq!(
        (r.reason, r.flags),
        (reason::PREEMPTION_TIMER, flags::KERNEL)
    );
    assert_eq!((r.t_recv, r.t_reply), (0, 0));
    assert!(r.t_entry > r.t_exit);
    // HLT has no portal: the vCPU stops, and its record has no entry.
    exit(k, reason::HLT, 0, 1);
    assert_eq!(k.trace.head, 2);
    let r = record(k, 1);
    assert_eq!(
        (r.reason, r.flags, r.t_entry),
        (reason::HLT, flags::STOPPED, 0)
    );
    assert_eq!(
        super::tests_vm::run_result(k, run.runner).0,
        stop::UNHANDLED | u64::from(reason::HLT)
    );
}

#[test]
fn an_untraced_vm_writes_nothing_and_tracing_switches_off() {
    let mut v = vmm_with(0);
    attach(&mut v.k);
    let (k, vt) = (&mut v.k, v.vt);
    assert_eq!(
        status(&sys(k, Sys::VmTrace, [v.vm, 2, 0, 0, 0, 0]).1),
        Err(Error::InvalidArgument)
    );
    let read_only = ok(&sys(k, Sys::CapCopy, [v.vm, Rights::READ.bits(), 0, 0, 0, 0]).1);
    assert_eq!(
        status(&sys(k, Sys::VmTrace, [read_only, 1, 0, 0, 0, 0]).1),
        Err(Error::NoRights)
    );
    let id = ok(&sys(k, Sys::VmTrace, [v.vm, 0, 0, 0, 0, 0]).1);
    assert_ne!(id, 0);
    let run = run(&mut v, true);
    let k = &mut v.k;
    assert_eq!(exit(k, reason::CPUID, 0, 2), Next::User(run.server));
    assert_eq!(reply_with(k, &ExitReply::advance()), Next::Guest(vt));
    k.trace_entry(vt);
    assert_eq!((k.trace.head, k.trace.dropped), (0, 0));
}

#[test]
fn a_full_ring_drops_and_counts_and_the_reader_is_woken_once_per_ack() {
    let (mut v, _) = traced_vmm();
    let (ntfn, _) = (ok(&sys(&mut v.k, Sys::NotificationCreate, [0; 6]).1), ());
    ok(&sys(
        &mut v.k,
        Sys::TraceAttach,
        [abi::cap::slot::TRACE, ntfn, 0, 0, 0, 0],
    )
    .1);
    let (k, vi, vt) = (&mut v.k, v.vi, v.vt);
    let poll = |k: &mut Kernel<Model>| sys(k, Sys::Poll, [ntfn, 0, 0, 0, 0, 0]).1.rdi;
    let one = |k: &mut Kernel<Model>, n: u64| {
        k.trace_exit(vi, reason::CPUID, n, k.machine.tsc());
        k.trace_entry(vt);
    };
    for n in 0..trace::WAKE_AT as u64 - 1 {
        one(k, n);
    }
    assert_eq!(poll(k), 0, "below the wake mark");
    one(k, 0);
    assert_eq!(poll(k), super::trace::WAKE_BIT, "woken at the mark");
    one(k, 0);
    assert_eq!(poll(k), 0, "once until the next acknowledgement");
    for n in k.trace.head..trace::CAPACITY as u64 + 5 {
        one(k, n);
    }
    assert_eq!((k.trace.head, k.trace.dropped), (trace::CAPACITY as u64, 5));
    assert_eq!(header_u64(k, header::DROPPED), 5);
    assert_eq!(
        record(k, 9).qualification,
        9,
        "nothing unread was overwritten"
    );
    // Acknowledgements: never past head, never back.
    let ack = |k: &mut Kernel<Model>, tail: u64| {
        status(&sys(k, Sys::TraceAck, [abi::cap::slot::TRACE, tail, 0, 0, 0, 0]).1)
    };
    assert_eq!(
        ack(k, trace::CAPACITY as u64 + 1),
        Err(Error::InvalidArgument)
    );
    assert_eq!(ack(k, 10), Ok(()));
    assert_eq!(header_u64(k, header::TAIL), 10);
    assert_eq!(ack(k, 9), Err(Error::InvalidArgument));
    assert_eq!(
        poll(k),
        super::trace::WAKE_BIT,
        "still over the mark: woken again"
    );
    one(k, 4242);
    assert_eq!(k.trace.head, trace::CAPACITY as u64 + 1);
    assert_eq!(record(k, trace::CAPACITY as u64).qualification, 4242);
    assert_eq!(
        record(k, 10).qualification,
        10,
        "slot 0 reused, slot 10 kept"
    );
    assert_eq!(
        status(&sys(k, Sys::TraceAck, [abi::cap::slot::VMX, 11, 0, 0, 0, 0]).1),
        Err(Error::WrongCapKind)
    );
}
