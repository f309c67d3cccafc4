//! Host tests of the object model over a model machine: page maps in a `BTreeMap`, physical
//! memory in a `HashMap`, and syscalls issued as register files.

use std::collections::{BTreeMap, HashMap};
use std::string::String;
use std::vec::Vec;

use abi::ipc::{FaultNotice, FAULT_LABEL};
use abi::{CapKind, Error, Rights, Sys, NO_CAP};
use elf::abi::{PF_R, PF_W, PF_X};
use proptest::prelude::*;

use super::image::build_test_elf;
use super::kernel::{Kernel, Next};
use super::machine::{BadUserAddress, Machine, MapError, PageAccess};
use super::queue::ThreadId;
use super::regs::UserRegs;
use crate::PAGE_SIZE;

#[derive(Default)]
pub(super) struct Model {
    phys: HashMap<u64, Vec<u8>>,
    next_frame: u64,
    modules: Vec<(String, Vec<u8>)>,
    console: String,
    pub(super) ticks: u64,
    pub(super) spaces_live: i64,
    frames_live: i64,
    pub(super) vmx: bool,
    /// The model's time-stamp counter: every read moves it on by 10.
    pub(super) tsc: std::cell::Cell<u64>,
    /// Calls that changed the machine (memory, mappings, frames, console, EPT, VMCS): what
    /// the property test compares around a failed syscall.
    pub(super) mutations: u64,
    /// The model's extended-state registers (one word stands for them), the per-thread
    /// areas, and every `xstate_switch` call (tests_xstate).
    pub(super) xstate_live: u64,
    pub(super) xstate_areas: HashMap<ThreadId, u64>,
    pub(super) xstate_switches: Vec<(Option<ThreadId>, ThreadId)>,
    /// CR0.TS: the running user thread's first x87/SSE/AVX instruction would raise #NM.
    pub(super) xstate_trapped: bool,
}

type Space = BTreeMap<u64, (u64, PageAccess)>;

/// Frames of the model machine.
const MODEL_FRAMES: i64 = 4096;

impl Model {
    /// Frames allocated and not freed.
    pub(super) fn frames_in_use(&self) -> i64 {
        self.frames_live
    }

    fn byte(&mut self, pa: u64) -> &mut u8 {
        let frame = self
            .phys
            .entry(pa & !(PAGE_SIZE - 1))
            .or_insert_with(|| vec![0; PAGE_SIZE as usize]);
        &mut frame[(pa % PAGE_SIZE) as usize]
    }
}

impl Machine for Model {
    type Space = Space;
    fn space_new(&mut self) -> Option<Space> {
        self.mutations += 1;
        self.spaces_live += 1;
        Some(BTreeMap::new())
    }
    fn space_destroy(&mut self, _space: Space) {
        self.mutations += 1;
        self.spaces_live -= 1;
    }
    fn map(
        &mut self,
        s: &mut Space,
        va: u64,
        phys: u64,
        access: PageAccess,
    ) -> Result<(), MapError> {
        if !va.is_multiple_of(PAGE_SIZE) || va >= abi::ipc::layout::USER_END {
            return Err(MapError::BadAddress);
        }
        if s.contains_key(&va) {
            return Err(MapError::AlreadyMapped);
        }
        s.insert(va, (phys, access));
        self.mutations += 1;
        Ok(())
    }
    fn unmap(&mut self, s: &mut Space, va: u64) -> Option<u64> {
        let p = s.remove(&va).map(|(p, _)| p);
        self.mutations += u64::from(p.is_some());
        p
    }
    fn copy_from_user(&self, s: &Space, va: u64, out: &mut [u8]) -> Result<(), BadUserAddress> {
        for (i, b) in out.iter_mut().enumerate() {
            let a = va.checked_add(i as u64).ok_or(BadUserAddress)?;
            let (p, _) = s.get(&(a & !(PAGE_SIZE - 1))).ok_or(BadUserAddress)?;
            let pa = p + a % PAGE_SIZE;
            *b = self
                .phys
                .get(&(pa & !(PAGE_SIZE - 1)))
                .map_or(0, |f| f[(pa % PAGE_SIZE) as usize]);
        }
        Ok(())
    }
    fn copy_to_user(&mut self, s: &Space, va: u64, data: &[u8]) -> Result<(), BadUserAddress> {
        if !self.user_range_ok(s, va, data.len() as u64, true) {
            return Err(BadUserAddress);
        }
        self.mutations += 1;
        for (i, b) in data.iter().enumerate() {
            let a = va + i as u64;
            let (p, _) = s[&(a & !(PAGE_SIZE - 1))];
            *self.byte(p + a % PAGE_SIZE) = *b;
        }
        Ok(())
    }
    fn user_frame(&self, s: &Space, va: u64, write: bool) -> Option<u64> {
        match s.get(&(va & !(PAGE_SIZE - 1))) {
            Some((p, acc)) if acc.write || !write => Some(p + va % PAGE_SIZE),
            _ => None,
        }
    }
    fn user_range_ok(&self, s: &Space, va: u64, len: u64, write: bool) -> bool {
        let Some(end) = va.checked_add(len) else {
            return false;
        };
        let mut page = va & !(PAGE_SIZE - 1);
        while page < end {
            match s.get(&page) {
                Some((_, acc)) if acc.write || !write => {}
                _ => return false,
            }
            page += PAGE_SIZE;
        }
        true
    }
    fn frames_alloc(&mut self, pages: u64) -> Option<u64> {
        if self.frames_live + pages as i64 > MODEL_FRAMES {
            return None;
        }
        let base = 0x1000_0000 + self.next_frame;
        self.next_frame += pages * PAGE_SIZE;
        self.frames_live += pages as i64;
        self.mutations += 1;
        Some(base)
    }
    fn frames_free(&mut self, _phys: u64, pages: u64) {
        self.frames_live -= pages as i64;
        self.mutations += 1;
    }
    fn frames_available(&self) -> u64 {
        (MODEL_FRAMES - self.frames_live) as u64
    }
    fn write_phys(&mut self, phys: u64, data: &[u8]) {
        self.mutations += 1;
        for (i, b) in data.iter().enumerate() {
            *self.byte(phys + i as u64) = *b;
        }
    }
    fn module(&self, index: usize) -> Option<(&str, &[u8])> {
        self.modules
            .get(index)
            .map(|(n, b)| (n.as_str(), b.as_slice()))
    }
    fn module_count(&self) -> usize {
        self.modules.len()
    }
    fn cmdline(&self) -> &str {
        "scenario=ipc"
    }
    fn console_write(&mut self, task: &str, bytes: &[u8]) {
        self.mutations += 1;
        self.console
            .push_str(&format!("[{task}] {}", String::from_utf8_lossy(bytes)));
    }
    fn clock(&self) -> (u64, u64) {
        (self.ticks, 100)
    }
    fn tsc_hz(&self) -> u64 {
        1_000_000_000
    }
    fn write_owned_words(&mut self, phys: u64, words: &[u64]) {
        assert_eq!(phys % 8, 0, "aligned");
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.write_phys(phys, &bytes);
    }
    fn tsc(&self) -> u64 {
        self.tsc.set(self.tsc.get() + 10);
        self.tsc.get()
    }
    fn read_phys(&self, phys: u64, out: &mut [u8]) {
        for (i, b) in out.iter_mut().enumerate() {
            let pa = phys + i as u64;
            *b = self
                .phys
                .get(&(pa & !(PAGE_SIZE - 1)))
                .map_or(0, |f| f[(pa % PAGE_SIZE) as usize]);
        }
    }

    type Ept = BTreeMap<u64, (u64, u64)>;
    type Vmcs = BTreeMap<u64, u64>;
    fn vmx_available(&self) -> bool {
        self.vmx
    }
    fn ept_new(&mut self) -> Option<Self::Ept> {
        self.mutations += 1;
        Some(BTreeMap::new())
    }
    fn ept_destroy(&mut self, _ept: Self::Ept) {
        self.mutations += 1;
    }
    fn ept_map(
        &mut self,
        ept: &mut Self::Ept,
        gpa: u64,
        hpa: u64,
        rights: u64,
    ) -> Result<(), MapError> {
        ept.insert(gpa, (hpa, rights));
        self.mutations += 1;
        Ok(())
    }
    fn ept_unmap(&mut self, ept: &mut Self::Ept, gpa: u64) {
        self.mutations += u64::from(ept.remove(&gpa).is_some());
    }
    fn vmcs_new(&mut self, _ept: &Self::Ept, _vpid: u16, _shadow: bool) -> Option<Self::Vmcs> {
        self.mutations += 1;
        Some(BTreeMap::new())
    }
    fn vmcs_real_mode_ept(&mut self, vmcs: &mut Self::Vmcs, ept: Option<&Self::Ept>) {
        use abi::vmx::proc_based2::REAL_MODE;
        let proc2 = vmcs
            .get(&abi::vmx::field::PROC_BASED_CONTROLS2)
            .copied()
            .unwrap_or(0)
            & !REAL_MODE;
        let on = if ept.is_some() { REAL_MODE } else { 0 };
        self.vmcs_write(vmcs, abi::vmx::field::PROC_BASED_CONTROLS2, proc2 | on);
    }
    fn vmcs_destroy(&mut self, _vmcs: Self::Vmcs) {
        self.mutations += 1;
    }
    fn vmcs_read(&mut self, vmcs: &mut Self::Vmcs, field: u64) -> u64 {
        vmcs.get(&field).copied().unwrap_or(0)
    }
    fn vmcs_write(&mut self, vmcs: &mut Self::Vmcs, field: u64, value: u64) {
        if vmcs.insert(field, value) != Some(value) {
            self.mutations += 1;
        }
    }
    fn host_cpuid(&self, leaf: u32, _subleaf: u32) -> [u32; 4] {
        [leaf, 1, 2, 3]
    }
    fn xstate_trap(&mut self, on: bool) {
        self.xstate_trapped = on;
    }
    fn xstate_switch(&mut self, from: Option<ThreadId>, to: ThreadId) {
        // The real machine clears CR0.TS before it saves and loads.
        self.xstate_trapped = false;
        if let Some(f) = from {
            self.xstate_areas.insert(f, self.xstate_live);
        }
        self.xstate_live = *self.xstate_areas.get(&to).expect("reset before first run");
        self.xstate_switches.push((from, to));
    }
    fn xstate_reset(&mut self, t: ThreadId) {
        self.xstate_areas.insert(t, 0);
    }
    fn xcr0_supported(&self) -> u64 {
        abi::cpu::xcr0::X87 | abi::cpu::xcr0::SSE | abi::cpu::xcr0::AVX
    }
}

/// Data page every test image has (writable), where tests put buffers.
pub(super) const DATA: u64 = 0x50_0000;

fn image() -> Vec<u8> {
    build_test_elf(
        0x40_0000,
        &[
            (0x40_0000, PF_R | PF_X, &[0x90; 16]),
            (DATA, PF_R | PF_W, &[0; 8192]),
        ],
    )
}

pub(super) fn kernel(modules: &[&str]) -> Kernel<Model> {
    let mut m = Model::default();
    for name in modules {
        m.modules.push((name.to_string(), image()));
    }
    m.modules.push(("broken".into(), b"not an elf".to_vec()));
    Kernel::new(m)
}

/// Issues a syscall from the current thread; returns the kernel's choice and the caller's
/// registers afterwards (meaningful when it did not block).
pub(super) fn sys(k: &mut Kernel<Model>, n: Sys, args: [u64; 6]) -> (Next, UserRegs) {
    let t = k.current.expect("a current thread");
    let mut regs = k.thread(t).unwrap().regs;
    regs.rax = n as u64;
    [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9] = args;
    let next = k.on_syscall(&regs);
    let after = k.threads.0[t.index()].as_ref().map_or(regs, |th| th.regs);
    (next, after)
}

pub(super) fn ok(r: &UserRegs) -> u64 {
    assert_eq!(Error::check(r.rax), Ok(()), "syscall failed: {r:?}");
    r.rdi
}

pub(super) fn status(r: &UserRegs) -> Result<(), Error> {
    Error::check(r.rax)
}

pub(super) fn write_user(k: &mut Kernel<Model>, t: ThreadId, va: u64, data: &[u8]) {
    let ti = k.thread(t).unwrap().task;
    let space = k.task(ti).unwrap().space.clone();
    k.machine.copy_to_user(&space, va, data).unwrap();
}

pub(super) fn read_user(k: &Kernel<Model>, t: ThreadId, va: u64, len: usize) -> Vec<u8> {
    let ti = k.thread(t).unwrap().task;
    let mut out = vec![0; len];
    k.machine
        .copy_from_user(&k.task(ti).unwrap().space, va, &mut out)
        .unwrap();
    out
}

/// Boots: init (supervisor) from module 0 runs; returns its thread.
pub(super) fn boot(k: &mut Kernel<Model>) -> ThreadId {
    k.start_init(0, 0).unwrap();
    match k.schedule() {
        Next::User(t) => t,
        other => panic!("{other:?}"),
    }
}

/// Init spawns module `m` with an endpoint cap granted; returns (task cap slot in init).
fn spawn_with(k: &mut Kernel<Model>, m: u64, grant: &[(u64, Rights)], fault_ep: u64) -> u64 {
    let (_, r) = sys(
        k,
        Sys::TaskSpawn,
        [m, 1, 5, fault_ep, abi::cap::slot::SPAWN, 0],
    );
    let task = ok(&r);
    for (slot, rights) in grant {
        let (_, r) = sys(k, Sys::TaskGrant, [task, *slot, rights.bits(), 0, 0, 0]);
        ok(&r);
    }
    task
}

#[test]
fn init_writes_to_the_console_and_bad_pointers_fail() {
    let mut k = kernel(&["supervisor"]);
    let t = boot(&mut k);
    write_user(&mut k, t, DATA, b"hello\n");
    let (_, r) = sys(&mut k, Sys::DebugWrite, [DATA, 6, 0, 0, 0, 0]);
    assert_eq!(ok(&r), 6);
    assert_eq!(k.machine.console, "[supervisor] hello\n");
    for bad in [0, 0x1000, 0xffff_8000_0000_0000, u64::MAX - 2, DATA + 8190] {
        let (_, r) = sys(&mut k, Sys::DebugWrite, [bad, 6, 0, 0, 0, 0]);
        assert_eq!(status(&r), Err(Error::BadPointer), "{bad:#x}");
    }
    let (_, r) = sys(&mut k, Sys::DebugWrite, [DATA, 1 << 20, 0, 0, 0, 0]);
    assert_eq!(status(&r), Err(Error::BadLength));
    let (_, r) = sys(&mut k, Sys::DebugWrite, [DATA, 0, 0, 0, 0, 0]);
    assert_eq!(ok(&r), 0);
    let (_, r) = sys(&mut k, Sys::DebugWrite, [0, 0, 0, 0, 0, 0]);
    assert_eq!(ok(&r), 0, "an empty write needs no buffer");
    let mut regs = k.thread(t).unwrap().regs;
    regs.rax = 9999;
    k.on_syscall(&regs);
    assert_eq!(
        status(&k.thread(t).unwrap().regs),
        Err(Error::UnknownSyscall)
    );
}

#[test]
fn call_and_reply_between_tasks_with_a_badge_and_a_granted_cap() {
    let mut k = kernel(&["supervisor", "echo"]);
    let sup = boot(&mut k);
    let (_, r) = sys(&mut k, Sys::EndpointCreate, [0; 6]);
    let ep = ok(&r);
    let (_, r) = sys(
        &mut k,
        Sys::CapCopy,
        [ep, (Rights::SEND | Rights::GRANT).bits(), 42, 0, 0, 0],
    );
    let client_ep = ok(&r);
    let task = spawn_with(&mut k, 1, &[(ep, Rights::RECV)], NO_CAP);
    let (_, r) = sys(&mut k, Sys::TaskStart, [task, 0, 0, 0, 0, 0]);
    ok(&r);
    let (_, r) = sys(&mut k, Sys::NotificationCreate, [0; 6]);
    let ntfn = ok(&r);
    // Init sleeps so the server runs.
    let (next, _) = sys(&mut k, Sys::Sleep, [1, 0, 0, 0, 0, 0]);
    let Next::User(server) = next else {
        panic!("{next:?}")
    };
    assert_ne!(server, sup);
    // The server's endpoint cap is its first granted slot.
    let (next, _) = sys(&mut k, Sys::Recv, [2, DATA, 512, 0, 0, 0]);
    assert_eq!(next, Next::Idle, "server blocks, init sleeps");
    k.machine.ticks = 1;
    assert_eq!(k.on_tick(None), Next::User(sup));
    let (_, r) = sys(&mut k, Sys::MemAlloc, [1, 0, 0, 0, 0, 0]);
    let mem = ok(&r);
    write_user(&mut k, sup, DATA, b"ping");
    let (next, _) = sys(&mut k, Sys::Call, [client_ep, DATA, 4, 512, 7, mem]);
    assert_eq!(
        next,
        Next::User(server),
        "the call switches straight to the server"
    );
    let sr = k.thread(server).unwrap().regs;
    assert_eq!(ok(&sr), 4);
    assert_eq!((sr.rsi, sr.rdx), (7, 42), "label and badge");
    assert_ne!(sr.r8, NO_CAP, "the memory cap arrived");
    assert_eq!(read_user(&k, server, DATA, 4), b"ping");
    write_user(&mut k, server, DATA, b"pong!");
    let (next, _) = sys(&mut k, Sys::ReplyRecv, [2, DATA, 5, 512, 9, NO_CAP]);
    assert_eq!(
        next,
        Next::User(sup),
        "reply_recv switches back to the caller"
    );
    let cr = k.thread(sup).unwrap().regs;
    assert_eq!((ok(&cr), cr.rsi), (5, 9));
    assert_eq!(read_user(&k, sup, DATA, 5), b"pong!");
    // Oversized reply buffer contents are cut: Truncated with the full length.
    let (next, _) = sys(&mut k, Sys::Call, [client_ep, DATA, 4, 2, 7, NO_CAP]);
    assert_eq!(next, Next::User(server));
    let (_, _) = sys(&mut k, Sys::ReplyRecv, [2, DATA, 5, 512, 9, NO_CAP]);
    let cr = k.thread(sup).unwrap().regs;
    assert_eq!((status(&cr), cr.rdi), (Err(Error::Truncated), 5));
    // Sending without SEND, receiving without RECV, over-long payloads.
    let (_, r) = sys(
        &mut k,
        Sys::CapCopy,
        [client_ep, Rights::RECV.bits(), 0, 0, 0, 0],
    );
    let weak = ok(&r);
    let (_, r) = sys(&mut k, Sys::Call, [weak, DATA, 4, 512, 7, NO_CAP]);
    assert_eq!(status(&r), Err(Error::NoRights));
    let (_, r) = sys(&mut k, Sys::Call, [client_ep, DATA, 513, 512, 7, NO_CAP]);
    assert_eq!(status(&r), Err(Error::BadLength));
    let (_, r) = sys(
        &mut k,
        Sys::Call,
        [client_ep, 0xdead_0000, 4, 512, 7, NO_CAP],
    );
    assert_eq!(status(&r), Err(Error::BadPointer));
    let (_, r) = sys(&mut k, Sys::Call, [ntfn, DATA, 4, 512, 7, NO_CAP]);
    assert_eq!(status(&r), Err(Error::WrongCapKind));
    let (_, r) = sys(&mut k, Sys::Call, [63, DATA, 4, 512, 7, NO_CAP]);
    assert_eq!(status(&r), Err(Error::InvalidCap));
    let (_, r) = sys(&mut k, Sys::Reply, [DATA, 4, 0, NO_CAP, 0, 0]);
    assert_eq!(status(&r), Err(Error::NoCaller));
}

#[test]
fn server_fault_mid_call_gives_server_restarted_and_a_fault_notice() {
    let mut k = kernel(&["supervisor", "echo"]);
    let sup = boot(&mut k);
    let (_, r) = sys(&mut k, Sys::EndpointCreate, [0; 6]);
    let ep = ok(&r);
    let (_, r) = sys(&mut k, Sys::EndpointCreate, [0; 6]);
    let fault_ep = ok(&r);
    let (_, r) = sys(
        &mut k,
        Sys::CapCopy,
        [fault_ep, Rights::SEND.bits(), 0x77, 0, 0, 0],
    );
    let fault_send = ok(&r);
    let task = spawn_with(&mut k, 1, &[(ep, Rights::RECV)], fault_send);
    ok(&sys(&mut k, Sys::EndpointBind, [ep, task, 0, 0, 0, 0]).1);
    ok(&sys(&mut k, Sys::TaskStart, [task, 0, 0, 0, 0, 0]).1);
    // A client thread in init calls; the server receives, then faults before replying.
    let (next, _) = sys(&mut k, Sys::Sleep, [1, 0, 0, 0, 0, 0]);
    assert!(matches!(next, Next::User(t) if t != sup));
    // The server blocks in recv; init wakes.
    let (_, _) = sys(&mut k, Sys::Recv, [2, DATA, 512, 0, 0, 0]);
    k.machine.ticks = 1;
    assert_eq!(k.on_tick(None), Next::User(sup));
    let (next, _) = sys(&mut k, Sys::Call, [ep, DATA, 3, 512, 1, NO_CAP]);
    let Next::User(server) = next else { panic!() };
    let regs = k.thread(server).unwrap().regs;
    let next = k.on_user_fault(&regs, 14, 4, 0xdead);
    assert_eq!(next, Next::User(sup));
    let cr = k.thread(sup).unwrap().regs;
    assert_eq!((status(&cr), cr.rdi), (Err(Error::ServerRestarted), 2));
    // The supervisor gets the notice with the fault endpoint's badge.
    let (_, r) = sys(&mut k, Sys::Recv, [fault_ep, DATA, 512, 0, 0, 0]);
    assert_eq!(
        (ok(&r), r.rsi, r.rdx),
        (FaultNotice::SIZE as u64, FAULT_LABEL, 0x77)
    );
    let notice = FaultNotice::from_bytes(&read_user(&k, sup, DATA, FaultNotice::SIZE)).unwrap();
    assert_eq!(
        (notice.vector, notice.address, notice.generation),
        (14, 0xdead, 1)
    );
    // The task cap is stale now; a new incarnation rebinds and serves the retry.
    assert_eq!(
        status(&sys(&mut k, Sys::TaskStart, [task, 0, 0, 0, 0, 0]).1),
        Err(Error::StaleCap)
    );
    let (_, r) = sys(&mut k, Sys::TaskSpawn, [1, 2, 5, fault_send, 0, 0]);
    let task2 = ok(&r);
    ok(&sys(
        &mut k,
        Sys::TaskGrant,
        [task2, ep, Rights::RECV.bits(), 0, 0, 0],
    )
    .1);
    ok(&sys(&mut k, Sys::EndpointBind, [ep, task2, 0, 0, 0, 0]).1);
    ok(&sys(&mut k, Sys::TaskStart, [task2, 0, 0, 0, 0, 0]).1);
    // The retry queues until the new server receives.
    let (next, _) = sys(&mut k, Sys::Call, [ep, DATA, 3, 512, 1, NO_CAP]);
    let Next::User(server2) = next else {
        panic!("{next:?}")
    };
    assert_ne!(server2, sup);
    assert_eq!(
        k.thread(server2).unwrap().regs.rip,
        0x40_0000,
        "the new server starts fresh"
    );
    let (next, _) = sys(&mut k, Sys::Recv, [2, DATA, 512, 0, 0, 0]);
    assert_eq!(
        next,
        Next::User(server2),
        "a queued caller is received at once"
    );
    let (next, _) = sys(&mut k, Sys::ReplyRecv, [2, DATA, 1, 512, 0, NO_CAP]);
    assert_eq!(next, Next::User(sup));
    assert_eq!(ok(&k.thread(sup).unwrap().regs), 1);
    // Closing the endpoint: later callers get ServerGone.
    ok(&sys(&mut k, Sys::EndpointClose, [ep, 0, 0, 0, 0, 0]).1);
    assert_eq!(
        status(&sys(&mut k, Sys::Call, [ep, DATA, 1, 512, 0, NO_CAP]).1),
        Err(Error::ServerGone)
    );
}

#[test]
fn revoked_caps_are_stale_and_memory_is_shared_and_freed() {
    let mut k = kernel(&["supervisor"]);
    let _sup = boot(&mut k);
    let (_, r) = sys(&mut k, Sys::MemAlloc, [2, 0, 0, 0, 0, 0]);
    let mem = ok(&r);
    let (_, r) = sys(&mut k, Sys::CapCopy, [mem, Rights::READ.bits(), 0, 0, 0, 0]);
    let ro = ok(&r);
    ok(&sys(
        &mut k,
        Sys::MemMap,
        [
            mem,
            0x60_0000,
            (Rights::READ | Rights::WRITE).bits(),
            0,
            0,
            0,
        ],
    )
    .1);
    ok(&sys(
        &mut k,
        Sys::MemMap,
        [ro, 0x70_0000, Rights::READ.bits(), 0, 0, 0],
    )
    .1);
    assert_eq!(
        status(
            &sys(
                &mut k,
                Sys::MemMap,
                [
                    ro,
                    0x80_0000,
                    (Rights::READ | Rights::WRITE).bits(),
                    0,
                    0,
                    0
                ]
            )
            .1
        ),
        Err(Error::NoRights)
    );
    assert_eq!(
        status(
            &sys(
                &mut k,
                Sys::MemMap,
                [mem, 0x60_1000, Rights::READ.bits(), 0, 0, 0]
            )
            .1
        ),
        Err(Error::AddressInUse)
    );
    assert_eq!(
        status(
            &sys(
                &mut k,
                Sys::MemMap,
                [mem, 0x60_0001, Rights::READ.bits(), 0, 0, 0]
            )
            .1
        ),
        Err(Error::InvalidArgument)
    );
    assert_eq!(
        status(
            &sys(
                &mut k,
                Sys::MemMap,
                [mem, 0x90_0000, (Rights::all()).bits(), 0, 0, 0]
            )
            .1
        ),
        Err(Error::InvalidArgument)
    );
    let t = k.current.unwrap();
    write_user(&mut k, t, 0x60_0010, b"shared");
    assert_eq!(read_user(&k, t, 0x70_0010, 6), b"shared");
    let frames = k.machine.frames_live;
    ok(&sys(&mut k, Sys::CapRevoke, [mem, 0, 0, 0, 0, 0]).1);
    assert_eq!(
        status(&sys(&mut k, Sys::MemInfo, [ro, 0, 0, 0, 0, 0]).1),
        Err(Error::StaleCap)
    );
    assert_eq!(
        k.machine.frames_live,
        frames - 2,
        "revocation frees the frames"
    );
    let space = &k.task(k.thread(t).unwrap().task).unwrap().space;
    assert!(!space.contains_key(&0x60_0000) && !space.contains_key(&0x70_0000));
    ok(&sys(&mut k, Sys::CapDelete, [ro, 0, 0, 0, 0, 0]).1);
    assert_eq!(
        status(&sys(&mut k, Sys::CapDelete, [ro, 0, 0, 0, 0, 0]).1),
        Err(Error::InvalidCap)
    );
}

#[test]
fn bad_modules_and_spawn_without_the_right_fail() {
    let mut k = kernel(&["supervisor"]);
    boot(&mut k);
    assert_eq!(
        status(&sys(&mut k, Sys::TaskSpawn, [1, 1, 1, NO_CAP, 0, 0]).1),
        Err(Error::BadImage)
    );
    assert_eq!(
        status(&sys(&mut k, Sys::TaskSpawn, [99, 1, 1, NO_CAP, 0, 0]).1),
        Err(Error::InvalidArgument)
    );
    let (_, r) = sys(&mut k, Sys::EndpointCreate, [0; 6]);
    let ep = ok(&r);
    assert_eq!(
        status(&sys(&mut k, Sys::TaskSpawn, [0, 1, 1, NO_CAP, ep, 0]).1),
        Err(Error::WrongCapKind)
    );
    assert_eq!(
        status(&sys(&mut k, Sys::TaskSpawn, [0, 1, 31, NO_CAP, 0, 0]).1),
        Err(Error::InvalidArgument)
    );
}

#[test]
fn higher_priority_threads_preempt_and_sleepers_wake() {
    let mut k = kernel(&["supervisor"]);
    let sup = boot(&mut k);
    let (_, r) = sys(
        &mut k,
        Sys::ThreadCreate,
        [0x40_0000, 0x50_1000, 5, 3, 0, 0],
    );
    let low = ThreadId::from_index((ok(&r)) as usize);
    assert_eq!(
        k.current,
        Some(sup),
        "a lower-priority thread does not preempt"
    );
    let (next, _) = sys(&mut k, Sys::Sleep, [2, 0, 0, 0, 0, 0]);
    assert_eq!(next, Next::User(low));
    assert_eq!(k.thread(low).unwrap().regs.rdi, 5);
    k.machine.ticks = 1;
    assert_eq!(k.on_tick(None), Next::User(low));
    k.machine.ticks = 2;
    assert_eq!(
        k.on_tick(None),
        Next::User(sup),
        "the woken sleeper preempts"
    );
    assert_eq!(
        status(&sys(&mut k, Sys::ThreadCreate, [0, 0x50_1000, 0, 3, 0, 0]).1),
        Err(Error::InvalidArgument)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// Random syscalls with random and half-valid arguments from whichever thread runs never
    /// panic the kernel, and whatever runs next exists.
    #[test]
    fn random_syscalls_never_panic(calls in proptest::collection::vec(
        (0u64..100, proptest::array::uniform6(prop_oneof![
            Just(0u64), Just(2), Just(3), Just(4), Just(NO_CAP), 0u64..64,
            Just(DATA), Just(DATA + 4096), Just(0x40_0000), any::<u64>(),
            Just(512), Just(513), Just(0xffff_8000_0000_0000),
        ])), 1..60)) {
        let mut k = kernel(&["supervisor", "echo"]);
        boot(&mut k);
        for (n, args) in calls {
            let n = if n == 87 { 3 } else { n }; // MachineExit would end the run
            let Some(t) = k.current else {
                k.machine.ticks += 1000;
                match k.on_tick(None) {
                    Next::User(_) => continue,
                    _ => break,
                }
            };
            let mut regs = k.thread(t).unwrap().regs;
            regs.rax = n;
            [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9] = args;
            match k.on_syscall(&regs) {
                Next::User(t) => prop_assert!(k.threads.0[t.index()].is_some()),
                Next::Idle => prop_assert!(k.current.is_none()),
                Next::MachineExit(_) => break,
                Next::Guest(t) => prop_assert!(k.vcpu_of(t).is_some()),
            }
            let kinds_ok = (0..64).all(|s| {
                k.tasks.iter().flat_map(|t| t.obj.as_ref()).all(|t| t.caps.get(s).map_or(true, |c| CapKind::from_u64(c.obj.kind as u64).is_some()))
            });
            prop_assert!(kinds_ok);
        }
    }
}

/// A client task (init) and an echo-like server task sharing an endpoint, ready for calls:
/// the server is blocked receiving and the client runs.
fn ipc_pair(fast: bool) -> (Kernel<Model>, u64) {
    let mut k = kernel(&["supervisor", "echo"]);
    k.fast_ipc = fast;
    boot(&mut k);
    let (_, r) = sys(&mut k, Sys::EndpointCreate, [0; 6]);
    let ep = ok(&r);
    let (_, r) = sys(
        &mut k,
        Sys::CapCopy,
        [ep, (Rights::SEND | Rights::GRANT).bits(), 9, 0, 0, 0],
    );
    let client_ep = ok(&r);
    let task = spawn_with(&mut k, 1, &[(ep, Rights::RECV)], NO_CAP);
    ok(&sys(&mut k, Sys::TaskStart, [task, 0, 0, 0, 0, 0]).1);
    sys(&mut k, Sys::Sleep, [1, 0, 0, 0, 0, 0]);
    sys(&mut k, Sys::Recv, [2, DATA, 512, 0, 0, 0]);
    k.machine.ticks = 1;
    k.on_tick(None);
    (k, client_ep)
}

/// Everything a syscall can change that user code or later syscalls see.
fn observable(k: &Kernel<Model>) -> Vec<String> {
    let mut out = vec![format!("current {:?}", k.current)];
    for (i, t) in k.threads.0.iter().enumerate() {
        if let Some(t) = t {
            out.push(format!(
                "{i}: {:?} {:?} reply_to {:?}",
                t.state, t.regs, t.reply_to
            ));
            out.push(format!(
                "{:?}",
                read_user(k, ThreadId::from_index(i), DATA, 600)
            ));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    /// The fast path and the general path give the same registers, states and memory for
    /// random calls and replies (lengths past the buffers, bad buffers, grants, labels).
    #[test]
    fn fast_path_matches_the_general_path(steps in proptest::collection::vec(
        (0u64..600, prop_oneof![Just(512u64), Just(4), 0u64..600], any::<u8>(),
         prop_oneof![Just(DATA), Just(DATA + 4000), Just(0xdead_0000u64), Just(0x40_0000u64)],
         prop_oneof![4 => Just(NO_CAP), 1 => Just(0u64)]), 1..30)) {
        let (mut fast, client_ep) = ipc_pair(true);
        let (mut slow, _) = ipc_pair(false);
        let client = fast.current.unwrap();
        for (len, buf_cap, fill, buf, grant) in steps {
            let mut nexts = Vec::new();
            for k in [&mut fast, &mut slow] {
                let Some(t) = k.current else {
                    nexts.push(None);
                    continue;
                };
                write_user(k, t, DATA, &[fill; 600]);
                let grant = if grant == NO_CAP { NO_CAP } else { client_ep };
                let (next, _) = if t == client {
                    sys(k, Sys::Call, [client_ep, buf, len, buf_cap, u64::from(fill), grant])
                } else {
                    sys(k, Sys::ReplyRecv, [2, buf, len, buf_cap, u64::from(fill) + 1, grant])
                };
                nexts.push(Some(next));
            }
            prop_assert_eq!(nexts[0], nexts[1]);
            prop_assert_eq!(observable(&fast), observable(&slow));
        }
    }
}

#[test]
fn the_fast_path_is_taken_for_plain_calls_and_replies() {
    let (mut k, ep) = ipc_pair(true);
    let client = k.current.unwrap();
    let server = ThreadId::from_index(
        k.threads
            .0
            .iter()
            .position(|t| {
                t.as_ref()
                    .is_some_and(|t| t.task != k.thread(client).unwrap().task)
            })
            .unwrap(),
    );
    // Turn the general path into a trap: if it ran, the server's message buffer would change.
    k.thread_mut(client).unwrap().msg.label = 0xaaaa;
    write_user(&mut k, client, DATA, b"abc");
    let next = fast(&mut k, client, Sys::Call, [ep, DATA, 3, 512, 5, NO_CAP]);
    assert_eq!(next, Some(Next::User(server)));
    assert_eq!(
        k.thread(client).unwrap().msg.label,
        0xaaaa,
        "the message went user to user"
    );
    assert_eq!(read_user(&k, server, DATA, 3), b"abc");
    let next = fast(&mut k, server, Sys::ReplyRecv, [2, DATA, 2, 512, 6, NO_CAP]);
    assert_eq!(next, Some(Next::User(client)));
    assert_eq!(
        (
            ok(&k.thread(client).unwrap().regs),
            k.thread(client).unwrap().regs.rsi
        ),
        (2, 6)
    );
    // A grant, or a reply longer than the caller's buffer, is the general path's.
    assert_eq!(
        fast(&mut k, client, Sys::Call, [ep, DATA, 3, 512, 5, 2]),
        None
    );
}

/// Thread `t`'s syscall `n` with arguments `a`, saved as the entry saves them, through the
/// fast path of `call` or `reply_recv` only.
fn fast(k: &mut Kernel<Model>, t: ThreadId, n: Sys, a: [u64; 6]) -> Option<Next> {
    let r = &mut k.thread_mut(t).unwrap().regs;
    r.rax = n as u64;
    [r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9] = a;
    match n {
        Sys::Call => k.fast_call(t).map(Next::User),
        Sys::ReplyRecv => k.fast_reply_recv(t),
        _ => unreachable!("{n:?} has no fast path"),
    }
}

#[test]
fn a_remembered_buffer_check_is_dropped_when_the_task_unmaps() {
    let (mut k, ep) = ipc_pair(true);
    let client = k.current.unwrap();
    let (_, r) = sys(&mut k, Sys::MemAlloc, [1, 0, 0, 0, 0, 0]);
    let mem = ok(&r);
    let rw = (Rights::READ | Rights::WRITE).bits();
    ok(&sys(&mut k, Sys::MemMap, [mem, 0x60_0000, rw, 0, 0, 0]).1);
    // A call with its reply buffer in the mapped page: checked and remembered.
    let (next, _) = sys(&mut k, Sys::Call, [ep, 0x60_0000, 0, 512, 1, NO_CAP]);
    let Next::User(server) = next else { panic!() };
    assert!(k.thread(client).unwrap().checked_buf.is_some());
    sys(&mut k, Sys::ReplyRecv, [2, DATA, 0, 512, 1, NO_CAP]);
    assert_eq!(k.current, Some(client));
    ok(&sys(&mut k, Sys::MemUnmap, [mem, 0x60_0000, 0, 0, 0, 0]).1);
    // The same buffer again: now unmapped, so the call fails instead of reaching the server.
    let (next, r) = sys(&mut k, Sys::Call, [ep, 0x60_0000, 0, 512, 1, NO_CAP]);
    assert_eq!(next, Next::User(client));
    assert_eq!(status(&r), Err(Error::BadPointer));
    assert_eq!(
        k.thread(server).unwrap().state,
        super::objects::ThreadState::BlockedRecv {
            ep: super::ids::EndpointId::new(0)
        }
    );
}

#[test]
fn task_start_after_the_main_thread_exited_is_an_error_not_a_panic() {
    let mut k = kernel(&["supervisor", "echo"]);
    let sup = boot(&mut k);
    let task = spawn_with(&mut k, 1, &[], NO_CAP);
    ok(&sys(&mut k, Sys::TaskStart, [task, 0, 0, 0, 0, 0]).1);
    // A second start of a running task is refused.
    assert_eq!(
        status(&sys(&mut k, Sys::TaskStart, [task, 0, 0, 0, 0, 0]).1),
        Err(Error::InvalidArgument)
    );
    let (next, _) = sys(&mut k, Sys::Sleep, [1, 0, 0, 0, 0, 0]);
    let Next::User(main) = next else {
        panic!("{next:?}")
    };
    assert_ne!(main, sup);
    // The task's main thread starts a second thread and exits: the task lives on.
    ok(&sys(
        &mut k,
        Sys::ThreadCreate,
        [0x40_0000, DATA + 0x2000, 0, 3, 0, 0],
    )
    .1);
    sys(&mut k, Sys::ThreadExit, [0; 6]);
    assert!(
        k.threads.0[main.index()].is_none(),
        "the main thread is gone"
    );
    k.machine.ticks = 1;
    assert_eq!(k.on_tick(None), Next::User(sup));
    // Starting the task again names a thread that no longer exists (or, once the slot is
    // reused, someone else's): an error, and nothing runs.
    assert_eq!(
        status(&sys(&mut k, Sys::TaskStart, [task, 0, 0, 0, 0, 0]).1),
        Err(Error::InvalidArgument)
    );
}

#[test]
fn a_spawn_refused_for_a_full_capability_table_leaves_no_trace() {
    let mut k = kernel(&["supervisor", "echo"]);
    boot(&mut k);
    // Fill init's table with copies of one endpoint capability.
    let ep = ok(&sys(&mut k, Sys::EndpointCreate, [0; 6]).1);
    while k.task(k.cur_task().unwrap()).unwrap().caps.has_free_slot() {
        ok(&sys(&mut k, Sys::CapCopy, [ep, Rights::SEND.bits(), 0, 0, 0, 0]).1);
    }
    let generations: Vec<u32> = k.tasks.iter().map(|s| s.generation).collect();
    let frames = k.machine.frames_in_use();
    let (_, r) = sys(
        &mut k,
        Sys::TaskSpawn,
        [1, 1, 5, NO_CAP, abi::cap::slot::SPAWN, 0],
    );
    assert_eq!(status(&r), Err(Error::NoMemory));
    // No task was made and unmade: no slot moved its generation, no frame is held.
    let after: Vec<u32> = k.tasks.iter().map(|s| s.generation).collect();
    assert_eq!(after, generations);
    assert_eq!(k.machine.frames_in_use(), frames);
}

#[test]
fn boot_modules_and_the_command_line_need_the_boot_capability() {
    let mut k = kernel(&["supervisor", "echo"]);
    let sup = boot(&mut k);
    let boot_cap = abi::cap::slot::BOOT;
    // The first task holds it.
    let (_, r) = sys(&mut k, Sys::KernelCmdline, [DATA, 256, boot_cap, 0, 0, 0]);
    ok(&r);
    let (_, r) = sys(&mut k, Sys::ModuleInfo, [1, DATA, 128, boot_cap, 0, 0]);
    assert_eq!(ok(&r), "echo".len() as u64);
    let (_, r) = sys(&mut k, Sys::ModuleRead, [1, 0, DATA, 16, boot_cap, 0]);
    assert!(ok(&r) > 0);
    // Not without it, nor with something else in its place, nor without the read right.
    let ep = ok(&sys(&mut k, Sys::EndpointCreate, [0; 6]).1);
    let no_read = ok(&sys(&mut k, Sys::CapCopy, [boot_cap, 0, 0, 0, 0, 0]).1);
    for (slot, want) in [
        (40, Error::InvalidCap),
        (ep, Error::WrongCapKind),
        (no_read, Error::NoRights),
    ] {
        let (_, r) = sys(&mut k, Sys::KernelCmdline, [DATA, 256, slot, 0, 0, 0]);
        assert_eq!(status(&r), Err(want), "slot {slot}");
        let (_, r) = sys(&mut k, Sys::ModuleInfo, [1, DATA, 128, slot, 0, 0]);
        assert_eq!(status(&r), Err(want), "slot {slot}");
        let (_, r) = sys(&mut k, Sys::ModuleRead, [1, 0, DATA, 16, slot, 0]);
        assert_eq!(status(&r), Err(want), "slot {slot}");
    }
    // A task it was not granted to cannot read them; a granted read-only copy can.
    let task = spawn_with(&mut k, 1, &[], NO_CAP);
    ok(&sys(&mut k, Sys::TaskStart, [task, 0, 0, 0, 0, 0]).1);
    let (next, _) = sys(&mut k, Sys::Sleep, [1, 0, 0, 0, 0, 0]);
    let Next::User(other) = next else {
        panic!("{next:?}")
    };
    assert_ne!(other, sup);
    let (_, r) = sys(&mut k, Sys::KernelCmdline, [DATA, 256, boot_cap, 0, 0, 0]);
    assert_eq!(status(&r), Err(Error::InvalidCap));
}

#[test]
fn a_task_cannot_take_every_endpoint_and_notification_from_the_supervisor() {
    use super::objects::{OBJECT_QUOTA, SUPERVISOR_RESERVE};
    let mut k = kernel(&["supervisor", "echo"]);
    let sup = boot(&mut k);
    let task = spawn_with(&mut k, 1, &[], NO_CAP);
    ok(&sys(&mut k, Sys::TaskStart, [task, 0, 0, 0, 0, 0]).1);
    let (next, _) = sys(&mut k, Sys::Sleep, [1, 0, 0, 0, 0, 0]);
    let Next::User(hog) = next else {
        panic!("{next:?}")
    };
    assert_ne!(hog, sup);
    for call in [Sys::EndpointCreate, Sys::NotificationCreate] {
        let mut made = 0;
        while status(&sys(&mut k, call, [0; 6]).1).is_ok() {
            made += 1;
            assert!(made <= 64, "{call:?}: no limit");
        }
        assert_eq!(made, OBJECT_QUOTA, "{call:?}");
        assert_eq!(status(&sys(&mut k, call, [0; 6]).1), Err(Error::NoMemory));
    }
    // The supervisor still creates them, into the reserve too.
    k.machine.ticks = 1;
    assert_eq!(k.on_tick(None), Next::User(sup));
    let free = k.endpoints.iter().filter(|s| s.obj.is_none()).count();
    assert!(free > SUPERVISOR_RESERVE);
    for _ in 0..free {
        ok(&sys(&mut k, Sys::EndpointCreate, [0; 6]).1);
    }
}

#[test]
fn memory_comes_from_a_page_budget_the_spawner_sets_and_the_reserve_stays_the_supervisors() {
    use super::objects::FRAME_RESERVE;
    let mut k = kernel(&["supervisor", "echo"]);
    let sup = boot(&mut k);
    let task = spawn_with(&mut k, 1, &[], NO_CAP);
    // Only a task capability with WRITE sets a budget.
    let read_only = ok(&sys(
        &mut k,
        Sys::CapCopy,
        [task, Rights::READ.bits(), 0, 0, 0, 0],
    )
    .1);
    let (_, r) = sys(&mut k, Sys::TaskSetPages, [read_only, 100, 0, 0, 0, 0]);
    assert_eq!(status(&r), Err(Error::NoRights));
    let (_, r) = sys(&mut k, Sys::TaskSetPages, [task, 100, 0, 0, 0, 0]);
    assert_eq!((ok(&r), r.rsi), (0, 0), "no budget and nothing held before");
    ok(&sys(&mut k, Sys::TaskStart, [task, 0, 0, 0, 0, 0]).1);
    let (next, _) = sys(&mut k, Sys::Sleep, [1, 0, 0, 0, 0, 0]);
    let Next::User(child) = next else {
        panic!("{next:?}")
    };
    assert_ne!(child, sup);
    // 60 + 40 pages fit the budget of 100; one more page does not, and the failed call
    // took no frame and no slot.
    let a = ok(&sys(&mut k, Sys::MemAlloc, [60, 0, 0, 0, 0, 0]).1);
    ok(&sys(&mut k, Sys::MemAlloc, [40, 0, 0, 0, 0, 0]).1);
    let frames = k.machine.frames_in_use();
    let (_, r) = sys(&mut k, Sys::MemAlloc, [1, 0, 0, 0, 0, 0]);
    assert_eq!(status(&r), Err(Error::NoMemory));
    assert_eq!(k.machine.frames_in_use(), frames);
    // A bad length is BadLength whatever the budget.
    let (_, r) = sys(&mut k, Sys::MemAlloc, [u64::MAX, 0, 0, 0, 0, 0]);
    assert_eq!(status(&r), Err(Error::BadLength));
    // Freeing gives the budget back.
    ok(&sys(&mut k, Sys::CapDelete, [a, 0, 0, 0, 0, 0]).1);
    ok(&sys(&mut k, Sys::MemAlloc, [60, 0, 0, 0, 0, 0]).1);
    // With a huge budget, the child still stops short of the supervisor's reserve.
    k.machine.ticks = 1;
    assert_eq!(k.on_tick(None), Next::User(sup));
    let (_, r) = sys(&mut k, Sys::TaskSetPages, [task, u64::MAX, 0, 0, 0, 0]);
    assert_eq!((ok(&r), r.rsi), (100, 100));
    let (next, _) = sys(&mut k, Sys::Sleep, [1, 0, 0, 0, 0, 0]);
    assert_eq!(next, Next::User(child));
    for chunk in [256, 16, 1] {
        while status(&sys(&mut k, Sys::MemAlloc, [chunk, 0, 0, 0, 0, 0]).1).is_ok() {}
    }
    let available = k.machine.frames_available();
    assert_eq!(available, FRAME_RESERVE, "the child stopped at the reserve");
    // The supervisor allocates into the reserve.
    k.machine.ticks = 2;
    assert_eq!(k.on_tick(None), Next::User(sup));
    ok(&sys(&mut k, Sys::MemAlloc, [FRAME_RESERVE / 2, 0, 0, 0, 0, 0]).1);
}
