//! The `kernel` scenario: in-kernel self-tests of boot information, the frame allocator, the
//! kernel page tables, exception recovery, the GDT/TSS and VMX discovery, then those of ring-3
//! support (`selftest_user`: user address spaces, the timer). Each check prints `ok`/`FAIL`
//! with its name and is tallied by [`record`]. Then the kernel starts the `kernel-tests` boot
//! module as the first task with the tally in its start argument (`abi::ktests::StartArg`):
//! it runs the ring-3 checks through the ordinary syscall path and object model, prints
//! `kernel: N passed, M failed` (these checks included) and ends the scenario.

// A failure carries its message inline (no heap in the kernel); size is no concern off the hot
// path.
#![allow(clippy::result_large_err)]

use crate::arch::{cpu, gdt, trap};
use crate::mm::{self, paging, FRAMES};
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use heapless::String;
use microkernel::bootinfo::BootInfo;
use microkernel::cmdline::Cmdline;
use microkernel::frame_alloc::FreeError;
use microkernel::memmap::RegionKind;
use microkernel::vmx_caps::MSR_IA32_VMX_BASIC;
use microkernel::PAGE_SIZE;
use x86_64::structures::paging::PageTableFlags as Flags;

pub type Outcome = Result<(), String<160>>;
pub type Check = fn(&BootInfo) -> Outcome;

macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            let mut msg = String::new();
            let _ = write!(msg, $($arg)*);
            return Err(msg);
        }
    };
}
pub(crate) use ensure;

static PASSED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);

/// Prints and tallies one check's outcome.
pub fn record(name: &str, outcome: Outcome) {
    match outcome {
        Ok(()) => {
            PASSED.fetch_add(1, Ordering::Relaxed);
            crate::println!("  ok   {name}");
        }
        Err(why) => {
            FAILED.fetch_add(1, Ordering::Relaxed);
            crate::println!("  FAIL {name}: {why}");
        }
    }
}

/// The tally so far: (passed, failed).
pub fn totals() -> (u32, u32) {
    (
        PASSED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed),
    )
}

/// Runs every in-kernel check, then starts the `kernel-tests` task, which runs the ring-3
/// checks, prints the summary and ends the scenario.
pub fn run(boot: &BootInfo) -> ! {
    let checks: &[(&str, Check)] = &[
        ("boot.memory_map", boot_memory_map),
        ("boot.hhdm", boot_hhdm),
        ("boot.cmdline", boot_cmdline),
        ("frames.distinct", frames_distinct),
        ("frames.free_and_errors", frames_free_and_errors),
        ("frames.below_4g", frames_below_4g),
        ("frames.contiguous", frames_contiguous),
        ("paging.map_write_read", paging_map_write_read),
        ("paging.unmap_faults", paging_unmap_faults),
        ("paging.readonly_write_faults", paging_readonly_write_faults),
        ("paging.kernel_permissions", paging_kernel_permissions),
        ("paging.hhdm_covers_memory", paging_hhdm_covers_memory),
        ("trap.breakpoint_returns", trap_breakpoint_returns),
        ("trap.noncanonical_gp_recovered", trap_noncanonical_gp),
        ("trap.msr_probe_reads_efer", trap_msr_probe_reads_efer),
        (
            "trap.invalid_opcode_recovered",
            trap_invalid_opcode_recovered,
        ),
        ("gdt.tss_and_ist", gdt_tss_and_ist),
        ("vmx.discovery_consistent", vmx_discovery_consistent),
    ];
    for (name, check) in checks.iter().chain(crate::selftest_user::KERNEL_CHECKS) {
        record(name, check(boot));
    }
    let (passed, failed) = totals();
    crate::log!(
        info,
        "selftest",
        "starting {} for the ring-3 checks",
        abi::ktests::MODULE
    );
    crate::kentry::start_first_task(abi::ktests::MODULE, |module| {
        abi::ktests::StartArg {
            passed: u16::try_from(passed).unwrap_or(u16::MAX),
            failed: u16::try_from(failed).unwrap_or(u16::MAX),
            first_selector_past_gdt: u16::try_from(gdt::first_selector_past()).unwrap_or(u16::MAX),
            module: u8::try_from(module).unwrap_or(u8::MAX),
        }
        .encode()
    })
}

fn boot_memory_map(boot: &BootInfo) -> Outcome {
    let map = &boot.memory_map;
    ensure!(
        map.usable_bytes() >= 16 << 20,
        "only {} KiB usable",
        map.usable_bytes() >> 10
    );
    for w in map.regions().windows(2) {
        ensure!(
            w[0].end <= w[1].start,
            "regions overlap: {:?} {:?}",
            w[0],
            w[1]
        );
    }
    let k = boot.kernel;
    ensure!(
        map.kind_at(k.phys_start) == Some(RegionKind::Kernel)
            && map.kind_at(k.phys_start + k.len - 1) == Some(RegionKind::Kernel),
        "kernel image {:#x}+{:#x} not reserved",
        k.phys_start,
        k.len
    );
    ensure!(
        map.kind_at(0) != Some(RegionKind::Usable),
        "low memory is usable"
    );
    Ok(())
}

fn boot_hhdm(boot: &BootInfo) -> Outcome {
    ensure!(
        boot.hhdm_offset >= 0xffff_8000_0000_0000,
        "hhdm {:#x} not in the higher half",
        boot.hhdm_offset
    );
    // The kernel's first page, read through the direct map and through its own address.
    let via_hhdm = trap::read_u64(mm::phys_to_virt(boot.kernel.phys_start));
    let via_image = trap::read_u64(boot.kernel.virt_start);
    ensure!(
        via_hhdm.is_ok() && via_hhdm == via_image,
        "direct map and image disagree: {via_hhdm:?} vs {via_image:?}"
    );
    Ok(())
}

fn boot_cmdline(boot: &BootInfo) -> Outcome {
    let cmdline = Cmdline::new(&boot.cmdline);
    ensure!(
        cmdline.scenario() == "kernel",
        "scenario {:?} from {:?}",
        cmdline.scenario(),
        cmdline.as_str()
    );
    ensure!(!boot.cmdline_truncated, "command line truncated");
    Ok(())
}

fn frames_distinct(boot: &BootInfo) -> Outcome {
    let mut guard = FRAMES.lock();
    let frames = guard.as_mut().ok_or_else(|| msg("no allocator"))?;
    let before = frames.free_frames();
    let mut got = [0u64; 64];
    for slot in got.iter_mut() {
        *slot = frames.alloc().ok_or_else(|| msg("out of frames"))?;
    }
    let after = frames.free_frames();
    for f in got {
        frames.free(f).map_err(|e| msg_dbg("free", e))?;
    }
    for (i, a) in got.iter().enumerate() {
        ensure!(a % PAGE_SIZE == 0, "unaligned frame {a:#x}");
        ensure!(
            boot.memory_map.kind_at(*a) == Some(RegionKind::Usable),
            "frame {a:#x} is not usable RAM"
        );
        ensure!(!got[..i].contains(a), "frame {a:#x} handed out twice");
    }
    ensure!(
        before - after == 64,
        "free count fell by {}",
        before - after
    );
    Ok(())
}

fn frames_free_and_errors(boot: &BootInfo) -> Outcome {
    let mut guard = FRAMES.lock();
    let frames = guard.as_mut().ok_or_else(|| msg("no allocator"))?;
    let before = frames.free_frames();
    let f = frames.alloc().ok_or_else(|| msg("out of frames"))?;
    ensure!(frames.free(f).is_ok(), "free failed");
    ensure!(
        frames.free(f) == Err(FreeError::AlreadyFree),
        "double free accepted"
    );
    ensure!(
        frames.free(boot.kernel.phys_start) == Err(FreeError::NotManaged),
        "freeing a kernel frame accepted"
    );
    ensure!(
        frames.free(f + 1) == Err(FreeError::Unaligned),
        "unaligned free accepted"
    );
    ensure!(frames.free_frames() == before, "free count not restored");
    Ok(())
}

fn frames_below_4g(_: &BootInfo) -> Outcome {
    let mut guard = FRAMES.lock();
    let frames = guard.as_mut().ok_or_else(|| msg("no allocator"))?;
    let f = frames
        .alloc_below(1 << 32)
        .ok_or_else(|| msg("no frame below 4 GiB"))?;
    let _ = frames.free(f);
    ensure!(f + PAGE_SIZE <= 1 << 32, "frame {f:#x} above 4 GiB");
    Ok(())
}

fn frames_contiguous(_: &BootInfo) -> Outcome {
    let mut guard = FRAMES.lock();
    let frames = guard.as_mut().ok_or_else(|| msg("no allocator"))?;
    let base = frames
        .alloc_contiguous(16, 0x1_0000, u64::MAX)
        .ok_or_else(|| msg("no 64 KiB run"))?;
    let all_taken = (0..16).all(|i| !frames.is_free(base + i * PAGE_SIZE));
    for i in 0..16 {
        let _ = frames.free(base + i * PAGE_SIZE);
    }
    ensure!(base % 0x1_0000 == 0, "run at {base:#x} not 64 KiB aligned");
    ensure!(all_taken, "run not fully allocated");
    Ok(())
}

static SCRATCH_NEXT: AtomicU64 = AtomicU64::new(paging::SCRATCH_BASE);

/// A fresh frame mapped at a fresh scratch address with `flags`; returns (va, frame).
fn scratch_page(flags: Flags) -> Result<(u64, u64), String<160>> {
    let frame = mm::alloc_zeroed_frame_below(u64::MAX).ok_or_else(|| msg("out of frames"))?;
    let va = SCRATCH_NEXT.fetch_add(PAGE_SIZE, Ordering::Relaxed);
    paging::map_scratch(va, frame, flags).map_err(|e| msg_dbg("map", e))?;
    Ok((va, frame))
}

fn release(va: u64) {
    if let Ok(frame) = paging::unmap_scratch(va) {
        if let Some(frames) = FRAMES.lock().as_mut() {
            let _ = frames.free(frame);
        }
    }
}

fn paging_map_write_read(_: &BootInfo) -> Outcome {
    let (va, frame) = scratch_page(Flags::PRESENT | Flags::WRITABLE | Flags::NO_EXECUTE)?;
    let pattern = 0x5eed_cafe_f00d_0001;
    let wrote = trap::write_u64(va + 0x88, pattern);
    let read = trap::read_u64(mm::phys_to_virt(frame) + 0x88);
    let translated = paging::translate(va + 0x88).map(|(pa, _)| pa);
    release(va);
    ensure!(
        wrote.is_ok(),
        "write through the new mapping faulted: {wrote:?}"
    );
    ensure!(read == Ok(pattern), "direct map read {read:?}");
    ensure!(
        translated == Some(frame + 0x88),
        "translate gave {translated:?}"
    );
    Ok(())
}

fn paging_unmap_faults(_: &BootInfo) -> Outcome {
    let (va, _) = scratch_page(Flags::PRESENT | Flags::WRITABLE | Flags::NO_EXECUTE)?;
    ensure!(trap::read_u64(va).is_ok(), "mapped page not readable");
    release(va);
    let r = trap::read_u64(va);
    let Err(fault) = r else {
        return Err(msg("read after unmap did not fault"));
    };
    ensure!(
        fault.vector == 14 && fault.address == va && fault.error_code & 1 == 0,
        "expected a not-present #PF at {va:#x}, got {fault:?}"
    );
    ensure!(paging::translate(va).is_none(), "translate still maps it");
    Ok(())
}

fn paging_readonly_write_faults(_: &BootInfo) -> Outcome {
    let (va, _) = scratch_page(Flags::PRESENT | Flags::NO_EXECUTE)?;
    let read = trap::read_u64(va);
    let write = trap::write_u64(va, 1);
    release(va);
    ensure!(
        read == Ok(0),
        "read of a zeroed read-only page gave {read:?}"
    );
    let Err(fault) = write else {
        return Err(msg("write to a read-only page did not fault (CR0.WP?)"));
    };
    ensure!(
        fault.vector == 14 && fault.error_code & 0b11 == 0b11 && fault.address == va,
        "expected a protection write #PF, got {fault:?}"
    );
    Ok(())
}

static DATA_PROBE: AtomicU64 = AtomicU64::new(0);
static RODATA_PROBE: &str = "rodata probe";

fn paging_kernel_permissions(_: &BootInfo) -> Outcome {
    let text = paging_kernel_permissions as *const () as u64;
    let rodata = RODATA_PROBE.as_ptr() as u64;
    let data = &DATA_PROBE as *const AtomicU64 as u64;
    let flags = |va| paging::translate(va).map(|(_, f)| f);
    let (t, r, d) = (flags(text), flags(rodata), flags(data));
    let ok = |f: Option<Flags>, writable: bool, nx: bool| {
        f.is_some_and(|f| {
            f.contains(Flags::WRITABLE) == writable && f.contains(Flags::NO_EXECUTE) == nx
        })
    };
    ensure!(ok(t, false, false), "text {text:#x} flags {t:?}");
    ensure!(ok(r, false, true), "rodata {rodata:#x} flags {r:?}");
    ensure!(ok(d, true, true), "data {data:#x} flags {d:?}");
    let write = trap::write_u64(text & !7, 0);
    ensure!(write.is_err(), "write to kernel text did not fault");
    Ok(())
}

fn paging_hhdm_covers_memory(boot: &BootInfo) -> Outcome {
    let last = boot
        .memory_map
        .usable()
        .last()
        .ok_or_else(|| msg("no usable memory"))?;
    let va = mm::phys_to_virt(last.end - 8);
    let r = trap::read_u64(va);
    ensure!(
        r.is_ok(),
        "top of RAM {:#x} not in the direct map: {r:?}",
        last.end
    );
    Ok(())
}

fn trap_breakpoint_returns(_: &BootInfo) -> Outcome {
    let before = trap::BREAKPOINTS.load(Ordering::Relaxed);
    cpu::breakpoint();
    cpu::breakpoint();
    let after = trap::BREAKPOINTS.load(Ordering::Relaxed);
    ensure!(
        after - before == 2,
        "{} breakpoints counted",
        after - before
    );
    Ok(())
}

fn trap_noncanonical_gp(_: &BootInfo) -> Outcome {
    let r = trap::read_u64(0x8000_0000_0000_0000);
    ensure!(
        matches!(r, Err(f) if f.vector == 13),
        "non-canonical read gave {r:?}"
    );
    Ok(())
}

fn trap_msr_probe_reads_efer(_: &BootInfo) -> Outcome {
    // (A missing MSR is no portable #GP test: QEMU's TCG reads unknown MSRs as 0.)
    let efer = trap::rdmsr(0xc000_0080);
    let want = x86_64::registers::model_specific::Efer::read_raw();
    ensure!(
        efer == Ok(want),
        "probed EFER {efer:?}, rdmsr gives {want:#x}"
    );
    ensure!(
        want & (1 << 10) != 0,
        "EFER.LMA clear in long mode: {want:#x}"
    );
    Ok(())
}

fn trap_invalid_opcode_recovered(_: &BootInfo) -> Outcome {
    let r = trap::ud2();
    ensure!(matches!(r, Err(f) if f.vector == 6), "ud2 probe gave {r:?}");
    Ok(())
}

fn gdt_tss_and_ist(_: &BootInfo) -> Outcome {
    let tr = cpu::task_register();
    let want = gdt::selectors().tss.0;
    ensure!(tr == want, "task register {tr:#x}, expected {want:#x}");
    let (lo, hi) = gdt::double_fault_stack();
    let ist = gdt::double_fault_ist_top();
    ensure!(
        ist == hi && ist.is_multiple_of(16) && hi > lo,
        "IST1 {ist:#x} not the top of the double-fault stack {lo:#x}..{hi:#x}"
    );
    Ok(())
}

fn vmx_discovery_consistent(_: &BootInfo) -> Outcome {
    use microkernel::vmx_caps::{Unavailable, VmxSupport};
    let support = crate::arch::vmx_discover::discover();
    if !cpu::has_vmx() {
        ensure!(
            support == VmxSupport::Unavailable(Unavailable::NoCpuidFlag),
            "no CPUID flag but {support:?}"
        );
        return Ok(());
    }
    let basic = trap::rdmsr(MSR_IA32_VMX_BASIC);
    let Ok(basic) = basic else {
        return Err(msg("CPUID has VMX but IA32_VMX_BASIC faults"));
    };
    let vmcs_size = (basic >> 32) & 0x1fff;
    ensure!(
        (1..=4096).contains(&vmcs_size),
        "VMCS size {vmcs_size} out of range"
    );
    if let VmxSupport::Available(caps) = support {
        ensure!(
            caps.revision == (basic & 0x7fff_ffff) as u32 && caps.revision != 0,
            "revision {:#x}",
            caps.revision
        );
    }
    Ok(())
}

pub fn msg(text: &str) -> String<160> {
    let mut s = String::new();
    let _ = s.push_str(text);
    s
}

pub fn msg_dbg(what: &str, e: impl core::fmt::Debug) -> String<160> {
    let mut s = String::new();
    let _ = write!(s, "{what}: {e:?}");
    s
}
