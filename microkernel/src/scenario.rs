//! Scenarios, chosen on the kernel command line (`scenario=NAME`), and how the kernel ends one:
//! a line `umbra: exit <code>`, then QEMU's `isa-debug-exit` and Bochs' shutdown port.

use crate::arch::cpu::{self, outb, outl};
use abi::ExitCode;
use microkernel::bootinfo::BootInfo;

pub fn run(boot: &BootInfo, name: &str) -> ! {
    match name {
        abi::scenario::KERNEL => crate::selftest::run(boot),
        abi::scenario::IPC
        | abi::scenario::BENCH_IPC
        | abi::scenario::DEMO
        | abi::scenario::VMM
        | abi::scenario::BENCH_VMM
        | abi::scenario::SHADOW
        | abi::scenario::BENCH_MMU
        | abi::scenario::ISOLATION
        | abi::scenario::FUZZ
        | abi::scenario::MMU_RESTART
        | abi::scenario::FUZZ_VM
        | abi::scenario::TRACE
        | abi::scenario::GUEST => crate::kentry::start_services(),
        abi::scenario::FAULT_SELFTEST => {
            crate::log!(info, "scenario", "reading an unmapped address on purpose");
            let va = crate::mm::paging::SCRATCH_BASE + 0x7ff0_0000;
            // A plain (not probed) read: the fault is fatal and must produce the report.
            let value = crate::arch::trap::unprotected_read(va);
            crate::log!(
                error,
                "scenario",
                "read of {va:#x} returned {value:#x}: no fault taken"
            );
            exit(ExitCode::Failure)
        }
        other => {
            crate::println!("umbra: unknown scenario '{other}'; known scenarios:");
            for (name, what) in abi::scenario::ALL {
                crate::println!("  {name:<16} {what}");
            }
            exit(ExitCode::UnknownScenario)
        }
    }
}

/// Ends the run: prints `umbra: exit <code>`, then stops the emulator (QEMU `isa-debug-exit`,
/// Bochs shutdown port); on real hardware, where neither exists, halts.
pub fn exit(code: ExitCode) -> ! {
    crate::println!("umbra: exit {}", code as u32);
    crate::console::drain();
    outl(abi::QEMU_DEBUG_EXIT_PORT, code as u32);
    for b in b"Shutdown" {
        outb(abi::BOCHS_SHUTDOWN_PORT, *b);
    }
    crate::println!("umbra: halted");
    cpu::halt_forever()
}
