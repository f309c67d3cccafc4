//! The multiboot (v1) information block, written into guest RAM for the kernel in EBX.
//!
//! Layout at `info_gpa` (all inside RAM and below the legacy hole at 0x9fc00):
//! - `+0`: the 116-byte `multiboot_info` (flags, mem_lower, mem_upper, cmdline, mmap_length,
//!   mmap_addr, boot_loader_name; every other field 0);
//! - `+120`: the memory map, [`MMAP_ENTRIES`] entries of 24 bytes (`size` = 20, `base_addr`,
//!   `length`, `type`);
//! - `+216`: the boot loader name `"umbra\0"`;
//! - `+224`: the command line, NUL-terminated.
//!
//! Put it at [`INFO_GPA`] (inside the loader's low area) so no image segment can overlap it.

use super::{LoadError, HOLE_START};
use crate::acpi;

/// The conventional place for the block.
pub const INFO_GPA: u64 = 0x8000;
/// Bytes of the `multiboot_info` structure (through the framebuffer fields).
pub const INFO_SIZE: usize = 116;
pub const MMAP_OFFSET: usize = 120;
pub const MMAP_ENTRY_SIZE: usize = 24;
pub const MMAP_ENTRIES: usize = 4;
pub const NAME_OFFSET: usize = MMAP_OFFSET + MMAP_ENTRIES * MMAP_ENTRY_SIZE;
pub const LOADER_NAME: &[u8] = b"umbra\0";
pub const CMDLINE_OFFSET: usize = 224;

/// `multiboot_info.flags` bits Umbra sets.
pub mod flags {
    pub const MEM: u32 = 1 << 0;
    pub const CMDLINE: u32 = 1 << 2;
    pub const MMAP: u32 = 1 << 6;
    pub const LOADER_NAME: u32 = 1 << 9;
}

/// Memory map types.
pub const MMAP_AVAILABLE: u32 = 1;
pub const MMAP_RESERVED: u32 = 2;

const MIB: u64 = 1 << 20;

/// The memory map for `ram_bytes` of RAM from GPA 0: (base, length, type). The BIOS area
/// that holds the ACPI tables ([`acpi::AREA_START`]..[`acpi::AREA_END`]) is reserved.
pub fn memory_map(ram_bytes: u64) -> [(u64, u64, u32); MMAP_ENTRIES] {
    [
        (0, HOLE_START, MMAP_AVAILABLE),
        (HOLE_START, 0xa_0000 - HOLE_START, MMAP_RESERVED),
        (
            acpi::AREA_START,
            acpi::AREA_END - acpi::AREA_START,
            MMAP_RESERVED,
        ),
        (MIB, ram_bytes.saturating_sub(MIB), MMAP_AVAILABLE),
    ]
}

fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(d) = b.get_mut(at..at + bytes.len()) {
        d.copy_from_slice(bytes);
    }
}

/// Writes the information block into `ram` (guest RAM from GPA 0; its length is the RAM
/// size) at `info_gpa`, with `cmdline` (no NUL inside). Returns the GPA for EBX.
pub fn write_info(ram: &mut [u8], info_gpa: u64, cmdline: &[u8]) -> Result<u32, LoadError> {
    let ram_bytes = ram.len() as u64;
    if ram_bytes <= MIB {
        return Err(LoadError::RamTooSmall);
    }
    if cmdline.contains(&0) {
        return Err(LoadError::BadCmdline);
    }
    let total = CMDLINE_OFFSET + cmdline.len() + 1;
    let end = info_gpa
        .checked_add(total as u64)
        .ok_or(LoadError::InfoDoesNotFit)?;
    if end > HOLE_START {
        return Err(LoadError::InfoDoesNotFit);
    }
    // Both fit in u32 and usize: end < 0x9fc00.
    let base = info_gpa as u32;
    let block = ram
        .get_mut(info_gpa as usize..end as usize)
        .ok_or(LoadError::InfoDoesNotFit)?;
    block.fill(0);
    let mem_upper = ((ram_bytes - MIB) / 1024).min(u32::MAX as u64) as u32;
    let f = flags::MEM | flags::CMDLINE | flags::MMAP | flags::LOADER_NAME;
    for (at, v) in [
        (0, f),
        (4, 640),
        (8, mem_upper),
        (16, base + CMDLINE_OFFSET as u32),
        (44, (MMAP_ENTRIES * MMAP_ENTRY_SIZE) as u32),
        (48, base + MMAP_OFFSET as u32),
        (64, base + NAME_OFFSET as u32),
    ] {
        put(block, at, &v.to_le_bytes());
    }
    for (i, (addr, len, kind)) in memory_map(ram_bytes).into_iter().enumerate() {
        let at = MMAP_OFFSET + i * MMAP_ENTRY_SIZE;
        put(block, at, &20u32.to_le_bytes());
        put(block, at + 4, &addr.to_le_bytes());
        put(block, at + 12, &len.to_le_bytes());
        put(block, at + 20, &kind.to_le_bytes());
    }
    put(block, NAME_OFFSET, LOADER_NAME);
    put(block, CMDLINE_OFFSET, cmdline);
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32_at(r: &[u8], at: u64) -> u32 {
        let at = at as usize;
        u32::from_le_bytes(r[at..at + 4].try_into().unwrap())
    }

    fn u64_at(r: &[u8], at: u64) -> u64 {
        let at = at as usize;
        u64::from_le_bytes(r[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn block_field_by_field() {
        let mut ram = vec![0xeeu8; 32 << 20];
        let ebx = write_info(&mut ram, INFO_GPA, b"console=ttyS0 quiet").unwrap();
        assert_eq!(ebx, 0x8000);
        let i = ebx as u64;
        assert_eq!(u32_at(&ram, i), 0b10_0100_0101);
        assert_eq!(u32_at(&ram, i + 4), 640);
        assert_eq!(u32_at(&ram, i + 8), 31 * 1024);
        assert_eq!(u32_at(&ram, i + 12), 0); // boot_device
        let cmd = u32_at(&ram, i + 16) as usize;
        assert_eq!(cmd, 0x8000 + 224);
        assert_eq!(&ram[cmd..cmd + 20], b"console=ttyS0 quiet\0");
        assert_eq!(u32_at(&ram, i + 20), 0); // mods_count
        assert_eq!(u32_at(&ram, i + 44), 96);
        let mmap = u32_at(&ram, i + 48) as u64;
        assert_eq!(mmap, 0x8000 + 120);
        let expect = [
            (0u64, 0x9fc00u64, 1u32),
            (0x9fc00, 0x400, 2),
            (0xe0000, 0x20000, 2),
            (0x100000, (32 << 20) - 0x100000, 1),
        ];
        for (n, (base, len, kind)) in expect.into_iter().enumerate() {
            let e = mmap + 24 * n as u64;
            assert_eq!(u32_at(&ram, e), 20);
            assert_eq!(u64_at(&ram, e + 4), base);
            assert_eq!(u64_at(&ram, e + 12), len);
            assert_eq!(u32_at(&ram, e + 20), kind);
        }
        let name = u32_at(&ram, i + 64) as usize;
        assert_eq!(&ram[name..name + 6], b"umbra\0");
        // Nothing else written: the byte after the command line is untouched.
        assert_eq!(ram[cmd + 20], 0xee);
        assert_eq!(ram[0x7fff], 0xee);
    }

    #[test]
    fn errors() {
        let mut ram = vec![0u8; 2 << 20];
        assert_eq!(
            write_info(&mut ram, INFO_GPA, b"a\0b"),
            Err(LoadError::BadCmdline)
        );
        assert_eq!(
            write_info(&mut ram, 0x9fb80, b""),
            Err(LoadError::InfoDoesNotFit)
        );
        assert_eq!(
            write_info(&mut ram, u64::MAX - 4, b""),
            Err(LoadError::InfoDoesNotFit)
        );
        let long = vec![b'x'; 0x9_8000];
        assert_eq!(
            write_info(&mut ram, INFO_GPA, &long),
            Err(LoadError::InfoDoesNotFit)
        );
        let mut small = vec![0u8; 1 << 20];
        assert_eq!(
            write_info(&mut small, INFO_GPA, b""),
            Err(LoadError::RamTooSmall)
        );
    }
}
