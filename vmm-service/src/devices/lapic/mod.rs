//! One local APIC per vCPU (SDM vol. 3, ch. 11): a pure model, driven by the caller.
//!
//! - Registers: [`regs`] (xAPIC MMIO in the 4 KiB page at the APIC base, x2APIC MSRs
//!   0x800..=0x8ff) and IA32_APIC_BASE ([`Lapic::set_apic_base`]).
//! - Interrupts in: [`Lapic::accept`] (a fixed interrupt into the IRR, and the TMR for level
//!   triggered ones) or [`Lapic::receive`] (any message: fixed, lowest priority, NMI, INIT,
//!   SIPI). Interrupts out to the CPU: [`Lapic::pending`] (the vector to inject, if any),
//!   [`Lapic::ack`] when it is injected, [`Lapic::take_nmi`], [`Lapic::lint0_extint`] (the
//!   8259's vector should be taken: virtual-wire mode). EOI returns the vector of a
//!   level-triggered interrupt, for the IOAPIC's remote IRR.
//! - Time: the timer ([`timer`]) counts the guest TSC; [`Lapic::next_event`] and
//!   [`Lapic::poll`] take `now` (guest TSC).
//! - IPIs: an ICR write returns an [`ipi::Ipi`]; the caller routes it ([`ipi::targets`]) and
//!   calls [`Lapic::receive`] on each target (the sender included for the self shorthands).
//! - INIT/SIPI: INIT resets the APIC ([`Lapic::init`]) and puts an application processor in
//!   wait-for-SIPI; the SIPI's vector is taken with [`Lapic::take_sipi`].
//!
//! Reset state (SDM 11.4.7.1): xAPIC mode at 0xfee00000, software-disabled (SVR 0xff), all
//! LVT entries masked, DFR all ones; except that the bootstrap processor's LINT0 is set to
//! ExtINT, unmasked (virtual wire), as the firmware leaves it and as KVM resets it, so the
//! 8259's interrupts reach a kernel that never touches the APIC. CMCI is not modelled unless
//! [`Config::cmci`] is set (the version register then reports 7 LVT entries, not 6).

pub mod ipi;
pub mod regs;
pub mod timer;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_prop;

use crate::msr::GpFault;
use ipi::{DeliveryMode, Message};
use timer::{Timer, TimerMode};

/// The architectural APIC base.
pub const DEFAULT_BASE: u64 = 0xfee0_0000;

/// IA32_APIC_BASE bits.
pub mod base {
    /// This processor is the bootstrap processor (read-only).
    pub const BSP: u64 = 1 << 8;
    /// x2APIC mode enable.
    pub const EXTD: u64 = 1 << 10;
    /// APIC global enable.
    pub const EN: u64 = 1 << 11;
}

/// Local vector table entries, in the order of [`Lvt::ALL`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lvt {
    Cmci,
    Timer,
    Thermal,
    Perf,
    Lint0,
    Lint1,
    Error,
}

/// LVT mask bit.
pub const LVT_MASKED: u32 = 1 << 16;

impl Lvt {
    pub const ALL: [Lvt; 7] = [
        Lvt::Cmci,
        Lvt::Timer,
        Lvt::Thermal,
        Lvt::Perf,
        Lvt::Lint0,
        Lvt::Lint1,
        Lvt::Error,
    ];

    /// Register offset in the xAPIC page.
    pub fn offset(self) -> u32 {
        match self {
            Lvt::Cmci => 0x2f0,
            other => 0x320 + 0x10 * (other as u32 - 1),
        }
    }

    /// The entry at xAPIC offset `offset`.
    pub fn at(offset: u32) -> Option<Lvt> {
        Lvt::ALL.into_iter().find(|l| l.offset() == offset)
    }

    /// Writable bits (SDM Figure 11-8): vector, mask, and per entry the delivery mode,
    /// timer mode, pin polarity and trigger mode.
    pub fn writable(self) -> u32 {
        match self {
            Lvt::Timer => 0x0007_00ff,
            Lvt::Cmci | Lvt::Thermal | Lvt::Perf => 0x0001_07ff,
            Lvt::Lint0 | Lvt::Lint1 => 0x0001_a7ff,
            Lvt::Error => 0x0001_00ff,
        }
    }
}

/// The ESR's error bits (SDM 11.5.3).
pub mod esr {
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    pub const RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
    pub const ILLEGAL_REGISTER: u32 = 1 << 7;
}

/// SVR bits.
pub mod svr {
    pub const ENABLE: u32 = 1 << 8;
    /// Focus processor checking disabled.
    pub const FOCUS_DISABLED: u32 = 1 << 9;
    /// Writable bits (EOI-broadcast suppression, bit 12, is not offered).
    pub const WRITABLE: u32 = 0x3ff;
}

/// Version register: version 0x14 (integrated APIC), max LVT entry in bits 23:16.
pub const VERSION: u32 = 0x14;

/// What the APIC base MSR selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApicMode {
    Disabled,
    XApic,
    X2Apic,
}

/// Construction parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Initial APIC ID (the x2APIC ID; the xAPIC ID register resets to its low 8 bits).
    pub apic_id: u32,
    /// Bootstrap processor.
    pub bsp: bool,
    /// The guest's MAXPHYADDR (APIC base bits above it are reserved).
    pub maxphyaddr: u8,
    /// Offer the CMCI LVT entry (MCG_CAP.MCG_CMCI_P should then be set).
    pub cmci: bool,
}

impl Config {
    pub fn new(apic_id: u32, bsp: bool) -> Config {
        Config {
            apic_id,
            bsp,
            maxphyaddr: 36,
            cmci: false,
        }
    }
}

/// Something an APIC register write asks the caller to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send this IPI (ICR write).
    Ipi(ipi::Ipi),
    /// An EOI completed this level-triggered vector: tell the IOAPIC(s).
    LevelEoi(u8),
}

/// A 256-bit vector register (ISR, TMR, IRR) as eight 32-bit words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bits256(pub [u32; 8]);

impl Bits256 {
    pub fn get(&self, v: u8) -> bool {
        self.0[v as usize / 32] & (1 << (v % 32)) != 0
    }
    pub fn set(&mut self, v: u8, on: bool) {
        let w = &mut self.0[v as usize / 32];
        if on {
            *w |= 1 << (v % 32);
        } else {
            *w &= !(1 << (v % 32));
        }
    }
    /// The highest set vector.
    pub fn highest(&self) -> Option<u8> {
        (0..8).rev().find_map(|i| {
            let w = self.0[i];
            (w != 0).then(|| (i * 32 + 31 - w.leading_zeros() as usize) as u8)
        })
    }
}

/// Where an application processor is in the INIT/SIPI protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MpState {
    Running,
    /// After INIT: the vCPU stays stopped until a SIPI arrives (an NMI received meanwhile
    /// stays pending in [`Lapic::take_nmi`]; the caller must not inject it before then).
    WaitForSipi,
    /// A SIPI arrived with this vector (start at `vector << 12`), not yet taken.
    SipiReceived(u8),
}

/// One local APIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lapic {
    config: Config,
    base_msr: u64,
    id: u32,
    tpr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    isr: Bits256,
    tmr: Bits256,
    irr: Bits256,
    esr: u32,
    esr_pending: u32,
    lvt: [u32; 7],
    icr_low: u32,
    icr_high: u32,
    timer: Timer,
    nmi_pending: bool,
    init_received: bool,
    mp: MpState,
}

impl Lapic {
    /// A local APIC in its power-up state; application processors start in wait-for-SIPI.
    pub fn new(config: Config) -> Lapic {
        let mut l = Lapic {
            config,
            base_msr: DEFAULT_BASE | base::EN | if config.bsp { base::BSP } else { 0 },
            id: 0,
            tpr: 0,
            ldr: 0,
            dfr: 0,
            svr: 0,
            isr: Bits256::default(),
            tmr: Bits256::default(),
            irr: Bits256::default(),
            esr: 0,
            esr_pending: 0,
            lvt: [0; 7],
            icr_low: 0,
            icr_high: 0,
            timer: Timer::default(),
            nmi_pending: false,
            init_received: false,
            mp: if config.bsp {
                MpState::Running
            } else {
                MpState::WaitForSipi
            },
        };
        l.reset_registers();
        l
    }

    /// The register state of power-up and INIT (everything but the APIC base MSR and
    /// the ID).
    fn reset_registers(&mut self) {
        self.id = self.config.apic_id << 24;
        self.tpr = 0;
        self.ldr = 0;
        self.dfr = u32::MAX;
        self.svr = 0xff;
        self.isr = Bits256::default();
        self.tmr = Bits256::default();
        self.irr = Bits256::default();
        self.esr = 0;
        self.esr_pending = 0;
        self.lvt = [LVT_MASKED; 7];
        if self.config.bsp {
            // Virtual wire, as the firmware leaves it (see the module comment).
            self.lvt[Lvt::Lint0 as usize] = 7 << 8;
        }
        self.icr_low = 0;
        self.icr_high = 0;
        self.timer.reset();
        self.nmi_pending = false;
    }

    /// An INIT (IPI or INIT signal): resets the registers (the APIC ID and the APIC base
    /// MSR, including x2APIC mode, are kept) and puts an application processor in
    /// wait-for-SIPI. The bootstrap processor restarts at the reset vector instead.
    pub fn init(&mut self) {
        let id = self.id;
        self.reset_registers();
        self.id = id;
        self.init_received = true;
        self.mp = if self.config.bsp {
            MpState::Running
        } else {
            MpState::WaitForSipi
        };
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn mode(&self) -> ApicMode {
        match (
            self.base_msr & base::EN != 0,
            self.base_msr & base::EXTD != 0,
        ) {
            (false, _) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
        }
    }

    /// The physical address of the xAPIC page.
    pub fn base(&self) -> u64 {
        self.base_msr & !0xfff
    }

    /// IA32_APIC_BASE.
    pub fn apic_base(&self) -> u64 {
        self.base_msr
    }

    /// A WRMSR of IA32_APIC_BASE (SDM 11.12.5): #GP for reserved bits (7:0, 9, above
    /// MAXPHYADDR), for EXTD without EN, and for the illegal transitions x2APIC -> xAPIC and
    /// disabled -> x2APIC. The BSP bit is read-only (its written value is ignored).
    /// Disabling the APIC resets its registers.
    pub fn set_apic_base(&mut self, value: u64) -> Result<(), GpFault> {
        let addr_mask = ((1u64 << self.config.maxphyaddr.min(52)) - 1) & !0xfff;
        if value & !(addr_mask | base::BSP | base::EXTD | base::EN) != 0 {
            return Err(GpFault);
        }
        let new = match (value & base::EN != 0, value & base::EXTD != 0) {
            (false, false) => ApicMode::Disabled,
            (false, true) => return Err(GpFault),
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
        };
        let old = self.mode();
        match (old, new) {
            (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic) => {
                return Err(GpFault)
            }
            _ => {}
        }
        self.base_msr = (value & !base::BSP) | (self.base_msr & base::BSP);
        if new == ApicMode::Disabled && old != ApicMode::Disabled {
            self.reset_registers();
        }
        Ok(())
    }

    /// The APIC ID as destinations see it: the x2APIC ID in x2APIC mode, else ID bits 31:24.
    pub fn apic_id(&self) -> u32 {
        match self.mode() {
            ApicMode::X2Apic => self.config.apic_id,
            _ => self.id >> 24,
        }
    }

    /// The logical destination register (derived from the ID in x2APIC mode).
    pub fn ldr(&self) -> u32 {
        match self.mode() {
            ApicMode::X2Apic => ipi::x2apic_ldr(self.config.apic_id),
            _ => self.ldr,
        }
    }

    fn dfr_flat(&self) -> bool {
        self.dfr >> 28 == 0xf
    }

    /// The version register: version, and the highest LVT entry's index in bits 23:16.
    pub fn version(&self) -> u32 {
        let max_lvt = if self.config.cmci { 6 } else { 5 };
        VERSION | (max_lvt << 16)
    }

    /// Software-enabled (SVR bit 8) and hardware-enabled.
    pub fn enabled(&self) -> bool {
        self.mode() != ApicMode::Disabled && self.svr & svr::ENABLE != 0
    }

    pub fn tpr(&self) -> u32 {
        self.tpr
    }

    /// Writes the TPR (bits 7:0; CR8 writes land here as `cr8 << 4`).
    pub fn set_tpr(&mut self, value: u32) {
        self.tpr = value & 0xff;
    }

    /// Processor priority (SDM 11.8.3.1).
    pub fn ppr(&self) -> u32 {
        let isrv = self.isr.highest().unwrap_or(0) as u32;
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xf0
        }
    }

    /// Arbitration priority (lowest-priority delivery).
    pub fn apr(&self) -> u32 {
        let isrv = self.isr.highest().unwrap_or(0) as u32;
        let irrv = self.irr.highest().unwrap_or(0) as u32;
        if self.tpr >> 4 >= irrv >> 4 && self.tpr >> 4 > isrv >> 4 {
            self.tpr
        } else {
            (self.tpr & 0xf0).max(isrv & 0xf0).max(irrv & 0xf0)
        }
    }

    pub fn isr(&self) -> &Bits256 {
        &self.isr
    }
    pub fn irr(&self) -> &Bits256 {
        &self.irr
    }
    pub fn tmr(&self) -> &Bits256 {
        &self.tmr
    }

    /// The raw value of one LVT entry.
    pub fn lvt(&self, which: Lvt) -> u32 {
        self.lvt[which as usize]
    }

    /// Records errors in the ESR's pending bits and raises the error interrupt for new ones.
    fn error(&mut self, bits: u32) {
        let new = bits & !self.esr_pending;
        self.esr_pending |= bits;
        if new != 0 {
            self.fire_lvt(Lvt::Error);
        }
    }

    /// Accepts a fixed (or lowest-priority) interrupt into the IRR; level-triggered ones set
    /// the TMR bit, edge-triggered ones clear it. Vectors 0..=15 are illegal (ESR "receive
    /// illegal vector"); a disabled APIC accepts nothing. Returns whether it was accepted.
    pub fn accept(&mut self, vector: u8, level_triggered: bool) -> bool {
        if !self.enabled() {
            return false;
        }
        if vector < 16 {
            self.error(esr::RECEIVE_ILLEGAL_VECTOR);
            return false;
        }
        self.irr.set(vector, true);
        self.tmr.set(vector, level_triggered);
        true
    }

    /// Receives a message from the APIC bus (an IPI or an IOAPIC message addressed here).
    /// Fixed and lowest-priority: [`Lapic::accept`] (a level-triggered de-assert is ignored);
    /// NMI: [`Lapic::take_nmi`]; INIT: [`Lapic::init`] (INIT level de-assert is ignored);
    /// SIPI: recorded only in wait-for-SIPI. SMI, ExtINT and reserved modes are dropped.
    pub fn receive(&mut self, msg: &Message) {
        if self.mode() == ApicMode::Disabled {
            return;
        }
        let deassert = msg.level_triggered && !msg.level;
        match msg.mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority if !deassert => {
                self.accept(msg.vector, msg.level_triggered);
            }
            DeliveryMode::Nmi => self.nmi_pending = true,
            DeliveryMode::Init if !deassert => self.init(),
            DeliveryMode::Sipi if self.mp == MpState::WaitForSipi => {
                self.mp = MpState::SipiReceived(msg.vector)
            }
            _ => {}
        }
    }

    /// The highest pending vector whose priority class is above the PPR, or `None` (also
    /// when the APIC is disabled). Whether the CPU can take it (RFLAGS.IF, interrupt
    /// shadow) is the caller's business.
    pub fn pending(&self) -> Option<u8> {
        if !self.enabled() {
            return None;
        }
        let v = self.irr.highest()?;
        (v as u32 >> 4 > self.ppr() >> 4).then_some(v)
    }

    /// The CPU takes the interrupt `vector` (it is being injected): IRR -> ISR. Returns the
    /// vector to deliver: `vector` itself, or the spurious vector (SVR bits 7:0, with no ISR
    /// bit set) if `vector` is no longer pending above the PPR (masked by a TPR raise since).
    pub fn ack(&mut self, vector: u8) -> u8 {
        if self.enabled() && self.irr.get(vector) && vector as u32 >> 4 > self.ppr() >> 4 {
            self.irr.set(vector, false);
            self.isr.set(vector, true);
            vector
        } else {
            self.spurious_vector()
        }
    }

    /// SVR bits 7:0.
    pub fn spurious_vector(&self) -> u8 {
        self.svr as u8
    }

    /// End of interrupt: clears the highest ISR bit. Returns that vector if it was level
    /// triggered (the IOAPIC's remote IRR must be cleared), else `None`.
    pub fn eoi(&mut self) -> Option<u8> {
        let v = self.isr.highest()?;
        self.isr.set(v, false);
        self.tmr.get(v).then_some(v)
    }

    /// Whether an NMI is pending (one is latched: more NMIs before it is taken are one).
    pub fn nmi_pending(&self) -> bool {
        self.nmi_pending
    }

    /// An NMI is pending (from an IPI or an LVT entry in NMI mode); clears it.
    pub fn take_nmi(&mut self) -> bool {
        core::mem::take(&mut self.nmi_pending)
    }

    /// An INIT arrived and was not taken yet ([`Lapic::take_init`]).
    pub fn init_pending(&self) -> bool {
        self.init_received
    }

    /// An INIT arrived since the last call (the caller resets the vCPU's state); clears it.
    pub fn take_init(&mut self) -> bool {
        core::mem::take(&mut self.init_received)
    }

    pub fn mp_state(&self) -> MpState {
        self.mp
    }

    /// Whether the vCPU must stay stopped waiting for a SIPI.
    pub fn waiting_for_sipi(&self) -> bool {
        self.mp == MpState::WaitForSipi
    }

    /// The vector of a SIPI received in wait-for-SIPI (the vCPU starts in real mode at
    /// CS = vector << 8, IP = 0); the vCPU is running from then on.
    pub fn take_sipi(&mut self) -> Option<u8> {
        match self.mp {
            MpState::SipiReceived(v) => {
                self.mp = MpState::Running;
                Some(v)
            }
            _ => None,
        }
    }

    /// Whether the CPU's INTR input comes from the 8259 (take its vector): the APIC is
    /// hardware-disabled (LINT0 is then the INTR pin), or LINT0 is unmasked in ExtINT mode.
    pub fn lint0_extint(&self) -> bool {
        if self.mode() == ApicMode::Disabled {
            return true;
        }
        let lvt = self.lvt(Lvt::Lint0);
        lvt & LVT_MASKED == 0 && DeliveryMode::from_bits(lvt as u64) == DeliveryMode::ExtInt
    }

    /// Delivers a local interrupt through LVT entry `which` (unless masked): fixed mode
    /// into the IRR, NMI mode as an NMI; other modes are dropped.
    fn fire_lvt(&mut self, which: Lvt) {
        let lvt = self.lvt(which);
        if lvt & LVT_MASKED != 0 || !self.enabled() {
            return;
        }
        // The timer and error entries have no delivery-mode field: always fixed.
        let mode = match which {
            Lvt::Timer | Lvt::Error => DeliveryMode::Fixed,
            _ => DeliveryMode::from_bits(lvt as u64),
        };
        let level = matches!(which, Lvt::Lint0 | Lvt::Lint1) && lvt & (1 << 15) != 0;
        match mode {
            DeliveryMode::Fixed => {
                self.accept(lvt as u8, level);
            }
            DeliveryMode::Nmi => self.nmi_pending = true,
            _ => {}
        }
    }

    /// Raises the local interrupt pin LINT0 or LINT1 (`pin` 0 or 1) once, as an edge
    /// (ExtINT on LINT0 is [`Lapic::lint0_extint`] instead).
    pub fn raise_lint(&mut self, pin: u8) {
        self.fire_lvt(if pin == 0 { Lvt::Lint0 } else { Lvt::Lint1 });
    }

    /// The timer state (for reports and tests).
    pub fn timer(&self) -> &Timer {
        &self.timer
    }

    /// The guest-TSC time at which the APIC's output may next change (the timer's next
    /// expiry; may be at or before `now` if a poll is due), or `None` if nothing is armed
    /// or the timer's interrupt is masked.
    pub fn next_event(&self, _now: u64) -> Option<u64> {
        if self.lvt(Lvt::Timer) & LVT_MASKED != 0 || !self.enabled() {
            return None;
        }
        self.timer.next_event()
    }

    /// Advances the timer to `now`: an expiry sets the LVT timer's vector in the IRR unless
    /// the entry is masked; missed periods are counted in `timer().missed`.
    pub fn poll(&mut self, now: u64) {
        if self.timer.poll(now) {
            self.fire_lvt(Lvt::Timer);
        }
    }

    /// IA32_TSC_DEADLINE (MSR 0x6e0) as read.
    pub fn tsc_deadline(&self) -> u64 {
        self.timer.deadline()
    }

    /// A WRMSR of IA32_TSC_DEADLINE (ignored unless the timer is in TSC-deadline mode).
    pub fn set_tsc_deadline(&mut self, value: u64, now: u64) {
        self.poll(now);
        self.timer.set_deadline(value);
    }

    /// Applies a self-IPI (the x2APIC SELF IPI register, or a caller that keeps a
    /// self-shorthand fixed IPI local): an edge-triggered fixed interrupt.
    pub fn deliver_self(&mut self, vector: u8) {
        self.accept(vector, false);
    }

    fn set_timer_lvt(&mut self, value: u32, now: u64) {
        self.poll(now);
        self.timer.set_mode(TimerMode::from_lvt(value));
    }
}
