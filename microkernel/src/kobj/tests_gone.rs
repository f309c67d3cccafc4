//! Lookups that find nothing: an id whose object is gone gives an error (`Gone`, or
//! `StaleCap` to a task), never a panic. The states here break the model's invariants on
//! purpose (no syscall sequence reaches them: `tests_invariants.rs` checks that); what is
//! checked is that the kernel keeps going.

use abi::vmx::reason;

use super::ids::{Gone, ThreadId};
use super::kernel::Next;
use super::objects::{ThreadState, MAX_THREADS};
use super::tests::{boot, kernel};
use super::tests_vm::{exit, run, vmm};

#[test]
fn a_vcpu_thread_whose_vcpu_is_gone_is_parked_not_a_panic() {
    let mut v = vmm();
    let running = run(&mut v, true);
    let (vi, vt) = (v.vi, v.vt);
    // The vCPU's slot empties under its running thread.
    v.k.vcpus[vi.index()].obj = None;
    assert!(v.k.guest_context(vt).is_err());
    // An exit of it: the kernel schedules something else.
    let next = exit(&mut v.k, reason::CPUID, 0, 2);
    assert_ne!(next, Next::Guest(vt));
    assert_eq!(
        v.k.thread(vt).unwrap().state,
        ThreadState::Suspended,
        "the thread is parked: the scheduler does not pick it again"
    );
    // The runner waits on (its vCPU can no longer stop to answer it); nothing else broke.
    assert_eq!(
        v.k.thread(running.runner).unwrap().state,
        ThreadState::BlockedRun { vcpu: vi }
    );
    assert_ne!(v.k.schedule(), Next::Guest(vt));
}

#[test]
fn a_dead_thread_in_a_run_queue_is_picked_but_has_no_context() {
    let mut k = kernel(&["supervisor"]);
    let sup = boot(&mut k);
    let dead = (0..MAX_THREADS)
        .map(ThreadId::from_index)
        .find(|&t| k.thread(t).is_err())
        .unwrap();
    // The queue uses spare links for a slot with no thread.
    k.run_queue.push(&mut k.threads, dead, 31);
    assert_eq!(k.run_queue.highest(), Some(31));
    assert_eq!(k.context(dead).err(), Some(Gone));
    // `kentry` idles on a `Next::User` without a context; the next pick goes on.
    assert_eq!(k.schedule(), Next::User(dead));
    assert_eq!(k.current(), Some(dead));
    assert_eq!(k.schedule(), Next::User(sup));
}

#[test]
fn syscall_paths_answer_stale_cap_for_a_task_that_is_gone() {
    let mut k = kernel(&["supervisor"]);
    let sup = boot(&mut k);
    let ti = k.thread(sup).unwrap().task;
    // The current thread's task slot empties (the thread stays).
    let task = k.tasks[ti.index()].obj.take();
    assert!(task.is_some());
    assert_eq!(k.cur_task(), Ok(ti));
    assert_eq!(
        k.cap(0, abi::CapKind::Spawn, abi::Rights::empty()),
        Err(abi::Error::StaleCap)
    );
    assert_eq!(k.check_cap_slot(), Err((abi::Error::StaleCap, 0)));
    // A whole syscall: the caller hears StaleCap (its task's tables are gone).
    let mut regs = k.thread(sup).unwrap().regs;
    regs.rax = abi::Sys::EndpointCreate as u64;
    k.on_syscall(&regs);
    assert_eq!(
        abi::Error::check(k.thread(sup).unwrap().regs.rax),
        Err(abi::Error::StaleCap)
    );
}
