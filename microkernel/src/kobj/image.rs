//! Task images: checks an ELF boot module and turns it into a load plan (segments, entry).
//! Parsing is the `elf` crate's; this module adds the rules a user task must obey.

use abi::ipc::layout::{USER_END, USER_MIN};
use elf::abi::{EM_X86_64, ET_EXEC, PF_W, PF_X, PT_LOAD};
use elf::endian::LittleEndian;
use elf::file::Class;
use elf::ElfBytes;
use heapless::Vec;

use crate::PAGE_SIZE;

/// Most loadable segments a task image may have.
pub const MAX_SEGMENTS: usize = 8;

/// Why an image cannot be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// Not an ELF file the `elf` crate can parse.
    NotElf,
    /// Not a 64-bit x86_64 executable (ET_EXEC).
    WrongKind,
    /// No program headers, no loadable segment, or more than [`MAX_SEGMENTS`].
    BadSegments,
    /// A segment lies outside the user range, overlaps another, or its file bytes run past
    /// the end of the image.
    BadRange,
    /// A segment is both writable and executable.
    WriteAndExec,
    /// The entry point is not inside an executable segment.
    BadEntry,
}

/// One segment to load: the page-aligned range it occupies and the file bytes at its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Page-aligned start of the mapping.
    pub va_start: u64,
    /// Number of pages mapped.
    pub pages: u64,
    /// Offset within the first page where the file bytes go.
    pub page_offset: u64,
    /// Range of the image's bytes to copy.
    pub file_start: usize,
    pub file_len: usize,
    pub write: bool,
    pub exec: bool,
}

/// What the kernel does to load an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadPlan {
    pub entry: u64,
    pub segments: Vec<Segment, MAX_SEGMENTS>,
}

/// Checks `bytes` and returns its load plan.
pub fn plan(bytes: &[u8]) -> Result<LoadPlan, ImageError> {
    let file = ElfBytes::<LittleEndian>::minimal_parse(bytes).map_err(|_| ImageError::NotElf)?;
    if file.ehdr.class != Class::ELF64
        || file.ehdr.e_machine != EM_X86_64
        || file.ehdr.e_type != ET_EXEC
    {
        return Err(ImageError::WrongKind);
    }
    let phdrs = file.segments().ok_or(ImageError::BadSegments)?;
    let mut segments: Vec<Segment, MAX_SEGMENTS> = Vec::new();
    for ph in phdrs.iter().filter(|p| p.p_type == PT_LOAD) {
        if ph.p_memsz == 0 {
            continue;
        }
        let write = ph.p_flags & PF_W != 0;
        let exec = ph.p_flags & PF_X != 0;
        if write && exec {
            return Err(ImageError::WriteAndExec);
        }
        let end = ph
            .p_vaddr
            .checked_add(ph.p_memsz)
            .ok_or(ImageError::BadRange)?;
        if ph.p_vaddr < USER_MIN || end > USER_END || ph.p_filesz > ph.p_memsz {
            return Err(ImageError::BadRange);
        }
        let file_end = ph
            .p_offset
            .checked_add(ph.p_filesz)
            .ok_or(ImageError::BadRange)?;
        if file_end > bytes.len() as u64 {
            return Err(ImageError::BadRange);
        }
        let va_start = ph.p_vaddr & !(PAGE_SIZE - 1);
        let va_end = end.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let seg = Segment {
            va_start,
            pages: (va_end - va_start) / PAGE_SIZE,
            page_offset: ph.p_vaddr - va_start,
            file_start: ph.p_offset as usize,
            file_len: ph.p_filesz as usize,
            write,
            exec,
        };
        let overlaps = segments.iter().any(|s| {
            seg.va_start < s.va_start + s.pages * PAGE_SIZE
                && s.va_start < seg.va_start + seg.pages * PAGE_SIZE
        });
        if overlaps {
            return Err(ImageError::BadRange);
        }
        segments.push(seg).map_err(|_| ImageError::BadSegments)?;
    }
    if segments.is_empty() {
        return Err(ImageError::BadSegments);
    }
    let entry = file.ehdr.e_entry;
    let in_exec = segments
        .iter()
        .any(|s| s.exec && entry >= s.va_start && entry < s.va_start + s.pages * PAGE_SIZE);
    if !in_exec {
        return Err(ImageError::BadEntry);
    }
    Ok(LoadPlan { entry, segments })
}

/// Builds a minimal ELF64 executable: one PT_LOAD per `(vaddr, flags, bytes)`, entry at
/// `entry`. For tests of the loader and of the kernel object model.
#[cfg(test)]
pub fn build_test_elf(entry: u64, segs: &[(u64, u32, &[u8])]) -> std::vec::Vec<u8> {
    let phoff = 64u64;
    let data_off = phoff + 56 * segs.len() as u64;
    let mut out = std::vec![0u8; data_off as usize];
    out[0..4].copy_from_slice(b"\x7fELF");
    out[4] = 2; // ELF64
    out[5] = 1; // little endian
    out[6] = 1; // version
    out[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
    out[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[24..32].copy_from_slice(&entry.to_le_bytes());
    out[32..40].copy_from_slice(&phoff.to_le_bytes());
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
    let mut off = data_off;
    for (i, (va, flags, bytes)) in segs.iter().enumerate() {
        let p = (phoff as usize) + 56 * i;
        out[p..p + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        out[p + 4..p + 8].copy_from_slice(&flags.to_le_bytes());
        out[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
        out[p + 16..p + 24].copy_from_slice(&va.to_le_bytes());
        out[p + 24..p + 32].copy_from_slice(&va.to_le_bytes());
        out[p + 32..p + 40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        out[p + 40..p + 48].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
        off += bytes.len() as u64;
    }
    for (_, _, bytes) in segs {
        out.extend_from_slice(bytes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use elf::abi::PF_R;
    use proptest::prelude::*;

    #[test]
    fn plans_a_two_segment_image() {
        let img = build_test_elf(
            0x40_0010,
            &[
                (0x40_0000, PF_R | PF_X, &[0x90; 32]),
                (0x40_1008, PF_R | PF_W, &[1, 2, 3]),
            ],
        );
        let plan = plan(&img).unwrap();
        assert_eq!(plan.entry, 0x40_0010);
        assert_eq!(plan.segments.len(), 2);
        let d = plan.segments[1];
        assert_eq!((d.va_start, d.pages, d.page_offset), (0x40_1000, 1, 8));
        assert_eq!(d.file_len, 3);
        assert!(d.write && !d.exec);
    }

    #[test]
    fn refuses_bad_images() {
        assert_eq!(plan(b"not an elf"), Err(ImageError::NotElf));
        let wx = build_test_elf(0x40_0000, &[(0x40_0000, PF_R | PF_W | PF_X, &[0; 4])]);
        assert_eq!(plan(&wx), Err(ImageError::WriteAndExec));
        let low = build_test_elf(0x1000, &[(0x1000, PF_R | PF_X, &[0; 4])]);
        assert_eq!(plan(&low), Err(ImageError::BadRange));
        let kernel = build_test_elf(
            0xffff_8000_0000_0000,
            &[(0xffff_8000_0000_0000, PF_R | PF_X, &[0; 4])],
        );
        assert_eq!(plan(&kernel), Err(ImageError::BadRange));
        let entry = build_test_elf(0x50_0000, &[(0x40_0000, PF_R | PF_X, &[0; 4])]);
        assert_eq!(plan(&entry), Err(ImageError::BadEntry));
        let overlap = build_test_elf(
            0x40_0000,
            &[
                (0x40_0000, PF_R | PF_X, &[0; 4]),
                (0x40_0800, PF_R, &[0; 4]),
            ],
        );
        assert_eq!(plan(&overlap), Err(ImageError::BadRange));
        let mut truncated = build_test_elf(0x40_0000, &[(0x40_0000, PF_R | PF_X, &[0; 64])]);
        truncated.truncate(truncated.len() - 10);
        assert_eq!(plan(&truncated), Err(ImageError::BadRange));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = plan(&bytes);
        }

        #[test]
        fn corrupted_images_never_panic(pos in 0usize..200, val in any::<u8>()) {
            let mut img = build_test_elf(0x40_0000, &[(0x40_0000, PF_R | PF_X, &[0x90; 64])]);
            let p = pos % img.len();
            img[p] = val;
            let _ = plan(&img);
        }
    }
}
