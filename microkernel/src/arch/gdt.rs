//! The kernel's own GDT and TSS, replacing the loader's. The TSS's first interrupt stack (IST1)
//! is a dedicated stack for double faults, so a kernel stack overflow still gets reported.
//!
//! The segments are laid out as `syscall`/`sysret` need them (see `arch::user`): kernel code
//! 0x08, kernel data 0x10, user data 0x1b, user code (64-bit) 0x23, then the TSS. The TSS's
//! `rsp0` is the top of the kernel entry stack, where every entry from ring 3 starts.

use spin::LazyLock;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, FS, GS, SS};
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
    tss.privilege_stack_table[0] = VirtAddr::new(super::user::entry_stack_top());
    tss
});

/// The ring-3 selectors the GDT's order gives (user data at index 3, user code at 4, RPL 3):
/// every return to ring 3 names them, without a look at the lazily built table. `init`
/// checks that the table agrees.
pub const USER_DATA: u16 = (3 << 3) | 3;
pub const USER_CODE: u16 = (4 << 3) | 3;

pub struct Selectors {
    pub kernel_code: SegmentSelector,
    pub kernel_data: SegmentSelector,
    /// RPL 3.
    pub user_data: SegmentSelector,
    /// 64-bit, RPL 3.
    pub user_code: SegmentSelector,
    pub tss: SegmentSelector,
}

static GDT: LazyLock<(GlobalDescriptorTable, Selectors)> = LazyLock::new(|| {
    let mut gdt = GlobalDescriptorTable::new();
    let kernel_code = gdt.append(Descriptor::kernel_code_segment());
    let kernel_data = gdt.append(Descriptor::kernel_data_segment());
    // `sysret` takes SS from STAR[63:48] + 8 and CS from STAR[63:48] + 16: user data first.
    let user_data = gdt.append(Descriptor::user_data_segment());
    let user_code = gdt.append(Descriptor::user_code_segment());
    let tss = gdt.append(Descriptor::tss_segment(&TSS));
    (
        gdt,
        Selectors {
            kernel_code,
            kernel_data,
            user_data,
            user_code,
            tss,
        },
    )
});

/// Loads the GDT, reloads the segment registers and loads the TSS, then programs the
/// `syscall` MSRs (`arch::user::init_syscall`), which name these selectors. DS, ES, FS and GS
/// hold the null selector in the kernel (64-bit mode does not use them), so that
/// `user::return_to_user` can tell in one comparison whether ring 3 loaded one of them.
pub fn init() {
    let (gdt, sel) = &*GDT;
    assert!(
        sel.user_data.0 == USER_DATA && sel.user_code.0 == USER_CODE,
        "the GDT's user selectors moved: update gdt::USER_DATA and USER_CODE"
    );
    gdt.load();
    // SAFETY: the selectors index descriptors of the GDT just loaded, which lives in a static
    // for the kernel's lifetime: a 64-bit code segment, a data segment and an available TSS.
    // The null selector is valid in DS, ES, FS and GS in 64-bit mode.
    unsafe {
        CS::set_reg(sel.kernel_code);
        DS::set_reg(SegmentSelector(0));
        ES::set_reg(SegmentSelector(0));
        FS::set_reg(SegmentSelector(0));
        GS::set_reg(SegmentSelector(0));
        SS::set_reg(sel.kernel_data);
        load_tss(sel.tss);
    }
    super::user::init_syscall(sel);
}

/// The first ring-3 selector past the end of the GDT: LSL, LAR and segment loads must refuse
/// it and every selector above it.
pub fn first_selector_past() -> u64 {
    (u64::from(GDT.0.limit()) + 1) | 3
}

#[inline]
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

/// The TSS's address (the VMCS host state names it).
pub fn tss_base() -> u64 {
    let tss: &TaskStateSegment = &TSS;
    VirtAddr::from_ptr(tss).as_u64()
}

/// The TSS's `rsp0`: where the CPU switches to on an interrupt or exception from ring 3.
pub fn tss_rsp0() -> u64 {
    TSS.privilege_stack_table[0].as_u64()
}
