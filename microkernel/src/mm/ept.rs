//! EPT hierarchies (guest-physical → host-physical): four levels of 512 entries, 4 KiB leaves
//! with write-back memory type. The kernel writes them only for `VmMapRam`, which maps a VM's
//! own RAM, so a guest can never reach a frame it was not given.

use super::uspace::{alloc_frame, free_frame, indices, read_entry, write_entry};
use microkernel::kobj::machine::MapError;

/// Read, write, execute: a non-leaf entry allows everything its leaves allow.
const EPT_RWX: u64 = 7;
/// Leaf memory type write-back (bits 5:3 = 6).
const EPT_WB: u64 = 6 << 3;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Guest-physical addresses an EPT maps (4 levels).
const GPA_LIMIT: u64 = 1 << 48;

#[derive(Debug)]
pub struct Ept {
    pml4: u64,
}

impl Ept {
    pub fn new() -> Option<Ept> {
        Some(Ept {
            pml4: alloc_frame()?,
        })
    }

    /// The EPT pointer: the PML4, a 4-level walk (3 << 3), write-back paging structures (6).
    pub fn eptp(&self) -> u64 {
        self.pml4 | (3 << 3) | 6
    }

    /// Maps one page with `rights` (bits 0..2); returns whether an entry that was present
    /// changed (the caller then flushes).
    pub fn map(&mut self, gpa: u64, hpa: u64, rights: u64) -> Result<bool, MapError> {
        if gpa >= GPA_LIMIT || gpa & 0xfff != 0 || hpa & !ADDR_MASK != 0 {
            return Err(MapError::BadAddress);
        }
        let idx = indices(gpa);
        let mut table = self.pml4;
        for &i in &idx[..3] {
            let e = read_entry(table, i);
            table = if e & EPT_RWX != 0 {
                e & ADDR_MASK
            } else {
                let t = alloc_frame().ok_or(MapError::NoMemory)?;
                write_entry(table, i, t | EPT_RWX);
                t
            };
        }
        let old = read_entry(table, idx[3]);
        let new = hpa | (rights & EPT_RWX) | EPT_WB;
        write_entry(table, idx[3], new);
        Ok(old & EPT_RWX != 0 && old != new)
    }

    /// Unmaps one page; returns whether it was present.
    pub fn unmap(&mut self, gpa: u64) -> bool {
        if gpa >= GPA_LIMIT {
            return false;
        }
        let idx = indices(gpa);
        let mut table = self.pml4;
        for &i in &idx[..3] {
            let e = read_entry(table, i);
            if e & EPT_RWX == 0 {
                return false;
            }
            table = e & ADDR_MASK;
        }
        let old = read_entry(table, idx[3]);
        write_entry(table, idx[3], 0);
        old & EPT_RWX != 0
    }

    /// Frees every table frame (not the guest frames the leaves name).
    pub fn destroy(self) {
        free_tables(self.pml4, 4);
    }
}

fn free_tables(table: u64, level: u32) {
    if level > 1 {
        for i in 0..512 {
            let e = read_entry(table, i);
            if e & EPT_RWX != 0 {
                free_tables(e & ADDR_MASK, level - 1);
            }
        }
    }
    free_frame(table);
}
