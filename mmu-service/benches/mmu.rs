//! Benchmarks: shadow-fault handling, and guest CR3 switches with a prev_roots hit vs a miss,
//! for 64-bit and PAE guests switching among 2-8 address spaces. After criterion's own output a
//! summary table prints the hit rates and the hit/miss cost ratio.

use std::hint::black_box;
use std::time::{Duration, Instant};

use abi::cpu::{cr0, cr4, efer};
use criterion::Criterion;
use mmu_service::{
    FaultOutcome, GuestMemory, MemoryError, Mmu, MmuConfig, PagingMode, PagingRegs, ShadowPagePool,
    Vcpu,
};

const RAM_PAGES: u64 = 4096; // 16 MiB, dense
const RAM_HPA: u64 = 0x80_0000_0000;
const WORKING_SET: u64 = 16;

struct Ram(Vec<u8>);
impl GuestMemory for Ram {
    fn ram_pages(&self) -> u64 {
        RAM_PAGES
    }
    fn gfn_to_hpa(&self, gfn: u64) -> Option<u64> {
        (gfn < RAM_PAGES).then_some(RAM_HPA + (gfn << 12))
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let a = gpa as usize;
        let src = self.0.get(a..a + buf.len()).ok_or(MemoryError { gpa })?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        let a = gpa as usize;
        let dst = self
            .0
            .get_mut(a..a + data.len())
            .ok_or(MemoryError { gpa })?;
        dst.copy_from_slice(data);
        Ok(())
    }
}
impl Ram {
    fn w64(&mut self, gpa: u64, v: u64) {
        self.write(gpa, &v.to_le_bytes()).unwrap();
    }
}

struct Pool {
    frames: Vec<[u64; 512]>,
    low: usize,
}
impl Pool {
    fn hpa_to_frame(&self, hpa: u64) -> usize {
        if hpa < 1 << 32 {
            ((hpa - 0x1000_0000) >> 12) as usize
        } else {
            self.low + ((hpa - 0x2_0000_0000) >> 12) as usize
        }
    }
}
impl ShadowPagePool for Pool {
    fn frame_count(&self) -> usize {
        self.frames.len()
    }
    fn frame_hpa(&self, f: usize) -> u64 {
        if f < self.low {
            0x1000_0000 + ((f as u64) << 12)
        } else {
            0x2_0000_0000 + (((f - self.low) as u64) << 12)
        }
    }
    fn read_entry(&self, f: usize, i: usize) -> u64 {
        self.frames[f][i]
    }
    fn write_entry(&mut self, f: usize, i: usize, v: u64) {
        self.frames[f][i] = v;
    }
    fn zero_frame(&mut self, f: usize) {
        self.frames[f] = [0; 512];
    }
}

type BenchMmu = Mmu<Ram, Pool>;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Long,
    Pae,
}

/// The working set: 16 pages, 4 in each of 4 GiB-apart regions (one PDPTE each under PAE).
fn gva(i: u64) -> u64 {
    ((i % 4) << 30) | ((i / 4) << 12)
}

/// Builds `spaces` address spaces; returns the CR3 of each.
fn build(mode: Mode, spaces: u64) -> (Ram, Vec<u64>) {
    let mut ram = Ram(vec![0; (RAM_PAGES << 12) as usize]);
    let mut next = 0x10u64;
    let mut alloc = || {
        next += 1;
        next
    };
    let mut cr3s = Vec::new();
    for k in 0..spaces {
        let (top, entries) = match mode {
            Mode::Long => {
                let pml4 = alloc();
                let pdpt = alloc();
                ram.w64(pml4 << 12, (pdpt << 12) | 7);
                cr3s.push(pml4 << 12);
                (pdpt << 12, 7u64)
            }
            Mode::Pae => {
                let pdpt = (0x10 << 12) + 32 * k;
                cr3s.push(pdpt);
                (pdpt, 1u64)
            }
        };
        for r in 0..4 {
            let pd = alloc();
            let pt = alloc();
            ram.w64(top + 8 * r, (pd << 12) | entries);
            ram.w64(pd << 12, (pt << 12) | 7);
            for p in 0..4 {
                let data = 0x800 + k * 16 + r * 4 + p;
                ram.w64((pt << 12) + 8 * p, (data << 12) | 0x67);
            }
        }
    }
    (ram, cr3s)
}

fn regs(mode: Mode, cr3: u64) -> PagingRegs {
    match mode {
        Mode::Long => PagingRegs {
            cr0: cr0::PG | cr0::WP,
            cr3,
            cr4: cr4::PAE,
            efer: efer::LME | efer::LMA | efer::NXE,
        },
        Mode::Pae => PagingRegs {
            cr0: cr0::PG | cr0::WP,
            cr3,
            cr4: cr4::PAE,
            efer: efer::NXE,
        },
    }
}

/// Whether the shadow tables map `gva` (the hardware would not fault).
fn mapped(mmu: &BenchMmu, v: &Vcpu, gva: u64) -> bool {
    let pool = mmu.pool();
    let read = |hpa: u64, i: u64| pool.frames[pool.hpa_to_frame(hpa)][i as usize];
    let (mut table, mut level) = if v.has_per_vcpu_root_page() {
        let e = read(v.shadow_cr3(), (gva >> 30) & 3);
        if e & 1 == 0 {
            return false;
        }
        (e & 0x000f_ffff_ffff_f000, 2)
    } else {
        (v.shadow_cr3(), 4)
    };
    loop {
        let e = read(table, (gva >> (12 + 9 * (level - 1))) & 0x1ff);
        if e & 1 == 0 {
            return false;
        }
        if level == 1 {
            return true;
        }
        table = e & 0x000f_ffff_ffff_f000;
        level -= 1;
    }
}

struct Setup {
    mmu: BenchMmu,
    vcpu: Vcpu,
    cr3s: Vec<u64>,
    mode: Mode,
}

fn setup(mode: Mode, spaces: u64, prev_roots: usize, frames: usize) -> Setup {
    let (ram, cr3s) = build(mode, spaces);
    let pool = Pool {
        frames: vec![[0; 512]; frames],
        low: 8,
    };
    let config = MmuConfig {
        prev_roots,
        ..MmuConfig::default()
    };
    let mut mmu = Mmu::new(ram, pool, config).unwrap();
    let mut vcpu = mmu.create_vcpu(&regs(mode, cr3s[0])).unwrap();
    mmu.load_cr3(&mut vcpu, &regs(mode, cr3s[0])).unwrap();
    Setup {
        mmu,
        vcpu,
        cr3s,
        mode,
    }
}

impl Setup {
    /// Loads CR3 of space `k`; returns the time spent in the MMU for the switch and for the
    /// faults the guest then takes to touch its working set again.
    fn switch_and_touch(&mut self, k: usize) -> (Duration, Duration, u32) {
        let r = regs(self.mode, self.cr3s[k]);
        let t = Instant::now();
        self.mmu.load_cr3(&mut self.vcpu, &r).unwrap();
        let switch = t.elapsed();
        let mut faults = Duration::ZERO;
        let mut n = 0;
        for i in 0..WORKING_SET {
            let g = gva(i);
            while !mapped(&self.mmu, &self.vcpu, g) {
                let t = Instant::now();
                let o = self.mmu.handle_page_fault(&mut self.vcpu, g, 4);
                faults += t.elapsed();
                n += 1;
                assert_eq!(o, Ok(FaultOutcome::Retry));
            }
        }
        (switch, faults, n)
    }
}

fn bench_faults(c: &mut Criterion) {
    let mut g = c.benchmark_group("shadow_fault");
    for (name, mode) in [("64bit", Mode::Long), ("pae", Mode::Pae)] {
        let mut s = setup(mode, 1, 4, 256);
        s.switch_and_touch(0);
        g.bench_function(format!("{name}/leaf_fault"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let gv = gva(i % WORKING_SET);
                    s.mmu.invlpg(&mut s.vcpu, gv).unwrap();
                    let t = Instant::now();
                    let o = s.mmu.handle_page_fault(&mut s.vcpu, black_box(gv), 4);
                    total += t.elapsed();
                    assert_eq!(o, Ok(FaultOutcome::Retry));
                }
                total
            })
        });
    }
    g.finish();
}

fn bench_switch(c: &mut Criterion) {
    let mut g = c.benchmark_group("cr3_switch");
    for (name, mode) in [("64bit", Mode::Long), ("pae", Mode::Pae)] {
        for spaces in [2u64, 4, 8] {
            // Hit: prev_roots large enough for every space.
            let mut s = setup(mode, spaces, 8, 1024);
            for k in 0..spaces as usize {
                s.switch_and_touch(k);
            }
            g.bench_function(format!("{name}/{spaces}_spaces/hit"), |b| {
                let mut k = 0;
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        k = (k + 1) % spaces as usize;
                        let (sw, f, _) = s.switch_and_touch(k);
                        total += sw + f;
                    }
                    total
                })
            });
            // Miss, full rebuild: the space's shadow pages are gone (obsolete), so the switch
            // builds a root and every page of the working set faults in again.
            let mut s = setup(mode, spaces, 8, 1024);
            g.bench_function(format!("{name}/{spaces}_spaces/miss_full_rebuild"), |b| {
                let mut k = 0;
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        k = (k + 1) % spaces as usize;
                        s.mmu.invalidate_all();
                        let (sw, f, _) = s.switch_and_touch(k);
                        total += sw + f;
                    }
                    total
                })
            });
        }
    }
    g.finish();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median cost per switch (MMU time: the CR3 load plus the faults that follow).
fn measure(mode: Mode, spaces: u64, prev_roots: usize, full_rebuild: bool) -> (Duration, f64) {
    let mut s = setup(mode, spaces, prev_roots, 1024);
    for k in 0..spaces as usize {
        s.switch_and_touch(k);
    }
    let mut samples = Vec::new();
    for round in 0..2000 {
        let k = round % spaces as usize;
        if full_rebuild {
            s.mmu.invalidate_all();
        }
        let (sw, f, _) = s.switch_and_touch(k);
        samples.push(sw + f);
    }
    let st = s.mmu.stats();
    let m = if mode == Mode::Long {
        PagingMode::FourLevel
    } else {
        PagingMode::Pae
    };
    (median(samples), st.hit_rate(m))
}

/// Hit rate with the default configuration for a pseudo-random switching pattern.
fn random_hit_rate(mode: Mode, spaces: u64) -> f64 {
    let mut s = setup(mode, spaces, MmuConfig::default().prev_roots, 1024);
    let mut x = 0x1234_5678_9abc_def0u64;
    for _ in 0..4000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.switch_and_touch((x % spaces) as usize);
    }
    let st = s.mmu.stats();
    st.hit_rate(if mode == Mode::Long {
        PagingMode::FourLevel
    } else {
        PagingMode::Pae
    })
}

fn summary() {
    println!();
    println!(
        "mmu-service CR3 switch summary (MMU time per switch = CR3 load + the faults to touch"
    );
    println!("the {WORKING_SET}-page working set again; median of 2000 switches, round-robin)");
    println!(
        "{:<6} {:>6} {:>8} {:>17} {:>8} {:>18} {:>14} {:>18}",
        "mode",
        "spaces",
        "hit ns",
        "miss(rebuild) ns",
        "ratio",
        "miss(root only) ns",
        "hit rate rr/4",
        "hit rate random/4"
    );
    for (name, mode) in [("64bit", Mode::Long), ("pae", Mode::Pae)] {
        for spaces in [2u64, 4, 6, 8] {
            let (hit, _) = measure(mode, spaces, 8, false);
            let (miss, _) = measure(mode, spaces, 8, true);
            let (miss_root, _) = measure(mode, spaces, 0, false);
            let (_, rr_rate) = measure(mode, spaces, MmuConfig::default().prev_roots, false);
            let rand_rate = random_hit_rate(mode, spaces);
            println!(
                "{:<6} {:>6} {:>8} {:>17} {:>7.1}x {:>18} {:>13.1}% {:>17.1}%",
                name,
                spaces,
                hit.as_nanos(),
                miss.as_nanos(),
                miss.as_secs_f64() / hit.as_secs_f64().max(1e-12),
                miss_root.as_nanos(),
                rr_rate * 100.0,
                rand_rate * 100.0
            );
        }
    }
    println!("(hit and miss(rebuild) use prev_roots = 8, the rebuild after invalidate_all; miss(root only)");
    println!(" uses prev_roots = 0: the root is rebuilt, the pages below it are still cached;");
    println!(
        " the hit-rate columns use the default prev_roots = 4, round-robin and pseudo-random)"
    );
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
        .configure_from_args();
    bench_faults(&mut c);
    bench_switch(&mut c);
    c.final_summary();
    summary();
}
