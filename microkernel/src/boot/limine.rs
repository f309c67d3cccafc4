//! The Limine protocol entry. Limine loads the kernel at its linked virtual addresses,
//! provides a direct map (HHDM) and answers the requests below; `limine_start` switches to the
//! kernel's boot stack and calls `limine_main`.
//!
//! The tag asks for base revision 3; a loader that does not support it (Limine 8.x implements
//! 0..=2) boots the kernel with one it does and says so. What differs between revisions is
//! decided in `microkernel::limine_protocol` (host-tested): the HHDM's coverage at entry and
//! whether the RSDP pointer is physical. The framebuffer, when there is one, carries a copy of
//! the console from the first line on.
use core::arch::global_asm;
use heapless::Vec;
use limine::framebuffer::MemoryModel;
use limine::memory_map::EntryType;
use limine::request::{
    ExecutableAddressRequest, ExecutableCmdlineRequest, ExecutableFileRequest, FramebufferRequest,
    HhdmRequest, MemoryMapRequest, ModuleRequest, RequestsEndMarker, RequestsStartMarker,
    RsdpRequest,
};
use limine::BaseRevision;
use microkernel::bootinfo::{KernelImage, Loader, RawBootInfo, MAX_MODULES};
use microkernel::fbtext::Geometry;
use microkernel::limine_protocol::{self, BaseRevision as Revision, REQUESTED_BASE_REVISION};
use microkernel::memmap::{Region, MAX_REGIONS};

#[used]
#[link_section = ".limine_requests_start"]
static REQUESTS_START: RequestsStartMarker = RequestsStartMarker::new();
#[used]
#[link_section = ".limine_requests"]
static BASE_REVISION: BaseRevision = BaseRevision::with_revision(REQUESTED_BASE_REVISION);
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
/// The executable file: its `string` is the command line for loaders that predate the
/// executable command line request (Limine 8.x).
#[used]
#[link_section = ".limine_requests"]
static EXECUTABLE_FILE: ExecutableFileRequest = ExecutableFileRequest::new();
#[used]
#[link_section = ".limine_requests"]
static FRAMEBUFFER: FramebufferRequest = FramebufferRequest::new();
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

/// The protocol's number for a memory map entry type (the crate keeps it private); unknown
/// types become `u64::MAX`, which `limine_protocol::region_kind` treats as reserved.
fn entry_type_number(typ: EntryType) -> u64 {
    use limine_protocol::entry_type as n;
    match typ {
        EntryType::USABLE => n::USABLE,
        EntryType::RESERVED => n::RESERVED,
        EntryType::ACPI_RECLAIMABLE => n::ACPI_RECLAIMABLE,
        EntryType::ACPI_NVS => n::ACPI_NVS,
        EntryType::BAD_MEMORY => n::BAD_MEMORY,
        EntryType::BOOTLOADER_RECLAIMABLE => n::BOOTLOADER_RECLAIMABLE,
        EntryType::EXECUTABLE_AND_MODULES => n::EXECUTABLE_AND_MODULES,
        EntryType::FRAMEBUFFER => n::FRAMEBUFFER,
        _ => u64::MAX,
    }
}

/// Puts the console on the first framebuffer, if the loader set one up, it is RGB and the
/// loader's direct map covers it. Returns a note for the log.
fn attach_screen(rev: Revision, hhdm_offset: u64, raw_map: &[Region]) -> Option<&'static str> {
    let response = FRAMEBUFFER.get_response()?;
    let fb = response.framebuffers().next()?;
    if fb.memory_model() != MemoryModel::RGB {
        return Some("framebuffer: not RGB, not used");
    }
    let geometry = Geometry {
        width: fb.width() as usize,
        height: fb.height() as usize,
        pitch: fb.pitch() as usize,
        bits_per_pixel: fb.bpp(),
        red: (fb.red_mask_size(), fb.red_mask_shift()),
        green: (fb.green_mask_size(), fb.green_mask_shift()),
        blue: (fb.blue_mask_size(), fb.blue_mask_shift()),
    };
    let Some(len) = fb.pitch().checked_mul(fb.height()) else {
        return Some("framebuffer: size overflows, not used");
    };
    let virt = fb.addr() as u64;
    let Some(phys) = virt.checked_sub(hhdm_offset) else {
        return Some("framebuffer: address outside the direct map, not used");
    };
    if !limine_protocol::hhdm_covers(rev, raw_map, phys, phys.saturating_add(len)) {
        return Some("framebuffer: not covered by the loader's direct map, not used");
    }
    // SAFETY: the loader reports `[phys, phys + len)` as the framebuffer and its direct map
    // covers it (checked above); nothing else in the kernel refers to this memory, and the
    // kernel's own page tables keep the direct map (at the same offset) over every memory map
    // entry, the framebuffer's included.
    let pixels = unsafe { core::slice::from_raw_parts_mut(virt as *mut u8, len as usize) };
    match crate::console::attach_framebuffer(geometry, pixels) {
        Ok(()) => None,
        Err(_) => Some("framebuffer: layout not supported, not used"),
    }
}

#[no_mangle]
extern "C" fn limine_main() -> ! {
    let rev = Revision::resolve(
        REQUESTED_BASE_REVISION,
        BASE_REVISION.is_supported(),
        BASE_REVISION.loaded_revision(),
    );
    let hhdm_offset = HHDM.get_response().map(|h| h.offset());
    let mut raw_map: Vec<Region, MAX_REGIONS> = Vec::new();
    if let Some(map) = MEMORY_MAP.get_response() {
        let entries = map
            .entries()
            .iter()
            .map(|e| (e.base, e.length, entry_type_number(e.entry_type)));
        for region in limine_protocol::regions(entries) {
            if raw_map.push(region).is_err() {
                break;
            }
        }
    }
    // The screen first, so it shows every line (a failure to attach is reported below).
    let screen_note = match (rev, hhdm_offset) {
        (Ok(rev), Some(offset)) => attach_screen(rev, offset, &raw_map),
        _ => None,
    };
    crate::early_init();
    let rev = match rev {
        Ok(rev) => rev,
        Err(e) => crate::fatal(format_args!("limine: unusable base revision tag: {e:?}")),
    };
    crate::log!(info, "boot", "limine: {rev}");
    if let Some(note) = screen_note {
        crate::log!(warn, "boot", "{note}");
    }
    if let Some((cols, rows)) = crate::console::screen_size() {
        crate::log!(
            info,
            "boot",
            "console on the framebuffer too ({cols}x{rows} characters)"
        );
    }
    let (Some(hhdm_offset), Some(map), Some(address)) = (
        hhdm_offset,
        MEMORY_MAP.get_response(),
        EXECUTABLE_ADDRESS.get_response(),
    ) else {
        crate::fatal(format_args!(
            "limine: no HHDM, memory map or executable address"
        ));
    };
    if raw_map.len() < map.entries().len() {
        crate::log!(
            warn,
            "boot",
            "memory map truncated at {MAX_REGIONS} entries"
        );
    }
    let memory = super::collect_regions(raw_map.iter().copied());

    let mut modules: Vec<(u64, u64, &str), { MAX_MODULES * 4 }> = Vec::new();
    if let Some(response) = MODULES.get_response() {
        for file in response.modules() {
            let phys = (file.addr() as u64).wrapping_sub(hhdm_offset);
            let cmdline = file.string().to_str().unwrap_or("");
            let _ = modules.push((phys, file.size(), cmdline));
        }
    }
    // The executable command line request (newer loaders), else the executable file's string.
    let cmdline = CMDLINE
        .get_response()
        .map(|r| r.cmdline())
        .or_else(|| EXECUTABLE_FILE.get_response().map(|r| r.file().string()))
        .and_then(|c| c.to_str().ok())
        .unwrap_or("");
    let rsdp = RSDP.get_response().and_then(|r| {
        let phys = limine_protocol::rsdp_physical(rev, r.address() as u64, hhdm_offset);
        if phys.is_none() {
            crate::log!(
                warn,
                "boot",
                "limine: RSDP pointer {:#x} is not in the HHDM",
                r.address()
            );
        }
        phys
    });

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
