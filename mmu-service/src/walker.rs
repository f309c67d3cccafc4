//! The guest page-table walker (KVM's `paging_tmpl.h` `walk_addr_generic`).
//!
//! One walk reads the guest's own tables for one access and either produces the translation
//! ([`GuestWalk`]) or the exact #PF the processor would deliver ([`PageFault`]). Accessed and
//! dirty bits are set afterwards, only for a walk that succeeded, with a compare-and-exchange like
//! the processor's locked update ([`update_accessed_dirty`]).
//!
//! A guest table outside RAM is not an error: on a PC a read of guest-physical memory where
//! nothing is returns all ones, so such a gpte reads as `u64::MAX` (`u32::MAX` for a 4-byte
//! one) and the walk gives whatever the processor makes of that entry. In 4-level and PAE
//! paging its reserved bits make it a #PF with P = 1 and RSVD = 1; in 2-level paging it is a
//! present, writable user entry (a 4 MiB page with a reserved bit 21 under CR4.PSE, #PF with
//! RSVD; without PSE a page table at 0xffff_f000). Accessed and dirty bits are already set in
//! such an entry, and a write to it would go nowhere.

use crate::role::{CpuRole, PagingMode, ACC_ALL, ACC_EXEC, ACC_USER, ACC_WRITE};
use crate::traits::{GuestMemory, MemoryError};

/// #PF error code: the fault was caused by a page-level protection violation (P = 1).
pub const PFERR_PRESENT: u32 = 1 << 0;
/// #PF error code: write access.
pub const PFERR_WRITE: u32 = 1 << 1;
/// #PF error code: user-mode access.
pub const PFERR_USER: u32 = 1 << 2;
/// #PF error code: a reserved bit was set in a paging-structure entry.
pub const PFERR_RSVD: u32 = 1 << 3;
/// #PF error code: instruction fetch (reported only with SMEP or PAE+NXE).
pub const PFERR_FETCH: u32 = 1 << 4;

/// gpte bits.
pub const PT_PRESENT: u64 = 1 << 0;
/// Writable.
pub const PT_WRITABLE: u64 = 1 << 1;
/// User.
pub const PT_USER: u64 = 1 << 2;
/// Accessed.
pub const PT_ACCESSED: u64 = 1 << 5;
/// Dirty.
pub const PT_DIRTY: u64 = 1 << 6;
/// Page size (huge page) in a PDE/PDPTE.
pub const PT_PAGE_SIZE: u64 = 1 << 7;
/// Execute-disable.
pub const PT_NX: u64 = 1 << 63;

/// Address bits 51:12 of an 8-byte entry.
pub const PT64_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The kind of access that faulted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccessKind {
    /// A data write.
    pub write: bool,
    /// From CPL 3.
    pub user: bool,
    /// An instruction fetch.
    pub fetch: bool,
    /// A supervisor data access SMAP lets through: an explicit access at CPL < 3 with
    /// EFLAGS.AC = 1 (`stac`; Linux's `copy_to_user`). Implicit supervisor accesses and
    /// accesses at CPL 3 never are. The #PF error code does not say it: the caller does.
    pub smap_allowed: bool,
}

impl AccessKind {
    /// Decodes the W, U/S and I/D bits of a #PF error code (the others are the hardware's view
    /// of the *shadow* tables and are recomputed from the guest's).
    pub fn from_error_code(error_code: u32) -> Self {
        AccessKind {
            write: error_code & PFERR_WRITE != 0,
            user: error_code & PFERR_USER != 0,
            fetch: error_code & PFERR_FETCH != 0,
            smap_allowed: false,
        }
    }

    /// The error code the processor reports for this access in `cpu`'s mode.
    pub fn error_code(&self, cpu: &CpuRole, present: bool, rsvd: bool) -> u32 {
        let mut ec = 0;
        if present {
            ec |= PFERR_PRESENT;
        }
        if rsvd {
            ec |= PFERR_RSVD;
        }
        if self.write {
            ec |= PFERR_WRITE;
        }
        if self.user {
            ec |= PFERR_USER;
        }
        // I/D is set only if SMEP, or PAE/4-level paging with EFER.NXE (`cpu.nxe` is false in
        // 2-level mode).
        if self.fetch && (cpu.smep || cpu.nxe) {
            ec |= PFERR_FETCH;
        }
        ec
    }
}

/// A page fault to deliver to the guest (defined with the instruction emulator).
pub use vmm_service::emulate::PageFault;

/// A successful guest translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestWalk {
    /// The linear address (truncated to 32 bits in 32-bit modes).
    pub gva: u64,
    /// Level of the leaf gpte: 1 = 4 KiB, 2 = 2/4 MiB, 3 = 1 GiB (3 also stands for "no paging").
    pub level: u8,
    /// First level read from guest memory (4, 2 for PAE and 2-level, 0 with no paging).
    pub top_level: u8,
    /// The translated guest-physical address.
    pub gpa: u64,
    /// Access allowed by every gpte of the walk (`ACC_*`).
    pub pte_access: u8,
    /// `pt_access[l]`: access allowed by the entries above level `l` (the role access of a
    /// shadow page for the guest table at level `l`).
    pub pt_access: [u8; 5],
    /// `table_gfn[l]`: gfn of the guest table read at level `l`.
    pub table_gfn: [u64; 5],
    /// `pte_gpa[l]`: guest-physical address of the gpte read at level `l`.
    pub pte_gpa: [u64; 5],
    /// `gptes[l]`: the gpte read at level `l`.
    pub gptes: [u64; 5],
    /// Size of a gpte: 4 or 8 bytes.
    pub gpte_size: u8,
}

impl GuestWalk {
    /// The 4 KiB gfn that was accessed.
    pub fn gfn(&self) -> u64 {
        self.gpa >> 12
    }

    /// Whether the leaf gpte is dirty (always for no paging).
    pub fn dirty(&self) -> bool {
        self.top_level == 0 || self.gptes[usize::from(self.level)] & PT_DIRTY != 0
    }

    /// The access a shadow entry may grant: a clean gpte stays read-only so that the first
    /// write faults and sets the dirty bit (KVM's `protect_clean_gpte`).
    pub fn shadow_access(&self) -> u8 {
        if self.dirty() {
            self.pte_access
        } else {
            self.pte_access & !ACC_WRITE
        }
    }
}

/// The result of a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkOutcome {
    /// The guest's tables allow the access.
    Ok(GuestWalk),
    /// The guest's tables deny it: deliver this #PF.
    Fault(PageFault),
}

fn bits(lo: u32, hi: u32) -> u64 {
    if lo > hi {
        return 0;
    }
    let width = hi - lo + 1;
    let ones = if width >= 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    ones << lo
}

/// Reserved bits of a gpte at `level` in `cpu`'s mode (KVM's `rsvd_bits_mask`).
pub fn reserved_bits(cpu: &CpuRole, level: u8, gpte: u64) -> u64 {
    let m = u32::from(cpu.maxphyaddr);
    let nx = if cpu.nxe { 0 } else { PT_NX };
    let ps = gpte & PT_PAGE_SIZE != 0;
    match cpu.mode {
        PagingMode::FourLevel => {
            let base = bits(m, 51) | nx;
            match level {
                4 => base | PT_PAGE_SIZE,
                3 if ps && cpu.gbpages => base | bits(13, 29),
                3 if ps => base | PT_PAGE_SIZE, // no 1 GiB pages in the guest's CPUID
                2 if ps => base | bits(13, 20),
                _ => base,
            }
        }
        PagingMode::Pae => {
            let base = bits(m, 62) | nx;
            if level == 2 && ps {
                base | bits(13, 20)
            } else {
                base
            }
        }
        PagingMode::TwoLevel => {
            if level == 2 && ps && cpu.pse {
                // PSE-36: bits 20:13 hold physical bits 39:32 up to MAXPHYADDR; bit 21 and the
                // bits beyond MAXPHYADDR are reserved.
                let hi = m.clamp(32, 40);
                bits(13 + (hi - 32), 21)
            } else {
                0
            }
        }
        PagingMode::NonPaging => 0,
    }
}

/// Reserved bits of a PAE PDPTE (checked when CR3 is loaded; a violation is a #GP).
pub fn pdpte_reserved_bits(maxphyaddr: u8) -> u64 {
    bits(u32::from(maxphyaddr), 63) | bits(5, 8) | bits(1, 2)
}

fn gpte_access(cpu: &CpuRole, gpte: u64) -> u8 {
    let mut acc = ACC_EXEC;
    if gpte & PT_WRITABLE != 0 {
        acc |= ACC_WRITE;
    }
    if gpte & PT_USER != 0 {
        acc |= ACC_USER;
    }
    if cpu.nxe && gpte & PT_NX != 0 {
        acc &= !ACC_EXEC;
    }
    acc
}

fn is_leaf(cpu: &CpuRole, level: u8, gpte: u64) -> bool {
    match level {
        1 => true,
        2 => gpte & PT_PAGE_SIZE != 0 && (cpu.mode != PagingMode::TwoLevel || cpu.pse),
        3 => gpte & PT_PAGE_SIZE != 0 && cpu.mode == PagingMode::FourLevel,
        _ => false,
    }
}

/// Whether the guest denies `access` to a translation with effective access `acc`
/// (Intel SDM 4.6; KVM's `permission_fault`). A supervisor data access to a user page with SMAP
/// on is allowed only when `access.smap_allowed` (explicit, CPL < 3, EFLAGS.AC = 1).
pub fn permission_fault(cpu: &CpuRole, acc: u8, access: AccessKind) -> bool {
    let user_page = acc & ACC_USER != 0;
    let writable = acc & ACC_WRITE != 0;
    let exec = acc & ACC_EXEC != 0;
    if access.user {
        !user_page || (access.write && !writable) || (access.fetch && !exec)
    } else if access.fetch {
        !exec || (cpu.smep && user_page)
    } else {
        (cpu.smap && user_page && !access.smap_allowed) || (access.write && !writable && cpu.wp)
    }
}

/// Reads the `size`-byte (4 or 8) gpte at `gpa`: all ones where guest-physical memory holds
/// nothing (a table outside RAM), as the processor's read would return.
fn read_gpte<M: GuestMemory + ?Sized>(mem: &M, gpa: u64, size: u8) -> u64 {
    if size == 4 {
        u64::from(mem.read_u32(gpa).unwrap_or(u32::MAX))
    } else {
        mem.read_u64(gpa).unwrap_or(u64::MAX)
    }
}

/// Walks the guest tables for `access` at `gva` without changing anything.
///
/// `pdptes` are the PAE PDPTE registers (unused in other modes). A gpte outside RAM reads as
/// all ones (see the module documentation), so the walk never fails: the `Result` is kept for
/// the callers and is always `Ok`.
pub fn walk<M: GuestMemory + ?Sized>(
    cpu: &CpuRole,
    cr3: u64,
    pdptes: &[u64; 4],
    mem: &M,
    gva: u64,
    access: AccessKind,
) -> Result<WalkOutcome, MemoryError> {
    let mut w = GuestWalk {
        gva,
        level: 3,
        top_level: 0,
        gpa: 0,
        pte_access: ACC_ALL,
        pt_access: [ACC_ALL; 5],
        table_gfn: [0; 5],
        pte_gpa: [0; 5],
        gptes: [0; 5],
        gpte_size: 8,
    };
    let fault = |present: bool, rsvd: bool, address: u64| {
        Ok(WalkOutcome::Fault(PageFault {
            error_code: access.error_code(cpu, present, rsvd),
            address,
        }))
    };
    let (mut level, mut table) = match cpu.mode {
        PagingMode::NonPaging => {
            w.gva = gva & 0xffff_ffff;
            w.gpa = w.gva;
            return Ok(WalkOutcome::Ok(w));
        }
        PagingMode::FourLevel => (4u8, cr3 & PT64_ADDR_MASK),
        PagingMode::Pae => {
            w.gva = gva & 0xffff_ffff;
            let pdpte = pdptes[((w.gva >> 30) & 3) as usize];
            w.gptes[3] = pdpte;
            if pdpte & PT_PRESENT == 0 {
                return fault(false, false, w.gva);
            }
            if pdpte & pdpte_reserved_bits(cpu.maxphyaddr) != 0 {
                return fault(true, true, w.gva);
            }
            (2, pdpte & PT64_ADDR_MASK)
        }
        PagingMode::TwoLevel => {
            w.gva = gva & 0xffff_ffff;
            w.gpte_size = 4;
            (2, cr3 & 0xffff_f000)
        }
    };
    let gva = w.gva;
    w.top_level = level;
    let mut acc = ACC_ALL;
    loop {
        w.table_gfn[usize::from(level)] = table >> 12;
        w.pt_access[usize::from(level)] = acc;
        let gpte_gpa = if w.gpte_size == 4 {
            table + ((gva >> (12 + 10 * u32::from(level - 1))) & 0x3ff) * 4
        } else {
            table + ((gva >> (12 + 9 * u32::from(level - 1))) & 0x1ff) * 8
        };
        let gpte = read_gpte(mem, gpte_gpa, w.gpte_size);
        w.pte_gpa[usize::from(level)] = gpte_gpa;
        w.gptes[usize::from(level)] = gpte;
        if gpte & PT_PRESENT == 0 {
            return fault(false, false, gva);
        }
        if gpte & reserved_bits(cpu, level, gpte) != 0 {
            return fault(true, true, gva);
        }
        acc &= gpte_access(cpu, gpte);
        if is_leaf(cpu, level, gpte) {
            break;
        }
        table = if w.gpte_size == 4 {
            gpte & 0xffff_f000
        } else {
            gpte & PT64_ADDR_MASK
        };
        level -= 1;
    }
    let gpte = w.gptes[usize::from(level)];
    w.level = level;
    w.pte_access = acc;
    w.gpa = match (level, w.gpte_size) {
        (1, 4) => (gpte & 0xffff_f000) | (gva & 0xfff),
        (2, 4) => (gpte & 0xffc0_0000) | (((gpte >> 13) & 0xff) << 32) | (gva & 0x3f_ffff),
        (1, _) => (gpte & PT64_ADDR_MASK) | (gva & 0xfff),
        (2, _) => (gpte & PT64_ADDR_MASK & !0x1f_ffff) | (gva & 0x1f_ffff),
        _ => (gpte & PT64_ADDR_MASK & !0x3fff_ffff) | (gva & 0x3fff_ffff),
    };
    if permission_fault(cpu, acc, access) {
        return fault(true, false, gva);
    }
    Ok(WalkOutcome::Ok(w))
}

/// Sets the accessed bit of every gpte of a successful walk and, for a write, the dirty bit of
/// the leaf, as the processor does. Returns `Ok(false)` if a gpte changed under the walk (the
/// caller walks again). A gpte outside RAM is not written (the write would go nowhere; an
/// all-ones entry has both bits set anyway), so this never fails either.
pub fn update_accessed_dirty<M: GuestMemory + ?Sized>(
    mem: &mut M,
    w: &mut GuestWalk,
    write: bool,
) -> Result<bool, MemoryError> {
    if w.top_level == 0 {
        return Ok(true);
    }
    let mut level = w.top_level;
    loop {
        let l = usize::from(level);
        let old = w.gptes[l];
        let mut new = old | PT_ACCESSED;
        if level == w.level && write {
            new |= PT_DIRTY;
        }
        if new != old {
            match mem.cmpxchg_gpte(w.pte_gpa[l], w.gpte_size, old, new) {
                Ok(true) => w.gptes[l] = new,
                Ok(false) => return Ok(false),
                // Outside RAM: nothing there to update.
                Err(_) => {}
            }
        }
        if level == w.level {
            return Ok(true);
        }
        level -= 1;
    }
}
