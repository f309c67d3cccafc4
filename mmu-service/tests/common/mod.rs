//! Test doubles and models, written from the guest's registers and the Intel SDM, not from the
//! library's own view of the guest:
//!
//! - [`TestMemory`]: sparse guest RAM that can log the writes made to it (to check exactly which
//!   accessed/dirty bits a library call set).
//! - [`TestPool`]: the frame pool holding the shadow tables.
//! - The hardware model ([`HwRegs`], [`HwCpu`], [`hw_translate`]): the processor walking the
//!   *shadow* tables with the CR0/CR4/EFER the kernel gives a shadow-paged guest (derived here from
//!   the guest's registers), with a TLB per vCPU that is flushed only where the real system
//!   flushes (see [`HwCpu`] for the contract).
//! - The oracle ([`Guest`]): the guest's registers, changed instruction by instruction as the
//!   SDM says (PDPTE loads included), and an independent walk of its tables.
#![allow(dead_code)]

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use mmu_service::roots::INVALID_PAGE;
use mmu_service::{
    AccessKind, GuestMemory, MemoryError, Mmu, PagingMode, ShadowPagePool, Vcpu, VcpuPagingState,
};

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
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Sparse guest RAM: pages never written read as zero. With the log on, every write records
/// the bytes it replaced.
#[derive(Clone)]
pub struct TestMemory {
    pub ram_pages: u64,
    /// What a shadow VM's EPT maps for its vCPUs in real mode (`write_protect` keeps it).
    pub ept: mmu_service::ept::RealModeEpt,
    pages: FastMap<u64, Box<[u8; 4096]>>,
    log: Option<Vec<(u64, Vec<u8>)>>,
}

impl TestMemory {
    pub fn new(ram_pages: u64) -> Self {
        TestMemory {
            ram_pages,
            ept: Default::default(),
            pages: FastMap::default(),
            log: None,
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
    /// Starts logging writes (dropping any earlier log).
    pub fn start_log(&mut self) {
        self.log = Some(Vec::new());
    }
    /// Stops logging and returns the writes made since [`TestMemory::start_log`]: (gpa, the
    /// bytes it held before), in order.
    pub fn take_log(&mut self) -> Vec<(u64, Vec<u8>)> {
        self.log.take().unwrap_or_default()
    }
    fn byte(&self, a: u64) -> u8 {
        self.page(a >> 12).map_or(0, |p| p[(a & 0xfff) as usize])
    }
}

impl GuestMemory for TestMemory {
    fn write_protect(&mut self, gfn: u64) {
        // The service unmaps it from the EPT; here it is forgotten the same way.
        self.ept.write_protect(gfn);
    }
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
            *b = self.byte(a);
        }
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        if let Some(a) = (gpa..gpa + data.len() as u64).find(|a| a >> 12 >= self.ram_pages) {
            return Err(MemoryError { gpa: a });
        }
        if self.log.is_some() {
            let old: Vec<u8> = (gpa..gpa + data.len() as u64)
                .map(|a| self.byte(a))
                .collect();
            if let Some(log) = &mut self.log {
                log.push((gpa, old));
            }
        }
        for (i, &b) in data.iter().enumerate() {
            let a = gpa + i as u64;
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

/// What a read of `size` (4 or 8) bytes of guest-physical memory at `gpa` returns on a PC:
/// RAM's contents, or all ones where nothing is (no device is modelled).
pub fn phys_read(mem: &TestMemory, gpa: u64, size: u8) -> u64 {
    let in_ram = (gpa + u64::from(size) - 1) >> 12 < mem.ram_pages;
    match (size, in_ram) {
        (4, true) => u64::from(mem.r32(gpa)),
        (4, false) => u64::from(u32::MAX),
        (_, true) => mem.r64(gpa),
        (_, false) => u64::MAX,
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

/// An access: data read, data write or fetch, at CPL 3 (`user`) or a supervisor one.
/// `ac` marks an explicit supervisor data access at CPL < 3 with EFLAGS.AC = 1 (after `stac`),
/// the only accesses SMAP lets reach user pages (SDM 4.6.1); it means nothing for user
/// accesses and fetches. A supervisor access without `ac` is one at AC = 0 or an implicit one
/// (descriptor tables and the like, which SMAP checks whatever AC says).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Acc {
    pub write: bool,
    pub fetch: bool,
    pub user: bool,
    pub ac: bool,
}

impl Acc {
    pub const SUP_READ: Acc = Acc {
        write: false,
        fetch: false,
        user: false,
        ac: false,
    };
    pub const SUP_WRITE: Acc = Acc {
        write: true,
        ..Acc::SUP_READ
    };
    pub const SUP_FETCH: Acc = Acc {
        fetch: true,
        ..Acc::SUP_READ
    };
    pub const USER_READ: Acc = Acc {
        user: true,
        ..Acc::SUP_READ
    };
    pub const USER_WRITE: Acc = Acc {
        user: true,
        ..Acc::SUP_WRITE
    };
    pub const USER_FETCH: Acc = Acc {
        user: true,
        ..Acc::SUP_FETCH
    };
    /// Explicit supervisor read with EFLAGS.AC = 1.
    pub const SUP_READ_AC: Acc = Acc {
        ac: true,
        ..Acc::SUP_READ
    };
    /// Explicit supervisor write with EFLAGS.AC = 1.
    pub const SUP_WRITE_AC: Acc = Acc {
        ac: true,
        ..Acc::SUP_WRITE
    };

    /// Every kind of access.
    pub const ALL: [Acc; 8] = [
        Acc::SUP_READ,
        Acc::SUP_WRITE,
        Acc::SUP_FETCH,
        Acc::USER_READ,
        Acc::USER_WRITE,
        Acc::USER_FETCH,
        Acc::SUP_READ_AC,
        Acc::SUP_WRITE_AC,
    ];

    /// What the MMU service tells the library about this access (from the exit: the #PF error
    /// code, CPL and EFLAGS.AC).
    pub fn kind(self) -> AccessKind {
        AccessKind {
            write: self.write,
            user: self.user,
            fetch: self.fetch,
            smap_allowed: self.ac && !self.user && !self.fetch,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Hardware model: the processor walking the shadow tables.

pub use abi::cpu::{cr0, cr4, efer};

const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// The paging controls the processor runs a shadow-paged guest with, derived from the guest's
/// registers the way the kernel derives them (`microkernel/src/kobj/shadow.rs`: `hw_cr0` =
/// the guest's CR0 with PE, PG, WP and NE forced on; `hw_cr4` = the guest's CR4 less PSE, PGE,
/// PCIDE, LA57 and PKE, with PAE on; `hw_efer` = NXE on, LME = LMA = the guest's long mode).
/// So: paging always on with PAE-format tables, CR0.WP = 1, XD honoured, and the guest's own
/// CR4.SMEP and CR4.SMAP while the guest itself pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwRegs {
    pub smep: bool,
    pub smap: bool,
    /// 4-level tables (the guest is in long mode: CR0.PG and EFER.LME), else PAE tables.
    pub long_mode: bool,
}

/// Whether the kernel leaves the guest's CR4.SMEP/SMAP on in hardware while the guest's
/// CR0.PG = 0 (`hw_cr4` takes only the guest's CR4). The hardware always pages a shadow-paged
/// guest, so it then enforces SMEP/SMAP on the identity-mapped (user) sptes of a guest that does
/// not page, where the guest's own processor would not. KVM clears both in that case.
pub const HW_SMEP_SMAP_WITHOUT_GUEST_PAGING: bool = false;

impl HwRegs {
    pub fn of<S: VcpuPagingState + ?Sized>(g: &S) -> Self {
        let paging = g.cr0() & cr0::PG != 0;
        let on = paging || HW_SMEP_SMAP_WITHOUT_GUEST_PAGING;
        HwRegs {
            smep: on && g.cr4() & cr4::SMEP != 0,
            smap: on && g.cr4() & cr4::SMAP != 0,
            long_mode: paging && g.efer() & efer::LME != 0,
        }
    }
}

/// Effective (writable, user, nx) of a hardware translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwAcc {
    pub w: bool,
    pub u: bool,
    pub nx: bool,
}

/// Whether the processor (CR0.WP = 1, EFER.NXE = 1, SMEP/SMAP per `r`) allows `a` through a
/// translation with access `e` (SDM 4.6).
pub fn hw_permits(e: HwAcc, a: Acc, r: &HwRegs) -> bool {
    if a.user {
        e.u && (!a.write || e.w) && (!a.fetch || !e.nx)
    } else if a.fetch {
        !(e.nx || (r.smep && e.u))
    } else {
        let smap_ok = !(r.smap && e.u) || a.ac;
        smap_ok && (!a.write || e.w)
    }
}

/// The #PF error code the processor reports for `a` on the shadow tables: P if the translation
/// was present, W/R, U/S, and I/D for every fetch (PAE-format tables with EFER.NXE = 1).
pub fn hw_error_code(a: Acc, present: bool) -> u32 {
    u32::from(present)
        | if a.write { 2 } else { 0 }
        | if a.user { 4 } else { 0 }
        | if a.fetch { 16 } else { 0 }
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

/// The PDPTE registers the processor loads from a PAE CR3 (at VM entry, with EPT off).
fn hw_load_pdptes(pool: &TestPool, cr3: u64) -> [u64; 4] {
    assert!(cr3 < (1 << 32), "PAE root above 4 GiB: {cr3:#x}");
    let mut p = [0; 4];
    for (i, e) in p.iter_mut().enumerate() {
        *e = pool.entry_at(cr3, i);
        if *e & 1 != 0 {
            assert_eq!(*e & !(ADDR | 1), 0, "PDPTE {:#x} has reserved bits", *e);
        }
    }
    p
}

/// Walks the shadow tables at `cr3` (`INVALID_PAGE`: the kernel's empty root) for `gva`:
/// 4-level tables in long mode, else PAE tables below the PDPTE registers `pdptes`. Returns
/// the leaf's effective access and page hpa.
pub fn hw_walk(
    pool: &TestPool,
    cr3: u64,
    long_mode: bool,
    pdptes: &[u64; 4],
    gva: u64,
) -> Option<(HwAcc, u64)> {
    if cr3 == INVALID_PAGE {
        return None;
    }
    let mut e_acc = HwAcc {
        w: true,
        u: true,
        nx: false,
    };
    let (mut table, mut level) = if long_mode {
        (cr3, 4u32)
    } else {
        let pdpte = pdptes[((gva >> 30) & 3) as usize];
        if pdpte & 1 == 0 {
            return None;
        }
        (pdpte & ADDR, 2u32)
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
            return Some((e_acc, e & ADDR));
        }
        table = e & ADDR;
        level -= 1;
    }
}

/// The linear address the hardware translates: 32 bits outside long mode.
pub fn hw_linear(r: &HwRegs, gva: u64) -> u64 {
    if r.long_mode {
        gva
    } else {
        gva & 0xffff_ffff
    }
}

/// The hardware's translation of `gva` for a vCPU right after a VM entry (nothing cached),
/// with the guest's registers `regs`: the leaf's access and page.
pub fn hw_leaf<S: VcpuPagingState + ?Sized>(
    mmu: &TestMmu,
    vcpu: &Vcpu,
    regs: &S,
    gva: u64,
) -> Option<(HwAcc, u64)> {
    let r = HwRegs::of(regs);
    let cr3 = vcpu.shadow_cr3();
    let pdptes = if r.long_mode || cr3 == INVALID_PAGE {
        [0; 4]
    } else {
        hw_load_pdptes(mmu.pool(), cr3)
    };
    hw_walk(mmu.pool(), cr3, r.long_mode, &pdptes, hw_linear(&r, gva))
}

/// Result of the hardware access right after a VM entry: the host-physical address, or the
/// hardware #PF error code.
pub fn hw_translate<S: VcpuPagingState + ?Sized>(
    mmu: &TestMmu,
    vcpu: &Vcpu,
    regs: &S,
    gva: u64,
    a: Acc,
) -> Result<u64, u32> {
    let r = HwRegs::of(regs);
    match hw_leaf(mmu, vcpu, regs, gva) {
        None => Err(hw_error_code(a, false)),
        Some((acc, hpa)) if hw_permits(acc, a, &r) => Ok(hpa | (gva & 0xfff)),
        Some(_) => Err(hw_error_code(a, true)),
    }
}

/// A cached translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbEntry {
    pub acc: HwAcc,
    /// Host-physical page.
    pub page: u64,
}

/// How the hardware served an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwHit {
    /// Host-physical address accessed.
    pub hpa: u64,
    /// The translation's access.
    pub acc: HwAcc,
    /// Whether it came from the TLB (else from a walk of the shadow tables, now cached).
    pub from_tlb: bool,
}

/// One logical processor running a shadow-paged vCPU, with its TLB.
///
/// # The flush contract
///
/// Umbra runs shadow-paged VMs without VPID (`microkernel/src/arch/vmx.rs`), so every VM exit
/// and every VM entry flushes all of the guest's TLB entries, and nothing else does: a vCPU
/// that does not exit keeps using what it cached, whatever the MMU service changes in the
/// shadow tables meanwhile (on behalf of another vCPU). Every library call is made during an
/// exit of some vCPU; the tests call [`HwCpu::exit`] before it and [`HwCpu::enter`] after it
/// *for that vCPU only*. The guest's own INVLPG and MOV CR3 exit too (they reach the library
/// as [`Mmu::invlpg`] and [`Mmu::load_cr3`]), so they flush the same way. So a translation cached
/// by a vCPU stays in use until that vCPU's next exit, even if the library has since dropped
/// or write-protected the spte it came from.
pub struct HwCpu {
    pub regs: HwRegs,
    cr3: u64,
    pdptes: [u64; 4],
    tlb: FastMap<u64, TlbEntry>,
    /// Accesses served from the TLB.
    pub tlb_hits: u64,
    /// Exits and entries (each flushes the TLB).
    pub flushes: u64,
}

impl Default for HwCpu {
    fn default() -> Self {
        HwCpu::new()
    }
}

impl HwCpu {
    /// A processor not running the vCPU yet (every access faults).
    pub fn new() -> Self {
        HwCpu {
            regs: HwRegs {
                smep: false,
                smap: false,
                long_mode: false,
            },
            cr3: INVALID_PAGE,
            pdptes: [0; 4],
            tlb: FastMap::default(),
            tlb_hits: 0,
            flushes: 0,
        }
    }

    fn flush(&mut self) {
        self.tlb.clear();
        self.flushes += 1;
    }

    /// VM exit: the TLB is flushed.
    pub fn exit(&mut self) {
        self.flush();
        self.cr3 = INVALID_PAGE;
    }

    /// VM entry after the exit was handled: the TLB is flushed, the hardware registers follow the
    /// guest's, CR3 is the root the library named and, with PAE tables, the PDPTE registers are
    /// loaded from it.
    pub fn enter<S: VcpuPagingState + ?Sized>(&mut self, mmu: &TestMmu, vcpu: &Vcpu, guest: &S) {
        self.flush();
        self.regs = HwRegs::of(guest);
        self.cr3 = vcpu.shadow_cr3();
        self.pdptes = if self.regs.long_mode || self.cr3 == INVALID_PAGE {
            [0; 4]
        } else {
            hw_load_pdptes(mmu.pool(), self.cr3)
        };
    }

    /// Drops the cached translations `f` selects (a flush another vCPU's exit would need).
    pub fn drop_cached(&mut self, mut f: impl FnMut(&TlbEntry) -> bool) {
        self.tlb.retain(|_, e| !f(e));
    }

    /// The cached translation of `gva`, if any.
    pub fn cached(&self, gva: u64) -> Option<TlbEntry> {
        self.tlb.get(&(hw_linear(&self.regs, gva) >> 12)).copied()
    }

    /// An access by the guest: from the TLB, else from a walk of the shadow tables (cached if it
    /// succeeds), else the #PF error code (a VM exit follows).
    pub fn access(&mut self, mmu: &TestMmu, gva: u64, a: Acc) -> Result<HwHit, u32> {
        let la = hw_linear(&self.regs, gva);
        if let Some(e) = self.tlb.get(&(la >> 12)).copied() {
            if hw_permits(e.acc, a, &self.regs) {
                self.tlb_hits += 1;
                return Ok(HwHit {
                    hpa: e.page | (la & 0xfff),
                    acc: e.acc,
                    from_tlb: true,
                });
            }
            // A fault on a cached translation (the processor drops that entry).
            self.tlb.remove(&(la >> 12));
            return Err(hw_error_code(a, true));
        }
        match hw_walk(mmu.pool(), self.cr3, self.regs.long_mode, &self.pdptes, la) {
            None => Err(hw_error_code(a, false)),
            Some((acc, page)) if hw_permits(acc, a, &self.regs) => {
                self.tlb.insert(la >> 12, TlbEntry { acc, page });
                Ok(HwHit {
                    hpa: page | (la & 0xfff),
                    acc,
                    from_tlb: false,
                })
            }
            Some(_) => Err(hw_error_code(a, true)),
        }
    }
}

/// Every leaf reachable from a root: (gva, access, page hpa). `root_hpa` is the root shadow
/// page (4-level) or the PAE root page (`pae`).
pub fn shadow_leaves(pool: &TestPool, root_hpa: u64, pae: bool) -> Vec<(u64, HwAcc, u64)> {
    let mut out = Vec::new();
    let full = HwAcc {
        w: true,
        u: true,
        nx: false,
    };
    if pae {
        let pdptes = hw_load_pdptes(pool, root_hpa);
        for (i, pdpte) in pdptes.iter().enumerate() {
            if pdpte & 1 != 0 {
                collect(pool, pdpte & ADDR, 2, (i as u64) << 30, full, &mut out);
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
            out.push((gva, a, e & ADDR));
        } else {
            collect(pool, e & ADDR, level - 1, gva, a, out);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The oracle: the guest's registers and an independent walk of its tables (Intel SDM chapter 4).

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

impl VcpuPagingState for Guest {
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

/// A gpte the walk read: guest-physical address, size (4 or 8) and the value read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gpte {
    pub addr: u64,
    pub size: u8,
    pub value: u64,
}

/// A successful oracle walk: gpa and the gptes (address, size) it used, leaf last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefOk {
    pub gpa: u64,
    pub path: Vec<(u64, u8)>,
}

/// A full oracle walk: its result, every gpte it read in order (leaf last on success), and how
/// many of them the processor may mark accessed (on a fault: those before a not-present entry
/// or one with reserved bits; SDM 4.8 lets the processor set A in any entry it used).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefWalk {
    pub result: Result<u64, u32>,
    pub path: Vec<Gpte>,
    pub used: usize,
    /// Whether some gpte was read outside RAM (as all ones).
    pub outside_ram: bool,
}

/// Why the processor refuses an instruction with #GP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gp {
    /// The new register value is not allowed in this state (the VMM injects #GP; the MMU is not
    /// involved).
    Operand,
    /// A PDPTE the instruction had to load has reserved bits: the registers are unchanged; the
    /// registers the instruction would have produced are given (the MMU must refuse them).
    Pdpte(Guest),
}

/// A guest instruction that changes paging registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insn {
    MovCr0(u64),
    MovCr3(u64),
    MovCr4(u64),
    WrmsrEfer(u64),
}

fn rsvd_range(lo: u32, hi: u32) -> u64 {
    (lo..=hi).fold(0, |m, b| m | (1u64 << b))
}

impl Guest {
    pub fn mode(&self) -> PagingMode {
        if self.cr0 & cr0::PG == 0 {
            PagingMode::NonPaging
        } else if self.cr4 & cr4::PAE == 0 {
            PagingMode::TwoLevel
        } else if self.efer & efer::LMA != 0 {
            PagingMode::FourLevel
        } else {
            PagingMode::Pae
        }
    }

    /// The four PDPTEs at CR3 as the processor reads them (all ones where there is no RAM), or
    /// `None` if one is present with a reserved bit set (SDM 4.4.1: bits 2:1, 8:5 and
    /// 63:MAXPHYADDR), which makes the instruction loading them a #GP.
    pub fn read_pdptes(&self, mem: &TestMemory) -> Option<[u64; 4]> {
        let base = self.cr3 & 0xffff_ffe0;
        let mut p = [0; 4];
        for (i, e) in p.iter_mut().enumerate() {
            *e = phys_read(mem, base + 8 * i as u64, 8);
        }
        let rsvd = rsvd_range(self.maxphyaddr, 63) | rsvd_range(5, 8) | rsvd_range(1, 2);
        if p.iter().any(|&e| e & 1 != 0 && e & rsvd != 0) {
            return None;
        }
        Some(p)
    }

    /// Loads the PDPTE registers from CR3 as MOV CR3 does; `false` (a #GP, nothing loaded) if one
    /// has reserved bits.
    pub fn load_pdptes(&mut self, mem: &TestMemory) -> bool {
        match self.read_pdptes(mem) {
            Some(p) => {
                self.pdptes = p;
                true
            }
            None => false,
        }
    }

    /// Whether PAE paging is in use with these registers (CR0.PG, CR4.PAE, not long mode).
    pub fn pae_paging(&self) -> bool {
        self.cr0 & cr0::PG != 0 && self.cr4 & cr4::PAE != 0 && self.efer & efer::LMA == 0
    }

    /// Executes `insn` as the processor does: the register changes, EFER.LMA following
    /// CR0.PG and EFER.LME, and the PDPTE loads of SDM 4.4.1:
    ///
    /// - MOV to CR3 while PAE paging is in use;
    /// - MOV to CR0 or CR4 that changes CR0.CD, CR0.NW, CR0.PG, CR4.PAE, CR4.PGE, CR4.PSE or
    ///   CR4.SMEP, if PAE paging is in use after it.
    ///
    /// Returns whether the PDPTEs were loaded. (CR0.PE is not modelled: the tests page without it.)
    pub fn execute(&mut self, mem: &TestMemory, insn: Insn) -> Result<bool, Gp> {
        let mut g = *self;
        let load = match insn {
            Insn::MovCr0(v) => {
                if v & cr0::NW != 0 && v & cr0::CD == 0 {
                    return Err(Gp::Operand);
                }
                let enabling = v & cr0::PG != 0 && self.cr0 & cr0::PG == 0;
                if enabling && self.efer & efer::LME != 0 && self.cr4 & cr4::PAE == 0 {
                    return Err(Gp::Operand);
                }
                g.cr0 = v;
                let changed = (self.cr0 ^ v) & (cr0::CD | cr0::NW | cr0::PG) != 0;
                g.set_lma();
                changed && g.pae_paging()
            }
            Insn::MovCr4(v) => {
                if self.efer & efer::LMA != 0 && v & cr4::PAE == 0 {
                    return Err(Gp::Operand);
                }
                g.cr4 = v;
                let changed = (self.cr4 ^ v) & (cr4::PAE | cr4::PGE | cr4::PSE | cr4::SMEP) != 0;
                changed && g.pae_paging()
            }
            Insn::MovCr3(v) => {
                g.cr3 = if self.efer & efer::LMA != 0 {
                    v
                } else {
                    v & 0xffff_ffff
                };
                g.pae_paging()
            }
            Insn::WrmsrEfer(v) => {
                if self.cr0 & cr0::PG != 0 && (self.efer ^ v) & efer::LME != 0 {
                    return Err(Gp::Operand);
                }
                g.efer = v;
                g.set_lma();
                false
            }
        };
        if load && !g.load_pdptes(mem) {
            return Err(Gp::Pdpte(g));
        }
        *self = g;
        Ok(load)
    }

    fn set_lma(&mut self) {
        if self.cr0 & cr0::PG != 0 && self.efer & efer::LME != 0 {
            self.efer |= efer::LMA;
        } else {
            self.efer &= !efer::LMA;
        }
    }

    /// The guest's own translation of `gva` for `a`, or its #PF error code.
    pub fn walk(&self, mem: &TestMemory, gva: u64, a: Acc) -> Result<RefOk, u32> {
        let w = self.walk_full(mem, gva, a);
        w.result.map(|gpa| RefOk {
            gpa,
            path: w.path.iter().map(|g| (g.addr, g.size)).collect(),
        })
    }

    /// The guest's walk of its tables for `a` at `gva` (SDM 4.3 to 4.7). A gpte outside RAM reads
    /// as all ones.
    pub fn walk_full(&self, mem: &TestMemory, gva: u64, a: Acc) -> RefWalk {
        let mode = self.mode();
        let nxe =
            matches!(mode, PagingMode::Pae | PagingMode::FourLevel) && self.efer & efer::NXE != 0;
        let paging = mode != PagingMode::NonPaging;
        let smep = paging && self.cr4 & cr4::SMEP != 0;
        let smap = paging && self.cr4 & cr4::SMAP != 0;
        let wp = self.cr0 & cr0::WP != 0;
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
        let mut w = RefWalk {
            result: Err(0),
            path: Vec::new(),
            used: 0,
            outside_ram: false,
        };
        let read = |w: &mut RefWalk, addr: u64, size: u8| {
            let value = phys_read(mem, addr, size);
            w.outside_ram |= (addr >> 12) >= mem.ram_pages;
            w.path.push(Gpte { addr, size, value });
            value
        };
        // Not present: no entry of the walk after the previous ones is used.
        let fail = |mut w: RefWalk, code: u32, used: usize| {
            w.result = Err(code);
            w.used = used;
            w
        };
        let m = self.maxphyaddr;
        let xd_rsvd = if nxe { 0 } else { 1u64 << 63 };
        let (mut user, mut writable, mut xd) = (true, true, false);
        let gpa;
        match mode {
            PagingMode::NonPaging => {
                w.result = Ok(gva & 0xffff_ffff);
                return w;
            }
            PagingMode::TwoLevel => {
                let gva = gva & 0xffff_ffff;
                let pde = read(&mut w, (self.cr3 & 0xffff_f000) + (gva >> 22) * 4, 4);
                if pde & 1 == 0 {
                    return fail(w, ec, 0);
                }
                user &= pde & 4 != 0;
                writable &= pde & 2 != 0;
                if pde & 0x80 != 0 && self.cr4 & cr4::PSE != 0 {
                    // 4 MiB page: bits 20:13 hold physical bits 39:32 (those at or above
                    // MAXPHYADDR reserved), bit 21 is reserved.
                    let top = m.min(40);
                    if pde & rsvd_range(13 + top - 32, 21) != 0 {
                        return fail(w, ec | 9, 0);
                    }
                    gpa = (pde & 0xffc0_0000) | (((pde >> 13) & 0xff) << 32) | (gva & 0x3f_ffff);
                } else {
                    let pte = read(&mut w, (pde & 0xffff_f000) + ((gva >> 12) & 0x3ff) * 4, 4);
                    if pte & 1 == 0 {
                        return fail(w, ec, 1);
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
                        return fail(w, ec, 0);
                    }
                    (pdpte & ADDR, 2u32, gva, rsvd_range(m, 62))
                } else {
                    (self.cr3 & ADDR, 4u32, gva, rsvd_range(m, 51))
                };
                loop {
                    let used = w.path.len();
                    let e = read(
                        &mut w,
                        table + ((gva >> (12 + 9 * (level - 1))) & 0x1ff) * 8,
                        8,
                    );
                    if e & 1 == 0 {
                        return fail(w, ec, used);
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
                        return fail(w, ec | 9, used);
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
                        gpa = (e & ADDR & !mask) | (gva & mask);
                        break;
                    }
                    table = e & ADDR;
                    level -= 1;
                }
            }
        }
        // SDM 4.6.1. SMAP: a supervisor data access to a user page faults unless it is explicit
        // with EFLAGS.AC = 1 (at CPL < 3). WP: a supervisor write to a read-only page faults only
        // with CR0.WP = 1 (a supervisor write that SMAP lets through is then checked like any).
        let allowed = if a.user {
            user && (!a.write || writable) && (!a.fetch || !xd)
        } else if a.fetch {
            !(xd || (smep && user))
        } else if smap && user && !a.ac {
            false
        } else {
            !a.write || writable || !wp
        };
        let n = w.path.len();
        if allowed {
            w.result = Ok(gpa);
            w.used = n;
            w
        } else {
            fail(w, ec | 1, n)
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

/// Checks that the accessed bits (and for a write the leaf's dirty bit) are set on a path: what
/// a translation the hardware uses without a walk of the guest's tables requires.
pub fn assert_ad(mem: &TestMemory, ok: &RefOk, write: bool) {
    for (i, &(a, size)) in ok.path.iter().enumerate() {
        let e = phys_read(mem, a, size);
        assert!(e & 0x20 != 0, "accessed bit clear in gpte {e:#x} at {a:#x}");
        if write && i + 1 == ok.path.len() {
            assert!(
                e & 0x40 != 0,
                "dirty bit clear in leaf gpte {e:#x} at {a:#x}"
            );
        }
    }
}

/// Checks, exactly, what a call that handled a fault for `a` changed in guest memory, from the
/// write log `log` of that call and the oracle's walk `w` taken before it (SDM 4.8):
///
/// - a walk that translates: the accessed bit is set in every gpte it used and the dirty bit in
///   the leaf if and only if `a` writes (already set bits stay set);
/// - a walk that faults: nothing but, perhaps, accessed bits of the entries it used; never a
///   dirty bit;
/// - no other byte of guest memory changed.
pub fn assert_walk_updates(mem: &TestMemory, log: &[(u64, Vec<u8>)], w: &RefWalk, a: Acc) {
    const A: u64 = 0x20;
    const D: u64 = 0x40;
    let ok = w.result.is_ok();
    let leaf = if ok {
        w.path.len().checked_sub(1)
    } else {
        None
    };
    // Bits each gpte of the walk may change in.
    let allowed = |i: usize| -> u64 {
        let mut m = if i < w.used { A } else { 0 };
        if a.write && Some(i) == leaf {
            m |= D;
        }
        m
    };
    // The original value of every byte written.
    let mut orig: FastMap<u64, u8> = FastMap::default();
    for (gpa, old) in log {
        for (i, &b) in old.iter().enumerate() {
            orig.entry(gpa + i as u64).or_insert(b);
        }
    }
    for (&addr, &before) in &orig {
        let now = mem.byte(addr);
        if now == before {
            continue;
        }
        let mut may = 0u8;
        for (i, g) in w.path.iter().enumerate() {
            if (g.addr..g.addr + u64::from(g.size)).contains(&addr) {
                may |= (allowed(i) >> (8 * (addr - g.addr))) as u8;
            }
        }
        assert_eq!(
            (before ^ now) & !may,
            0,
            "{a:?}: the walk changed guest byte {addr:#x} from {before:#x} to {now:#x} \
             (walk {:?}, gptes {:x?})",
            w.result,
            w.path
        );
    }
    if ok {
        for (i, g) in w.path.iter().enumerate() {
            let now = phys_read(mem, g.addr, g.size);
            if (g.addr >> 12) < mem.ram_pages {
                assert_ne!(now & A, 0, "{a:?}: accessed bit not set in {g:x?}");
                if a.write && Some(i) == leaf {
                    assert_ne!(now & D, 0, "{a:?}: dirty bit not set in leaf {g:x?}");
                }
            }
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
