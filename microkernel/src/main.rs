//! The Umbra microkernel binary: boot glue, CPU setup and scenarios over the host-tested
//! `microkernel` library. Builds only for `x86_64-unknown-none` (see `Makefile`).
#![no_std]
#![no_main]
// `unsafe` is allowed only in the modules named below: CPU instructions, traps and probes
// (`arch`), page tables and frames (`mm`), loader entry (`boot`).
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod arch;
#[allow(unsafe_code)]
mod boot;
mod console;
mod kentry;
#[allow(unsafe_code)]
mod mm;
mod scenario;
mod selftest;
mod selftest_user;

use core::fmt;
use microkernel::bootinfo::{BootInfo, Loader, RawBootInfo};
use microkernel::cmdline::Cmdline;

/// Console and CPU tables: the first thing both entries do, so every later failure is reported.
fn early_init() {
    console::init();
    arch::gdt::init();
    arch::trap::init();
    println!();
    println!("Umbra microkernel {}", env!("CARGO_PKG_VERSION"));
}

/// A boot that cannot go on: say why and stop.
fn fatal(why: fmt::Arguments<'_>) -> ! {
    log!(error, "boot", "{why}");
    scenario::exit(abi::ExitCode::Crash)
}

/// The common path after either entry.
fn kernel_main(raw: &RawBootInfo<'_>) -> ! {
    let mut boot = match BootInfo::new(raw) {
        Ok(boot) => boot,
        Err(e) => fatal(format_args!("unusable boot information: {e:?}")),
    };
    let loader = match boot.loader {
        Loader::Limine => "limine",
        Loader::Multiboot2 => "multiboot2",
    };
    log!(
        info,
        "boot",
        "loader {loader}, command line {:?}",
        boot.cmdline.as_str()
    );
    if boot.cmdline_truncated || boot.modules_dropped > 0 {
        log!(
            warn,
            "boot",
            "command line truncated: {}, modules dropped: {}",
            boot.cmdline_truncated,
            boot.modules_dropped
        );
    }
    log!(
        info,
        "boot",
        "kernel at phys {:#x} virt {:#x}, {} KiB; hhdm {:#x}; rsdp {:#x}; {} module(s)",
        boot.kernel.phys_start,
        boot.kernel.virt_start,
        boot.kernel.len >> 10,
        boot.hhdm_offset,
        boot.rsdp.unwrap_or(0),
        boot.modules.len()
    );

    if let Err(e) = mm::init(&mut boot) {
        fatal(format_args!("memory setup failed: {e:?}"));
    }
    for r in boot.memory_map.regions() {
        log!(
            info,
            "mem",
            "{:#012x}-{:#012x} {:?}",
            r.start,
            r.end,
            r.kind
        );
    }
    if let Some(frames) = mm::FRAMES.lock().as_ref() {
        log!(
            info,
            "mem",
            "{} MiB usable, {} frames free; kernel page tables live",
            boot.memory_map.usable_bytes() >> 20,
            frames.free_frames()
        );
    }
    // `xsave=off` on the command line: FXSAVE/FXRSTOR even where XSAVE exists (tests the
    // fallback path on emulators that all have XSAVE).
    let x = arch::xstate::init(Cmdline::new(&boot.cmdline).value("xsave") == Some("off"));
    log!(
        info,
        "fpu",
        "extended state: {}, XCR0 {:#x}, {} bytes per thread",
        if x.xsave { "xsave" } else { "fxsave" },
        x.xcr0,
        x.size
    );
    log!(
        info,
        "timer",
        "TSC at {} kHz (measured against PIT channel 2)",
        arch::timer::tsc_hz() / 1000
    );
    println!("{}", arch::vmx_discover::discover());
    match arch::vmx::init() {
        Ok(()) => log!(
            info,
            "vmx",
            "VMX root operation on (EPT, VPID, unrestricted guest)"
        ),
        Err(why) => log!(info, "vmx", "no VMs on this machine: {why}"),
    }

    let scenario = Cmdline::new(&boot.cmdline).scenario();
    log!(info, "scenario", "running '{scenario}'");
    scenario::run(&boot, scenario)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::fmt::Write;
    let _ = writeln!(console::RawConsole, "\nPANIC: {info}");
    scenario::exit(abi::ExitCode::Crash)
}
