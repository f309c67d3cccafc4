//! User address spaces and the kernel's [`Machine`]: what the kernel object model
//! (`microkernel::kobj`) asks of the hardware.
//!
//! An [`AddressSpace`] is a PML4 frame whose upper half (entries 256..511) copies the kernel's
//! (all present from boot, so later kernel mappings are shared); its lower half maps 4 KiB
//! user pages through tables it owns. The kernel reaches user memory only by walking those
//! tables and touching the frames through the direct map, so a bad user pointer is an error,
//! never a fault, and SMAP never fires.

use super::{paging, phys_to_virt, FRAMES};
use crate::arch::{timer, vmx};
use heapless::{String, Vec};
use microkernel::bootinfo::{BootInfo, MAX_MODULES, MODULE_CMDLINE_MAX};
use microkernel::kobj::machine::{BadUserAddress, Machine, MapError, PageAccess};
use microkernel::kobj::queue::ThreadId;
use microkernel::memmap::{MemoryMap, RegionKind};
use microkernel::PAGE_SIZE;
use spin::Once;
use x86_64::registers::control::Cr3;
use x86_64::registers::model_specific::{Efer, EferFlags};
use x86_64::structures::paging::PhysFrame;
use x86_64::PhysAddr;

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const HUGE: u64 = 1 << 7;
const NO_EXECUTE: u64 = 1 << 63;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Flags of the lower half's intermediate tables: the leaf decides the access.
const TABLE_FLAGS: u64 = PRESENT | WRITABLE | USER;

const USER_MIN: u64 = abi::ipc::layout::USER_MIN;
const USER_END: u64 = abi::ipc::layout::USER_END;

/// A user address space: its PML4 frame. Freed with [`Machine::space_destroy`].
#[derive(Debug, PartialEq, Eq)]
pub struct AddressSpace {
    pml4: u64,
}

impl AddressSpace {
    /// Physical address of the PML4 (what CR3 holds while the space is active).
    pub fn root(&self) -> u64 {
        self.pml4
    }
}

fn entry_ptr(table: u64, index: usize) -> *mut u64 {
    (phys_to_virt(table) as *mut u64).wrapping_add(index)
}

/// Entry `index` of the page table at physical `table`.
pub(super) fn read_entry(table: u64, index: usize) -> u64 {
    debug_assert!(index < 512);
    // SAFETY: `table` is a page-table frame (the kernel's PML4 or one a space owns), mapped in
    // the direct map; the entry is read as a plain value, no reference is formed.
    unsafe { entry_ptr(table, index).read_volatile() }
}

pub(super) fn write_entry(table: u64, index: usize, value: u64) {
    debug_assert!(index < 512);
    // SAFETY: as for `read_entry`; only tables of the lower half of a user space are written,
    // which belong to that space alone and hold no Rust objects.
    unsafe { entry_ptr(table, index).write_volatile(value) }
}

pub(super) fn indices(va: u64) -> [usize; 4] {
    [39, 30, 21, 12].map(|shift| ((va >> shift) & 0x1ff) as usize)
}

pub(super) fn alloc_frame() -> Option<u64> {
    super::alloc_zeroed_frame_below(u64::MAX)
}

pub(super) fn free_frame(phys: u64) {
    if let Some(frames) = FRAMES.lock().as_mut() {
        let _ = frames.free(phys);
    }
}

fn nx_enabled() -> bool {
    Efer::read().contains(EferFlags::NO_EXECUTE_ENABLE)
}

/// The leaf entry's table and index for `va`, creating missing tables when `create`.
fn walk(space: &AddressSpace, va: u64, create: bool) -> Result<(u64, usize), MapError> {
    let idx = indices(va);
    let mut table = space.pml4;
    for &i in &idx[..3] {
        let e = read_entry(table, i);
        table = if e & PRESENT != 0 {
            if e & HUGE != 0 {
                return Err(MapError::BadAddress);
            }
            e & ADDR_MASK
        } else if create {
            let frame = alloc_frame().ok_or(MapError::NoMemory)?;
            write_entry(table, i, frame | TABLE_FLAGS);
            frame
        } else {
            return Err(MapError::BadAddress);
        };
    }
    Ok((table, idx[3]))
}

/// The physical address `va` maps to when user code may read (and, if `write`, write) it.
/// On every IPC: one pass over the four levels, the direct-map offset read once.
fn user_phys(space: &AddressSpace, va: u64, write: bool) -> Option<u64> {
    if va >= USER_END {
        return None;
    }
    let need = PRESENT | USER | if write { WRITABLE } else { 0 };
    let hhdm = phys_to_virt(0);
    let mut table = space.pml4;
    let mut shift = 39;
    loop {
        let index = ((va >> shift) & 0x1ff) as usize;
        // SAFETY: `table` is a page-table frame of `space` (its PML4, or a table an entry
        // checked present points to), mapped in the direct map at `hhdm`; read as a value.
        let e = unsafe { ((hhdm + table) as *const u64).add(index).read_volatile() };
        if e & need != need {
            return None;
        }
        if shift == 12 {
            return Some((e & ADDR_MASK) + (va & (PAGE_SIZE - 1)));
        }
        if e & HUGE != 0 {
            return None;
        }
        table = e & ADDR_MASK;
        shift -= 9;
    }
}

/// Splits `[va, va + len)` into per-page pieces `(va, offset into the buffer, length)`; `None`
/// if the range is not inside the user half.
fn pieces(va: u64, len: usize) -> Option<impl Iterator<Item = (u64, usize, usize)>> {
    let end = va.checked_add(len as u64)?;
    if end > USER_END {
        return None;
    }
    let mut cur = va;
    Some(core::iter::from_fn(move || {
        if cur >= end {
            return None;
        }
        let page_end = (cur & !(PAGE_SIZE - 1)) + PAGE_SIZE;
        let n = (page_end.min(end) - cur) as usize;
        let piece = (cur, (cur - va) as usize, n);
        cur += n as u64;
        Some(piece)
    }))
}

/// Loads `space` into CR3 (nothing if it is already there).
#[inline]
pub fn activate(space: &AddressSpace) {
    load_cr3(space.pml4);
}

/// Loads the kernel's own address space into CR3 (nothing if it is already there).
pub fn activate_kernel() {
    load_cr3(paging::kernel_pml4());
}

/// Physical address of the PML4 in CR3.
#[inline]
pub fn current_root() -> u64 {
    Cr3::read_raw().0.start_address().as_u64()
}

#[inline]
fn load_cr3(pml4: u64) {
    if current_root() == pml4 {
        return;
    }
    // SAFETY: `pml4` is the kernel's PML4 or a user space's (a page-aligned frame from the
    // allocator, so the unchecked frame is a frame), whose upper half is the kernel's: every
    // kernel address (image, stacks, direct map) stays mapped the same way. No flag: no
    // PCID, PWT and PCD clear.
    unsafe {
        Cr3::write_raw(
            PhysFrame::from_start_address_unchecked(PhysAddr::new_unsafe(pml4)),
            0,
        )
    };
}

fn invalidate_if_active(space: &AddressSpace, va: u64) {
    if current_root() == space.pml4 {
        x86_64::instructions::tlb::flush(x86_64::VirtAddr::new(va));
    }
}

/// What the kernel keeps of the boot information: module views and command lines.
struct BootView {
    modules: Vec<(String<MODULE_CMDLINE_MAX>, &'static [u8]), MAX_MODULES>,
    cmdline: String<{ microkernel::bootinfo::CMDLINE_MAX }>,
    /// The memory map after `mm::init`'s reservations: the allocator's frames are `Usable`.
    memory: MemoryMap,
}

static BOOT_VIEW: Once<BootView> = Once::new();

/// Records the boot modules (as `'static` views through the direct map) and the command line
/// for [`KernelMachine`]. Called once from `mm::init`.
pub fn init(boot: &BootInfo) {
    BOOT_VIEW.call_once(|| {
        let mut modules = Vec::new();
        for m in &boot.modules {
            let ptr = phys_to_virt(m.phys_start) as *const u8;
            // SAFETY: the module's frames are reserved (`RegionKind::Modules`) in the memory
            // map, so the allocator never hands them out and nothing writes them: they stay
            // valid and unchanged for the kernel's lifetime, in the direct map.
            let bytes: &'static [u8] = unsafe { core::slice::from_raw_parts(ptr, m.len as usize) };
            let _ = modules.push((m.cmdline.clone(), bytes));
        }
        BootView {
            modules,
            cmdline: boot.cmdline.clone(),
            memory: boot.memory_map.clone(),
        }
    });
}

/// The machine under the kernel object model. All its state is global (frame allocator, boot
/// view, timer), so it is a unit value.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelMachine;

/// Bytes shown as text: valid UTF-8 as is, each invalid sequence as U+FFFD, control characters
/// (but tab) as `?`.
struct Lossy<'a>(&'a [u8]);

impl core::fmt::Display for Lossy<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        use core::fmt::Write;
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                f.write_char(if c.is_control() && c != '\t' { '?' } else { c })?;
            }
            if !chunk.invalid().is_empty() {
                f.write_char('\u{fffd}')?;
            }
        }
        Ok(())
    }
}

impl Machine for KernelMachine {
    type Space = AddressSpace;

    fn space_new(&mut self) -> Option<AddressSpace> {
        let kernel = paging::kernel_pml4();
        if kernel == 0 {
            return None;
        }
        let pml4 = alloc_frame()?;
        for i in 256..512 {
            write_entry(pml4, i, read_entry(kernel, i));
        }
        Some(AddressSpace { pml4 })
    }

    fn space_destroy(&mut self, space: AddressSpace) {
        if current_root() == space.pml4 {
            activate_kernel();
        }
        let table_of = |e: u64| (e & PRESENT != 0 && e & HUGE == 0).then_some(e & ADDR_MASK);
        for i4 in 0..256 {
            let Some(pdpt) = table_of(read_entry(space.pml4, i4)) else {
                continue;
            };
            for i3 in 0..512 {
                let Some(pd) = table_of(read_entry(pdpt, i3)) else {
                    continue;
                };
                for i2 in 0..512 {
                    if let Some(pt) = table_of(read_entry(pd, i2)) {
                        free_frame(pt);
                    }
                }
                free_frame(pd);
            }
            free_frame(pdpt);
        }
        free_frame(space.pml4);
    }

    fn map(
        &mut self,
        space: &mut AddressSpace,
        va: u64,
        phys: u64,
        access: PageAccess,
    ) -> Result<(), MapError> {
        if !(USER_MIN..USER_END).contains(&va)
            || !va.is_multiple_of(PAGE_SIZE)
            || !phys.is_multiple_of(PAGE_SIZE)
            || phys & !ADDR_MASK != 0
        {
            return Err(MapError::BadAddress);
        }
        let (table, i) = walk(space, va, true)?;
        if read_entry(table, i) & PRESENT != 0 {
            return Err(MapError::AlreadyMapped);
        }
        let mut entry = phys | PRESENT | USER;
        if access.write {
            entry |= WRITABLE;
        }
        if !access.exec && nx_enabled() {
            entry |= NO_EXECUTE;
        }
        write_entry(table, i, entry);
        invalidate_if_active(space, va);
        Ok(())
    }

    fn map_range(
        &mut self,
        space: &mut AddressSpace,
        va: u64,
        phys: u64,
        pages: u64,
        access: PageAccess,
    ) -> Result<(), (MapError, u64)> {
        let end = pages
            .checked_mul(PAGE_SIZE)
            .and_then(|len| va.checked_add(len));
        let in_range = end.is_some_and(|end| va >= USER_MIN && end <= USER_END);
        if !in_range
            || !va.is_multiple_of(PAGE_SIZE)
            || !phys.is_multiple_of(PAGE_SIZE)
            || phys.saturating_add(pages * PAGE_SIZE) & !ADDR_MASK != 0
        {
            return Err((MapError::BadAddress, 0));
        }
        let mut flags = PRESENT | USER;
        if access.write {
            flags |= WRITABLE;
        }
        if !access.exec && nx_enabled() {
            flags |= NO_EXECUTE;
        }
        // One walk per page table, then its entries in a row. A not-present entry made
        // present needs no TLB invalidation: the CPU caches no not-present translations.
        let mut done = 0;
        while done < pages {
            let v = va + done * PAGE_SIZE;
            let (table, first) = walk(space, v, true).map_err(|e| (e, done))?;
            let n = (512 - first as u64).min(pages - done);
            for k in 0..n {
                let i = first + k as usize;
                if read_entry(table, i) & PRESENT != 0 {
                    return Err((MapError::AlreadyMapped, done + k));
                }
                write_entry(table, i, (phys + (done + k) * PAGE_SIZE) | flags);
            }
            done += n;
        }
        Ok(())
    }

    fn unmap(&mut self, space: &mut AddressSpace, va: u64) -> Option<u64> {
        if !(USER_MIN..USER_END).contains(&va) || !va.is_multiple_of(PAGE_SIZE) {
            return None;
        }
        let (table, i) = walk(space, va, false).ok()?;
        let e = read_entry(table, i);
        if e & PRESENT == 0 {
            return None;
        }
        write_entry(table, i, 0);
        invalidate_if_active(space, va);
        Some(e & ADDR_MASK)
    }

    fn copy_from_user(
        &self,
        space: &AddressSpace,
        va: u64,
        out: &mut [u8],
    ) -> Result<(), BadUserAddress> {
        if out.is_empty() {
            return Ok(());
        }
        // Within one page (an exit reply, most IPC): one walk, one copy.
        if (va & (PAGE_SIZE - 1)) + out.len() as u64 <= PAGE_SIZE {
            let phys = user_phys(space, va, false).ok_or(BadUserAddress)?;
            // SAFETY: `phys..phys + len` lies in one user-readable frame of `space` (the walk
            // checked it; the range does not cross the page), read through the direct map;
            // a user frame never overlaps a kernel buffer.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    phys_to_virt(phys) as *const u8,
                    out.as_mut_ptr(),
                    out.len(),
                )
            };
            return Ok(());
        }
        for (uva, off, n) in pieces(va, out.len()).ok_or(BadUserAddress)? {
            let phys = user_phys(space, uva, false).ok_or(BadUserAddress)?;
            let src = phys_to_virt(phys) as *const u8;
            // SAFETY: `phys..phys + n` lies in one user-readable frame of `space` (checked by
            // the walk), read through the direct map; `out[off..off + n]` is in bounds and a
            // user frame never overlaps a kernel buffer.
            unsafe { core::ptr::copy_nonoverlapping(src, out[off..off + n].as_mut_ptr(), n) };
        }
        Ok(())
    }

    fn user_frame(&self, space: &AddressSpace, va: u64, write: bool) -> Option<u64> {
        user_phys(space, va, write)
    }

    fn write_user_frame(&mut self, phys: u64, data: &[u8]) {
        if (phys & (PAGE_SIZE - 1)) + data.len() as u64 > PAGE_SIZE {
            return;
        }
        // SAFETY: `phys..phys + len` lies in one page (checked) of a frame a user space maps
        // writable now (the caller's contract: a walk found it and the space has unmapped
        // nothing since, so the frame is still mapped and so still allocated); user frames
        // hold no Rust objects. Written through the direct map.
        unsafe { copy_words(phys_to_virt(phys) as *mut u8, data.as_ptr(), data.len()) };
    }

    fn read_user_frame(&self, phys: u64, out: &mut [u8]) {
        if (phys & (PAGE_SIZE - 1)) + out.len() as u64 > PAGE_SIZE {
            return;
        }
        // SAFETY: as for `write_user_frame`; the bytes are copied out, no reference is kept.
        unsafe { copy_words(out.as_mut_ptr(), phys_to_virt(phys) as *const u8, out.len()) };
    }

    fn user_range_ok(&self, space: &AddressSpace, va: u64, len: u64, write: bool) -> bool {
        let Ok(len) = usize::try_from(len) else {
            return false;
        };
        pieces(va, len)
            .is_some_and(|mut p| p.all(|(uva, _, _)| user_phys(space, uva, write).is_some()))
    }

    fn copy_to_user(
        &mut self,
        space: &AddressSpace,
        va: u64,
        data: &[u8],
    ) -> Result<(), BadUserAddress> {
        if data.is_empty() {
            return Ok(());
        }
        // Within one page (an exit message, most IPC): one walk, one copy.
        if (va & (PAGE_SIZE - 1)) + data.len() as u64 <= PAGE_SIZE {
            let phys = user_phys(space, va, true).ok_or(BadUserAddress)?;
            // SAFETY: `phys..phys + len` lies in one user-writable frame of `space` (the walk
            // checked it; the range does not cross the page), which holds no Rust objects;
            // written through the direct map.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    phys_to_virt(phys) as *mut u8,
                    data.len(),
                )
            };
            return Ok(());
        }
        // Translate every page first: a refused copy writes nothing.
        let mut frames = [(0u64, 0usize, 0usize); 3];
        let mut count = 0;
        for (uva, off, n) in pieces(va, data.len()).ok_or(BadUserAddress)? {
            let phys = user_phys(space, uva, true).ok_or(BadUserAddress)?;
            if let Some(slot) = frames.get_mut(count) {
                *slot = (phys, off, n);
            }
            count += 1;
        }
        if count <= frames.len() {
            for &(phys, off, n) in &frames[..count] {
                // SAFETY: `phys..phys + n` lies in one user-writable frame of `space` (checked
                // above), which holds no Rust objects (user memory); written through the
                // direct map.
                unsafe {
                    core::ptr::copy_nonoverlapping(
                        data[off..off + n].as_ptr(),
                        phys_to_virt(phys) as *mut u8,
                        n,
                    )
                };
            }
            return Ok(());
        }
        for (uva, off, n) in pieces(va, data.len()).ok_or(BadUserAddress)? {
            let phys = user_phys(space, uva, true).ok_or(BadUserAddress)?;
            let dst = phys_to_virt(phys) as *mut u8;
            // SAFETY: `phys..phys + n` lies in one user-writable frame of `space`, which holds
            // no Rust objects (user memory); written through the direct map.
            unsafe { core::ptr::copy_nonoverlapping(data[off..off + n].as_ptr(), dst, n) };
        }
        Ok(())
    }

    fn copy_user_to_user(
        &mut self,
        src: &AddressSpace,
        src_va: u64,
        dst: &AddressSpace,
        dst_va: u64,
        len: usize,
    ) -> Result<(), BadUserAddress> {
        // Each side within one page (most IPC): two walks, one copy.
        let in_page = |va: u64| (va & (PAGE_SIZE - 1)) + len as u64 <= PAGE_SIZE;
        if len > 0 && in_page(src_va) && in_page(dst_va) {
            let sp = user_phys(src, src_va, false).ok_or(BadUserAddress)?;
            let dp = user_phys(dst, dst_va, true).ok_or(BadUserAddress)?;
            // SAFETY: both ranges lie in one user frame each (checked by the walks; neither
            // crosses its page), readable and writable respectively, holding no Rust objects;
            // `ptr::copy` allows the two to overlap (a task sending to itself).
            unsafe {
                core::ptr::copy(
                    phys_to_virt(sp) as *const u8,
                    phys_to_virt(dp) as *mut u8,
                    len,
                )
            };
            return Ok(());
        }
        // Translate every piece first (at most three for a payload of one page or less: each
        // side crosses at most one page boundary), so a refused copy writes nothing.
        let mut pieces = [(0u64, 0u64, 0usize); 3];
        let mut count = 0;
        let mut done = 0;
        while done < len {
            let (s, d) = (src_va + done as u64, dst_va + done as u64);
            let n = (len - done)
                .min((PAGE_SIZE - (s & (PAGE_SIZE - 1))) as usize)
                .min((PAGE_SIZE - (d & (PAGE_SIZE - 1))) as usize);
            let sp = user_phys(src, s, false).ok_or(BadUserAddress)?;
            let dp = user_phys(dst, d, true).ok_or(BadUserAddress)?;
            *pieces.get_mut(count).ok_or(BadUserAddress)? = (sp, dp, n);
            count += 1;
            done += n;
        }
        for &(sp, dp, n) in &pieces[..count] {
            // SAFETY: both pieces lie in one user frame each (checked by the walks above),
            // readable and writable respectively, holding no Rust objects; `ptr::copy` allows
            // the two to overlap (a task sending to itself).
            unsafe {
                core::ptr::copy(
                    phys_to_virt(sp) as *const u8,
                    phys_to_virt(dp) as *mut u8,
                    n,
                )
            };
        }
        Ok(())
    }

    fn frames_alloc(&mut self, pages: u64) -> Option<u64> {
        if pages == 0 {
            return None;
        }
        let base = FRAMES
            .lock()
            .as_mut()?
            .alloc_contiguous(pages, PAGE_SIZE, u64::MAX)?;
        let bytes = pages.checked_mul(PAGE_SIZE)? as usize;
        // SAFETY: the frames were just allocated, so nothing else refers to them, and the
        // direct map covers them.
        unsafe { core::ptr::write_bytes(phys_to_virt(base) as *mut u8, 0, bytes) };
        Some(base)
    }

    fn frames_available(&self) -> u64 {
        FRAMES.lock().as_ref().map_or(0, |f| f.free_frames())
    }

    fn frames_free(&mut self, phys: u64, pages: u64) {
        let mut guard = FRAMES.lock();
        if let Some(frames) = guard.as_mut() {
            for i in 0..pages {
                let _ = frames.free(phys + i * PAGE_SIZE);
            }
        }
    }

    #[inline]
    fn write_owned_words(&mut self, phys: u64, words: &[u64]) {
        let base = phys_to_virt(phys) as *mut u64;
        for (i, &w) in words.iter().enumerate() {
            // SAFETY: the object model passes only 8-aligned addresses inside frames it
            // allocated and keeps (the trace ring, never freed), mapped in the direct map;
            // another task may map them read-only, hence the volatile store.
            unsafe { core::ptr::write_volatile(base.add(i), w.to_le()) };
        }
    }

    fn write_phys(&mut self, phys: u64, data: &[u8]) {
        let end = phys.saturating_add(data.len() as u64);
        // Only frames the allocator handed out (never the kernel image, modules or tables of
        // the boot loader) may be written.
        let usable = |f: u64| {
            BOOT_VIEW
                .get()
                .is_some_and(|v| v.memory.kind_at(f) == Some(RegionKind::Usable))
        };
        let allocated = {
            let guard = FRAMES.lock();
            guard.as_ref().is_some_and(|frames| {
                let first = phys & !(PAGE_SIZE - 1);
                (first..end)
                    .step_by(PAGE_SIZE as usize)
                    .all(|f| usable(f) && !frames.is_free(f))
            })
        };
        if !allocated || data.is_empty() {
            return;
        }
        // SAFETY: every byte lies in frames the allocator handed out (checked above), which
        // callers own (from `frames_alloc`) and which hold no Rust objects.
        unsafe { copy_words(phys_to_virt(phys) as *mut u8, data.as_ptr(), data.len()) };
    }

    fn module(&self, index: usize) -> Option<(&str, &[u8])> {
        let (name, bytes) = BOOT_VIEW.get()?.modules.get(index)?;
        Some((name.as_str(), bytes))
    }

    fn module_count(&self) -> usize {
        BOOT_VIEW.get().map_or(0, |v| v.modules.len())
    }

    fn cmdline(&self) -> &str {
        BOOT_VIEW.get().map_or("", |v| v.cmdline.as_str())
    }

    fn console_write(&mut self, task: &str, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let (line, tail) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            crate::println!("[{task}] {}", Lossy(line));
            rest = tail;
        }
    }

    fn clock(&self) -> (u64, u64) {
        (timer::ticks(), timer::HZ)
    }

    fn tsc_hz(&self) -> u64 {
        timer::tsc_hz()
    }

    #[inline]
    fn tsc(&self) -> u64 {
        crate::arch::cpu::rdtsc()
    }

    fn xstate_switch(&mut self, from: Option<ThreadId>, to: ThreadId) {
        crate::arch::xstate::switch(from, to);
    }

    fn xstate_reset(&mut self, t: ThreadId) {
        crate::arch::xstate::reset(t);
    }

    fn xcr0_supported(&self) -> u64 {
        crate::arch::xstate::host_xcr0()
    }

    #[inline(always)]
    fn xstate_trap(&mut self, on: bool) {
        crate::arch::xstate::set_trap(on);
    }

    fn read_phys(&self, phys: u64, out: &mut [u8]) {
        // SAFETY: callers name guest RAM, frames of a memory object, mapped in the direct
        // map; the bytes are copied out, no reference is kept.
        unsafe { copy_words(out.as_mut_ptr(), phys_to_virt(phys) as *const u8, out.len()) };
    }

    type Ept = super::ept::Ept;
    type Vmcs = vmx::Vmcs;

    fn vmx_available(&self) -> bool {
        vmx::available()
    }

    fn ept_new(&mut self) -> Option<Self::Ept> {
        super::ept::Ept::new()
    }

    fn ept_destroy(&mut self, ept: Self::Ept) {
        vmx::invept(ept.eptp());
        ept.destroy();
    }

    fn ept_map(
        &mut self,
        ept: &mut Self::Ept,
        gpa: u64,
        hpa: u64,
        rights: u64,
    ) -> Result<(), MapError> {
        if ept.map(gpa, hpa, rights)? {
            vmx::invept(ept.eptp());
        }
        Ok(())
    }

    fn ept_unmap(&mut self, ept: &mut Self::Ept, gpa: u64) {
        if ept.unmap(gpa) {
            vmx::invept(ept.eptp());
        }
    }

    fn vmcs_new(&mut self, ept: &Self::Ept, vpid: u16, shadow: bool) -> Option<Self::Vmcs> {
        vmx::vmcs_new(ept.eptp(), vpid, shadow)
    }

    fn vmcs_real_mode_ept(&mut self, vmcs: &mut Self::Vmcs, ept: Option<&Self::Ept>) {
        vmx::set_real_mode_ept(vmcs, ept.map(|e| e.eptp()));
    }

    fn vmcs_destroy(&mut self, vmcs: Self::Vmcs) {
        vmx::vmcs_destroy(vmcs);
    }

    fn vmcs_read(&mut self, vmcs: &mut Self::Vmcs, field: u64) -> u64 {
        if field == abi::vmx::field::GUEST_CR2 {
            return vmcs.cr2;
        }
        if field == abi::vmx::field::DEADLINE {
            return vmcs.deadline;
        }
        if let Some(v) = vmcs.msrs.read(field) {
            return v;
        }
        if let Some(r) = fpu_field(vmcs, field) {
            return *r;
        }
        vmx::read(vmcs, field)
    }

    fn vmcs_write(&mut self, vmcs: &mut Self::Vmcs, field: u64, value: u64) {
        if field == abi::vmx::field::GUEST_CR2 {
            vmcs.cr2 = value;
            return;
        }
        if field == abi::vmx::field::DEADLINE {
            vmcs.deadline = value;
            return;
        }
        if vmcs.msrs.write(field, value) {
            return;
        }
        if let Some(r) = fpu_field(vmcs, field) {
            *r = value;
            crate::arch::xstate::debug_changed();
            return;
        }
        vmx::write(vmcs, field, value);
    }

    #[inline(always)]
    fn vmcs_read_plain<const N: usize>(
        &mut self,
        vmcs: &mut Self::Vmcs,
        fields: [u64; N],
    ) -> [u64; N] {
        let values = vmx::read_plain(vmcs, fields);
        // None of the fields the kernel keeps aside (they would read the VMCS, not the value).
        debug_assert_eq!(
            values,
            fields.map(|f| self.vmcs_read(vmcs, f)),
            "{fields:x?}"
        );
        values
    }

    #[inline(always)]
    fn vmcs_skip_instruction(&mut self, vmcs: &mut Self::Vmcs, len: u64) {
        vmx::skip_instruction(vmcs, len);
    }

    fn host_cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let (a, b, c, d) = crate::arch::cpu::cpuid(leaf, subleaf);
        [a, b, c, d]
    }
}

/// Copies `len` bytes from `src` to `dst` as eight-byte words, then the rest as bytes: the
/// exit messages and replies that go through a user frame are whole words (their layout,
/// `abi::vmx::layout`), and these few instructions replace a `memcpy` call that first aligns
/// the destination.
///
/// # Safety
///
/// As for `core::ptr::copy_nonoverlapping`: `src` readable and `dst` writable for `len`
/// bytes, the two ranges apart.
#[inline(always)]
unsafe fn copy_words(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: the caller's contract; the kernel runs with RFLAGS.DF clear (every entry clears
    // it), so both strings move forwards.
    unsafe {
        core::arch::asm!(
            "rep movsq",
            "mov ecx, {tail:e}",
            "rep movsb",
            tail = in(reg) len & 7,
            inout("rcx") len >> 3 => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags)
        )
    };
}

/// The `fpu` pseudo-fields a [`vmx::Vmcs`] keeps: DR0..DR3, DR6 and XCR0.
fn fpu_field(vmcs: &mut vmx::Vmcs, f: u64) -> Option<&mut u64> {
    use abi::vmx::field::{GUEST_DR0, GUEST_DR6, GUEST_XCR0};
    match f {
        GUEST_DR0..=0x3_0000_0203 => vmcs.dr.get_mut((f - GUEST_DR0) as usize),
        GUEST_DR6 => Some(&mut vmcs.dr[4]),
        GUEST_XCR0 => Some(&mut vmcs.xcr0),
        _ => None,
    }
}
