//! What the MMU service does with the exits of a shadow-paged vCPU: #PF, CR access and INVLPG
//! (the counterpart of [`crate::ept`] for EPT VMs).
//!
//! Every exit message carries the guest's view of its paging registers (the `CRS` group: the
//! kernel reports the read shadows of CR0/CR4 and the guest's own CR3 and EFER). The vCPU's
//! MMU state is synchronised with that view first, so a change the MMU service did not make
//! (the VMM's EFER write, say: the kernel then puts the vCPU on its empty root, and the next
//! access faults here) is seen before the exit is handled. Every reply names the root the
//! hardware must use (`SET_SHADOW_CR3`).

use abi::cpu::cr4;
use abi::cpu::rflags::AC as RFLAGS_AC;
use abi::vmx::{group, reason, reply, ExitMessage, ExitReply};
use vmm_service::cr;
use vmm_service::exception::{Injection, GP as GP_VECTOR};
use vmm_service::exit::{decode, Exit};

use crate::emulate::{self, AccessFault, CpuState, EmulateError, GuestAccess, MAX_INSN_LEN};
use crate::fault::FaultOutcome;
use crate::mmu::{Error, Mmu};
use crate::roots::Vcpu;
use crate::traits::{GuestMemory, PagingRegs, ShadowPagePool, PAGE_SIZE};
use crate::walker::{update_accessed_dirty, walk, AccessKind, WalkOutcome};

/// Vector of #PF.
const PF_VECTOR: u32 = vmm_service::exception::PF as u32;
/// Interruption info: valid, deliver error code.
const INTR_VALID: u32 = 1 << 31;
const INTR_ERROR_CODE: u32 = 1 << 11;
/// Segment access rights: L (64-bit code) and D/B.
const AR_L: u32 = 1 << 13;
const AR_DB: u32 = 1 << 14;

/// The MMU state of one vCPU as the service keeps it.
#[derive(Clone, Debug, Default)]
pub struct ShadowVcpu {
    /// Built at the vCPU's first exit.
    pub vcpu: Option<Vcpu>,
    /// The guest's paging registers the MMU state was last brought up to.
    pub regs: PagingRegs,
    /// CR3 loads handled.
    pub cr3_loads: u64,
    /// The root the last reply named. The kernel keeps it until the guest's paging state
    /// changes other than through this service (then it runs the vCPU on its empty root, and
    /// the next exit shows the new state): a reply names the root only when it changed.
    pub sent_root: Option<u64>,
}

/// Where the guest state an emulated page-table write needs comes from when the exit message
/// does not carry it: the #PF portal asks only for what every fault needs (qualification,
/// paging registers, RIP and RFLAGS); the registers and segments are read from the vCPU only
/// for the rare fault that is a write to emulate.
pub trait MoreState {
    /// Fills `m.gprs` and `m.segments` (the GPRS and SEGS groups) from the vCPU. Returns
    /// `false` if they cannot be read.
    fn fill(&mut self, m: &mut ExitMessage) -> bool;
    /// What the processor offers ([`cr::cr4_reserved`] of its CPUID, MAXPHYADDR): a guest's
    /// CR write beyond it is #GP, not a failed VM entry. By default only the architectural
    /// rules apply.
    fn limits(&mut self) -> cr::Limits {
        cr::Limits::NONE
    }
}

/// For messages that carry every group (and tests): nothing more to read.
pub struct InMessage;

impl MoreState for InMessage {
    fn fill(&mut self, _m: &mut ExitMessage) -> bool {
        false
    }
}

/// Why a VM is stopped instead of resumed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The guest accessed guest-physical `gpa`, which is neither RAM nor a device.
    OutsideRam { gpa: u64 },
    /// A write to a guest page table that could not be emulated.
    Unemulated {
        rip: u64,
        bytes: [u8; MAX_INSN_LEN],
        error: EmulateError,
    },
    /// The shadow MMU failed (pool exhausted, 5-level paging, an internal error).
    Mmu(Error),
    /// An exit this service does not take (a portal set up wrongly, a malformed message).
    Unexpected { reason: u32 },
    /// A write to emulate, and the vCPU's registers could not be read.
    NoRegisters,
    /// A #PF while the guest was delivering a double fault: the CPU would shut down.
    TripleFault,
}

fn view(m: &ExitMessage) -> PagingRegs {
    PagingRegs {
        cr0: m.cr0_shadow,
        cr3: m.cr3,
        cr4: m.cr4_shadow,
        efer: m.efer,
    }
}

/// Handles one exit of a shadow-paged vCPU.
pub fn handle_exit<M: GuestMemory, P: ShadowPagePool>(
    mmu: &mut Mmu<M, P>,
    sv: &mut ShadowVcpu,
    m: &ExitMessage,
    more: &mut impl MoreState,
) -> Result<ExitReply, Stop> {
    let regs = view(m);
    let vcpu = match &mut sv.vcpu {
        Some(v) => {
            if regs != sv.regs {
                sv.sent_root = None;
                mmu.set_paging_state(v, &regs).map_err(Stop::Mmu)?;
            }
            v
        }
        None => {
            let mut v = mmu.create_vcpu(&regs).map_err(Stop::Mmu)?;
            mmu.load_cr3(&mut v, &regs).map_err(Stop::Mmu)?;
            sv.vcpu.insert(v)
        }
    };
    sv.regs = regs;
    let mut r = match m.basic_reason() {
        reason::EXCEPTION_NMI if m.intr_info & 0xff == PF_VECTOR => page_fault(mmu, vcpu, m, more)?,
        reason::INVLPG => {
            mmu.invlpg(vcpu, m.qualification).map_err(Stop::Mmu)?;
            ExitReply::advance()
        }
        reason::CR_ACCESS => {
            let r = cr_access(mmu, vcpu, m, &more.limits())?;
            if r.flags & reply::SET_CR3 != 0 {
                sv.cr3_loads += 1;
            }
            let view = reply::SET_CR0 | reply::SET_CR3 | reply::SET_CR4 | reply::SET_EFER;
            if r.flags & view != 0 {
                // The kernel drops the root when the reply changes the view: name it again.
                sv.sent_root = None;
            }
            sv.regs = PagingRegs {
                cr0: if r.flags & reply::SET_CR0 != 0 {
                    r.cr0
                } else {
                    regs.cr0
                },
                cr3: if r.flags & reply::SET_CR3 != 0 {
                    r.cr3
                } else {
                    regs.cr3
                },
                cr4: if r.flags & reply::SET_CR4 != 0 {
                    r.cr4
                } else {
                    regs.cr4
                },
                efer: if r.flags & reply::SET_EFER != 0 {
                    r.efer
                } else {
                    regs.efer
                },
            };
            r
        }
        _ => return Err(Stop::Unexpected { reason: m.reason }),
    };
    // A forwarded exit carries nothing else (the kernel's rule): the root, if it changed,
    // goes with the next reply (`sent_root` stays as it was).
    if r.flags & (reply::STOP | reply::FORWARD) == 0 {
        let root = mmu.reload(vcpu).map_err(Stop::Mmu)?;
        if sv.sent_root != Some(root) {
            r.flags |= reply::SET_SHADOW_CR3;
            r.shadow_cr3 = root;
            sv.sent_root = Some(root);
        }
    }
    Ok(r)
}

/// The event whose delivery the exit interrupted, to deliver again (`None` if there was none).
fn vectoring_event(m: &ExitMessage) -> Option<u64> {
    let info = m.idt_vectoring_info;
    if info & INTR_VALID == 0 {
        return None;
    }
    let mut e = u64::from(info & 0x8000_0fff);
    if info & INTR_ERROR_CODE != 0 {
        e |= u64::from(m.idt_vectoring_error) << 32;
    }
    Some(e)
}

fn page_fault<M: GuestMemory, P: ShadowPagePool>(
    mmu: &mut Mmu<M, P>,
    vcpu: &mut Vcpu,
    m: &ExitMessage,
    more: &mut impl MoreState,
) -> Result<ExitReply, Stop> {
    let gva = m.qualification;
    let mut access = AccessKind::from_error_code(m.intr_error);
    // SMAP lets an explicit supervisor access through with EFLAGS.AC set. The error code's U/S
    // bit stands for CPL < 3 (the message has no segments); an implicit supervisor access at
    // CPL 3 with AC set is the one case this cannot tell apart.
    access.smap_allowed = !access.fetch && !access.user && m.rflags & RFLAGS_AC != 0;
    let outcome = match mmu.handle_access_fault(vcpu, gva, access) {
        Ok(o) => o,
        // The walk met a guest table outside RAM.
        Err(Error::GuestTableOutsideRam { gpa }) => return Err(Stop::OutsideRam { gpa }),
        Err(e) => return Err(Stop::Mmu(e)),
    };
    let mut r = ExitReply::resume();
    match outcome {
        FaultOutcome::Retry => {
            if let Some(e) = vectoring_event(m) {
                r.flags |= reply::INJECT;
                r.inject = e;
            }
        }
        FaultOutcome::InjectPageFault(pf) => {
            // As the CPU delivers it: RF set, and a #PF while delivering a #PF or a
            // contributory exception is a double fault (then no CR2), during a #DF a shutdown.
            let guest = vmm_service::exception::Guest::of(m);
            match vmm_service::exception::injection(PF_VECTOR as u8, pf.error_code, guest) {
                Injection::TripleFault => return Err(Stop::TripleFault),
                Injection::Event { inject, rflags } => {
                    r.flags |= reply::INJECT;
                    r.inject = inject;
                    if let Some(f) = rflags {
                        r.flags |= reply::SET_RFLAGS;
                        r.rflags = f;
                    }
                    if inject as u8 == PF_VECTOR as u8 {
                        r.flags |= reply::SET_CR2;
                        r.cr2 = pf.address;
                    }
                }
            }
        }
        FaultOutcome::EmulateWrite { .. } => {
            let full = group::GPRS | group::SEGS;
            if m.mask & full == full {
                return emulate_write(mmu, vcpu, m);
            }
            let mut m = *m;
            if !more.fill(&mut m) {
                return Err(Stop::NoRegisters);
            }
            return emulate_write(mmu, vcpu, &m);
        }
        // A device access: the kernel sends the exit on to the VMM's MMIO portal, which
        // decides what is a device. An instruction fetch there cannot be emulated.
        FaultOutcome::Mmio { gpa } if access.fetch => return Err(Stop::OutsideRam { gpa }),
        FaultOutcome::Mmio { gpa } => return Ok(forward(gpa)),
    }
    Ok(r)
}

/// The reply that forwards an access at guest-physical `gpa` (outside RAM) to the vCPU's
/// MMIO portal ([`reply::FORWARD`]).
pub fn forward(gpa: u64) -> ExitReply {
    ExitReply {
        flags: reply::FORWARD,
        forward_gpa: gpa,
        ..ExitReply::default()
    }
}

/// The guest's privilege level (SS.DPL).
fn cpl(m: &ExitMessage) -> u8 {
    ((m.segments[1].access_rights >> 5) & 3) as u8
}

/// Whether SMAP lets the guest's explicit supervisor data accesses reach user pages now:
/// CPL < 3 and EFLAGS.AC set. Needs the message's segments.
fn smap_allowed(m: &ExitMessage) -> bool {
    cpl(m) < 3 && m.rflags & RFLAGS_AC != 0
}

/// Guest memory through the guest's own tables, as the emulated instruction accesses it;
/// writes go through [`Mmu::emulated_write`], which zaps the shadows of what they change.
struct Linear<'a, M, P> {
    mmu: &'a mut Mmu<M, P>,
    vcpu: &'a mut Vcpu,
    user: bool,
    smap_allowed: bool,
}

impl<M: GuestMemory, P: ShadowPagePool> Linear<'_, M, P> {
    /// Translates `gla` for an access that stays within its page.
    fn translate(&mut self, gla: u64, write: bool, fetch: bool) -> Result<u64, AccessFault> {
        let access = AccessKind {
            write,
            user: self.user,
            fetch,
            smap_allowed: !fetch && self.smap_allowed,
        };
        let (cpu, cr3, pdptes) = (*self.vcpu.cpu_role(), self.vcpu.cr3(), self.vcpu.pdptes());
        let not_ram = AccessFault::NotRam { gla };
        for _ in 0..4 {
            match walk(&cpu, cr3, &pdptes, self.mmu.mem(), gla, access) {
                Err(_) => return Err(not_ram),
                Ok(WalkOutcome::Fault(pf)) => return Err(AccessFault::PageFault(pf)),
                Ok(WalkOutcome::Ok(mut w)) => {
                    match update_accessed_dirty(self.mmu.mem_mut(), &mut w, write) {
                        Err(_) => return Err(not_ram),
                        Ok(false) => continue,
                        Ok(true) => {}
                    }
                    if w.gfn() >= self.mmu.mem().ram_pages() {
                        return Err(not_ram);
                    }
                    return Ok(w.gpa);
                }
            }
        }
        Err(not_ram)
    }

    /// Runs `f` on each piece of `[gla, gla + len)` that lies in one page: (gpa, offset).
    fn pieces(
        &mut self,
        gla: u64,
        len: usize,
        write: bool,
        fetch: bool,
        mut f: impl FnMut(&mut Self, u64, usize, usize) -> Result<(), AccessFault>,
    ) -> Result<(), AccessFault> {
        let mut done = 0;
        while done < len {
            let at = gla.wrapping_add(done as u64);
            let n = ((PAGE_SIZE - (at & (PAGE_SIZE - 1))) as usize).min(len - done);
            let gpa = self.translate(at, write, fetch)?;
            f(self, gpa, done, n)?;
            done += n;
        }
        Ok(())
    }
}

impl<M: GuestMemory, P: ShadowPagePool> GuestAccess for Linear<'_, M, P> {
    fn read(&mut self, gla: u64, buf: &mut [u8]) -> Result<(), AccessFault> {
        let len = buf.len();
        self.pieces(gla, len, false, false, |s, gpa, off, n| {
            s.mmu
                .mem()
                .read(gpa, &mut buf[off..off + n])
                .map_err(|_| AccessFault::NotRam { gla })
        })
    }

    fn write(&mut self, gla: u64, data: &[u8]) -> Result<(), AccessFault> {
        // Translate every piece first, so that a fault on the second page writes nothing.
        let mut gpas = [(0u64, 0usize, 0usize); 2];
        let mut k = 0;
        self.pieces(gla, data.len(), true, false, |_, gpa, off, n| {
            if let Some(slot) = gpas.get_mut(k) {
                *slot = (gpa, off, n);
            }
            k += 1;
            Ok(())
        })?;
        for &(gpa, off, n) in gpas.iter().take(k) {
            self.mmu
                .emulated_write(self.vcpu, gpa, &data[off..off + n])
                .map_err(|_| AccessFault::NotRam { gla })?;
        }
        Ok(())
    }
}

/// Carries out the faulting instruction (a write to a guest page table on its own
/// translation path) and resumes after it.
fn emulate_write<M: GuestMemory, P: ShadowPagePool>(
    mmu: &mut Mmu<M, P>,
    vcpu: &mut Vcpu,
    m: &ExitMessage,
) -> Result<ExitReply, Stop> {
    let cs = m.segments[0];
    let long = m.efer & (1 << 10) != 0 && cs.access_rights & AR_L != 0;
    let bitness = if long {
        64
    } else if cs.access_rights & AR_DB != 0 {
        32
    } else {
        16
    };
    // ES, CS, SS, DS, FS, GS from the message's CS, SS, DS, ES, FS, GS.
    let s = &m.segments;
    let mut cpu = CpuState {
        gprs: m.gprs,
        rip: m.rip,
        rflags: m.rflags,
        bitness,
        seg_base: [
            s[3].base, s[0].base, s[1].base, s[2].base, s[4].base, s[5].base,
        ],
    };
    let mut mem = Linear {
        mmu,
        vcpu,
        user: cpl(m) == 3,
        smap_allowed: smap_allowed(m),
    };
    let mut bytes = [0u8; MAX_INSN_LEN];
    let fetch_at = if long {
        m.rip
    } else {
        (cs.base + m.rip) & 0xffff_ffff
    };
    // Fetch what is there: a second page that does not translate leaves the rest zero (the
    // decoder then reports a truncated instruction if it needed those bytes).
    let first = ((PAGE_SIZE - (fetch_at & (PAGE_SIZE - 1))) as usize).min(MAX_INSN_LEN);
    let mut got = 0;
    for (at, len) in [
        (fetch_at, first),
        (fetch_at + first as u64, MAX_INSN_LEN - first),
    ] {
        if len == 0 {
            continue;
        }
        let Ok(gpa) = mem.translate(at, false, true) else {
            break;
        };
        if mem.mmu.mem().read(gpa, &mut bytes[got..got + len]).is_err() {
            break;
        }
        got += len;
    }
    let before = cpu;
    match emulate::emulate(&bytes[..got], &mut cpu, &mut mem) {
        Ok(()) => {}
        Err(EmulateError::Fault(AccessFault::PageFault(pf))) => {
            let Some(mut r) = vmm_service::exception::reply(m, PF_VECTOR as u8, pf.error_code)
            else {
                return Err(Stop::TripleFault);
            };
            if r.inject as u8 == PF_VECTOR as u8 {
                r.flags |= reply::SET_CR2;
                r.cr2 = pf.address;
            }
            return Ok(r);
        }
        Err(error) => {
            // Not a write this service emulates (a string or vector store into a page that was
            // a page table, say): stop shadowing the page and let the hardware do it, unless
            // the page is a table of the write's own translation.
            if let Ok(true) = mem.mmu.unprotect_for_retry(mem.vcpu, m.qualification) {
                return Ok(ExitReply::resume());
            }
            return Err(Stop::Unemulated {
                rip: m.rip,
                bytes,
                error,
            });
        }
    }
    let mut r = ExitReply {
        flags: reply::SET_RIP | reply::SET_RFLAGS,
        rip: cpu.rip,
        rflags: cpu.rflags,
        ..ExitReply::default()
    };
    for (i, (&new, &old)) in cpu.gprs.iter().zip(before.gprs.iter()).enumerate() {
        if new != old {
            r.gpr_mask |= 1 << i;
            r.gprs[i] = new;
        }
    }
    Ok(r)
}

/// MOV to/from CR3 and the CR0/CR4 writes (checked as the VMM checks them, with the same
/// rules), then the MMU brought to the new state.
fn cr_access<M: GuestMemory, P: ShadowPagePool>(
    mmu: &mut Mmu<M, P>,
    vcpu: &mut Vcpu,
    m: &ExitMessage,
    limits: &cr::Limits,
) -> Result<ExitReply, Stop> {
    let Ok(Exit::CrAccess { cr, access }) = decode(m) else {
        return Err(Stop::Unexpected { reason: m.reason });
    };
    if cr == 8 {
        // CR8 is the local APIC's TPR, which the VMM keeps: the exit goes on to it (no
        // address: `forward_gpa` 0).
        return Ok(forward(0));
    }
    let Ok(outcome) = cr::handle_with(m, cr, access, m.efer, limits) else {
        return Err(Stop::Unexpected { reason: m.reason });
    };
    // #GP(0) as the CPU delivers it (RF set).
    let gp = || vmm_service::exception::reply(m, GP_VECTOR, 0).unwrap_or_else(cr::gp);
    let mut r = outcome.reply;
    if r.flags & reply::INJECT != 0 {
        return Ok(gp());
    }
    // Protection keys and 5-level paging are not shadowed (the VMM's CPUID hides them): #GP,
    // as on a processor without them.
    if r.flags & reply::SET_CR4 != 0 && r.cr4 & (cr4::PKE | cr4::LA57) != 0 {
        return Ok(gp());
    }
    let paging = reply::SET_CR0 | reply::SET_CR3 | reply::SET_CR4 | reply::SET_EFER;
    if r.flags & paging == 0 {
        return Ok(r); // a read of CR3
    }
    let mut regs = view(m);
    if r.flags & reply::SET_CR0 != 0 {
        regs.cr0 = r.cr0;
    }
    if r.flags & reply::SET_CR4 != 0 {
        regs.cr4 = r.cr4;
    }
    if r.flags & reply::SET_EFER != 0 {
        regs.efer = r.efer;
    }
    let result = if r.flags & reply::SET_CR3 != 0 {
        // Outside long mode a CR3 load keeps 32 bits.
        if regs.efer & (1 << 10) == 0 {
            r.cr3 &= 0xffff_ffff;
        }
        regs.cr3 = r.cr3;
        mmu.load_cr3(vcpu, &regs)
    } else {
        mmu.set_paging_state(vcpu, &regs)
    };
    match result {
        Ok(()) => Ok(r),
        // Reserved bits in a PDPTE: #GP, and nothing changed.
        Err(Error::InvalidPdpte) => Ok(gp()),
        Err(Error::GuestTableOutsideRam { gpa }) => Err(Stop::OutsideRam { gpa }),
        Err(e) => Err(Stop::Mmu(e)),
    }
}
