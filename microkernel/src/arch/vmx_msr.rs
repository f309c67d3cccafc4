//! The guest MSRs the VMCS has no field for (KERNEL_GS_BASE, STAR, LSTAR, CSTAR, SFMASK,
//! TSC_AUX: [`field::SWITCHED_MSRS`]), switched by the CPU itself on every VM entry and exit.
//!
//! Each vCPU has one frame. Its first half is the guest's area: the VM-entry MSR-load area
//! (the guest's values go in on entry) and also the VM-exit MSR-store area (the guest's
//! values come back there on exit), so it always holds the guest's current values. Its second
//! half is the VM-exit MSR-load area with the host's values, which the CPU loads as part of
//! the exit: no host instruction ever runs with a guest's LSTAR, STAR or SFMASK (a ring-3
//! `syscall` needs the host's). The kernel reads and writes the guest's area for the
//! `GUEST_KERNEL_GS_BASE..` pseudo-fields of `VcpuState`.
//!
//! An MSR the CPU lacks (TSC_AUX without RDTSCP) is left out of both areas, since loading it
//! would fail the entry; its pseudo-field reads 0 and ignores writes.

use abi::vmx::field;
use spin::Once;

use super::trap;

/// Offset of the host's area in the frame (each area is 16-byte aligned).
const HOST_AREA: u64 = 2048;
/// Bytes per entry: index (u32), reserved (u32), value (u64).
const ENTRY: u64 = 16;

/// VMCS fields of the three areas.
const EXIT_MSR_STORE_ADDR: u64 = 0x2006;
const EXIT_MSR_LOAD_ADDR: u64 = 0x2008;
const ENTRY_MSR_LOAD_ADDR: u64 = 0x200a;
const EXIT_MSR_STORE_COUNT: u64 = 0x400e;
const EXIT_MSR_LOAD_COUNT: u64 = 0x4010;
const ENTRY_MSR_LOAD_COUNT: u64 = 0x4014;

/// Which of [`field::SWITCHED_MSRS`] the CPU has (probed once).
static PRESENT: Once<[bool; field::SWITCHED_MSRS.len()]> = Once::new();

fn present() -> &'static [bool; field::SWITCHED_MSRS.len()] {
    PRESENT.call_once(|| field::SWITCHED_MSRS.map(|m| trap::rdmsr(m).is_ok()))
}

/// The slot of switched MSR `k` in the areas, if the CPU has it.
fn slot(k: usize) -> Option<u64> {
    let p = present();
    (*p.get(k)?).then(|| p[..k].iter().filter(|&&b| b).count() as u64)
}

/// One vCPU's MSR areas.
#[derive(Debug)]
pub struct MsrAreas {
    phys: u64,
    count: u64,
}

fn entry_ptr(phys: u64, area: u64, slot: u64) -> *mut u64 {
    (crate::mm::phys_to_virt(phys) + area + slot * ENTRY) as *mut u64
}

impl MsrAreas {
    /// A frame with the guest's values zeroed and the host's values as they are now (the
    /// `syscall` MSRs are programmed at boot, before any VM exists).
    pub fn new() -> Option<MsrAreas> {
        let phys = crate::mm::alloc_zeroed_frame_below(u64::MAX)?;
        let mut count = 0;
        for (k, &msr) in field::SWITCHED_MSRS.iter().enumerate() {
            let Some(s) = slot(k) else { continue };
            let host = trap::rdmsr(msr).unwrap_or(0);
            for (area, value) in [(0, 0), (HOST_AREA, host)] {
                let p = entry_ptr(phys, area, s);
                // SAFETY: `phys` is a frame just allocated for this vCPU, mapped in the direct
                // map; entry `s` < 6 lies within its half. No VMCS uses it yet.
                unsafe {
                    p.write_volatile(u64::from(msr));
                    p.add(1).write_volatile(value);
                }
            }
            count += 1;
        }
        Some(MsrAreas { phys, count })
    }

    /// The VMCS fields that point the CPU at these areas.
    pub fn vmcs_fields(&self) -> [(u64, u64); 6] {
        [
            (ENTRY_MSR_LOAD_ADDR, self.phys),
            (EXIT_MSR_STORE_ADDR, self.phys),
            (EXIT_MSR_LOAD_ADDR, self.phys + HOST_AREA),
            (ENTRY_MSR_LOAD_COUNT, self.count),
            (EXIT_MSR_STORE_COUNT, self.count),
            (EXIT_MSR_LOAD_COUNT, self.count),
        ]
    }

    /// The guest's value of pseudo-field `f`; `None` if `f` is not a switched MSR's field.
    pub fn read(&self, f: u64) -> Option<u64> {
        let k = switched_index(f)?;
        Some(match slot(k) {
            // SAFETY: the guest area's entry of a present MSR, in this vCPU's frame; the CPU
            // writes it only during a VM exit of this vCPU, never while the kernel runs.
            Some(s) => unsafe { entry_ptr(self.phys, 0, s).add(1).read_volatile() },
            None => 0,
        })
    }

    /// Sets the guest's value of pseudo-field `f` (the caller checked it with
    /// [`field::msr_value_ok`]); returns `false` if `f` is not a switched MSR's field.
    pub fn write(&self, f: u64, value: u64) -> bool {
        let Some(k) = switched_index(f) else {
            return false;
        };
        if let Some(s) = slot(k) {
            // SAFETY: as in `read`; the CPU reads the entry at the next VM entry.
            unsafe { entry_ptr(self.phys, 0, s).add(1).write_volatile(value) };
        }
        true
    }

    /// Frees the frame (its VMCS was cleared first).
    pub fn destroy(self) {
        crate::mm::free_frame(self.phys);
    }
}

fn switched_index(f: u64) -> Option<usize> {
    let k = f.checked_sub(field::GUEST_MSR_BASE)? as usize;
    (k < field::SWITCHED_MSRS.len()).then_some(k)
}
