//! Flat 64-bit images: the raw bytes are placed at `load_gpa` and entered at their first
//! byte in long mode, with the first 1 GiB identity-mapped.
//!
//! Guest memory the loader sets up (inside its low area, see [`super::LOW_RESERVED_END`]):
//! PML4 at [`PML4_GPA`], PDPT at [`PDPT_GPA`], PD at [`PD_GPA`] (512 present + writable
//! 2 MiB pages), a GDT at [`GDT_GPA`] (null, 64-bit code 0x08, data 0x10). The stack top is
//! [`STACK_TOP`] (0x9f000, growing down through conventional memory below the EBDA), which
//! is why images must load at or above 1 MiB.

use super::entry::{long_mode_entry, Pair, LONG_MODE_PAIRS};
use super::{LoadError, LoadPlan, Segment, HOLE_END};

pub const PML4_GPA: u64 = 0x1000;
pub const PDPT_GPA: u64 = 0x2000;
pub const PD_GPA: u64 = 0x3000;
pub const GDT_GPA: u64 = 0x4000;
/// GDT: null, 64-bit code (selector 0x08), data (0x10).
pub const GDT: [u64; 3] = [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];
/// The initial RSP (16-byte aligned).
pub const STACK_TOP: u64 = 0x9_f000;
/// How much is identity-mapped.
pub const MAPPED: u64 = 1 << 30;

const PRESENT_WRITABLE: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// Plans a flat image of `image_len` bytes at `load_gpa` (≥ 1 MiB, ending inside both RAM
/// and the identity-mapped first GiB); the entry is `load_gpa`.
pub fn flat64_plan(image_len: usize, load_gpa: u64, ram_bytes: u64) -> Result<LoadPlan, LoadError> {
    let len = image_len as u64;
    if load_gpa < HOLE_END {
        return Err(LoadError::SegmentInReservedArea { gpa: load_gpa, len });
    }
    let mut plan = LoadPlan::new(load_gpa);
    plan.add(
        Segment {
            gpa: load_gpa,
            file_offset: 0,
            file_len: image_len,
            mem_len: len,
        },
        image_len,
        ram_bytes.min(MAPPED),
    )?;
    plan.finish()
}

fn put(ram: &mut [u8], gpa: u64, v: u64) -> Result<(), LoadError> {
    let at = usize::try_from(gpa).map_err(|_| LoadError::RamTooSmall)?;
    ram.get_mut(at..at + 8)
        .ok_or(LoadError::RamTooSmall)?
        .copy_from_slice(&v.to_le_bytes());
    Ok(())
}

/// Writes the page tables and the GDT into `ram` (guest RAM from GPA 0).
pub fn write_tables(ram: &mut [u8]) -> Result<(), LoadError> {
    let end = (GDT_GPA as usize) + 8 * GDT.len();
    ram.get_mut(PML4_GPA as usize..end)
        .ok_or(LoadError::RamTooSmall)?
        .fill(0);
    put(ram, PML4_GPA, PDPT_GPA | PRESENT_WRITABLE)?;
    put(ram, PDPT_GPA, PD_GPA | PRESENT_WRITABLE)?;
    for i in 0..512u64 {
        put(
            ram,
            PD_GPA + 8 * i,
            (i << 21) | PAGE_SIZE_2M | PRESENT_WRITABLE,
        )?;
    }
    for (i, d) in GDT.iter().enumerate() {
        put(ram, GDT_GPA + 8 * i as u64, *d)?;
    }
    Ok(())
}

/// The entry state for a flat image planned by [`flat64_plan`].
pub fn flat64_entry(plan: &LoadPlan) -> [Pair; LONG_MODE_PAIRS] {
    long_mode_entry(
        plan.entry,
        STACK_TOP,
        PML4_GPA,
        (GDT_GPA, 8 * GDT.len() as u64 - 1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::load;
    use abi::vmx::field;

    fn q(ram: &[u8], gpa: u64) -> u64 {
        let a = gpa as usize;
        u64::from_le_bytes(ram[a..a + 8].try_into().unwrap())
    }

    #[test]
    fn plan_tables_and_entry() {
        let image = [0xf4u8; 100];
        let plan = flat64_plan(image.len(), 0x20_0000, 16 << 20).unwrap();
        let mut ram = vec![0xffu8; 16 << 20];
        load(&plan, &image, &mut ram).unwrap();
        write_tables(&mut ram).unwrap();
        assert_eq!(q(&ram, 0x1000), 0x2003);
        assert_eq!(q(&ram, 0x1008), 0);
        assert_eq!(q(&ram, 0x2000), 0x3003);
        assert_eq!(q(&ram, 0x3000), 0x83);
        assert_eq!(q(&ram, 0x3008), 0x20_0083);
        assert_eq!(q(&ram, 0x3000 + 511 * 8), (511 << 21) | 0x83);
        assert_eq!(q(&ram, 0x4008), 0x00af_9b00_0000_ffff);
        assert_eq!(q(&ram, 0x4010), 0x00cf_9300_0000_ffff);
        assert_eq!(ram[0x20_0000], 0xf4);
        let e = flat64_entry(&plan);
        assert!(e.contains(&(field::GUEST_RIP, 0x20_0000)));
        assert!(e.contains(&(field::GUEST_RSP, STACK_TOP)));
        assert!(e.contains(&(field::GUEST_GDTR_LIMIT, 23)));
        assert!(e.contains(&(field::GUEST_CR3, 0x1000)));
    }

    #[test]
    fn bad_placements() {
        assert!(matches!(
            flat64_plan(10, 0x8000, 16 << 20),
            Err(LoadError::SegmentInReservedArea { .. })
        ));
        assert!(matches!(
            flat64_plan(10, (16 << 20) - 5, 16 << 20),
            Err(LoadError::SegmentOutsideRam { .. })
        ));
        // Beyond the identity-mapped GiB.
        assert!(matches!(
            flat64_plan(10, 1 << 30, 2 << 30),
            Err(LoadError::SegmentOutsideRam { .. })
        ));
        assert_eq!(
            flat64_plan(0, 0x10_0000, 16 << 20),
            Err(LoadError::EntryOutsideImage)
        );
        assert_eq!(
            write_tables(&mut [0u8; 0x4000]),
            Err(LoadError::RamTooSmall)
        );
    }
}
