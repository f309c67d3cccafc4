//! Shadow page-fault handling (KVM's `FNAME(page_fault)` / `FNAME(fetch)`), INVLPG and writes
//! the VMM emulates.

use crate::mmu::{Error, Mmu};
use crate::role::{ACC_EXEC, ACC_USER, ACC_WRITE};
use crate::roots::Vcpu;
use crate::shadow_page::{SpId, NONE};
use crate::spte::{is_present, make_leaf};
use crate::traits::{GuestMemory, ShadowPagePool};
use crate::walker::{update_accessed_dirty, walk, AccessKind, GuestWalk, PageFault, WalkOutcome};

/// What to do after a page fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultOutcome {
    /// The shadow tables now allow the access: resume the guest (hardware CR3 =
    /// [`Vcpu::shadow_cr3`]) and let it retry.
    Retry,
    /// The guest's own tables deny the access: inject this #PF.
    InjectPageFault(PageFault),
    /// The guest writes, at `gpa`, a page table its own translation goes through (or one of the
    /// page directories of its current PAE root set). The shadow would have to write-protect the
    /// very page being written, so the VMM emulates the write and reports it with
    /// [`Mmu::emulated_write`].
    EmulateWrite {
        /// The guest-physical address written.
        gpa: u64,
    },
    /// The guest-physical address is not RAM: the VMM handles it as MMIO.
    Mmio {
        /// The guest-physical address accessed.
        gpa: u64,
    },
}

impl<M: GuestMemory, P: ShadowPagePool> Mmu<M, P> {
    /// Handles a #PF taken by `vcpu` at `gva` with the hardware `error_code` (which describes the
    /// shadow tables; only its W, U/S and I/D bits are used), for an access SMAP checks.
    pub fn handle_page_fault(
        &mut self,
        vcpu: &mut Vcpu,
        gva: u64,
        error_code: u32,
    ) -> Result<FaultOutcome, Error> {
        self.handle_access_fault(vcpu, gva, AccessKind::from_error_code(error_code))
    }

    /// Handles a #PF taken by `vcpu` at `gva` for `access` (the caller knows what the error
    /// code does not: whether SMAP lets a supervisor access through).
    pub fn handle_access_fault(
        &mut self,
        vcpu: &mut Vcpu,
        gva: u64,
        access: AccessKind,
    ) -> Result<FaultOutcome, Error> {
        self.stats.faults_handled += 1;
        self.reload(vcpu)?;
        let mut tries = 0;
        let w = loop {
            match walk(&vcpu.cpu, vcpu.cr3, &vcpu.pdptes, &self.mem, gva, access)? {
                WalkOutcome::Fault(pf) => {
                    self.stats.pf_injected += 1;
                    return Ok(FaultOutcome::InjectPageFault(pf));
                }
                WalkOutcome::Ok(mut w) => {
                    if update_accessed_dirty(&mut self.mem, &mut w, access.write)? {
                        break w;
                    }
                }
            }
            tries += 1;
            if tries == 4 {
                return Err(Error::WalkRaced);
            }
        };
        let gfn = w.gfn();
        if gfn >= self.mem.ram_pages() || self.mem.gfn_to_hpa(gfn).is_none() {
            self.stats.mmio_faults += 1;
            return Ok(FaultOutcome::Mmio { gpa: w.gpa });
        }
        let mut acc = w.shadow_access();
        if access.write && !access.user && acc & ACC_WRITE == 0 && !vcpu.cpu.wp {
            // CR0.WP = 0 lets the guest kernel write a read-only page, but the hardware runs with
            // WP = 1: make the spte a writable kernel page. A user access faults again and gets
            // the user mapping back. With SMEP the kernel must not execute what is now a kernel
            // page (KVM does the same; the role's smep/smap_andnot_wp keep such pages apart).
            acc |= ACC_WRITE;
            acc &= !ACC_USER;
            if vcpu.cpu.smep {
                acc &= !ACC_EXEC;
            }
        }
        if access.write && (self.write_track[gfn as usize] > 0 || Self::walk_uses_table(&w, gfn)) {
            // A write to a shadowed guest page table (or one this very walk read, which the
            // shadow would write-protect): the caller emulates it and reports it with
            // `emulated_write`, which drops only the sptes of the gptes it changed (KVM
            // emulates such writes too). A page written often without being used as a table
            // stops being shadowed (write flooding).
            self.stats.emulate_writes += 1;
            return Ok(FaultOutcome::EmulateWrite { gpa: w.gpa });
        }
        self.make_frames_available(vcpu, 4)?;
        self.fetch(vcpu, &w, acc)?;
        self.stats.faults_fixed += 1;
        Ok(FaultOutcome::Retry)
    }

    /// Whether the walk read a guest table in `gfn` (KVM's `is_self_change_mapping`).
    fn walk_uses_table(w: &GuestWalk, gfn: u64) -> bool {
        w.top_level != 0 && (w.level..=w.top_level).any(|l| w.table_gfn[usize::from(l)] == gfn)
    }

    /// Whether `gfn` holds a guest page table this MMU shadows (its writes must reach the MMU).
    pub fn write_tracked(&self, gfn: u64) -> bool {
        self.write_track_count(gfn) > 0
    }

    /// The guest is about to write `gfn` other than through the shadow tables (a vCPU in real
    /// mode, on the VM's EPT): its shadow pages are zapped, which unprotects it (KVM's
    /// `kvm_mmu_unprotect_page`). Returns how many were zapped.
    pub(crate) fn unprotect_gfn(&mut self, gfn: u64) -> usize {
        self.zap_gfn(gfn)
    }

    /// The write at `gva` (after [`FaultOutcome::EmulateWrite`]) could not be emulated: stop
    /// shadowing its page so that the guest can retry it on the hardware (KVM's
    /// `kvm_mmu_unprotect_gfn_and_retry`). Returns `false`, changing nothing, when the page is
    /// a table of the write's own translation: it would be shadowed again at once.
    pub fn unprotect_for_retry(&mut self, vcpu: &mut Vcpu, gva: u64) -> Result<bool, Error> {
        let access = AccessKind {
            write: true,
            ..AccessKind::default()
        };
        let w = match walk(&vcpu.cpu, vcpu.cr3, &vcpu.pdptes, &self.mem, gva, access)? {
            WalkOutcome::Ok(w) => w,
            WalkOutcome::Fault(_) => return Ok(false),
        };
        let gfn = w.gfn();
        if Self::walk_uses_table(&w, gfn) || gfn >= self.mem.ram_pages() {
            return Ok(false);
        }
        self.zap_gfn(gfn);
        self.reload(vcpu)?;
        Ok(true)
    }

    /// Builds the missing shadow levels for `w` and the leaf spte with access `acc`.
    fn fetch(&mut self, vcpu: &Vcpu, w: &GuestWalk, acc: u8) -> Result<(), Error> {
        let gva = w.gva;
        let gfn = w.gfn();
        let (mut sp, mut level) = if vcpu.cpu.mode.uses_pae_root() {
            (vcpu.root.sps[((gva >> 30) & 3) as usize], 2u8)
        } else {
            (vcpu.root.sps[0], 4u8)
        };
        if sp == NONE {
            return Err(Error::Internal);
        }
        while level > 1 {
            let index = ((gva >> (12 + 9 * u32::from(level - 1))) & 0x1ff) as usize;
            let child_level = level - 1;
            let direct = child_level < w.level;
            let (child_gfn, child_access) = if direct {
                (gfn & !((1u64 << (9 * u32::from(child_level))) - 1), acc)
            } else {
                let l = usize::from(child_level);
                (w.table_gfn[l], w.pt_access[l])
            };
            let role = self.sps[sp as usize]
                .role
                .child(index, direct, child_access);
            let spte = self.pool.read_entry(sp as usize, index);
            let mut child = NONE;
            if is_present(spte) {
                let c = self.spte_child(sp, index).ok_or(Error::Internal)?;
                let s = &self.sps[c as usize];
                if s.role == role && s.gfn == child_gfn {
                    child = c;
                } else {
                    // The page linked here no longer matches (a direct page built for a clean
                    // huge gpte now dirty, say): unlink it (KVM's `validate_direct_spte`).
                    self.drop_spte(sp, index);
                }
            }
            if child == NONE {
                child = self.get_sp(child_gfn, role)?;
                self.link_child(sp, index, child);
            }
            // Used as a table: not a page that is only being written (write flooding).
            self.sps[child as usize].write_flooding = 0;
            sp = child;
            level = child_level;
        }
        let index = ((gva >> 12) & 0x1ff) as usize;
        let hpa = self.mem.gfn_to_hpa(gfn).ok_or(Error::Internal)?;
        let mut spte_acc = acc;
        if self.write_track[gfn as usize] > 0 {
            spte_acc &= !ACC_WRITE;
        }
        self.set_leaf(sp, index, gfn, make_leaf(hpa, spte_acc));
        Ok(())
    }

    /// The guest executed INVLPG `gva`: zaps the leaf spte for it in the current root.
    pub fn invlpg(&mut self, vcpu: &mut Vcpu, gva: u64) -> Result<(), Error> {
        self.stats.invlpg += 1;
        if !vcpu.root.is_valid() {
            return Ok(());
        }
        let (mut sp, mut level): (SpId, u8) = if vcpu.cpu.mode.uses_pae_root() {
            (vcpu.root.sps[((gva >> 30) & 3) as usize], 2)
        } else {
            (vcpu.root.sps[0], 4)
        };
        while sp != NONE {
            let index = ((gva >> (12 + 9 * u32::from(level - 1))) & 0x1ff) as usize;
            if level == 1 {
                self.drop_spte(sp, index);
                break;
            }
            let spte = self.pool.read_entry(sp as usize, index);
            if !is_present(spte) {
                break;
            }
            sp = self.spte_child(sp, index).unwrap_or(NONE);
            level -= 1;
        }
        Ok(())
    }

    /// The VMM wrote `data` at `gpa` on the guest's behalf (after [`FaultOutcome::EmulateWrite`]):
    /// the write is done here and, in the shadow pages of the page tables it touched, the sptes
    /// built from the gptes it changed are dropped (KVM's `kvm_mmu_track_write`). `vcpu` gets
    /// a usable root again.
    pub fn emulated_write(&mut self, vcpu: &mut Vcpu, gpa: u64, data: &[u8]) -> Result<(), Error> {
        self.mem.write(gpa, data)?;
        let mut at = gpa;
        let end = gpa.saturating_add(data.len() as u64);
        while at < end {
            let piece = (crate::traits::PAGE_SIZE - (at & 0xfff)).min(end - at);
            if self.write_track_count(at >> 12) > 0 {
                self.track_guest_write(at, piece as usize);
            }
            at += piece;
        }
        self.reload(vcpu)?;
        Ok(())
    }
}
