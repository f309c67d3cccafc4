//! Test doubles: sparse guest RAM, a frame pool, a hardware model that walks the *shadow*
//! tables, and an independent reference walker of the guest tables (the oracle).
#![allow(dead_code)]

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use mmu_service::roots::INVALID_PAGE;
use mmu_service::{GuestMemory, MemoryError, Mmu, PagingMode, ShadowPagePool, Vcpu};

/// Host-physical base of guest RAM: hpa = RAM_HPA + gpa.
pub const RAM_HPA: u64 = 0x80_0000_0000;
/// Host-physical base of the pool frames below 4 GiB.
pub const POOL_LOW_HPA: u64 = 0x1000_0000;
/// Host-physical base of the pool frames above 4 GiB.
pub const POOL_HIGH_HPA: u64 = 0x2_0000_0000;

#[derive(Default)]
pub struct FastHasher(u64);
impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ (v >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}
type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Sparse guest RAM: pages never written read as zero.
#[derive(Clone)]
pub struct TestMemory {
    pub ram_pages: u64,
    pages: FastMap<u64, Box<[u8; 4096]>>,
}

impl TestMemory {
    pub fn new(ram_pages: u64) -> Self {
        TestMemory {
            ram_pages,
            pages: FastMap::default(),
        }
    }
    fn page(&self, gfn: u64) -> Option<&[u8; 4096]> {
        self.pages.get(&gfn).map(|b| &**b)
    }
    fn page_mut(&mut self, gfn: u64) -> &mut [u8; 4096] {
        self.pages
            .entry(gfn)
            .or_insert_with(|| Box::new([0u8; 4096]))
    }
    pub fn r64(&self, gpa: u64) -> u64 {
        self.read_u64(gpa).expect("in RAM")
    }
    pub fn r32(&self, gpa: u64) -> u32 {
        self.read_u32(gpa).expect("in RAM")
    }
    pub fn w64(&mut self, gpa: u64, v: u64) {
        self.write(gpa, &v.to_le_bytes()).expect("in RAM")
    }
    pub fn w32(&mut self, gpa: u64, v: u32) {
        self.write(gpa, &v.to_le_bytes()).expect("in RAM")
    }
}

impl GuestMemory for TestMemory {
    fn ram_pages(&self) -> u64 {
        self.ram_pages
    }
    fn gfn_to_hpa(&self, gfn: u64) -> Option<u64> {
        (gfn < self.ram_pages).then_some(RAM_HPA + (gfn << 12))
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        for (i, b) in buf.iter_mut().enumerate() {
            let a = gpa + i as u64;
            if a >> 12 >= self.ram_pages {
                return Err(MemoryError { gpa: a });
            }
            *b = self.page(a >> 12).map_or(0, |p| p[(a & 0xfff) as usize]);
        }
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        for (i, &b) in data.iter().enumerate() {
            let a = gpa + i as u64;
            if a >> 12 >= self.ram_pages {
                return Err(MemoryError { gpa: a });
            }
            self.page_mut(a >> 12)[(a & 0xfff) as usize] = b;
        }
        Ok(())
    }
    fn read_u64(&self, gpa: u64) -> Result<u64, MemoryError> {
        if gpa & 7 != 0 || gpa >> 12 >= self.ram_pages {
            let mut b = [0u8; 8];
            self.read(gpa, &mut b)?;
            return Ok(u64::from_le_bytes(b));
        }
        let o = (gpa & 0xfff) as usize;
        Ok(self.page(gpa >> 12).map_or(0, |p| {
            u64::from_le_bytes(p[o..o + 8].try_into().expect("8 bytes"))
        }))
    }
    fn read_u32(&self, gpa: u64) -> Result<u32, MemoryError> {
        if gpa & 3 != 0 || gpa >> 12 >= self.ram_pages {
            let mut b = [0u8; 4];
            self.read(gpa, &mut b)?;
            return Ok(u32::from_le_bytes(b));
        }
        let o = (gpa & 0xfff) as usize;
        Ok(self.page(gpa >> 12).map_or(0, |p| {
            u32::from_le_bytes(p[o..o + 4].try_into().expect("4 bytes"))
        }))
    }
}

/// A pool of `low` frames below 4 GiB followed by `high` frames above.
pub struct TestPool {
    frames: Vec<[u64; 512]>,
    low: usize,
}

impl TestPool {
    pub fn new(low: usize, high: usize) -> Self {
        TestPool {
            frames: vec![[0u64; 512]; low + high],
            low,
        }
    }
    pub fn frame_of(&self, hpa: u64) -> Option<usize> {
        let f = if (POOL_LOW_HPA..POOL_LOW_HPA + (self.low as u64) * 4096).contains(&hpa) {
            ((hpa - POOL_LOW_HPA) >> 12) as usize
        } else if hpa >= POOL_HIGH_HPA {
            self.low + ((hpa - POOL_HIGH_HPA) >> 12) as usize
        } else {
            return None;
        };
        (f < self.frames.len()).then_some(f)
    }
    pub fn entry_at(&self, table_hpa: u64, index: usize) -> u64 {
        let f = self
            .frame_of(table_hpa)
            .unwrap_or_else(|| panic!("shadow entry points outside the pool: {table_hpa:#x}"));
        self.frames[f][index]
    }
}

impl ShadowPagePool for TestPool {
    fn frame_count(&self) -> usize {
        self.frames.len()
    }
    fn frame_hpa(&self, frame: usize) -> u64 {
        if frame < self.low {
            POOL_LOW_HPA + (frame as u64) * 4096
        } else {
            POOL_HIGH_HPA + ((frame - self.low) as u64) * 4096
        }
    }
    fn read_entry(&self, frame: usize, index: usize) -> u64 {
        self.frames[frame][index]
    }
    fn write_entry(&mut self, frame: usize, index: usize, value: u64) {
        self.frames[frame][index] = value;
    }
    fn zero_frame(&mut self, frame: usize) {
        self.frames[frame] = [0; 512];
    }
}

pub type TestMmu = Mmu<TestMemory, TestPool>;

/// An access: data read, data write or fetch; user or supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acc {
    pub write: bool,
    pub fetch: bool,
    pub user: bool,
}

impl Acc {
    pub const ALL: [Acc; 6] = [
        Acc {
            write: false,
            fetch: false,
            user: false,
        },
        Acc {
            write: true,
            fetch: false,
            user: false,
        },
        Acc {
            write: false,
            fetch: true,
            user: false,
        },
        Acc {
            write: false,
            fetch: false,
            user: true,
        },
        Acc {
            write: true,
            fetch: false,
            user: true,
        },
        Acc {
            write: false,
            fetch: true,
            user: true,
        },
    ];
}

// ---------------------------------------------------------------------------------------------
// Hardware model: the processor walking the shadow tables. It runs with CR0.WP = 1 and
// EFER.NXE = 1 (forced for shadow paging) and the guest's CR4.SMEP/SMAP when the guest pages.

/// Result of the hardware walk: the host-physical address, or the hardware #PF error code.
pub fn hw_translate(mmu: &TestMmu, vcpu: &Vcpu, gva: u64, a: Acc) -> Result<u64, u32> {
    let leaf = hw_leaf(mmu, vcpu, gva);
    let base_ec = (if a.write { 2 } else { 0 })
        | (if a.user { 4 } else { 0 })
        | (if a.fetch { 16 } else { 0 });
    let Some((spte_acc, hpa)) = leaf else {
        return Err(base_ec);
    };
    let cpu = vcpu.cpu_role();
    if hw_permits(spte_acc, a, cpu.smep, cpu.smap) {
        Ok(hpa | (gva & 0xfff))
    } else {
        Err(base_ec | 1)
    }
}

/// Effective (writable, user, nx) of a hardware translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwAcc {
    pub w: bool,
    pub u: bool,
    pub nx: bool,
}

pub fn hw_permits(e: HwAcc, a: Acc, smep: bool, smap: bool) -> bool {
    if a.user {
        e.u && (!a.write || e.w) && (!a.fetch || !e.nx)
    } else if a.fetch {
        !(e.nx || (smep && e.u))
    } else {
        !(smap && e.u) && (!a.write || e.w)
    }
}

fn check_spte_format(e: u64) {
    assert_eq!(
        e & 0x7ff0_0000_0000_0000,
        0,
        "spte {e:#x} has bits 62:52 set"
    );
    assert_eq!(
        e & (1 << 7),
        0,
        "spte {e:#x} has PS set (no huge sptes are built)"
    );
}

/// Walks the shadow tables for `gva`; returns the leaf's effective access and page hpa.
pub fn hw_leaf(mmu: &TestMmu, vcpu: &Vcpu, gva: u64) -> Option<(HwAcc, u64)> {
    let cr3 = vcpu.shadow_cr3();
    if cr3 == INVALID_PAGE {
        return None;
    }
    let pool = mmu.pool();
    let mut e_acc = HwAcc {
        w: true,
        u: true,
        nx: false,
    };
    let (mut table, mut level) = if vcpu.has_per_vcpu_root_page() {
        assert!(cr3 < (1 << 32), "PAE root above 4 GiB: {cr3:#x}");
        let gva = gva & 0xffff_ffff;
        let pdpte = pool.entry_at(cr3, ((gva >> 30) & 3) as usize);
        if pdpte & 1 == 0 {
            return None;
        }
        assert_eq!(
            pdpte & !0x000f_ffff_ffff_f001,
            0,
            "PDPTE {pdpte:#x} has reserved bits"
        );
        (pdpte & 0x000f_ffff_ffff_f000, 2u32)
    } else {
        (cr3, 4u32)
    };
    loop {
        let e = pool.entry_at(table, ((gva >> (12 + 9 * (level - 1))) & 0x1ff) as usize);
        if e & 1 == 0 {
            return None;
        }
        check_spte_format(e);
        e_acc.w &= e & 2 != 0;
        e_acc.u &= e & 4 != 0;
        e_acc.nx |= e >> 63 != 0;
        if level == 1 {
            return Some((e_acc, e & 0x000f_ffff_ffff_f000));
        }
        table = e & 0x000f_ffff_ffff_f000;
        level -= 1;
    }
}

/// Every leaf reachable from a root: (gva, access, page hpa). `table_hpa` is the root shadow
/// page (4-level) or the PAE root page.
pub fn shadow_leaves(pool: &TestPool, root_hpa: u64, pae: bool) -> Vec<(u64, HwAcc, u64)> {
    let mut out = Vec::new();
    let full = HwAcc {
        w: true,
        u: true,
        nx: false,
    };
    if pae {
        for i in 0..4 {
            let pdpte = pool.entry_at(root_hpa, i);
            if pdpte & 1 != 0 {
                collect(
                    pool,
                    pdpte & 0x000f_ffff_ffff_f000,
                    2,
                    (i as u64) << 30,
                    full,
                    &mut out,
                );
            }
        }
    } else {
        collect(pool, root_hpa, 4, 0, full, &mut out);
    }
    out
}

fn collect(
    pool: &TestPool,
    table: u64,
    level: u32,
    base: u64,
    acc: HwAcc,
    out: &mut Vec<(u64, HwAcc, u64)>,
) {
    for i in 0..512u64 {
        let e = pool.entry_at(table, i as usize);
        if e & 1 == 0 {
            continue;
        }
        check_spte_format(e);
        let a = HwAcc {
            w: acc.w && e & 2 != 0,
            u: acc.u && e & 4 != 0,
            nx: acc.nx || e >> 63 != 0,
        };
        let mut gva = base | (i << (12 + 9 * (level - 1)));
        if level == 4 && i >= 256 {
            gva |= 0xffff_0000_0000_0000;
        }
        if level == 1 {
            out.push((gva, a, e & 0x000f_ffff_ffff_f000));
        } else {
            collect(pool, e & 0x000f_ffff_ffff_f000, level - 1, gva, a, out);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The oracle: the guest's registers and an independent walk of its tables.

pub const CR0_PG: u64 = 1 << 31;
pub const CR0_WP: u64 = 1 << 16;
pub const CR4_PSE: u64 = 1 << 4;
pub const CR4_PAE: u64 = 1 << 5;
pub const CR4_SMEP: u64 = 1 << 20;
pub const CR4_SMAP: u64 = 1 << 21;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;
pub const EFER_NXE: u64 = 1 << 11;

/// The guest's paging registers plus its PDPTE registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guest {
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub pdptes: [u64; 4],
    pub maxphyaddr: u32,
}

impl mmu_service::VcpuPagingState for Guest {
    fn cr0(&self) -> u64 {
        self.cr0
    }
    fn cr3(&self) -> u64 {
        self.cr3
    }
    fn cr4(&self) -> u64 {
        self.cr4
    }
    fn efer(&self) -> u64 {
        self.efer
    }
}

/// A successful oracle walk: gpa and the gptes (address, size) it used, leaf last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefOk {
    pub gpa: u64,
    pub path: Vec<(u64, u8)>,
}

fn rsvd_range(lo: u32, hi: u32) -> u64 {
    (lo..=hi).fold(0, |m, b| m | (1u64 << b))
}

impl Guest {
    pub fn mode(&self) -> PagingMode {
        if self.cr0 & CR0_PG == 0 {
            PagingMode::NonPaging
        } else if self.cr4 & CR4_PAE == 0 {
            PagingMode::TwoLevel
        } else if self.efer & EFER_LMA != 0 {
            PagingMode::FourLevel
        } else {
            PagingMode::Pae
        }
    }

    /// Reads the PDPTEs at CR3 as MOV CR3 does; `false` (a #GP) if one has reserved bits.
    pub fn load_pdptes(&mut self, mem: &TestMemory) -> bool {
        let base = self.cr3 & 0xffff_ffe0;
        let mut p = [0; 4];
        for (i, e) in p.iter_mut().enumerate() {
            *e = mem.r64(base + 8 * i as u64);
        }
        let rsvd = rsvd_range(self.maxphyaddr, 63) | rsvd_range(5, 8) | rsvd_range(1, 2);
        if p.iter().any(|&e| e & 1 != 0 && e & rsvd != 0) {
            return false;
        }
        self.pdptes = p;
        true
    }

    /// The guest's own translation of `gva` for `a`, or its #PF error code.
    pub fn walk(&self, mem: &TestMemory, gva: u64, a: Acc) -> Result<RefOk, u32> {
        match self.walk_checked(mem, gva, a) {
            Ok(r) => r,
            Err(e) => panic!("guest table outside RAM: {e:?}"),
        }
    }

    /// Like `walk`, but reports a guest table outside RAM as `Err`.
    pub fn walk_checked(
        &self,
        mem: &TestMemory,
        gva: u64,
        a: Acc,
    ) -> Result<Result<RefOk, u32>, MemoryError> {
        self.walk_inner(mem, gva, a)
    }

    fn walk_inner(
        &self,
        mem: &TestMemory,
        gva: u64,
        a: Acc,
    ) -> Result<Result<RefOk, u32>, MemoryError> {
        let mode = self.mode();
        let nxe =
            matches!(mode, PagingMode::Pae | PagingMode::FourLevel) && self.efer & EFER_NXE != 0;
        let paging = mode != PagingMode::NonPaging;
        let smep = paging && self.cr4 & CR4_SMEP != 0;
        let smap = paging && self.cr4 & CR4_SMAP != 0;
        let wp = self.cr0 & CR0_WP != 0;
        let mut ec = 0u32;
        if a.write {
            ec |= 2;
        }
        if a.user {
            ec |= 4;
        }
        if a.fetch && (smep || nxe) {
            ec |= 16;
        }
        let m = self.maxphyaddr;
        let xd_rsvd = if nxe { 0 } else { 1u64 << 63 };
        let mut path = Vec::new();
        let (mut user, mut writable, mut xd) = (true, true, false);
        let gpa;
        match mode {
            PagingMode::NonPaging => {
                return Ok(Ok(RefOk {
                    gpa: gva & 0xffff_ffff,
                    path,
                }))
            }
            PagingMode::TwoLevel => {
                let gva = gva & 0xffff_ffff;
                let pde_a = (self.cr3 & 0xffff_f000) + (gva >> 22) * 4;
                let pde = u64::from(mem.read_u32(pde_a)?);
                path.push((pde_a, 4));
                if pde & 1 == 0 {
                    return Ok(Err(ec));
                }
                user &= pde & 4 != 0;
                writable &= pde & 2 != 0;
                if pde & 0x80 != 0 && self.cr4 & CR4_PSE != 0 {
                    let top = m.min(40);
                    if pde & rsvd_range(13 + top - 32, 21) != 0 {
                        return Ok(Err(ec | 9));
                    }
                    gpa = (pde & 0xffc0_0000) | (((pde >> 13) & 0xff) << 32) | (gva & 0x3f_ffff);
                } else {
                    let pte_a = (pde & 0xffff_f000) + ((gva >> 12) & 0x3ff) * 4;
                    let pte = u64::from(mem.read_u32(pte_a)?);
                    path.push((pte_a, 4));
                    if pte & 1 == 0 {
                        return Ok(Err(ec));
                    }
                    user &= pte & 4 != 0;
                    writable &= pte & 2 != 0;
                    gpa = (pte & 0xffff_f000) | (gva & 0xfff);
                }
            }
            PagingMode::Pae | PagingMode::FourLevel => {
                let (mut table, mut level, gva, high) = if mode == PagingMode::Pae {
                    let gva = gva & 0xffff_ffff;
                    let pdpte = self.pdptes[(gva >> 30) as usize];
                    if pdpte & 1 == 0 {
                        return Ok(Err(ec));
                    }
                    (pdpte & 0x000f_ffff_ffff_f000, 2u32, gva, rsvd_range(m, 62))
                } else {
                    (
                        self.cr3 & 0x000f_ffff_ffff_f000,
                        4u32,
                        gva,
                        rsvd_range(m, 51),
                    )
                };
                loop {
                    let ea = table + ((gva >> (12 + 9 * (level - 1))) & 0x1ff) * 8;
                    let e = mem.read_u64(ea)?;
                    path.push((ea, 8));
                    if e & 1 == 0 {
                        return Ok(Err(ec));
                    }
                    let ps = e & 0x80 != 0;
                    let mut rsvd = high | xd_rsvd;
                    if level == 4 {
                        rsvd |= 0x80;
                    }
                    if ps && level == 3 && mode == PagingMode::FourLevel {
                        rsvd |= rsvd_range(13, 29);
                    }
                    if ps && level == 2 {
                        rsvd |= rsvd_range(13, 20);
                    }
                    if e & rsvd != 0 {
                        return Ok(Err(ec | 9));
                    }
                    user &= e & 4 != 0;
                    writable &= e & 2 != 0;
                    xd |= nxe && e >> 63 != 0;
                    let page_bits = 12 + 9 * (level - 1);
                    let is_leaf = level == 1
                        || (ps && level == 2)
                        || (ps && level == 3 && mode == PagingMode::FourLevel);
                    if is_leaf {
                        let mask = (1u64 << page_bits) - 1;
                        gpa = (e & 0x000f_ffff_ffff_f000 & !mask) | (gva & mask);
                        break;
                    }
                    table = e & 0x000f_ffff_ffff_f000;
                    level -= 1;
                }
            }
        }
        let allowed = if a.user {
            user && (!a.write || writable) && (!a.fetch || !xd)
        } else if a.fetch {
            !(xd || (smep && user))
        } else if smap && user {
            false
        } else {
            !a.write || writable || !wp
        };
        if allowed {
            Ok(Ok(RefOk { gpa, path }))
        } else {
            Ok(Err(ec | 1))
        }
    }

    pub fn truncate(&self, gva: u64) -> u64 {
        if self.mode() == PagingMode::FourLevel {
            gva
        } else {
            gva & 0xffff_ffff
        }
    }
}

/// Checks that the accessed bits (and for a write the leaf's dirty bit) are set on a path.
pub fn assert_ad(mem: &TestMemory, ok: &RefOk, write: bool) {
    for (i, &(a, size)) in ok.path.iter().enumerate() {
        let e = if size == 4 {
            u64::from(mem.r32(a))
        } else {
            mem.r64(a)
        };
        assert!(e & 0x20 != 0, "accessed bit clear in gpte {e:#x} at {a:#x}");
        if write && i + 1 == ok.path.len() {
            assert!(
                e & 0x40 != 0,
                "dirty bit clear in leaf gpte {e:#x} at {a:#x}"
            );
        }
    }
}

/// splitmix64.
pub struct TRng(pub u64);
impl TRng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}
