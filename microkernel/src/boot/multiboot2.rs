//! The Multiboot2 entry (GRUB). The 32-bit stub checks the magic and long-mode support, builds
//! boot page tables — identity, direct map at 0xffff_8000_0000_0000 and the kernel's higher half,
//! each covering the first 4 GiB with 2 MiB pages — enters long mode and calls
//! `multiboot2_main`, which reads the information block with the `multiboot2` crate.

use super::KERNEL_OFFSET;
use core::arch::global_asm;
use heapless::Vec;
use microkernel::bootinfo::{KernelImage, Loader, RawBootInfo, MAX_MODULES};
use microkernel::memmap::{Region, RegionKind};
use multiboot2::{BootInformation, BootInformationHeader, MemoryAreaType};

/// Where the stub puts the direct map of physical memory.
const HHDM_OFFSET: u64 = 0xffff_8000_0000_0000;
const MULTIBOOT2_MAGIC: u32 = 0x36d7_6289;

global_asm!(
    r#"
    .section .multiboot2_header, "a"
    .balign 8
mb2_header:
    .long 0xe85250d6
    .long 0
    .long mb2_header_end - mb2_header
    .long 0x100000000 - (0xe85250d6 + (mb2_header_end - mb2_header))
    .balign 8
    /* entry address tag: GRUB enters the 32-bit stub at its physical address */
    .short 3
    .short 0
    .long 12
    .long mb2_entry32 - {off}
    .balign 8
    .short 0
    .short 0
    .long 8
mb2_header_end:

    .section .boot32, "ax"
    .code32
    .global mb2_entry32
mb2_entry32:
    cli
    cld
    movl %eax, %edi
    movl %ebx, %esi
    movl $(boot_stack_top - {off}), %esp
    cmpl ${magic}, %edi
    jne 9f
    /* long mode (CPUID.80000001H:EDX bit 29); remember NX (bit 20) in %ebp */
    movl $0x80000000, %eax
    cpuid
    cmpl $0x80000001, %eax
    jb 9f
    movl $0x80000001, %eax
    cpuid
    testl $(1 << 29), %edx
    jz 9f
    movl %edx, %ebp

    movl $(boot_pdpt_low - {off} + 3), %eax
    movl %eax, boot_pml4 - {off}
    movl %eax, boot_pml4 - {off} + 256 * 8
    movl $(boot_pdpt_high - {off} + 3), %eax
    movl %eax, boot_pml4 - {off} + 511 * 8
    movl $(boot_pd - {off} + 3), %eax
    movl %eax, boot_pdpt_high - {off} + 510 * 8
    movl %eax, boot_pdpt_low - {off}
    addl $0x1000, %eax
    movl %eax, boot_pdpt_low - {off} + 8
    addl $0x1000, %eax
    movl %eax, boot_pdpt_low - {off} + 16
    addl $0x1000, %eax
    movl %eax, boot_pdpt_low - {off} + 24
    xorl %ecx, %ecx
1:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, boot_pd - {off}(,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb 1b

    movl %cr4, %eax
    orl $(1 << 5), %eax
    movl %eax, %cr4
    movl $(boot_pml4 - {off}), %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx
    rdmsr
    orl $(1 << 8), %eax
    testl $(1 << 20), %ebp
    jz 2f
    orl $(1 << 11), %eax
2:  wrmsr
    movl %cr0, %eax
    orl $0x80010001, %eax
    movl %eax, %cr0
    lgdt boot_gdt_ptr - {off}
    pushl $0x08
    pushl $(mb2_entry64_low - {off})
    lret

    /* not loaded by Multiboot2, or no long mode: say so on the debug port and stop */
9:  movl $(mb2_fail_msg - {off}), %esi
3:  movb (%esi), %al
    testb %al, %al
    jz 4f
    outb %al, $0xe9
    incl %esi
    jmp 3b
4:  hlt
    jmp 4b

    .code64
mb2_entry64_low:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movabsq $mb2_entry64_high, %rax
    jmpq *%rax

    .section .text
mb2_entry64_high:
    movabsq $boot_stack_top, %rsp
    xorl %ebp, %ebp
    call multiboot2_main
    ud2

    .section .rodata
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00209a0000000000
    .quad 0x0000920000000000
boot_gdt_end:
boot_gdt_ptr:
    .short boot_gdt_end - boot_gdt - 1
    .long boot_gdt - {off}
mb2_fail_msg:
    .asciz "umbra: not started by a Multiboot2 loader on a 64-bit CPU\n"
"#,
    off = const KERNEL_OFFSET,
    magic = const MULTIBOOT2_MAGIC,
    options(att_syntax)
);

fn region_kind(typ: MemoryAreaType) -> RegionKind {
    match typ {
        MemoryAreaType::Available => RegionKind::Usable,
        MemoryAreaType::AcpiAvailable => RegionKind::AcpiReclaimable,
        MemoryAreaType::ReservedHibernate => RegionKind::AcpiNvs,
        MemoryAreaType::Defective => RegionKind::BadMemory,
        _ => RegionKind::Reserved,
    }
}

#[no_mangle]
extern "C" fn multiboot2_main(magic: u32, info_phys: u32) -> ! {
    crate::early_init();
    if magic != MULTIBOOT2_MAGIC {
        crate::fatal(format_args!("multiboot2: bad magic {magic:#x}"));
    }
    let info_ptr = (HHDM_OFFSET + u64::from(info_phys)) as *const BootInformationHeader;
    // SAFETY: the loader passed the information block's physical address; the boot tables map
    // the first 4 GiB at HHDM_OFFSET, and the block stays untouched (it is reserved below).
    let mbi = match unsafe { BootInformation::load(info_ptr) } {
        Ok(mbi) => mbi,
        Err(e) => crate::fatal(format_args!("multiboot2: bad information block: {e:?}")),
    };

    let areas = mbi
        .memory_map_tag()
        .map(|tag| tag.memory_areas())
        .unwrap_or(&[]);
    let memory = super::collect_regions(
        areas
            .iter()
            .map(|a| Region::new(a.start_address(), a.size(), region_kind(a.typ()))),
    );

    let mut modules: Vec<(u64, u64, &str), { MAX_MODULES * 4 }> = Vec::new();
    for module in mbi.module_tags() {
        let start = u64::from(module.start_address());
        let len = u64::from(module.module_size());
        let _ = modules.push((start, len, module.cmdline().unwrap_or("")));
    }

    let cmdline = mbi
        .command_line_tag()
        .and_then(|t| t.cmdline().ok())
        .unwrap_or("");
    // The RSDP is copied into the information block; its copy starts after the tag header.
    let rsdp = mbi
        .rsdp_v2_tag()
        .map(|t| t as *const _ as u64)
        .or_else(|| mbi.rsdp_v1_tag().map(|t| t as *const _ as u64))
        .map(|virt| virt + 8 - HHDM_OFFSET);

    let (virt_start, len) = super::kernel_extent();
    let raw = RawBootInfo {
        loader: Loader::Multiboot2,
        hhdm_offset: HHDM_OFFSET,
        kernel: KernelImage {
            phys_start: virt_start - KERNEL_OFFSET,
            virt_start,
            len,
        },
        memory: &memory,
        modules: &modules,
        cmdline,
        rsdp,
        boot_data: &[(u64::from(info_phys), mbi.total_size() as u64)],
    };
    crate::kernel_main(&raw)
}
