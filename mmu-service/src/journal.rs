//! The MMU service's journal: what a restarted instance needs to serve, without a gap, the
//! VMs its dead predecessor served.
//!
//! The journal is one page (a memory object the service keeps with the supervisor, like the
//! capabilities it names; see `userlib::kept`). It holds a header (fault injection and restart
//! counters) and one record per attached VM: the VMM's key, the RAM size, the shadow
//! parameters and which capabilities were kept. A record is written whole and then committed
//! by its first byte, so a crash while writing leaves either the old record or the new one.
//! Capabilities live with the supervisor under [`key`]; the record says which exist.
//!
//! The layout is this module's; only the service reads it. Records use `postcard`.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use userlib::proto::mmu::{ShadowParams, MAX_VMS};

/// Bytes of the journal page.
pub const PAGE: usize = 4096;
/// Bytes of the header and of each record slot (commit byte, length byte, postcard bytes).
const SLOT: usize = 128;
/// Restart costs kept for the median and maximum (the oldest are overwritten).
pub const MAX_COSTS: usize = 256;
const COSTS_AT: usize = SLOT * (1 + MAX_VMS);
/// Commit-byte values.
const EMPTY: u8 = 0;
const VALID: u8 = 0xa5;

const _: () = assert!(COSTS_AT + MAX_COSTS * 8 <= PAGE);

/// The supervisor key of a capability the service keeps: the journal itself, or one of VM
/// `handle`'s (see [`CapKey`]).
pub fn key(handle: u32, cap: CapKey) -> u32 {
    match cap {
        CapKey::Journal => u32::MAX,
        CapKey::Heap => u32::MAX - 1,
        CapKey::Vm => handle << 8,
        CapKey::Pool => (handle << 8) | 1,
        CapKey::Ram => (handle << 8) | 2,
        CapKey::Vcpu(i) => (handle << 8) | (16 + u32::from(i)),
    }
}

/// Which capability a key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapKey {
    Journal,
    /// The service's heap: a new instance reuses it instead of zeroing a new one.
    Heap,
    Vm,
    Pool,
    Ram,
    Vcpu(u8),
}

/// What the service remembers of one attached VM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// The VMM's key for the VM: a retried `AttachVm` with the same key is the same VM.
    pub key: u64,
    pub ram_pages: u64,
    pub shadow: Option<ShadowParams>,
    /// Whether the RAM capability was kept (shadow VMs, after `GrantRam`).
    pub ram: bool,
    /// Bit `i`: vCPU `i`'s capability was kept.
    pub vcpus: u8,
}

/// Fault injection: crash the service at chosen exits (see `main.rs`). Only the test suites
/// set it, and only where the kernel command line allows it (`mmu.inject`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Injection {
    /// Crash at about one exit in `every` (0: never).
    pub every: u32,
    /// Stop once this many crashes were injected in this phase.
    pub limit: u32,
    /// Crashes injected in this phase.
    pub done: u32,
    /// Never crash at the first exit a new instance handles (the re-sent one): without it
    /// the service crashes until the supervisor gives up.
    pub spare_first: bool,
    pub seed: u64,
}

/// The header: injection and restart counters, across every generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub injection: Injection,
    /// Crashes injected in all.
    pub crashes: u32,
    /// Instances that recovered from the journal.
    pub recoveries: u32,
    /// TSC at the last injected crash (0: none pending): the next instance measures how long
    /// it took until the guest ran again.
    pub crash_tsc: u64,
    /// Restart costs recorded (also past [`MAX_COSTS`]).
    pub costs: u32,
    /// A hash of the exit message the last crash left unanswered (0: none): the next instance
    /// checks that the first exit it gets is that one, re-sent by the kernel.
    pub inflight: u64,
    /// First exits of new instances that were the crashed instance's unanswered exit.
    pub resent: u32,
}

/// A hash of an exit message's bytes (FNV-1a, never 0).
pub fn message_hash(bytes: &[u8]) -> u64 {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    h.max(1)
}

/// The journal over its page.
pub struct Journal<'a> {
    page: &'a mut [u8],
}

impl<'a> Journal<'a> {
    /// The journal in `page` (at least [`PAGE`] bytes; a zeroed page is an empty journal).
    pub fn new(page: &'a mut [u8]) -> Option<Self> {
        (page.len() >= PAGE).then_some(Journal { page })
    }

    fn read_slot<T: for<'de> Deserialize<'de>>(&self, at: usize) -> Option<T> {
        let slot = &self.page[at..at + SLOT];
        if slot[0] != VALID {
            return None;
        }
        let len = usize::from(slot[1]).min(SLOT - 2);
        postcard::from_bytes(&slot[2..2 + len]).ok()
    }

    /// Writes `value` to the slot at `at`: uncommitted first, the bytes, then committed.
    fn write_slot<T: Serialize>(&mut self, at: usize, value: Option<&T>) {
        self.page[at] = EMPTY;
        let Some(value) = value else {
            return;
        };
        let mut bytes = [0u8; SLOT - 2];
        let Ok(used) = postcard::to_slice(value, &mut bytes) else {
            return;
        };
        let len = used.len();
        self.page[at + 2..at + 2 + len].copy_from_slice(&bytes[..len]);
        self.page[at + 1] = len as u8;
        self.page[at] = VALID;
    }

    pub fn header(&self) -> Header {
        self.read_slot(0).unwrap_or_default()
    }

    pub fn set_header(&mut self, h: &Header) {
        self.write_slot(0, Some(h));
    }

    /// VM `handle`'s record, if committed.
    pub fn record(&self, handle: u32) -> Option<VmRecord> {
        let h = handle as usize;
        (h < MAX_VMS)
            .then(|| self.read_slot(SLOT * (1 + h)))
            .flatten()
    }

    /// Commits (or with `None` clears) VM `handle`'s record.
    pub fn set_record(&mut self, handle: u32, r: Option<&VmRecord>) {
        let h = handle as usize;
        if h < MAX_VMS {
            self.write_slot(SLOT * (1 + h), r);
        }
    }

    /// Records one restart cost (TSC ticks from the crash until the guest ran again).
    pub fn add_cost(&mut self, ticks: u64) {
        let mut h = self.header();
        let at = COSTS_AT + (h.costs as usize % MAX_COSTS) * 8;
        self.page[at..at + 8].copy_from_slice(&ticks.to_le_bytes());
        h.costs = h.costs.saturating_add(1);
        h.crash_tsc = 0;
        self.set_header(&h);
    }

    /// (count, median, max) of the restart costs kept.
    pub fn cost_summary(&self) -> (u32, u64, u64) {
        let n = (self.header().costs as usize).min(MAX_COSTS);
        let mut v = [0u64; MAX_COSTS];
        for (i, c) in v.iter_mut().take(n).enumerate() {
            let at = COSTS_AT + i * 8;
            let mut b = [0u8; 8];
            b.copy_from_slice(&self.page[at..at + 8]);
            *c = u64::from_le_bytes(b);
        }
        let v = &mut v[..n];
        v.sort_unstable();
        let median = if n == 0 { 0 } else { v[n / 2] };
        (self.header().costs, median, v.last().copied().unwrap_or(0))
    }
}

/// SplitMix64: the crash decisions are a function of the seed, the generation and the exit
/// count only, so a run is repeatable.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// How the service dies when it is made to crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashKind {
    PageFault,
    InvalidOpcode,
    GeneralProtection,
    Panic,
    /// A page fault after this many more writes of shadow entries (or at the end of the exit
    /// if it writes fewer).
    MidWrite(u32),
}

/// Whether to crash at the `exit`-th exit this instance handles (counting from 1), and how.
pub fn crash_at(inj: &Injection, generation: u64, exit: u64) -> Option<CrashKind> {
    if inj.every == 0 || inj.done >= inj.limit || (inj.spare_first && exit == 1) {
        return None;
    }
    let r = mix(inj.seed ^ mix(generation ^ mix(exit)));
    if !r.is_multiple_of(u64::from(inj.every)) {
        return None;
    }
    Some(match (r >> 32) % 5 {
        0 => CrashKind::PageFault,
        1 => CrashKind::InvalidOpcode,
        2 => CrashKind::GeneralProtection,
        3 => CrashKind::Panic,
        _ => CrashKind::MidWrite(1 + ((r >> 40) % 8) as u32),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ShadowParams {
        ShadowParams {
            prev_roots: 8,
            pool_pages: 512,
            kvm_policy: false,
            maxphyaddr: 40,
            gbpages: true,
        }
    }

    #[test]
    fn records_survive_in_the_page_and_a_torn_write_reads_as_absent() {
        let mut page = [0u8; PAGE];
        let mut j = Journal::new(&mut page).unwrap();
        assert_eq!(j.record(0), None);
        assert_eq!(j.header(), Header::default());
        let r = VmRecord {
            key: 0x1234_5678_9abc,
            ram_pages: 16384,
            shadow: Some(params()),
            ram: true,
            vcpus: 1,
        };
        j.set_record(2, Some(&r));
        let mut h = j.header();
        h.crashes = 7;
        j.set_header(&h);
        // A new instance reads the same page.
        let j = Journal::new(&mut page).unwrap();
        assert_eq!(j.record(2), Some(r));
        assert_eq!(j.record(1), None);
        assert_eq!(j.record(99), None);
        assert_eq!(j.header().crashes, 7);
        // A crash between clearing the commit byte and committing leaves no record.
        page[SLOT * 3] = EMPTY;
        assert_eq!(Journal::new(&mut page).unwrap().record(2), None);
    }

    #[test]
    fn the_largest_record_fits_its_slot() {
        let r = VmRecord {
            key: u64::MAX,
            ram_pages: u64::MAX,
            shadow: Some(ShadowParams {
                pool_pages: u32::MAX,
                ..params()
            }),
            ram: true,
            vcpus: u8::MAX,
        };
        let h = Header {
            injection: Injection {
                every: u32::MAX,
                limit: u32::MAX,
                done: u32::MAX,
                spare_first: true,
                seed: u64::MAX,
            },
            crashes: u32::MAX,
            recoveries: u32::MAX,
            crash_tsc: u64::MAX,
            costs: u32::MAX,
            inflight: u64::MAX,
            resent: u32::MAX,
        };
        let mut page = [0u8; PAGE];
        let mut j = Journal::new(&mut page).unwrap();
        j.set_record(MAX_VMS as u32 - 1, Some(&r));
        j.set_header(&h);
        assert_eq!(j.record(MAX_VMS as u32 - 1), Some(r));
        assert_eq!(j.header(), h);
    }

    #[test]
    fn costs_give_a_median_and_a_maximum() {
        let mut page = [0u8; PAGE];
        let mut j = Journal::new(&mut page).unwrap();
        assert_eq!(j.cost_summary(), (0, 0, 0));
        for c in [5, 1, 9, 3, 7] {
            j.add_cost(c);
        }
        assert_eq!(j.cost_summary(), (5, 5, 9));
        for _ in 0..MAX_COSTS {
            j.add_cost(2);
        }
        let (n, median, max) = j.cost_summary();
        assert_eq!((n, median, max), (5 + MAX_COSTS as u32, 2, 2));
    }

    #[test]
    fn crash_decisions_are_repeatable_and_follow_the_plan() {
        let inj = Injection {
            every: 3,
            limit: 100,
            done: 0,
            spare_first: true,
            seed: 42,
        };
        let a: std::vec::Vec<_> = (1..200).map(|e| crash_at(&inj, 5, e)).collect();
        let b: std::vec::Vec<_> = (1..200).map(|e| crash_at(&inj, 5, e)).collect();
        assert_eq!(a, b);
        assert_eq!(a[0], None, "the first exit of an instance is spared");
        let crashes = a.iter().filter(|c| c.is_some()).count();
        assert!((30..100).contains(&crashes), "{crashes} of 199 at one in 3");
        let every_kind = [0u8, 1, 2, 3, 4].map(|k| {
            a.iter().any(|c| {
                matches!(
                    (k, c),
                    (0, Some(CrashKind::PageFault))
                        | (1, Some(CrashKind::InvalidOpcode))
                        | (2, Some(CrashKind::GeneralProtection))
                        | (3, Some(CrashKind::Panic))
                        | (4, Some(CrashKind::MidWrite(1..=8)))
                )
            })
        });
        assert_eq!(every_kind, [true; 5]);
        // Off, at the limit, or one in one without the spare: as configured.
        assert_eq!(crash_at(&Injection::default(), 1, 7), None);
        let spent = Injection { done: 100, ..inj };
        assert!((1..200).all(|e| crash_at(&spent, 5, e).is_none()));
        let always = Injection {
            every: 1,
            spare_first: false,
            ..inj
        };
        assert!((1..50).all(|e| crash_at(&always, 9, e).is_some()));
    }
}
