//! The per-VM model: turns each exit message into the reply to send and the events the
//! service must act on (console output, "first unhandled port" logs, a reflect request, the
//! VM's end).
//!
//! Exits handled: CPUID ([`crate::cpuid`]), port I/O ([`PortBus`]; string I/O stops the VM),
//! RDMSR/WRMSR ([`MsrModel`]; unknown MSRs inject #GP(0) without advancing), CR access
//! ([`crate::cr`]), HLT (resumes after the instruction, since no interrupts are injected yet;
//! with RFLAGS.IF clear, when RIP is in the message, the VM stops as [`VmResult::Halted`]
//! since nothing could wake it), VMCALL ([`hypercall`]: Umbra's by their signature, any other
//! returns -ENOSYS), the instruction exits of [`crate::insn`] (INVD, WBINVD, PAUSE, XSETBV,
//! RDPMC, MONITOR/MWAIT, VMX instructions), external interrupts (resume). Every exception the
//! model injects goes through [`crate::exception`] (error code, RF, double-fault rules).
//! Device accesses the MMU service forwards (an EPT violation, or a shadow-paged guest's #PF)
//! are emulated against the MMIO bus ([`crate::mmio_exit`]). Triple fault, entry failures,
//! exceptions, task switches and every other reason stop the VM with a [`Report`] (with the code at RIP when
//! the message carries the state to find it). Once stopped, every later exit gets the same
//! stop reply, except after an access outside RAM and every device: the VMM may resume the
//! guest elsewhere (the isolation probe), so that stop is not kept.

use abi::vmx::{group, reason, reply, ExitMessage, ExitReply, Gpr, EXIT_REASONS};
use heapless::Vec;

use crate::cr;
use crate::devices::bus::{BusEvent, PortBus};
use crate::devices::mmio::MmioBus;
use crate::devices::Text;
use crate::exception;
use crate::exit::{decode, io_size, size_mask, Exit, ExitError, IoDirection, IO_STRING};
use crate::insn;
use crate::irq::{Clock, Interrupts};
use crate::msr::{MsrError, MsrModel, MsrWrite};

/// Accesses outside RAM and every device reported in full, per VM; later ones only stop it.
const OUTSIDE_RAM_REPORTED: u64 = 3;

/// Why a VM stops when the kernel refuses the VMM's own access to the vCPU's state.
const STATE_REFUSED: &str = "the kernel refused access to the vCPU's state (VcpuState)";
pub use crate::report::{stop_code, Name, Report, Stop, VmResult};
pub use quick::{QuickReply, QUICK_REASONS};

mod quick;

/// IA32_APIC_BASE: the local APIC is globally enabled.
const APIC_GLOBAL_ENABLE: u64 = 1 << 11;
/// CPUID.(7,0):EBX: INVPCID.
const EBX7_INVPCID: u32 = 1 << 10;
/// CPUID.80000001H:EDX: RDTSCP.
const EDX_EXT_RDTSCP: u32 = 1 << 27;

/// What the model needs from the outside world.
pub trait Env {
    /// The host's CPUID values `[eax, ebx, ecx, edx]`.
    fn host_cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// The host TSC now.
    fn tsc(&mut self) -> u64;
    /// Copies guest-physical memory at `gpa` into `buf`; false if any of it is not RAM.
    fn read_guest(&mut self, gpa: u64, buf: &mut [u8]) -> bool;
    /// Copies `data` into guest-physical memory at `gpa`; false (nothing written) if any of
    /// it is not RAM. (An emulated MOVS between a device and RAM.)
    fn write_guest(&mut self, gpa: u64, data: &[u8]) -> bool;
    /// PIT input-clock ticks (1.193182 MHz) since a fixed origin.
    fn ticks(&mut self) -> u64;
    /// The host TSC's rate in Hz; 0 if unknown (then device time comes from [`Env::ticks`]
    /// and no deadline is set: timers reach the guest only when it exits anyway).
    fn tsc_hz(&mut self) -> u64 {
        0
    }
    /// Reads the vCPU's state fields (`abi::vmx::field`, `VcpuState`) into `out`; false if
    /// the kernel refused (part `msr`: guest MSRs and CR4 for CPUID).
    fn vcpu_read(&mut self, fields: &[u64], out: &mut [u64]) -> bool;
    /// Writes the vCPU's state fields; false if the kernel refused one (nothing written).
    fn vcpu_write(&mut self, pairs: &[(u64, u64)]) -> bool;
}

impl<E: Env> crate::msr::VcpuAccess for E {
    fn get(&mut self, f: u64) -> Option<u64> {
        let mut v = [0];
        self.vcpu_read(&[f], &mut v).then_some(v[0])
    }
    fn set(&mut self, f: u64, v: u64) -> bool {
        self.vcpu_write(&[(f, v)])
    }
    fn host_tsc(&mut self) -> u64 {
        self.tsc()
    }
}

/// CR4 as the guest reads it: the read shadow for the bits the VMM or kernel own, the real
/// value for the others (`None` if the kernel refused).
fn guest_cr4(env: &mut impl Env) -> Option<u64> {
    use abi::vmx::field;
    let mut v = [0; 3];
    let fields = [
        field::GUEST_CR4,
        field::CR4_READ_SHADOW,
        field::CR4_GUEST_HOST_MASK,
    ];
    env.vcpu_read(&fields, &mut v)
        .then_some((v[0] & !v[2]) | (v[1] & v[2]))
}

/// VMCALL numbers (RAX, with Umbra's signature: [`abi::hypercall`]) and results (RAX on
/// return). A VMCALL without the signature returns [`hypercall::ENOSYS`] and the guest goes
/// on.
pub mod hypercall {
    pub use abi::hypercall::*;
    /// The exit reasons [`REFLECT`] accepts ([`super::Event::Reflect`]).
    pub const REFLECTABLE: [u32; 3] = [
        abi::vmx::reason::CPUID,
        abi::vmx::reason::VMCALL,
        abi::vmx::reason::IO,
    ];
}

/// Something the service must act on.
// No allocator: texts and reports travel by value.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A complete line from the serial port (without the newline), or the partial line
    /// flushed when the VM stops.
    SerialLine(Text),
    /// Bytes from the print hypercall, as the guest gave them.
    Print(Text),
    /// First access to an unhandled port (logged once per port and direction).
    UnhandledPort { port: u16, write: bool },
    /// The guest asked for exits of `reason` to be answered by the kernel (hypercall 3).
    Reflect { reason: u32 },
    /// The guest asked for every reflected reason back (hypercall 4 or CPUID leaf
    /// [`hypercall::UNREFLECT_LEAF`]).
    Unreflect,
    /// The VM ended; the reply is `ExitReply::stop(stop.stop_code())`.
    Stopped(Stop),
    /// The guest's XSETBV passed its checks: write the value to the vCPU's
    /// [`abi::vmx::field::GUEST_XCR0`] before sending the reply (which advances RIP); if the
    /// kernel refuses it, inject #GP(0) instead.
    SetXcr0(u64),
}

/// Most events one exit produces (a 4-byte access to unhandled ports gives 4; a stop adds a
/// flushed line and the `Stopped` event).
pub const MAX_EVENTS: usize = 8;

/// The answer to one exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub reply: ExitReply,
    pub events: Vec<Event, MAX_EVENTS>,
}

impl Outcome {
    /// The result, if this exit stopped the VM.
    pub fn stopped(&self) -> Option<&Stop> {
        self.events.iter().find_map(|e| match e {
            Event::Stopped(r) => Some(r),
            _ => None,
        })
    }
}

/// One VM's device and CPU model.
#[derive(Clone, Debug)]
pub struct VmModel {
    pub name: Name,
    pub bus: PortBus,
    pub msr: MsrModel,
    pub mmio: MmioBus,
    /// Accesses outside RAM and every device so far (each stopped the VM).
    outside_ram_stops: u64,
    counts: [u64; EXIT_REASONS],
    result: Option<Stop>,
    /// Shadow-paged: CPUID hides what the shadow MMU does not implement.
    shadow: bool,
    /// The benchmark's hypercalls are honoured (`VmConfig::benchmark`).
    benchmark: bool,
    /// What the vCPU's controls let the guest execute ([`abi::vmx::guest_features`]).
    guest_features: u64,
    /// Interrupt delivery ([`crate::irq`]).
    pub irq: Interrupts,
}

fn truncated_name(name: &str) -> Name {
    let mut n = Name::new();
    for c in name.chars() {
        if n.push(c).is_err() {
            break;
        }
    }
    n
}

impl VmModel {
    /// A model for VM `name` (truncated to 32 bytes) with `ram_bytes` of RAM.
    /// The model of a VM whose creator asked for the exit benchmark's hypercalls
    /// ([`hypercall::REFLECT`], [`hypercall::UNREFLECT`]); no other guest may switch its exits
    /// to the kernel's reflect path (it would read the host's CPUID and bypass the devices).
    pub fn with_benchmark_hypercalls(mut self) -> VmModel {
        self.benchmark = true;
        self
    }

    /// The model of a shadow-paged VM (CPUID: the `ept_only` rows of [`crate::cpuid_policy`]).
    pub fn shadow_paged(mut self) -> VmModel {
        self.shadow = true;
        self
    }

    pub fn new(name: &str, ram_bytes: u64) -> VmModel {
        VmModel {
            name: truncated_name(name),
            bus: PortBus::new(ram_bytes),
            msr: MsrModel::new(),
            mmio: MmioBus::new(),
            outside_ram_stops: 0,
            counts: [0; EXIT_REASONS],
            result: None,
            shadow: false,
            benchmark: false,
            guest_features: 0,
            irq: Interrupts::default(),
        }
    }

    /// The model of a VM with `vcpus` vCPUs (1 to [`crate::irq::MAX_VCPUS`]): a local APIC
    /// each ([`Interrupts::new`]). Exits are handled for the vCPU [`Interrupts::select`]
    /// names.
    pub fn with_vcpus(mut self, vcpus: usize) -> VmModel {
        self.irq = Interrupts::new(vcpus);
        self
    }

    /// The model of a vCPU whose controls let the guest execute the instructions in
    /// `features` ([`abi::vmx::field::GUEST_FEATURES`]); CPUID offers only those.
    pub fn with_guest_features(mut self, features: u64) -> VmModel {
        self.guest_features = features;
        self
    }

    /// The guest's CPUID: the policy ([`crate::cpuid`]), less what a shadow-paged VM lacks
    /// and the instructions its controls leave #UD.
    pub fn guest_cpuid(&self, leaf: u32, subleaf: u32, cr4: u64, env: &mut impl Env) -> [u32; 4] {
        use abi::vmx::guest_features as gf;
        let g = crate::cpuid_policy::GuestView {
            shadow: self.shadow,
            cr4,
            apic_enabled: self.irq.lapic().apic_base() & APIC_GLOBAL_ENABLE != 0,
            apic_id: self.irq.lapic().apic_id() as u8,
            vcpus: self.irq.vcpus() as u8,
        };
        let mut r = crate::cpuid_policy::answer(leaf, subleaf, &g, |l, s| env.host_cpuid(l, s));
        // RDTSCP and INVPCID only where the vCPU's controls let the guest run them.
        if leaf == 7 && subleaf == 0 && self.guest_features & gf::INVPCID == 0 {
            r[1] &= !EBX7_INVPCID;
        }
        if leaf == 0x8000_0001 && self.guest_features & gf::RDTSCP == 0 {
            r[3] &= !EDX_EXT_RDTSCP;
        }
        r
    }

    /// Exits of basic reason `reason` handled so far.
    pub fn exit_count(&self, reason: u32) -> u64 {
        self.counts.get(reason as usize).copied().unwrap_or(0)
    }

    /// How the VM ended, once it has.
    pub fn result(&self) -> Option<&Stop> {
        self.result.as_ref()
    }

    /// The machine's reset at `ticks` (PIT input-clock ticks, [`Env::ticks`]), before the VM
    /// restarts: the devices at power-on ([`PortBus::reset`]: the CMOS memory and clock
    /// kept), the local APICs and the IOAPIC too (the APs wait for INIT/SIPI again), the
    /// MSRs the model keeps, and no result. What the VM is stays (name, RAM size, vCPUs,
    /// paging mode, CPUID view), and so do the exit counts: they are the VM's, over every
    /// boot.
    pub fn reset(&mut self, ticks: u64) {
        self.bus.reset(ticks);
        self.msr = MsrModel::new();
        self.mmio = MmioBus::new();
        self.irq = Interrupts::new(self.irq.vcpus());
        self.outside_ram_stops = 0;
        self.result = None;
    }

    /// Handles one exit.
    pub fn handle(&mut self, m: &ExitMessage, env: &mut impl Env) -> Outcome {
        let mut events = Vec::new();
        let reply = self.handle_into(m, env, &mut events);
        Outcome { reply, events }
    }

    /// Handles one exit, appending its events to `ev` (which the caller empties): the form
    /// the service uses, since an [`Outcome`] is large to move around on every exit.
    pub fn handle_into(
        &mut self,
        m: &ExitMessage,
        env: &mut impl Env,
        ev: &mut Vec<Event, MAX_EVENTS>,
    ) -> ExitReply {
        let mut reply = self.dispatch(m, env, ev);
        if self.result.is_none() && !self.settled_after(m, env.tsc()) {
            let clock = Self::clock(env);
            self.irq.finish(m, &mut reply, &mut self.bus, &clock);
        }
        reply
    }

    /// [`VmModel::handle`] with the look at the devices after every exit but the quiet
    /// reasons' (as before port I/O could skip it): the reference of the quick paths' tests.
    #[cfg(test)]
    pub(crate) fn handle_looking(&mut self, m: &ExitMessage, env: &mut impl Env) -> Outcome {
        let mut events = Vec::new();
        let mut reply = self.dispatch(m, env, &mut events);
        if self.result.is_none() && !self.irq.settled(m, env.tsc()) {
            let clock = Self::clock(env);
            self.irq.finish(m, &mut reply, &mut self.bus, &clock);
        }
        Outcome { reply, events }
    }

    /// Whether exit `m`, just handled, can skip [`Interrupts::finish`] at host time-stamp
    /// `tsc` (it would change nothing): a quiet reason ([`Interrupts::settled`]), or a port
    /// access that touched the UART alone and left its interrupt output at the level the
    /// last look gave IRQ 4 ([`Interrupts::settled_at`]: nothing else to deliver, the
    /// deadline not come).
    fn settled_after(&self, m: &ExitMessage, tsc: u64) -> bool {
        if m.basic_reason() != reason::IO {
            return self.irq.settled(m, tsc);
        }
        let q = m.qualification;
        let uart_alone = q & IO_STRING == 0
            && io_size(q).is_some_and(|size| PortBus::uart_alone((q >> 16) as u16, size));
        uart_alone
            && self.irq.line_level(crate::irq::isa::UART) == self.bus.serial.irq_level()
            && self.irq.settled_at(tsc)
    }

    /// The host clock now, with device time (PIT periods) derived from the TSC when its rate
    /// is known.
    fn clock(env: &mut impl Env) -> Clock {
        let tsc = env.tsc();
        let tsc_hz = env.tsc_hz();
        let ticks = if tsc_hz != 0 {
            Clock::ticks_at(tsc, tsc_hz)
        } else {
            env.ticks()
        };
        Clock { tsc, tsc_hz, ticks }
    }

    /// The exit's own handling, before interrupt delivery.
    fn dispatch(
        &mut self,
        m: &ExitMessage,
        env: &mut impl Env,
        ev: &mut Vec<Event, MAX_EVENTS>,
    ) -> ExitReply {
        if let Some(r) = &self.result {
            let _ = ev.push(Event::Stopped(r.clone()));
            return ExitReply::stop(r.stop_code());
        }
        if let Some(c) = self.counts.get_mut(m.basic_reason() as usize) {
            *c += 1;
        }
        let exit = match decode(m) {
            Ok(e) => e,
            Err(e) => {
                let what = match e {
                    ExitError::MissingGroups { .. } => "exit message lacks the state it needs",
                    ExitError::BadIoSize { .. } => "I/O exit with an invalid size",
                };
                return self.stop(Stop::bad_exit(self.report(m, what)), ev);
            }
        };
        match exit {
            Exit::Cpuid { leaf, subleaf } => {
                if self.benchmark && leaf == hypercall::UNREFLECT_LEAF {
                    let _ = ev.push(Event::Unreflect);
                }
                // Only leaves 1 and 7 depend on CR4 (OSXSAVE, OSPKE): the frequent CPUID
                // exits do not pay for reading it.
                let cr4 = if matches!(leaf, 1 | 7) {
                    match guest_cr4(env) {
                        Some(c) => c,
                        None => return self.unhandled(m, STATE_REFUSED, env, ev),
                    }
                } else {
                    0
                };
                let r = self.guest_cpuid(leaf, subleaf, cr4, env);
                let mut reply = ExitReply::advance();
                for (g, v) in [Gpr::Rax, Gpr::Rbx, Gpr::Rcx, Gpr::Rdx].into_iter().zip(r) {
                    reply.set_gpr(g, v as u64);
                }
                reply
            }
            Exit::Io { string: true, .. } => {
                self.unhandled(m, "string port I/O (INS/OUTS) is not emulated", env, ev)
            }
            Exit::Io {
                port,
                size,
                direction,
                value,
                ..
            } => self.io(m, (port, size, direction, value), env, ev),
            Exit::Rdmsr { msr } => {
                // The kernel's EFER is the guest's (LMA follows CR0.PG, which the MMU service
                // handles for a shadow-paged VM).
                if m.mask & group::CRS != 0 {
                    self.msr.efer = m.efer;
                }
                let clock = Self::clock(env);
                let value = match self.irq.rdmsr(msr, &clock) {
                    Some(r) => r.map_err(MsrError::from),
                    None => self.msr.read(msr, env),
                };
                match value {
                    Ok(v) => {
                        let mut reply = ExitReply::advance();
                        reply
                            .set_gpr(Gpr::Rax, v & 0xffff_ffff)
                            .set_gpr(Gpr::Rdx, v >> 32);
                        reply
                    }
                    Err(MsrError::Gp) => self.fault(m, exception::GP, 0, ev),
                    Err(MsrError::State) => self.unhandled(m, STATE_REFUSED, env, ev),
                }
            }
            Exit::Wrmsr { msr, value } => {
                let pg = (m.mask & group::CRS != 0).then_some(m.cr0_shadow & cr::cr0::PG != 0);
                let clock = Self::clock(env);
                let written = match self.irq.wrmsr(msr, value, &clock) {
                    Some(r) => r.map(|()| MsrWrite::Stored).map_err(MsrError::from),
                    None => self.msr.write(msr, value, env, pg),
                };
                if matches!(msr, crate::msr::index::TSC | crate::msr::index::TSC_ADJUST) {
                    // The local APIC counts the guest's time: follow the moved offset.
                    let mut offset = [0];
                    if env.vcpu_read(&[abi::vmx::field::TSC_OFFSET], &mut offset) {
                        self.irq.set_tsc_offset(offset[0]);
                    }
                }
                match written {
                    Ok(MsrWrite::Stored) => ExitReply::advance(),
                    Ok(MsrWrite::Efer(e)) => {
                        let mut reply = ExitReply::advance();
                        reply.flags |= reply::SET_EFER;
                        reply.efer = e;
                        reply
                    }
                    Err(MsrError::Gp) => self.fault(m, exception::GP, 0, ev),
                    Err(MsrError::State) => self.unhandled(m, STATE_REFUSED, env, ev),
                }
            }
            // CR8 is the local APIC's TPR (bits 7:4), in 64-bit mode.
            Exit::CrAccess { cr: 8, access } => self.cr8(m, access, ev),
            Exit::CrAccess { cr, access } => {
                let limits = cr::Limits {
                    cr4_unoffered: cr::cr4_reserved(|l, s| self.guest_cpuid(l, s, 0, env)),
                    maxphyaddr: crate::cpuid::paging_features(|l, s| env.host_cpuid(l, s)).0,
                };
                match cr::handle_with(m, cr, access, self.msr.efer, &limits) {
                    Ok(o) if o.reply.flags & reply::INJECT != 0 => {
                        self.fault(m, exception::GP, 0, ev)
                    }
                    Ok(o) if !self.pdptes_loadable(m, &o.reply, env) => {
                        self.fault(m, exception::GP, 0, ev)
                    }
                    Ok(o) => {
                        if let Some(e) = o.efer {
                            self.msr.efer = e;
                        }
                        o.reply
                    }
                    Err(_) => self.unhandled(m, "control-register access not emulated", env, ev),
                }
            }
            Exit::Hlt => {
                if m.mask & group::RIP != 0 && m.rflags & (1 << 9) == 0 {
                    let r = self.report(m, "HLT with interrupts disabled");
                    return self.stop(Stop::halted(r), ev);
                }
                let mut reply = ExitReply::advance();
                let clock = Self::clock(env);
                if self.irq.can_wake(&mut self.bus, &clock) {
                    // Wait in HLT for the timer or the pending request ([`crate::irq`]).
                    reply.flags |= reply::HALT;
                }
                reply
            }
            Exit::Vmcall { nr, args } => match hypercall::number(nr) {
                Some(n) => self.hypercall(n, args, env, ev),
                None => {
                    // Not Umbra's: another hypervisor's guest, or a probe. As KVM does.
                    let mut reply = ExitReply::advance();
                    reply.set_gpr(Gpr::Rax, hypercall::ENOSYS);
                    reply
                }
            },
            Exit::TripleFault => {
                let r = self.report(m, "triple fault");
                self.stop(Stop::triple_fault(r), ev)
            }
            Exit::InvalidGuestState | Exit::EntryFailure { .. } => {
                let r = self.report(m, "VM entry failed");
                self.stop(Stop::entry_failed(r), ev)
            }
            Exit::ExternalInterrupt => ExitReply::resume(),
            // A deadline passed, or the guest can take an interrupt: [`Interrupts::finish`]
            // delivers.
            Exit::Other {
                reason: reason::PREEMPTION_TIMER | reason::INTERRUPT_WINDOW | reason::NMI_WINDOW,
            } => ExitReply::resume(),
            // EPT violations go to the MMU service: one here was forwarded as a device access
            // (and so was a #PF of a shadow-paged guest).
            Exit::EptViolation { .. } => self.mmio(m, env, ev),
            Exit::Exception { vector: 14, .. } if self.shadow => self.mmio(m, env, ev),
            Exit::Exception { .. } => self.unhandled(m, "guest exception not handled", env, ev),
            Exit::Other { reason } => {
                let basic = reason & 0xffff;
                match crate::insn::handle(basic, m, |l, s| self.guest_cpuid(l, s, 0, env)) {
                    Some(insn::Action::Advance) => ExitReply::advance(),
                    Some(insn::Action::Fault(v, e)) => self.fault(m, v, e, ev),
                    Some(insn::Action::SetXcr0(x)) => {
                        let _ = ev.push(Event::SetXcr0(x));
                        ExitReply::advance()
                    }
                    Some(insn::Action::Stop(what)) => self.unhandled(m, what, env, ev),
                    None => self.unhandled(m, "exit reason not handled", env, ev),
                }
            }
        }
    }

    /// MOV to or from CR8: the current vCPU's TPR through its local APIC (CR8[3:0] = TPR[7:4];
    /// a write with bits 63:4 set is #GP(0), as on hardware).
    fn cr8(
        &mut self,
        m: &ExitMessage,
        access: crate::exit::CrAccessKind,
        ev: &mut Vec<Event, MAX_EVENTS>,
    ) -> ExitReply {
        use crate::exit::CrAccessKind;
        let mut reply = ExitReply::advance();
        match access {
            CrAccessKind::MovTo { gpr } => {
                let v = m.gprs[usize::from(gpr & 15)];
                if v > 0xf {
                    return self.fault(m, exception::GP, 0, ev);
                }
                self.irq.lapic_mut().set_tpr((v as u32) << 4);
            }
            CrAccessKind::MovFrom { gpr } => {
                let n = usize::from(gpr & 15);
                reply.gpr_mask = 1 << n;
                reply.gprs[n] = u64::from(self.irq.lapic().tpr() >> 4);
            }
            // CLTS and LMSW name CR0 only.
            _ => return self.fault(m, exception::GP, 0, ev),
        }
        reply
    }

    /// Injects exception `vector` (with `error` where it has one) as the CPU would deliver it
    /// ([`exception::reply`]); a fault while the guest was delivering a double fault shuts
    /// it down: the VM stops as a triple fault.
    fn fault(
        &mut self,
        m: &ExitMessage,
        vector: u8,
        error: u32,
        ev: &mut Vec<Event, MAX_EVENTS>,
    ) -> ExitReply {
        match exception::reply(m, vector, error) {
            Some(r) => r,
            None => {
                let r = self.report(m, "exception while delivering a double fault");
                self.stop(Stop::triple_fault(r), ev)
            }
        }
    }

    /// An EPT guest turning PAE paging on (or changing it): the PDPTEs at CR3 must pass the
    /// CPU's checks, or the write is #GP (as on hardware) instead of a failed VM entry. A
    /// shadow-paged guest's CR writes go to the MMU service; PDPTEs outside RAM load as
    /// not present.
    fn pdptes_loadable(&self, m: &ExitMessage, reply: &ExitReply, env: &mut impl Env) -> bool {
        if self.shadow || !cr::loads_pdptes(m, reply, self.msr.efer) {
            return true;
        }
        let mut bytes = [0u8; 32];
        if !env.read_guest(cr::pdpt_address(m.cr3), &mut bytes) {
            return true;
        }
        let mut pdptes = [0u64; 4];
        for (p, b) in pdptes.iter_mut().zip(bytes.chunks_exact(8)) {
            *p = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        }
        let (maxphyaddr, _) = crate::cpuid::paging_features(|l, s| env.host_cpuid(l, s));
        cr::pdptes_ok(&pdptes, maxphyaddr)
    }

    /// A device access forwarded by the MMU service ([`crate::mmio_exit`]).
    fn mmio(
        &mut self,
        m: &ExitMessage,
        env: &mut impl Env,
        ev: &mut Vec<Event, MAX_EVENTS>,
    ) -> ExitReply {
        use crate::mmio_exit::{handle, MmioStop};
        let now = self.irq.guest_tsc(&Self::clock(env));
        let mut devices = crate::irq::PlatformMmio {
            bus: &mut self.mmio,
            irq: &mut self.irq,
            now,
        };
        let stop = match handle(m, &mut devices, env) {
            Ok(reply) => return reply,
            Err(MmioStop::GeneralProtection) => return self.fault(m, exception::GP, 0, ev),
            Err(s) => s,
        };
        let mut r = self.report(m, stop.what());
        match stop {
            MmioStop::MissingState => self.stop(Stop::bad_exit(r), ev),
            MmioStop::Unclaimed { gpa } => {
                // Not latched: the VMM may resume the guest elsewhere (the isolation probe
                // does, thousands of times). The first few are reported in full.
                self.outside_ram_stops += 1;
                let report = (self.outside_ram_stops <= OUTSIDE_RAM_REPORTED).then_some(r);
                let stop = Stop::outside_ram(report, gpa);
                let _ = ev.push(Event::Stopped(stop.clone()));
                ExitReply::stop(stop.stop_code())
            }
            MmioStop::Unemulated { code, .. } => {
                r.code = Some(code);
                self.stop(Stop::unhandled(r), ev)
            }
            _ => self.unhandled(m, r.what, env, ev),
        }
    }

    fn report(&self, m: &ExitMessage, what: &'static str) -> Report {
        Report::new(&self.name, m, what)
    }

    fn unhandled(
        &mut self,
        m: &ExitMessage,
        what: &'static str,
        env: &mut impl Env,
        ev: &mut Vec<Event, MAX_EVENTS>,
    ) -> ExitReply {
        let mut r = self.report(m, what);
        r.code = crate::guest_walk::code_at_rip(m, |gpa, buf| env.read_guest(gpa, buf));
        self.stop(Stop::unhandled(r), ev)
    }

    /// Ends the VM: after the events already in `ev`, the flushed serial line and `Stopped`.
    fn stop(&mut self, result: Stop, ev: &mut Vec<Event, MAX_EVENTS>) -> ExitReply {
        let reply = ExitReply::stop(result.stop_code());
        // Keep room for the flushed line and the stop itself.
        ev.truncate(MAX_EVENTS - 2);
        if let Some(line) = self.bus.serial.flush() {
            let _ = ev.push(Event::SerialLine(line));
        }
        let _ = ev.push(Event::Stopped(result.clone()));
        self.result = Some(result);
        reply
    }

    /// Port I/O; `access` is (port, size, direction, value written).
    fn io(
        &mut self,
        m: &ExitMessage,
        access: (u16, u8, IoDirection, u32),
        env: &mut impl Env,
        events: &mut Vec<Event, MAX_EVENTS>,
    ) -> ExitReply {
        let (port, size, direction, value) = access;
        let ticks = env.ticks();
        let mut debug_exit = None;
        let mut platform_stop = None;
        let mut sink = |e: BusEvent| {
            let _ = events.push(match e {
                BusEvent::SerialLine(l) => Event::SerialLine(l),
                BusEvent::FirstUnhandled { port, write } => Event::UnhandledPort { port, write },
                BusEvent::DebugExit { code } => {
                    debug_exit = Some(code);
                    return;
                }
                BusEvent::PowerOff => {
                    platform_stop = Some(Stop::powered_off());
                    return;
                }
                BusEvent::Reset { port } => {
                    platform_stop = Some(Stop::reset(port));
                    return;
                }
            });
        };
        let mut reply = ExitReply::advance();
        match direction {
            IoDirection::Out => self.bus.write(port, size, value, ticks, &mut sink),
            IoDirection::In => {
                let v = self.bus.read(port, size, ticks, &mut sink);
                reply.set_gpr(Gpr::Rax, in_rax(m.gprs[Gpr::Rax as usize], size, v));
            }
        }
        if let Some(code) = debug_exit {
            return self.stop(Stop::debug_exit(code), events);
        }
        if let Some(s) = platform_stop {
            return self.stop(s, events);
        }
        reply
    }

    /// Umbra hypercall number `nr` (RAX bits 7:0 under the signature).
    fn hypercall(
        &mut self,
        nr: u8,
        args: [u64; 4],
        env: &mut impl Env,
        ev: &mut Vec<Event, MAX_EVENTS>,
    ) -> ExitReply {
        let mut reply = ExitReply::advance();
        let rax = match u64::from(nr) | hypercall::SIGNATURE {
            hypercall::EXIT => return self.stop(Stop::exited(args[0]), ev),
            hypercall::PRINT => {
                let (gpa, len) = (args[0], args[1]);
                let mut buf = [0u8; hypercall::PRINT_MAX];
                let read = match usize::try_from(len).ok().and_then(|n| buf.get_mut(..n)) {
                    Some(dst) => env.read_guest(gpa, dst).then_some(dst.len()),
                    None => None,
                };
                match read.and_then(|n| buf.get(..n)) {
                    Some(bytes) => {
                        let mut t = Text::new();
                        // Cannot fail: bytes.len() ≤ PRINT_MAX = TEXT_MAX.
                        let _ = t.extend_from_slice(bytes);
                        let _ = ev.push(Event::Print(t));
                        hypercall::OK
                    }
                    None => hypercall::ERROR,
                }
            }
            hypercall::NOP => hypercall::OK,
            hypercall::REFLECT => {
                let reason = args[0] as u32;
                if !self.benchmark {
                    hypercall::ENOSYS
                } else if hypercall::REFLECTABLE.contains(&reason) {
                    let _ = ev.push(Event::Reflect { reason });
                    hypercall::OK
                } else {
                    hypercall::ERROR
                }
            }
            hypercall::UNREFLECT if self.benchmark => {
                let _ = ev.push(Event::Unreflect);
                hypercall::OK
            }
            _ => hypercall::ENOSYS,
        };
        reply.set_gpr(Gpr::Rax, rax);
        reply
    }
}

/// RAX after an IN of `size` bytes that read `v`, RAX having been `rax`: 8/16-bit IN keeps
/// the rest of RAX; 32-bit IN zero-extends like any 32-bit register write in 64-bit mode
/// (bits 63:32 are 0 outside 64-bit mode anyway).
fn in_rax(rax: u64, size: u8, v: u32) -> u64 {
    if size == 4 {
        u64::from(v)
    } else {
        (rax & !size_mask(size)) | u64::from(v)
    }
}

#[cfg(test)]
mod tests;
