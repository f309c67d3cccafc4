//! Interrupt delivery: from the devices' outputs to an event VM entry injects.
//!
//! After the model answers an exit, [`Interrupts::finish`] brings the devices up to date and
//! decides how the reply delivers what the interrupt controllers request. The wiring is a
//! PC's: the ISA lines (PIT channel 0 on 0, the UART on 4, the RTC on 8, the ACPI SCI on 9)
//! go to the 8259 pair and to the IOAPIC (line 0 as GSI 2, the others as themselves, as the
//! MADT's overrides say); the IOAPIC's messages and the local APIC's own timer go to the local APIC; the
//! 8259's output reaches the CPU through LINT0 in ExtINT mode (virtual wire) or when the local
//! APIC is disabled. The 8259 is asked first, as KVM does. The decision:
//! - **inject now** (an external interrupt in `ExitReply::inject`) when the guest can take
//!   it at the next entry: the exit is an interrupt-window exit, or the guest waits in HLT
//!   with RFLAGS.IF set, or the reply moves RIP past an instruction that ran with IF set
//!   (the kernel ends STI/MOV SS blocking when it advances RIP);
//! - **ask for the window** (`reply::INTR_WINDOW`) otherwise: the guest exits as soon as it
//!   can take an interrupt, and that exit injects it.
//!
//! An NMI the local APIC holds (an NMI IPI, LINT1 in NMI mode) goes first: injected (type
//! NMI, vector 2) when the exit's interruptibility state shows no NMI, MOV SS or STI
//! blocking (the last two end if the reply advances RIP), otherwise asked for with
//! `reply::NMI_WINDOW`, whose exit delivers it. One NMI is latched: more NMIs before it is
//! injected are one, and one sent while the guest's NMI handler runs waits for its IRET. An
//! application processor waiting for its SIPI keeps its NMI pending.
//!
//! The acknowledge (the PIC's INTA) happens when the reply injects, so IRR and ISR are what
//! the guest would see on hardware. An exit that stops the VM or already injects an
//! exception delivers nothing (the request stays in the PIC for the next exit).
//!
//! Time: the reply also carries the vCPU's deadline (`reply::SET_DEADLINE`), the host TSC
//! of the next device event (the PIT's next OUT edge), so that the guest exits when a timer
//! fires even if it never exits otherwise. The kernel clears a deadline when it fires
//! (a preemption-timer exit); [`Interrupts`] remembers what the kernel holds and sends a
//! deadline only when it changes.
//!
//! HLT with IF set: the VMM answers with `reply::HALT` and the guest waits in the HLT
//! activity state until its deadline or an injection wakes it. With nothing armed (no
//! timer running, nothing requested) nothing could ever wake it: the model resumes the guest
//! after the HLT instead, as if an event had woken it, rather than leave it halted for good.

use abi::vmx::{group, interruptibility, reason, reply, ExitMessage, ExitReply};

use crate::devices::bus::PortBus;
use crate::devices::ioapic::Ioapic;
use crate::devices::lapic::ipi::{self, Message};
use crate::devices::lapic::{self, Effect, Lapic};
use crate::devices::mmio::{Devices, MmioBus};
use crate::devices::pit::PIT_HZ;
use crate::msr::{index, GpFault};

/// The x2APIC MSRs.
const X2APIC_FIRST: u32 = 0x800;
const X2APIC_LAST: u32 = 0x8ff;

/// The IOAPIC's ID, as the MADT gives it.
pub use crate::acpi::IOAPIC_ID;
/// The ISA lines the devices drive.
pub mod isa {
    pub const PIT: u8 = 0;
    pub const UART: u8 = 4;
    pub const RTC: u8 = 8;
    /// The ACPI SCI (the FADT's SCI_INT; level-triggered, active high, as the MADT says).
    pub const SCI: u8 = crate::devices::pm::SCI_IRQ;
    /// The IOAPIC input of ISA line `irq` (the MADT's interrupt source override: IRQ 0 is
    /// GSI 2).
    pub fn gsi(irq: u8) -> u32 {
        if irq == PIT {
            2
        } else {
            u32::from(irq)
        }
    }
}

/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;
/// VM-entry interruption information: valid, type 0 (external interrupt).
const EXTERNAL_INTERRUPT: u64 = 1 << 31;
/// VM-entry interruption information: valid, type 2 (NMI), vector 2, no error code.
pub const NMI_EVENT: u64 = (1 << 31) | (2 << 8) | crate::exception::NMI as u64;

/// The host clock: the TSC now and its rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    pub tsc: u64,
    /// Hz; 0 when the kernel could not measure it (then `ticks` comes from its tick count).
    pub tsc_hz: u64,
    /// PIT input-clock periods at `tsc`.
    pub ticks: u64,
}

impl Clock {
    /// The first host TSC at which device time has reached `ticks` PIT periods; `None` if
    /// the TSC's rate is unknown.
    pub fn tsc_at(&self, ticks: u64) -> Option<u64> {
        if self.tsc_hz == 0 {
            return None;
        }
        // Device time is the TSC scaled ([`Clock::ticks_at`]): the inverse, rounded up.
        // In 64 bits while the product fits (the 128-bit division is a library call).
        if let Some(p) = ticks.checked_mul(self.tsc_hz) {
            return Some(p.div_ceil(PIT_HZ));
        }
        let tsc = (ticks as u128 * self.tsc_hz as u128).div_ceil(PIT_HZ as u128);
        Some(u64::try_from(tsc).unwrap_or(u64::MAX))
    }

    /// PIT periods at host TSC `tsc` for a TSC of `tsc_hz` Hz.
    pub fn ticks_at(tsc: u64, tsc_hz: u64) -> u64 {
        // In 64 bits while the product fits (the 128-bit division is a library call).
        if let Some(p) = tsc.checked_mul(PIT_HZ) {
            return p / tsc_hz.max(1);
        }
        (tsc as u128 * PIT_HZ as u128 / tsc_hz.max(1) as u128) as u64
    }
}

/// Most vCPUs of a VM (the protocol's [`userlib::proto::vmm::MAX_VCPUS`]).
pub const MAX_VCPUS: usize = userlib::proto::vmm::MAX_VCPUS as usize;

/// One vCPU's delivery state (its local APIC is in [`Interrupts::lapics`], at the same
/// index).
#[derive(Clone, Copy, Debug, Default)]
struct CpuState {
    /// The guest's TSC minus the host's (the VMCS TSC offset): the local APIC counts guest
    /// time.
    tsc_offset: u64,
    /// The guest waits in the HLT activity state (the model put it there; RFLAGS.IF is set).
    halted: bool,
    /// The deadline the kernel holds (0: none).
    deadline: u64,
    /// The last [`Interrupts::finish`] for this vCPU left nothing to deliver (no window asked
    /// for, nothing injected): see [`Interrupts::settled`].
    settled: bool,
}

/// Exits that touch no device and no interrupt state: after one of them the devices are
/// looked at only if something was left to deliver or the deadline has passed
/// ([`Interrupts::settled`]). Every other exit (port I/O, MSRs, HLT, MMIO, the window and
/// the deadline themselves, CR access) takes the full look.
pub const QUIET_REASONS: [u32; 8] = [
    reason::CPUID,
    reason::VMCALL,
    reason::XSETBV,
    reason::INVD,
    reason::WBINVD,
    reason::RDPMC,
    reason::PAUSE,
    reason::DR_ACCESS,
];

/// The VM's interrupt controllers: the IOAPIC and the ISA lines (per VM), one local APIC
/// and delivery state per vCPU, and statistics. Exits are handled for the vCPU
/// [`Interrupts::select`] chose (the BSP, index 0, unless told otherwise).
///
/// A message or IPI for another vCPU goes into its local APIC and asks for a kick
/// ([`Interrupts::take_kicks`]): the service makes that vCPU's next entry exit at once
/// (its deadline set to 1, already passed), and that exit delivers the interrupt.
#[derive(Clone, Debug)]
pub struct Interrupts {
    /// The local APIC of each vCPU, by vCPU index (APIC ID = index). On the heap: the model
    /// moves through the VMM's main stack, which has little room.
    pub lapics: alloc::vec::Vec<Lapic>,
    cpus: heapless::Vec<CpuState, MAX_VCPUS>,
    /// The vCPU whose exit is being handled.
    current: usize,
    /// vCPUs (bit n: index n) that received something since the last [`Interrupts::take_kicks`].
    kicks: u32,
    pub ioapic: Ioapic,
    /// The levels last given to the level-driven ISA lines (bit n: line n).
    levels: u16,
    /// External interrupts injected.
    pub injected: u64,
    /// Interrupt-window exits asked for.
    pub windows: u64,
    /// NMIs injected.
    pub nmis: u64,
    /// NMI-window exits asked for.
    pub nmi_windows: u64,
    /// PIT periods whose IRQ 0 edge found the previous one still unacknowledged.
    pub lost_ticks: u64,
    /// HLTs the guest waited in.
    pub halts: u64,
}

impl Default for Interrupts {
    fn default() -> Interrupts {
        Interrupts::new(1)
    }
}

impl Interrupts {
    /// The controllers of a VM with `vcpus` vCPUs (1 to [`MAX_VCPUS`]; out of range counts
    /// as the nearest): vCPU 0 is the bootstrap processor, the others wait for a SIPI.
    pub fn new(vcpus: usize) -> Interrupts {
        let n = vcpus.clamp(1, MAX_VCPUS);
        let lapics = (0..n)
            .map(|i| Lapic::new(lapic::Config::new(i as u32, i == 0)))
            .collect();
        let mut cpus = heapless::Vec::new();
        for _ in 0..n {
            let _ = cpus.push(CpuState::default());
        }
        Interrupts {
            lapics,
            cpus,
            current: 0,
            kicks: 0,
            ioapic: Ioapic::new(IOAPIC_ID),
            levels: 0,
            injected: 0,
            windows: 0,
            nmis: 0,
            nmi_windows: 0,
            lost_ticks: 0,
            halts: 0,
        }
    }

    /// The number of vCPUs.
    pub fn vcpus(&self) -> usize {
        self.lapics.len()
    }

    /// Handles the next exits for vCPU `index` (ignored if there is no such vCPU).
    pub fn select(&mut self, index: usize) {
        if index < self.lapics.len() {
            self.current = index;
        }
    }

    /// The vCPU whose exits are being handled.
    pub fn current(&self) -> usize {
        self.current
    }

    /// The local APIC of the current vCPU.
    pub fn lapic(&self) -> &Lapic {
        &self.lapics[self.current]
    }

    /// The local APIC of the current vCPU, to change.
    pub fn lapic_mut(&mut self) -> &mut Lapic {
        &mut self.lapics[self.current]
    }

    /// The vCPUs (bit n: index n) other than the current one that received an interrupt
    /// message since the last call; clears them. Each must be made to exit
    /// ([`Interrupts::kicked`] once its deadline was set to 1).
    pub fn take_kicks(&mut self) -> u32 {
        core::mem::take(&mut self.kicks)
    }

    /// The service set vCPU `index`'s deadline to 1 (it exits at its next entry): the
    /// deadline the kernel holds for it.
    pub fn kicked(&mut self, index: usize) {
        if let Some(c) = self.cpus.get_mut(index) {
            c.deadline = 1;
        }
    }

    /// vCPU `index` starts again (an application processor at its SIPI): not halted, no
    /// deadline.
    pub fn restarted(&mut self, index: usize) {
        if let Some(c) = self.cpus.get_mut(index) {
            c.halted = false;
            c.deadline = 0;
        }
    }

    /// The current vCPU's TSC offset moved (a guest write of IA32_TSC or IA32_TSC_ADJUST).
    pub fn set_tsc_offset(&mut self, offset: u64) {
        self.cpus[self.current].tsc_offset = offset;
    }

    /// Whether the current vCPU waits in HLT.
    pub fn halted(&self) -> bool {
        self.cpus[self.current].halted
    }

    /// The current vCPU's TSC at host time `clock`.
    pub fn guest_tsc(&self, clock: &Clock) -> u64 {
        clock.tsc.wrapping_add(self.cpus[self.current].tsc_offset)
    }

    /// Gives `msg` to the local APICs in `mask` (bit n: vCPU n); the others are kicked.
    fn receive(&mut self, mask: u32, msg: &Message) {
        for (i, l) in self.lapics.iter_mut().enumerate() {
            if mask & (1 << i) != 0 {
                l.receive(msg);
                if i != self.current {
                    self.kicks |= 1 << i;
                }
            }
        }
    }

    /// ISA line `irq` at `level`: to the 8259 pair and the IOAPIC.
    fn isa_line(&mut self, bus: &mut PortBus, irq: u8, level: bool) {
        bus.pic.set_irq(irq, level);
        if let Some(msg) = self.ioapic.set_irq(isa::gsi(irq), level) {
            self.deliver(&msg);
        }
    }

    /// A message on the APIC bus (from the IOAPIC): to every local APIC it names.
    pub fn deliver(&mut self, msg: &Message) {
        let mask = ipi::message_targets(&self.lapics, msg);
        self.receive(mask, msg);
    }

    /// Acts on what a local-APIC register write of the current vCPU asks for: an IPI (to
    /// the local APICs it names, this one's included) or the end of a level-triggered
    /// interrupt (the IOAPIC may send again).
    pub fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::Ipi(i) => {
                let mask = ipi::targets(&self.lapics, &i);
                self.receive(mask, &i.message);
            }
            Effect::LevelEoi(vector) => {
                for msg in self.ioapic.eoi(vector) {
                    self.deliver(&msg);
                }
            }
        }
    }

    /// Brings the devices' outputs up to time `clock`: the PIT's channel 0 edges, the UART's
    /// and the RTC's levels, the local APIC's timer.
    fn poll(&mut self, bus: &mut PortBus, clock: &Clock) {
        let edges = bus.pit.out_edges(0, clock.ticks);
        if edges > 0 {
            // The 8259 latches one edge: the others are lost ticks, as on hardware.
            self.lost_ticks += edges - 1;
            self.isa_line(bus, isa::PIT, true);
            self.isa_line(bus, isa::PIT, false);
        }
        for (irq, level) in [
            (isa::UART, bus.serial.irq_level()),
            (isa::RTC, bus.cmos.irq_level(clock.ticks)),
            (isa::SCI, bus.pm.irq_level(clock.ticks)),
        ] {
            if (self.levels >> irq) & 1 != u16::from(level) {
                self.levels ^= 1 << irq;
                self.isa_line(bus, irq, level);
            }
        }
        let now = self.guest_tsc(clock);
        self.lapics[self.current].poll(now);
    }

    /// The next time a device's output may change, as a host TSC (`None`: nothing armed).
    fn next_event(&self, bus: &PortBus, clock: &Clock) -> Option<u64> {
        let isa = [
            bus.pit.next_edge(0, clock.ticks),
            bus.cmos.next_event(clock.ticks),
            bus.pm.next_event(clock.ticks),
        ];
        let isa = isa.into_iter().flatten().filter_map(|t| clock.tsc_at(t));
        let lapic = self
            .lapic()
            .next_event(self.guest_tsc(clock))
            .filter(|_| clock.tsc_hz != 0)
            .map(|g| g.wrapping_sub(self.cpus[self.current].tsc_offset).max(1));
        isa.chain(lapic).min()
    }

    /// Whether an interrupt controller asks for the CPU: the 8259 through LINT0 (ExtINT) or
    /// with the local APIC disabled, or the local APIC itself.
    fn requested(&self, bus: &PortBus) -> bool {
        (self.lapics[self.current].lint0_extint() && bus.pic.pending().is_some())
            || self.lapics[self.current].pending().is_some()
    }

    /// The acknowledge: the vector of the request [`Interrupts::requested`] saw, the 8259's
    /// first (as KVM asks it first).
    fn acknowledge(&mut self, bus: &mut PortBus) -> u8 {
        if self.lapics[self.current].lint0_extint() && bus.pic.pending().is_some() {
            return bus.pic.ack();
        }
        match self.lapics[self.current].pending() {
            Some(v) => self.lapics[self.current].ack(v),
            None => bus.pic.ack(), // gone meanwhile: the 8259's spurious vector
        }
    }

    /// RDMSR of a local-APIC MSR (IA32_APIC_BASE, IA32_TSC_DEADLINE, the x2APIC range);
    /// `None` for any other MSR.
    pub fn rdmsr(&mut self, msr: u32, clock: &Clock) -> Option<Result<u64, GpFault>> {
        let now = self.guest_tsc(clock);
        Some(match msr {
            index::APIC_BASE => Ok(self.lapics[self.current].apic_base()),
            index::TSC_DEADLINE => Ok(self.lapics[self.current].tsc_deadline()),
            X2APIC_FIRST..=X2APIC_LAST => self.lapics[self.current].msr_read(msr, now),
            _ => return None,
        })
    }

    /// WRMSR of a local-APIC MSR; `None` for any other MSR. A refused write changes nothing.
    pub fn wrmsr(&mut self, msr: u32, value: u64, clock: &Clock) -> Option<Result<(), GpFault>> {
        let now = self.guest_tsc(clock);
        Some(match msr {
            index::APIC_BASE => self.lapics[self.current].set_apic_base(value),
            index::TSC_DEADLINE => {
                self.lapics[self.current].set_tsc_deadline(value, now);
                Ok(())
            }
            X2APIC_FIRST..=X2APIC_LAST => self
                .lapic_mut()
                .msr_write(msr, value, now)
                .map(|e| e.into_iter().for_each(|e| self.apply(e))),
            _ => return None,
        })
    }

    /// Whether a HLT now would wait for something: a request is pending, a timer runs, or
    /// another vCPU runs (it may send an IPI).
    pub fn can_wake(&mut self, bus: &mut PortBus, clock: &Clock) -> bool {
        self.poll(bus, clock);
        let others = self
            .lapics
            .iter()
            .enumerate()
            .any(|(i, l)| i != self.current && l.mp_state() == lapic::MpState::Running);
        self.requested(bus) || self.nmi_waiting() || self.next_event(bus, clock).is_some() || others
    }

    /// Whether the current vCPU has an NMI to deliver (pending in its local APIC, and the
    /// vCPU running: after INIT it waits for its SIPI with the NMI still pending).
    fn nmi_waiting(&self) -> bool {
        let l = &self.lapics[self.current];
        l.nmi_pending() && l.mp_state() == lapic::MpState::Running
    }

    /// Whether the guest can take an NMI at the entry after reply `r` to exit `m`: the
    /// exit's interruptibility state (unknown without [`group::RIP`]: then no) shows no NMI,
    /// MOV SS or STI blocking, the last two ending if the reply advances RIP (the kernel
    /// ends them, the instruction having completed).
    fn nmi_ok(m: &ExitMessage, r: &ExitReply) -> bool {
        if m.mask & group::RIP == 0 {
            return false;
        }
        let mut blocking = m.interruptibility;
        if r.flags & reply::ADVANCE_RIP != 0 {
            blocking &= !interruptibility::ONE_INSTRUCTION;
        }
        interruptibility::nmi_ok(blocking)
    }

    /// Completes `r`, the model's answer to exit `m`: delivers what the devices request and
    /// sets the deadline (see the module's description).
    /// Whether exit `m`, at host time-stamp `tsc`, can skip [`Interrupts::finish`]: it is one
    /// of the [`QUIET_REASONS`], the last look at the devices for this vCPU left nothing to
    /// deliver, and the vCPU's deadline (the next device event) has not come. Nothing can
    /// then have changed: device state changes by time (the deadline) or by the guest's
    /// accesses (other reasons), and another vCPU's IPI or message to this one kicks it (a
    /// deadline exit). This keeps CPUID and VMCALL round trips as short as they were before
    /// interrupts were delivered.
    pub fn settled(&self, m: &ExitMessage, tsc: u64) -> bool {
        self.settled_after(m.basic_reason(), tsc)
    }

    /// The level ISA line `irq` was last given (by the last look at the devices).
    pub fn line_level(&self, irq: u8) -> bool {
        (self.levels >> irq) & 1 != 0
    }

    /// [`Interrupts::settled`] for an exit of basic reason `basic`.
    pub fn settled_after(&self, basic: u32, tsc: u64) -> bool {
        QUIET_REASONS.contains(&basic) && self.settled_at(tsc)
    }

    /// Whether, at host time-stamp `tsc`, the last look at the devices for the current vCPU
    /// left nothing to deliver and its deadline has not come: an exit that changes nothing
    /// the look reads (a [`QUIET_REASONS`] exit, a [`PortBus::quiet`] access) can skip
    /// [`Interrupts::finish`], which would change nothing either.
    pub fn settled_at(&self, tsc: u64) -> bool {
        let cpu = &self.cpus[self.current];
        cpu.settled && (cpu.deadline == 0 || tsc < cpu.deadline)
    }

    pub fn finish(&mut self, m: &ExitMessage, r: &mut ExitReply, bus: &mut PortBus, clock: &Clock) {
        if r.flags & reply::STOP != 0 {
            return;
        }
        let basic = m.basic_reason();
        if basic == reason::PREEMPTION_TIMER {
            self.cpus[self.current].deadline = 0; // the kernel cleared it when it fired
        }
        if r.flags & reply::HALT != 0 {
            self.cpus[self.current].halted = true;
            self.halts += 1;
        }
        self.poll(bus, clock);
        // The model's own injection (an exception) goes first and keeps the external
        // interrupt waiting in its controller.
        let model_injects = r.flags & reply::INJECT != 0;
        if self.nmi_waiting() {
            if !model_injects && Self::nmi_ok(m, r) {
                self.lapics[self.current].take_nmi();
                r.flags |= reply::INJECT;
                r.inject = NMI_EVENT;
                self.nmis += 1;
            } else {
                r.flags |= reply::NMI_WINDOW;
                self.nmi_windows += 1;
            }
        }
        if r.flags & reply::INJECT != 0 && !model_injects && self.requested(bus) {
            // An NMI went first: the interrupt waits for its window.
            r.flags |= reply::INTR_WINDOW;
            self.windows += 1;
        }
        if r.flags & reply::INJECT == 0 && self.requested(bus) {
            let rflags = if r.flags & reply::SET_RFLAGS != 0 {
                r.rflags
            } else {
                m.rflags
            };
            let past_instruction = r.flags & reply::ADVANCE_RIP != 0
                && m.mask & group::RIP != 0
                && rflags & RFLAGS_IF != 0;
            if basic == reason::INTERRUPT_WINDOW
                || self.cpus[self.current].halted
                || past_instruction
            {
                let vector = self.acknowledge(bus);
                r.flags |= reply::INJECT;
                r.inject = EXTERNAL_INTERRUPT | u64::from(vector);
                self.cpus[self.current].halted = false;
                self.injected += 1;
            } else {
                r.flags |= reply::INTR_WINDOW;
                self.windows += 1;
            }
        }
        if r.flags & reply::INJECT != 0 {
            self.cpus[self.current].halted = false;
        }
        let delivering = reply::INJECT | reply::INTR_WINDOW | reply::NMI_WINDOW;
        self.cpus[self.current].settled = r.flags & delivering == 0;
        let next = self.next_event(bus, clock).unwrap_or(0);
        if next != self.cpus[self.current].deadline {
            r.flags |= reply::SET_DEADLINE;
            r.deadline = next;
            self.cpus[self.current].deadline = next;
        }
    }
}

/// The IOAPIC's register window (IOREGSEL, IOWIN, the EOI register) in its page.
const IOAPIC_WINDOW: u64 = 0x1000;
/// The xAPIC register page.
const LAPIC_PAGE: u64 = 0x1000;

/// The guest-physical device map as the VM model sees it: the local APIC's page (at
/// IA32_APIC_BASE, while the APIC is in xAPIC mode) and the IOAPIC's (at
/// [`crate::acpi::IOAPIC_BASE`]) in front of the [`MmioBus`], at guest time `now`.
pub struct PlatformMmio<'a> {
    pub bus: &'a mut MmioBus,
    pub irq: &'a mut Interrupts,
    /// The guest's TSC.
    pub now: u64,
}

/// Which interrupt controller answers a guest-physical address.
enum Controller {
    Lapic(u32),
    Ioapic(u32),
}

impl PlatformMmio<'_> {
    fn controller(&self, gpa: u64, size: u64) -> Option<Controller> {
        let within = |base: u64, len: u64| {
            (gpa >= base && gpa - base + size <= len).then(|| (gpa - base) as u32)
        };
        let lapic = self.irq.lapic();
        if lapic.mode() == lapic::ApicMode::XApic {
            if let Some(off) = within(lapic.base(), LAPIC_PAGE) {
                return Some(Controller::Lapic(off));
            }
        }
        within(u64::from(crate::acpi::IOAPIC_BASE), IOAPIC_WINDOW).map(Controller::Ioapic)
    }
}

impl Devices for PlatformMmio<'_> {
    fn claims(&mut self, gpa: u64) -> bool {
        self.controller(gpa, 1).is_some() || self.bus.claims(gpa)
    }

    fn read(&mut self, gpa: u64, size: u8) -> Option<u64> {
        match self.controller(gpa, u64::from(size)) {
            Some(Controller::Lapic(off)) => {
                Some(self.irq.lapic_mut().mmio_read_sized(off, size, self.now))
            }
            // 32-bit registers: narrower reads take their bytes, wider ones read 0 above.
            Some(Controller::Ioapic(off)) => {
                let v = u64::from(self.irq.ioapic.mmio_read(off & !3));
                Some((v >> (8 * (off & 3))) & (u64::MAX >> (64 - 8 * u32::from(size.min(8)))))
            }
            None => self.bus.read(gpa, size),
        }
    }

    fn write(&mut self, gpa: u64, size: u8, value: u64) -> bool {
        match self.controller(gpa, u64::from(size)) {
            Some(Controller::Lapic(off)) => {
                let effect = self
                    .irq
                    .lapic_mut()
                    .mmio_write_sized(off, size, value, self.now);
                if let Some(e) = effect {
                    self.irq.apply(e);
                }
                true
            }
            // Only aligned 32-bit writes reach an IOAPIC register (others are ignored).
            Some(Controller::Ioapic(off)) => {
                if size == 4 && off & 3 == 0 {
                    for msg in self.irq.ioapic.mmio_write(off, value as u32) {
                        self.irq.deliver(&msg);
                    }
                }
                true
            }
            None => self.bus.write(gpa, size, value),
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_nmi;
#[cfg(test)]
mod tests_smp;
