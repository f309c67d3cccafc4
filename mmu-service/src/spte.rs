//! The shadow entry (spte) format: x86 4-level/PAE entries the processor walks.

use crate::role::{ACC_EXEC, ACC_USER, ACC_WRITE};

/// Present.
pub const SPTE_PRESENT: u64 = 1 << 0;
/// Writable.
pub const SPTE_WRITABLE: u64 = 1 << 1;
/// User.
pub const SPTE_USER: u64 = 1 << 2;
/// Accessed.
pub const SPTE_ACCESSED: u64 = 1 << 5;
/// Dirty.
pub const SPTE_DIRTY: u64 = 1 << 6;
/// Execute-disable (the hardware runs shadowed guests with EFER.NXE = 1).
pub const SPTE_NX: u64 = 1 << 63;
/// Host-physical address bits.
pub const SPTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Whether an spte is present.
pub fn is_present(spte: u64) -> bool {
    spte & SPTE_PRESENT != 0
}

/// The host-physical address an spte points at.
pub fn spte_hpa(spte: u64) -> u64 {
    spte & SPTE_ADDR_MASK
}

/// A non-leaf spte pointing at a shadow table: full access, the leaf decides (KVM links with
/// `ACC_ALL` too).
pub fn make_nonleaf(child_hpa: u64) -> u64 {
    child_hpa | SPTE_PRESENT | SPTE_WRITABLE | SPTE_USER | SPTE_ACCESSED
}

/// An entry of the per-vCPU PAE root page: a PDPTE only has P and the address (its R/W, U/S and
/// XD bits are reserved).
pub fn make_pae_root_entry(child_hpa: u64) -> u64 {
    child_hpa | SPTE_PRESENT
}

/// A leaf spte mapping `hpa` with access `acc` (`ACC_*`).
pub fn make_leaf(hpa: u64, acc: u8) -> u64 {
    let mut spte = hpa | SPTE_PRESENT | SPTE_ACCESSED;
    if acc & ACC_WRITE != 0 {
        spte |= SPTE_WRITABLE | SPTE_DIRTY;
    }
    if acc & ACC_USER != 0 {
        spte |= SPTE_USER;
    }
    if acc & ACC_EXEC == 0 {
        spte |= SPTE_NX;
    }
    spte
}
