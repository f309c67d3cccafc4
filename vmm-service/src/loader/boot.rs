//! One call per image kind: plan, copy into guest RAM, write the boot data, and return the
//! entry state pairs for the vCPU.

use super::entry::{protected_mode_entry, Pair, LONG_MODE_PAIRS, PROTECTED_MODE_PAIRS};
use super::flat64::{flat64_entry, flat64_plan, write_tables};
use super::info::{write_info, INFO_GPA};
use super::{load, multiboot, LoadError};
use crate::acpi;

/// Loads multiboot `image` into `ram` (guest RAM from GPA 0), writes the information block at
/// [`INFO_GPA`] with `cmdline` and the ACPI tables for `cpus` vCPUs, and returns the 32-bit entry state (EAX = 0x2BADB002,
/// EBX = info block).
pub fn boot_multiboot(
    image: &[u8],
    ram: &mut [u8],
    cmdline: &[u8],
    cpus: usize,
) -> Result<[Pair; PROTECTED_MODE_PAIRS], LoadError> {
    let plan = multiboot::plan(image, ram.len() as u64)?;
    load(&plan, image, ram)?;
    acpi::write_tables(ram, cpus)?;
    let info = write_info(ram, INFO_GPA, cmdline)?;
    // plan() keeps the entry below 4 GiB.
    let entry = u32::try_from(plan.entry).map_err(|_| LoadError::EntryOutsideImage)?;
    Ok(protected_mode_entry(entry, info))
}

/// Loads a flat 64-bit `image` at `load_gpa`, writes the page tables, the GDT and the ACPI
/// tables for `cpus` vCPUs, and returns the long-mode entry state.
pub fn boot_flat64(
    image: &[u8],
    load_gpa: u64,
    ram: &mut [u8],
    cpus: usize,
) -> Result<[Pair; LONG_MODE_PAIRS], LoadError> {
    let plan = flat64_plan(image.len(), load_gpa, ram.len() as u64)?;
    load(&plan, image, ram)?;
    acpi::write_tables(ram, cpus)?;
    write_tables(ram)?;
    Ok(flat64_entry(&plan))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::multiboot::tests::sample_elf32;
    use abi::vmx::field;

    #[test]
    fn multiboot_end_to_end() {
        let mut ram = vec![0u8; 32 << 20];
        let pairs = boot_multiboot(&sample_elf32(), &mut ram, b"quiet", 1).unwrap();
        assert_eq!(&ram[0xe_0000..0xe_0008], b"RSD PTR ");
        assert!(pairs.contains(&(field::GUEST_RIP, 0x10_0004)));
        assert!(pairs.contains(&(field::GPR_BASE, 0x2bad_b002)));
        assert!(pairs.contains(&(field::GPR_BASE + 3, 0x8000)));
        assert_eq!(ram[0x10_0000], 1);
        assert_eq!(&ram[0x8000 + 224..0x8000 + 230], b"quiet\0");
        assert_eq!(
            boot_multiboot(&[0u8; 64], &mut ram, b"", 1),
            Err(LoadError::NoHeader)
        );
        let mut small = vec![0u8; 1 << 20];
        assert!(boot_multiboot(&sample_elf32(), &mut small, b"", 1).is_err());
        assert_eq!(
            boot_multiboot(&sample_elf32(), &mut ram, b"", 0),
            Err(LoadError::BadCpuCount)
        );
    }

    #[test]
    fn flat64_end_to_end() {
        let mut ram = vec![0u8; 8 << 20];
        let pairs = boot_flat64(&[0xf4, 0xeb, 0xfd], 0x10_0000, &mut ram, 2).unwrap();
        assert_eq!(&ram[0xe_0000..0xe_0008], b"RSD PTR ");
        assert!(pairs.contains(&(field::GUEST_RIP, 0x10_0000)));
        assert_eq!(&ram[0x10_0000..0x10_0003], &[0xf4, 0xeb, 0xfd]);
        assert_eq!(ram[0x1000], 0x03);
    }
}
