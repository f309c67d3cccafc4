//! Shadow pages: metadata, the `(gfn, role)` index, parent links, reverse maps, write tracking,
//! zapping and reclaim under pool pressure.
//!
//! A shadow page is identified by its frame number in the pool (`SpId`). Each spte has two
//! words of bookkeeping outside the pool: `aux` (the child page of a non-leaf spte, the gfn of a
//! leaf) and `link` (the next spte of the chain it is on). A non-leaf spte is on its child's
//! parent chain, a leaf spte on the reverse map of its gfn, so every spte pointing at a page and
//! every spte mapping a gfn can be found and zapped.

use crate::mmu::{Error, Mmu};
use crate::role::{PageRole, PagingMode, ACC_ALL};
use crate::roots::Vcpu;
use crate::spte::{is_present, make_nonleaf, SPTE_DIRTY, SPTE_WRITABLE};
use crate::traits::{GuestMemory, ShadowPagePool};

/// "No page / no spte".
pub const NONE: u32 = u32::MAX;

/// Identifier of a shadow page: its frame number in the pool.
pub type SpId = u32;

/// State of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpState {
    /// Free.
    Free,
    /// A shadow page, findable by `(gfn, role)`.
    Active,
    /// Zapped while still a root of some vCPU: emptied, unfindable, freed when the last root
    /// reference goes (KVM's `role.invalid`).
    Invalid,
    /// A per-vCPU PAE root page.
    PaeRoot,
}

/// Metadata of a shadow page (KVM's `struct kvm_mmu_page`).
#[derive(Clone, Copy, Debug)]
pub struct ShadowPage {
    /// The guest frame shadowed (first frame of the range for a direct page).
    pub gfn: u64,
    /// Its role.
    pub role: PageRole,
    /// Generation it was created in; older ones are obsolete.
    pub gen: u64,
    /// Number of roots (current or previous, of any vCPU) referring to it.
    pub root_count: u32,
    /// State.
    pub state: SpState,
    /// Guest writes to the shadowed table since a fault last walked through this page (KVM's
    /// `write_flooding_count`).
    pub write_flooding: u8,
    pub(crate) parent_head: u32,
    pub(crate) hash_next: u32,
    pub(crate) lru_prev: u32,
    pub(crate) lru_next: u32,
    /// Bitmap of present sptes.
    pub(crate) present: [u64; 8],
}

impl ShadowPage {
    /// An unused frame.
    pub const FREE: ShadowPage = ShadowPage {
        gfn: 0,
        role: PageRole {
            level: 0,
            has_4_byte_gpte: false,
            quadrant: 0,
            direct: false,
            access: ACC_ALL,
            cr0_wp: false,
            efer_nx: false,
            smep_andnot_wp: false,
            smap_andnot_wp: false,
            mode: PagingMode::NonPaging,
            cr4_pse: false,
        },
        gen: 0,
        root_count: 0,
        state: SpState::Free,
        write_flooding: 0,
        parent_head: NONE,
        hash_next: NONE,
        lru_prev: NONE,
        lru_next: NONE,
        present: [0; 8],
    };
}

/// Per-gfn chain heads, stored off by one so that a fresh table is all zeroes (the allocator
/// hands out lazily-mapped zero pages: a 4 GiB guest's tables cost nothing until used).
#[derive(Clone, Debug)]
pub(crate) struct Heads(alloc::vec::Vec<u32>);

impl Heads {
    pub(crate) fn new(n: usize) -> Result<Self, Error> {
        crate::mmu::try_vec(0, n).map(Heads)
    }
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
    pub(crate) fn get(&self, i: usize) -> Option<u32> {
        self.0.get(i).map(|v| v.wrapping_sub(1))
    }
    pub(crate) fn at(&self, i: usize) -> u32 {
        self.0[i].wrapping_sub(1)
    }
    pub(crate) fn set(&mut self, i: usize, v: u32) {
        self.0[i] = v.wrapping_add(1);
    }
}

/// Guest writes after which a shadow page is zapped ([`Mmu::track_guest_write`]); KVM uses 3.
pub const WRITE_FLOODING_LIMIT: u8 = 3;

/// The sptes of a shadow page with `role` that shadow the gpte at byte `offset` of its guest
/// table: (first index, count), `None` when that gpte lies in another quadrant (KVM's
/// `get_written_sptes`). A 4-byte gpte is half an spte's reach: a 2-level page directory entry
/// maps 4 MiB, two PAE directory entries; a 2-level page table's 1024 entries span two
/// shadow pages.
pub fn written_sptes(role: &PageRole, offset: u64) -> Option<(usize, usize)> {
    let mut off = offset & 0xfff;
    let mut n = 1;
    if role.has_4_byte_gpte {
        off <<= 1; // 4-byte gptes, 8-byte sptes
        if role.level == 2 {
            off &= !7;
            off <<= 1;
            n = 2;
        }
        if off >> 12 != u64::from(role.quadrant) {
            return None;
        }
        off &= 0xfff;
    }
    Some(((off / 8) as usize, n))
}

fn ptr(sp: SpId, index: usize) -> u32 {
    sp * 512 + index as u32
}

impl<M: GuestMemory, P: ShadowPagePool> Mmu<M, P> {
    /// The metadata of a shadow page.
    pub fn shadow_page(&self, sp: SpId) -> Option<&ShadowPage> {
        self.sps.get(sp as usize)
    }

    /// Host-physical address of a frame.
    pub fn sp_hpa(&self, sp: SpId) -> u64 {
        self.pool.frame_hpa(sp as usize)
    }

    /// Number of shadow pages in use (active or invalid-but-rooted).
    pub fn shadow_page_count(&self) -> usize {
        self.sps
            .iter()
            .filter(|s| matches!(s.state, SpState::Active | SpState::Invalid))
            .count()
    }

    /// Number of indirect shadow pages write-protecting `gfn`.
    pub fn write_track_count(&self, gfn: u64) -> u32 {
        self.write_track.get(gfn as usize).copied().unwrap_or(0)
    }

    /// The child shadow page a present non-leaf spte points at.
    pub fn spte_child(&self, sp: SpId, index: usize) -> Option<SpId> {
        let c = *self.aux.get(ptr(sp, index) as usize)?;
        (c != NONE).then_some(c)
    }

    /// Whether `sp` belongs to an older generation than the current one.
    pub fn is_obsolete(&self, sp: SpId) -> bool {
        self.sps[sp as usize].gen != self.gen
    }

    /// Whether `sp` can be used (active and of the current generation).
    pub(crate) fn sp_usable(&self, sp: SpId) -> bool {
        let s = &self.sps[sp as usize];
        s.state == SpState::Active && s.gen == self.gen
    }

    pub(crate) fn alloc_frame(&mut self, low: bool) -> Option<u32> {
        if low {
            self.free_low.pop()
        } else {
            self.free_high.pop().or_else(|| self.free_low.pop())
        }
    }

    pub(crate) fn free_frame(&mut self, f: u32) {
        self.sps[f as usize] = ShadowPage::FREE;
        if self.pool.frame_hpa(f as usize) < (1u64 << 32) {
            self.free_low.push(f);
        } else {
            self.free_high.push(f);
        }
    }

    fn lru_unlink(&mut self, sp: SpId) {
        let (prev, next) = {
            let s = &self.sps[sp as usize];
            (s.lru_prev, s.lru_next)
        };
        if prev == NONE {
            self.lru_head = next;
        } else {
            self.sps[prev as usize].lru_next = next;
        }
        if next == NONE {
            self.lru_tail = prev;
        } else {
            self.sps[next as usize].lru_prev = prev;
        }
        let s = &mut self.sps[sp as usize];
        s.lru_prev = NONE;
        s.lru_next = NONE;
    }

    fn lru_push_tail(&mut self, sp: SpId) {
        let tail = self.lru_tail;
        {
            let s = &mut self.sps[sp as usize];
            s.lru_prev = tail;
            s.lru_next = NONE;
        }
        if tail == NONE {
            self.lru_head = sp;
        } else {
            self.sps[tail as usize].lru_next = sp;
        }
        self.lru_tail = sp;
    }

    /// Finds a usable shadow page for `(gfn, role)` and marks it recently used. Obsolete pages
    /// met on the way are zapped, so chains do not grow across `invalidate_all` calls (KVM zaps
    /// obsolete pages in the background for the same reason).
    pub(crate) fn find_sp(&mut self, gfn: u64, role: &PageRole) -> Option<SpId> {
        let mut cur = self.gfn_sp_head.get(gfn as usize)?;
        while cur != NONE {
            let s = &self.sps[cur as usize];
            if s.gen != self.gen {
                let next = s.hash_next;
                self.zap_sp(cur);
                cur = next;
                continue;
            }
            if s.role == *role && s.gfn == gfn {
                if self.lru_tail != cur {
                    self.lru_unlink(cur);
                    self.lru_push_tail(cur);
                }
                return Some(cur);
            }
            cur = s.hash_next;
        }
        None
    }

    /// Finds or creates the shadow page for `(gfn, role)` (KVM's `kvm_mmu_get_shadow_page`).
    /// The caller has made frames available.
    pub(crate) fn get_sp(&mut self, gfn: u64, role: PageRole) -> Result<SpId, Error> {
        if gfn >= self.gfn_sp_head.len() as u64 {
            return Err(Error::GuestTableOutsideRam { gpa: gfn << 12 });
        }
        if let Some(sp) = self.find_sp(gfn, &role) {
            return Ok(sp);
        }
        let sp = self.alloc_frame(false).ok_or(Error::OutOfShadowPages)?;
        self.pool.zero_frame(sp as usize);
        let head = self.gfn_sp_head.at(gfn as usize);
        self.sps[sp as usize] = ShadowPage {
            gfn,
            role,
            gen: self.gen,
            root_count: 0,
            state: SpState::Active,
            write_flooding: 0,
            parent_head: NONE,
            hash_next: head,
            lru_prev: NONE,
            lru_next: NONE,
            present: [0; 8],
        };
        self.gfn_sp_head.set(gfn as usize, sp);
        self.lru_push_tail(sp);
        self.stats.sp_created += 1;
        if !role.direct {
            self.track_write(gfn);
        }
        Ok(sp)
    }

    /// Starts write-protecting `gfn`: it now holds a shadowed guest page table.
    fn track_write(&mut self, gfn: u64) {
        let g = gfn as usize;
        self.write_track[g] += 1;
        if self.write_track[g] != 1 {
            return;
        }
        self.mem.write_protect(gfn);
        let mut cur = self.rmap_head.at(g);
        while cur != NONE {
            let (sp, i) = ((cur / 512) as usize, (cur % 512) as usize);
            let spte = self.pool.read_entry(sp, i);
            if spte & SPTE_WRITABLE != 0 {
                self.pool
                    .write_entry(sp, i, spte & !(SPTE_WRITABLE | SPTE_DIRTY));
            }
            cur = self.link[cur as usize];
        }
    }

    fn set_present(&mut self, sp: SpId, index: usize, on: bool) {
        let word = &mut self.sps[sp as usize].present[index / 64];
        if on {
            *word |= 1 << (index % 64);
        } else {
            *word &= !(1 << (index % 64));
        }
    }

    /// Makes entry `index` of `sp` point at `child` (KVM's `link_shadow_page`).
    pub(crate) fn link_child(&mut self, sp: SpId, index: usize, child: SpId) {
        let p = ptr(sp, index);
        let hpa = self.sp_hpa(child);
        self.pool.write_entry(sp as usize, index, make_nonleaf(hpa));
        self.aux[p as usize] = child;
        self.link[p as usize] = self.sps[child as usize].parent_head;
        self.sps[child as usize].parent_head = p;
        self.set_present(sp, index, true);
    }

    fn rmap_add(&mut self, gfn: u64, p: u32) {
        self.link[p as usize] = self.rmap_head.at(gfn as usize);
        self.rmap_head.set(gfn as usize, p);
    }

    fn rmap_remove(&mut self, gfn: u64, p: u32) {
        let mut head = self.rmap_head.at(gfn as usize);
        Self::chain_remove(&mut self.link, &mut head, p);
        self.rmap_head.set(gfn as usize, head);
    }

    /// Removes `p` from the chain starting at `*head`.
    fn chain_remove(link: &mut [u32], head: &mut u32, p: u32) {
        if *head == p {
            *head = link[p as usize];
        } else {
            let mut cur = *head;
            while cur != NONE {
                let next = link[cur as usize];
                if next == p {
                    link[cur as usize] = link[p as usize];
                    break;
                }
                cur = next;
            }
        }
        link[p as usize] = NONE;
    }

    /// Installs a leaf spte mapping `gfn` at entry `index` of the level-1 page `sp`.
    pub(crate) fn set_leaf(&mut self, sp: SpId, index: usize, gfn: u64, spte: u64) {
        let p = ptr(sp, index);
        let old = self.pool.read_entry(sp as usize, index);
        if is_present(old) {
            let old_gfn = u64::from(self.aux[p as usize]);
            if old_gfn != gfn {
                self.rmap_remove(old_gfn, p);
                self.aux[p as usize] = gfn as u32;
                self.rmap_add(gfn, p);
            }
        } else {
            self.aux[p as usize] = gfn as u32;
            self.rmap_add(gfn, p);
        }
        self.pool.write_entry(sp as usize, index, spte);
        self.set_present(sp, index, true);
    }

    /// Clears entry `index` of `sp`, unlinking it from its chain (KVM's `mmu_page_zap_pte`).
    pub(crate) fn drop_spte(&mut self, sp: SpId, index: usize) {
        let spte = self.pool.read_entry(sp as usize, index);
        if !is_present(spte) {
            return;
        }
        let p = ptr(sp, index);
        let aux = self.aux[p as usize];
        if self.sps[sp as usize].role.level == 1 {
            self.rmap_remove(u64::from(aux), p);
        } else {
            let head = &mut self.sps[aux as usize].parent_head;
            Self::chain_remove(&mut self.link, head, p);
        }
        self.aux[p as usize] = NONE;
        self.pool.write_entry(sp as usize, index, 0);
        self.set_present(sp, index, false);
    }

    fn hash_remove(&mut self, sp: SpId) {
        let gfn = self.sps[sp as usize].gfn as usize;
        let next = self.sps[sp as usize].hash_next;
        if self.gfn_sp_head.at(gfn) == sp {
            self.gfn_sp_head.set(gfn, next);
        } else {
            let mut cur = self.gfn_sp_head.at(gfn);
            while cur != NONE {
                let n = self.sps[cur as usize].hash_next;
                if n == sp {
                    self.sps[cur as usize].hash_next = next;
                    break;
                }
                cur = n;
            }
        }
        self.sps[sp as usize].hash_next = NONE;
    }

    /// Zaps a shadow page: clears its sptes and every spte pointing at it, stops write-protecting
    /// its gfn and frees it, or marks it invalid while a root still refers to it
    /// (KVM's `kvm_mmu_prepare_zap_page` + commit).
    pub(crate) fn zap_sp(&mut self, sp: SpId) {
        if self.sps[sp as usize].state != SpState::Active {
            return;
        }
        for w in 0..8 {
            let mut bitmap = self.sps[sp as usize].present[w];
            while bitmap != 0 {
                let b = bitmap.trailing_zeros() as usize;
                bitmap &= bitmap - 1;
                self.drop_spte(sp, w * 64 + b);
            }
        }
        let mut p = self.sps[sp as usize].parent_head;
        while p != NONE {
            let next = self.link[p as usize];
            let (parent, i) = (p / 512, (p % 512) as usize);
            self.pool.write_entry(parent as usize, i, 0);
            self.aux[p as usize] = NONE;
            self.link[p as usize] = NONE;
            self.set_present(parent, i, false);
            p = next;
        }
        self.sps[sp as usize].parent_head = NONE;
        let (gfn, direct) = {
            let s = &self.sps[sp as usize];
            (s.gfn, s.role.direct)
        };
        if !direct {
            self.write_track[gfn as usize] -= 1;
        }
        self.hash_remove(sp);
        self.lru_unlink(sp);
        self.stats.zaps += 1;
        if self.sps[sp as usize].root_count > 0 {
            self.sps[sp as usize].state = SpState::Invalid;
        } else {
            self.free_frame(sp);
        }
    }

    /// Zaps every indirect shadow page of `gfn` (the guest wrote that page table), which
    /// unprotects it (KVM's `kvm_mmu_unprotect_page`). Returns how many were zapped.
    pub(crate) fn zap_gfn(&mut self, gfn: u64) -> usize {
        let Some(head) = self.gfn_sp_head.get(gfn as usize) else {
            return 0;
        };
        let mut cur = head;
        let mut n = 0;
        while cur != NONE {
            let next = self.sps[cur as usize].hash_next;
            if !self.sps[cur as usize].role.direct {
                self.zap_sp(cur);
                n += 1;
            }
            cur = next;
        }
        self.stats.write_zaps += n as u64;
        n
    }

    /// A guest write of `len` bytes at `gpa`, a page holding shadowed guest page tables (KVM's
    /// `kvm_mmu_track_write`): in every shadow page of that table, the sptes built from the
    /// gptes the write changed are dropped (the next fault rebuilds them from the new gptes).
    /// A shadow page written misaligned (across gptes, or fewer than 4 bytes), or written
    /// [`WRITE_FLOODING_LIMIT`] times with no fault walking through it in between, is zapped:
    /// the page is probably no longer a page table (KVM's write-flooding detection).
    pub(crate) fn track_guest_write(&mut self, gpa: u64, len: usize) {
        let Some(mut cur) = self.gfn_sp_head.get((gpa >> 12) as usize) else {
            return;
        };
        let offset = gpa & 0xfff;
        while cur != NONE {
            let s = self.sps[cur as usize];
            let next = s.hash_next;
            if s.role.direct || s.state != SpState::Active {
                cur = next;
                continue;
            }
            let size = if s.role.has_4_byte_gpte { 4 } else { 8 };
            let last = offset + len.max(1) as u64 - 1;
            let misaligned = (offset ^ last) & !(size - 1) != 0 || len < 4;
            let flooded = s.write_flooding + 1 >= WRITE_FLOODING_LIMIT;
            if misaligned || flooded {
                self.zap_sp(cur);
                self.stats.write_zaps += 1;
            } else {
                self.sps[cur as usize].write_flooding += 1;
                if let Some((first, n)) = written_sptes(&s.role, offset) {
                    for i in first..(first + n).min(512) {
                        if is_present(self.pool.read_entry(cur as usize, i)) {
                            self.drop_spte(cur, i);
                            self.stats.write_sptes_dropped += 1;
                        }
                    }
                }
            }
            cur = next;
        }
    }

    /// Takes a root reference on `sp`.
    pub(crate) fn get_root_ref(&mut self, sp: SpId) {
        self.sps[sp as usize].root_count += 1;
    }

    /// Drops a root reference (KVM's `mmu_free_root_page`). A page no root refers to any more is
    /// zapped: an evicted root is freed, as the design requires; the pages below it stay cached.
    pub(crate) fn put_root_ref(&mut self, sp: SpId) {
        let s = &mut self.sps[sp as usize];
        if s.root_count == 0 {
            return;
        }
        s.root_count -= 1;
        if s.root_count > 0 {
            return;
        }
        match s.state {
            SpState::Invalid => self.free_frame(sp),
            SpState::Active => self.zap_sp(sp),
            _ => {}
        }
    }

    /// Makes at least `need` frames free, zapping the oldest shadow pages that are not roots,
    /// then, if that is not enough, `vcpu`'s oldest previous roots (KVM's
    /// `make_mmu_pages_available`).
    pub(crate) fn make_frames_available(
        &mut self,
        vcpu: &mut Vcpu,
        need: usize,
    ) -> Result<(), Error> {
        let need = need.max(self.config.min_free_frames);
        if self.free_frames() >= need {
            return Ok(());
        }
        let target = need + self.config.reclaim_batch;
        let mut cur = self.lru_head;
        while self.free_frames() < target && cur != NONE {
            let next = self.sps[cur as usize].lru_next;
            if self.sps[cur as usize].root_count == 0 {
                self.zap_sp(cur);
                self.stats.reclaim_zaps += 1;
            }
            cur = next;
        }
        while self.free_frames() < need {
            if !self.free_oldest_prev_root(vcpu) {
                break;
            }
            self.stats.reclaim_root_frees += 1;
            // Freed roots became ordinary pages or were zapped; reclaim again.
            let mut cur = self.lru_head;
            while self.free_frames() < need && cur != NONE {
                let next = self.sps[cur as usize].lru_next;
                if self.sps[cur as usize].root_count == 0 {
                    self.zap_sp(cur);
                    self.stats.reclaim_zaps += 1;
                }
                cur = next;
            }
        }
        if self.free_frames() >= need {
            Ok(())
        } else {
            Err(Error::OutOfShadowPages)
        }
    }

    /// Takes a frame below 4 GiB, zapping unused shadow pages that occupy low frames if none is
    /// free.
    pub(crate) fn alloc_low_frame(&mut self) -> Result<u32, Error> {
        if let Some(f) = self.alloc_frame(true) {
            return Ok(f);
        }
        let mut cur = self.lru_head;
        while cur != NONE {
            let next = self.sps[cur as usize].lru_next;
            if self.sps[cur as usize].root_count == 0 && self.sp_hpa(cur) < (1u64 << 32) {
                self.zap_sp(cur);
                self.stats.reclaim_zaps += 1;
                break;
            }
            cur = next;
        }
        self.alloc_frame(true).ok_or(Error::NoFrameBelow4G)
    }
}
