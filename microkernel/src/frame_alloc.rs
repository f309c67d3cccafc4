//! The physical frame allocator: one bit per 4 KiB frame over the span of usable RAM.
//!
//! A set bit is a free frame. Allocation takes the lowest free frame that fits the request;
//! callers that need memory below a limit (a PAE root below 4 GiB, a 32-bit device) ask with
//! `alloc_below`. The bitmap's storage is handed in by the caller (the kernel carves it out of
//! usable RAM; tests use a `Vec`).

use crate::memmap::{MemoryMap, RegionKind};
use crate::PAGE_SIZE;
use heapless::Vec;

/// Why a frame could not be freed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeError {
    /// The address is not the start of a frame.
    Unaligned,
    /// The frame is not usable RAM this allocator manages.
    NotManaged,
    /// The frame is already free (a double free).
    AlreadyFree,
}

/// Why the allocator could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The storage handed in is smaller than [`FrameAllocator::bitmap_words`] says.
    BitmapTooSmall { needed: usize, given: usize },
    /// More usable regions than the allocator tracks.
    TooManyRegions,
}

/// Most usable regions the allocator tracks.
const MAX_USABLE_REGIONS: usize = 64;

pub struct FrameAllocator<'b> {
    /// Bit `i` of word `w` is frame `first_frame + 64 * w + i`; set means free.
    bitmap: &'b mut [u64],
    first_frame: u64,
    frame_count: u64,
    free_frames: u64,
    total_frames: u64,
    /// No word below this index has a free bit.
    first_free_word: usize,
    /// The usable ranges, as frame numbers `[start, end)`: only these can be freed.
    managed: Vec<(u64, u64), MAX_USABLE_REGIONS>,
}

impl core::fmt::Debug for FrameAllocator<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FrameAllocator")
            .field("first_frame", &self.first_frame)
            .field("frame_count", &self.frame_count)
            .field("free_frames", &self.free_frames)
            .finish()
    }
}

impl<'b> FrameAllocator<'b> {
    /// The frame-number span `[first, end)` covering every usable region of `map`.
    fn span(map: &MemoryMap) -> (u64, u64) {
        let first = map.usable().next().map_or(0, |r| r.start / PAGE_SIZE);
        let end = map.usable().last().map_or(0, |r| r.end / PAGE_SIZE);
        (first, end.max(first))
    }

    /// How many `u64` words of bitmap the allocator needs for `map`.
    pub fn bitmap_words(map: &MemoryMap) -> usize {
        let (first, end) = Self::span(map);
        (end - first).div_ceil(64) as usize
    }

    /// Builds the allocator with every usable frame of `map` free. `bitmap` must not itself be
    /// usable in `map` (reserve it first).
    pub fn new(map: &MemoryMap, bitmap: &'b mut [u64]) -> Result<Self, InitError> {
        let needed = Self::bitmap_words(map);
        if bitmap.len() < needed {
            return Err(InitError::BitmapTooSmall {
                needed,
                given: bitmap.len(),
            });
        }
        let (first_frame, end_frame) = Self::span(map);
        bitmap.fill(0);
        let mut alloc = FrameAllocator {
            bitmap,
            first_frame,
            frame_count: end_frame - first_frame,
            free_frames: 0,
            total_frames: 0,
            first_free_word: 0,
            managed: Vec::new(),
        };
        for region in map.usable() {
            debug_assert_eq!(region.kind, RegionKind::Usable);
            let (start, end) = (region.start / PAGE_SIZE, region.end / PAGE_SIZE);
            alloc
                .managed
                .push((start, end))
                .map_err(|_| InitError::TooManyRegions)?;
            for frame in start..end {
                alloc.set_free(frame, true);
            }
            alloc.total_frames += end - start;
        }
        alloc.free_frames = alloc.total_frames;
        Ok(alloc)
    }

    /// Frames currently free.
    pub fn free_frames(&self) -> u64 {
        self.free_frames
    }

    /// Usable frames managed, free or not.
    pub fn total_frames(&self) -> u64 {
        self.total_frames
    }

    /// Allocates one frame anywhere; returns its physical address.
    pub fn alloc(&mut self) -> Option<u64> {
        self.alloc_contiguous(1, PAGE_SIZE, u64::MAX)
    }

    /// Allocates one frame that ends at or below `limit`.
    pub fn alloc_below(&mut self, limit: u64) -> Option<u64> {
        self.alloc_contiguous(1, PAGE_SIZE, limit)
    }

    /// Allocates `count` physically contiguous frames starting at a multiple of `align` (a power
    /// of two, at least a page) and ending at or below `limit`.
    pub fn alloc_contiguous(&mut self, count: u64, align: u64, limit: u64) -> Option<u64> {
        if count == 0 || !align.is_power_of_two() || align < PAGE_SIZE {
            return None;
        }
        let align_frames = align / PAGE_SIZE;
        let limit_frame = (limit / PAGE_SIZE).min(self.first_frame + self.frame_count);
        let mut frame = self.first_frame + (self.first_free_word as u64) * 64;
        frame = frame.next_multiple_of(align_frames);
        while frame + count <= limit_frame {
            if count == 1 && self.bitmap[self.word_of(frame)] == 0 {
                // Skip a fully allocated word at once.
                frame = (self.first_frame + (self.word_of(frame) as u64 + 1) * 64)
                    .next_multiple_of(align_frames);
                continue;
            }
            match (frame..frame + count).find(|&f| !self.is_free_frame(f)) {
                None => {
                    for f in frame..frame + count {
                        self.set_free(f, false);
                    }
                    self.free_frames -= count;
                    self.advance_first_free_word();
                    return Some(frame * PAGE_SIZE);
                }
                Some(busy) => frame = (busy + 1).next_multiple_of(align_frames),
            }
        }
        None
    }

    /// Returns a frame to the allocator.
    pub fn free(&mut self, addr: u64) -> Result<(), FreeError> {
        if !addr.is_multiple_of(PAGE_SIZE) {
            return Err(FreeError::Unaligned);
        }
        let frame = addr / PAGE_SIZE;
        if !self.managed.iter().any(|&(s, e)| s <= frame && frame < e) {
            return Err(FreeError::NotManaged);
        }
        if self.is_free_frame(frame) {
            return Err(FreeError::AlreadyFree);
        }
        self.set_free(frame, true);
        self.free_frames += 1;
        self.first_free_word = self.first_free_word.min(self.word_of(frame));
        Ok(())
    }

    /// Whether the frame at `addr` is managed and free.
    pub fn is_free(&self, addr: u64) -> bool {
        let frame = addr / PAGE_SIZE;
        frame >= self.first_frame
            && frame < self.first_frame + self.frame_count
            && self.is_free_frame(frame)
    }

    fn word_of(&self, frame: u64) -> usize {
        ((frame - self.first_frame) / 64) as usize
    }

    fn is_free_frame(&self, frame: u64) -> bool {
        let bit = (frame - self.first_frame) % 64;
        self.bitmap[self.word_of(frame)] & (1 << bit) != 0
    }

    fn set_free(&mut self, frame: u64, free: bool) {
        let word = self.word_of(frame);
        let bit = 1u64 << ((frame - self.first_frame) % 64);
        if free {
            self.bitmap[word] |= bit;
        } else {
            self.bitmap[word] &= !bit;
        }
    }

    fn advance_first_free_word(&mut self) {
        while self.first_free_word < self.bitmap.len() && self.bitmap[self.first_free_word] == 0 {
            self.first_free_word += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memmap::Region;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn map(regions: &[(u64, u64)]) -> MemoryMap {
        let raw: std::vec::Vec<Region> = regions
            .iter()
            .map(|&(s, e)| Region {
                start: s,
                end: e,
                kind: RegionKind::Usable,
            })
            .collect();
        MemoryMap::from_raw(&raw).unwrap()
    }

    #[test]
    fn allocates_lowest_first_and_only_usable_frames() {
        let m = map(&[(0x1000, 0x3000), (0x10_0000, 0x10_2000)]);
        let mut bits = vec![0; FrameAllocator::bitmap_words(&m)];
        let mut a = FrameAllocator::new(&m, &mut bits).unwrap();
        assert_eq!(a.total_frames(), 4);
        let got: std::vec::Vec<_> = (0..4).map(|_| a.alloc().unwrap()).collect();
        assert_eq!(got, [0x1000, 0x2000, 0x10_0000, 0x10_1000]);
        assert_eq!(a.alloc(), None);
        assert_eq!(a.free_frames(), 0);
    }

    #[test]
    fn free_rejects_bad_addresses_and_double_frees() {
        let m = map(&[(0x1000, 0x5000)]);
        let mut bits = vec![0; 1];
        let mut a = FrameAllocator::new(&m, &mut bits).unwrap();
        let f = a.alloc().unwrap();
        assert_eq!(a.free(f + 8), Err(FreeError::Unaligned));
        assert_eq!(a.free(0x9000), Err(FreeError::NotManaged));
        assert_eq!(a.free(f), Ok(()));
        assert_eq!(a.free(f), Err(FreeError::AlreadyFree));
        assert_eq!(a.free_frames(), 4);
    }

    #[test]
    fn contiguous_aligned_and_limited() {
        let m = map(&[(0x1000, 0x40_0000)]);
        let mut bits = vec![0; FrameAllocator::bitmap_words(&m)];
        let mut a = FrameAllocator::new(&m, &mut bits).unwrap();
        a.alloc().unwrap();
        let c = a.alloc_contiguous(16, 0x1_0000, u64::MAX).unwrap();
        assert_eq!(c, 0x1_0000);
        assert!((0..16).all(|i| !a.is_free(c + i * PAGE_SIZE)));
        assert_eq!(a.alloc_contiguous(0x400, PAGE_SIZE, u64::MAX), None);
        assert_eq!(a.alloc_below(0x2000), None);
        assert_eq!(a.alloc_below(0x3000), Some(0x2000));
        assert_eq!(a.alloc_contiguous(1, 3 * PAGE_SIZE, u64::MAX), None);
    }

    #[test]
    fn small_bitmap_is_an_error() {
        let m = map(&[(0, 0x100_0000)]);
        let mut bits = vec![0; 3];
        assert_eq!(
            FrameAllocator::new(&m, &mut bits).unwrap_err(),
            InitError::BitmapTooSmall {
                needed: 64,
                given: 3
            }
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        Alloc,
        AllocBelow(u64),
        Contig(u64, u32),
        Free(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Alloc),
            1 => (1u64..300).prop_map(|f| Op::AllocBelow(f * PAGE_SIZE)),
            1 => (1u64..9, 0u32..4).prop_map(|(n, a)| Op::Contig(n, a)),
            3 => any::<usize>().prop_map(Op::Free),
        ]
    }

    proptest! {
        /// Against a model (the set of allocated frames): allocations are free usable frames
        /// meeting every constraint, nothing is handed out twice, counts stay exact.
        #[test]
        fn matches_a_set_model(
            regions in prop::collection::vec((0u64..40, 1u64..40), 1..6),
            ops in prop::collection::vec(op(), 1..200),
        ) {
            let raw: std::vec::Vec<(u64, u64)> = regions
                .iter()
                .map(|&(s, l)| (s * 7 * PAGE_SIZE, (s * 7 + l) * PAGE_SIZE))
                .collect();
            let m = map(&raw);
            let usable: BTreeSet<u64> = m
                .usable()
                .flat_map(|r| (r.start / PAGE_SIZE)..(r.end / PAGE_SIZE))
                .collect();
            let mut bits = vec![0; FrameAllocator::bitmap_words(&m)];
            let mut a = FrameAllocator::new(&m, &mut bits).unwrap();
            let mut held: BTreeSet<u64> = BTreeSet::new();
            prop_assert_eq!(a.total_frames(), usable.len() as u64);
            for op in ops {
                match op {
                    Op::Alloc | Op::AllocBelow(_) | Op::Contig(..) => {
                        let (count, align, limit) = match op {
                            Op::Alloc => (1, PAGE_SIZE, u64::MAX),
                            Op::AllocBelow(l) => (1, PAGE_SIZE, l),
                            Op::Contig(n, a) => (n, PAGE_SIZE << a, u64::MAX),
                            Op::Free(_) => unreachable!(),
                        };
                        let got = a.alloc_contiguous(count, align, limit);
                        // The model's answer: the lowest fitting run of free usable frames.
                        let want = usable.iter().copied().find(|&f| {
                            (f * PAGE_SIZE).is_multiple_of(align)
                                && (f + count) * PAGE_SIZE <= limit
                                && (f..f + count).all(|g| usable.contains(&g) && !held.contains(&g))
                        });
                        prop_assert_eq!(got, want.map(|f| f * PAGE_SIZE));
                        if let Some(f) = want {
                            held.extend(f..f + count);
                        }
                    }
                    Op::Free(i) => {
                        if held.is_empty() {
                            continue;
                        }
                        let f = *held.iter().nth(i % held.len()).unwrap();
                        prop_assert_eq!(a.free(f * PAGE_SIZE), Ok(()));
                        held.remove(&f);
                    }
                }
                prop_assert_eq!(a.free_frames(), usable.len() as u64 - held.len() as u64);
            }
        }
    }
}
