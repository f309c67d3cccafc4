//! Multiboot (v1) images: header search, the a.out kludge (flag 16), and ELF32/ELF64
//! `PT_LOAD` segments placed at their physical addresses (`p_paddr`).

use elf::abi::{EM_386, EM_X86_64, ET_EXEC, PT_LOAD};
use elf::endian::LittleEndian;
use elf::file::Class;
use elf::ElfBytes;

use super::{ElfProblem, LoadError, LoadPlan, Segment};

/// The header magic in the image.
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// EAX at entry.
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The header must start within this many bytes of the image.
pub const SEARCH_LEN: usize = 8192;
/// Required flags we honour: 0 (page-align modules; there are none) and 1 (memory info,
/// always given).
pub const FLAGS_SUPPORTED: u32 = 0b11;
/// Flag 16: the header's address fields are valid (a.out kludge).
pub const FLAG_AOUT_KLUDGE: u32 = 1 << 16;

/// A multiboot header found in an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Byte offset of the header in the image.
    pub offset: usize,
    pub flags: u32,
    /// The a.out kludge fields, when flag 16 is set.
    pub aout: Option<AoutKludge>,
}

/// Address fields of the header (flag 16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AoutKludge {
    pub header_addr: u32,
    pub load_addr: u32,
    pub load_end_addr: u32,
    pub bss_end_addr: u32,
    pub entry_addr: u32,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Finds the first header with a valid checksum in the first [`SEARCH_LEN`] bytes.
pub fn find_header(image: &[u8]) -> Result<Header, LoadError> {
    let mut saw_magic = false;
    for offset in (0..SEARCH_LEN).step_by(4) {
        let Some(magic) = u32_at(image, offset) else {
            break;
        };
        if magic != HEADER_MAGIC {
            continue;
        }
        saw_magic = true;
        let (Some(flags), Some(sum)) = (u32_at(image, offset + 4), u32_at(image, offset + 8))
        else {
            break;
        };
        if magic.wrapping_add(flags).wrapping_add(sum) != 0 {
            continue;
        }
        let required = flags & 0xffff;
        if required & !FLAGS_SUPPORTED != 0 {
            return Err(LoadError::UnsupportedFlags(flags));
        }
        let aout = if flags & FLAG_AOUT_KLUDGE != 0 {
            let f = |i: usize| u32_at(image, offset + 12 + 4 * i).ok_or(LoadError::Truncated);
            Some(AoutKludge {
                header_addr: f(0)?,
                load_addr: f(1)?,
                load_end_addr: f(2)?,
                bss_end_addr: f(3)?,
                entry_addr: f(4)?,
            })
        } else {
            None
        };
        return Ok(Header {
            offset,
            flags,
            aout,
        });
    }
    Err(if saw_magic {
        LoadError::BadChecksum
    } else {
        LoadError::NoHeader
    })
}

/// Plans loading a multiboot image into `ram_bytes` of guest RAM. The entry point is below
/// 4 GiB (the guest starts in 32-bit protected mode).
pub fn plan(image: &[u8], ram_bytes: u64) -> Result<LoadPlan, LoadError> {
    let header = find_header(image)?;
    let plan = match header.aout {
        Some(k) => aout_plan(image, header.offset, &k, ram_bytes)?,
        None => elf_plan(image, ram_bytes)?,
    };
    if plan.entry > u32::MAX as u64 {
        return Err(LoadError::EntryOutsideImage);
    }
    Ok(plan)
}

fn aout_plan(
    image: &[u8],
    header_offset: usize,
    k: &AoutKludge,
    ram_bytes: u64,
) -> Result<LoadPlan, LoadError> {
    let bad = LoadError::BadAoutKludge;
    let header_delta = k.header_addr.checked_sub(k.load_addr).ok_or(bad)?;
    let file_offset = header_offset
        .checked_sub(header_delta as usize)
        .ok_or(bad)?;
    let file_len = if k.load_end_addr == 0 {
        image.len().checked_sub(file_offset).ok_or(bad)?
    } else {
        k.load_end_addr.checked_sub(k.load_addr).ok_or(bad)? as usize
    };
    let load_end = k.load_addr as u64 + file_len as u64;
    let mem_len = if k.bss_end_addr == 0 {
        file_len as u64
    } else {
        let bss_end = k.bss_end_addr as u64;
        if bss_end < load_end {
            return Err(bad);
        }
        bss_end - k.load_addr as u64
    };
    let mut plan = LoadPlan::new(k.entry_addr as u64);
    plan.add(
        Segment {
            gpa: k.load_addr as u64,
            file_offset,
            file_len,
            mem_len,
        },
        image.len(),
        ram_bytes,
    )?;
    plan.finish()
}

/// Plans the `PT_LOAD` segments of an ELF32 (EM_386) or ELF64 (EM_X86_64) executable at
/// their physical addresses. The entry (a virtual address) is translated through the segment
/// that contains it.
pub fn elf_plan(image: &[u8], ram_bytes: u64) -> Result<LoadPlan, LoadError> {
    let file = ElfBytes::<LittleEndian>::minimal_parse(image)
        .map_err(|_| LoadError::BadElf(ElfProblem::Parse))?;
    let machine_ok = match file.ehdr.class {
        Class::ELF32 => file.ehdr.e_machine == EM_386,
        Class::ELF64 => file.ehdr.e_machine == EM_X86_64,
    };
    if !machine_ok || file.ehdr.e_type != ET_EXEC {
        return Err(LoadError::BadElf(ElfProblem::WrongKind));
    }
    let phdrs = file
        .segments()
        .ok_or(LoadError::BadElf(ElfProblem::NoProgramHeaders))?;
    let e = file.ehdr.e_entry;
    let mut entry = e;
    for ph in phdrs
        .iter()
        .filter(|p| p.p_type == PT_LOAD && p.p_memsz != 0)
    {
        if ph.p_vaddr <= e && e - ph.p_vaddr < ph.p_memsz {
            entry = ph.p_paddr.wrapping_add(e - ph.p_vaddr);
        }
    }
    let mut plan = LoadPlan::new(entry);
    for ph in phdrs
        .iter()
        .filter(|p| p.p_type == PT_LOAD && p.p_memsz != 0)
    {
        let file_offset = usize::try_from(ph.p_offset).map_err(|_| LoadError::Truncated)?;
        let file_len = usize::try_from(ph.p_filesz).map_err(|_| LoadError::Truncated)?;
        plan.add(
            Segment {
                gpa: ph.p_paddr,
                file_offset,
                file_len,
                mem_len: ph.p_memsz,
            },
            image.len(),
            ram_bytes,
        )?;
    }
    plan.finish()
}

#[cfg(test)]
pub(crate) mod tests;
