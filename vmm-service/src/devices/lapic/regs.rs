//! The local APIC's registers through its two interfaces (SDM vol. 3, 11.4.1 and 11.12.1).
//!
//! xAPIC MMIO ([`Lapic::mmio_read`], [`Lapic::mmio_write`]), only in xAPIC mode: registers
//! are 32 bits wide at 16-byte-aligned offsets of the 4 KiB page. Reads at offsets 1..=3 of a
//! slot return the register shifted right by 8 bits per byte (the caller keeps the low bytes
//! it needs); bytes 4..=15 of a slot read 0. Writes that are not 32-bit at a 16-byte-aligned
//! offset are ignored (KVM does the same). Write-only registers (EOI) read 0, writes of
//! read-only registers are ignored, and reserved offsets read 0, ignore writes and set the
//! ESR's "illegal register address" bit. In x2APIC mode or with the APIC disabled, the page
//! is not the APIC's: reads return all ones and writes are ignored, as for an unbacked
//! address.
//!
//! x2APIC MSRs 0x800..=0x8ff ([`Lapic::msr_read`], [`Lapic::msr_write`]), only in x2APIC
//! mode (#GP otherwise): MSR `0x800 + offset / 16`. #GP for: reserved MSRs, and those with no
//! x2APIC form (APR, remote read, DFR, ICR high); reads of EOI and SELF IPI; writes of
//! read-only registers (ID, version, PPR, LDR, ISR, TMR, IRR, current count); a nonzero
//! write of EOI or ESR; bits 63:32 set in any register but the ICR; reserved ICR bits. The
//! ICR is one 64-bit register (destination in bits 63:32); SELF IPI (0x83f) sends a fixed,
//! edge-triggered interrupt to this APIC directly.

use super::ipi::{DeliveryMode, DestFormat, Ipi, Message, Shorthand};
use super::{esr, svr, ApicMode, Effect, Lapic, Lvt, LVT_MASKED};
use crate::msr::GpFault;

/// Register offsets in the xAPIC page.
pub mod offset {
    pub const ID: u32 = 0x20;
    pub const VERSION: u32 = 0x30;
    pub const TPR: u32 = 0x80;
    pub const APR: u32 = 0x90;
    pub const PPR: u32 = 0xa0;
    pub const EOI: u32 = 0xb0;
    pub const RRD: u32 = 0xc0;
    pub const LDR: u32 = 0xd0;
    pub const DFR: u32 = 0xe0;
    pub const SVR: u32 = 0xf0;
    pub const ISR: u32 = 0x100;
    pub const TMR: u32 = 0x180;
    pub const IRR: u32 = 0x200;
    pub const ESR: u32 = 0x280;
    pub const ICR_LOW: u32 = 0x300;
    pub const ICR_HIGH: u32 = 0x310;
    pub const TIMER_INITIAL: u32 = 0x380;
    pub const TIMER_CURRENT: u32 = 0x390;
    pub const TIMER_DIVIDE: u32 = 0x3e0;
    pub const SELF_IPI: u32 = 0x3f0;
    /// Size of the xAPIC page.
    pub const PAGE: u32 = 0x1000;
}

/// The first x2APIC MSR (xAPIC offset 0).
pub const X2APIC_FIRST: u32 = 0x800;
/// The x2APIC MSR range: one MSR per 16-byte slot of the xAPIC page.
pub const X2APIC_MSRS: core::ops::RangeInclusive<u32> =
    X2APIC_FIRST..=X2APIC_FIRST + (offset::PAGE >> 4) - 1;

/// The x2APIC MSR of xAPIC offset `offset`.
pub const fn x2apic_msr(offset: u32) -> u32 {
    X2APIC_FIRST + (offset >> 4)
}

/// Writable bits of ICR bits 31:0: vector, delivery mode, destination mode, level, trigger
/// mode, shorthand.
pub const ICR_LOW_WRITABLE: u32 = 0x000c_cfff;
/// Writable bits of the xAPIC ICR high half (destination, bits 31:24).
pub const ICR_HIGH_WRITABLE: u32 = 0xff00_0000;

/// Why an access does not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fail {
    /// No such register in this mode.
    Reserved,
    /// The register exists but not in this direction, or the value is not allowed.
    Denied,
}

/// Which of the 256-bit registers (ISR, TMR, IRR) an offset falls in, and the word.
fn vector_word(off: u32) -> Option<(u32, usize)> {
    [offset::ISR, offset::TMR, offset::IRR]
        .into_iter()
        .find(|&b| (b..b + 0x80).contains(&off))
        .map(|b| (b, ((off - b) >> 4) as usize))
}

impl Lapic {
    fn lvt_exists(&self, l: Lvt) -> bool {
        l != Lvt::Cmci || self.config.cmci
    }

    /// One register read at a 16-byte-aligned offset.
    fn read_reg(&mut self, off: u32, now: u64, x2: bool) -> Result<u64, Fail> {
        use offset::*;
        if let Some((b, w)) = vector_word(off) {
            let r = match b {
                ISR => &self.isr,
                TMR => &self.tmr,
                _ => &self.irr,
            };
            return Ok(r.0[w] as u64);
        }
        if let Some(l) = Lvt::at(off).filter(|&l| self.lvt_exists(l)) {
            return Ok(self.lvt(l) as u64);
        }
        let v = match off {
            ID if x2 => self.config.apic_id,
            ID => self.id,
            VERSION => self.version(),
            TPR => self.tpr,
            APR if !x2 => self.apr(),
            PPR => self.ppr(),
            EOI | SELF_IPI if x2 => return Err(Fail::Denied),
            EOI => 0,
            RRD if !x2 => 0,
            LDR => self.ldr(),
            DFR if !x2 => self.dfr,
            SVR => self.svr,
            ESR => self.esr,
            ICR_LOW if x2 => return Ok(((self.icr_high as u64) << 32) | self.icr_low as u64),
            ICR_LOW => self.icr_low,
            ICR_HIGH if !x2 => self.icr_high,
            TIMER_INITIAL => self.timer.initial(),
            TIMER_CURRENT => {
                self.poll(now);
                self.timer.current(now)
            }
            TIMER_DIVIDE => self.timer.divide(),
            _ => return Err(Fail::Reserved),
        };
        Ok(v as u64)
    }

    /// One register write at a 16-byte-aligned offset.
    fn write_reg(
        &mut self,
        off: u32,
        value: u64,
        now: u64,
        x2: bool,
    ) -> Result<Option<Effect>, Fail> {
        use offset::*;
        if x2 && off != ICR_LOW && value >> 32 != 0 {
            return Err(Fail::Denied);
        }
        let v = value as u32;
        if let Some(l) = Lvt::at(off).filter(|&l| self.lvt_exists(l)) {
            self.write_lvt(l, v, now);
            return Ok(None);
        }
        match off {
            ID if !x2 => self.id = v & 0xff00_0000,
            TPR => self.set_tpr(v),
            EOI => {
                if x2 && v != 0 {
                    return Err(Fail::Denied);
                }
                return Ok(self.eoi().map(Effect::LevelEoi));
            }
            LDR if !x2 => self.ldr = v & 0xff00_0000,
            DFR if !x2 => self.dfr = v | 0x0fff_ffff,
            SVR => {
                self.svr = v & svr::WRITABLE;
                if self.svr & svr::ENABLE == 0 {
                    for e in self.lvt.iter_mut() {
                        *e |= LVT_MASKED;
                    }
                }
            }
            ESR => {
                if x2 && v != 0 {
                    return Err(Fail::Denied);
                }
                self.esr = core::mem::take(&mut self.esr_pending);
            }
            ICR_LOW => {
                if x2 {
                    if value as u32 & !ICR_LOW_WRITABLE != 0 {
                        return Err(Fail::Denied);
                    }
                    self.icr_high = (value >> 32) as u32;
                }
                self.icr_low = v & ICR_LOW_WRITABLE;
                return Ok(self.send_ipi().map(Effect::Ipi));
            }
            ICR_HIGH if !x2 => self.icr_high = v & ICR_HIGH_WRITABLE,
            TIMER_INITIAL => {
                self.poll(now);
                self.timer.set_initial(v, now);
            }
            TIMER_DIVIDE => {
                self.poll(now);
                self.timer.set_divide(v, now);
            }
            SELF_IPI if x2 => self.deliver_self(v as u8),
            // Read-only registers that exist in this mode.
            ID | VERSION | PPR | LDR | TIMER_CURRENT => return Err(Fail::Denied),
            APR | RRD if !x2 => return Err(Fail::Denied),
            _ if vector_word(off).is_some() => return Err(Fail::Denied),
            _ => return Err(Fail::Reserved),
        }
        Ok(None)
    }

    fn write_lvt(&mut self, l: Lvt, v: u32, now: u64) {
        let mut v = v & l.writable();
        if self.svr & svr::ENABLE == 0 {
            v |= LVT_MASKED;
        }
        if l == Lvt::Timer {
            self.set_timer_lvt(v, now);
        }
        self.lvt[l as usize] = v;
    }

    /// The IPI the ICR now describes, or `None` (with ESR "send illegal vector") for a fixed
    /// or lowest-priority IPI with a vector below 16.
    fn send_ipi(&mut self) -> Option<Ipi> {
        let low = self.icr_low;
        let mode = DeliveryMode::from_bits(low as u64);
        if matches!(mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && low & 0xff < 16 {
            self.error(esr::SEND_ILLEGAL_VECTOR);
            return None;
        }
        let (dest, format) = match self.mode() {
            ApicMode::X2Apic => (self.icr_high, DestFormat::X2Apic),
            _ => (self.icr_high >> 24, DestFormat::XApic),
        };
        let shorthand = match (low >> 18) & 3 {
            0 => Shorthand::None,
            1 => Shorthand::SelfOnly,
            2 => Shorthand::AllIncludingSelf,
            _ => Shorthand::AllExcludingSelf,
        };
        Some(Ipi {
            message: Message {
                dest,
                format,
                logical: low & (1 << 11) != 0,
                mode,
                vector: low as u8,
                level: low & (1 << 14) != 0,
                level_triggered: low & (1 << 15) != 0,
            },
            shorthand,
            source: self.apic_id(),
        })
    }

    /// A 32-bit read at `offset` in the xAPIC page (see the module comment for other
    /// offsets and modes). `now` is the guest TSC (for the current count).
    pub fn mmio_read(&mut self, offset: u32, now: u64) -> u32 {
        if self.mode() != ApicMode::XApic || offset >= offset::PAGE {
            return u32::MAX;
        }
        let byte = offset & 0xf;
        if byte >= 4 {
            return 0;
        }
        match self.read_reg(offset & !0xf, now, false) {
            Ok(v) => (v as u32) >> (8 * byte),
            Err(Fail::Denied) => 0,
            Err(Fail::Reserved) => {
                self.error(esr::ILLEGAL_REGISTER);
                0
            }
        }
    }

    /// A 32-bit write at `offset` in the xAPIC page. Returns what the caller must do: send
    /// an IPI (ICR low) or tell the IOAPIC about a level-triggered EOI.
    pub fn mmio_write(&mut self, offset: u32, value: u32, now: u64) -> Option<Effect> {
        if self.mode() != ApicMode::XApic || offset >= offset::PAGE || offset & 0xf != 0 {
            return None;
        }
        match self.write_reg(offset, value as u64, now, false) {
            Ok(e) => e,
            Err(Fail::Denied) => None,
            Err(Fail::Reserved) => {
                self.error(esr::ILLEGAL_REGISTER);
                None
            }
        }
    }

    /// A read of `size` bytes (1, 2, 4 or 8) at `offset`, byte by byte as [`Lapic::mmio_read`]
    /// lays the page out.
    pub fn mmio_read_sized(&mut self, offset: u32, size: u8, now: u64) -> u64 {
        let mut v = 0u64;
        for i in (0..size.min(8) as u32).rev() {
            v = (v << 8) | (self.mmio_read(offset + i, now) & 0xff) as u64;
        }
        v
    }

    /// A write of `size` bytes at `offset`: only 4-byte writes reach a register.
    pub fn mmio_write_sized(
        &mut self,
        offset: u32,
        size: u8,
        value: u64,
        now: u64,
    ) -> Option<Effect> {
        if size != 4 {
            return None;
        }
        self.mmio_write(offset, value as u32, now)
    }

    fn x2apic_offset(&self, msr: u32) -> Result<u32, GpFault> {
        if self.mode() != ApicMode::X2Apic || !X2APIC_MSRS.contains(&msr) {
            return Err(GpFault);
        }
        Ok((msr - X2APIC_FIRST) << 4)
    }

    /// RDMSR of an x2APIC register (see the module comment for the #GP cases).
    pub fn msr_read(&mut self, msr: u32, now: u64) -> Result<u64, GpFault> {
        let off = self.x2apic_offset(msr)?;
        self.read_reg(off, now, true).map_err(|_| GpFault)
    }

    /// WRMSR of an x2APIC register; `Ok(Some(_))` asks the caller to act.
    pub fn msr_write(&mut self, msr: u32, value: u64, now: u64) -> Result<Option<Effect>, GpFault> {
        let off = self.x2apic_offset(msr)?;
        self.write_reg(off, value, now, true).map_err(|_| GpFault)
    }
}
