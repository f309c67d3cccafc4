//! `BootInfo`: what the kernel knows about the machine once a loader has handed over.
//!
//! Both entries (Limine and Multiboot2) translate their loader's structures into the raw pieces
//! below and call [`BootInfo::new`], which normalises them. Nothing after that knows which
//! loader ran.

use crate::memmap::{MapError, MemoryMap, Region, RegionKind};
use crate::PAGE_SIZE;
use heapless::{String, Vec};

/// Most boot modules kept; further ones are counted in `modules_dropped`.
pub const MAX_MODULES: usize = 40;
/// Longest kernel command line kept, in bytes.
pub const CMDLINE_MAX: usize = 256;
/// Longest module command line (its name and arguments) kept, in bytes.
pub const MODULE_CMDLINE_MAX: usize = abi::MODULE_CMDLINE_MAX;

/// Which loader started the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loader {
    Limine,
    Multiboot2,
}

/// A boot module: a file the loader put in memory (a service or a guest image).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    pub phys_start: u64,
    pub len: u64,
    pub cmdline: String<MODULE_CMDLINE_MAX>,
}

/// Where the kernel image sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelImage {
    pub phys_start: u64,
    pub virt_start: u64,
    pub len: u64,
}

/// The loader's raw facts, before normalisation.
#[derive(Debug)]
pub struct RawBootInfo<'a> {
    pub loader: Loader,
    /// Offset of the direct map of physical memory (HHDM) the kernel runs with.
    pub hhdm_offset: u64,
    pub kernel: KernelImage,
    pub memory: &'a [Region],
    pub modules: &'a [(u64, u64, &'a str)],
    pub cmdline: &'a str,
    pub rsdp: Option<u64>,
    /// Physical ranges holding loader data still to be read (e.g. the Multiboot2 information).
    pub boot_data: &'a [(u64, u64)],
}

#[derive(Clone, Debug)]
pub struct BootInfo {
    pub loader: Loader,
    pub hhdm_offset: u64,
    pub kernel: KernelImage,
    pub memory_map: MemoryMap,
    pub modules: Vec<Module, MAX_MODULES>,
    pub modules_dropped: usize,
    pub cmdline: String<CMDLINE_MAX>,
    pub cmdline_truncated: bool,
    pub rsdp: Option<u64>,
}

/// Why the loader's information cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    Map(MapError),
    /// The HHDM offset is not a page-aligned higher-half address.
    BadHhdm(u64),
    /// The kernel image is not page-aligned or is empty.
    BadKernelImage,
    /// No usable RAM was reported.
    NoUsableMemory,
}

impl From<MapError> for BootInfoError {
    fn from(e: MapError) -> Self {
        BootInfoError::Map(e)
    }
}

/// Low memory (real-mode IVT, BIOS data, EBDA, option ROMs) is never handed out: it is where
/// firmware structures live and where AP start-up code will go.
pub const LOW_MEMORY_END: u64 = 0x10_0000;

impl BootInfo {
    /// Normalises what the loader said: builds the memory map and reserves the kernel image,
    /// the modules, the loader's data and low memory in it.
    pub fn new(raw: &RawBootInfo<'_>) -> Result<Self, BootInfoError> {
        if raw.hhdm_offset < 0xffff_8000_0000_0000 || !raw.hhdm_offset.is_multiple_of(PAGE_SIZE) {
            return Err(BootInfoError::BadHhdm(raw.hhdm_offset));
        }
        let k = raw.kernel;
        if k.len == 0
            || !k.phys_start.is_multiple_of(PAGE_SIZE)
            || !k.virt_start.is_multiple_of(PAGE_SIZE)
        {
            return Err(BootInfoError::BadKernelImage);
        }

        let mut map = MemoryMap::from_raw(raw.memory)?;
        // Reservations cover whole pages: a frame is either the kernel's or free.
        let mut reserve = |start: u64, len: u64, kind| {
            let first = start - start % PAGE_SIZE;
            let end = start.saturating_add(len).saturating_add(PAGE_SIZE - 1);
            map.reserve(first, end - end % PAGE_SIZE, kind)
        };
        reserve(0, LOW_MEMORY_END, RegionKind::BootData)?;
        reserve(k.phys_start, k.len, RegionKind::Kernel)?;
        for &(start, len, _) in raw.modules {
            reserve(start, len, RegionKind::Modules)?;
        }
        for &(start, len) in raw.boot_data {
            reserve(start, len, RegionKind::BootData)?;
        }
        if map.usable_bytes() == 0 {
            return Err(BootInfoError::NoUsableMemory);
        }

        let mut modules = Vec::new();
        let mut modules_dropped = 0;
        for &(phys_start, len, cmdline) in raw.modules {
            let module = Module {
                phys_start,
                len,
                cmdline: truncated(cmdline).0,
            };
            if modules.push(module).is_err() {
                modules_dropped += 1;
            }
        }
        let (cmdline, cmdline_truncated) = truncated(raw.cmdline);

        Ok(BootInfo {
            loader: raw.loader,
            hhdm_offset: raw.hhdm_offset,
            kernel: k,
            memory_map: map,
            modules,
            modules_dropped,
            cmdline,
            cmdline_truncated,
            rsdp: raw.rsdp,
        })
    }

    /// The virtual address of physical address `phys` in the direct map.
    pub fn phys_to_virt(&self, phys: u64) -> u64 {
        self.hhdm_offset + phys
    }
}

/// `text` cut to at most `N` bytes at a character boundary, and whether it was cut.
fn truncated<const N: usize>(text: &str) -> (String<N>, bool) {
    let mut end = text.len().min(N);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::new();
    // Cannot fail: `end <= N`.
    let _ = out.push_str(&text[..end]);
    (out, end < text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HHDM: u64 = 0xffff_8000_0000_0000;

    fn raw<'a>(memory: &'a [Region], modules: &'a [(u64, u64, &'a str)]) -> RawBootInfo<'a> {
        RawBootInfo {
            loader: Loader::Multiboot2,
            hhdm_offset: HHDM,
            kernel: KernelImage {
                phys_start: 0x20_0000,
                virt_start: 0xffff_ffff_8020_0000,
                len: 0x8_0000,
            },
            memory,
            modules,
            cmdline: "scenario=kernel",
            rsdp: Some(0xe0000),
            boot_data: &[(0x30_0100, 0x200)],
        }
    }

    #[test]
    fn reserves_kernel_modules_low_memory_and_boot_data() {
        let mem = [
            Region::new(0, 0x9_fc00, RegionKind::Usable),
            Region::new(0x10_0000, 0x7f0_0000, RegionKind::Usable),
        ];
        let bi = BootInfo::new(&raw(&mem, &[(0x40_0000, 0x1234, "guest.elf arg")])).unwrap();
        let m = &bi.memory_map;
        assert_eq!(m.kind_at(0x1000), Some(RegionKind::BootData));
        assert_eq!(m.kind_at(0x20_0000), Some(RegionKind::Kernel));
        assert_eq!(m.kind_at(0x27_f000), Some(RegionKind::Kernel));
        assert_eq!(m.kind_at(0x28_0000), Some(RegionKind::Usable));
        assert_eq!(m.kind_at(0x30_0000), Some(RegionKind::BootData));
        assert_eq!(m.kind_at(0x40_1fff), Some(RegionKind::Modules));
        assert_eq!(m.kind_at(0x40_2000), Some(RegionKind::Usable));
        assert_eq!(bi.modules[0].cmdline.as_str(), "guest.elf arg");
        assert_eq!(bi.cmdline.as_str(), "scenario=kernel");
        assert_eq!(bi.phys_to_virt(0x1000), HHDM + 0x1000);
    }

    #[test]
    fn rejects_bad_hhdm_kernel_and_empty_memory() {
        let mem = [Region::new(0x10_0000, 0x100_0000, RegionKind::Usable)];
        let mut r = raw(&mem, &[]);
        r.hhdm_offset = 0x1000;
        assert_eq!(
            BootInfo::new(&r).unwrap_err(),
            BootInfoError::BadHhdm(0x1000)
        );
        let mut r = raw(&mem, &[]);
        r.kernel.phys_start = 0x20_0800;
        assert_eq!(
            BootInfo::new(&r).unwrap_err(),
            BootInfoError::BadKernelImage
        );
        let low = [Region::new(0, 0x9_fc00, RegionKind::Usable)];
        assert_eq!(
            BootInfo::new(&raw(&low, &[])).unwrap_err(),
            BootInfoError::NoUsableMemory
        );
    }

    #[test]
    fn long_strings_and_many_modules_are_cut_not_refused() {
        let mem = [Region::new(0x10_0000, 0x100_0000, RegionKind::Usable)];
        let long = "é".repeat(200);
        let mods: std::vec::Vec<(u64, u64, &str)> = (0..MAX_MODULES as u64 + 4)
            .map(|i| (0x80_0000 + i * 0x1000, 0x100, long.as_str()))
            .collect();
        let mut r = raw(&mem, &mods);
        r.cmdline = &long;
        let bi = BootInfo::new(&r).unwrap();
        assert!(bi.cmdline_truncated);
        assert_eq!(bi.cmdline.len(), CMDLINE_MAX);
        assert_eq!(bi.modules.len(), MAX_MODULES);
        assert_eq!(bi.modules_dropped, 4);
        assert_eq!(bi.modules[0].cmdline.len(), MODULE_CMDLINE_MAX);
        // Every module is reserved, kept or not.
        assert_eq!(
            bi.memory_map
                .kind_at(0x80_0000 + (MAX_MODULES as u64 + 3) * 0x1000),
            Some(RegionKind::Modules)
        );
    }
}
