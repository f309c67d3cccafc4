//! The kernel's invariants over the model machine of `tests.rs`, and a digest of everything a
//! syscall can change, for the property test of the syscall layer (`tests_syscall_props.rs`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::string::String;
use std::vec::Vec;

use abi::cap::CAP_SLOTS;
use abi::CapKind;

use super::captable::ObjRef;
use super::ids::{EndpointId, NotificationId, TaskId, ThreadId, VcpuId};
use super::kernel::Kernel;
use super::objects::*;
use super::queue::Queue;
use super::syscalls::MAX_THREADS_PER_TASK;
use super::tests::Model;
use super::vm::{Portal, VcpuRun};
use crate::PAGE_SIZE;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(format!($($fmt)*));
        }
    };
}

/// The generation of the table slot `r` names, and whether the slot holds an object.
fn slot_state(k: &Kernel<Model>, r: ObjRef) -> Option<(u32, bool)> {
    fn of<T>(slots: &[Slot<T>], i: u16) -> Option<(u32, bool)> {
        slots
            .get(i as usize)
            .map(|s| (s.generation, s.obj.is_some()))
    }
    match r.kind {
        CapKind::Endpoint => of(&k.endpoints, r.index),
        CapKind::Notification => of(&k.notifications, r.index),
        CapKind::Memory => of(&k.memory, r.index),
        CapKind::Task => of(&k.tasks, r.index),
        CapKind::Vm => of(&k.vms, r.index),
        CapKind::Vcpu => of(&k.vcpus, r.index),
        CapKind::Spawn | CapKind::Machine | CapKind::Boot | CapKind::Vmx | CapKind::Trace => {
            (r.index == 0 && r.generation == 0).then_some((0, true))
        }
    }
}

/// Checks a reference held by the kernel (a capability, a mapping, a VM's RAM...): it names a
/// slot of its kind's table at the slot's generation (then the slot is full) or an earlier
/// one (stale). Returns whether it is live.
fn check_ref(k: &Kernel<Model>, r: ObjRef, what: &str) -> Result<bool, String> {
    let Some((generation, full)) = slot_state(k, r) else {
        return Err(format!("{what}: {r:?} names no slot"));
    };
    ensure!(
        r.generation <= generation,
        "{what}: {r:?} is newer than its slot (generation {generation})"
    );
    let live = r.generation == generation;
    ensure!(!live || full, "{what}: {r:?} names an empty slot");
    Ok(live)
}

/// Walks a thread queue: links consistent both ways, every thread live, queued, at most once
/// in any queue (`seen`), and in the state `want` says.
fn walk(
    k: &Kernel<Model>,
    q: Queue,
    what: &str,
    seen: &mut [Option<String>],
    want: impl Fn(&Thread) -> bool,
) -> Result<(), String> {
    let mut prev = None;
    let mut at = q.head;
    let mut n = 0;
    while let Some(t) = at {
        n += 1;
        ensure!(n <= seen.len(), "{what}: a cycle");
        let th = k.threads.0[t.index()]
            .as_ref()
            .ok_or(format!("{what}: dead thread {t}"))?;
        let links = k.threads.links_of(t);
        ensure!(links.queued, "{what}: thread {t} is not marked queued");
        ensure!(links.prev == prev, "{what}: thread {t}'s prev link");
        ensure!(want(th), "{what}: thread {t} is {:?}", th.state);
        if let Some(other) = seen[t.index()].replace(what.into()) {
            return Err(format!("thread {t} is in {other} and in {what}"));
        }
        prev = Some(t);
        at = links.next;
    }
    ensure!(q.tail == prev, "{what}: tail {:?}, last {prev:?}", q.tail);
    Ok(())
}

/// Every invariant of the kernel state that the object model keeps between kernel entries.
pub(super) fn check_invariants(k: &Kernel<Model>) -> Result<(), String> {
    // References held, per object: capabilities, fault endpoints, mappings, VMs, vCPUs, pools.
    let mut held: BTreeMap<(u64, u16), u32> = BTreeMap::new();
    let mut count = |r: ObjRef| *held.entry((r.kind as u64, r.index)).or_default() += 1;
    let mut threads_of = [0u16; MAX_TASKS];
    let mut user_threads_of = [0u16; MAX_TASKS];
    for (t, th) in k.threads.0.iter().enumerate() {
        let Some(th) = th else { continue };
        ensure!(
            k.tasks[th.task.index()].obj.is_some(),
            "thread {t} of dead task {}",
            th.task
        );
        threads_of[th.task.index()] += 1;
        if th.vcpu.is_none() {
            user_threads_of[th.task.index()] += 1;
        }
    }
    let mut live_tasks = 0;
    for (ti, slot) in k.tasks.iter().enumerate() {
        let Some(task) = &slot.obj else { continue };
        live_tasks += 1;
        ensure!(
            task.threads == threads_of[ti],
            "task {ti} counts {} threads, has {}",
            task.threads,
            threads_of[ti]
        );
        ensure!(
            user_threads_of[ti] <= MAX_THREADS_PER_TASK,
            "task {ti} has {} threads",
            user_threads_of[ti]
        );
        for s in 0..CAP_SLOTS as u64 {
            if let Ok(cap) = task.caps.get(s) {
                if check_ref(k, cap.obj, &format!("task {ti} slot {s}"))? {
                    count(cap.obj);
                }
            }
        }
        if let Some(f) = task.fault_ep {
            ensure!(
                f.obj.kind == CapKind::Endpoint,
                "task {ti}'s fault endpoint"
            );
            if check_ref(k, f.obj, &format!("task {ti}'s fault endpoint"))? {
                count(f.obj);
            }
        }
        // The address space maps exactly the mappings, each to its memory object's frames.
        let mut pages = 0;
        let maps: Vec<Mapping> = task.mappings.iter().flatten().copied().collect();
        for (i, m) in maps.iter().enumerate() {
            let what = format!("task {ti} mapping at {:#x}", m.va);
            ensure!(m.mem.kind == CapKind::Memory, "{what}: not memory");
            ensure!(check_ref(k, m.mem, &what)?, "{what}: stale object");
            count(m.mem);
            let mem = slot_get(&k.memory, m.mem).expect("live");
            ensure!(m.pages == mem.pages, "{what}: {} pages", m.pages);
            for o in &maps[i + 1..] {
                ensure!(
                    m.va + m.pages * PAGE_SIZE <= o.va || o.va + o.pages * PAGE_SIZE <= m.va,
                    "{what} overlaps {:#x}",
                    o.va
                );
            }
            for p in 0..m.pages {
                let got = task.space.get(&(m.va + p * PAGE_SIZE)).map(|e| e.0);
                ensure!(got == Some(mem.phys + p * PAGE_SIZE), "{what}: page {p}");
            }
            pages += m.pages;
        }
        ensure!(
            task.space.len() as u64 == pages,
            "task {ti} maps {} pages outside its mappings",
            task.space.len() as u64 - pages
        );
    }
    ensure!(
        k.machine.spaces_live == live_tasks,
        "{} address spaces for {live_tasks} tasks",
        k.machine.spaces_live
    );

    // VMs and vCPUs.
    let mut frames = 0i64;
    for (vi, slot) in k.vms.iter().enumerate() {
        let Some(vm) = &slot.obj else { continue };
        ensure!(
            check_ref(k, vm.ram, &format!("vm {vi}'s RAM"))?,
            "vm {vi}: RAM freed"
        );
        count(vm.ram);
        let ram = slot_get(&k.memory, vm.ram).expect("live");
        ensure!(
            (ram.phys, ram.pages) == (vm.ram_phys, vm.ram_pages),
            "vm {vi}: RAM moved"
        );
        for (&gpa, &(hpa, _)) in &vm.ept {
            ensure!(
                gpa < vm.ram_pages * PAGE_SIZE && hpa == vm.ram_phys + gpa,
                "vm {vi}: EPT maps {gpa:#x} to {hpa:#x}"
            );
        }
        if let Some(s) = vm.shadow {
            frames += 1;
            if let Some(pool) = s.pool {
                ensure!(
                    check_ref(k, pool.mem, "a shadow pool")?,
                    "vm {vi}: pool freed"
                );
                count(pool.mem);
                // The MMU endpoint may have been revoked since (its exits then never match).
                if check_ref(k, pool.mmu_ep, "an MMU endpoint")? {
                    count(pool.mmu_ep);
                }
            }
        }
    }
    for (vi, slot) in k.vcpus.iter().enumerate() {
        let Some(v) = &slot.obj else { continue };
        ensure!(
            check_ref(k, v.vm, &format!("vcpu {vi}'s VM"))?,
            "vcpu {vi}: VM gone"
        );
        count(v.vm);
        let th = k.threads.0[v.thread.index()]
            .as_ref()
            .ok_or(format!("vcpu {vi}: thread {} dead", v.thread))?;
        ensure!(
            th.vcpu == Some(VcpuId::from_index(vi)),
            "vcpu {vi}: its thread runs {:?}",
            th.vcpu
        );
        match v.runner {
            Some(r) => {
                let rt = k.threads.0[r.index()].as_ref();
                ensure!(
                    rt.is_some_and(|r| r.state
                        == ThreadState::BlockedRun {
                            vcpu: VcpuId::from_index(vi)
                        }),
                    "vcpu {vi}: runner {r} is not waiting for it"
                );
            }
            None => ensure!(
                v.run == VcpuRun::Stopped,
                "vcpu {vi} runs for nobody ({:?})",
                v.run
            ),
        }
        if v.run == VcpuRun::Stopped {
            ensure!(
                th.state == ThreadState::Suspended && v.runner.is_none(),
                "stopped vcpu {vi}: thread {:?}",
                th.state
            );
        }
        // The kernel answers only CPUID, VMCALL and port I/O, never a device access; an exit
        // forwarded to the MMIO portal waits on an endpoint (issue 12).
        let reflect_ok = [
            abi::vmx::reason::CPUID,
            abi::vmx::reason::VMCALL,
            abi::vmx::reason::IO,
        ];
        for (r, p) in v.portals.iter().enumerate() {
            ensure!(
                *p != Portal::Reflect || reflect_ok.contains(&(r as u32)),
                "vcpu {vi}: reason {r} reflected"
            );
        }
        ensure!(
            v.mmio_portal != Portal::Reflect,
            "vcpu {vi}: the MMIO portal is the kernel"
        );
        if v.forwarded && v.run == VcpuRun::AwaitingReply {
            ensure!(v.call_ep.is_some(), "vcpu {vi}: forwarded to nothing");
        }
    }

    // The exit trace ring: the kernel's own reference.
    if let Some((mem, phys)) = k.trace.mem {
        ensure!(check_ref(k, mem, "the trace ring")?, "the trace ring: gone");
        ensure!(
            slot_get(&k.memory, mem).is_some_and(|m| m.phys == phys && m.owner.is_none()),
            "the trace ring's memory object changed"
        );
        count(mem);
    }
    ensure!(
        k.trace.tail <= k.trace.head && k.trace.head - k.trace.tail <= abi::trace::CAPACITY as u64,
        "trace ring: tail {} head {}",
        k.trace.tail,
        k.trace.head
    );

    // Reference counts: what each object counts is what names it, and no object lives
    // without a reference.
    let refs = |kind: CapKind, i: usize| held.get(&(kind as u64, i as u16)).copied();
    for (i, s) in k.endpoints.iter().enumerate() {
        if let Some(e) = &s.obj {
            let want = refs(CapKind::Endpoint, i);
            ensure!(
                Some(e.refs) == want,
                "endpoint {i}: refs {} for {want:?}",
                e.refs
            );
        }
    }
    for (i, s) in k.notifications.iter().enumerate() {
        if let Some(n) = &s.obj {
            let want = refs(CapKind::Notification, i);
            ensure!(
                Some(n.refs) == want,
                "notification {i}: refs {} for {want:?}",
                n.refs
            );
        }
    }
    for (i, s) in k.memory.iter().enumerate() {
        if let Some(m) = &s.obj {
            let want = refs(CapKind::Memory, i);
            ensure!(
                Some(m.refs) == want,
                "memory {i}: refs {} for {want:?}",
                m.refs
            );
            frames += m.pages as i64;
        }
    }
    for (i, s) in k.vms.iter().enumerate() {
        if let Some(v) = &s.obj {
            let want = refs(CapKind::Vm, i);
            ensure!(Some(v.refs) == want, "vm {i}: refs {} for {want:?}", v.refs);
        }
    }
    for (i, s) in k.vcpus.iter().enumerate() {
        if let Some(v) = &s.obj {
            let want = refs(CapKind::Vcpu, i);
            ensure!(
                Some(v.refs) == want,
                "vcpu {i}: refs {} for {want:?}",
                v.refs
            );
        }
    }
    // Frames: what memory objects and shadow roots own is all that is allocated.
    ensure!(
        k.machine.frames_in_use() == frames,
        "{} frames in use, objects own {frames}",
        k.machine.frames_in_use()
    );

    // Quotas: a task other than the supervisor holds at most its share.
    for (ti, slot) in k.tasks.iter().enumerate() {
        if slot.obj.is_none() || k.init_task == Some(TaskId::from_index(ti)) {
            continue;
        }
        let owner = (TaskId::from_index(ti), slot.generation);
        let eps = k.endpoints.iter().flat_map(|s| &s.obj);
        let n = eps.filter(|e| e.owner == owner).count();
        ensure!(n <= OBJECT_QUOTA, "task {ti} owns {n} endpoints");
        let ns = k.notifications.iter().flat_map(|s| &s.obj);
        let n = ns.filter(|e| e.owner == owner).count();
        ensure!(n <= OBJECT_QUOTA, "task {ti} owns {n} notifications");
    }

    // Queues: each holds live threads in the matching state, each thread in one queue at most.
    let mut seen: Vec<Option<String>> = vec![None; MAX_THREADS];
    for (i, s) in k.endpoints.iter().enumerate() {
        let Some(e) = &s.obj else { continue };
        let ep = EndpointId::from_index(i);
        walk(
            k,
            e.senders,
            &format!("ep {i} senders"),
            &mut seen,
            |t| matches!(t.state, ThreadState::BlockedSend { ep: x, .. } if x == ep),
        )?;
        walk(
            k,
            e.receivers,
            &format!("ep {i} receivers"),
            &mut seen,
            |t| t.state == ThreadState::BlockedRecv { ep },
        )?;
        ensure!(
            e.senders.is_empty() || e.receivers.is_empty(),
            "endpoint {i} has senders and receivers waiting"
        );
        ensure!(
            e.notices.is_empty() || e.receivers.is_empty(),
            "endpoint {i} has notices and receivers waiting"
        );
        if let Some((ti, generation)) = e.server {
            ensure!(
                e.state == EndpointState::Open,
                "endpoint {i} is {:?} with a server",
                e.state
            );
            let s = &k.tasks[ti.index()];
            ensure!(
                s.obj.is_some() && s.generation == generation,
                "endpoint {i}: server task {ti} is gone"
            );
        }
        if e.state == EndpointState::Closed {
            ensure!(e.senders.is_empty(), "closed endpoint {i} has senders");
        }
    }
    for (i, s) in k.notifications.iter().enumerate() {
        let Some(n) = &s.obj else { continue };
        let ntfn = NotificationId::from_index(i);
        walk(k, n.waiters, &format!("ntfn {i} waiters"), &mut seen, |t| {
            t.state == ThreadState::BlockedWait { ntfn }
        })?;
        ensure!(
            n.bits == 0 || n.waiters.is_empty(),
            "notification {i} has bits and waiters"
        );
    }
    for (p, q, marked) in k.run_queue.levels() {
        ensure!(marked != q.is_empty(), "run queue level {p}: bitmap");
        walk(k, q, &format!("run queue {p}"), &mut seen, |t| {
            t.state == ThreadState::Ready && t.prio == p
        })?;
    }

    // Thread states: what each waits on agrees with the queues and with its partner.
    if let Some(c) = k.current {
        let th = k.threads.0[c.index()].as_ref();
        ensure!(
            th.is_some_and(|t| t.state == ThreadState::Ready),
            "current thread {c}: {:?}",
            th.map(|t| t.state)
        );
        let prio = th.map_or(0, |t| t.prio);
        ensure!(
            k.run_queue.highest().is_none_or(|h| h <= prio),
            "current thread {c} (priority {prio}) runs before a higher one"
        );
    }
    for (t, th) in k.threads.0.iter().enumerate() {
        let Some(th) = th else { continue };
        let queued = seen[t].is_some();
        let links = k.threads.links_of(ThreadId::from_index(t));
        ensure!(links.queued == queued, "thread {t}: queued mark");
        let wants_queue = match th.state {
            ThreadState::Ready => k.current != Some(ThreadId::from_index(t)),
            ThreadState::BlockedSend { .. }
            | ThreadState::BlockedRecv { .. }
            | ThreadState::BlockedWait { .. } => true,
            ThreadState::BlockedReply { server, .. } => {
                let s = k.threads.0[server.index()].as_ref();
                ensure!(
                    s.is_some_and(|s| s.reply_to == Some(ThreadId::from_index(t))),
                    "thread {t} waits for a reply server {server} does not owe"
                );
                false
            }
            ThreadState::BlockedRun { vcpu } => {
                let v = k.vcpus[vcpu.index()].obj.as_ref();
                ensure!(
                    v.is_some_and(|v| v.runner == Some(ThreadId::from_index(t))),
                    "thread {t} waits for vcpu {vcpu}, which it does not run"
                );
                false
            }
            ThreadState::Suspended | ThreadState::Sleeping { .. } => false,
        };
        ensure!(
            queued == wants_queue,
            "thread {t} ({:?}) queued: {queued}",
            th.state
        );
        if let Some(c) = th.reply_to {
            let ct = k.threads.0[c.index()].as_ref();
            ensure!(
                ct.is_some_and(|c| matches!(c.state,
                    ThreadState::BlockedReply { server, .. } if server == ThreadId::from_index(t))),
                "thread {t} owes a reply to {c}, which does not wait for it"
            );
        }
        if let Some(vi) = th.vcpu {
            let v = k.vcpus[vi.index()].obj.as_ref();
            ensure!(
                v.is_some_and(|v| v.thread == ThreadId::from_index(t)),
                "thread {t} runs vcpu {vi}, which is not its"
            );
        }
    }
    Ok(())
}

/// Everything a syscall can change, as text: capability tables, objects, threads, queues,
/// the scheduler, and the machine (by its mutation count). The registers a syscall returns
/// in, and the calling thread's scratch (its outgoing message and receive buffer, which the
/// next send or receive sets afresh), are left out for `caller`.
pub(super) fn digest(k: &Kernel<Model>, caller: Option<ThreadId>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "current {:?} exit {:?} init {:?} machine {} frames {} ticks {}",
        k.current,
        k.exit_code,
        k.init_task,
        k.machine.mutations,
        k.machine.frames_in_use(),
        k.machine.ticks
    );
    for (i, slot) in k.tasks.iter().enumerate() {
        let _ = write!(s, "task {i} gen {}", slot.generation);
        if let Some(t) = &slot.obj {
            let _ = writeln!(
                s,
                ": {} {} prio {} fault {:?} threads {} main {} unmaps {} pages {}",
                t.name,
                t.generation,
                t.prio,
                t.fault_ep,
                t.threads,
                t.main_thread,
                t.unmaps,
                t.space.len()
            );
            let _ = writeln!(s, "  caps {:?}", t.caps);
            let _ = writeln!(s, "  maps {:?}", t.mappings);
        }
        s.push('\n');
    }
    for (i, th) in k.threads.0.iter().enumerate() {
        let Some(th) = th else { continue };
        let mut regs = th.regs;
        let mine = caller == Some(ThreadId::from_index(i));
        if mine {
            regs.set_result(0, [0; 4]);
        }
        let _ = writeln!(
            s,
            "thread {i}: task {} prio {} {:?} {:?} reply_to {:?} vcpu {:?} {regs:?}",
            th.task,
            th.prio,
            th.state,
            k.threads.links_of(ThreadId::from_index(i)),
            th.reply_to,
            th.vcpu
        );
        if !mine {
            let m = &th.msg;
            let _ = writeln!(
                s,
                "  msg {} {} {:?} {} {:?} buf {:#x} {}",
                m.label,
                m.len,
                m.grant,
                m.badge,
                &m.data[..m.len.min(m.data.len())],
                th.buf,
                th.buf_cap
            );
        }
    }
    table(&mut s, "endpoint", &k.endpoints);
    table(&mut s, "notification", &k.notifications);
    table(&mut s, "memory", &k.memory);
    table(&mut s, "vm", &k.vms);
    table(&mut s, "vcpu", &k.vcpus);
    let _ = writeln!(s, "run queue {:?}", k.run_queue);
    s
}

/// An object table, a line per slot that was ever used.
fn table<T: core::fmt::Debug>(s: &mut String, name: &str, slots: &[Slot<T>]) {
    for (i, slot) in slots.iter().enumerate() {
        if slot.generation != 1 || slot.obj.is_some() {
            let _ = writeln!(s, "{name} {i} gen {}: {:?}", slot.generation, slot.obj);
        }
    }
}
