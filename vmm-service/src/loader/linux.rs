//! The Linux/x86 boot protocol (the kernel's `Documentation/arch/x86/boot.rst`): a bzImage's
//! setup header, the zero page (`struct boot_params`), and the two entries a loader that skips
//! the real-mode setup code may use:
//! - the **64-bit entry** (`startup_64`, load address + 0x200) for kernels whose header says
//!   `XLF_KERNEL_64`: long mode, paging on with the kernel, zero page and command line
//!   identity-mapped, `RSI` = the zero page;
//! - the **32-bit entry** (`code32_start`) otherwise: protected mode, paging off, `ESI` = the
//!   zero page, `EBP`, `EDI`, `EBX` zero.
//!
//! Both want a GDT with flat 4 GiB segments at `__BOOT_CS` (0x10) and `__BOOT_DS` (0x18) and
//! interrupts off. The protected-mode kernel (the bytes after the `setup_sects` real-mode
//! sectors) is loaded at the header's `pref_address`, where the kernel decompresses itself in
//! place (it needs `init_size` bytes from there); the initramfs goes at the top of RAM below
//! `initrd_addr_max`, page-aligned. The e820 map is the multiboot memory map
//! ([`super::info::memory_map`]): the ACPI tables' BIOS area is reserved, as the tables say.
//!
//! Guest-physical layout (inside the loaders' low area, [`super::LOW_RESERVED_END`]): page
//! tables at 0x1000-0x3fff (64-bit entry, the first GiB identity-mapped as for flat images), the
//! GDT at [`flat64::GDT_GPA`], the zero page at [`ZERO_PAGE_GPA`], the command line at
//! [`CMDLINE_GPA`].
//!
//! Every problem with the image is a [`LoadError`]; nothing here panics on bad bytes.

use super::entry::{linux_entry, Pair, LINUX_PAIRS};
use super::info::memory_map;
use super::{flat64, LoadError, LoadPlan, Segment, HOLE_END, LOW_RESERVED_END};
use crate::acpi;

/// Offsets in the image's first sector(s), which are also offsets in `boot_params` (the setup
/// header sits at the same place in both).
pub mod hdr {
    pub const SETUP_SECTS: usize = 0x1f1;
    pub const SYSSIZE: usize = 0x1f4;
    pub const VID_MODE: usize = 0x1fa;
    pub const BOOT_FLAG: usize = 0x1fe;
    /// The jump instruction; its second byte is the header's length after 0x202.
    pub const JUMP: usize = 0x200;
    pub const MAGIC: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const LOADFLAGS: usize = 0x211;
    pub const CODE32_START: usize = 0x214;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21c;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22c;
    pub const KERNEL_ALIGNMENT: usize = 0x230;
    pub const RELOCATABLE_KERNEL: usize = 0x234;
    pub const XLOADFLAGS: usize = 0x236;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const SETUP_DATA: usize = 0x250;
    pub const PREF_ADDRESS: usize = 0x258;
    pub const INIT_SIZE: usize = 0x260;
    /// The end of the fields this loader reads.
    pub const END: usize = 0x264;
}

/// Fields of `boot_params` outside the setup header.
pub mod params {
    pub const ACPI_RSDP_ADDR: usize = 0x070;
    pub const E820_ENTRIES: usize = 0x1e8;
    pub const E820_TABLE: usize = 0x2d0;
    /// Bytes per e820 entry (base u64, length u64, type u32; packed).
    pub const E820_ENTRY_SIZE: usize = 20;
    /// Entries `boot_params` has room for.
    pub const E820_MAX: usize = 128;
    /// `boot_params` is one page.
    pub const SIZE: usize = 4096;
}

/// "HdrS".
pub const HEADER_MAGIC: u32 = 0x5372_6448;
pub const BOOT_FLAG: u16 = 0xaa55;
/// The oldest protocol this loader takes: 2.10 has `init_size` and `pref_address`.
pub const MIN_VERSION: u16 = 0x020a;
/// `loadflags`: the protected-mode code is loaded at 1 MiB or above (a bzImage).
pub const LOADED_HIGH: u8 = 1 << 0;
/// `loadflags`: do not reload the segment registers at the 32-bit entry (we want them reloaded).
pub const KEEP_SEGMENTS: u8 = 1 << 6;
/// `xloadflags`: the kernel has the 64-bit entry at load address + 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// Offset of the 64-bit entry from the load address.
pub const ENTRY_64_OFFSET: u64 = 0x200;
/// `type_of_loader`: a loader without an assigned id.
pub const LOADER_UNDEFINED: u8 = 0xff;
/// The boot selectors the protocol names.
pub const BOOT_CS: u64 = 0x10;
pub const BOOT_DS: u64 = 0x18;
/// GDT: null, null, code at `__BOOT_CS`, data at `__BOOT_DS` (flat 4 GiB). Index 2's long-mode
/// bit is set for the 64-bit entry ([`gdt`]).
const GDT_CODE32: u64 = 0x00cf_9b00_0000_ffff;
const GDT_CODE64: u64 = 0x00af_9b00_0000_ffff;
const GDT_DATA: u64 = 0x00cf_9300_0000_ffff;
/// Where the zero page and the command line go.
pub const ZERO_PAGE_GPA: u64 = 0x5000;
pub const CMDLINE_GPA: u64 = 0x6000;
/// Room for the command line (with its NUL), up to the multiboot info's page.
pub const CMDLINE_ROOM: usize = 0x2000;
/// Where the kernel goes when its header gives no usable `pref_address`.
pub const DEFAULT_LOAD_GPA: u64 = HOLE_END;
const PAGE: u64 = 4096;

/// What is wrong with a bzImage (the `what` of [`LoadError::BadLinux`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinuxProblem {
    /// No "HdrS" at 0x202 or no 0xAA55 boot flag: not a Linux kernel image.
    NotBzImage,
    /// Boot protocol older than 2.10.
    OldProtocol { version: u16 },
    /// `loadflags` lacks LOADED_HIGH: a zImage, which loads below 1 MiB.
    NotLoadedHigh,
    /// The command line does not fit (with its NUL) in `cmdline_size` or our room.
    CmdlineTooLong,
    /// The kernel's decompression area (`pref_address` + `init_size`) leaves no room in RAM for
    /// the initramfs above it, or does not fit at all.
    NoRoom,
    /// The 64-bit entry needs the kernel below the identity-mapped first GiB.
    OutsideIdentityMap,
}

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinuxEntry {
    Long64,
    Protected32,
}

/// A checked plan for a bzImage and its initramfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxPlan {
    /// The protected-mode kernel as one segment (its file part only; the decompression area
    /// beyond it is checked, not zeroed).
    pub load: LoadPlan,
    pub load_gpa: u64,
    pub entry: LinuxEntry,
    /// Where the initramfs goes (page-aligned) and its length (0: none).
    pub initrd_gpa: u64,
    pub initrd_len: u64,
    /// Bytes 0x1f1.. of the image that form the setup header, copied into the zero page.
    pub header_end: usize,
}

fn u8_at(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}
fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([u8_at(b, at), u8_at(b, at + 1)])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([
        u8_at(b, at),
        u8_at(b, at + 1),
        u8_at(b, at + 2),
        u8_at(b, at + 3),
    ])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

/// Whether `image` carries a Linux boot-protocol header (whatever its version).
pub fn is_bzimage(image: &[u8]) -> bool {
    image.len() >= hdr::END
        && u32_at(image, hdr::MAGIC) == HEADER_MAGIC
        && u16_at(image, hdr::BOOT_FLAG) == BOOT_FLAG
}

fn bad(p: LinuxProblem) -> LoadError {
    LoadError::BadLinux(p)
}

/// Plans `image` (a bzImage) with an initramfs of `initrd_len` bytes and a command line of
/// `cmdline_len` bytes (without NUL) in `ram_bytes` of RAM.
pub fn plan(
    image: &[u8],
    ram_bytes: u64,
    initrd_len: u64,
    cmdline_len: usize,
) -> Result<LinuxPlan, LoadError> {
    if image.len() < hdr::END {
        return Err(if is_magic(image) {
            LoadError::Truncated
        } else {
            bad(LinuxProblem::NotBzImage)
        });
    }
    if !is_bzimage(image) {
        return Err(bad(LinuxProblem::NotBzImage));
    }
    let version = u16_at(image, hdr::VERSION);
    if version < MIN_VERSION {
        return Err(bad(LinuxProblem::OldProtocol { version }));
    }
    if u8_at(image, hdr::LOADFLAGS) & LOADED_HIGH == 0 {
        return Err(bad(LinuxProblem::NotLoadedHigh));
    }
    let header_end = hdr::MAGIC + usize::from(u8_at(image, hdr::JUMP + 1));
    if header_end < hdr::END || header_end > image.len() || header_end > params::SIZE {
        return Err(LoadError::Truncated);
    }
    let cmdline_max = (u32_at(image, hdr::CMDLINE_SIZE) as usize).min(CMDLINE_ROOM - 1);
    if cmdline_len > cmdline_max {
        return Err(bad(LinuxProblem::CmdlineTooLong));
    }
    // 0 means 4 (the oldest kernels' default).
    let setup_sects = match u8_at(image, hdr::SETUP_SECTS) {
        0 => 4,
        n => usize::from(n),
    };
    let pm_offset = (setup_sects + 1) * 512;
    let pm_len = image
        .len()
        .checked_sub(pm_offset)
        .filter(|&l| l > 0)
        .ok_or(LoadError::Truncated)?;
    // syssize counts 16-byte paragraphs of the protected-mode code.
    if (u32_at(image, hdr::SYSSIZE) as usize).saturating_mul(16) > pm_len {
        return Err(LoadError::Truncated);
    }
    let entry = if u16_at(image, hdr::XLOADFLAGS) & XLF_KERNEL_64 != 0 {
        LinuxEntry::Long64
    } else {
        LinuxEntry::Protected32
    };
    let pref = u64_at(image, hdr::PREF_ADDRESS);
    let load_gpa = if pref >= HOLE_END && pref.is_multiple_of(PAGE) {
        pref
    } else {
        DEFAULT_LOAD_GPA
    };
    let init_size = u64::from(u32_at(image, hdr::INIT_SIZE)).max(pm_len as u64);
    let kernel_end = load_gpa
        .checked_add(init_size)
        .filter(|&e| e <= ram_bytes)
        .ok_or(bad(LinuxProblem::NoRoom))?;
    if entry == LinuxEntry::Long64 && kernel_end > flat64::MAPPED {
        return Err(bad(LinuxProblem::OutsideIdentityMap));
    }
    let initrd_gpa = if initrd_len == 0 {
        0
    } else {
        // The top of RAM, below initrd_addr_max, page-aligned, above the kernel's area.
        let limit = ram_bytes.min(u64::from(u32_at(image, hdr::INITRD_ADDR_MAX)) + 1);
        let at = limit
            .checked_sub(initrd_len)
            .map(|a| a & !(PAGE - 1))
            .ok_or(bad(LinuxProblem::NoRoom))?;
        if at < kernel_end.next_multiple_of(PAGE) {
            return Err(bad(LinuxProblem::NoRoom));
        }
        at
    };
    let entry_gpa = match entry {
        LinuxEntry::Long64 => load_gpa + ENTRY_64_OFFSET,
        LinuxEntry::Protected32 => load_gpa,
    };
    let mut load = LoadPlan::new(entry_gpa);
    load.add(
        Segment {
            gpa: load_gpa,
            file_offset: pm_offset,
            file_len: pm_len,
            mem_len: pm_len as u64,
        },
        image.len(),
        ram_bytes,
    )?;
    Ok(LinuxPlan {
        load: load.finish()?,
        load_gpa,
        entry,
        initrd_gpa,
        initrd_len,
        header_end,
    })
}

fn is_magic(image: &[u8]) -> bool {
    u32_at(image, hdr::MAGIC) == HEADER_MAGIC
}

fn window(ram: &mut [u8], gpa: u64, len: usize) -> Result<&mut [u8], LoadError> {
    let at = usize::try_from(gpa).map_err(|_| LoadError::RamTooSmall)?;
    at.checked_add(len)
        .and_then(|end| ram.get_mut(at..end))
        .ok_or(LoadError::RamTooSmall)
}

fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(d) = b.get_mut(at..at + bytes.len()) {
        d.copy_from_slice(bytes);
    }
}

/// The GDT for `entry`: null, null, code (`__BOOT_CS`), data (`__BOOT_DS`).
pub fn gdt(entry: LinuxEntry) -> [u64; 4] {
    let code = match entry {
        LinuxEntry::Long64 => GDT_CODE64,
        LinuxEntry::Protected32 => GDT_CODE32,
    };
    [0, 0, code, GDT_DATA]
}

/// Writes the zero page (the image's setup header, the loader's fields, the e820 map, the
/// RSDP address), the command line, the GDT and (64-bit entry) the identity page tables for
/// `plan` into `ram` (guest RAM from GPA 0), and returns the entry state. The kernel and the
/// initramfs bytes must be in place already ([`super::load`] and the caller).
pub fn write_boot(
    plan: &LinuxPlan,
    image: &[u8],
    ram: &mut [u8],
    cmdline: &[u8],
) -> Result<[Pair; LINUX_PAIRS], LoadError> {
    if cmdline.contains(&0) {
        return Err(LoadError::BadCmdline);
    }
    if cmdline.len() >= CMDLINE_ROOM {
        return Err(bad(LinuxProblem::CmdlineTooLong));
    }
    let ram_bytes = ram.len() as u64;
    let header = image
        .get(hdr::SETUP_SECTS..plan.header_end)
        .ok_or(LoadError::Truncated)?;
    if plan.entry == LinuxEntry::Long64 {
        flat64::write_tables(ram)?;
    }
    let gdt = gdt(plan.entry);
    let g = window(ram, flat64::GDT_GPA, gdt.len() * 8)?;
    for (i, d) in gdt.iter().enumerate() {
        put(g, i * 8, &d.to_le_bytes());
    }
    let c = window(ram, CMDLINE_GPA, cmdline.len() + 1)?;
    put(c, 0, cmdline);
    c[cmdline.len()] = 0;

    let zp = window(ram, ZERO_PAGE_GPA, params::SIZE)?;
    zp.fill(0);
    put(zp, hdr::SETUP_SECTS, header);
    zp[hdr::TYPE_OF_LOADER] = LOADER_UNDEFINED;
    zp[hdr::LOADFLAGS] &= !KEEP_SEGMENTS;
    put(zp, hdr::VID_MODE, &0xffffu16.to_le_bytes());
    put(zp, hdr::CODE32_START, &(plan.load_gpa as u32).to_le_bytes());
    put(
        zp,
        hdr::RAMDISK_IMAGE,
        &(plan.initrd_gpa as u32).to_le_bytes(),
    );
    put(
        zp,
        hdr::RAMDISK_SIZE,
        &(plan.initrd_len as u32).to_le_bytes(),
    );
    put(zp, hdr::CMD_LINE_PTR, &(CMDLINE_GPA as u32).to_le_bytes());
    put(zp, hdr::SETUP_DATA, &0u64.to_le_bytes());
    put(zp, params::ACPI_RSDP_ADDR, &acpi::AREA_START.to_le_bytes());
    let map = memory_map(ram_bytes);
    let used: usize = map.iter().filter(|e| e.1 > 0).count();
    zp[params::E820_ENTRIES] = used as u8;
    for (i, (base, len, kind)) in map.iter().filter(|e| e.1 > 0).enumerate() {
        let at = params::E820_TABLE + i * params::E820_ENTRY_SIZE;
        put(zp, at, &base.to_le_bytes());
        put(zp, at + 8, &len.to_le_bytes());
        put(zp, at + 16, &kind.to_le_bytes());
    }
    let gdtr = (flat64::GDT_GPA, (gdt.len() * 8 - 1) as u64);
    Ok(linux_entry(
        plan.entry == LinuxEntry::Long64,
        plan.load.entry,
        ZERO_PAGE_GPA,
        flat64::PML4_GPA,
        gdtr,
    ))
}

const _: () = assert!(CMDLINE_GPA + CMDLINE_ROOM as u64 <= super::info::INFO_GPA);
const _: () = assert!(ZERO_PAGE_GPA + params::SIZE as u64 <= CMDLINE_GPA);
const _: () = assert!(flat64::GDT_GPA + 32 <= ZERO_PAGE_GPA);
const _: () = assert!(super::info::INFO_GPA < LOW_RESERVED_END);
const _: () =
    assert!(params::E820_TABLE + params::E820_MAX * params::E820_ENTRY_SIZE <= params::SIZE);
const _: () = assert!(super::info::MMAP_ENTRIES <= params::E820_MAX);

#[cfg(test)]
mod tests;
