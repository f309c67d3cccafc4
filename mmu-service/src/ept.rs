//! What the MMU service does with a VM's EPT-violation exit: guest RAM is mapped on demand,
//! one 2 MiB-aligned chunk at a time (clipped to the end of RAM), with every right; a data
//! access outside RAM is forwarded to the VMM's MMIO portal (`reply::FORWARD`: the VMM decides
//! what is a device), an instruction fetch there stops the VM.
//!
//! A shadow-paged VM has an EPT too: its vCPUs run on it while their guest is in real mode
//! (VMX runs real mode only as an unrestricted guest, which needs EPT; see the kernel's
//! `kobj::shadow`). There the EPT must not let the guest write a page table the shadow MMU
//! shadows behind its back: [`RealModeEpt`] maps single pages, a shadowed one without write
//! access, and remembers which pages are writable so that one is unmapped the moment the MMU
//! starts shadowing it ([`crate::GuestMemory::write_protect`]). A real-mode write to a
//! shadowed page zaps its shadow pages first (they are rebuilt from the new contents).

/// Pages mapped per violation: a 2 MiB-aligned chunk.
pub const CHUNK_PAGES: u64 = 512;
const PAGE_SIZE: u64 = 4096;

/// The answer to one violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Map guest RAM `[gpa, gpa + pages * 4 KiB)` and resume the guest at the same instruction.
    Map { gpa: u64, pages: u64 },
    /// `gpa` is outside its RAM: forward a data access to the VMM, stop on a fetch.
    OutsideRam { gpa: u64 },
}

/// Decides what a violation at `gpa` in a VM with `ram_pages` pages of RAM gets.
pub fn on_violation(gpa: u64, ram_pages: u64) -> Violation {
    let ram_bytes = ram_pages.saturating_mul(PAGE_SIZE);
    if gpa >= ram_bytes {
        return Violation::OutsideRam { gpa };
    }
    let chunk = gpa & !(CHUNK_PAGES * PAGE_SIZE - 1);
    let pages = CHUNK_PAGES.min((ram_bytes - chunk) / PAGE_SIZE);
    Violation::Map { gpa: chunk, pages }
}

/// What a shadow-paged VM's EPT violation at `gpa` gets (a vCPU in real mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RealModeAccess {
    /// Map page `gfn`; `writable` decides the write right. With `unprotect`, the shadow
    /// pages of `gfn` are zapped first (the access is a write to a shadowed page table).
    Map {
        gfn: u64,
        writable: bool,
        unprotect: bool,
    },
    /// Outside RAM: forward a data access to the VMM, stop on a fetch.
    OutsideRam { gpa: u64 },
}

impl<M: crate::GuestMemory, P: crate::ShadowPagePool> crate::Mmu<M, P> {
    /// An EPT violation at `gpa` (a `write` or not) of a vCPU in real mode: what to map
    /// ([`RealModeEpt::access`]), with the shadow pages of a written page table zapped first.
    pub fn real_mode_violation(&mut self, gpa: u64, write: bool) -> RealModeAccess {
        let tracked = self.write_tracked(gpa / PAGE_SIZE);
        let a = RealModeEpt::access(gpa, write, self.mem().ram_pages(), tracked);
        if let RealModeAccess::Map {
            gfn,
            unprotect: true,
            ..
        } = a
        {
            self.unprotect_gfn(gfn);
        }
        a
    }
}

/// The pages a shadow-paged VM's EPT maps, and whether each is writable.
#[derive(Clone, Debug, Default)]
pub struct RealModeEpt {
    pages: heapless::Vec<(u64, bool), { RealModeEpt::CAPACITY }>,
}

impl RealModeEpt {
    /// Pages mapped at most; beyond, the caller unmaps them all ([`RealModeEpt::take_all`])
    /// and starts again (real-mode code touches a few pages: a trampoline, its stack).
    pub const CAPACITY: usize = 64;

    /// What an access at `gpa` (a `write` or not) gets in a VM with `ram_pages` pages of RAM,
    /// when the shadow MMU does (`tracked`) or does not shadow a page table in it.
    pub fn access(gpa: u64, write: bool, ram_pages: u64, tracked: bool) -> RealModeAccess {
        if gpa >= ram_pages.saturating_mul(PAGE_SIZE) {
            return RealModeAccess::OutsideRam { gpa };
        }
        RealModeAccess::Map {
            gfn: gpa / PAGE_SIZE,
            writable: write || !tracked,
            unprotect: write && tracked,
        }
    }

    /// Records that `gfn` is mapped (`writable` or not). Returns `false`, recording nothing,
    /// when the list is full.
    pub fn mapped(&mut self, gfn: u64, writable: bool) -> bool {
        if let Some(p) = self.pages.iter_mut().find(|p| p.0 == gfn) {
            p.1 = writable;
            return true;
        }
        self.pages.push((gfn, writable)).is_ok()
    }

    /// The shadow MMU starts shadowing `gfn`: whether the EPT has it writable (the caller
    /// unmaps it before any gpte is read). It is forgotten then.
    pub fn write_protect(&mut self, gfn: u64) -> bool {
        match self.pages.iter().position(|p| p.0 == gfn) {
            Some(i) if self.pages[i].1 => {
                self.pages.swap_remove(i);
                true
            }
            _ => false,
        }
    }

    /// Every mapped page, forgotten (the caller unmaps them).
    pub fn take_all(&mut self) -> heapless::Vec<(u64, bool), { RealModeEpt::CAPACITY }> {
        core::mem::take(&mut self.pages)
    }

    /// Whether the EPT lets the guest write `gfn` (no violation, the MMU does not see it).
    pub fn writable(&self, gfn: u64) -> bool {
        self.pages.iter().any(|&(g, w)| g == gfn && w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn maps_the_chunk_and_clips_at_the_end_of_ram() {
        // 16 MiB + 12 KiB of RAM.
        let ram = 4096 + 3;
        assert_eq!(
            on_violation(0x1234, ram),
            Violation::Map { gpa: 0, pages: 512 }
        );
        assert_eq!(
            on_violation(0x0060_0000, ram),
            Violation::Map {
                gpa: 0x0060_0000,
                pages: 512
            }
        );
        assert_eq!(
            on_violation(0x0100_1000, ram),
            Violation::Map {
                gpa: 0x0100_0000,
                pages: 3
            }
        );
        assert_eq!(
            on_violation(0x0100_3000, ram),
            Violation::OutsideRam { gpa: 0x0100_3000 }
        );
        assert_eq!(
            on_violation(u64::MAX, ram),
            Violation::OutsideRam { gpa: u64::MAX }
        );
    }

    #[test]
    fn real_mode_maps_pages_and_keeps_shadowed_tables_read_only() {
        let ram = 16;
        let a = |gpa, write, tracked| RealModeEpt::access(gpa, write, ram, tracked);
        assert_eq!(
            a(0x3123, false, false),
            RealModeAccess::Map {
                gfn: 3,
                writable: true,
                unprotect: false
            }
        );
        // A shadowed table: readable only; a write unprotects it first.
        assert_eq!(
            a(0x3123, false, true),
            RealModeAccess::Map {
                gfn: 3,
                writable: false,
                unprotect: false
            }
        );
        assert_eq!(
            a(0x3123, true, true),
            RealModeAccess::Map {
                gfn: 3,
                writable: true,
                unprotect: true
            }
        );
        assert_eq!(
            a(0x10_000, false, false),
            RealModeAccess::OutsideRam { gpa: 0x10_000 }
        );

        let mut e = RealModeEpt::default();
        assert!(e.mapped(3, true) && e.mapped(4, false));
        assert!(e.writable(3) && !e.writable(4) && !e.writable(5));
        assert!(!e.write_protect(4), "read-only already");
        assert!(e.write_protect(3), "writable: unmap it");
        assert!(!e.write_protect(3), "and it is forgotten");
        assert!(e.mapped(4, true), "remapped writable");
        assert!(e.write_protect(4));
        for g in 0..RealModeEpt::CAPACITY as u64 {
            assert!(e.mapped(100 + g, g % 2 == 0));
        }
        assert!(!e.mapped(7, true), "full");
        assert!(e.mapped(100, false), "an update still fits");
        assert_eq!(e.take_all().len(), RealModeEpt::CAPACITY);
        assert!(e.take_all().is_empty());
    }

    proptest! {
        #[test]
        fn a_mapping_covers_the_address_and_stays_inside_ram(gpa in any::<u64>(), ram in 0u64..1 << 20) {
            match on_violation(gpa, ram) {
                Violation::Map { gpa: start, pages } => {
                    prop_assert!(start <= gpa && gpa < start + pages * PAGE_SIZE);
                    prop_assert!(start + pages * PAGE_SIZE <= ram * PAGE_SIZE);
                    prop_assert!((1..=CHUNK_PAGES).contains(&pages));
                    prop_assert_eq!(start % (CHUNK_PAGES * PAGE_SIZE), 0);
                }
                Violation::OutsideRam { gpa: g } => {
                    prop_assert_eq!(g, gpa);
                    prop_assert!(gpa >= ram * PAGE_SIZE);
                }
            }
        }
    }
}
