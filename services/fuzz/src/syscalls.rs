//! Syscall fuzzing: the fuzzer draws random syscalls (every number of `abi::Sys` and invalid
//! ones) with random arguments (capability slots, pointers into mapped, read-only, unmapped,
//! kernel and non-canonical memory, lengths, rights, labels) and has the hostile child
//! ([`crate::child`]) issue them. A call that ends the child (`TaskExit`, `Panic`, a thread
//! it started faulting) or blocks it (waiting on its own endpoint) costs only the child: the
//! fuzzer kills a blocked one (its watchdog thread notices no progress) and spawns the next.
//! The kernel must answer every call with a defined result or end the child cleanly.

use core::sync::atomic::Ordering;

use abi::cap::CAP_SLOTS;
use abi::ipc::layout::{USER_END, USER_MIN};
use abi::ipc::{FaultNotice, FAULT_EXIT, FAULT_LABEL, FAULT_PANIC, MAX_PAYLOAD};
use abi::{CapSlot, Error, Rights, Sys, NO_CAP};
use userlib::proto;
use userlib::sys::{self, is_hostile_safe, NEVER_MAPPED};

use crate::child::{
    self, ORDER_LABEL, ORDER_LEN, REFUSED, REPORT_LABEL, REPORT_LEN, SCRATCH_RO, SCRATCH_RW,
    SCRATCH_RW_PAGES,
};
use crate::counts::Counts;
use crate::rng::Rng;
use crate::{spawn, CHILD_ARG, PROGRESS};

/// Badges of the capabilities to the fuzzer's child endpoint.
pub const CHILD_BADGE: u64 = 0xc41d;
pub const FAULT_BADGE: u64 = 0xfa11;
pub const WATCHDOG_BADGE: u64 = 0xd06;
/// Label of the watchdog's message: no progress since the value in the payload.
pub const WATCHDOG_LABEL: u64 = 0xd06_0001;
/// The child's priority (below the services and the fuzzer: it cannot starve them).
const CHILD_PRIORITY: u64 = 9;
const KERNEL_VA: u64 = 0xffff_8000_0000_0000;

/// What the syscall fuzzer knows and counts.
pub struct SyscallFuzz<'a> {
    pub rng: &'a mut Rng,
    /// The fuzzer's own boot module (the child's image).
    pub module: u64,
    /// The endpoint the child reports to (every right).
    pub child_ep: CapSlot,
    /// The canary memory object the child gets a read-only copy of.
    pub canary: CapSlot,
    pub issued: u64,
    /// Results by syscall outcome (`ok`, the `abi::Error` names).
    pub results: Counts,
    /// How children ended (exit, panic, faults by vector, killed while blocked).
    pub ends: Counts,
    pub children: u64,
    /// Undefined results (an unknown error code, a valid number refused as unknown...).
    pub failures: u64,
}

struct Child {
    task: CapSlot,
    generation: u64,
}

/// One drawn syscall.
#[derive(Clone, Copy)]
struct Order {
    nr: u64,
    args: [u64; 6],
}

impl SyscallFuzz<'_> {
    fn slot(&self) -> u64 {
        match self.rng.below(20) {
            0..=16 => self.rng.below(12),
            17 => self.rng.below(CAP_SLOTS as u64 + 8),
            18 => NO_CAP,
            _ => self.rng.next(),
        }
    }

    fn pointer(&self) -> u64 {
        let rw_bytes = SCRATCH_RW_PAGES * 4096;
        match self.rng.below(12) {
            0..=3 => SCRATCH_RW + self.rng.below(rw_bytes),
            4 => SCRATCH_RW + rw_bytes - self.rng.below(64),
            5 => SCRATCH_RO + self.rng.below(4096),
            6 => NEVER_MAPPED.start + self.rng.below(1 << 30),
            7 => self.rng.below(USER_MIN),
            8 => KERNEL_VA + self.rng.below(1 << 40),
            9 => self
                .rng
                .pick(&[USER_END - 8, USER_END, 0x8000_0000_0000_0000 - 16]),
            10 => 0,
            _ => self.rng.next(),
        }
    }

    fn length(&self) -> u64 {
        match self.rng.below(10) {
            0..=4 => self.rng.below(MAX_PAYLOAD as u64 + 1),
            5 => self
                .rng
                .pick(&[0, 1, MAX_PAYLOAD as u64, MAX_PAYLOAD as u64 + 1, 4096, 4097]),
            6 => self.rng.below(16),
            7 => u64::MAX - self.rng.below(16),
            _ => self.rng.next() >> self.rng.below(64),
        }
    }

    fn label(&self) -> u64 {
        match self.rng.below(4) {
            0 => proto::supervisor::LABEL,
            1 => FAULT_LABEL,
            _ => self.rng.next(),
        }
    }

    /// Any value: a slot, a pointer, a length or random bits.
    fn any(&self) -> u64 {
        match self.rng.below(4) {
            0 => self.slot(),
            1 => self.pointer(),
            2 => self.length(),
            _ => self.rng.next(),
        }
    }

    /// A syscall with arguments shaped for it (most of the time) or random ones.
    fn draw(&self) -> Order {
        let nr = if self.rng.chance(9, 10) {
            self.rng.pick(Sys::ALL) as u64
        } else {
            loop {
                let n = self.rng.pick(&[
                    8 + self.rng.below(8),
                    21 + self.rng.below(11),
                    104 + self.rng.below(100),
                    u64::MAX,
                    self.rng.next(),
                ]);
                if Sys::from_u64(n).is_none() {
                    break n;
                }
            }
        };
        let mut a = [0u64; 6];
        for v in a.iter_mut() {
            *v = self.any();
        }
        if self.rng.chance(3, 4) {
            self.shape(nr, &mut a);
        }
        // Arguments the child could not pass safely (they could name its own memory) are
        // drawn again; the kernel never sees them.
        for v in a.iter_mut() {
            while !is_hostile_safe(*v) {
                *v = self.rng.next();
            }
        }
        Order { nr, args: a }
    }

    fn shape(&self, nr: u64, a: &mut [u64; 6]) {
        let Some(sys) = Sys::from_u64(nr) else {
            return;
        };
        let rights = self.rng.below(32);
        match sys {
            Sys::DebugWrite | Sys::Panic => {
                a[0] = self.pointer();
                a[1] = self.rng.pick(&[0, 1, 8, 4096, 4097, self.length()]).min(64);
            }
            Sys::Sleep => a[0] = self.rng.pick(&[0, 1, 2, self.rng.next()]),
            Sys::ThreadCreate => {
                a[0] = self.pointer();
                a[1] = self.pointer() & !15;
                a[3] = self.rng.below(12);
            }
            Sys::Call | Sys::ReplyRecv => {
                *a = [
                    self.slot(),
                    self.pointer(),
                    self.length(),
                    self.length(),
                    self.label(),
                    self.slot(),
                ]
            }
            Sys::Send => {
                *a = [
                    self.slot(),
                    self.pointer(),
                    self.length(),
                    self.label(),
                    self.slot(),
                    0,
                ]
            }
            Sys::Recv => *a = [self.slot(), self.pointer(), self.length(), 0, 0, 0],
            Sys::Reply => {
                *a = [
                    self.pointer(),
                    self.length(),
                    self.label(),
                    self.slot(),
                    0,
                    0,
                ]
            }
            Sys::Signal | Sys::Wait | Sys::Poll | Sys::MemInfo | Sys::CapDelete => {
                a[0] = self.slot();
            }
            Sys::CapInfo | Sys::CapRevoke | Sys::VcpuRun | Sys::TaskKill => a[0] = self.slot(),
            Sys::MemAlloc => {
                a[0] = self
                    .rng
                    .pick(&[0, 1, 2, 16, 1 << 16, (1 << 16) + 1, self.rng.next()])
            }
            Sys::MemMap => {
                a[0] = self.slot();
                a[1] = self.rng.pick(&[
                    NEVER_MAPPED.start + (self.rng.below(1 << 18) << 12),
                    SCRATCH_RW,
                    SCRATCH_RO - 4096,
                    self.pointer(),
                ]);
                a[2] = rights;
            }
            Sys::MemUnmap => a[1] = self.pointer() & !0xfff,
            Sys::CapCopy => *a = [self.slot(), rights, self.rng.next(), 0, 0, 0],
            Sys::TaskSpawn => {
                *a = [
                    self.rng.below(24),
                    self.rng.next(),
                    self.rng.below(16),
                    self.slot(),
                    self.slot(),
                    0,
                ]
            }
            Sys::TaskGrant => *a = [self.slot(), self.slot(), rights, 0, 0, 0],
            Sys::TaskSetPages => {
                a[0] = self.slot();
                a[1] = self
                    .rng
                    .pick(&[0, 1, 64, 1 << 16, u64::MAX, self.rng.next()]);
            }
            Sys::TaskStart | Sys::EndpointBind => {
                a[..2].copy_from_slice(&[self.slot(), self.slot()])
            }
            Sys::EndpointClose | Sys::MachineExit => a[0] = self.slot(),
            Sys::ModuleInfo => {
                *a = [
                    self.rng.below(24),
                    self.pointer(),
                    self.length(),
                    self.slot(),
                    0,
                    0,
                ]
            }
            Sys::KernelCmdline => *a = [self.pointer(), self.length(), self.slot(), 0, 0, 0],
            Sys::ModuleRead => {
                *a = [
                    self.rng.below(24),
                    self.length(),
                    self.pointer(),
                    self.length(),
                    self.slot(),
                    0,
                ]
            }
            Sys::VmCreate => a[0] = self.slot(),
            Sys::VmMapRam | Sys::VmUnmap => {
                a[0] = self.slot();
                a[1] = self.rng.below(1 << 32) & !0xfff;
                a[2] = self.rng.below(1024);
                a[3] = rights;
            }
            Sys::VcpuCreate
            | Sys::VcpuPortal
            | Sys::VcpuState
            | Sys::VmSetShadow
            | Sys::VmTrace
            | Sys::TraceAttach
            | Sys::TraceAck => {
                a[0] = self.slot();
                a[1] = self.any();
                a[2] = self.slot();
            }
            Sys::TaskExit
            | Sys::Yield
            | Sys::Clock
            | Sys::ThreadExit
            | Sys::EndpointCreate
            | Sys::NotificationCreate => {}
        }
    }

    fn spawn(&mut self, report: CapSlot, fault: CapSlot) -> Result<Child, Error> {
        /// The hostile child's page budget.
        const CHILD_PAGES: u64 = 64;
        self.children += 1;
        let generation = self.children;
        let task = sys::task_spawn(spawn(), self.module, generation, CHILD_PRIORITY, fault)?;
        let granted = (|| {
            // The child names them by these slots.
            let slots = (
                sys::task_grant(task, report, Rights::SEND | Rights::GRANT)?,
                sys::task_grant(task, self.canary, Rights::READ)?,
            );
            if slots != (child::REPORT, child::CANARY) {
                return Err(Error::InvalidArgument);
            }
            // Enough for its random MemAllocs to succeed sometimes, and to reach the limit.
            sys::task_set_pages(task, CHILD_PAGES)?;
            sys::task_start(task, CHILD_ARG)
        })();
        if let Err(e) = granted {
            let _ = sys::task_kill(task);
            let _ = sys::cap_delete(task);
            return Err(e);
        }
        Ok(Child { task, generation })
    }

    fn record(&mut self, o: &Order, rax: u64) {
        self.issued += 1;
        if rax == REFUSED {
            self.results.add("refused by the child");
            return;
        }
        if rax == 0 {
            self.results.add("ok");
        } else if let Some(e) = Error::ALL.iter().find(|e| **e as u64 == rax) {
            self.results.add_fmt(format_args!("{e:?}"));
        } else {
            self.fail(o, format_args!("undefined error code {rax}"));
        }
        let valid = Sys::from_u64(o.nr).is_some();
        if !valid && rax != Error::UnknownSyscall as u64 {
            self.fail(o, format_args!("an invalid number returned {rax}"));
        }
        if valid && rax == Error::UnknownSyscall as u64 {
            self.fail(o, format_args!("a valid number returned UnknownSyscall"));
        }
    }

    fn fail(&mut self, o: &Order, what: core::fmt::Arguments<'_>) {
        self.failures += 1;
        if self.failures <= 10 {
            userlib::println!(
                "fuzz: FAIL syscall {} ({:?}) args {:x?}: {what}",
                o.nr,
                Sys::from_u64(o.nr),
                o.args
            );
        }
    }

    /// Issues `count` syscalls through hostile children.
    pub fn run(&mut self, count: u64) -> Result<(), Error> {
        let report = sys::cap_copy(self.child_ep, Rights::SEND | Rights::GRANT, CHILD_BADGE)?;
        let fault = sys::cap_copy(self.child_ep, Rights::SEND, FAULT_BADGE)?;
        let result = self.serve(count, report, fault);
        let _ = sys::cap_delete(report);
        let _ = sys::cap_delete(fault);
        result
    }

    fn serve(&mut self, count: u64, report: CapSlot, fault: CapSlot) -> Result<(), Error> {
        let mut child = self.spawn(report, fault)?;
        let mut pending: Option<Order> = None;
        let mut buf = [0u8; MAX_PAYLOAD];
        let mut seq = 0u64;
        loop {
            let msg = match sys::recv(self.child_ep, &mut buf) {
                Ok(m) => m,
                Err(e) => {
                    self.results
                        .add_fmt(format_args!("fuzzer recv {:?}", e.code()));
                    continue;
                }
            };
            if let Some(cap) = msg.cap {
                // The child granted something with a fuzzed call.
                let _ = sys::cap_delete(cap);
            }
            PROGRESS.fetch_add(1, Ordering::Relaxed);
            let ended = match (msg.badge, msg.label) {
                (CHILD_BADGE, REPORT_LABEL) if msg.len == REPORT_LEN => {
                    let word = |i: usize| {
                        u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]))
                    };
                    if let Some(o) = pending.take() {
                        if word(0) == seq {
                            self.record(&o, word(1));
                        }
                    }
                    if self.issued >= count {
                        let _ = sys::task_kill(child.task);
                        let _ = sys::cap_delete(child.task);
                        return Ok(());
                    }
                    let o = self.draw();
                    seq += 1;
                    let mut order = [0u8; ORDER_LEN];
                    let words = [
                        seq, o.nr, o.args[0], o.args[1], o.args[2], o.args[3], o.args[4], o.args[5],
                    ];
                    for (i, w) in words.iter().enumerate() {
                        order[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
                    }
                    pending = Some(o);
                    let _ = sys::reply(&order, ORDER_LABEL, None);
                    false
                }
                (CHILD_BADGE, _) => {
                    // A fuzzed Call or Send of the child to this endpoint: answered empty.
                    self.results.add("child message to the fuzzer");
                    let _ = sys::reply(&[], 0, None);
                    false
                }
                (FAULT_BADGE, FAULT_LABEL) => match FaultNotice::from_bytes(&buf[..msg.len]) {
                    Some(n) if n.generation == child.generation => {
                        match n.vector {
                            FAULT_EXIT if n.error_code < 16 => {
                                self.ends.add_fmt(format_args!("exit({})", n.error_code))
                            }
                            FAULT_EXIT => self.ends.add("exit(random code)"),
                            FAULT_PANIC => self.ends.add("panic"),
                            v => self.ends.add_fmt(format_args!("fault(vector {v})")),
                        }
                        true
                    }
                    _ => false,
                },
                (WATCHDOG_BADGE, WATCHDOG_LABEL) => {
                    let seen = u64::from_le_bytes(buf[..8].try_into().unwrap_or([0; 8]));
                    // Nothing happened since the watchdog looked: the child is blocked.
                    if seen + 1 == PROGRESS.load(Ordering::Relaxed) {
                        self.ends.add("blocked (killed)");
                        let _ = sys::task_kill(child.task);
                        true
                    } else {
                        false
                    }
                }
                _ => false,
            };
            if ended {
                let _ = sys::cap_delete(child.task);
                if let Some(o) = pending.take() {
                    self.issued += 1;
                    let name = Sys::from_u64(o.nr).map_or("invalid", sys_name);
                    self.results
                        .add_fmt(format_args!("ended the child ({name})"));
                }
                child = self.spawn(report, fault)?;
            }
        }
    }
}

fn sys_name(s: Sys) -> &'static str {
    match s {
        Sys::TaskExit => "TaskExit",
        Sys::Panic => "Panic",
        Sys::ThreadExit => "ThreadExit",
        Sys::ThreadCreate => "ThreadCreate",
        Sys::CapDelete => "CapDelete",
        _ => "other",
    }
}
