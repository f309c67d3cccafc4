//! A property test of the syscall layer: random sequences of every syscall (and unknown
//! numbers) with arguments biased toward the interesting values (capability slots the caller
//! holds, slots out of range, user pointers inside, across and outside its mappings, lengths
//! at the limits, rights subsets), issued from three tasks (the supervisor and two of its
//! children, one pair sharing an endpoint), with guest exits injected whenever a vCPU runs.
//! After every kernel entry the invariants of `tests_invariants.rs` hold, and a syscall that
//! returned an error changed nothing but its own result registers.
//!
//! The regression tests at the end are the minimal sequences it found, one per bug.

use std::string::String;
use std::vec::Vec;

use abi::ipc::layout::STACK_TOP;
use abi::vmx::field;
use abi::vmx::reason;
use abi::{CapKind, Error, Rights, Sys, NO_CAP};
use proptest::prelude::*;

use super::ids::{TaskId, ThreadId};
use super::kernel::{Kernel, Next};
use super::objects::{ThreadState, MAX_MEMORY_PAGES, MAX_THREADS};
use super::tests::{boot, kernel, ok, sys, Model, DATA};
use super::tests_invariants::{check_invariants, digest};
use super::vm::VmExit;
use crate::PAGE_SIZE;

/// Where the setup maps a memory object in the supervisor (two pages, read-write).
const SHARED: u64 = 0x60_0000;

/// A syscall argument, resolved against the state when the call is issued.
#[derive(Clone, Copy, Debug)]
enum Arg {
    /// The n-th full slot of the caller's capability table (modulo their number).
    Held(u8),
    /// The n-th slot holding a capability of this kind (any full slot if none does).
    HeldKind(CapKind, u8),
    /// A user pointer of some kind, with an offset.
    Ptr(PtrKind, u16),
    /// A value as it is: a slot number, length, rights, address...
    Raw(u64),
}

#[derive(Clone, Copy, Debug)]
enum PtrKind {
    /// The start of the data pages (where the setup put `VcpuState` pairs).
    DataStart,
    /// Inside the writable data pages of every image.
    Data,
    /// Across the end of the data pages.
    DataEnd,
    /// In the read-only, executable text page.
    Text,
    /// The top of the main stack.
    Stack,
    /// Inside the n-th mapping of the caller (whatever it maps).
    Mapped,
    /// The start of the n-th mapping of the caller.
    MappingStart,
    /// Unmapped user addresses.
    Unmapped,
    /// The kernel half, and non-canonical addresses.
    Kernel,
}

/// What a syscall argument is meant to be, for [`typed`].
#[derive(Clone, Copy, Debug)]
enum Kind {
    Cap(CapKind),
    AnyCap,
    /// A capability to grant, or mostly `NO_CAP`.
    Grant,
    Ptr,
    Len,
    Pages,
    Rights,
    /// Rights to map or give a guest: mostly the valid combinations.
    MapRights,
    /// Guest-physical addresses: page multiples in and past a small RAM, unaligned ones.
    Gpa,
    /// Page-aligned user addresses to map at (free, taken, unaligned).
    Va,
    /// `0..n`, and sometimes more.
    Small(u64),
    /// An exit reason for `VcpuPortal`: the basic ones, the MMIO pseudo-reason, others.
    Reason,
    Raw,
}

fn any_arg() -> impl Strategy<Value = Arg> {
    prop_oneof![
        3 => any::<u8>().prop_map(Arg::Held),
        2 => prop_oneof![Just(0u64), Just(1), Just(2), 0u64..70, Just(NO_CAP),
            Just(abi::vmx::PORTAL_REFLECT), any::<u64>()].prop_map(Arg::Raw),
        2 => (ptr_kind(), any::<u16>()).prop_map(|(k, o)| Arg::Ptr(k, o)),
        2 => len().prop_map(Arg::Raw),
    ]
}

fn ptr_kind() -> impl Strategy<Value = PtrKind> {
    prop_oneof![
        3 => Just(PtrKind::Data),
        1 => Just(PtrKind::DataStart),
        1 => Just(PtrKind::DataEnd),
        1 => Just(PtrKind::Text),
        1 => Just(PtrKind::Stack),
        2 => Just(PtrKind::Mapped),
        1 => Just(PtrKind::MappingStart),
        1 => Just(PtrKind::Unmapped),
        1 => Just(PtrKind::Kernel),
    ]
}

fn len() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => Just(0u64), 6 => 1u64..64, 2 => Just(512), 1 => Just(513), 1 => Just(4096),
        1 => Just(4097), 1 => Just(u64::MAX), 1 => Just(1 << 40),
    ]
}

/// A value of the kind an argument is meant to be (mostly right, sometimes not quite).
fn typed(kind: Kind) -> BoxedStrategy<Arg> {
    let raw = |s: BoxedStrategy<u64>| s.prop_map(Arg::Raw).boxed();
    match kind {
        Kind::Cap(c) => any::<u8>().prop_map(move |i| Arg::HeldKind(c, i)).boxed(),
        Kind::AnyCap => any::<u8>().prop_map(Arg::Held).boxed(),
        Kind::Grant => {
            prop_oneof![3 => Just(Arg::Raw(NO_CAP)), 1 => any::<u8>().prop_map(Arg::Held)].boxed()
        }
        Kind::Ptr => (ptr_kind(), any::<u16>())
            .prop_map(|(k, o)| Arg::Ptr(k, o))
            .boxed(),
        Kind::Len => raw(len().boxed()),
        Kind::Pages => raw(prop_oneof![6 => 1u64..5, 1 => Just(0u64), 1 => Just(3000),
            1 => Just(MAX_MEMORY_PAGES + 1), 1 => Just(16)]
        .boxed()),
        Kind::Rights => raw((0u64..32).boxed()),
        Kind::MapRights => raw(prop_oneof![
            2 => Just(Rights::READ.bits()), 2 => Just((Rights::READ | Rights::WRITE).bits()),
            1 => Just((Rights::READ | Rights::EXEC).bits()), 1 => Just(0b111u64), 1 => 0u64..32,
        ]
        .boxed()),
        Kind::Gpa => raw(prop_oneof![
            4 => (0u64..8).prop_map(|p| p * PAGE_SIZE), 1 => Just(0x10u64), 1 => any::<u64>(),
        ]
        .boxed()),
        Kind::Va => raw(prop_oneof![
            4 => (0u64..16).prop_map(|i| 0x80_0000 + i * 0x4000),
            1 => Just(SHARED), 1 => Just(DATA), 1 => Just(0x80_0010u64),
            1 => Just(abi::ipc::layout::USER_END - PAGE_SIZE), 1 => Just(0u64),
        ]
        .boxed()),
        Kind::Small(n) => raw(prop_oneof![4 => 0..n, 1 => any::<u64>()].boxed()),
        Kind::Reason => raw(prop_oneof![
            4 => 0u64..70, 1 => Just(u64::from(reason::MMIO)), 1 => any::<u64>(),
        ]
        .boxed()),
        Kind::Raw => raw(prop_oneof![0u64..4, any::<u64>()].boxed()),
    }
}

/// The argument kinds of each syscall (see `abi::Sys`).
fn signature(n: u64) -> Vec<Kind> {
    use Kind::*;
    let Some(sys) = Sys::from_u64(n) else {
        return vec![Raw; 6];
    };
    let ep = Cap(CapKind::Endpoint);
    let boot = Cap(CapKind::Boot);
    match sys {
        Sys::DebugWrite | Sys::Panic => vec![Ptr, Len],
        Sys::TaskExit | Sys::Yield | Sys::Clock | Sys::ThreadExit => vec![Raw],
        Sys::Sleep => vec![Small(3)],
        Sys::ThreadCreate => vec![Ptr, Ptr, Raw, Small(32)],
        Sys::Call | Sys::ReplyRecv => vec![ep, Ptr, Len, Len, Raw, Grant],
        Sys::Send => vec![ep, Ptr, Len, Raw, Grant],
        Sys::Recv => vec![ep, Ptr, Len],
        Sys::Reply => vec![Ptr, Len, Raw, Grant],
        Sys::EndpointCreate | Sys::NotificationCreate => vec![],
        Sys::Signal => vec![Cap(CapKind::Notification), Raw],
        Sys::Wait | Sys::Poll => vec![Cap(CapKind::Notification)],
        Sys::MemAlloc => vec![Pages],
        Sys::MemMap => vec![Cap(CapKind::Memory), Va, MapRights],
        Sys::MemUnmap => vec![Cap(CapKind::Memory), Va],
        Sys::MemInfo => vec![Cap(CapKind::Memory)],
        Sys::CapCopy => vec![AnyCap, Rights, Raw],
        Sys::CapDelete | Sys::CapRevoke | Sys::CapInfo => vec![AnyCap],
        Sys::TaskSpawn => vec![Small(4), Raw, Small(32), Grant, Cap(CapKind::Spawn)],
        Sys::TaskGrant => vec![Cap(CapKind::Task), AnyCap, Rights],
        Sys::TaskStart => vec![Cap(CapKind::Task), Raw],
        Sys::TaskKill => vec![Cap(CapKind::Task)],
        Sys::TaskSetPages => vec![Cap(CapKind::Task), Pages],
        Sys::EndpointBind => vec![ep, Cap(CapKind::Task)],
        Sys::EndpointClose => vec![ep],
        Sys::ModuleInfo => vec![Small(4), Ptr, Len, boot],
        Sys::MachineExit => vec![Cap(CapKind::Machine), Raw],
        Sys::KernelCmdline => vec![Ptr, Len, boot],
        Sys::ModuleRead => vec![Small(4), Len, Ptr, Len, boot],
        Sys::VmCreate => vec![Cap(CapKind::Memory), Small(4), Cap(CapKind::Vmx)],
        Sys::VmMapRam => vec![Cap(CapKind::Vm), Gpa, Pages, MapRights],
        Sys::VmUnmap => vec![Cap(CapKind::Vm), Gpa, Pages],
        Sys::VcpuCreate => vec![Cap(CapKind::Vm), Raw],
        Sys::VcpuPortal => vec![Cap(CapKind::Vcpu), Reason, Grant, Small(64)],
        Sys::VcpuState => vec![Cap(CapKind::Vcpu), Ptr, Small(5), Small(2)],
        Sys::VcpuRun => vec![Cap(CapKind::Vcpu)],
        Sys::VmSetShadow => vec![Cap(CapKind::Vm), Cap(CapKind::Memory), ep],
        Sys::TraceAttach => vec![Cap(CapKind::Trace), Cap(CapKind::Notification)],
        Sys::TraceAck => vec![Cap(CapKind::Trace), Small(4)],
        Sys::VmTrace => vec![Cap(CapKind::Vm), Small(3)],
    }
}

/// The arguments of syscall `n`: each of its kind most of the time, anything sometimes.
fn args_for(n: u64) -> BoxedStrategy<[Arg; 6]> {
    let sig = signature(n);
    let one = |i: usize| -> BoxedStrategy<Arg> {
        match sig.get(i) {
            Some(&k) => prop_oneof![5 => typed(k), 1 => any_arg()].boxed(),
            None => prop_oneof![3 => Just(Arg::Raw(0)), 1 => any_arg()].boxed(),
        }
    };
    [one(0), one(1), one(2), one(3), one(4), one(5)].boxed()
}

/// What the sequence does next.
#[derive(Clone, Debug)]
enum Op {
    /// Syscall `n` from the `who`-th ready thread; `exit` picks the exit reasons injected if
    /// a guest runs.
    Call {
        who: u8,
        n: u64,
        args: [Arg; 6],
        exit: u8,
    },
    /// `CapCopy` until the caller has `left` free slots.
    Fill { who: u8, left: u8 },
    /// A timer tick.
    Tick,
}

/// Longest sequence of operations.
const SEQUENCE: usize = 100;

/// Unknown syscall numbers.
const UNKNOWN: [u64; 5] = [8, 21, 120, 0x1_0000_0000, u64::MAX];

fn op() -> impl Strategy<Value = Op> {
    let n = Sys::ALL.len() + UNKNOWN.len();
    // Calls that end the run or a task are rarer, so that sequences go on.
    let number = (0..n, 0u8..4).prop_map(|(i, coin)| match Sys::ALL.get(i) {
        Some(Sys::MachineExit | Sys::TaskExit | Sys::Panic) if coin > 0 => Sys::Yield as u64,
        Some(s) => *s as u64,
        None => UNKNOWN[i - Sys::ALL.len()],
    });
    // Mostly the thread that runs (so that a task goes on with what it made), sometimes
    // another ready one.
    let who = || prop_oneof![3 => Just(0u8), 1 => any::<u8>()];
    let call = (who(), number, any::<u8>()).prop_flat_map(|(who, n, exit)| {
        args_for(n).prop_map(move |args| Op::Call { who, n, args, exit })
    });
    prop_oneof![
        40 => call,
        1 => (who(), 0u8..2).prop_map(|(who, left)| Op::Fill { who, left }),
        2 => Just(Op::Tick),
    ]
}

/// The world: the supervisor with an endpoint, a notification, a shared memory object and
/// two VMs, and two started children (same priority) holding copies (the first the EPT VM
/// and its vCPU, the second the shadow VM and the EPT VM's RAM); the first child's faults go
/// to the endpoint. VMX is on.
fn world() -> Kernel<Model> {
    let mut k = kernel(&["supervisor", "echo"]);
    k.machine.vmx = true;
    boot(&mut k);
    let ep = ok(&sys(&mut k, Sys::EndpointCreate, [0; 6]).1);
    let ntfn = ok(&sys(&mut k, Sys::NotificationCreate, [0; 6]).1);
    let mem = ok(&sys(&mut k, Sys::MemAlloc, [2, 0, 0, 0, 0, 0]).1);
    let rw = (Rights::READ | Rights::WRITE).bits();
    ok(&sys(&mut k, Sys::MemMap, [mem, SHARED, rw, 0, 0, 0]).1);
    // An EPT VM with its RAM mapped and a vCPU whose HLT exits go to the endpoint, and a
    // shadow-paged VM with a pool.
    let ram = ok(&sys(&mut k, Sys::MemAlloc, [8, 0, 0, 0, 0, 0]).1);
    let vm = ok(&sys(
        &mut k,
        Sys::VmCreate,
        [ram, 0, abi::cap::slot::VMX, 0, 0, 0],
    )
    .1);
    ok(&sys(&mut k, Sys::VmMapRam, [vm, 0, 8, 0b111, 0, 0]).1);
    let vcpu = ok(&sys(&mut k, Sys::VcpuCreate, [vm, 0, 0, 0, 0, 0]).1);
    let mask = u64::from(abi::vmx::group::GPRS | abi::vmx::group::RIP);
    let hlt = u64::from(reason::HLT);
    ok(&sys(&mut k, Sys::VcpuPortal, [vcpu, hlt, ep, mask, 0, 0]).1);
    // EPT violations go to the endpoint too, which may forward them to the MMIO portal.
    let ept = u64::from(reason::EPT_VIOLATION);
    ok(&sys(&mut k, Sys::VcpuPortal, [vcpu, ept, ep, mask, 0, 0]).1);
    let mmio = u64::from(reason::MMIO);
    ok(&sys(&mut k, Sys::VcpuPortal, [vcpu, mmio, ep, mask, 0, 0]).1);
    let shadow_ram = ok(&sys(&mut k, Sys::MemAlloc, [4, 0, 0, 0, 0, 0]).1);
    let pool = ok(&sys(&mut k, Sys::MemAlloc, [4, 0, 0, 0, 0, 0]).1);
    let shadow = abi::vmx::vm_flags::SHADOW;
    let svm = ok(&sys(
        &mut k,
        Sys::VmCreate,
        [shadow_ram, shadow, abi::cap::slot::VMX, 0, 0, 0],
    )
    .1);
    ok(&sys(&mut k, Sys::VmSetShadow, [svm, pool, ep, 0, 0, 0]).1);
    let prio = k.thread(k.current.unwrap()).unwrap().prio as u64;
    for (fault, extra) in [(ep, [vm, vcpu]), (NO_CAP, [svm, ram])] {
        let spawn = abi::cap::slot::SPAWN;
        let task = ok(&sys(&mut k, Sys::TaskSpawn, [1, 1, prio, fault, spawn, 0]).1);
        for slot in [ep, ntfn, mem, extra[0], extra[1]] {
            let all = Rights::all().bits();
            ok(&sys(&mut k, Sys::TaskGrant, [task, slot, all, 0, 0, 0]).1);
        }
        ok(&sys(&mut k, Sys::TaskStart, [task, 0, 0, 0, 0, 0]).1);
    }
    // `VcpuState` pairs at the start of every task's data (the children share the image, so
    // writing the supervisor's is enough until they write their own).
    let pairs = [
        (field::GUEST_RIP, 0x1000),
        (field::GPR_BASE, 7),
        (field::GUEST_CR0, 0x8000_0031),
        (field::GUEST_ACTIVITY_STATE, 3),
    ];
    let bytes: Vec<u8> = pairs
        .iter()
        .flat_map(|&(f, v): &(u64, u64)| f.to_le_bytes().into_iter().chain(v.to_le_bytes()))
        .collect();
    let sup = k.current.unwrap();
    for t in [sup, children(&k)[0], children(&k)[1]] {
        super::tests::write_user(&mut k, t, DATA, &bytes);
    }
    check_invariants(&k).expect("the world is consistent");
    k
}

/// The main threads of the two children of [`world`].
fn children(k: &Kernel<Model>) -> [ThreadId; 2] {
    let init = k.init_task;
    let mut t = (0..MAX_THREADS).map(ThreadId::from_index).filter(|&t| {
        k.threads
            .get(t)
            .is_some_and(|th| th.vcpu.is_none() && Some(th.task) != init)
    });
    [t.next().unwrap(), t.next().unwrap()]
}

/// The ready user threads (not vCPUs) the scheduler could run now, at the current thread's
/// priority: the current one first.
fn ready_threads(k: &Kernel<Model>) -> Vec<ThreadId> {
    let mut v: Vec<ThreadId> = k.current.into_iter().collect();
    let Some(prio) = k.current.map(|c| k.thread(c).unwrap().prio) else {
        return v;
    };
    for (t, th) in k.threads.0.iter().enumerate() {
        let t = ThreadId::from_index(t);
        if let Some(th) = th {
            let peer = th.state == ThreadState::Ready && th.prio == prio;
            if peer && th.vcpu.is_none() && Some(t) != k.current {
                v.push(t);
            }
        }
    }
    v
}

/// Makes ready thread `t` the current one, as the scheduler would among equals.
fn switch_to(k: &mut Kernel<Model>, t: ThreadId) {
    if k.current == Some(t) {
        return;
    }
    let prio = k.thread(t).unwrap().prio;
    k.run_queue.remove(&mut k.threads, t, prio);
    if let Some(c) = k.current {
        if k.thread(c).unwrap().state == ThreadState::Ready {
            let p = k.thread(c).unwrap().prio;
            k.run_queue.push(&mut k.threads, c, p);
        }
    }
    k.current = Some(t);
}

fn resolve(k: &Kernel<Model>, t: ThreadId, a: Arg) -> u64 {
    let task = k.task(k.thread(t).unwrap().task);
    let full = |kind: Option<CapKind>| -> Vec<u64> {
        (0..abi::cap::CAP_SLOTS as u64)
            .filter(|&s| {
                task.unwrap()
                    .caps
                    .get(s)
                    .is_ok_and(|c| kind.is_none_or(|k| c.obj.kind == k))
            })
            .collect()
    };
    let pick = |v: Vec<u64>, i: u8| v.get(i as usize % v.len().max(1)).copied();
    let maps: Vec<_> = task.unwrap().mappings.iter().flatten().collect();
    match a {
        Arg::Held(i) => pick(full(None), i).unwrap_or(0),
        Arg::HeldKind(kind, i) => pick(full(Some(kind)), i)
            .or(pick(full(None), i))
            .unwrap_or(0),
        Arg::Raw(v) => v,
        Arg::Ptr(kind, off) => {
            let off = off as u64;
            match kind {
                PtrKind::DataStart => DATA,
                PtrKind::Data => DATA + off % 8192,
                PtrKind::DataEnd => DATA + 8192 - off % 64,
                PtrKind::Text => 0x40_0000 + off % 4096,
                PtrKind::Stack => STACK_TOP - 4096 + off % 4096,
                PtrKind::Mapped => maps
                    .get(off as usize % maps.len().max(1))
                    .map_or(SHARED, |m| m.va + (off * 8) % (m.pages * PAGE_SIZE)),
                PtrKind::MappingStart => maps
                    .get(off as usize % maps.len().max(1))
                    .map_or(SHARED, |m| m.va),
                PtrKind::Unmapped => [0u64, 0x1000, 0x3f_f000, 0x70_0000, 0x7fff_ffff_f000]
                    [off as usize % 5]
                    .wrapping_add(off >> 3),
                PtrKind::Kernel => [0xffff_8000_0000_0000u64, 0x8000_0000_0000, u64::MAX - 7]
                    [off as usize % 3]
                    .wrapping_add(off >> 2),
            }
        }
    }
}

/// Runs guests until a user thread or nothing is to run: each entry exits with a reason
/// from `exit` (the third one fails the entry, so a guest cannot run forever); idle time
/// passes until sleepers wake. Checks the invariants after every entry. `None` when the run
/// is over (everything blocked, or the machine exited).
fn settle(k: &mut Kernel<Model>, mut next: Next, exit: u8) -> Result<Option<ThreadId>, String> {
    let reasons = [
        reason::CPUID,
        reason::HLT,
        reason::VMCALL,
        reason::IO,
        reason::EPT_VIOLATION,
        u32::from(exit) % 70,
    ];
    for round in 0..8 {
        check_invariants(k)?;
        next = match next {
            Next::User(t) => return Ok(Some(t)),
            Next::MachineExit(_) => return Ok(None),
            Next::Guest(_) if round >= 2 => k.on_vm_exit(VmExit {
                reason: 1 << 31 | reason::INVALID_GUEST_STATE,
                qualification: 0,
                instruction_len: 0,
                tsc: 0,
            }),
            Next::Guest(_) => k.on_vm_exit(VmExit {
                reason: reasons[(exit as usize + round) % reasons.len()],
                qualification: u64::from(exit),
                instruction_len: 2,
                tsc: 0,
            }),
            Next::Idle => {
                let sleeping = k
                    .threads
                    .0
                    .iter()
                    .flatten()
                    .any(|t| matches!(t.state, ThreadState::Sleeping { .. }));
                if !sleeping {
                    return Ok(None);
                }
                k.machine.ticks += 1 << 20;
                k.on_tick(None)
            }
        };
    }
    check_invariants(k)?;
    Ok(match next {
        Next::User(t) => Some(t),
        _ => None,
    })
}

/// Issues syscall `n` with `args` from thread `t` (made current); checks that an error left
/// everything as it was. Returns what runs next.
fn issue(k: &mut Kernel<Model>, t: ThreadId, n: u64, args: [u64; 6]) -> Result<Next, String> {
    switch_to(k, t);
    let mut regs = k.thread(t).unwrap().regs;
    regs.rax = n;
    [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9] = args;
    k.thread_mut(t).unwrap().regs = regs;
    let before = digest(k, Some(t));
    let next = k.on_syscall(&regs);
    let Some(th) = k.threads.0[t.index()].as_ref() else {
        return Ok(next);
    };
    // Returned at once (not blocked, not ended) with an error: nothing else may have
    // changed. `Truncated` is a delivery that happened (the message was cut).
    // (A call that blocks or ends its thread returns later or never: `Ready` is a return.)
    let returned = th.state == ThreadState::Ready;
    let failed = Error::check(th.regs.rax).err();
    STATS.with(|s| {
        let mut s = s.borrow_mut();
        let e = s.entry(n).or_default();
        match (returned, failed) {
            (false, _) => e.0[2] += 1,
            (true, None) => e.0[0] += 1,
            (true, Some(f)) => {
                e.0[1] += 1;
                *e.1.entry(format!("{f:?}")).or_default() += 1;
            }
        }
    });
    if returned && failed.is_some_and(|e| e != Error::Truncated) {
        let after = digest(k, Some(t));
        if before != after {
            let (b, a): (Vec<&str>, Vec<&str>) =
                (before.lines().collect(), after.lines().collect());
            let mut diff: Vec<String> = b
                .iter()
                .filter(|l| !a.contains(l))
                .map(|l| format!("- {l}"))
                .collect();
            diff.extend(
                a.iter()
                    .filter(|l| !b.contains(l))
                    .map(|l| format!("+ {l}")),
            );
            return Err(format!(
                "{n} {args:x?} failed with {failed:?} but changed:\n{}",
                diff.join("\n")
            ));
        }
    }
    Ok(next)
}

/// Calls that succeeded, failed, blocked or ended the thread; failures by error.
type Stat = ([u64; 3], std::collections::BTreeMap<String, u64>);

std::thread_local! {
    /// Per syscall number: calls that succeeded, failed, blocked or ended the thread.
    static STATS: core::cell::RefCell<std::collections::BTreeMap<u64, Stat>> =
        Default::default();
}

/// Runs a sequence on a fresh world; an `Err` names the broken invariant or the change.
fn run(ops: &[Op]) -> Result<(), String> {
    let mut k = world();
    let mut cur = k.current;
    for (i, op) in ops.iter().enumerate() {
        let Some(_) = cur else { break };
        let step = |e: String| format!("step {i} ({op:?}): {e}");
        match *op {
            Op::Tick => {
                let next = k.on_tick(None);
                cur = settle(&mut k, next, 0).map_err(step)?;
            }
            Op::Call { who, n, args, exit } => {
                let ready = ready_threads(&k);
                let t = ready[who as usize % ready.len()];
                let args = args.map(|a| resolve(&k, t, a));
                let next = issue(&mut k, t, n, args).map_err(step)?;
                cur = settle(&mut k, next, exit).map_err(step)?;
            }
            Op::Fill { who, left } => {
                let ready = ready_threads(&k);
                let t = ready[who as usize % ready.len()];
                let ti = k.thread(t).unwrap().task;
                let Some(src) = (2..abi::cap::CAP_SLOTS as u64).find(|&s| {
                    k.task(ti).unwrap().caps.get(s).is_ok_and(|c| {
                        !matches!(c.obj.kind, abi::CapKind::Spawn | abi::CapKind::Machine)
                    })
                }) else {
                    continue;
                };
                let free = |k: &Kernel<Model>| {
                    (2..abi::cap::CAP_SLOTS as u64)
                        .filter(|&s| k.task(ti).unwrap().caps.get(s).is_err())
                        .count()
                };
                while free(&k) > left as usize {
                    let args = [src, Rights::all().bits(), 0, 0, 0, 0];
                    let next = issue(&mut k, t, Sys::CapCopy as u64, args).map_err(step)?;
                    let failed = k.threads.0[t.index()]
                        .as_ref()
                        .is_none_or(|th| th.regs.rax != 0);
                    cur = settle(&mut k, next, 0).map_err(step)?;
                    if failed || cur != Some(t) {
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Cases to run: `PROPTEST_CASES` if set, else 256.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]
    /// Random syscall sequences keep the invariants, and failed syscalls change nothing.
    #[test]
    fn syscalls_keep_the_invariants_and_failures_change_nothing(
        ops in proptest::collection::vec(op(), 1..SEQUENCE)
    ) {
        if let Err(e) = run(&ops) {
            return Err(TestCaseError::fail(e));
        }
    }
}

/// Prints how often each syscall succeeded, failed (by error) and blocked over a run of the
/// property test; it also fails where the property test would. A diagnostic of the
/// generator, not run by default:
/// `cargo test -p microkernel --release syscall_stats -- --ignored --nocapture`.
#[test]
#[ignore]
fn syscall_stats() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(cases()));
    let strategy = proptest::collection::vec(op(), 1..SEQUENCE);
    runner
        .run(&strategy, |ops| run(&ops).map_err(TestCaseError::fail))
        .unwrap();
    STATS.with(|s| {
        for (n, ([okay, failed, blocked], errors)) in s.borrow().iter() {
            let name = Sys::from_u64(*n).map_or("unknown".into(), |s| format!("{s:?}"));
            std::println!(
                "{name:>18} ok {okay:6} failed {failed:6} blocked/ended {blocked:6} {errors:?}"
            );
        }
    });
}

// ----- regressions: the minimal sequences the property test found -----

/// Issues a syscall from thread `t` that must fail with `want` and change nothing else.
fn refused(k: &mut Kernel<Model>, t: ThreadId, n: Sys, args: [u64; 6], want: Error) {
    if let Err(e) = issue(k, t, n as u64, args) {
        panic!("{e}");
    }
    let th = k.thread(t);
    assert_eq!(
        Error::check(th.unwrap().regs.rax),
        Err(want),
        "{n:?} {args:x?}"
    );
    check_invariants(k).unwrap();
}

/// Issues a syscall from thread `t` that must succeed; returns its first result.
fn done(k: &mut Kernel<Model>, t: ThreadId, n: Sys, args: [u64; 6]) -> u64 {
    issue(k, t, n as u64, args).unwrap();
    check_invariants(k).unwrap();
    ok(&k.thread(t).unwrap().regs)
}

/// Creating an object (endpoint, notification, memory, VM, vCPU, task) with a full capability
/// table made the object and destroyed it again: its slot's generation moved, frames and a
/// thread were taken and given back. The slot is now checked first.
#[test]
fn creating_an_object_with_a_full_capability_table_changes_nothing() {
    let mut k = world();
    let sup = k.current.unwrap();
    let mem = done(&mut k, sup, Sys::MemAlloc, [4, 0, 0, 0, 0, 0]);
    let vm = done(
        &mut k,
        sup,
        Sys::VmCreate,
        [mem, 0, abi::cap::slot::VMX, 0, 0, 0],
    );
    while k.task(k.cur_task().unwrap()).unwrap().caps.has_free_slot() {
        done(
            &mut k,
            sup,
            Sys::CapCopy,
            [mem, Rights::all().bits(), 0, 0, 0, 0],
        );
    }
    let spawn = abi::cap::slot::SPAWN;
    for (n, args) in [
        (Sys::EndpointCreate, [0; 6]),
        (Sys::NotificationCreate, [0; 6]),
        (Sys::MemAlloc, [1, 0, 0, 0, 0, 0]),
        (Sys::VmCreate, [mem, 0, abi::cap::slot::VMX, 0, 0, 0]),
        (
            Sys::VmCreate,
            [
                mem,
                abi::vmx::vm_flags::SHADOW,
                abi::cap::slot::VMX,
                0,
                0,
                0,
            ],
        ),
        (Sys::VcpuCreate, [vm, 1, 0, 0, 0, 0]),
        (Sys::TaskSpawn, [1, 1, 1, NO_CAP, spawn, 0]),
    ] {
        refused(&mut k, sup, n, args, Error::NoMemory);
    }
}

/// `ReplyRecv` with a receive buffer it may not write answered the caller first and then
/// failed: the call was refused, yet the reply was gone. The buffer is now checked first.
#[test]
fn a_reply_recv_refused_for_its_receive_buffer_does_not_reply() {
    let mut k = world();
    // The second child receives on the shared endpoint (its slot 2); the first calls it.
    let [client, server] = children(&k);
    issue(&mut k, server, Sys::Recv as u64, [2, DATA, 512, 0, 0, 0]).unwrap();
    issue(
        &mut k,
        client,
        Sys::Call as u64,
        [2, DATA, 4, 512, 0, NO_CAP],
    )
    .unwrap();
    assert_eq!(k.current, Some(server));
    // Its reply is readable (text), but the same buffer cannot take the next message.
    let text = 0x40_0000;
    refused(
        &mut k,
        server,
        Sys::ReplyRecv,
        [2, text, 4, 16, 0, NO_CAP],
        Error::BadPointer,
    );
    assert!(matches!(
        k.thread(client).unwrap().state,
        ThreadState::BlockedReply { server: s, .. } if s == server
    ));
}

/// A vCPU run by a thread of another task kept running when that thread ended: nobody could
/// hear why it stopped, and every other holder got `Busy` from `VcpuRun` meanwhile. It now
/// stops with its runner.
#[test]
fn a_vcpu_stops_when_the_thread_running_it_ends() {
    let mut k = world();
    let sup = k.current.unwrap();
    // The first child holds the supervisor's vCPU in its sixth slot: it runs it,
    // and the guest's HLT exit goes to the endpoint, where nobody receives yet.
    let (runner, vcpu) = (children(&k)[0], 6);
    let mut next = issue(&mut k, runner, Sys::VcpuRun as u64, [vcpu, 0, 0, 0, 0, 0]).unwrap();
    for _ in 0..4 {
        if let Next::User(t) = next {
            next = issue(&mut k, t, Sys::Yield as u64, [0; 6]).unwrap();
        }
    }
    assert!(matches!(next, Next::Guest(_)), "{next:?}");
    let hlt = VmExit {
        reason: reason::HLT,
        qualification: 0,
        instruction_len: 1,
        tsc: 0,
    };
    let next = k.on_vm_exit(hlt);
    settle(&mut k, next, 0).unwrap();
    // The supervisor kills the runner's task.
    let sup_task = k.thread(sup).unwrap().task;
    let child = k.thread(runner).unwrap().task;
    let task_cap = (0..abi::cap::CAP_SLOTS as u64)
        .find(|&s| {
            k.task(sup_task)
                .unwrap()
                .caps
                .get(s)
                .is_ok_and(|c| c.obj.kind == CapKind::Task && c.obj.id::<TaskId>() == child)
        })
        .unwrap();
    done(&mut k, sup, Sys::TaskKill, [task_cap, 0, 0, 0, 0, 0]);
    // The supervisor can run its vCPU again.
    let own_vcpu = (0..abi::cap::CAP_SLOTS as u64)
        .find(|&s| {
            k.task(sup_task)
                .unwrap()
                .caps
                .get(s)
                .is_ok_and(|c| c.obj.kind == CapKind::Vcpu)
        })
        .unwrap();
    issue(&mut k, sup, Sys::VcpuRun as u64, [own_vcpu, 0, 0, 0, 0, 0]).unwrap();
    assert!(matches!(
        k.thread(sup).unwrap().state,
        ThreadState::BlockedRun { .. }
    ));
}
