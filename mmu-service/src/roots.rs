//! Roots, `prev_roots`, the fast CR3 switch and the per-vCPU PAE root page.
//!
//! A 4-level guest's root is one shadow page. PAE guests, 2-level guests (shadowed with PAE
//! tables, four quadrants of the guest page directory) and guests without paging use the
//! per-vCPU root page `pae_root`, whose four entries point at level-2 shadow pages. Beyond KVM,
//! such a *set* of four pages is cached in `prev_roots` too, keyed by the guest CR3, the four
//! guest PDPTEs and the role; a hit rewrites the four entries of `pae_root`.

use alloc::vec::Vec;

use abi::cpu::{cr0, cr4};

use crate::mmu::{Error, Mmu};
use crate::role::{CpuRole, PageRole, PagingMode, ACC_ALL};
use crate::shadow_page::{SpId, NONE};
use crate::spte::make_pae_root_entry;
use crate::stats::mode_index;
use crate::traits::{GuestMemory, ShadowPagePool, VcpuPagingState};
use crate::walker::{pdpte_reserved_bits, PT64_ADDR_MASK, PT_PRESENT};

/// An invalid root address (KVM's `INVALID_PAGE`).
pub const INVALID_PAGE: u64 = u64::MAX;

/// `free_roots` mask: the current root.
pub const ROOT_CURRENT: u32 = 1;
/// `free_roots` mask: every root.
pub const ROOTS_ALL: u32 = u32::MAX;

/// `free_roots` mask: previous root `i` (KVM's `KVM_MMU_ROOT_PREVIOUS(i)`).
pub const fn root_previous(i: usize) -> u32 {
    1 << (1 + i)
}

/// A root: what a guest CR3 (`pgd`) shadows to (`hpa`, the value for the hardware CR3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootInfo {
    /// The guest's CR3, less the bits that do not select the tables.
    pub pgd: u64,
    /// The shadow CR3: the root shadow page, or the per-vCPU `pae_root` page; `INVALID_PAGE`
    /// when unused.
    pub hpa: u64,
    /// The role the root was built for.
    pub role: PageRole,
    /// The guest PDPTEs a PAE root set was built from (zero otherwise).
    pub pdptes: [u64; 4],
    /// The root shadow page (`sps[0]`) or the four level-2 pages of a PAE root set
    /// (`NONE` where the PDPTE is not present).
    pub(crate) sps: [SpId; 4],
}

impl RootInfo {
    /// An unused slot.
    pub const INVALID: RootInfo = RootInfo {
        pgd: 0,
        hpa: INVALID_PAGE,
        role: crate::shadow_page::ShadowPage::FREE.role,
        pdptes: [0; 4],
        sps: [NONE; 4],
    };

    /// Whether the slot holds a root.
    pub fn is_valid(&self) -> bool {
        self.hpa != INVALID_PAGE
    }

    /// Shadow page `i` of the root: the root page (`i` = 0, 4-level) or the level-2 page under
    /// entry `i` of the PAE root page.
    pub fn shadow_page(&self, i: usize) -> Option<SpId> {
        self.sps.get(i).copied().filter(|&s| s != NONE)
    }

    /// The shadow pages of this root.
    pub fn shadow_pages(&self) -> impl Iterator<Item = SpId> + '_ {
        self.sps.iter().copied().filter(|&s| s != NONE)
    }
}

/// The MMU state of one vCPU.
#[derive(Clone, Debug)]
pub struct Vcpu {
    pub(crate) root: RootInfo,
    pub(crate) prev_roots: Vec<RootInfo>,
    pub(crate) pae_root: u32,
    pub(crate) pae_root_hpa: u64,
    pub(crate) cpu: CpuRole,
    pub(crate) cr0: u64,
    pub(crate) cr3: u64,
    pub(crate) cr4: u64,
    pub(crate) pdptes: [u64; 4],
}

impl Vcpu {
    /// The current root.
    pub fn root(&self) -> &RootInfo {
        &self.root
    }
    /// The previous roots, most recent first.
    pub fn prev_roots(&self) -> &[RootInfo] {
        &self.prev_roots
    }
    /// The value for the hardware CR3 (`INVALID_PAGE` without a root).
    pub fn shadow_cr3(&self) -> u64 {
        self.root.hpa
    }
    /// Host-physical address of the per-vCPU PAE root page (below 4 GiB).
    pub fn pae_root_hpa(&self) -> u64 {
        self.pae_root_hpa
    }
    /// The CPU role in force.
    pub fn cpu_role(&self) -> &CpuRole {
        &self.cpu
    }
    /// The guest CR3 in force.
    pub fn cr3(&self) -> u64 {
        self.cr3
    }
    /// The PAE PDPTE registers in force (loaded at the last CR3 load).
    pub fn pdptes(&self) -> [u64; 4] {
        self.pdptes
    }
    /// Whether this vCPU's root is its per-vCPU root page rather than a shared shadow page:
    /// PAE, 2-level and non-paging guests.
    pub fn has_per_vcpu_root_page(&self) -> bool {
        self.cpu.mode.uses_pae_root()
    }
}

fn pgd_of(mode: PagingMode, cr3: u64) -> u64 {
    match mode {
        PagingMode::NonPaging => 0,
        PagingMode::TwoLevel => cr3 & 0xffff_f000,
        PagingMode::Pae => cr3 & 0xffff_ffe0,
        PagingMode::FourLevel => cr3 & PT64_ADDR_MASK,
    }
}

impl<M: GuestMemory, P: ShadowPagePool> Mmu<M, P> {
    /// Creates the MMU state of a vCPU, with its `pae_root` page taken from below 4 GiB, in
    /// the paging state `state` (no root is built until the first CR3 load or fault).
    pub fn create_vcpu<S: VcpuPagingState + ?Sized>(&mut self, state: &S) -> Result<Vcpu, Error> {
        let cpu = CpuRole::from_state(state, self.config.maxphyaddr, self.config.gbpages)?;
        let prev_roots = crate::mmu::try_vec(RootInfo::INVALID, self.config.prev_roots)?;
        let pae_root = self.alloc_low_frame()?;
        self.pool.zero_frame(pae_root as usize);
        self.sps[pae_root as usize].state = crate::shadow_page::SpState::PaeRoot;
        let mut vcpu = Vcpu {
            root: RootInfo::INVALID,
            prev_roots,
            pae_root,
            pae_root_hpa: self.pool.frame_hpa(pae_root as usize),
            cpu,
            cr0: state.cr0(),
            cr3: state.cr3(),
            cr4: state.cr4(),
            pdptes: [0; 4],
        };
        if cpu.mode == PagingMode::Pae {
            match self.load_pdptes(state, &cpu) {
                Ok(p) => vcpu.pdptes = p,
                Err(e) => {
                    // Nothing changes: the root page goes back.
                    self.free_frame(pae_root);
                    return Err(e);
                }
            }
        }
        Ok(vcpu)
    }

    /// Releases every root of `vcpu` and its `pae_root` page.
    pub fn destroy_vcpu(&mut self, mut vcpu: Vcpu) {
        self.free_roots(&mut vcpu, ROOTS_ALL);
        let f = vcpu.pae_root;
        self.free_frame(f);
    }

    /// The PDPTEs a PAE CR3 load puts in the PDPTE registers: the caller's, or the four at CR3
    /// (SDM 4.4.1). A PDPT outside RAM reads as all ones, as any read where guest-physical
    /// memory holds nothing: such a PDPTE is present with reserved bits set, so the load is a
    /// #GP (`Err(InvalidPdpte)`), as on the processor.
    fn load_pdptes<S: VcpuPagingState + ?Sized>(
        &self,
        state: &S,
        cpu: &CpuRole,
    ) -> Result<[u64; 4], Error> {
        let pdptes = match state.pdptes() {
            Some(p) => p,
            None => {
                let base = state.cr3() & 0xffff_ffe0;
                let mut p = [0u64; 4];
                for (i, e) in p.iter_mut().enumerate() {
                    *e = self.mem.read_u64(base + 8 * i as u64).unwrap_or(u64::MAX);
                }
                p
            }
        };
        let rsvd = pdpte_reserved_bits(cpu.maxphyaddr);
        if pdptes.iter().any(|&e| e & PT_PRESENT != 0 && e & rsvd != 0) {
            return Err(Error::InvalidPdpte);
        }
        Ok(pdptes)
    }

    /// The guest loaded CR3 (`MOV CR3`, task switch): re-reads the PDPTEs in PAE mode and
    /// switches to a cached root when one is usable, else builds one. On `Err(InvalidPdpte)`
    /// nothing changed and the VMM injects #GP.
    pub fn load_cr3<S: VcpuPagingState + ?Sized>(
        &mut self,
        vcpu: &mut Vcpu,
        state: &S,
    ) -> Result<(), Error> {
        let cpu = CpuRole::from_state(state, self.config.maxphyaddr, self.config.gbpages)?;
        let pdptes = if cpu.mode == PagingMode::Pae {
            self.load_pdptes(state, &cpu)?
        } else {
            [0; 4]
        };
        vcpu.cpu = cpu;
        vcpu.cr0 = state.cr0();
        vcpu.cr3 = state.cr3();
        vcpu.cr4 = state.cr4();
        vcpu.pdptes = pdptes;
        self.new_pgd(vcpu)
    }

    /// CR0, CR4 or EFER changed: recomputes the CPU role from the state *after* the transition
    /// and switches root if the role changed. The PDPTEs are reloaded when the architecture does
    /// (SDM 4.4.1: PAE paging on after a MOV to CR0 or CR4 that changes CR0.CD, CR0.NW,
    /// CR0.PG, CR4.PAE, CR4.PGE, CR4.PSE or CR4.SMEP).
    pub fn set_paging_state<S: VcpuPagingState + ?Sized>(
        &mut self,
        vcpu: &mut Vcpu,
        state: &S,
    ) -> Result<(), Error> {
        let cpu = CpuRole::from_state(state, self.config.maxphyaddr, self.config.gbpages)?;
        const PDPTE_RELOAD_CR4: u64 = cr4::PAE | cr4::PSE | cr4::PGE | cr4::SMEP;
        const PDPTE_RELOAD_CR0: u64 = cr0::NW | cr0::CD | cr0::PG;
        let reload = cpu.mode == PagingMode::Pae
            && (vcpu.cpu.mode != PagingMode::Pae
                || (vcpu.cr0 ^ state.cr0()) & PDPTE_RELOAD_CR0 != 0
                || (vcpu.cr4 ^ state.cr4()) & PDPTE_RELOAD_CR4 != 0);
        let pdptes = if reload {
            self.load_pdptes(state, &cpu)?
        } else if cpu.mode == PagingMode::Pae {
            vcpu.pdptes
        } else {
            [0; 4]
        };
        let changed = cpu != vcpu.cpu || pdptes != vcpu.pdptes || state.cr3() != vcpu.cr3;
        vcpu.cpu = cpu;
        vcpu.cr0 = state.cr0();
        vcpu.cr3 = state.cr3();
        vcpu.cr4 = state.cr4();
        vcpu.pdptes = pdptes;
        if changed || !vcpu.root.is_valid() {
            self.new_pgd(vcpu)
        } else {
            Ok(())
        }
    }

    /// Whether `root` can serve `pgd` with `role` (and, for a PAE root set, `pdptes`)
    /// (KVM's `is_root_usable`).
    pub fn is_root_usable(
        &self,
        root: &RootInfo,
        pgd: u64,
        role: &PageRole,
        pdptes: &[u64; 4],
    ) -> bool {
        root.is_valid()
            && root.pgd == pgd
            && root.role == *role
            && root.pdptes == *pdptes
            && root.shadow_pages().all(|sp| self.sp_usable(sp))
    }

    /// The fast CR3 switch: look for a usable root among the current one and `prev_roots`,
    /// rotating them like KVM's `cached_root_find_and_keep_current`:
    ///
    /// ```text
    ///   C   0 1 2 3   (on entry)
    ///   0   C 1 2 3
    ///   1   C 0 2 3
    ///   2   C 0 1 3
    ///   3   C 0 1 2   (after a miss: 3 was the oldest and is freed)
    /// ```
    fn fast_pgd_switch(&mut self, vcpu: &mut Vcpu, pgd: u64, role: &PageRole) -> bool {
        let pdptes = vcpu.pdptes;
        // An obsolete or zapped root is freed, not rotated into `prev_roots`; so is a per-vCPU
        // root under KVM's policy (`cache_pae_roots` off), which never caches one.
        let current = vcpu.root;
        let per_vcpu = current.role.mode.uses_pae_root();
        if current.is_valid()
            && (!current.shadow_pages().all(|sp| self.sp_usable(sp))
                || (per_vcpu && !self.config.cache_pae_roots))
        {
            self.free_roots(vcpu, ROOT_CURRENT);
        }
        if !vcpu.root.is_valid() {
            // KVM's `cached_root_find_without_current`: take a usable cached root without
            // evicting any valid one.
            for i in 0..vcpu.prev_roots.len() {
                if self.is_root_usable(&vcpu.prev_roots[i], pgd, role, &pdptes) {
                    core::mem::swap(&mut vcpu.root, &mut vcpu.prev_roots[i]);
                    return true;
                }
            }
            return false;
        }
        if self.is_root_usable(&vcpu.root, pgd, role, &pdptes) {
            return true;
        }
        for i in 0..vcpu.prev_roots.len() {
            core::mem::swap(&mut vcpu.root, &mut vcpu.prev_roots[i]);
            if self.is_root_usable(&vcpu.root, pgd, role, &pdptes) {
                return true;
            }
        }
        self.free_roots(vcpu, ROOT_CURRENT);
        false
    }

    /// Switches `vcpu` to the root for its current CR3 and role (KVM's `kvm_mmu_new_pgd`).
    pub(crate) fn new_pgd(&mut self, vcpu: &mut Vcpu) -> Result<(), Error> {
        let role = vcpu.cpu.root_role();
        let pgd = pgd_of(vcpu.cpu.mode, vcpu.cr3);
        let mi = mode_index(vcpu.cpu.mode);
        if self.fast_pgd_switch(vcpu, pgd, &role) {
            self.stats.prev_roots_hits[mi] += 1;
            if vcpu.cpu.mode.uses_pae_root() {
                self.write_pae_root(vcpu);
            }
            return Ok(());
        }
        self.stats.prev_roots_misses[mi] += 1;
        self.alloc_root(vcpu)
    }

    /// Rewrites the four entries of `pae_root` from the current root set.
    fn write_pae_root(&mut self, vcpu: &mut Vcpu) {
        for i in 0..4 {
            let sp = vcpu.root.sps[i];
            let e = if sp == NONE {
                0
            } else {
                make_pae_root_entry(self.sp_hpa(sp))
            };
            self.pool.write_entry(vcpu.pae_root as usize, i, e);
        }
        vcpu.root.hpa = vcpu.pae_root_hpa;
    }

    /// Builds a root for the vCPU's CR3 and role (KVM's `mmu_alloc_shadow_roots`). The current
    /// root slot must be free.
    fn alloc_root(&mut self, vcpu: &mut Vcpu) -> Result<(), Error> {
        self.make_frames_available(vcpu, 5)?;
        let role = vcpu.cpu.root_role();
        let mode = vcpu.cpu.mode;
        let pgd = pgd_of(mode, vcpu.cr3);
        let mut root = RootInfo {
            pgd,
            hpa: INVALID_PAGE,
            role,
            pdptes: vcpu.pdptes,
            sps: [NONE; 4],
        };
        if mode == PagingMode::FourLevel {
            let sp = self.get_sp(pgd >> 12, role)?;
            self.get_root_ref(sp);
            root.sps[0] = sp;
            root.hpa = self.sp_hpa(sp);
            vcpu.root = root;
        } else {
            let ram = self.mem.ram_pages();
            for i in 0..4 {
                let mut r = role;
                r.level = 2;
                r.access = ACC_ALL;
                let gfn = match mode {
                    PagingMode::TwoLevel => {
                        r.quadrant = i as u8;
                        pgd >> 12
                    }
                    PagingMode::Pae => {
                        let pdpte = vcpu.pdptes[i];
                        let gfn = (pdpte & PT64_ADDR_MASK) >> 12;
                        // A page directory outside RAM is only an error when a walk reads it.
                        if pdpte & PT_PRESENT == 0 || gfn >= ram {
                            continue;
                        }
                        gfn
                    }
                    _ => {
                        // No paging: 1 GiB of guest-physical space per entry, where RAM is.
                        let gfn = (i as u64) << 18;
                        if gfn >= ram {
                            continue;
                        }
                        gfn
                    }
                };
                match self.get_sp(gfn, r) {
                    Ok(sp) => {
                        self.get_root_ref(sp);
                        root.sps[i] = sp;
                    }
                    Err(e) => {
                        // Undo the references taken so far; the slot stays free.
                        for sp in root.shadow_pages() {
                            self.put_root_ref(sp);
                        }
                        return Err(e);
                    }
                }
            }
            vcpu.root = root;
            self.write_pae_root(vcpu);
        }
        self.stats.roots_built += 1;
        Ok(())
    }

    /// Frees the roots selected by `mask` ([`ROOT_CURRENT`], [`root_previous`], [`ROOTS_ALL`])
    /// (KVM's `kvm_mmu_free_roots`).
    pub fn free_roots(&mut self, vcpu: &mut Vcpu, mask: u32) {
        if mask & ROOT_CURRENT != 0 {
            let root = core::mem::replace(&mut vcpu.root, RootInfo::INVALID);
            self.release_root(&root);
            for i in 0..4 {
                self.pool.write_entry(vcpu.pae_root as usize, i, 0);
            }
        }
        for i in 0..vcpu.prev_roots.len() {
            if mask & root_previous(i) != 0 {
                let root = core::mem::replace(&mut vcpu.prev_roots[i], RootInfo::INVALID);
                self.release_root(&root);
            }
        }
    }

    fn release_root(&mut self, root: &RootInfo) {
        if !root.is_valid() {
            return;
        }
        for sp in root.shadow_pages() {
            self.put_root_ref(sp);
        }
    }

    /// Frees the oldest valid previous root of `vcpu`. Returns false if there was none.
    pub(crate) fn free_oldest_prev_root(&mut self, vcpu: &mut Vcpu) -> bool {
        match (0..vcpu.prev_roots.len())
            .rev()
            .find(|&i| vcpu.prev_roots[i].is_valid())
        {
            Some(i) => {
                self.free_roots(vcpu, root_previous(i));
                true
            }
            None => false,
        }
    }

    /// Makes sure `vcpu` has a usable root (rebuilding an obsolete or zapped one, as the next
    /// exit after [`Mmu::invalidate_all`] does) and returns the value for the hardware CR3
    /// (KVM's `kvm_mmu_reload`).
    pub fn reload(&mut self, vcpu: &mut Vcpu) -> Result<u64, Error> {
        // A valid current root was built or found for the vCPU's CR3 and role (every change
        // of those goes through `new_pgd`); it is usable unless a page of it was zapped or
        // made obsolete since.
        let usable = vcpu.root.is_valid() && vcpu.root.shadow_pages().all(|sp| self.sp_usable(sp));
        if !usable {
            self.free_roots(vcpu, ROOT_CURRENT);
            self.alloc_root(vcpu)?;
        }
        Ok(vcpu.root.hpa)
    }
}
