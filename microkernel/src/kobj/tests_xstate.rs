//! Host tests of the extended-state switch (part `fpu` of issue 17): the model machine keeps
//! one word for the registers and one per thread area, so a test sees exactly what a thread
//! would find in its x87/SSE/AVX registers when it runs again.

use std::collections::HashMap;

use abi::cpu::xcr0;
use abi::vmx::{field, reason, ExitReply, REPLY_LABEL};
use abi::{Error, Sys, NO_CAP};

use super::kernel::{Kernel, Next};
use super::queue::ThreadId;
use super::tests::{boot, kernel, ok, status, sys, write_user, Model, DATA};
use super::tests_vm::{exit, read_one, run, state, vmm_with, write_state};

/// What `kentry::resume` does with the kernel's choice: switch the extended state, then run.
fn go(k: &mut Kernel<Model>, next: Next) -> ThreadId {
    k.switch_xstate(next);
    match next {
        Next::User(t) | Next::Guest(t) => t,
        other => panic!("{other:?}"),
    }
}

/// Thread `t` runs and uses the registers: with CR0.TS set (a user thread that does not own
/// them) its first such instruction raises #NM first, as on the machine. It must find its own
/// value in the registers (0, the initial state, the first time), and leaves its value there.
fn runs(k: &mut Kernel<Model>, mine: &mut HashMap<ThreadId, u64>, t: ThreadId) {
    if k.machine.xstate_trapped {
        let regs = k.thread(t).unwrap().regs;
        let next = k.on_device_not_available(&regs);
        assert_eq!(next, Next::User(t), "#NM resumes the same thread");
        k.switch_xstate(next);
        assert!(!k.machine.xstate_trapped, "the owner runs without the trap");
    }
    let expect = mine.get(&t).copied().unwrap_or(0);
    assert_eq!(
        k.machine.xstate_live, expect,
        "thread {t} finds its own extended state"
    );
    let value = 0x1000 + u64::from(t.raw()) * 0x11;
    k.machine.xstate_live = value;
    mine.insert(t, value);
}

#[test]
fn threads_keep_their_own_extended_state_across_yields() {
    let mut k = kernel(&["supervisor"]);
    let sup = boot(&mut k);
    let mut mine = HashMap::new();
    let t = go(&mut k, Next::User(sup));
    runs(&mut k, &mut mine, t);
    let prio = k.thread(sup).unwrap().prio;
    for _ in 0..2 {
        ok(&sys(
            &mut k,
            Sys::ThreadCreate,
            [0x40_0000, DATA + 0x1000, 0, prio.into(), 0, 0],
        )
        .1);
    }
    let mut seen = HashMap::new();
    for _ in 0..30 {
        let (next, _) = sys(&mut k, Sys::Yield, [0; 6]);
        let t = go(&mut k, next);
        runs(&mut k, &mut mine, t);
        *seen.entry(t).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "all three threads ran: {seen:?}");
    // Switches happen only between different threads, and each saves the previous owner.
    let log = &k.machine.xstate_switches;
    assert!(log
        .windows(2)
        .all(|w| w[0].1 != w[1].1 && w[1].0 == Some(w[0].1)));
    // A run of the same thread again switches nothing.
    let log = &k.machine.xstate_switches;
    let n = log.len();
    let owner = k.xstate_owner.unwrap();
    k.switch_xstate(Next::User(owner));
    k.switch_xstate(Next::Idle);
    assert_eq!(k.machine.xstate_switches.len(), n);
}

#[test]
fn a_new_thread_in_a_dead_threads_slot_starts_from_the_initial_state() {
    let mut k = kernel(&["supervisor"]);
    let sup = boot(&mut k);
    let mut mine = HashMap::new();
    go(&mut k, Next::User(sup));
    runs(&mut k, &mut mine, sup);
    let prio = k.thread(sup).unwrap().prio;
    let a = ThreadId::from_index(
        (ok(&sys(
            &mut k,
            Sys::ThreadCreate,
            [0x40_0000, DATA + 0x1000, 0, prio.into(), 0, 0],
        )
        .1)) as usize,
    );
    let (next, _) = sys(&mut k, Sys::Yield, [0; 6]);
    assert_eq!(go(&mut k, next), a);
    runs(&mut k, &mut mine, a);
    // A exits with its state in the registers: it is not saved (A is gone), init's comes back.
    let (next, _) = sys(&mut k, Sys::ThreadExit, [0; 6]);
    assert_eq!(go(&mut k, next), sup);
    runs(&mut k, &mut mine, sup);
    assert_eq!(k.machine.xstate_switches.last(), Some(&(None, sup)));
    let b = ThreadId::from_index(
        (ok(&sys(
            &mut k,
            Sys::ThreadCreate,
            [0x40_0000, DATA + 0x1000, 0, prio.into(), 0, 0],
        )
        .1)) as usize,
    );
    assert_eq!(b, a, "the slot is reused");
    mine.remove(&a);
    let (next, _) = sys(&mut k, Sys::Yield, [0; 6]);
    assert_eq!(go(&mut k, next), b);
    runs(&mut k, &mut mine, b); // finds 0, not A's value
}

#[test]
fn a_vcpu_has_its_own_extended_state_apart_from_its_vmm() {
    let mut v = vmm_with(0);
    let r = run(&mut v, true);
    let (k, vt) = (&mut v.k, v.vt);
    let mut mine = HashMap::new();
    assert_eq!(go(k, Next::Guest(vt)), vt);
    runs(k, &mut mine, vt);
    for _ in 0..5 {
        // The guest exits to the VMM's server thread, which uses the registers too.
        let next = exit(k, reason::CPUID, 0, 2);
        let t = go(k, next);
        assert_eq!(t, r.server);
        runs(k, &mut mine, t);
        // The server answers and waits for the next exit (ReplyRecv).
        let mut buf = [0u8; ExitReply::MAX_SIZE];
        let n = ExitReply::default().encode(&mut buf).unwrap();
        write_user(k, r.server, DATA, &buf[..n]);
        let args = [r.server_ep, DATA, n as u64, 512, REPLY_LABEL, NO_CAP];
        let (next, _) = sys(k, Sys::ReplyRecv, args);
        let t = go(k, next);
        assert_eq!(t, vt);
        runs(k, &mut mine, t);
    }
}

#[test]
fn vcpu_xcr0_and_debug_registers_are_checked_like_the_hardware_would() {
    let mut v = vmm_with(0);
    let (k, vcpu) = (&mut v.k, v.vcpu);
    let ok_pairs = [
        (field::GUEST_XCR0, xcr0::X87 | xcr0::SSE | xcr0::AVX),
        (field::GUEST_DR0, 0xffff_8000_0000_1000),
        (field::GUEST_DR0 + 3, 0x1234),
        (field::GUEST_DR6, 0xffff_0ff1),
        (field::GUEST_DR7, 0x403),
    ];
    write_state(k, vcpu, &ok_pairs);
    for (f, value) in ok_pairs {
        assert_eq!(read_one(k, vcpu, f), value, "{f:#x}");
    }
    for (i, bad) in [
        (field::GUEST_XCR0, xcr0::SSE),
        (field::GUEST_XCR0, xcr0::X87 | xcr0::AVX),
        (
            field::GUEST_XCR0,
            xcr0::X87 | xcr0::SSE | xcr0::AVX | xcr0::AVX512,
        ),
        (field::GUEST_DR6, 1 << 32),
        (field::GUEST_DR7, 0x400 | 1 << 40),
    ]
    .into_iter()
    .enumerate()
    {
        // The bad pair second: the whole batch is refused with its index.
        let (r, _) = state(k, vcpu, &[(field::GUEST_DR0 + 1, 7), bad], true);
        assert_eq!(status(&r), Err(Error::InvalidArgument), "case {i}");
        assert_eq!(r.rdi, 1, "case {i}: the index of the bad pair");
    }
    assert_eq!(
        read_one(k, vcpu, field::GUEST_DR0 + 1),
        0,
        "nothing applied"
    );
    assert_eq!(
        read_one(k, vcpu, field::GUEST_XCR0),
        xcr0::X87 | xcr0::SSE | xcr0::AVX
    );
}

#[test]
fn an_exit_answered_in_ring_3_moves_no_extended_state() {
    let mut v = vmm_with(0);
    let r = run(&mut v, true);
    let (k, vt) = (&mut v.k, v.vt);
    let mut mine = HashMap::new();
    assert_eq!(go(k, Next::Guest(vt)), vt);
    runs(k, &mut mine, vt);
    let switches = k.machine.xstate_switches.len();
    for _ in 0..5 {
        // The VMM's server handles the exit without touching x87/SSE/AVX registers: it runs
        // with the trap set, and nothing is saved or loaded.
        let next = exit(k, reason::CPUID, 0, 2);
        assert_eq!(go(k, next), r.server);
        assert!(
            k.machine.xstate_trapped,
            "a user thread that is not the owner traps"
        );
        let mut buf = [0u8; ExitReply::MAX_SIZE];
        let n = ExitReply::default().encode(&mut buf).unwrap();
        write_user(k, r.server, DATA, &buf[..n]);
        let args = [r.server_ep, DATA, n as u64, 512, REPLY_LABEL, NO_CAP];
        let (next, _) = sys(k, Sys::ReplyRecv, args);
        assert_eq!(go(k, next), vt);
        runs(k, &mut mine, vt);
    }
    assert_eq!(k.machine.xstate_switches.len(), switches, "no save or load");
}
