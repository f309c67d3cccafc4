//! The MMU service's side of a shadow-paged VM: its pool (allocated here, registered with the
//! kernel), guest RAM mapped here, the shadow MMU over both, and the per-vCPU state.

use abi::cpu::cr0::PE as CR0_PE;
use abi::vmx::{field, group, reason, ExitMessage, ExitReply};
use abi::{CapSlot, Rights};
use mmu_service::ept::{RealModeAccess, RealModeEpt};
use mmu_service::shadow_exit::{self, handle_exit, MoreState, ShadowVcpu, Stop};
use mmu_service::{GuestMemory, MemoryError, MmuConfig, ShadowPagePool};
use userlib::proto::mmu::{MmuError, ShadowParams, ShadowStats};
use userlib::proto::stop_code;
use userlib::sys::{self, Mapping};

/// vCPUs per VM this service tracks (the index in the vCPU id).
pub const MAX_VCPUS: usize = 8;
/// Where VM `handle`'s pool and RAM are mapped in this task (64 GiB apart each).
const POOL_VA: u64 = 0x0000_1000_0000_0000;
const RAM_VA: u64 = 0x0000_2000_0000_0000;
const VA_STRIDE: u64 = 1 << 36;
const PAGE: u64 = 4096;

fn kernel(e: abi::Error) -> MmuError {
    MmuError::Kernel { error: e as u64 }
}

/// Guest RAM, mapped in this task, and what the VM's EPT maps of it (its vCPUs in real mode
/// run on the EPT).
pub struct GuestRam {
    map: Mapping,
    phys: u64,
    pages: u64,
    vm: CapSlot,
    ept: RealModeEpt,
}

impl GuestRam {
    /// Unmaps every page the EPT has.
    fn unmap_ept(&mut self) {
        for (gfn, _) in self.ept.take_all() {
            if let Err(e) = sys::vm_unmap(self.vm, gfn * PAGE, 1) {
                userlib::println!("mmu: unmapping gfn {gfn:#x} from the EPT failed: {e:?}");
            }
        }
    }
}

impl GuestMemory for GuestRam {
    fn ram_pages(&self) -> u64 {
        self.pages
    }
    fn gfn_to_hpa(&self, gfn: u64) -> Option<u64> {
        (gfn < self.pages).then(|| self.phys + gfn * PAGE)
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let piece = usize::try_from(gpa)
            .ok()
            .and_then(|s| self.map.bytes().get(s..s.checked_add(buf.len())?));
        buf.copy_from_slice(piece.ok_or(MemoryError { gpa })?);
        Ok(())
    }
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        crate::recover::on_guest_write();
        let piece = usize::try_from(gpa)
            .ok()
            .and_then(|s| self.map.bytes_mut().get_mut(s..s.checked_add(data.len())?));
        piece.ok_or(MemoryError { gpa })?.copy_from_slice(data);
        Ok(())
    }
    fn write_protect(&mut self, gfn: u64) {
        if self.ept.write_protect(gfn) {
            if let Err(e) = sys::vm_unmap(self.vm, gfn * PAGE, 1) {
                userlib::println!("mmu: unmapping gfn {gfn:#x} from the EPT failed: {e:?}");
            }
        }
    }
}

/// The shadow page pool, mapped in this task.
pub struct Pool {
    map: Mapping,
    phys: u64,
    frames: usize,
}

impl ShadowPagePool for Pool {
    fn frame_count(&self) -> usize {
        self.frames
    }
    fn frame_hpa(&self, frame: usize) -> u64 {
        self.phys + frame as u64 * PAGE
    }
    fn read_entry(&self, frame: usize, index: usize) -> u64 {
        let at = frame * 4096 + index * 8;
        self.map
            .bytes()
            .get(at..at + 8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }
    fn write_entry(&mut self, frame: usize, index: usize, value: u64) {
        crate::recover::on_spte_write();
        let at = frame * 4096 + index * 8;
        if let Some(b) = self.map.bytes_mut().get_mut(at..at + 8) {
            b.copy_from_slice(&value.to_le_bytes());
        }
    }
    fn zero_frame(&mut self, frame: usize) {
        let at = frame * 4096;
        if let Some(b) = self.map.bytes_mut().get_mut(at..at + 4096) {
            b.fill(0);
        }
    }
}

type ShadowMmu = mmu_service::Mmu<GuestRam, Pool>;

pub struct ShadowVm {
    handle: u32,
    vm: CapSlot,
    params: ShadowParams,
    pool_cap: CapSlot,
    /// The pool until RAM is granted; then both live in the MMU.
    pool: Option<Pool>,
    ram_cap: Option<CapSlot>,
    mmu: Option<ShadowMmu>,
    vcpus: [ShadowVcpu; MAX_VCPUS],
    /// Read-only vCPU capabilities (`AttachVcpu`), for the registers of emulated writes.
    vcpu_caps: [Option<CapSlot>; MAX_VCPUS],
}

/// Reads a vCPU's registers and segments when a write must be emulated.
struct VcpuRegs(Option<CapSlot>);

/// The general-purpose registers, then for CS, SS, DS, ES, FS, GS (the message's order)
/// access rights and base.
const SEGMENT_VMCS_INDEX: [u64; 6] = [1, 2, 3, 0, 4, 5];

impl MoreState for VcpuRegs {
    fn limits(&mut self) -> vmm_service::cr::Limits {
        let host = |leaf, sub| {
            let r = core::arch::x86_64::__cpuid_count(leaf, sub);
            [r.eax, r.ebx, r.ecx, r.edx]
        };
        vmm_service::cr::Limits {
            cr4_unoffered: vmm_service::cr::cr4_reserved(host),
            maxphyaddr: vmm_service::cpuid::paging_features(host).0,
        }
    }

    fn fill(&mut self, m: &mut ExitMessage) -> bool {
        let Some(cap) = self.0 else {
            return false;
        };
        let mut fields = [0u64; 28];
        for (n, f) in fields.iter_mut().take(16).enumerate() {
            *f = field::GPR_BASE + n as u64;
        }
        for (i, n) in SEGMENT_VMCS_INDEX.iter().enumerate() {
            fields[16 + 2 * i] = field::GUEST_ES_AR + 2 * n;
            fields[17 + 2 * i] = field::GUEST_ES_BASE + 2 * n;
        }
        let mut values = [0u64; 28];
        if sys::vcpu_read(cap, &fields[..28], &mut values).is_err() {
            return false;
        }
        m.gprs.copy_from_slice(&values[..16]);
        for i in 0..6 {
            m.segments[i].access_rights = values[16 + 2 * i] as u32;
            m.segments[i].base = values[17 + 2 * i];
        }
        m.mask |= group::GPRS | group::SEGS;
        true
    }
}

impl ShadowVm {
    /// Allocates VM `handle`'s pool, maps it, and registers it with the kernel for `vm`, with
    /// `own_ep` as the endpoint that sets roots.
    pub fn new(
        handle: u32,
        vm: CapSlot,
        own_ep: CapSlot,
        params: ShadowParams,
    ) -> Result<ShadowVm, MmuError> {
        if params.prev_roots > 30
            || params.pool_pages < 16
            || !(32..=52).contains(&params.maxphyaddr)
        {
            return Err(MmuError::NotShadow);
        }
        let pool_cap = sys::mem_alloc(u64::from(params.pool_pages)).map_err(kernel)?;
        ShadowVm::with_pool(handle, vm, own_ep, params, pool_cap).inspect_err(|_| {
            let _ = sys::cap_delete(pool_cap);
        })
    }

    /// A restarted service takes VM `handle` back with the pool its predecessor kept and
    /// registers it again, which puts every vCPU of the VM on its empty root. Nothing the
    /// dead instance wrote is trusted: the new shadow MMU starts with every frame free and
    /// zeroes each one it takes.
    pub fn recover(
        handle: u32,
        vm: CapSlot,
        own_ep: CapSlot,
        params: ShadowParams,
        pool_cap: CapSlot,
    ) -> Result<ShadowVm, MmuError> {
        ShadowVm::with_pool(handle, vm, own_ep, params, pool_cap)
    }

    fn with_pool(
        handle: u32,
        vm: CapSlot,
        own_ep: CapSlot,
        params: ShadowParams,
        pool_cap: CapSlot,
    ) -> Result<ShadowVm, MmuError> {
        let made = (|| {
            let (pages, phys) = sys::mem_info(pool_cap)?;
            // A recovered pool is not zeroed as a whole: the shadow MMU zeroes every frame
            // when it takes it, and registering again (below) left no root in it.
            let map = Mapping::new(pool_cap, POOL_VA + u64::from(handle) * VA_STRIDE)?;
            sys::vm_set_shadow(vm, pool_cap, own_ep)?;
            Ok(Pool {
                map,
                phys,
                frames: pages as usize,
            })
        })();
        let pool = made.map_err(kernel)?;
        Ok(ShadowVm {
            handle,
            vm,
            params,
            pool_cap,
            pool: Some(pool),
            ram_cap: None,
            mmu: None,
            vcpus: Default::default(),
            vcpu_caps: [None; MAX_VCPUS],
        })
    }

    pub fn params(&self) -> ShadowParams {
        self.params
    }

    pub fn pool_cap(&self) -> CapSlot {
        self.pool_cap
    }

    /// Whether its RAM was granted (the shadow MMU is built).
    pub fn has_ram(&self) -> bool {
        self.mmu.is_some()
    }

    /// Maps guest RAM and builds the shadow MMU.
    pub fn grant_ram(&mut self, ram: CapSlot) -> Result<(), MmuError> {
        if self.mmu.is_some() {
            let _ = sys::cap_delete(ram);
            return Err(MmuError::NotShadow);
        }
        let built = (|| {
            let (pages, phys) = sys::mem_info(ram).map_err(kernel)?;
            let va = RAM_VA + u64::from(self.handle) * VA_STRIDE;
            let map = Mapping::new(ram, va).map_err(kernel)?;
            let pool = self.pool.take().ok_or(MmuError::NotShadow)?;
            let config = MmuConfig {
                prev_roots: usize::from(self.params.prev_roots),
                cache_pae_roots: !self.params.kvm_policy,
                maxphyaddr: self.params.maxphyaddr,
                gbpages: self.params.gbpages,
                ..MmuConfig::default()
            };
            // A restarted service does not know what its predecessor mapped in the EPT.
            let _ = sys::vm_unmap(self.vm, 0, pages);
            let mem = GuestRam {
                map,
                phys,
                pages,
                vm: self.vm,
                ept: RealModeEpt::default(),
            };
            mmu_service::Mmu::new(mem, pool, config).map_err(|_| MmuError::NoMemory)
        })();
        match built {
            Ok(mmu) => {
                self.mmu = Some(mmu);
                self.ram_cap = Some(ram);
                Ok(())
            }
            Err(e) => {
                let _ = sys::cap_delete(ram);
                Err(e)
            }
        }
    }

    /// Takes a read-only capability to vCPU `index` (a second one replaces the first).
    pub fn attach_vcpu(&mut self, index: u16, cap: CapSlot) -> Result<(), MmuError> {
        let Some(slot) = self.vcpu_caps.get_mut(usize::from(index)) else {
            let _ = sys::cap_delete(cap);
            return Err(MmuError::NotShadow);
        };
        if let Some(old) = slot.replace(cap) {
            let _ = sys::cap_delete(old);
        }
        Ok(())
    }

    /// An exit of one of the VM's vCPUs: the reply, or the code to stop the VM with. With
    /// `quiet`, a stop for an access outside RAM is not printed (see `quiet` in main.rs).
    pub fn on_exit(&mut self, m: &ExitMessage, quiet: bool) -> Result<ExitReply, u64> {
        let Some(mmu) = self.mmu.as_mut() else {
            userlib::println!(
                "mmu: shadow VM {} runs before its RAM was granted; stopping it",
                self.handle
            );
            return Err(stop_code::MMU_ERROR);
        };
        let index = (m.vcpu & 0xffff) as usize;
        let Some(sv) = self.vcpus.get_mut(index) else {
            userlib::println!("mmu: vCPU index {index} out of range; stopping the VM");
            return Err(stop_code::MMU_ERROR);
        };
        if m.basic_reason() == reason::EPT_VIOLATION {
            return real_mode_violation(mmu, m, quiet);
        }
        let was_real_mode = m.cr0_shadow & CR0_PE == 0;
        let mut regs = VcpuRegs(self.vcpu_caps[index]);
        let r = handle_exit(mmu, sv, m, &mut regs).map_err(|stop| report(m, &stop, quiet))?;
        if was_real_mode && sv.regs.cr0 & CR0_PE != 0 {
            // A vCPU left real mode: the EPT goes back to empty (another vCPU still in real
            // mode maps its pages again).
            mmu.mem_mut().unmap_ept();
        }
        Ok(r)
    }

    pub fn stats(&self) -> ShadowStats {
        let Some(mmu) = self.mmu.as_ref() else {
            return ShadowStats::default();
        };
        let s = mmu.stats();
        ShadowStats {
            faults: s.faults_handled,
            faults_fixed: s.faults_fixed,
            pf_injected: s.pf_injected,
            emulated_writes: s.emulate_writes,
            zaps: s.zaps,
            cr3_loads: self.vcpus.iter().map(|v| v.cr3_loads).sum(),
            invlpg: s.invlpg,
            prev_roots_hits: s.prev_roots_hits,
            prev_roots_misses: s.prev_roots_misses,
            pool_used: s.pool_used as u32,
            pool_pages: s.pool_frames as u32,
        }
    }
}

impl Drop for ShadowVm {
    fn drop(&mut self) {
        // Unmap (the MMU owns the mappings) before the capabilities go.
        self.mmu = None;
        self.pool = None;
        if let Some(ram) = self.ram_cap.take() {
            let _ = sys::cap_delete(ram);
        }
        for cap in self.vcpu_caps.iter_mut().filter_map(Option::take) {
            let _ = sys::cap_delete(cap);
        }
        let _ = sys::cap_delete(self.pool_cap);
    }
}

/// An EPT violation of a vCPU in real mode (see [`RealModeEpt`]).
fn real_mode_violation(
    mmu: &mut ShadowMmu,
    m: &ExitMessage,
    quiet: bool,
) -> Result<ExitReply, u64> {
    let (write, fetch) = (m.qualification & 2 != 0, m.qualification & 4 != 0);
    match mmu.real_mode_violation(m.gpa, write) {
        RealModeAccess::OutsideRam { gpa } if !fetch => Ok(shadow_exit::forward(gpa)),
        RealModeAccess::OutsideRam { gpa } => Err(report(m, &Stop::OutsideRam { gpa }, quiet)),
        RealModeAccess::Map { gfn, writable, .. } => {
            let ram = mmu.mem_mut();
            if !ram.ept.mapped(gfn, writable) {
                ram.unmap_ept();
                ram.ept.mapped(gfn, writable);
            }
            let mut rights = Rights::READ | Rights::EXEC;
            if writable {
                rights |= Rights::WRITE;
            }
            match sys::vm_map_ram(ram.vm, gfn * PAGE, 1, rights) {
                Ok(()) => Ok(ExitReply::resume()),
                Err(e) => {
                    userlib::println!(
                        "mmu: mapping gfn {gfn:#x} in the EPT failed: {e:?}; stopping the VM"
                    );
                    Err(stop_code::MMU_ERROR)
                }
            }
        }
    }
}

/// Prints why the VM stops and returns the stop code.
fn report(m: &ExitMessage, stop: &Stop, quiet: bool) -> u64 {
    match stop {
        Stop::OutsideRam { gpa } => {
            if !quiet {
                userlib::println!(
                "mmu: guest access at gpa {gpa:#x} outside RAM and outside any device (shadow paging), rip {:#x}: stopping the VM",
                m.rip
            );
            }
            stop_code::outside_ram(*gpa)
        }
        Stop::Unemulated { rip, bytes, error } => {
            userlib::println!(
                "mmu: cannot emulate the write to a guest page table at rip {rip:#x} ({error:?}); bytes {bytes:02x?}: stopping the VM"
            );
            stop_code::UNEMULATED
        }
        Stop::Mmu(e) => {
            userlib::println!(
                "mmu: shadow MMU error {e:?} (exit reason {}, rip {:#x}): stopping the VM",
                m.reason,
                m.rip
            );
            stop_code::MMU_ERROR
        }
        Stop::NoRegisters => {
            userlib::println!(
                "mmu: a page-table write to emulate at rip {:#x}, and the vCPU's registers cannot be read (no AttachVcpu?): stopping the VM",
                m.rip
            );
            stop_code::MMU_ERROR
        }
        Stop::TripleFault => {
            userlib::println!(
                "mmu: a page fault while the guest delivered a double fault (rip {:#x}): triple fault, stopping the VM",
                m.rip
            );
            vmm_service::vm::stop_code::TRIPLE_FAULT
        }
        Stop::Unexpected { reason } => {
            userlib::println!(
                "mmu: unexpected exit (reason {reason:#x}, qualification {:#x}, rip {:#x}) for a shadow VM: stopping it",
                m.qualification,
                m.rip
            );
            stop_code::MMU_ERROR
        }
    }
}
