//! Physical memory: the global frame allocator, the direct map (HHDM), the kernel's page
//! tables (`paging`), and user address spaces with the kernel's `Machine` (`uspace`). Together
//! with `arch` and `boot`, the only place with `unsafe`.

pub mod ept;
pub mod paging;
pub mod uspace;

use microkernel::bootinfo::BootInfo;
use microkernel::frame_alloc::FrameAllocator;
use microkernel::memmap::RegionKind;
use microkernel::PAGE_SIZE;
use spin::{Mutex, Once};

/// Offset of the direct map of all physical memory.
static HHDM_OFFSET: Once<u64> = Once::new();

/// The kernel's frame allocator (`None` until `init`).
pub static FRAMES: Mutex<Option<FrameAllocator<'static>>> = Mutex::new(None);

/// The virtual address of physical address `phys` in the direct map.
pub fn phys_to_virt(phys: u64) -> u64 {
    HHDM_OFFSET.get().copied().unwrap_or(0) + phys
}

/// Why memory could not be set up (printed through `Debug` in the boot failure report).
#[derive(Debug)]
#[allow(dead_code, reason = "fields are read through Debug")]
pub enum MemError {
    NoRoomForBitmap { bytes: u64 },
    Map(microkernel::memmap::MapError),
    Alloc(microkernel::frame_alloc::InitError),
    Paging(paging::PagingError),
}

/// Builds the frame allocator from the boot memory map (its bitmap carved out of usable RAM
/// that the loader's direct map covers), then the kernel's own page tables.
pub fn init(boot: &mut BootInfo) -> Result<(), MemError> {
    HHDM_OFFSET.call_once(|| boot.hhdm_offset);
    let words = FrameAllocator::bitmap_words(&boot.memory_map);
    let bytes = (words as u64 * 8).next_multiple_of(PAGE_SIZE);
    // Below 4 GiB: the Multiboot2 stub's direct map covers only that much.
    let base = boot
        .memory_map
        .find_usable(bytes, PAGE_SIZE, 1 << 32)
        .ok_or(MemError::NoRoomForBitmap { bytes })?;
    boot.memory_map
        .reserve(base, base + bytes, RegionKind::AllocatorMetadata)
        .map_err(MemError::Map)?;
    let ptr = phys_to_virt(base) as *mut u64;
    // SAFETY: `[base, base + bytes)` is usable RAM covered by the loader's direct map, now
    // reserved in the memory map so nothing else will ever use it; this is the only reference.
    let bitmap: &'static mut [u64] = unsafe { core::slice::from_raw_parts_mut(ptr, words) };
    let alloc = FrameAllocator::new(&boot.memory_map, bitmap).map_err(MemError::Alloc)?;
    *FRAMES.lock() = Some(alloc);
    paging::init(boot).map_err(MemError::Paging)?;
    uspace::init(boot);
    Ok(())
}

/// Returns a frame to the allocator.
pub fn free_frame(phys: u64) {
    if let Some(frames) = FRAMES.lock().as_mut() {
        let _ = frames.free(phys);
    }
}

/// Allocates a zeroed frame below `limit`.
pub fn alloc_zeroed_frame_below(limit: u64) -> Option<u64> {
    let frame = FRAMES.lock().as_mut()?.alloc_below(limit)?;
    // SAFETY: the frame was just allocated, so nothing else refers to it, and the direct map
    // covers it.
    unsafe { core::ptr::write_bytes(phys_to_virt(frame) as *mut u8, 0, PAGE_SIZE as usize) };
    Some(frame)
}
