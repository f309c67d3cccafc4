//! The two ways in: the Limine protocol (primary) and Multiboot2 (GRUB). Each turns its
//! loader's structures into a `RawBootInfo` and calls `kernel_main`; nothing after that knows
//! which loader ran.
pub mod limine;
pub mod multiboot2;

use core::arch::global_asm;
use heapless::Vec;
use microkernel::memmap::{Region, MAX_REGIONS};

/// Higher-half base the kernel is linked at (see `linker.ld`).
pub const KERNEL_OFFSET: u64 = 0xffff_ffff_8000_0000;

// The boot stack both entries switch to, and the Multiboot2 boot page tables.
global_asm!(
    r#"
    .section .bss
    .balign 4096
    .global boot_pml4, boot_pdpt_low, boot_pdpt_high, boot_pd
boot_pml4:      .skip 4096
boot_pdpt_low:  .skip 4096
boot_pdpt_high: .skip 4096
boot_pd:        .skip 4096 * 4
    .balign 16
    .global boot_stack_bottom, boot_stack_top
boot_stack_bottom:
    .skip 64 * 1024
boot_stack_top:
"#,
    options(att_syntax)
);

extern "C" {
    static __kernel_start: u8;
    static __kernel_end: u8;
}

/// The kernel image's virtual start and length.
pub fn kernel_extent() -> (u64, u64) {
    let start = (&raw const __kernel_start) as u64;
    let end = (&raw const __kernel_end) as u64;
    (start, end - start)
}

/// The loader's memory map as raw regions. Entries beyond [`MAX_REGIONS`] are dropped with a
/// warning; firmware maps are far shorter (tens of entries), so this only guards the array.
pub fn collect_regions(entries: impl Iterator<Item = Region>) -> Vec<Region, MAX_REGIONS> {
    let mut memory = Vec::new();
    for region in entries {
        if memory.push(region).is_err() {
            crate::log!(
                warn,
                "boot",
                "memory map truncated at {MAX_REGIONS} entries"
            );
            break;
        }
    }
    memory
}
