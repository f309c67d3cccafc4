//! The Limine protocol entry (base revision 3). Limine loads the kernel at its linked virtual
//! addresses, provides a direct map (HHDM) and answers the requests below; `limine_start`
//! switches to the kernel's boot stack and calls `limine_main`.
//!
//! Limine's binaries are not obtainable from the package registries this project's machines
//! reach, so this path is built and linked on every build but booted only where Limine is
//! installed (`make iso LIMINE_DIR=...`).

use core::arch::global_asm;
use heapless::Vec;
use limine::memory_map::EntryType;
use limine::request::{
    ExecutableAddressRequest, ExecutableCmdlineRequest, HhdmRequest, MemoryMapRequest,
    ModuleRequest, RequestsEndMarker, RequestsStartMarker, RsdpRequest,
};
use limine::BaseRevision;
use microkernel::bootinfo::{KernelImage, Loader, RawBootInfo, MAX_MODULES};
use microkernel::memmap::{Region, RegionKind};

#[used]
#[link_section = ".limine_requests_start"]
static REQUESTS_START: RequestsStartMarker = RequestsStartMarker::new();
#[used]
#[link_section = ".limine_requests"]
static BASE_REVISION: BaseRevision = BaseRevision::with_revision(3);
#[used]
#[link_section = ".limine_requests"]
static HHDM: HhdmRequest = HhdmRequest::new();
#[used]
#[link_section = ".limine_requests"]
static MEMORY_MAP: MemoryMapRequest = MemoryMapRequest::new();
#[used]
#[link_section = ".limine_requests"]
static EXECUTABLE_ADDRESS: ExecutableAddressRequest = ExecutableAddressRequest::new();
#[used]
#[link_section = ".limine_requests"]
static CMDLINE: ExecutableCmdlineRequest = ExecutableCmdlineRequest::new();
#[used]
#[link_section = ".limine_requests"]
static MODULES: ModuleRequest = ModuleRequest::new();
#[used]
#[link_section = ".limine_requests"]
static RSDP: RsdpRequest = RsdpRequest::new();
#[used]
#[link_section = ".limine_requests_end"]
static REQUESTS_END: RequestsEndMarker = RequestsEndMarker::new();

global_asm!(
    r#"
    .section .text
    .global limine_start
limine_start:
    leaq boot_stack_top(%rip), %rsp
    xorl %ebp, %ebp
    call limine_main
    ud2
"#,
    options(att_syntax)
);

fn region_kind(typ: EntryType) -> RegionKind {
    match typ {
        EntryType::USABLE => RegionKind::Usable,
        EntryType::BOOTLOADER_RECLAIMABLE => RegionKind::BootloaderReclaimable,
        EntryType::ACPI_RECLAIMABLE => RegionKind::AcpiReclaimable,
        EntryType::ACPI_NVS => RegionKind::AcpiNvs,
        EntryType::BAD_MEMORY => RegionKind::BadMemory,
        EntryType::EXECUTABLE_AND_MODULES => RegionKind::Kernel,
        EntryType::FRAMEBUFFER => RegionKind::Framebuffer,
        _ => RegionKind::Reserved,
    }
}

#[no_mangle]
extern "C" fn limine_main() -> ! {
    crate::early_init();
    if !BASE_REVISION.is_supported() {
        crate::fatal(format_args!(
            "limine: base revision 3 not supported by this Limine"
        ));
    }
    let (Some(hhdm), Some(map), Some(address)) = (
        HHDM.get_response(),
        MEMORY_MAP.get_response(),
        EXECUTABLE_ADDRESS.get_response(),
    ) else {
        crate::fatal(format_args!(
            "limine: no HHDM, memory map or executable address"
        ));
    };
    let hhdm_offset = hhdm.offset();

    let memory = super::collect_regions(
        map.entries()
            .iter()
            .map(|e| Region::new(e.base, e.length, region_kind(e.entry_type))),
    );

    let mut modules: Vec<(u64, u64, &str), { MAX_MODULES * 4 }> = Vec::new();
    if let Some(response) = MODULES.get_response() {
        for file in response.modules() {
            let phys = (file.addr() as u64).wrapping_sub(hhdm_offset);
            let cmdline = file.string().to_str().unwrap_or("");
            let _ = modules.push((phys, file.size(), cmdline));
        }
    }
    let cmdline = CMDLINE
        .get_response()
        .and_then(|r| r.cmdline().to_str().ok())
        .unwrap_or("");
    // Base revision 3 reports the RSDP's physical address.
    let rsdp = RSDP.get_response().map(|r| r.address() as u64);

    let (virt_start, len) = super::kernel_extent();
    let raw = RawBootInfo {
        loader: Loader::Limine,
        hhdm_offset,
        kernel: KernelImage {
            phys_start: address.physical_base(),
            virt_start: address.virtual_base(),
            len: len + (virt_start - address.virtual_base()),
        },
        memory: &memory,
        modules: &modules,
        cmdline,
        rsdp,
        boot_data: &[],
    };
    crate::kernel_main(&raw)
}
