//! The [`Mmu`] object: configuration, construction, errors and generation-based invalidation.

use alloc::vec::Vec;

use crate::role::UnsupportedMode;
use crate::shadow_page::{Heads, ShadowPage, NONE};
use crate::stats::Stats;
use crate::traits::{GuestMemory, MemoryError, ShadowPagePool};

/// Tunables of an [`Mmu`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmuConfig {
    /// Number of previous roots each vCPU keeps for the fast CR3 switch (KVM: 3). At most 30.
    pub prev_roots: usize,
    /// Guest MAXPHYADDR: physical-address bits beyond it are reserved in gptes.
    pub maxphyaddr: u8,
    /// The guest's CPUID offers 1 GiB pages (otherwise PS in a PDPTE is a reserved bit).
    pub gbpages: bool,
    /// When fewer frames than this are free before a fault or a root build, the oldest unused
    /// shadow pages are zapped.
    pub min_free_frames: usize,
    /// How many frames beyond `min_free_frames` one reclaim frees, so that reclaim runs in
    /// batches rather than on every fault.
    pub reclaim_batch: usize,
    /// Cache per-vCPU (PAE) root sets in `prev_roots` (Umbra); `false` is Linux KVM's policy,
    /// which frees the current root on every CR3 load when it is a per-vCPU root.
    pub cache_pae_roots: bool,
}

impl Default for MmuConfig {
    fn default() -> Self {
        MmuConfig {
            prev_roots: 4,
            maxphyaddr: 46,
            gbpages: true,
            min_free_frames: 8,
            reclaim_batch: 8,
            cache_pae_roots: true,
        }
    }
}

/// Errors. None of them is a panic; those a guest can cause are noted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The pool has no free frame and nothing can be reclaimed (every page is a root).
    OutOfShadowPages,
    /// No frame below 4 GiB is free for a per-vCPU PAE root page.
    NoFrameBelow4G,
    /// The configuration or the sizes given to [`Mmu::new`] cannot work.
    BadConfig,
    /// A guest page table (or the CR3 target) lies outside guest RAM (guest-caused).
    GuestTableOutsideRam {
        /// The guest-physical address that could not be read.
        gpa: u64,
    },
    /// A PAE CR3 load found reserved bits in a PDPTE: the VMM injects #GP (guest-caused).
    InvalidPdpte,
    /// 5-level paging is not supported (guest-caused).
    UnsupportedPagingMode,
    /// The guest kept changing a gpte while its accessed/dirty bits were being set.
    WalkRaced,
    /// An internal invariant did not hold (a bug in this crate, reported instead of panicking).
    Internal,
    /// The heap cannot hold the tables for this pool and RAM size.
    NoHeap,
}

/// `n` copies of `value`, or [`Error::NoHeap`] instead of the allocator's abort.
pub(crate) fn try_vec<T: Clone>(value: T, n: usize) -> Result<Vec<T>, Error> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::NoHeap)?;
    v.resize(n, value);
    Ok(v)
}

impl From<MemoryError> for Error {
    fn from(e: MemoryError) -> Self {
        Error::GuestTableOutsideRam { gpa: e.gpa }
    }
}

impl From<UnsupportedMode> for Error {
    fn from(_: UnsupportedMode) -> Self {
        Error::UnsupportedPagingMode
    }
}

/// The shadow MMU of one VM: the shadow pages shared by its vCPUs, generic over guest memory
/// and the frame pool. Per-vCPU state (roots, `prev_roots`, `pae_root`) lives in
/// [`Vcpu`](crate::roots::Vcpu) values passed to the methods.
pub struct Mmu<M, P> {
    pub(crate) mem: M,
    pub(crate) pool: P,
    pub(crate) config: MmuConfig,
    /// Per frame: the shadow page it holds (if any).
    pub(crate) sps: Vec<ShadowPage>,
    /// Per spte (frame * 512 + index): the child shadow page (non-leaf) or the gfn (leaf).
    pub(crate) aux: Vec<u32>,
    /// Per spte: next spte in the chain it belongs to (the child's parent list or the gfn's
    /// reverse map).
    pub(crate) link: Vec<u32>,
    /// Free frames at or above 4 GiB, then below.
    pub(crate) free_high: Vec<u32>,
    pub(crate) free_low: Vec<u32>,
    /// Per gfn: first shadow page for that gfn (the `(gfn, role)` index; KVM's `mmu_page_hash`).
    pub(crate) gfn_sp_head: Heads,
    /// Per gfn: first leaf spte mapping it (KVM's rmap).
    pub(crate) rmap_head: Heads,
    /// Per gfn: number of indirect shadow pages shadowing it (KVM's write tracking).
    pub(crate) write_track: Vec<u32>,
    /// Oldest and newest shadow page in LRU order.
    pub(crate) lru_head: u32,
    pub(crate) lru_tail: u32,
    /// The current generation (KVM's `mmu_valid_gen`).
    pub(crate) gen: u64,
    pub(crate) stats: Stats,
}

impl<M: GuestMemory, P: ShadowPagePool> Mmu<M, P> {
    /// Builds an MMU over `mem` and `pool`. All of the MMU's heap is allocated here.
    pub fn new(mem: M, pool: P, config: MmuConfig) -> Result<Self, Error> {
        let frames = pool.frame_count();
        let ram = mem.ram_pages();
        if frames == 0
            || frames >= (u32::MAX as usize) / 512
            || ram >= u64::from(u32::MAX)
            || config.prev_roots > 30
            || !(32..=52).contains(&config.maxphyaddr)
        {
            return Err(Error::BadConfig);
        }
        let ram = ram as usize;
        let mut free_high = try_vec(0u32, 0)?;
        let mut free_low = try_vec(0u32, 0)?;
        free_high
            .try_reserve_exact(frames)
            .map_err(|_| Error::NoHeap)?;
        free_low
            .try_reserve_exact(frames)
            .map_err(|_| Error::NoHeap)?;
        // Pushed in reverse so that frame 0 is handed out first.
        for f in (0..frames).rev() {
            if pool.frame_hpa(f) < (1u64 << 32) {
                free_low.push(f as u32);
            } else {
                free_high.push(f as u32);
            }
        }
        let stats = Stats {
            pool_frames: frames,
            ..Stats::default()
        };
        Ok(Mmu {
            mem,
            pool,
            config,
            sps: try_vec(ShadowPage::FREE, frames)?,
            aux: try_vec(NONE, frames * 512)?,
            link: try_vec(NONE, frames * 512)?,
            free_high,
            free_low,
            gfn_sp_head: Heads::new(ram)?,
            rmap_head: Heads::new(ram)?,
            write_track: try_vec(0, ram)?,
            lru_head: NONE,
            lru_tail: NONE,
            gen: 0,
            stats,
        })
    }

    /// Marks every shadow page and root obsolete, in O(1) (KVM's fast zap of `mmu_valid_gen`).
    /// Obsolete pages stay write-protecting their guest tables until they are reclaimed, so a vCPU
    /// still running on an obsolete root stays coherent; the next exit rebuilds its root.
    pub fn invalidate_all(&mut self) {
        self.gen += 1;
        self.stats.invalidate_all += 1;
    }

    /// Statistics, with the pool figures filled in.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.pool_free = self.free_frames();
        s.pool_used = s.pool_frames - s.pool_free;
        s
    }

    /// The configuration.
    pub fn config(&self) -> &MmuConfig {
        &self.config
    }

    /// Guest memory.
    pub fn mem(&self) -> &M {
        &self.mem
    }

    /// Guest memory, mutable. Writing a shadowed guest page table through this bypasses write
    /// tracking: use [`Mmu::emulated_write`] for guest writes the VMM performs.
    pub fn mem_mut(&mut self) -> &mut M {
        &mut self.mem
    }

    /// The frame pool (read-only: the tables in it belong to the MMU).
    pub fn pool(&self) -> &P {
        &self.pool
    }

    /// Number of free frames.
    pub fn free_frames(&self) -> usize {
        self.free_high.len() + self.free_low.len()
    }
}
