//! The kernel's own GDT and TSS, replacing the loader's. The TSS's first interrupt stack (IST1)
//! is a dedicated stack for double faults, so a kernel stack overflow still gets reported.

use spin::LazyLock;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::VirtAddr;

/// IST index (0-based, as the `x86_64` crate counts) used by the double-fault handler.
pub const DOUBLE_FAULT_IST: u16 = 0;
const DOUBLE_FAULT_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct Stack([u8; DOUBLE_FAULT_STACK_SIZE]);

static mut DOUBLE_FAULT_STACK: Stack = Stack([0; DOUBLE_FAULT_STACK_SIZE]);

static TSS: LazyLock<TaskStateSegment> = LazyLock::new(|| {
    let mut tss = TaskStateSegment::new();
    let base = VirtAddr::from_ptr(&raw const DOUBLE_FAULT_STACK);
    tss.interrupt_stack_table[DOUBLE_FAULT_IST as usize] = base + DOUBLE_FAULT_STACK_SIZE as u64;
    tss
});

pub struct Selectors {
    pub kernel_code: SegmentSelector,
    pub kernel_data: SegmentSelector,
    pub tss: SegmentSelector,
}

static GDT: LazyLock<(GlobalDescriptorTable, Selectors)> = LazyLock::new(|| {
    let mut gdt = GlobalDescriptorTable::new();
    let kernel_code = gdt.append(Descriptor::kernel_code_segment());
    let kernel_data = gdt.append(Descriptor::kernel_data_segment());
    let tss = gdt.append(Descriptor::tss_segment(&TSS));
    (
        gdt,
        Selectors {
            kernel_code,
            kernel_data,
            tss,
        },
    )
});

/// Loads the GDT, reloads the segment registers and loads the TSS.
pub fn init() {
    let (gdt, sel) = &*GDT;
    gdt.load();
    // SAFETY: the selectors index descriptors of the GDT just loaded, which lives in a static
    // for the kernel's lifetime: a 64-bit code segment, a data segment and an available TSS.
    unsafe {
        CS::set_reg(sel.kernel_code);
        DS::set_reg(sel.kernel_data);
        ES::set_reg(sel.kernel_data);
        SS::set_reg(sel.kernel_data);
        load_tss(sel.tss);
    }
}

pub fn selectors() -> &'static Selectors {
    &GDT.1
}

/// The address range of the double-fault stack.
pub fn double_fault_stack() -> (u64, u64) {
    let base = VirtAddr::from_ptr(&raw const DOUBLE_FAULT_STACK).as_u64();
    (base, base + DOUBLE_FAULT_STACK_SIZE as u64)
}

/// The IST entry the TSS holds for double faults.
pub fn double_fault_ist_top() -> u64 {
    TSS.interrupt_stack_table[DOUBLE_FAULT_IST as usize].as_u64()
}
