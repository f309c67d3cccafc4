//! Unit tests: prev_roots rotation and eviction, free_roots masks, PAE root sets, the per-vCPU
//! root page, generations, pool pressure, and exact walker results.

mod common;

use common::*;
use mmu_service::roots::{root_previous, INVALID_PAGE, ROOTS_ALL, ROOT_CURRENT};
use mmu_service::walker::{walk, AccessKind, WalkOutcome};
use mmu_service::{CpuRole, Error, FaultOutcome, MmuConfig, PagingMode, ShadowPagePool, Vcpu};

const RAM: u64 = 1 << 16;

fn guest64(cr3_gfn: u64) -> Guest {
    Guest {
        cr0: CR0_PG | CR0_WP,
        cr3: cr3_gfn << 12,
        cr4: CR4_PAE,
        efer: EFER_LME | EFER_LMA | EFER_NXE,
        pdptes: [0; 4],
        maxphyaddr: 46,
    }
}

fn guest_pae(cr3: u64) -> Guest {
    Guest {
        cr0: CR0_PG | CR0_WP,
        cr3,
        cr4: CR4_PAE,
        efer: EFER_NXE,
        pdptes: [0; 4],
        maxphyaddr: 46,
    }
}

/// Address space `k` (0..16) of a 64-bit guest: PML4 at 0x100+k mapping gva 0..2 MiB via a PDPT
/// at 0x200+k, a PD at 0x300+k and a PT at 0x400+k onto data pages 0x1000+..
fn build_space64(mem: &mut TestMemory, k: u64) {
    let (pml4, pdpt, pd, pt) = (0x100 + k, 0x200 + k, 0x300 + k, 0x400 + k);
    mem.w64(pml4 << 12, (pdpt << 12) | 7);
    mem.w64(pdpt << 12, (pd << 12) | 7);
    mem.w64(pd << 12, (pt << 12) | 7);
    for i in 0..16 {
        mem.w64((pt << 12) + i * 8, ((0x1000 + k * 16 + i) << 12) | 7);
    }
}

/// PAE address space `k`: a PDPT at gfn 0x500, offset 32*k, four PDs 0x600+4k+i each mapping
/// 2 MiB through PT 0x700+4k+i.
fn build_space_pae(mem: &mut TestMemory, k: u64) -> u64 {
    let pdpt = (0x500 << 12) + 32 * k;
    for i in 0..4 {
        let pd = 0x600 + 4 * k + i;
        let pt = 0x700 + 4 * k + i;
        mem.w64(pdpt + 8 * i, (pd << 12) | 1);
        mem.w64(pd << 12, (pt << 12) | 7);
        for j in 0..16 {
            mem.w64(
                (pt << 12) + j * 8,
                ((0x2000 + 64 * k + 16 * i + j) << 12) | 7,
            );
        }
    }
    pdpt
}

fn mmu_with(pool_low: usize, pool_high: usize, prev: usize) -> TestMmu {
    let mut mem = TestMemory::new(RAM);
    for k in 0..16 {
        build_space64(&mut mem, k);
    }
    for k in 0..8 {
        build_space_pae(&mut mem, k);
    }
    let config = MmuConfig {
        prev_roots: prev,
        ..MmuConfig::default()
    };
    TestMmu::new(mem, TestPool::new(pool_low, pool_high), config).expect("mmu")
}

fn pgds(v: &Vcpu) -> Vec<u64> {
    v.prev_roots()
        .iter()
        .map(|r| if r.is_valid() { r.pgd >> 12 } else { 0 })
        .collect()
}

/// Touches `n` pages of the current address space through the hardware model, handling faults.
fn touch(mmu: &mut TestMmu, vcpu: &mut Vcpu, base: u64, n: u64) -> u64 {
    let mut faults = 0;
    let a = Acc {
        write: false,
        fetch: false,
        user: true,
    };
    for i in 0..n {
        let gva = base + (i << 12);
        loop {
            match hw_translate(mmu, vcpu, gva, a) {
                Ok(_) => break,
                Err(ec) => {
                    faults += 1;
                    assert_eq!(
                        mmu.handle_page_fault(vcpu, gva, ec),
                        Ok(FaultOutcome::Retry)
                    );
                }
            }
        }
    }
    faults
}

#[test]
fn prev_roots_rotation_order_and_eviction() {
    let mut mmu = mmu_with(4, 64, 4);
    let mut g = guest64(0x100);
    let mut v = mmu.create_vcpu(&g).unwrap();
    for k in 0..5 {
        g.cr3 = (0x100 + k) << 12;
        mmu.load_cr3(&mut v, &g).unwrap();
    }
    // Most recent first.
    assert_eq!(v.root().pgd >> 12, 0x104);
    assert_eq!(pgds(&v), vec![0x103, 0x102, 0x101, 0x100]);
    assert_eq!(mmu.stats().prev_roots_misses[3], 5);
    // A hit on prev_roots[1] (0x102): KVM's swap-rotate.
    g.cr3 = 0x102 << 12;
    let before = mmu.stats();
    mmu.load_cr3(&mut v, &g).unwrap();
    assert_eq!(v.root().pgd >> 12, 0x102);
    assert_eq!(pgds(&v), vec![0x104, 0x103, 0x101, 0x100]);
    assert_eq!(
        mmu.stats().prev_roots_hits[3],
        before.prev_roots_hits[3] + 1
    );
    assert_eq!(mmu.stats().roots_built, before.roots_built);
    // A miss evicts the oldest (0x100) and keeps the current one as prev_roots[0].
    let old_root_sp = v.prev_roots()[3].shadow_page(0).unwrap();
    g.cr3 = 0x105 << 12;
    mmu.load_cr3(&mut v, &g).unwrap();
    assert_eq!(v.root().pgd >> 12, 0x105);
    assert_eq!(pgds(&v), vec![0x102, 0x104, 0x103, 0x101]);
    // The evicted root page was freed (zapped): it no longer shadows 0x100.
    let sp = mmu.shadow_page(old_root_sp).unwrap();
    assert!(sp.gfn != 0x100 || sp.state != mmu_service::shadow_page::SpState::Active);
    assert_eq!(mmu.write_track_count(0x100), 0);
    // Reloading the same CR3 is a hit on the current root.
    mmu.load_cr3(&mut v, &g).unwrap();
    assert_eq!(pgds(&v), vec![0x102, 0x104, 0x103, 0x101]);
}

#[test]
fn prev_roots_count_is_configurable() {
    for n in [0usize, 1, 3, 7] {
        let mut mmu = mmu_with(4, 64, n);
        let mut g = guest64(0x100);
        let mut v = mmu.create_vcpu(&g).unwrap();
        assert_eq!(v.prev_roots().len(), n);
        // Cycle through n + 1 spaces twice: the second round hits every time.
        for _ in 0..2 {
            for k in 0..=n as u64 {
                g.cr3 = (0x100 + k) << 12;
                mmu.load_cr3(&mut v, &g).unwrap();
            }
        }
        let s = mmu.stats();
        assert_eq!(s.prev_roots_misses[3], n as u64 + 1, "n = {n}");
        assert_eq!(s.prev_roots_hits[3], n as u64 + 1, "n = {n}");
        // One more space than fits: round-robin never hits.
        g.cr3 = 0x10f << 12;
        mmu.load_cr3(&mut v, &g).unwrap();
        g.cr3 = 0x100 << 12;
        mmu.load_cr3(&mut v, &g).unwrap();
        assert_eq!(mmu.stats().prev_roots_misses[3], n as u64 + 3, "n = {n}");
    }
}

#[test]
fn free_roots_masks() {
    let mut mmu = mmu_with(4, 64, 4);
    let mut g = guest64(0x100);
    let mut v = mmu.create_vcpu(&g).unwrap();
    let base_used = mmu.stats().pool_used;
    for k in 0..5 {
        g.cr3 = (0x100 + k) << 12;
        mmu.load_cr3(&mut v, &g).unwrap();
    }
    assert_eq!(mmu.stats().pool_used, base_used + 5);
    mmu.free_roots(&mut v, root_previous(1));
    assert_eq!(pgds(&v), vec![0x103, 0, 0x101, 0x100]);
    assert!(v.root().is_valid());
    assert_eq!(mmu.stats().pool_used, base_used + 4);
    mmu.free_roots(&mut v, ROOT_CURRENT);
    assert!(!v.root().is_valid());
    assert_eq!(v.shadow_cr3(), INVALID_PAGE);
    assert_eq!(pgds(&v), vec![0x103, 0, 0x101, 0x100]);
    mmu.free_roots(&mut v, root_previous(0) | root_previous(3));
    assert_eq!(pgds(&v), vec![0, 0, 0x101, 0]);
    mmu.free_roots(&mut v, ROOTS_ALL);
    assert_eq!(pgds(&v), vec![0, 0, 0, 0]);
    assert_eq!(mmu.stats().pool_used, base_used);
    // The next fault rebuilds the root.
    assert_eq!(touch(&mut mmu, &mut v, 0, 1), 1);
    assert!(v.root().is_valid());
}

#[test]
fn pae_root_sets_hit_and_miss() {
    let mut mmu = mmu_with(4, 64, 4);
    let pdpt_a = 0x500 << 12;
    let pdpt_b = (0x500 << 12) + 32;
    let mut g = guest_pae(pdpt_a);
    let mut v = mmu.create_vcpu(&g).unwrap();
    assert!(v.has_per_vcpu_root_page());
    mmu.load_cr3(&mut v, &g).unwrap();
    touch(&mut mmu, &mut v, 0, 4);
    let set_a: Vec<_> = (0..4).map(|i| v.root().shadow_page(i).unwrap()).collect();
    g.cr3 = pdpt_b;
    mmu.load_cr3(&mut v, &g).unwrap();
    g.cr3 = pdpt_a;
    mmu.load_cr3(&mut v, &g).unwrap();
    let s = mmu.stats();
    assert_eq!((s.prev_roots_hits[2], s.prev_roots_misses[2]), (1, 2));
    // The hit rewrote the four entries of the PAE root page with set A's pages.
    let pae = v.shadow_cr3();
    assert_eq!(pae, v.pae_root_hpa());
    for (i, &sp) in set_a.iter().enumerate() {
        assert_eq!(v.root().shadow_page(i), Some(sp));
        assert_eq!(mmu.pool().entry_at(pae, i), mmu.sp_hpa(sp) | 1);
    }
    // Nothing to rebuild: the pages touched before are still mapped.
    assert_eq!(touch(&mut mmu, &mut v, 0, 4), 0);
    // Change a PDPTE of A in memory: the next load of A re-reads it and misses.
    mmu.mem_mut().w64(pdpt_a + 8, (0x6ff << 12) | 1);
    g.cr3 = pdpt_b;
    mmu.load_cr3(&mut v, &g).unwrap();
    g.cr3 = pdpt_a;
    mmu.load_cr3(&mut v, &g).unwrap();
    let s = mmu.stats();
    assert_eq!((s.prev_roots_hits[2], s.prev_roots_misses[2]), (2, 3));
    assert_eq!(v.pdptes()[1], (0x6ff << 12) | 1);
    assert_eq!(
        mmu.shadow_page(v.root().shadow_page(1).unwrap())
            .unwrap()
            .gfn,
        0x6ff
    );
    // A PDPTE with reserved bits is a #GP and changes nothing.
    mmu.mem_mut().w64(pdpt_b + 16, (0x601 << 12) | 3);
    let before = v.root().pgd;
    g.cr3 = pdpt_b;
    assert_eq!(mmu.load_cr3(&mut v, &g), Err(Error::InvalidPdpte));
    assert_eq!(v.root().pgd, before);
    assert_eq!(v.cr3(), pdpt_a);
}

#[test]
fn pae_and_64bit_hit_rates_are_equal() {
    let mut mmu = mmu_with(4, 128, 4);
    let mut g = guest64(0x100);
    let mut v64 = mmu.create_vcpu(&g).unwrap();
    let mut p = guest_pae(0x500 << 12);
    let mut vp = mmu.create_vcpu(&p).unwrap();
    for round in 0..10u64 {
        for k in 0..4 {
            g.cr3 = (0x100 + k) << 12;
            mmu.load_cr3(&mut v64, &g).unwrap();
            p.cr3 = (0x500 << 12) + 32 * k;
            mmu.load_cr3(&mut vp, &p).unwrap();
            let _ = round;
        }
    }
    let s = mmu.stats();
    assert_eq!(
        s.hit_rate(PagingMode::Pae),
        s.hit_rate(PagingMode::FourLevel)
    );
    assert_eq!(s.prev_roots_hits[2], 36);
}

#[test]
fn two_level_guest_uses_quadrants_under_the_pae_root() {
    let mut mem = TestMemory::new(RAM);
    // 32-bit PD at 0x800: PDE 0 and PDE 768 (gva 0xc000_0000) -> PT 0x801 mapping 0x900..
    mem.w32(0x800 << 12, (0x801 << 12) | 7);
    mem.w32((0x800 << 12) + 768 * 4, (0x801 << 12) | 7);
    for i in 0..1024u64 {
        mem.w32((0x801 << 12) + i * 4, (((0x900 + i) << 12) | 7) as u32);
    }
    let mut mmu = TestMmu::new(mem, TestPool::new(2, 32), MmuConfig::default()).unwrap();
    let g = Guest {
        cr0: CR0_PG | CR0_WP,
        cr3: 0x800 << 12,
        cr4: 0,
        efer: 0,
        pdptes: [0; 4],
        maxphyaddr: 46,
    };
    let mut v = mmu.create_vcpu(&g).unwrap();
    mmu.load_cr3(&mut v, &g).unwrap();
    // Four level-2 pages for the one guest PD, quadrants 0..3.
    for i in 0..4 {
        let sp = mmu.shadow_page(v.root().shadow_page(i).unwrap()).unwrap();
        assert_eq!(
            (sp.gfn, sp.role.quadrant, sp.role.level),
            (0x800, i as u8, 2)
        );
    }
    assert_eq!(mmu.write_track_count(0x800), 4);
    touch(&mut mmu, &mut v, 0x0, 1);
    touch(&mut mmu, &mut v, 0x20_0000, 1); // second half of the guest PT: quadrant 1
    touch(&mut mmu, &mut v, 0xc000_0000, 1); // same PT via PDE 768: same level-1 page
    let a = Acc {
        write: false,
        fetch: false,
        user: true,
    };
    assert_eq!(
        hw_translate(&mmu, &v, 0x20_0000, a),
        Ok(RAM_HPA + (0xb00 << 12))
    );
    assert_eq!(
        hw_translate(&mmu, &v, 0xc000_0000, a),
        Ok(RAM_HPA + (0x900 << 12))
    );
    assert_eq!(mmu.write_track_count(0x801), 2); // quadrants 0 and 1 of the PT
}

#[test]
fn pae_root_is_below_4g() {
    let mut mmu = mmu_with(2, 32, 4);
    let g = guest_pae(0x500 << 12);
    let mut v = mmu.create_vcpu(&g).unwrap();
    assert!(v.pae_root_hpa() < 1 << 32);
    mmu.load_cr3(&mut v, &g).unwrap();
    assert_eq!(v.shadow_cr3(), v.pae_root_hpa());
    // Shadow pages prefer frames above 4 GiB.
    for sp in v.root().shadow_pages() {
        assert!(mmu.sp_hpa(sp) >= 1 << 32);
    }
    let mut v2 = mmu.create_vcpu(&g).unwrap();
    assert!(v2.pae_root_hpa() < 1 << 32);
    assert_ne!(v2.pae_root_hpa(), v.pae_root_hpa());
    mmu.load_cr3(&mut v2, &g).unwrap();
    // Both vCPUs share the level-2 pages, each through its own root page.
    assert_eq!(v.root().shadow_page(0), v2.root().shadow_page(0));
    // No frame below 4 GiB left: a third vCPU cannot get a root page.
    assert_eq!(mmu.create_vcpu(&g).err(), Some(Error::NoFrameBelow4G));
    mmu.destroy_vcpu(v2);
    assert!(mmu.create_vcpu(&g).is_ok());
    // A pool without low frames at all.
    let mut mmu = mmu_with(0, 32, 4);
    assert_eq!(mmu.create_vcpu(&g).err(), Some(Error::NoFrameBelow4G));
}

#[test]
fn generations_make_roots_obsolete() {
    let mut mmu = mmu_with(4, 64, 4);
    let mut g = guest64(0x100);
    let mut v = mmu.create_vcpu(&g).unwrap();
    mmu.load_cr3(&mut v, &g).unwrap();
    touch(&mut mmu, &mut v, 0, 8);
    g.cr3 = 0x101 << 12;
    mmu.load_cr3(&mut v, &g).unwrap();
    touch(&mut mmu, &mut v, 0, 8);
    let old_root = v.shadow_cr3();
    let used = mmu.stats().pool_used;
    mmu.invalidate_all();
    // O(1): nothing was freed or rebuilt yet, and the obsolete root still translates.
    assert_eq!(mmu.stats().pool_used, used);
    assert_eq!(v.shadow_cr3(), old_root);
    let a = Acc {
        write: false,
        fetch: false,
        user: true,
    };
    assert!(hw_translate(&mmu, &v, 0x1000, a).is_ok());
    let (pgd, role, pdptes) = (v.root().pgd, v.root().role, v.pdptes());
    assert!(!mmu.is_root_usable(v.root(), pgd, &role, &pdptes));
    assert!(mmu.is_obsolete(v.root().shadow_page(0).unwrap()));
    // The next exit rebuilds the root; every page faults in again.
    let new_root = mmu.reload(&mut v).unwrap();
    assert_eq!(new_root, v.shadow_cr3());
    assert!(!mmu.is_obsolete(v.root().shadow_page(0).unwrap()));
    assert_eq!(touch(&mut mmu, &mut v, 0, 8), 8);
    // The obsolete previous root is not used: a miss.
    let misses = mmu.stats().prev_roots_misses[3];
    g.cr3 = 0x100 << 12;
    mmu.load_cr3(&mut v, &g).unwrap();
    assert_eq!(mmu.stats().prev_roots_misses[3], misses + 1);
}

#[test]
fn pool_pressure_zaps_oldest_instead_of_failing() {
    // 16 frames: far fewer than 16 address spaces of 4 pages each.
    let mut mmu = mmu_with(2, 14, 4);
    let mut g = guest64(0x100);
    let mut v = mmu.create_vcpu(&g).unwrap();
    for round in 0..3 {
        for k in 0..16 {
            g.cr3 = (0x100 + k) << 12;
            mmu.load_cr3(&mut v, &g).unwrap();
            touch(&mut mmu, &mut v, 0, 4);
            assert!(mmu.stats().pool_used <= 16, "round {round}");
        }
    }
    let s = mmu.stats();
    assert!(s.reclaim_zaps > 0);
    assert!(s.pool_free <= 16);
    // Everything still translates right.
    let a = Acc {
        write: false,
        fetch: false,
        user: true,
    };
    assert_eq!(
        hw_translate(&mmu, &v, 0x3000, a),
        Ok(RAM_HPA + ((0x1000 + 15 * 16 + 3) << 12))
    );
}

/// Two 64-bit spaces whose page tables 0x400 (space 0) and 0x401 (space 1) both map gfn 0x400
/// at gva 0x10000: in space 0 the table maps itself. Both spaces have touched pages 0 and 1.
fn self_mapped_table() -> (TestMmu, Vcpu, Guest) {
    let mut mmu = mmu_with(4, 64, 4);
    mmu.mem_mut().w64((0x400 << 12) + 16 * 8, (0x400 << 12) | 7);
    mmu.mem_mut().w64((0x401 << 12) + 16 * 8, (0x400 << 12) | 7);
    let mut g = guest64(0x100);
    let mut v = mmu.create_vcpu(&g).unwrap();
    g.cr3 = 0x101 << 12;
    mmu.load_cr3(&mut v, &g).unwrap();
    touch(&mut mmu, &mut v, 0, 2);
    g.cr3 = 0x100 << 12;
    mmu.load_cr3(&mut v, &g).unwrap();
    touch(&mut mmu, &mut v, 0, 2);
    assert_eq!(mmu.write_track_count(0x400), 1);
    (mmu, v, g)
}

const USER_WRITE: Acc = Acc {
    write: true,
    fetch: false,
    user: true,
};

#[test]
fn a_write_to_a_shadowed_page_table_is_emulated_and_drops_only_the_written_spte() {
    let (mut mmu, mut v, mut g) = self_mapped_table();
    // In space 0 the PT maps itself; from space 1 the same page is data, but still a shadowed
    // table: both writes are emulated, and the page stays write-protected.
    for cr3 in [0x100, 0x101] {
        g.cr3 = cr3 << 12;
        mmu.load_cr3(&mut v, &g).unwrap();
        let ec = hw_translate(&mmu, &v, 0x10000, USER_WRITE).unwrap_err();
        assert_eq!(
            mmu.handle_page_fault(&mut v, 0x10000, ec),
            Ok(FaultOutcome::EmulateWrite { gpa: 0x400 << 12 })
        );
    }
    // The write changes gpte 0 of space 0's table (gva 0 now maps gfn 0x1234).
    let dropped = mmu.stats().write_sptes_dropped;
    mmu.emulated_write(&mut v, 0x400 << 12, &((0x1234 << 12) | 7u64).to_le_bytes())
        .unwrap();
    assert_eq!(mmu.stats().write_sptes_dropped, dropped + 1);
    assert_eq!(mmu.write_track_count(0x400), 1, "still shadowed");
    // Back in space 0: page 1's spte survived, page 0's is rebuilt from the new gpte with one
    // fault (zapping the whole table cost a fault per page and per table level).
    g.cr3 = 0x100 << 12;
    mmu.load_cr3(&mut v, &g).unwrap();
    assert!(hw_leaf(&mmu, &v, 0x1000).is_some());
    assert!(hw_leaf(&mmu, &v, 0).is_none());
    assert_eq!(touch(&mut mmu, &mut v, 0, 2), 1);
    let read = Acc {
        write: false,
        fetch: false,
        user: true,
    };
    assert_eq!(
        hw_translate(&mmu, &v, 0, read),
        Ok(RAM_HPA + (0x1234 << 12))
    );
}

#[test]
fn a_page_table_written_again_and_again_stops_being_shadowed() {
    let (mut mmu, mut v, mut g) = self_mapped_table();
    g.cr3 = 0x101 << 12;
    mmu.load_cr3(&mut v, &g).unwrap();
    let zaps = mmu.stats().write_zaps;
    // Writes with no fault walking through the table in between: flooding.
    for i in 0..3u64 {
        mmu.emulated_write(&mut v, (0x400 << 12) + 8 * (100 + i), &[0; 8])
            .unwrap();
    }
    assert_eq!(mmu.stats().write_zaps, zaps + 1);
    assert_eq!(mmu.write_track_count(0x400), 0);
    // The page is plain data now: space 1 writes it on the hardware.
    touch(&mut mmu, &mut v, 0x10000, 1);
    let ec = hw_translate(&mmu, &v, 0x10000, USER_WRITE).unwrap_err();
    assert_eq!(
        mmu.handle_page_fault(&mut v, 0x10000, ec),
        Ok(FaultOutcome::Retry)
    );
    assert_eq!(
        hw_translate(&mmu, &v, 0x10000, USER_WRITE),
        Ok(RAM_HPA + (0x400 << 12))
    );
    // A misaligned write (across two gptes) zaps at once.
    let (mut mmu, mut v, _) = self_mapped_table();
    let zaps = mmu.stats().write_zaps;
    mmu.emulated_write(&mut v, (0x400 << 12) + 4, &[0; 8])
        .unwrap();
    assert_eq!(mmu.stats().write_zaps, zaps + 1);
    assert_eq!(mmu.write_track_count(0x400), 0);
}

#[test]
fn a_write_that_cannot_be_emulated_unprotects_unless_the_table_is_on_its_walk() {
    let (mut mmu, mut v, mut g) = self_mapped_table();
    // Space 0: the table is on the write's own translation: nothing changes.
    assert_eq!(mmu.unprotect_for_retry(&mut v, 0x10000), Ok(false));
    assert_eq!(mmu.write_track_count(0x400), 1);
    // Space 1: unprotected, and the write then goes through on the hardware.
    g.cr3 = 0x101 << 12;
    mmu.load_cr3(&mut v, &g).unwrap();
    assert_eq!(mmu.unprotect_for_retry(&mut v, 0x10000), Ok(true));
    assert_eq!(mmu.write_track_count(0x400), 0);
    touch(&mut mmu, &mut v, 0x10000, 1);
    let ec = hw_translate(&mmu, &v, 0x10000, USER_WRITE).unwrap_err();
    assert_eq!(
        mmu.handle_page_fault(&mut v, 0x10000, ec),
        Ok(FaultOutcome::Retry)
    );
}

#[test]
fn invlpg_zaps_only_that_gva() {
    let mut mmu = mmu_with(4, 64, 4);
    let g = guest64(0x100);
    let mut v = mmu.create_vcpu(&g).unwrap();
    mmu.load_cr3(&mut v, &g).unwrap();
    touch(&mut mmu, &mut v, 0, 4);
    mmu.invlpg(&mut v, 0x2000).unwrap();
    assert!(hw_leaf(&mmu, &v, 0x2000).is_none());
    assert!(hw_leaf(&mmu, &v, 0x1000).is_some());
    assert!(hw_leaf(&mmu, &v, 0x3000).is_some());
    assert_eq!(touch(&mut mmu, &mut v, 0, 4), 1);
}

fn cpu(mode: PagingMode, wp: bool, nxe: bool, smep: bool, smap: bool, pse: bool) -> CpuRole {
    CpuRole {
        mode,
        wp,
        nxe,
        smep,
        smap,
        pse,
        maxphyaddr: 40,
    }
}

fn fault_of(o: WalkOutcome) -> Option<(u32, u64)> {
    match o {
        WalkOutcome::Fault(pf) => Some((pf.error_code, pf.address)),
        WalkOutcome::Ok(_) => None,
    }
}

#[test]
fn walker_error_codes() {
    let mut mem = TestMemory::new(RAM);
    // 4-level: PML4 0x10 -> PDPT 0x11 -> PD 0x12 -> PT 0x13; PT[0] user RO, PT[1] supervisor NX,
    // PT[2] not present, PT[3] reserved bit 45 (MAXPHYADDR 40).
    mem.w64(0x10 << 12, (0x11 << 12) | 7);
    mem.w64(0x11 << 12, (0x12 << 12) | 7);
    mem.w64(0x12 << 12, (0x13 << 12) | 7);
    mem.w64(0x13 << 12, (0x20 << 12) | 5);
    mem.w64((0x13 << 12) + 8, (0x21 << 12) | 3 | (1 << 63));
    mem.w64((0x13 << 12) + 24, (0x22 << 12) | 7 | (1 << 45));
    let c = cpu(PagingMode::FourLevel, true, true, true, true, false);
    let acc = |write, user, fetch| AccessKind {
        write,
        user,
        fetch,
        smap_allowed: false,
    };
    let f = |a| fault_of(walk(&c, 0x10 << 12, &[0; 4], &mem, 0, a).unwrap());
    assert_eq!(f(acc(false, true, false)), None);
    assert_eq!(f(acc(true, true, false)), Some((0x7, 0)));
    assert_eq!(f(acc(false, false, false)), Some((0x1, 0))); // SMAP
    assert_eq!(f(acc(false, false, true)), Some((0x11, 0))); // SMEP
    let f = |gva, a| fault_of(walk(&c, 0x10 << 12, &[0; 4], &mem, gva, a).unwrap());
    assert_eq!(f(0x1000, acc(false, false, true)), Some((0x11, 0x1000))); // NX
    assert_eq!(f(0x1000, acc(true, false, false)), None);
    assert_eq!(f(0x2000, acc(true, true, false)), Some((0x6, 0x2000))); // not present
    assert_eq!(f(0x3000, acc(false, false, false)), Some((0x9, 0x3000))); // reserved
                                                                          // NX without EFER.NXE: bit 63 is reserved.
    let c2 = cpu(PagingMode::FourLevel, true, false, false, false, false);
    let r = fault_of(
        walk(
            &c2,
            0x10 << 12,
            &[0; 4],
            &mem,
            0x1000,
            acc(false, false, false),
        )
        .unwrap(),
    );
    assert_eq!(r, Some((0x9, 0x1000)));
    // 2-level: the I/D bit needs SMEP (no NX in 32-bit paging).
    mem.w32(0x30 << 12, (0x31 << 12) | 7);
    mem.w32(0x31 << 12, (0x40 << 12) | 5);
    let c3 = cpu(PagingMode::TwoLevel, false, false, false, false, false);
    let r = fault_of(
        walk(
            &c3,
            0x30 << 12,
            &[0; 4],
            &mem,
            0x1000,
            acc(false, true, true),
        )
        .unwrap(),
    );
    assert_eq!(r, Some((0x4, 0x1000)));
    let c4 = cpu(PagingMode::TwoLevel, false, false, true, false, false);
    let r = fault_of(
        walk(
            &c4,
            0x30 << 12,
            &[0; 4],
            &mem,
            0x1000,
            acc(false, true, true),
        )
        .unwrap(),
    );
    assert_eq!(r, Some((0x14, 0x1000)));
    // WP = 0: a supervisor write to a read-only page is allowed.
    assert_eq!(
        fault_of(walk(&c3, 0x30 << 12, &[0; 4], &mem, 0, acc(true, false, false)).unwrap()),
        None
    );
}

#[test]
fn walker_huge_pages_and_accessed_dirty() {
    let mut mem = TestMemory::new(1 << 19); // 2 GiB: the 1 GiB page at 1 GiB is RAM
                                            // 2-level PSE-36 4 MiB page: PDE bits 20:13 = physical 39:32.
    mem.w32(0x30 << 12, 0x0040_0000 | (1 << 13) | 0x87);
    let c = cpu(PagingMode::TwoLevel, true, false, false, false, true);
    let a = AccessKind {
        write: true,
        ..AccessKind::default()
    };
    match walk(&c, 0x30 << 12, &[0; 4], &mem, 0x12_3456, a).unwrap() {
        WalkOutcome::Ok(w) => assert_eq!(w.gpa, (1 << 32) | 0x40_0000 | 0x12_3456),
        o => panic!("{o:?}"),
    }
    // Without PSE the same PDE points at a page table.
    let c = cpu(PagingMode::TwoLevel, true, false, false, false, false);
    match walk(&c, 0x30 << 12, &[0; 4], &mem, 0x12_3456, a).unwrap() {
        WalkOutcome::Ok(w) => assert_eq!(w.level, 1),
        WalkOutcome::Fault(_) => {}
    }
    // 4-level 1 GiB page, then A/D bits through the MMU.
    mem.w64(0x10 << 12, (0x11 << 12) | 7);
    mem.w64(0x11 << 12, (1 << 30) | 0x87);
    let c = cpu(PagingMode::FourLevel, true, true, false, false, false);
    match walk(&c, 0x10 << 12, &[0; 4], &mem, 0x1234_5678, a).unwrap() {
        WalkOutcome::Ok(w) => {
            assert_eq!((w.gpa, w.level), ((1 << 30) | 0x1234_5678, 3));
        }
        o => panic!("{o:?}"),
    }
    let mut mmu = TestMmu::new(mem, TestPool::new(2, 16), MmuConfig::default()).unwrap();
    let g = guest64(0x10);
    let mut v = mmu.create_vcpu(&g).unwrap();
    mmu.load_cr3(&mut v, &g).unwrap();
    let r = Acc {
        write: false,
        fetch: false,
        user: false,
    };
    let ec = hw_translate(&mmu, &v, 0x1234_5000, r).unwrap_err();
    assert_eq!(
        mmu.handle_page_fault(&mut v, 0x1234_5000, ec),
        Ok(FaultOutcome::Retry)
    );
    assert_eq!(mmu.mem().r64(0x10 << 12) & 0x60, 0x20);
    assert_eq!(mmu.mem().r64(0x11 << 12) & 0x60, 0x20);
    // Clean: mapped read-only, so the first write faults and sets D.
    let w = Acc {
        write: true,
        fetch: false,
        user: false,
    };
    let ec = hw_translate(&mmu, &v, 0x1234_5000, w).unwrap_err();
    assert_eq!(ec & 1, 1);
    assert_eq!(
        mmu.handle_page_fault(&mut v, 0x1234_5000, ec),
        Ok(FaultOutcome::Retry)
    );
    assert_eq!(mmu.mem().r64(0x11 << 12) & 0x60, 0x60);
    assert_eq!(
        hw_translate(&mmu, &v, 0x1234_5000, w),
        Ok(RAM_HPA + (1 << 30) + 0x1234_5000)
    );
    // PML4, PDPT, and two pairs of direct pages: the clean (read-only) role and, once dirty,
    // the writable one (KVM's validate_direct_spte relinks rather than upgrading in place).
    assert_eq!(mmu.shadow_page_count(), 6);
    let _ = mmu.pool().frame_count();
}

#[test]
fn an_invalid_current_root_takes_a_cached_one_without_evicting_a_valid_one() {
    // prev_roots 2: spaces A, B, C loaded in turn leave C current, B and A cached.
    let mut mmu = mmu_with(4, 64, 2);
    let mut g = guest64(0x100);
    let mut v = mmu.create_vcpu(&g).unwrap();
    for k in [0x100, 0x101, 0x102] {
        g.cr3 = k << 12;
        mmu.load_cr3(&mut v, &g).unwrap();
    }
    assert_eq!(pgds(&v), vec![0x101, 0x100]);
    // The current root goes (as after a zap of its page); a load of A finds A and keeps B.
    mmu.free_roots(&mut v, mmu_service::roots::ROOT_CURRENT);
    g.cr3 = 0x100 << 12;
    let hits = mmu.stats().prev_roots_hits[3];
    mmu.load_cr3(&mut v, &g).unwrap();
    assert_eq!(mmu.stats().prev_roots_hits[3], hits + 1);
    assert_eq!(v.root().pgd >> 12, 0x100);
    assert!(pgds(&v).contains(&0x101), "B stays cached: {:?}", pgds(&v));
    // A miss with an invalid current root evicts nothing either.
    mmu.free_roots(&mut v, mmu_service::roots::ROOT_CURRENT);
    g.cr3 = 0x103 << 12;
    mmu.load_cr3(&mut v, &g).unwrap();
    assert!(pgds(&v).contains(&0x101), "{:?}", pgds(&v));
}

#[test]
fn an_obsolete_root_is_freed_not_cached() {
    let mut mmu = mmu_with(4, 64, 4);
    let mut g = guest64(0x100);
    let mut v = mmu.create_vcpu(&g).unwrap();
    mmu.load_cr3(&mut v, &g).unwrap();
    mmu.invalidate_all();
    g.cr3 = 0x101 << 12;
    mmu.load_cr3(&mut v, &g).unwrap();
    assert!(
        v.prev_roots().iter().all(|r| !r.is_valid()),
        "the obsolete root was rotated into prev_roots: {:?}",
        pgds(&v)
    );
}

#[test]
fn kvm_policy_never_caches_per_vcpu_roots() {
    let mut mem = TestMemory::new(RAM);
    for k in 0..2 {
        build_space_pae(&mut mem, k);
        build_space64(&mut mem, k);
    }
    let config = MmuConfig {
        cache_pae_roots: false,
        ..MmuConfig::default()
    };
    let mut mmu = TestMmu::new(mem, TestPool::new(4, 64), config).unwrap();
    let (a, b) = (0x500 << 12, (0x500 << 12) + 32);
    let mut g = guest_pae(a);
    let mut v = mmu.create_vcpu(&g).unwrap();
    for cr3 in [a, b, a, b, a] {
        g.cr3 = cr3;
        mmu.load_cr3(&mut v, &g).unwrap();
    }
    let s = mmu.stats();
    assert_eq!((s.prev_roots_hits[2], s.prev_roots_misses[2]), (0, 5));
    // 64-bit roots are still cached under the same policy.
    let mut g = guest64(0x100);
    for k in [0x100, 0x101, 0x100, 0x101] {
        g.cr3 = k << 12;
        mmu.load_cr3(&mut v, &g).unwrap();
    }
    let s = mmu.stats();
    assert_eq!((s.prev_roots_hits[3], s.prev_roots_misses[3]), (2, 2));
}

#[test]
fn pdptes_are_reloaded_when_cr0_cd_or_nw_changes() {
    let mut mmu = mmu_with(4, 64, 4);
    let pdpt = 0x500 << 12;
    let mut g = guest_pae(pdpt);
    let mut v = mmu.create_vcpu(&g).unwrap();
    mmu.load_cr3(&mut v, &g).unwrap();
    let old = v.pdptes()[1];
    mmu.mem_mut().w64(pdpt + 8, (0x6ff << 12) | 1);
    // CR0.WP alone: no reload (SDM 4.4.1 lists CD, NW and PG).
    g.cr0 &= !CR0_WP;
    mmu.set_paging_state(&mut v, &g).unwrap();
    assert_eq!(v.pdptes()[1], old);
    for bit in [1u64 << 30, 1 << 29] {
        mmu.mem_mut().w64(pdpt + 8, (0x6f0 << 12) | bit >> 17 | 1);
        let want = mmu.mem().r64(pdpt + 8);
        g.cr0 ^= bit;
        mmu.set_paging_state(&mut v, &g).unwrap();
        assert_eq!(v.pdptes()[1], want, "CR0 bit {bit:#x}");
    }
}

#[test]
fn smap_lets_explicit_supervisor_accesses_through_with_eflags_ac() {
    // A user page (U=1 all the way) read by the guest kernel with SMAP on.
    let c = cpu(PagingMode::FourLevel, true, true, false, true, false);
    let mut mem = TestMemory::new(RAM);
    build_space64(&mut mem, 0);
    let read = AccessKind::default();
    let fault = walk(&c, 0x100 << 12, &[0; 4], &mem, 0x1000, read).unwrap();
    assert_eq!(fault_of(fault), Some((1, 0x1000)), "AC = 0: SMAP faults");
    let stac = AccessKind {
        smap_allowed: true,
        ..read
    };
    let ok = walk(&c, 0x100 << 12, &[0; 4], &mem, 0x1000, stac).unwrap();
    assert_eq!(fault_of(ok), None, "AC = 1: allowed");
    // The MMU builds the spte instead of injecting a #PF it would inject forever.
    let mut mmu = mmu_with(4, 64, 4);
    let mut g = guest64(0x100);
    g.cr4 |= CR4_SMAP;
    let mut v = mmu.create_vcpu(&g).unwrap();
    mmu.load_cr3(&mut v, &g).unwrap();
    assert_eq!(
        mmu.handle_access_fault(&mut v, 0x1000, stac),
        Ok(FaultOutcome::Retry)
    );
    assert!(matches!(
        mmu.handle_access_fault(&mut v, 0x2000, read),
        Ok(FaultOutcome::InjectPageFault(_))
    ));
}
