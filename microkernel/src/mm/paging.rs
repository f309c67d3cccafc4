//! The kernel's own page tables, replacing the loader's: a direct map (HHDM) of all physical
//! memory (1 GiB pages where the CPU has them, else 2 MiB), and the kernel image mapped section
//! by section (text R-X, rodata R--, data RW-), all global. CR0.WP and EFER.NXE are turned on
//! so the kernel honours its own permissions.
//!
//! Every upper-half PML4 entry (256..511) exists from boot on, so user address spaces
//! (`mm::uspace`), which copy them, share every later kernel mapping (the scratch window too).
//! SMEP and SMAP are turned on where the CPU has them.

use super::{alloc_zeroed_frame_below, phys_to_virt};
use crate::arch::cpu;
use core::sync::atomic::{AtomicU64, Ordering};
use microkernel::bootinfo::BootInfo;
use spin::Mutex;
use x86_64::registers::control::{Cr0, Cr0Flags, Cr3, Cr3Flags, Cr4, Cr4Flags};
use x86_64::registers::model_specific::{Efer, EferFlags};
use x86_64::structures::paging::mapper::{MappedFrame, TranslateResult};
use x86_64::structures::paging::{
    FrameAllocator, Mapper, OffsetPageTable, Page, PageSize, PageTable, PageTableFlags as Flags,
    PhysFrame, Size1GiB, Size2MiB, Size4KiB, Translate,
};
use x86_64::{PhysAddr, VirtAddr};

const GIB: u64 = 1 << 30;

/// A 1 GiB window of kernel virtual space that only [`map_scratch`] maps into: nothing else
/// lives there, so mapping a fresh frame in it can never alias a Rust object.
pub const SCRATCH_BASE: u64 = 0xffff_c000_0000_0000;
const SCRATCH_END: u64 = SCRATCH_BASE + GIB;

#[derive(Debug)]
#[allow(dead_code, reason = "fields are read through Debug")]
pub enum PagingError {
    OutOfFrames,
    Map(&'static str),
    OutsideScratchWindow(u64),
    NotMapped(u64),
}

/// Page-table frames come from below this limit (the Multiboot2 boot map covers only 4 GiB
/// until the kernel's tables are live).
static TABLE_FRAME_LIMIT: AtomicU64 = AtomicU64::new(4 * GIB);

struct TableFrames;

// SAFETY: frames come from the kernel frame allocator, are zeroed, and are never handed out
// twice.
unsafe impl FrameAllocator<Size4KiB> for TableFrames {
    fn allocate_frame(&mut self) -> Option<PhysFrame> {
        let frame = alloc_zeroed_frame_below(TABLE_FRAME_LIMIT.load(Ordering::Relaxed))?;
        Some(PhysFrame::containing_address(PhysAddr::new(frame)))
    }
}

static KERNEL_TABLES: Mutex<Option<OffsetPageTable<'static>>> = Mutex::new(None);

extern "C" {
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __data_end: u8;
}

/// The kernel image's sections: (start, end, flags).
pub fn kernel_sections() -> [(u64, u64, Flags); 3] {
    let addr = |p: *const u8| p as u64;
    let base = Flags::PRESENT | Flags::GLOBAL;
    [
        (
            addr(&raw const __text_start),
            addr(&raw const __text_end),
            base,
        ),
        (
            addr(&raw const __rodata_start),
            addr(&raw const __rodata_end),
            base | Flags::NO_EXECUTE,
        ),
        (
            addr(&raw const __data_start),
            addr(&raw const __data_end),
            base | Flags::WRITABLE | Flags::NO_EXECUTE,
        ),
    ]
}

fn map_err<E: core::fmt::Debug>(_: E) -> PagingError {
    PagingError::Map("mapping conflict or out of frames")
}

/// Builds and loads the kernel's page tables.
pub fn init(boot: &BootInfo) -> Result<(), PagingError> {
    let pml4_phys = alloc_zeroed_frame_below(4 * GIB).ok_or(PagingError::OutOfFrames)?;
    // SAFETY: a fresh zeroed frame, reachable through the direct map, owned from now on by
    // `KERNEL_TABLES` alone.
    let pml4 = unsafe { &mut *(phys_to_virt(pml4_phys) as *mut PageTable) };
    // SAFETY: the whole of physical memory the tables use is mapped at `hhdm_offset`.
    let mut tables = unsafe { OffsetPageTable::new(pml4, VirtAddr::new(boot.hhdm_offset)) };
    let table_flags = Flags::PRESENT | Flags::WRITABLE;
    let rw_nx = Flags::PRESENT | Flags::WRITABLE | Flags::NO_EXECUTE | Flags::GLOBAL;

    // The direct map: all of physical memory, and at least the 32-bit space (MMIO, APIC).
    let end = boot.memory_map.max_end().max(4 * GIB);
    let virt = |phys: u64| VirtAddr::new(boot.hhdm_offset + phys);
    if cpu::has_1g_pages() {
        for phys in (0..end.next_multiple_of(GIB)).step_by(GIB as usize) {
            let page = Page::<Size1GiB>::containing_address(virt(phys));
            let frame = PhysFrame::<Size1GiB>::containing_address(PhysAddr::new(phys));
            // SAFETY: the direct map aliases physical memory by design; nothing in the kernel
            // creates Rust references through it except for memory it owns.
            unsafe {
                tables.map_to_with_table_flags(page, frame, rw_nx, table_flags, &mut TableFrames)
            }
            .map_err(map_err)?
            .ignore();
        }
    } else {
        let step = Size2MiB::SIZE;
        for phys in (0..end.next_multiple_of(step)).step_by(step as usize) {
            let page = Page::<Size2MiB>::containing_address(virt(phys));
            let frame = PhysFrame::<Size2MiB>::containing_address(PhysAddr::new(phys));
            // SAFETY: as above.
            unsafe {
                tables.map_to_with_table_flags(page, frame, rw_nx, table_flags, &mut TableFrames)
            }
            .map_err(map_err)?
            .ignore();
        }
    }

    // The kernel image, where it is linked, with per-section permissions.
    for (start, end, flags) in kernel_sections() {
        for va in (start..end).step_by(4096) {
            let phys = va - boot.kernel.virt_start + boot.kernel.phys_start;
            let page = Page::<Size4KiB>::containing_address(VirtAddr::new(va));
            let frame = PhysFrame::containing_address(PhysAddr::new(phys));
            // SAFETY: maps the kernel image to where it already runs, at the same addresses.
            unsafe {
                tables.map_to_with_table_flags(page, frame, flags, table_flags, &mut TableFrames)
            }
            .map_err(map_err)?
            .ignore();
        }
    }

    // Every upper-half PML4 entry, present from now on: user spaces copy them.
    let pml4 = tables.level_4_table_mut();
    for entry in pml4.iter_mut().skip(256) {
        if entry.is_unused() {
            let frame = TableFrames
                .allocate_frame()
                .ok_or(PagingError::OutOfFrames)?;
            entry.set_frame(frame, table_flags);
        }
    }

    // SAFETY: NXE before any NX bit is live; WP and PGE only tighten and speed up translation.
    // The new tables map everything the kernel touches (image, stacks in .bss, direct map), so
    // switching CR3 keeps every live address valid.
    unsafe {
        if cpu::has_nx() {
            Efer::update(|f| f.insert(EferFlags::NO_EXECUTE_ENABLE));
        }
        Cr0::update(|f| f.insert(Cr0Flags::WRITE_PROTECT));
        Cr4::update(|f| f.insert(Cr4Flags::PAGE_GLOBAL));
        Cr3::write(
            PhysFrame::containing_address(PhysAddr::new(pml4_phys)),
            Cr3Flags::empty(),
        );
    }
    TABLE_FRAME_LIMIT.store(u64::MAX, Ordering::Relaxed);
    KERNEL_PML4.store(pml4_phys, Ordering::Relaxed);
    *KERNEL_TABLES.lock() = Some(tables);
    let p = crate::arch::user::enable_protections();
    let on = |b: bool| if b { "on" } else { "off (not supported)" };
    crate::log!(
        info,
        "cpu",
        "SMEP {}, SMAP {}, UMIP {}",
        on(p.smep),
        on(p.smap),
        on(p.umip)
    );
    Ok(())
}

/// Physical address of the kernel's PML4 (0 before `init`).
static KERNEL_PML4: AtomicU64 = AtomicU64::new(0);

/// Physical address of the kernel's own PML4: the CR3 of the kernel's address space, whose
/// upper half every user space shares.
pub fn kernel_pml4() -> u64 {
    KERNEL_PML4.load(Ordering::Relaxed)
}

/// The physical address and leaf flags `va` translates to, if mapped.
pub fn translate(va: u64) -> Option<(u64, Flags)> {
    let guard = KERNEL_TABLES.lock();
    let tables = guard.as_ref()?;
    match tables.translate(VirtAddr::new_truncate(va)) {
        TranslateResult::Mapped {
            frame,
            offset,
            flags,
        } => {
            let base = match frame {
                MappedFrame::Size4KiB(f) => f.start_address(),
                MappedFrame::Size2MiB(f) => f.start_address(),
                MappedFrame::Size1GiB(f) => f.start_address(),
            };
            Some((base.as_u64() + offset, flags))
        }
        _ => None,
    }
}

/// Maps the 4 KiB page at `va` (in the scratch window) to `phys` with `flags`.
pub fn map_scratch(va: u64, phys: u64, flags: Flags) -> Result<(), PagingError> {
    if !(SCRATCH_BASE..SCRATCH_END).contains(&va) {
        return Err(PagingError::OutsideScratchWindow(va));
    }
    let mut guard = KERNEL_TABLES.lock();
    let tables = guard.as_mut().ok_or(PagingError::Map("no kernel tables"))?;
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(va));
    let frame = PhysFrame::containing_address(PhysAddr::new(phys));
    let table_flags = Flags::PRESENT | Flags::WRITABLE;
    // SAFETY: the scratch window holds no Rust objects; a mapping there aliases nothing the
    // kernel references.
    unsafe { tables.map_to_with_table_flags(page, frame, flags, table_flags, &mut TableFrames) }
        .map_err(map_err)?
        .flush();
    Ok(())
}

/// Unmaps the page at `va` (in the scratch window); returns the frame it mapped.
pub fn unmap_scratch(va: u64) -> Result<u64, PagingError> {
    if !(SCRATCH_BASE..SCRATCH_END).contains(&va) {
        return Err(PagingError::OutsideScratchWindow(va));
    }
    let mut guard = KERNEL_TABLES.lock();
    let tables = guard.as_mut().ok_or(PagingError::Map("no kernel tables"))?;
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(va));
    let (frame, flush) = tables.unmap(page).map_err(|_| PagingError::NotMapped(va))?;
    flush.flush();
    Ok(frame.start_address().as_u64())
}
