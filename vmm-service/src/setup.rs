//! `RunVm`: check the configuration, load the image into fresh guest RAM, create the VM and
//! its vCPU, hand the VM to the MMU service, set the portals and the entry state, run it, and
//! report how it ended.
//!
//! A reset of the guest restarts it up to `max_resets` times ([`vmm_service::reboot`]): the
//! VM, its vCPUs and its MMU state are made again on the same RAM ([`Prepared::into_ram`],
//! [`prepare_on`]), so every vCPU starts from the kernel's power-on state and the entry
//! state the loader gives, exactly as at the first start, and no shadow page or EPT entry of
//! the last boot survives (the loader writes RAM behind the MMU service's back: a shadow page
//! kept across it could map what the guest's tables no longer say).

use abi::vmx::{field, group, reason, stop, vm_flags, EXIT_REASONS};
use abi::{CapSlot, Error};
use heapless::Vec;
use userlib::proto::mmu::{self, Mmu};
use userlib::proto::stop_code;
use userlib::proto::vmm::{
    ConfigError, EntryMode, MmuMode, Response, VmConfig, VmResult, VmSummary, VmmError,
    CMDLINE_MAX, MAX_PREV_ROOTS, MAX_VCPUS, POOL_MAX_PAGES, POOL_MIN_PAGES, RAM_MAX_MIB,
    RAM_MIN_MIB, SUMMARY_REASONS,
};
use userlib::sys;
use vmm_service::loader::{self, entry, flat64, info, linux, multiboot, LoadError, LoadPlan};
use vmm_service::vm::VmModel;

use crate::exit_thread::{self, Outcome as RunOutcome};

/// Where guest RAM is mapped in this task while an image is loaded.
pub const RAM_VA: u64 = 0x4000_0000;
const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;
/// Where the guest image (read from its boot module into a memory object of its own, freed
/// when loaded) is mapped while it is loaded: after the largest RAM's window.
const IMAGE_VA: u64 = RAM_VA + RAM_MAX_MIB as u64 * MIB;
/// Where a running VM's RAM stays mapped for its exit handling (emulated MMIO instructions,
/// hypercall buffers): mapping it for each access cost about 1.9 million cycles in Bochs.
pub const RUN_RAM_VA: u64 = 0x10_0000_0000;

pub fn kernel(e: Error) -> VmmError {
    VmmError::Kernel { error: e as u64 }
}

/// A short code for a loader error (the `what` of [`VmmError::BadImage`]).
fn bad_image(e: LoadError) -> VmmError {
    userlib::println!("vmm: image refused: {e:?}");
    let what = match e {
        LoadError::NoHeader => 1,
        LoadError::BadChecksum => 2,
        LoadError::UnsupportedFlags(_) => 3,
        LoadError::BadElf(_) => 4,
        LoadError::Truncated => 5,
        LoadError::SegmentOutsideRam { .. } => 6,
        LoadError::SegmentInReservedArea { .. } => 7,
        LoadError::Overlap => 8,
        LoadError::EntryOutsideImage => 9,
        LoadError::TooManySegments => 10,
        LoadError::NoSegments => 11,
        LoadError::BadAoutKludge => 12,
        LoadError::FileLargerThanMemory => 13,
        LoadError::RamTooSmall => 14,
        LoadError::BadCmdline => 15,
        LoadError::InfoDoesNotFit => 16,
        LoadError::ImageLargerThanRam => 17,
        LoadError::BadCpuCount => 18,
        LoadError::BadLinux(_) => 19,
    };
    VmmError::BadImage { what }
}

pub fn validate(cfg: &VmConfig) -> Result<(), ConfigError> {
    if cfg.name.is_empty() {
        return Err(ConfigError::EmptyName);
    }
    if !(RAM_MIN_MIB..=RAM_MAX_MIB).contains(&cfg.ram_mib) {
        return Err(ConfigError::RamSize);
    }
    if cfg.vcpus == 0 || cfg.vcpus > MAX_VCPUS {
        return Err(ConfigError::VcpuCount);
    }
    if let MmuMode::Shadow(s) = cfg.mmu {
        if s.prev_roots > MAX_PREV_ROOTS
            || !(POOL_MIN_PAGES..=POOL_MAX_PAGES).contains(&s.pool_pages)
        {
            return Err(ConfigError::ShadowConfig);
        }
    }
    if !cfg.initrd.is_empty() && cfg.entry != EntryMode::Linux {
        return Err(ConfigError::InitrdNotLinux);
    }
    if let EntryMode::Flat64 { load_gpa } = cfg.entry {
        let ram = u64::from(cfg.ram_mib) * MIB;
        if load_gpa % (2 * MIB) != 0 || load_gpa < MIB || load_gpa >= ram {
            return Err(ConfigError::LoadAddress);
        }
    }
    Ok(())
}

/// The boot module whose command line starts with `name` (a path's last part counts):
/// (index, size).
fn find_module(name: &str) -> Result<(u64, u64), VmmError> {
    let mut buf = [0u8; abi::MODULE_CMDLINE_MAX];
    let count = sys::module_info(crate::boot(), 0, &mut buf)
        .map_err(kernel)?
        .count;
    for i in 0..count {
        let info = sys::module_info(crate::boot(), i, &mut buf).map_err(kernel)?;
        let line = core::str::from_utf8(&buf[..info.name_len.min(buf.len())]).unwrap_or("");
        let first = line.split_ascii_whitespace().next().unwrap_or("");
        if first.rsplit('/').next() == Some(name) {
            return Ok((i, info.size));
        }
    }
    Err(VmmError::NoSuchModule)
}

/// Capabilities deleted when a run ends, however it ends.
struct Held(Vec<CapSlot, { 4 + MAX_VCPUS as usize }>);

impl Drop for Held {
    fn drop(&mut self) {
        for &c in self.0.iter().rev() {
            let _ = sys::cap_delete(c);
        }
    }
}

impl Held {
    fn keep(&mut self, c: CapSlot) -> CapSlot {
        if self.0.push(c).is_err() {
            userlib::println!("vmm: internal: too many capabilities held");
        }
        c
    }
}

/// A VM created, loaded and handed to the MMU service, its vCPU in its entry state: what a
/// run needs. Dropping it detaches the VM from the MMU service, then deletes the vCPU, the VM
/// and its RAM.
pub struct Prepared {
    detach: Detach,
    _held: Held,
    pub vm: CapSlot,
    /// The bootstrap processor (`vcpus[0]`).
    pub vcpu: CapSlot,
    /// Every vCPU, by index.
    pub vcpus: Vec<CapSlot, { MAX_VCPUS as usize }>,
    pub ram: CapSlot,
    pub ram_bytes: u64,
    /// The entry point (the guest RIP of the entry state).
    pub entry: u64,
    shadow: bool,
}

impl Prepared {
    /// Deletes the VM (detached from the MMU service, its vCPUs and the VM deleted) but not
    /// its RAM, which is returned: for the next boot after a reset ([`prepare_on`]).
    pub fn into_ram(mut self) -> CapSlot {
        let ram = self.ram;
        self._held.0.retain(|&c| c != ram);
        drop(self);
        ram
    }

    /// The model of this VM's devices and CPU policy.
    pub fn model(&self, cfg: &VmConfig) -> VmModel {
        let mut model = VmModel::new(&cfg.name, self.ram_bytes).with_vcpus(usize::from(cfg.vcpus));
        // fw_cfg reports the VM's vCPU count, as the MADT does.
        model.bus.fw_cfg =
            vmm_service::devices::fw_cfg::FwCfg::new(self.ram_bytes, u16::from(cfg.vcpus));
        let model = if self.shadow {
            model.shadow_paged()
        } else {
            model
        };
        let model = if cfg.benchmark {
            model.with_benchmark_hypercalls()
        } else {
            model
        };
        // What the vCPU's controls let the guest execute: CPUID offers only that.
        let mut features = [0u64];
        let _ = sys::vcpu_read(self.vcpu, &[field::GUEST_FEATURES], &mut features);
        model.with_guest_features(features[0])
    }
}

/// Traces `vm` if `cfg` asks for it.
fn trace(cfg: &VmConfig, vm: &Prepared) -> Result<Option<crate::tracing::Tracing>, VmmError> {
    if cfg.trace {
        Ok(Some(crate::tracing::start(cfg.name.as_str(), vm.vm)?))
    } else {
        Ok(None)
    }
}

/// Runs a VM to its end, restarting it on a reset up to `cfg.max_resets` times.
pub fn run_vm(cfg: &VmConfig, exit_ep: CapSlot) -> Result<Response, VmmError> {
    let mut vm = prepare(cfg, exit_ep, &[])?;
    let mut tracing = trace(cfg, &vm)?;
    userlib::println!(
        "vmm: {}: starting {} ({} MiB RAM, {:?}, entry {:#x})",
        cfg.name.as_str(),
        cfg.module.as_str(),
        cfg.ram_mib,
        cfg.entry,
        vm.entry
    );
    let mut model = vm.model(cfg);
    let mut reboots = Reboots {
        resets: 0,
        exits: [0; EXIT_REASONS],
    };
    let (vcpu, stopped, outcome) = loop {
        exit_thread::begin_vcpus(model, &vm.vcpus, vm.ram, exit_ep);
        let run = sys::vcpu_run(vm.vcpu);
        crate::smp::finish();
        let mut outcome = exit_thread::end();
        // The BSP stopped because an application processor's stop ended the VM: that stop.
        let ended_by_ap = matches!(run, Ok(s) if crate::smp::kind_is(&s, stop_code::VM_ENDED));
        let (vcpu, run) = match outcome.ap_stop {
            Some((i, ap)) if ended_by_ap => (vm.vcpus[i], ap),
            _ => (vm.vcpu, run),
        };
        let stopped = run.map_err(kernel)?;
        let result = result_of(&stopped, &outcome);
        let Some(old) = outcome.model.take() else {
            break (vcpu, stopped, outcome);
        };
        if !vmm_service::reboot::restarts(&result, reboots.resets, cfg.max_resets) {
            break (vcpu, stopped, outcome);
        }
        reboots.resets += 1;
        let mut how: heapless::String<32> = heapless::String::new();
        let _ = match result {
            VmResult::Reset { port } => {
                core::fmt::Write::write_fmt(&mut how, format_args!("reset through port {port:#x}"))
            }
            _ => core::fmt::Write::write_str(&mut how, "triple fault"),
        };
        userlib::println!(
            "vmm: {}: {}: the VM restarts (reset {} of {} allowed)",
            cfg.name.as_str(),
            how.as_str(),
            reboots.resets,
            cfg.max_resets
        );
        add_exit_counts(&vm.vcpus, &mut reboots.exits);
        model = old;
        model.reset(exit_thread::device_ticks());
        // The trace of the last boot ends with its VM; the next boot's VM gets its own.
        drop(tracing.take());
        let ram = vm.into_ram();
        vm = prepare_on(cfg, exit_ep, &[], Some(ram))?;
        tracing = trace(cfg, &vm)?;
    };
    let mut summary = summarize_reboots(cfg, vcpu, &vm.vcpus, &stopped, outcome, &reboots);
    summary.trace = tracing.as_ref().map(|t| t.vm);
    // Stopped before the answer goes out: the trace service has every record of the run.
    drop(tracing);
    if vm.shadow {
        summary.shadow = shadow_stats(vm.detach.handle);
        if let Some(s) = &summary.shadow {
            print_shadow(cfg.name.as_str(), s);
        }
    }
    drop(vm);
    Ok(Response::Finished(summary))
}

/// Checks `cfg`, loads its image into fresh guest RAM, creates the VM and its vCPU, hands the
/// VM to the MMU service, points the portals and writes the entry state, then `extra` (more
/// (field, value) pairs: registers the guest reads at entry).
pub fn prepare(
    cfg: &VmConfig,
    exit_ep: CapSlot,
    extra: &[(u64, u64)],
) -> Result<Prepared, VmmError> {
    prepare_on(cfg, exit_ep, extra, None)
}

/// [`prepare`] on `ram` when given (the RAM of the VM `cfg` ran before, from
/// [`Prepared::into_ram`]: what the loader does not write keeps its contents, as in a warm
/// reset); it is the new VM's from now on, and deleted with it, or at once if this fails.
pub fn prepare_on(
    cfg: &VmConfig,
    exit_ep: CapSlot,
    extra: &[(u64, u64)],
    ram: Option<CapSlot>,
) -> Result<Prepared, VmmError> {
    let mut held = Held(Vec::new());
    if let Some(r) = ram {
        held.keep(r);
    }
    validate(cfg).map_err(VmmError::InvalidConfig)?;
    if usize::from(cfg.vcpus) > crate::smp::max_vcpus() {
        userlib::println!(
            "vmm: {} vCPUs asked for; runner threads for {} only",
            cfg.vcpus,
            crate::smp::max_vcpus()
        );
        return Err(VmmError::InvalidConfig(ConfigError::VcpuCount));
    }
    let (module, size) = find_module(&cfg.module)?;
    let ram_bytes = u64::from(cfg.ram_mib) * MIB;
    if size > ram_bytes {
        return Err(bad_image(LoadError::ImageLargerThanRam));
    }
    if size == 0 {
        return Err(bad_image(LoadError::Truncated));
    }
    // The guest's command line: the image's file name first, as a multiboot loader gives it
    // (a Linux kernel gets its command line alone).
    let mut cmdline: heapless::String<{ userlib::proto::vmm::MODULE_MAX + 1 + CMDLINE_MAX }> =
        heapless::String::new();
    if cfg.entry != EntryMode::Linux {
        let _ = cmdline.push_str(cfg.module.as_str());
    }
    if !cfg.cmdline.is_empty() {
        if !cmdline.is_empty() {
            let _ = cmdline.push(' ');
        }
        let _ = cmdline.push_str(cfg.cmdline.as_str());
    }
    let initrd = match cfg.initrd.as_str() {
        "" => None,
        name => Some(find_module(name)?),
    };
    let image_mem = sys::mem_alloc(size.div_ceil(PAGE)).map_err(kernel)?;
    let ram = match ram {
        Some(r) => r,
        None => held.keep(sys::mem_alloc(ram_bytes / PAGE).map_err(|e| {
            let _ = sys::cap_delete(image_mem);
            kernel(e)
        })?),
    };
    let loaded = sys::with_mapped(image_mem, IMAGE_VA, |image_buf| {
        load_image(
            cfg,
            (module, size),
            image_buf,
            ram,
            ram_bytes,
            cmdline.as_bytes(),
            initrd,
        )
    });
    // The image's memory is freed whatever happened; the guest's RAM holds what it needs.
    let _ = sys::cap_delete(image_mem);
    let (plan, pairs) = loaded.map_err(kernel)??;
    let (flags, shadow) = match cfg.mmu {
        MmuMode::Ept => (0, None),
        MmuMode::Shadow(s) => {
            let audit = if s.audit { vm_flags::AUDIT } else { 0 };
            // The MMU reads the guest's tables as its CPUID describes them.
            let (maxphyaddr, gbpages) = vmm_service::cpuid::paging_features(|l, s| {
                let r = core::arch::x86_64::__cpuid_count(l, s);
                [r.eax, r.ebx, r.ecx, r.edx]
            });
            let params = mmu::ShadowParams {
                prev_roots: s.prev_roots,
                pool_pages: s.pool_pages,
                kvm_policy: s.kvm_policy,
                maxphyaddr,
                gbpages,
            };
            (vm_flags::SHADOW | audit, Some(params))
        }
    };
    let vm = held.keep(
        sys::vm_create(ram, flags, crate::vmx()).map_err(|e| match e {
            Error::NoVmx => VmmError::NoVmx,
            e => kernel(e),
        })?,
    );
    // The VM's name for the MMU service: an attach retried after the service restarted
    // gets the same VM back (a TSC value is unique and never repeats on one machine).
    let key = sys::rdtsc();
    let handle = match mmu_call(
        &mmu::Request::AttachVm {
            key,
            ram_pages: ram_bytes / PAGE,
            shadow,
        },
        Some(vm),
    ) {
        Ok(r) => match r.response {
            mmu::Response::Attached { handle } => handle,
            other => {
                userlib::println!("vmm: the MMU service refused the VM: {other:?}");
                return Err(VmmError::Mmu);
            }
        },
        Err(e) => {
            userlib::println!("vmm: the MMU service is unreachable: {e:?}");
            return Err(VmmError::Mmu);
        }
    };
    let detach = Detach { handle };
    if shadow.is_some() {
        // The MMU service walks the guest's tables in its RAM.
        let granted = mmu_call(&mmu::Request::GrantRam { handle }, Some(ram));
        if !matches!(granted, Ok(ref r) if r.response == mmu::Response::RamGranted) {
            userlib::println!("vmm: the MMU service did not take the VM's RAM: {granted:?}");
            return Err(VmmError::Mmu);
        }
    }
    // The vCPU id names the VM to the MMU service: its handle there, then the vCPU index.
    let mut vcpus: Vec<CapSlot, { MAX_VCPUS as usize }> = Vec::new();
    for i in 0..cfg.vcpus {
        let vcpu_id = mmu::vcpu_id(handle, u16::from(i));
        let v = held.keep(sys::vcpu_create(vm, u64::from(vcpu_id)).map_err(kernel)?);
        let _ = vcpus.push(v);
        exit_thread::set_portals(v, exit_ep).map_err(kernel)?;
        if shadow.is_none() {
            for &(r, mask) in EPT_MMU_PORTALS {
                sys::vcpu_portal(v, r, Some(crate::mmu()), mask).map_err(kernel)?;
            }
        }
        if cfg.time_limit_ms != 0 {
            sys::vcpu_write(v, &[(field::RUN_TICKS, run_ticks(cfg)?)])
                .map_err(|(e, _)| kernel(e))?;
        }
    }
    let vcpu = vcpus[0];
    if shadow.is_some() {
        for (index, &v) in (0u16..).zip(vcpus.iter()) {
            // Read-only: the MMU service reads the registers of a page-table write it
            // emulates.
            let ro = sys::cap_copy(v, abi::Rights::READ, 0).map_err(kernel)?;
            let r = mmu_call(&mmu::Request::AttachVcpu { handle, index }, Some(ro));
            let _ = sys::cap_delete(ro);
            if !matches!(r, Ok(ref r) if r.response == mmu::Response::VcpuAttached) {
                userlib::println!("vmm: the MMU service did not take vCPU {index}: {r:?}");
                return Err(VmmError::Mmu);
            }
            // The exits of shadow paging (the VMM's CR-access portal is replaced: CR0/CR4/CR3
            // changes are paging changes there); an EPT VM's vCPUs got theirs above.
            for &(r, mask) in SHADOW_MMU_PORTALS {
                sys::vcpu_portal(v, r, Some(crate::mmu()), mask).map_err(kernel)?;
            }
        }
    }
    for chunk in pairs.chunks(32).chain(extra.chunks(32)) {
        sys::vcpu_write(vcpu, chunk).map_err(|(e, i)| {
            userlib::println!(
                "vmm: entry state refused at {:#x}: {e:?}",
                chunk[i.min(chunk.len() - 1)].0
            );
            kernel(e)
        })?;
    }
    Ok(Prepared {
        detach,
        _held: held,
        vm,
        vcpu,
        vcpus,
        ram,
        ram_bytes,
        entry: plan.entry,
        shadow: shadow.is_some(),
    })
}

/// A run's time limit in timer ticks, rounded up: a limit never ends a run early.
fn run_ticks(cfg: &VmConfig) -> Result<u64, VmmError> {
    let hz = sys::clock().map_err(kernel)?.1.max(1);
    Ok((u64::from(cfg.time_limit_ms) * hz).div_ceil(1000).max(1))
}

/// The reasons with the most exits, most first (ties by reason number), at most
/// [`SUMMARY_REASONS`].
fn top_reasons(counts: &[u64; EXIT_REASONS]) -> Vec<(u8, u32), SUMMARY_REASONS> {
    let mut sorted = [(0u8, 0u32); EXIT_REASONS];
    for (r, s) in sorted.iter_mut().enumerate() {
        *s = (r as u8, counts[r].min(u64::from(u32::MAX)) as u32);
    }
    sorted.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    sorted
        .iter()
        .copied()
        .filter(|(_, c)| *c > 0)
        .take(SUMMARY_REASONS)
        .collect()
}

/// Reads the image (`size` bytes of boot module `module`) into `image_buf`, plans its load
/// and loads it into `ram` with its boot information (a Linux guest's initramfs, boot module
/// and size in `initrd`, read straight into RAM): the load plan and the entry state.
fn load_image(
    cfg: &VmConfig,
    (module, size): (u64, u64),
    image_buf: &mut [u8],
    ram: CapSlot,
    ram_bytes: u64,
    cmdline: &[u8],
    initrd: Option<(u64, u64)>,
) -> Result<(LoadPlan, Vec<(u64, u64), 64>), VmmError> {
    let len = read_module(module, size, image_buf)?;
    let image = &image_buf[..len];
    let initrd_len = initrd.map_or(0, |(_, size)| size);
    let linux_plan = match cfg.entry {
        EntryMode::Linux => {
            Some(linux::plan(image, ram_bytes, initrd_len, cmdline.len()).map_err(bad_image)?)
        }
        _ => None,
    };
    let plan: LoadPlan = match (cfg.entry, &linux_plan) {
        (EntryMode::Multiboot, _) => multiboot::plan(image, ram_bytes),
        (EntryMode::Flat64 { load_gpa }, _) => flat64::flat64_plan(len, load_gpa, ram_bytes),
        (EntryMode::Linux, Some(p)) => Ok(p.load.clone()),
        (EntryMode::Linux, None) => Err(LoadError::NoSegments),
    }
    .map_err(bad_image)?;
    let pairs = sys::with_mapped(
        ram,
        RAM_VA,
        |ram| -> Result<Vec<(u64, u64), 64>, LoadError> {
            loader::load(&plan, image, ram)?;
            vmm_service::acpi::write_tables(ram, usize::from(cfg.vcpus))?;
            let mut v = Vec::new();
            match cfg.entry {
                EntryMode::Multiboot => {
                    let info = info::write_info(ram, info::INFO_GPA, cmdline)?;
                    let _ =
                        v.extend_from_slice(&entry::protected_mode_entry(plan.entry as u32, info));
                }
                EntryMode::Linux => {
                    let p = linux_plan.as_ref().ok_or(LoadError::NoSegments)?;
                    if let Some((module, size)) = initrd {
                        let at = p.initrd_gpa as usize;
                        let dst = ram
                            .get_mut(at..at + size as usize)
                            .ok_or(LoadError::RamTooSmall)?;
                        // A module that reads short would leave the kernel a damaged
                        // initramfs: refuse it instead.
                        if read_module(module, size, dst) != Ok(size as usize) {
                            return Err(LoadError::Truncated);
                        }
                    }
                    let _ = v.extend_from_slice(&linux::write_boot(p, image, ram, cmdline)?);
                }
                EntryMode::Flat64 { load_gpa } => {
                    flat64::write_tables(ram)?;
                    let gdtr = (flat64::GDT_GPA, (flat64::GDT.len() * 8 - 1) as u64);
                    let _ = v.extend_from_slice(&entry::long_mode_entry(
                        load_gpa,
                        flat64::STACK_TOP,
                        flat64::PML4_GPA,
                        gdtr,
                    ));
                }
            }
            Ok(v)
        },
    )
    .map_err(kernel)?
    .map_err(bad_image)?;
    Ok((plan, pairs))
}

/// Reads up to `size` bytes of boot module `module` into `buf`: the bytes read.
fn read_module(module: u64, size: u64, buf: &mut [u8]) -> Result<usize, VmmError> {
    let size = (size as usize).min(buf.len());
    let mut len = 0;
    while len < size {
        let n = sys::module_read(crate::boot(), module, len as u64, &mut buf[len..size])
            .map_err(kernel)?;
        if n == 0 {
            break;
        }
        len += n;
    }
    Ok(len)
}

/// The exits an EPT VM's MMU portals take (with the state groups they carry).
const EPT_MMU_PORTALS: &[(u32, u32)] = &[(
    reason::EPT_VIOLATION,
    group::QUAL | group::ADDR | group::RIP,
)];
/// The exits a shadow-paged VM's MMU portals take: the VMM's CR-access portal is replaced
/// (CR0/CR4/CR3 changes are paging changes there); registers and segments are read from the
/// vCPU for the rare emulated write.
const SHADOW_MMU_PORTALS: &[(u32, u32)] = &[
    (reason::EXCEPTION_NMI, group::QUAL | group::CRS | group::RIP),
    (
        reason::CR_ACCESS,
        group::QUAL | group::CRS | group::RIP | group::GPRS,
    ),
    (reason::INVLPG, group::QUAL | group::CRS | group::RIP),
    // A vCPU in real mode runs on the VM's EPT (the kernel's `kobj::shadow`).
    (
        reason::EPT_VIOLATION,
        group::QUAL | group::ADDR | group::CRS | group::RIP,
    ),
];

/// Whether exits of basic reason `r` go to the MMU service (in either mode).
pub(crate) fn mmu_reason(r: u32) -> bool {
    EPT_MMU_PORTALS
        .iter()
        .chain(SHADOW_MMU_PORTALS)
        .any(|&(p, _)| p == r)
}

/// A call to the MMU service, made again (up to three times) when the service restarted
/// during it: every request is idempotent (`AttachVm` by its key).
fn mmu_call(
    req: &mmu::Request,
    cap: Option<CapSlot>,
) -> Result<userlib::client::Reply<mmu::Response>, userlib::client::ClientError> {
    let mut mmu = userlib::ipc::client::<Mmu>(crate::mmu());
    let mut tries = 0;
    loop {
        match mmu.call_with_cap(req, cap) {
            Err(userlib::client::ClientError::ServerRestarted { generation }) if tries < 3 => {
                userlib::println!(
                    "vmm: the MMU service restarted (generation {generation}) during {req:?}; again"
                );
                tries += 1;
            }
            r => return r,
        }
    }
}

/// The MMU service's counters of a shadow-paged VM.
fn shadow_stats(handle: u32) -> Option<mmu::ShadowStats> {
    match mmu_call(&mmu::Request::Stats { handle }, None).map(|r| r.response) {
        Ok(mmu::Response::Stats { shadow, .. }) => shadow,
        _ => None,
    }
}

fn print_shadow(name: &str, s: &mmu::ShadowStats) {
    let modes = ["unpaged", "2-level", "pae", "4-level"];
    let mut line: heapless::String<200> = heapless::String::new();
    for (i, m) in modes.iter().enumerate() {
        let (h, x) = (s.prev_roots_hits[i], s.prev_roots_misses[i]);
        if h + x > 0 {
            let _ = core::fmt::Write::write_fmt(&mut line, format_args!(" {m}={h}/{}", h + x));
        }
    }
    userlib::println!(
        "vmm: {name}: shadow: {} faults ({} fixed), {} #PF injected, {} writes emulated, {} zaps, {} CR3 loads, {} invlpg, pool {}/{} pages",
        s.faults,
        s.faults_fixed,
        s.pf_injected,
        s.emulated_writes,
        s.zaps,
        s.cr3_loads,
        s.invlpg,
        s.pool_used,
        s.pool_pages
    );
    userlib::println!(
        "vmm: {name}: shadow: prev_roots hits/root loads by mode:{}",
        line.as_str()
    );
}

/// Tells the MMU service to forget the VM when the run ends.
struct Detach {
    handle: u32,
}

impl Drop for Detach {
    fn drop(&mut self) {
        let _ = mmu_call(
            &mmu::Request::DetachVm {
                handle: self.handle,
            },
            None,
        );
    }
}

/// The guest-physical page of a stop the MMU service made for an access outside RAM.
pub fn outside_ram(s: &sys::VcpuStop) -> Option<u64> {
    if s.stop & stop::KIND_MASK != stop::HANDLER {
        return None;
    }
    stop_code::outside_ram_gpa(s.stop & !stop::KIND_MASK)
}

/// How a run ended, from the kernel's stop and the model's conclusion.
pub fn result_of(s: &sys::VcpuStop, model: &RunOutcome) -> VmResult {
    let kind = s.stop & stop::KIND_MASK;
    if let Some(gpa) = outside_ram(s) {
        VmResult::OutsideRam { gpa }
    } else if kind == stop::HANDLER {
        model.result.unwrap_or(VmResult::Stopped { stop: s.stop })
    } else if kind == stop::UNHANDLED {
        VmResult::Unhandled {
            reason: s.reason as u32,
        }
    } else if kind == stop::TIME_LIMIT {
        VmResult::TimeLimit
    } else if kind == stop::ENTRY_FAILED {
        VmResult::EntryFailed {
            reason: s.reason as u32,
            error: s.qualification,
        }
    } else if s.stop == stop::PORTAL_GONE && mmu_reason(s.reason as u32) {
        VmResult::MmuGone {
            reason: s.reason as u32,
        }
    } else {
        VmResult::Stopped { stop: s.stop }
    }
}

/// The restarts of a VM so far and the exits of its boots before the running one.
struct Reboots {
    resets: u32,
    exits: [u64; EXIT_REASONS],
}

/// Adds the exits of every vCPU in `vcpus`, by reason, to `counts`.
fn add_exit_counts(vcpus: &[CapSlot], counts: &mut [u64; EXIT_REASONS]) {
    for &v in vcpus {
        for (r, c) in counts.iter_mut().enumerate() {
            let mut n = [0u64];
            let _ = sys::vcpu_read(v, &[field::EXIT_COUNT_BASE + r as u64], &mut n);
            *c += n[0];
        }
    }
}

/// How the VM ended, its exits by reason, printed and returned.
pub fn summarize(
    cfg: &VmConfig,
    vcpu: CapSlot,
    vcpus: &[CapSlot],
    s: &sys::VcpuStop,
    model: RunOutcome,
) -> VmSummary {
    let first = Reboots {
        resets: 0,
        exits: [0; EXIT_REASONS],
    };
    summarize_reboots(cfg, vcpu, vcpus, s, model, &first)
}

/// [`summarize`] for a VM that restarted: its exits are those of every boot.
fn summarize_reboots(
    cfg: &VmConfig,
    vcpu: CapSlot,
    vcpus: &[CapSlot],
    s: &sys::VcpuStop,
    model: RunOutcome,
    reboots: &Reboots,
) -> VmSummary {
    let kind = s.stop & stop::KIND_MASK;
    let result = result_of(s, &model);
    let mut rip = [0u64];
    let _ = sys::vcpu_read(vcpu, &[field::GUEST_RIP], &mut rip);
    if kind != stop::HANDLER {
        exit_thread::report_kernel_stop(cfg.name.as_str(), vcpu, s);
    }
    // The exits of every vCPU, of every boot.
    let mut counts = reboots.exits;
    add_exit_counts(vcpus, &mut counts);
    let total = counts.iter().sum();
    let exits = top_reasons(&counts);
    if vcpus.len() > 1 {
        userlib::println!("vmm: {}: {} vCPUs", cfg.name.as_str(), vcpus.len());
    }
    let summary = VmSummary {
        result,
        rip: rip[0],
        exits,
        total_exits: total,
        shadow: None,
        trace: None,
        resets: reboots.resets,
    };
    print_summary(cfg.name.as_str(), &summary);
    summary
}

fn print_summary(name: &str, s: &VmSummary) {
    userlib::println!("vmm: {name}: result {:?}, last rip {:#x}", s.result, s.rip);
    match s.result {
        VmResult::PoweredOff => {
            userlib::println!("vmm: {name}: powered off (ACPI S5 through PM1a_CNT)")
        }
        VmResult::Reset { port } => userlib::println!(
            "vmm: {name}: reset through port {port:#x}: not restarted ({} restarts allowed)",
            s.resets
        ),
        _ => {}
    }
    if s.resets > 0 {
        userlib::println!("vmm: {name}: {} resets restarted the VM", s.resets);
    }
    let mut line: heapless::String<200> = heapless::String::new();
    for (r, c) in &s.exits {
        let rname = reason::name(u32::from(*r)).unwrap_or("other");
        let _ = core::fmt::Write::write_fmt(&mut line, format_args!(" {rname}={c}"));
    }
    userlib::println!("vmm: {name}: {} exits:{}", s.total_exits, line.as_str());
}
