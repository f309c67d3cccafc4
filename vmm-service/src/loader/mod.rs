//! Guest loaders: multiboot v1 images (a.out kludge, ELF32, ELF64) and flat 64-bit images,
//! as a [`LoadPlan`] checked against guest RAM, then [`load`] into a RAM slice; the multiboot
//! information block; the VMCS entry state.
//!
//! Nothing here panics on a malformed image: every problem is a [`LoadError`].
//!
//! Guest-physical layout the loaders assume (guest RAM starts at GPA 0):
//! - `[0, LOW_RESERVED_END)`: loader-owned: long-mode page tables at 0x1000-0x3fff, GDT at
//!   0x4000, the multiboot info block at 0x8000 (see [`info`], [`entry`]).
//! - `[0x9fc00, 0x100000)`: the legacy EBDA / VGA / BIOS hole (reported reserved).
//! - Images load anywhere else inside RAM (normally at or above 1 MiB).

pub mod boot;
pub mod entry;
pub mod flat64;
pub mod info;
pub mod linux;
pub mod multiboot;

use heapless::Vec;

/// Most loadable segments a plan holds.
pub const MAX_SEGMENTS: usize = 16;
/// End of the low area the loaders own.
pub const LOW_RESERVED_END: u64 = 0x1_0000;
/// The legacy hole below 1 MiB.
pub const HOLE_START: u64 = 0x9_fc00;
pub const HOLE_END: u64 = 0x10_0000;

/// Why an image cannot be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadError {
    /// No multiboot header (magic 0x1BADB002, 4-byte aligned) in the first 8192 bytes.
    NoHeader,
    /// magic + flags + checksum is not 0 mod 2^32.
    BadChecksum,
    /// Required flag bits (0..15) other than 0 and 1 are set (e.g. bit 2, video mode).
    UnsupportedFlags(u32),
    /// Not an ELF image we load (without the a.out kludge).
    BadElf(ElfProblem),
    /// The image ends before data the headers describe.
    Truncated,
    /// A segment does not fit in guest RAM.
    SegmentOutsideRam { gpa: u64, len: u64 },
    /// A segment overlaps the loader's low area or the legacy hole.
    SegmentInReservedArea { gpa: u64, len: u64 },
    /// Two segments overlap.
    Overlap,
    /// The entry point is not inside a loaded segment.
    EntryOutsideImage,
    /// More than [`MAX_SEGMENTS`] loadable segments.
    TooManySegments,
    /// Nothing to load.
    NoSegments,
    /// Inconsistent a.out kludge addresses (load_end < load, bss_end < load_end, header not
    /// inside the loaded range).
    BadAoutKludge,
    /// A segment whose file size exceeds its memory size.
    FileLargerThanMemory,
    /// Guest RAM too small (or not the size the plan was made for).
    RamTooSmall,
    /// The command line contains a NUL byte.
    BadCmdline,
    /// The multiboot info block does not fit below the legacy hole.
    InfoDoesNotFit,
    /// The image file is larger than the guest's RAM (it cannot fit, whatever it holds).
    ImageLargerThanRam,
    /// Not a Linux bzImage this loader boots, or it does not fit (see [`linux`]).
    BadLinux(linux::LinuxProblem),
    /// The ACPI tables cannot describe this many vCPUs (0, or above [`crate::acpi::MAX_CPUS`]).
    BadCpuCount,
}

/// What is wrong with an ELF image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfProblem {
    /// The `elf` crate could not parse it.
    Parse,
    /// Not little-endian x86 (EM_386 for ELF32, EM_X86_64 for ELF64) or not ET_EXEC.
    WrongKind,
    /// No program header table.
    NoProgramHeaders,
}

/// One piece of the image to place in guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub gpa: u64,
    pub file_offset: usize,
    pub file_len: usize,
    /// Bytes occupied in RAM (≥ `file_len`; the rest is zeroed).
    pub mem_len: u64,
}

/// A checked plan: segments inside RAM, not overlapping, entry inside one of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadPlan {
    pub segments: Vec<Segment, MAX_SEGMENTS>,
    pub entry: u64,
}

impl LoadPlan {
    /// An empty plan to fill with [`LoadPlan::add`].
    pub fn new(entry: u64) -> LoadPlan {
        LoadPlan {
            segments: Vec::new(),
            entry,
        }
    }

    /// Adds a segment after checking it against the image, RAM and the other segments.
    pub fn add(&mut self, s: Segment, image_len: usize, ram_bytes: u64) -> Result<(), LoadError> {
        if s.file_len as u64 > s.mem_len {
            return Err(LoadError::FileLargerThanMemory);
        }
        let file_end = s
            .file_offset
            .checked_add(s.file_len)
            .ok_or(LoadError::Truncated)?;
        if file_end > image_len {
            return Err(LoadError::Truncated);
        }
        let outside = LoadError::SegmentOutsideRam {
            gpa: s.gpa,
            len: s.mem_len,
        };
        let end = s.gpa.checked_add(s.mem_len).ok_or(outside)?;
        if end > ram_bytes {
            return Err(outside);
        }
        let overlaps = |a: u64, b: u64| s.gpa < b && a < end;
        if overlaps(0, LOW_RESERVED_END) || overlaps(HOLE_START, HOLE_END) {
            return Err(LoadError::SegmentInReservedArea {
                gpa: s.gpa,
                len: s.mem_len,
            });
        }
        if self
            .segments
            .iter()
            .any(|o| overlaps(o.gpa, o.gpa + o.mem_len))
        {
            return Err(LoadError::Overlap);
        }
        self.segments
            .push(s)
            .map_err(|_| LoadError::TooManySegments)
    }

    /// Checks that the plan is not empty and the entry lies in a segment.
    pub fn finish(self) -> Result<LoadPlan, LoadError> {
        if self.segments.is_empty() {
            return Err(LoadError::NoSegments);
        }
        if !self
            .segments
            .iter()
            .any(|s| s.gpa <= self.entry && self.entry - s.gpa < s.mem_len)
        {
            return Err(LoadError::EntryOutsideImage);
        }
        Ok(self)
    }
}

/// Copies the plan's file bytes from `image` into `ram` (guest RAM from GPA 0) and zeroes the
/// rest of each segment. Bounds are checked again, so a plan made for another image or RAM
/// size is an error, not a panic.
pub fn load(plan: &LoadPlan, image: &[u8], ram: &mut [u8]) -> Result<(), LoadError> {
    for s in &plan.segments {
        let src = s
            .file_offset
            .checked_add(s.file_len)
            .and_then(|end| image.get(s.file_offset..end))
            .ok_or(LoadError::Truncated)?;
        let start = usize::try_from(s.gpa).map_err(|_| LoadError::RamTooSmall)?;
        let len = usize::try_from(s.mem_len).map_err(|_| LoadError::RamTooSmall)?;
        let dst = start
            .checked_add(len)
            .and_then(|end| ram.get_mut(start..end))
            .ok_or(LoadError::RamTooSmall)?;
        let (file, bss) = dst
            .split_at_mut_checked(src.len())
            .ok_or(LoadError::FileLargerThanMemory)?;
        file.copy_from_slice(src);
        bss.fill(0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(gpa: u64, off: usize, flen: usize, mlen: u64) -> Segment {
        Segment {
            gpa,
            file_offset: off,
            file_len: flen,
            mem_len: mlen,
        }
    }

    #[test]
    fn add_checks() {
        let mut p = LoadPlan::new(0x10_0000);
        let ram = 4 << 20;
        assert_eq!(
            p.add(seg(0x10_0000, 0, 10, 5), 100, ram),
            Err(LoadError::FileLargerThanMemory)
        );
        assert_eq!(
            p.add(seg(0x10_0000, 95, 10, 10), 100, ram),
            Err(LoadError::Truncated)
        );
        assert_eq!(
            p.add(seg(0x10_0000, usize::MAX, 10, 10), 100, ram),
            Err(LoadError::Truncated)
        );
        assert!(matches!(
            p.add(seg(u64::MAX - 4, 0, 0, 10), 100, ram),
            Err(LoadError::SegmentOutsideRam { .. })
        ));
        assert!(matches!(
            p.add(seg(ram - 4, 0, 0, 10), 100, ram),
            Err(LoadError::SegmentOutsideRam { .. })
        ));
        assert!(matches!(
            p.add(seg(0x8000, 0, 0, 10), 100, ram),
            Err(LoadError::SegmentInReservedArea { .. })
        ));
        assert!(matches!(
            p.add(seg(0x9_0000, 0, 0, 0x10000), 100, ram),
            Err(LoadError::SegmentInReservedArea { .. })
        ));
        assert_eq!(p.add(seg(0x10_0000, 0, 10, 0x1000), 100, ram), Ok(()));
        assert_eq!(
            p.add(seg(0x10_0fff, 0, 10, 0x1000), 100, ram),
            Err(LoadError::Overlap)
        );
        assert_eq!(p.add(seg(0x20_0000, 10, 10, 0x10), 100, ram), Ok(()));
        assert!(p.clone().finish().is_ok());
        let mut q = p.clone();
        q.entry = 0x10_1000;
        assert_eq!(q.finish(), Err(LoadError::EntryOutsideImage));
        assert_eq!(LoadPlan::new(0).finish(), Err(LoadError::NoSegments));
    }

    #[test]
    fn load_copies_and_zeroes_and_rechecks() {
        let mut p = LoadPlan::new(0x10_0000);
        p.add(seg(0x10_0000, 2, 3, 6), 8, 2 << 20).unwrap();
        let image = [9u8, 9, 1, 2, 3, 9, 9, 9];
        let mut ram = vec![0xaau8; 2 << 20];
        load(&p, &image, &mut ram).unwrap();
        assert_eq!(&ram[0x10_0000..0x10_0007], &[1, 2, 3, 0, 0, 0, 0xaa]);
        assert_eq!(load(&p, &image[..4], &mut ram), Err(LoadError::Truncated));
        assert_eq!(
            load(&p, &image, &mut ram[..0x10_0003]),
            Err(LoadError::RamTooSmall)
        );
    }
}
