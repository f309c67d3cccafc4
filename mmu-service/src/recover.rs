//! Surviving a crash: the journal page and the capabilities the service keeps with the
//! supervisor (`userlib::kept`), what a new instance rebuilds from them before it receives
//! its first message, and fault injection for the test suites.
//!
//! Recovery design:
//! - Who re-attaches: the service itself, from what it kept. The supervisor keeps, under the
//!   service's name, copies of every VM's capabilities (VM, pool, RAM, vCPUs) and the journal
//!   page, which says which exist. A new instance reads them back before its first receive, so
//!   every exit the kernel re-sends (or any exit at all) reaches an instance that knows its VM.
//! - EPT VMs: the EPT is kept. The kernel writes it (`VmMapRam` is one syscall: no entry is
//!   ever half-written by the service), and a mapping of the VM's own RAM is never wrong.
//! - Shadow VMs: nothing the dead instance wrote is trusted. The pool is registered again
//!   (`VmSetShadow` with the same endpoint), which puts every vCPU of the VM on its empty
//!   root; the shadow MMU is built anew over it (every frame free, each zeroed when taken: all
//!   old roots obsolete, as after KVM's `invalidate_all`), and the first fault of each vCPU
//!   rebuilds its root from guest memory and the exit's paging state.
//! - Attach is idempotent (`AttachVm` carries the VMM's key), so a VMM whose attach call met a
//!   crash retries it and gets the same VM back.

use abi::CapSlot;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use mmu_service::journal::{self, CapKey, CrashKind, Header, Journal, VmRecord};
use userlib::proto::supervisor::{Request as SupRequest, Response as SupResponse, Supervisor};
use userlib::sys::{self, Mapping};
use userlib::wiring::SUPERVISOR;

/// Where the journal page is mapped.
const JOURNAL_VA: u64 = 0x0000_0f00_0000_0000;

/// Keeps a copy of `cap` with the supervisor under `key`.
pub fn keep(key: u32, cap: CapSlot) -> bool {
    let mut sup = userlib::ipc::client::<Supervisor>(SUPERVISOR);
    matches!(
        sup.call_with_cap(&SupRequest::Keep { key }, Some(cap)),
        Ok(r) if r.response == SupResponse::Kept
    )
}

/// A copy of what was kept under `key`.
pub fn fetch(key: u32) -> Option<CapSlot> {
    let mut sup = userlib::ipc::client::<Supervisor>(SUPERVISOR);
    match sup.call_with_cap(&SupRequest::Fetch { key }, None) {
        Ok(r) if r.response == SupResponse::Granted => r.cap,
        Ok(r) => {
            if let Some(cap) = r.cap {
                let _ = sys::cap_delete(cap);
            }
            None
        }
        Err(_) => None,
    }
}

pub fn forget(key: u32) {
    let mut sup = userlib::ipc::client::<Supervisor>(SUPERVISOR);
    let _ = sup.call(&SupRequest::Forget { key });
}

/// The memory object kept under `key` by an earlier instance, or a new one of `pages`
/// pages (kept at once; if it cannot be kept it is still returned, and used this once).
pub fn kept_or_new(key: u32, pages: u64) -> Option<CapSlot> {
    if let Some(cap) = fetch(key) {
        return Some(cap);
    }
    let cap = sys::mem_alloc(pages).ok()?;
    keep(key, cap);
    Some(cap)
}

/// This instance's journal (`None` without one: no recovery, no injection).
static JOURNAL: spin::Mutex<Option<JournalPage>> = spin::Mutex::new(None);

/// Runs `f` on the journal, if there is one.
pub fn with_journal<R>(f: impl FnOnce(&mut JournalPage) -> R) -> Option<R> {
    JOURNAL.lock().as_mut().map(f)
}

/// Opens the journal (see [`JournalPage::open`]); returns whether there is one.
pub fn open_journal(generation: u64, injection_allowed: bool) -> bool {
    let page = JournalPage::open(generation, injection_allowed);
    let opened = page.is_some();
    *JOURNAL.lock() = page;
    opened
}

/// The journal page, mapped.
pub struct JournalPage {
    map: Mapping,
    header: Header,
    /// Exits this instance handled (crash decisions count them).
    pub exits: u64,
    pub generation: u64,
    /// The kernel command line allows fault injection (`mmu.inject`).
    pub injection_allowed: bool,
}

impl JournalPage {
    /// The journal kept by earlier instances, or a new one (kept at once). `None` if there is
    /// no memory or no supervisor to keep it with: the service then runs without recovery.
    pub fn open(generation: u64, injection_allowed: bool) -> Option<JournalPage> {
        let key = journal::key(0, CapKey::Journal);
        let cap = match fetch(key) {
            Some(cap) => cap,
            None => {
                let cap = sys::mem_alloc(1).ok()?;
                if !keep(key, cap) {
                    let _ = sys::cap_delete(cap);
                    return None;
                }
                cap
            }
        };
        // A zeroed page is an empty journal; a kept one is the predecessors'.
        let mut map = Mapping::new(cap, JOURNAL_VA).ok()?;
        let header = Journal::new(map.bytes_mut())?.header();
        Some(JournalPage {
            map,
            header,
            exits: 0,
            generation,
            injection_allowed,
        })
    }

    pub fn get(&mut self) -> Journal<'_> {
        Journal::new(self.map.bytes_mut()).expect("a journal page is a page")
    }

    /// A record's capabilities back from the supervisor: (VM, pool, RAM, vCPUs by index).
    pub fn fetch_caps(handle: u32, r: &VmRecord) -> Option<RecoveredCaps> {
        let vm = fetch(journal::key(handle, CapKey::Vm))?;
        let pool = match r.shadow {
            Some(_) => Some(fetch(journal::key(handle, CapKey::Pool))?),
            None => None,
        };
        let ram = match r.ram {
            true => Some(fetch(journal::key(handle, CapKey::Ram))?),
            false => None,
        };
        let mut vcpus = [None; 8];
        for (i, slot) in vcpus.iter_mut().enumerate() {
            if r.vcpus & (1 << i) != 0 {
                *slot = fetch(journal::key(handle, CapKey::Vcpu(i as u8)));
            }
        }
        Some(RecoveredCaps {
            vm,
            pool,
            ram,
            vcpus,
        })
    }

    /// Forgets every capability kept for `handle` and its record.
    pub fn forget_vm(&mut self, handle: u32) {
        if let Some(r) = self.get().record(handle) {
            forget(journal::key(handle, CapKey::Vm));
            if r.shadow.is_some() {
                forget(journal::key(handle, CapKey::Pool));
            }
            if r.ram {
                forget(journal::key(handle, CapKey::Ram));
            }
            for i in 0..8u8 {
                if r.vcpus & (1 << i) != 0 {
                    forget(journal::key(handle, CapKey::Vcpu(i)));
                }
            }
        }
        self.get().set_record(handle, None);
    }

    /// Called at every exit before it is handled: counts it, and crashes here if the
    /// injection plan says so (the crash is in the journal first). A `MidWrite` crash is
    /// armed instead: it happens at a later shadow-entry write of this exit ([`on_spte_write`]).
    pub fn before_exit(&mut self, message: &[u8]) {
        self.exits += 1;
        if self.header.inflight == 0 && self.header.injection.every == 0 {
            return; // nothing pending, nothing to inject: the common case costs nothing
        }
        GUEST_WRITTEN.store(false, Ordering::Relaxed);
        let hash = journal::message_hash(message);
        CURRENT.store(hash, Ordering::Relaxed);
        if self.header.inflight != 0 {
            // The first exit since a crash: is it the one the crash left unanswered?
            if self.exits == 1 && self.header.inflight == hash {
                self.header.resent += 1;
            }
            self.header.inflight = 0;
            self.save_header();
        }
        match journal::crash_at(&self.header.injection, self.generation, self.exits) {
            None => {}
            Some(CrashKind::MidWrite(n)) => MID_WRITE.store(n, Ordering::Relaxed),
            Some(kind) => {
                // Said before the clock starts: the line is the test's, not the restart's.
                userlib::println!("mmu: injected crash: {kind:?}");
                self.record_crash();
                crash(kind);
            }
        }
    }

    /// Counts a crash about to happen, and when it happened.
    pub fn record_crash(&mut self) {
        let h = &mut self.header;
        h.injection.done += 1;
        h.crashes += 1;
        h.crash_tsc = sys::rdtsc();
        h.inflight = CURRENT.load(Ordering::Relaxed);
        self.save_header();
    }

    /// Called when an exit's reply is about to go out: the first one after a crash closes the
    /// measurement of that restart. A `MidWrite` crash the exit did not reach happens here if
    /// the exit wrote no guest memory, and is dropped otherwise.
    pub fn after_exit(&mut self) {
        if MID_WRITE.swap(0, Ordering::Relaxed) != 0 && !GUEST_WRITTEN.load(Ordering::Relaxed) {
            // Fewer shadow writes than planned (an EPT VM has none): the crash happens at the
            // end of the exit instead, before its reply, as long as no guest memory changed.
            userlib::println!("mmu: injected crash at the end of the exit");
            self.record_crash();
            sys::crash::page_fault();
        }
        if self.header.crash_tsc != 0 {
            let cost = sys::rdtsc().saturating_sub(self.header.crash_tsc);
            self.get().add_cost(cost);
            self.header = self.get().header();
        }
    }

    /// The header as this instance keeps it (it is the journal's only writer).
    pub fn header(&self) -> Header {
        self.header
    }

    /// Changes the header and writes it to the journal.
    pub fn update_header(&mut self, f: impl FnOnce(&mut Header)) {
        f(&mut self.header);
        self.save_header();
    }

    fn save_header(&mut self) {
        let h = self.header;
        self.get().set_header(&h);
    }
}

/// Capabilities fetched back for one VM.
pub struct RecoveredCaps {
    pub vm: CapSlot,
    pub pool: Option<CapSlot>,
    pub ram: Option<CapSlot>,
    pub vcpus: [Option<CapSlot>; 8],
}

/// The hash of the exit being handled.
static CURRENT: AtomicU64 = AtomicU64::new(0);
/// Shadow-entry writes left before a `MidWrite` crash (0: none armed).
static MID_WRITE: AtomicU32 = AtomicU32::new(0);
/// The current exit wrote guest memory (A/D bits, an emulated write).
static GUEST_WRITTEN: AtomicBool = AtomicBool::new(false);

/// Called by the pool for every shadow entry written: an armed `MidWrite` crash happens here,
/// halfway through the exit's shadow writes. Only before the exit wrote guest memory: an
/// emulated `xchg` or `cmpxchg` done twice (once by the dead instance, once for the re-sent
/// exit) would not give the guest the same result, and the journal does not record emulated
/// writes (a known limit: a real crash there is not survived that cleanly).
pub fn on_spte_write() {
    let left = MID_WRITE.load(Ordering::Relaxed);
    if left == 0 || GUEST_WRITTEN.load(Ordering::Relaxed) {
        return;
    }
    if left == 1 {
        userlib::println!("mmu: injected crash in the middle of writing shadow entries");
        with_journal(|j| j.record_crash());
        sys::crash::page_fault();
    }
    MID_WRITE.store(left - 1, Ordering::Relaxed);
}

/// Called by guest RAM for every write the service makes to it.
pub fn on_guest_write() {
    GUEST_WRITTEN.store(true, Ordering::Relaxed);
}

fn crash(kind: CrashKind) {
    match kind {
        CrashKind::PageFault => sys::crash::page_fault(),
        CrashKind::InvalidOpcode => sys::crash::invalid_opcode(),
        CrashKind::GeneralProtection => sys::crash::general_protection(),
        CrashKind::Panic => panic!("mmu: injected panic"),
        CrashKind::MidWrite(_) => {}
    }
}
