//! The physical memory map: what the loader reported, normalised into sorted, non-overlapping,
//! page-aligned regions, with the kernel's own reservations carved out.
//!
//! Loaders report overlapping and unaligned entries (firmware maps are like that); normalising
//! gives every later consumer a single, simple view: where regions overlap, the more restrictive
//! kind wins, and usable memory is trimmed inward to whole pages.

use crate::PAGE_SIZE;
use heapless::Vec;

/// What a range of physical memory is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// Free RAM the frame allocator may hand out.
    Usable,
    /// RAM the loader used for its own structures (Limine's page tables, stack, responses).
    BootloaderReclaimable,
    /// ACPI tables; RAM once the tables have been read.
    AcpiReclaimable,
    /// ACPI non-volatile storage.
    AcpiNvs,
    /// Firmware, MMIO holes and anything else the loader says not to touch.
    Reserved,
    /// RAM the firmware found faulty.
    BadMemory,
    /// A framebuffer.
    Framebuffer,
    /// The kernel image.
    Kernel,
    /// Boot modules (service and guest images).
    Modules,
    /// Structures the loader handed over (the Multiboot2 information block, low memory).
    BootData,
    /// The frame allocator's own bitmap.
    AllocatorMetadata,
}

impl RegionKind {
    /// Which kind wins where two reported regions overlap: anything beats usable RAM,
    /// and the kernel's own reservations beat what the firmware said.
    fn precedence(self) -> u8 {
        match self {
            RegionKind::Usable => 0,
            RegionKind::BootloaderReclaimable => 1,
            RegionKind::AcpiReclaimable => 2,
            RegionKind::AcpiNvs => 3,
            RegionKind::Framebuffer => 4,
            RegionKind::Reserved => 5,
            RegionKind::BadMemory => 6,
            RegionKind::BootData => 7,
            RegionKind::Modules => 8,
            RegionKind::Kernel => 9,
            RegionKind::AllocatorMetadata => 10,
        }
    }
}

/// A half-open physical range `[start, end)` of one kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub kind: RegionKind,
}

impl Region {
    /// A region from a base and a length; the end saturates at the top of the address space.
    pub fn new(start: u64, len: u64, kind: RegionKind) -> Self {
        Self {
            start,
            end: start.saturating_add(len),
            kind,
        }
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

/// Why a memory map could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// More distinct regions than the map has room for.
    TooManyRegions,
}

/// Most regions a map holds after normalisation.
pub const MAX_REGIONS: usize = 128;

/// A normalised memory map: sorted by address, non-overlapping, adjacent regions of one kind
/// merged, usable regions page-aligned. Holes are memory nobody reported.
#[derive(Clone, Debug, Default)]
pub struct MemoryMap {
    regions: Vec<Region, MAX_REGIONS>,
}

impl MemoryMap {
    /// Normalises raw loader entries. Empty entries are ignored.
    pub fn from_raw(raw: &[Region]) -> Result<Self, MapError> {
        let mut map = MemoryMap::default();
        map.overlay(raw)?;
        Ok(map)
    }

    /// The normalised regions, in address order.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// The usable regions, in address order.
    pub fn usable(&self) -> impl Iterator<Item = &Region> + '_ {
        self.regions.iter().filter(|r| r.kind == RegionKind::Usable)
    }

    /// Bytes of usable RAM.
    pub fn usable_bytes(&self) -> u64 {
        self.usable().map(Region::len).sum()
    }

    /// The end of the highest region of any kind (0 for an empty map).
    pub fn max_end(&self) -> u64 {
        self.regions.last().map_or(0, |r| r.end)
    }

    /// The kind of memory at `addr`, or `None` in a hole.
    pub fn kind_at(&self, addr: u64) -> Option<RegionKind> {
        self.regions
            .iter()
            .find(|r| r.contains(addr))
            .map(|r| r.kind)
    }

    /// Marks `[start, end)` as `kind`, overriding anything of lower precedence there.
    pub fn reserve(&mut self, start: u64, end: u64, kind: RegionKind) -> Result<(), MapError> {
        self.overlay(&[Region { start, end, kind }])
    }

    /// The lowest `align`-aligned start of `size` usable bytes ending at or below `limit`.
    pub fn find_usable(&self, size: u64, align: u64, limit: u64) -> Option<u64> {
        let align = align.max(1);
        self.usable().find_map(|r| {
            let start = r.start.checked_next_multiple_of(align)?;
            let end = start.checked_add(size)?;
            (end <= r.end && end <= limit).then_some(start)
        })
    }

    /// Recomputes the map with `extra` laid over the current regions.
    fn overlay(&mut self, extra: &[Region]) -> Result<(), MapError> {
        // Every region boundary, sorted: between two consecutive boundaries the covering set of
        // regions is constant, so the winning kind is too.
        let mut points: Vec<u64, { 2 * (MAX_REGIONS + 16) }> = Vec::new();
        let all = || {
            self.regions
                .iter()
                .chain(extra.iter())
                .filter(|r| !r.is_empty())
        };
        for r in all() {
            points.push(r.start).map_err(|_| MapError::TooManyRegions)?;
            points.push(r.end).map_err(|_| MapError::TooManyRegions)?;
        }
        points.sort_unstable();

        let mut out: Vec<Region, MAX_REGIONS> = Vec::new();
        for pair in points.windows(2) {
            let (start, end) = (pair[0], pair[1]);
            if start == end {
                continue;
            }
            let winner = all()
                .filter(|r| r.start <= start && end <= r.end)
                .map(|r| r.kind)
                .max_by_key(|k| k.precedence());
            let Some(kind) = winner else { continue };
            match out.last_mut() {
                Some(last) if last.kind == kind && last.end == start => last.end = end,
                _ => out
                    .push(Region { start, end, kind })
                    .map_err(|_| MapError::TooManyRegions)?,
            }
        }

        // Usable RAM is only usable in whole pages.
        out.retain_mut(|r| {
            if r.kind == RegionKind::Usable {
                r.start = r.start.next_multiple_of(PAGE_SIZE);
                r.end -= r.end % PAGE_SIZE;
            }
            r.start < r.end
        });
        self.regions = out;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use RegionKind::*;

    fn r(start: u64, end: u64, kind: RegionKind) -> Region {
        Region { start, end, kind }
    }

    #[test]
    fn overlap_resolves_to_the_stricter_kind() {
        let map =
            MemoryMap::from_raw(&[r(0, 0x10_0000, Usable), r(0x8000, 0x9000, Reserved)]).unwrap();
        assert_eq!(
            map.regions(),
            &[
                r(0, 0x8000, Usable),
                r(0x8000, 0x9000, Reserved),
                r(0x9000, 0x10_0000, Usable)
            ]
        );
    }

    #[test]
    fn usable_is_trimmed_to_pages_and_adjacent_regions_merge() {
        let map = MemoryMap::from_raw(&[
            r(0x123, 0x5000, Usable),
            r(0x5000, 0x7fff, Usable),
            r(0x9000, 0xa000, AcpiNvs),
            r(0xa000, 0xb000, AcpiNvs),
        ])
        .unwrap();
        assert_eq!(
            map.regions(),
            &[r(0x1000, 0x7000, Usable), r(0x9000, 0xb000, AcpiNvs)]
        );
        assert_eq!(map.usable_bytes(), 0x6000);
        assert_eq!(map.max_end(), 0xb000);
        assert_eq!(map.kind_at(0x8000), None);
    }

    #[test]
    fn reserve_carves_and_find_usable_respects_alignment_and_limit() {
        let mut map = MemoryMap::from_raw(&[r(0x10_0000, 0x100_0000, Usable)]).unwrap();
        map.reserve(0x20_0000, 0x30_0000, Kernel).unwrap();
        assert_eq!(map.kind_at(0x20_0000), Some(Kernel));
        assert_eq!(map.find_usable(0x1000, 0x1000, u64::MAX), Some(0x10_0000));
        assert_eq!(
            map.find_usable(0x20_0000, 0x20_0000, u64::MAX),
            Some(0x40_0000)
        );
        assert_eq!(map.find_usable(0x20_0000, 0x20_0000, 0x50_0000), None);
        // A reservation does not turn into usable memory where there was a hole.
        map.reserve(0x200_0000, 0x300_0000, Usable).unwrap();
        map.reserve(0x200_0000, 0x300_0000, Reserved).unwrap();
        assert_eq!(map.kind_at(0x200_0000), Some(Reserved));
    }

    #[test]
    fn overflowing_and_empty_entries_are_harmless() {
        let map = MemoryMap::from_raw(&[
            Region::new(u64::MAX - 0x1000, 0x5000, Reserved),
            Region::new(0x1000, 0, Usable),
        ])
        .unwrap();
        assert_eq!(map.regions(), &[r(u64::MAX - 0x1000, u64::MAX, Reserved)]);
    }

    #[test]
    fn too_many_regions_is_an_error() {
        let raw: std::vec::Vec<Region> = (0..200)
            .map(|i| r(i * 0x2000, i * 0x2000 + 0x1000, Usable))
            .collect();
        assert_eq!(
            MemoryMap::from_raw(&raw).unwrap_err(),
            MapError::TooManyRegions
        );
    }

    fn kind() -> impl Strategy<Value = RegionKind> {
        prop_oneof![
            Just(Usable),
            Just(Reserved),
            Just(AcpiReclaimable),
            Just(BootloaderReclaimable),
            Just(Kernel)
        ]
    }

    proptest! {
        /// Normalisation keeps the invariants and agrees, address by address, with a direct
        /// reading of the raw entries.
        #[test]
        fn normalised_map_matches_raw_entries(
            raw in prop::collection::vec((0u64..64, 1u64..16, kind()), 0..24),
            probes in prop::collection::vec(0u64..(80 * 0x800), 32),
        ) {
            let raw: std::vec::Vec<Region> = raw
                .into_iter()
                .map(|(s, l, k)| Region::new(s * 0x800, l * 0x800, k))
                .collect();
            let map = MemoryMap::from_raw(&raw).unwrap();
            for w in map.regions().windows(2) {
                prop_assert!(w[0].end <= w[1].start);
                prop_assert!(!(w[0].end == w[1].start && w[0].kind == w[1].kind));
            }
            for reg in map.usable() {
                prop_assert_eq!(reg.start % PAGE_SIZE, 0);
                prop_assert_eq!(reg.end % PAGE_SIZE, 0);
            }
            for addr in probes {
                let expected = raw
                    .iter()
                    .filter(|r| r.contains(addr))
                    .map(|r| r.kind)
                    .max_by_key(|k| k.precedence());
                let got = map.kind_at(addr);
                match expected {
                    // Usable memory may only disappear by page trimming.
                    Some(Usable) => prop_assert!(
                        got == Some(Usable) || got.is_none(),
                        "addr {:#x}: expected usable, got {:?}", addr, got
                    ),
                    other => prop_assert_eq!(got, other, "addr {:#x}", addr),
                }
            }
        }
    }
}
