//! Counters kept by the MMU.

use crate::role::PagingMode;

/// Index of a paging mode in the per-mode counters.
pub fn mode_index(mode: PagingMode) -> usize {
    match mode {
        PagingMode::NonPaging => 0,
        PagingMode::TwoLevel => 1,
        PagingMode::Pae => 2,
        PagingMode::FourLevel => 3,
    }
}

/// Statistics of an [`Mmu`](crate::Mmu).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Page faults handed to the MMU.
    pub faults_handled: u64,
    /// Faults fixed by building shadow entries (the guest retries).
    pub faults_fixed: u64,
    /// #PFs injected into the guest.
    pub pf_injected: u64,
    /// Writes to a page table used by their own translation, left to the VMM to emulate.
    pub emulate_writes: u64,
    /// Faults on guest-physical addresses outside RAM.
    pub mmio_faults: u64,
    /// Shadow pages zapped (all causes).
    pub zaps: u64,
    /// Of those, zapped because their guest page table was written: unprotected after a
    /// write that could not be emulated, written misaligned, or write-flooded.
    pub write_zaps: u64,
    /// Sptes dropped because the gpte they were built from was written.
    pub write_sptes_dropped: u64,
    /// Of those, zapped to reclaim frames under pool pressure.
    pub reclaim_zaps: u64,
    /// Previous roots freed to reclaim frames.
    pub reclaim_root_frees: u64,
    /// Shadow pages created.
    pub sp_created: u64,
    /// INVLPGs handled.
    pub invlpg: u64,
    /// Roots built from scratch (CR3 miss, new mode, obsolete or zapped root).
    pub roots_built: u64,
    /// CR3 loads / paging changes that found a usable root (current or previous), by
    /// [`mode_index`].
    pub prev_roots_hits: [u64; 4],
    /// CR3 loads / paging changes that had to build a root, by [`mode_index`].
    pub prev_roots_misses: [u64; 4],
    /// `invalidate_all` calls.
    pub invalidate_all: u64,
    /// Frames in the pool.
    pub pool_frames: usize,
    /// Frames in use (shadow pages and per-vCPU root pages).
    pub pool_used: usize,
    /// Frames free.
    pub pool_free: usize,
}

impl Stats {
    /// Hit rate of the fast CR3 switch for `mode` (0.0 when there was no switch).
    pub fn hit_rate(&self, mode: PagingMode) -> f64 {
        let i = mode_index(mode);
        let total = self.prev_roots_hits[i] + self.prev_roots_misses[i];
        if total == 0 {
            0.0
        } else {
            self.prev_roots_hits[i] as f64 / total as f64
        }
    }
}
