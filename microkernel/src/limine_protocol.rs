//! What the Limine boot protocol's base revisions change for the kernel, as pure logic over the
//! values the loader left in the kernel image (the `boot::limine` entry reads them and calls
//! these).
//!
//! The kernel asks for [`REQUESTED_BASE_REVISION`]. The protocol's rule for a loader that does
//! not support the requested revision: it boots the kernel with a revision it does support and
//! says so by leaving the tag's third word unchanged (zero means "supported"). Loaders that
//! implement revision 3 or later also write the revision they used into the tag's second word;
//! older ones (Limine 8.x implements 0, 1 and 2) leave the magic number there, so the kernel
//! knows only that one of 0..=2 is in effect. What differs, as far as this kernel is concerned:
//!
//! - the HHDM at entry: revisions 0..=2 map the first 4 GiB and every memory map entry;
//!   revision 3 maps only usable, bootloader-reclaimable, executable-and-modules and framebuffer
//!   entries ([`hhdm_covers`]);
//! - the RSDP response: an HHDM pointer up to revision 2, a physical address from revision 3
//!   ([`rsdp_physical`]);
//! - the memory map's entry types keep their numbers (type 6 was called "kernel and modules"
//!   before revision 3, "executable and modules" since); unknown types are reserved
//!   ([`region_kind`]).
//!
//! Revision 0 also identity-maps the low 4 GiB; the kernel never relies on that mapping.

use crate::memmap::{Region, RegionKind};

/// The base revision the kernel's tag asks for.
pub const REQUESTED_BASE_REVISION: u64 = 3;

/// The highest base revision a loader that does not report the one it used can have booted
/// with: loaders before revision 3 did not report it.
pub const LAST_UNREPORTED_REVISION: u64 = 2;

/// The base revision the loader booted the kernel with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BaseRevision {
    /// This revision exactly (the requested one, or the one the loader reported using).
    Exact(u64),
    /// One of 0..=[`LAST_UNREPORTED_REVISION`]: a loader that predates revision 3 and does not
    /// support the requested one. Everything the kernel depends on is the same across them.
    Legacy,
}

/// Why the base revision tag cannot be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevisionError {
    /// The loader reports a revision higher than the kernel asked for, or says it supports the
    /// request while reporting another revision: not what the protocol allows.
    Inconsistent { requested: u64, loaded: u64 },
}

impl BaseRevision {
    /// The revision in effect, from what the loader left in the tag: `supported` is "the third
    /// word is zero", `loaded` the second word when the loader replaced the magic number.
    pub fn resolve(
        requested: u64,
        supported: bool,
        loaded: Option<u64>,
    ) -> Result<BaseRevision, RevisionError> {
        match (supported, loaded) {
            (true, None) => Ok(BaseRevision::Exact(requested)),
            (true, Some(loaded)) if loaded == requested => Ok(BaseRevision::Exact(requested)),
            (false, Some(loaded)) if loaded < requested => Ok(BaseRevision::Exact(loaded)),
            (_, Some(loaded)) => Err(RevisionError::Inconsistent { requested, loaded }),
            // An old loader that does not support the request (a loader that dropped support
            // for a requested old revision must refuse to boot, so it is never higher).
            (false, None) => Ok(BaseRevision::Legacy),
        }
    }

    /// Whether pointers in responses are physical (revision 3 on) rather than HHDM pointers.
    fn physical_pointers(self) -> bool {
        matches!(self, BaseRevision::Exact(n) if n >= 3)
    }

    /// Whether the HHDM covers only the memory map's RAM-like entries (revision 3 on) rather
    /// than the first 4 GiB plus every entry.
    fn sparse_hhdm(self) -> bool {
        self.physical_pointers()
    }
}

impl core::fmt::Display for BaseRevision {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BaseRevision::Exact(n) => write!(f, "base revision {n}"),
            BaseRevision::Legacy => write!(
                f,
                "base revision 0..={LAST_UNREPORTED_REVISION} (the loader does not support \
                 {REQUESTED_BASE_REVISION} and predates reporting the one it used)"
            ),
        }
    }
}

/// Limine memory map entry types (the protocol's numbering).
pub mod entry_type {
    pub const USABLE: u64 = 0;
    pub const RESERVED: u64 = 1;
    pub const ACPI_RECLAIMABLE: u64 = 2;
    pub const ACPI_NVS: u64 = 3;
    pub const BAD_MEMORY: u64 = 4;
    pub const BOOTLOADER_RECLAIMABLE: u64 = 5;
    /// "Kernel and modules" up to base revision 2, "executable and modules" since.
    pub const EXECUTABLE_AND_MODULES: u64 = 6;
    pub const FRAMEBUFFER: u64 = 7;
}

/// The kernel's kind for a Limine memory map entry type; types this kernel does not know are
/// reserved (never handed out).
pub fn region_kind(typ: u64) -> RegionKind {
    match typ {
        entry_type::USABLE => RegionKind::Usable,
        entry_type::BOOTLOADER_RECLAIMABLE => RegionKind::BootloaderReclaimable,
        entry_type::ACPI_RECLAIMABLE => RegionKind::AcpiReclaimable,
        entry_type::ACPI_NVS => RegionKind::AcpiNvs,
        entry_type::BAD_MEMORY => RegionKind::BadMemory,
        entry_type::EXECUTABLE_AND_MODULES => RegionKind::Kernel,
        entry_type::FRAMEBUFFER => RegionKind::Framebuffer,
        _ => RegionKind::Reserved,
    }
}

/// The memory map as the kernel's raw regions.
pub fn regions(entries: impl Iterator<Item = (u64, u64, u64)>) -> impl Iterator<Item = Region> {
    entries.map(|(base, len, typ)| Region::new(base, len, region_kind(typ)))
}

/// Below this the HHDM of revisions 0..=2 maps everything, reported or not.
const LEGACY_HHDM_FLOOR: u64 = 4 << 30;

/// Whether the loader's HHDM (the tables live at entry, before the kernel's own) maps all of
/// `[start, end)`, given the raw memory map `map` (one entry per loader entry, kinds as
/// [`region_kind`] gives them).
pub fn hhdm_covers(rev: BaseRevision, map: &[Region], start: u64, end: u64) -> bool {
    let mapped = |r: &Region| {
        if rev.sparse_hhdm() {
            matches!(
                r.kind,
                RegionKind::Usable
                    | RegionKind::BootloaderReclaimable
                    | RegionKind::Kernel
                    | RegionKind::Framebuffer
            )
        } else {
            true
        }
    };
    // Revisions 0..=2 map everything below 4 GiB; above it (and from revision 3 on, everywhere)
    // walk up from `start` through mapped entries (they may be unsorted or abut).
    let mut at = start;
    if !rev.sparse_hhdm() && at < LEGACY_HHDM_FLOOR {
        at = LEGACY_HHDM_FLOOR;
    }
    while at < end {
        match map.iter().filter(|r| mapped(r)).find(|r| r.contains(at)) {
            Some(r) => at = r.end,
            None => return false,
        }
    }
    true
}

/// The RSDP's physical address from the RSDP response's `address`: an HHDM pointer before
/// revision 3, a physical address since. `None` when an HHDM pointer lies below the HHDM.
pub fn rsdp_physical(rev: BaseRevision, address: u64, hhdm_offset: u64) -> Option<u64> {
    if rev.physical_pointers() {
        Some(address)
    } else {
        address.checked_sub(hhdm_offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HHDM: u64 = 0xffff_8000_0000_0000;
    const GIB: u64 = 1 << 30;

    #[test]
    fn supported_request_is_exact() {
        assert_eq!(
            BaseRevision::resolve(3, true, None),
            Ok(BaseRevision::Exact(3))
        );
        assert_eq!(
            BaseRevision::resolve(3, true, Some(3)),
            Ok(BaseRevision::Exact(3))
        );
        assert_eq!(
            BaseRevision::resolve(2, true, None),
            Ok(BaseRevision::Exact(2))
        );
    }

    #[test]
    fn limine_8_with_revision_3_requested_is_legacy() {
        // Limine 8.2.0: tag third word left at 3, second word left at the magic number.
        assert_eq!(
            BaseRevision::resolve(3, false, None),
            Ok(BaseRevision::Legacy)
        );
    }

    #[test]
    fn newer_loader_reports_the_revision_it_used() {
        assert_eq!(
            BaseRevision::resolve(5, false, Some(3)),
            Ok(BaseRevision::Exact(3))
        );
    }

    #[test]
    fn inconsistent_tags_are_refused() {
        let e = |requested, loaded| RevisionError::Inconsistent { requested, loaded };
        assert_eq!(BaseRevision::resolve(3, false, Some(4)), Err(e(3, 4)));
        assert_eq!(BaseRevision::resolve(3, false, Some(3)), Err(e(3, 3)));
        assert_eq!(BaseRevision::resolve(3, true, Some(2)), Err(e(3, 2)));
    }

    #[test]
    fn display_says_what_is_known() {
        assert_eq!(BaseRevision::Exact(3).to_string(), "base revision 3");
        let legacy = BaseRevision::Legacy.to_string();
        assert!(legacy.starts_with("base revision 0..=2"), "{legacy}");
    }

    #[test]
    fn entry_types_map_to_kinds_and_unknown_is_reserved() {
        assert_eq!(region_kind(entry_type::USABLE), RegionKind::Usable);
        assert_eq!(
            region_kind(entry_type::BOOTLOADER_RECLAIMABLE),
            RegionKind::BootloaderReclaimable
        );
        assert_eq!(
            region_kind(entry_type::EXECUTABLE_AND_MODULES),
            RegionKind::Kernel
        );
        assert_eq!(
            region_kind(entry_type::FRAMEBUFFER),
            RegionKind::Framebuffer
        );
        assert_eq!(region_kind(entry_type::RESERVED), RegionKind::Reserved);
        assert_eq!(region_kind(8), RegionKind::Reserved);
        assert_eq!(region_kind(u64::MAX), RegionKind::Reserved);
    }

    fn sample_map() -> Vec<Region> {
        regions(
            [
                (0x1000, 0x9e000, entry_type::USABLE),
                (0xf0000, 0x10000, entry_type::RESERVED),
                (0x10_0000, 0x700_0000, entry_type::USABLE),
                (0x710_0000, 0x10_0000, entry_type::BOOTLOADER_RECLAIMABLE),
                (0x720_0000, 0x40_0000, entry_type::EXECUTABLE_AND_MODULES),
                (0x7fe_0000, 0x2_0000, entry_type::ACPI_NVS),
                (0xfd00_0000, 0x30_0000, entry_type::FRAMEBUFFER),
                (0x1_0000_0000, 0x4000_0000, entry_type::USABLE),
                (0x2_0000_0000, 0x1000, entry_type::RESERVED),
            ]
            .into_iter(),
        )
        .collect()
    }

    #[test]
    fn legacy_hhdm_covers_low_4_gib_and_every_entry() {
        let map = sample_map();
        for rev in [BaseRevision::Legacy, BaseRevision::Exact(2)] {
            assert!(hhdm_covers(rev, &map, 0, 0x1000)); // unreported, below 4 GiB
            assert!(hhdm_covers(rev, &map, 0x7fe_0000, 0x800_0000)); // ACPI NVS
            assert!(hhdm_covers(rev, &map, 0xfee0_0000, 0xfee0_1000)); // LAPIC hole
            assert!(hhdm_covers(rev, &map, 0xffff_f000, 0x1_0000_1000)); // across 4 GiB
            assert!(hhdm_covers(rev, &map, 0x2_0000_0000, 0x2_0000_1000)); // reserved entry
            assert!(!hhdm_covers(rev, &map, 0x1_4000_0000, 0x1_4000_1000)); // hole above 4 GiB
            assert!(!hhdm_covers(rev, &map, 0xffff_f000, 0x1_4000_1000));
        }
    }

    #[test]
    fn revision_3_hhdm_covers_only_ram_like_entries() {
        let map = sample_map();
        let rev = BaseRevision::Exact(3);
        assert!(hhdm_covers(rev, &map, 0x10_0000, 0x700_0000 + 0x10_0000)); // usable
        assert!(hhdm_covers(rev, &map, 0x10_0000, 0x760_0000)); // usable..reclaimable..modules
        assert!(hhdm_covers(rev, &map, 0xfd00_0000, 0xfd30_0000)); // framebuffer
        assert!(hhdm_covers(rev, &map, 0x1_0000_0000, 0x1_4000_0000));
        assert!(!hhdm_covers(rev, &map, 0, 0x1000)); // unreported
        assert!(!hhdm_covers(rev, &map, 0xf0000, 0xf1000)); // reserved
        assert!(!hhdm_covers(rev, &map, 0x7fe_0000, 0x7fe_1000)); // ACPI NVS
        assert!(!hhdm_covers(rev, &map, 0xfee0_0000, 0xfee0_1000)); // LAPIC hole
        assert!(!hhdm_covers(rev, &map, 0x6f0_0000, 0x800_0000)); // runs into ACPI NVS
        assert!(hhdm_covers(rev, &map, 5 * GIB, 5 * GIB)); // empty range
    }

    #[test]
    fn rsdp_is_virtual_before_revision_3() {
        assert_eq!(
            rsdp_physical(BaseRevision::Legacy, HHDM + 0xe0000, HHDM),
            Some(0xe0000)
        );
        assert_eq!(
            rsdp_physical(BaseRevision::Exact(1), HHDM + 0x7fe_0014, HHDM),
            Some(0x7fe_0014)
        );
        assert_eq!(rsdp_physical(BaseRevision::Legacy, 0xe0000, HHDM), None);
        assert_eq!(
            rsdp_physical(BaseRevision::Exact(3), 0xe0000, HHDM),
            Some(0xe0000)
        );
    }
}
