//! The ACPI fixed-feature power-management registers (PM1a event and control blocks, the PM
//! timer) at I/O ports [`PM_BASE`].., as the FADT ([`crate::acpi`]) describes them:
//!
//! - `PM1a_EVT_BLK` ([`PM1A_EVT`], 4 bytes): PM1_STS (word, write 1 to clear) then PM1_EN
//!   (word). Only the timer status (TMR_STS, bit 0) is ever set: it is set each time bit 23
//!   of the PM timer changes, and raises the SCI while TMR_EN is set. The other fixed events'
//!   enables ([`pm1::ENABLES`]: global lock, power and sleep buttons, RTC alarm) hold what is
//!   written, as an OS checks, but their events never occur (no BIOS takes the global lock,
//!   there are no buttons, the RTC alarm interrupts through IRQ 8).
//! - `PM1a_CNT_BLK` ([`PM1A_CNT`], 2 bytes): SCI_EN (always 1: there is no SMI command port,
//!   the platform is in ACPI mode from reset), SLP_TYP (bits 12:10), SLP_EN (bit 13, write
//!   only). Writing SLP_EN with SLP_TYP = [`SLP_TYP_S5`] powers the VM off; any other sleep
//!   type is ignored (no S1-S4).
//! - `PM_TMR_BLK` ([`PM_TMR`], 4 bytes): the 24-bit PM timer at 3.579545 MHz (TMR_VAL_EXT
//!   clear), read only: exactly three times the PIT input clock, so it is `ticks * 3`.
//!
//! Every access is byte-wide (the bus splits wider ones); a word or dword register is the
//! sum of its bytes. The SCI is level-triggered, active high, ISA IRQ [`SCI_IRQ`].

/// First port of the block (the PM base of QEMU's Q35/ICH9 machine).
pub const PM_BASE: u16 = 0x600;
/// PM1a event block: PM1_STS at +0, PM1_EN at +2.
pub const PM1A_EVT: u16 = PM_BASE;
pub const PM1_EVT_LEN: u8 = 4;
/// PM1a control block.
pub const PM1A_CNT: u16 = PM_BASE + 4;
pub const PM1_CNT_LEN: u8 = 2;
/// PM timer block.
pub const PM_TMR: u16 = PM_BASE + 8;
pub const PM_TMR_LEN: u8 = 4;
const PM_END: u16 = PM_TMR + PM_TMR_LEN as u16;
/// The SCI's ISA IRQ (and GSI).
pub const SCI_IRQ: u8 = 9;
/// SLP_TYP of the S5 (soft off) state, the value the DSDT's `_S5` package gives (as Intel's
/// ICH chipsets use).
pub const SLP_TYP_S5: u8 = 7;
/// PM timer frequency in Hz.
pub const PM_TIMER_HZ: u64 = 3_579_545;
/// PM timer periods per PIT input-clock period (3.579545 MHz = 3 × 1.193182 MHz).
pub const TMR_PER_PIT_TICK: u64 = 3;
/// Width of the PM timer (TMR_VAL_EXT clear).
pub const TMR_BITS: u32 = 24;

/// PM1_STS / PM1_EN bits.
pub mod pm1 {
    /// Timer carry (bit 23 changed) status / enable.
    pub const TMR: u16 = 1 << 0;
    /// Global lock released by the BIOS.
    pub const GBL: u16 = 1 << 5;
    pub const PWRBTN: u16 = 1 << 8;
    pub const SLPBTN: u16 = 1 << 9;
    /// RTC alarm.
    pub const RTC: u16 = 1 << 10;
    /// The enable bits PM1_EN holds.
    pub const ENABLES: u16 = TMR | GBL | PWRBTN | SLPBTN | RTC;
}

/// PM1_CNT bits.
pub mod cnt {
    pub const SCI_EN: u16 = 1 << 0;
    pub const SLP_TYP_SHIFT: u16 = 10;
    pub const SLP_TYP_MASK: u16 = 7 << SLP_TYP_SHIFT;
    pub const SLP_EN: u16 = 1 << 13;
}

/// The PM timer's half-period: TMR_STS is set each time bit 23 changes.
const CARRY_PERIOD: u64 = 1 << (TMR_BITS - 1);

/// The power-management block.
#[derive(Clone, Debug, Default)]
pub struct Pm {
    /// PM1_EN.
    enable: u16,
    /// PM1_CNT's SLP_TYP bits (SCI_EN always reads 1, SLP_EN reads 0).
    slp_typ: u16,
    /// The carry count (PM timer value / 2^23, unwrapped) the guest last acknowledged by
    /// writing TMR_STS = 1; TMR_STS reads set while the carry count is past it.
    carries_acked: u64,
}

/// The unwrapped PM timer count at `ticks`.
fn timer(ticks: u64) -> u64 {
    ticks.wrapping_mul(TMR_PER_PIT_TICK)
}

impl Pm {
    pub fn new() -> Pm {
        Pm::default()
    }

    pub fn claims(port: u16) -> bool {
        (PM_BASE..PM_END).contains(&port)
    }

    /// The PM timer register at `ticks`.
    pub fn timer_value(ticks: u64) -> u32 {
        (timer(ticks) & ((1 << TMR_BITS) - 1)) as u32
    }

    fn status(&self, ticks: u64) -> u16 {
        if timer(ticks) / CARRY_PERIOD > self.carries_acked {
            pm1::TMR
        } else {
            0
        }
    }

    fn control(&self) -> u16 {
        cnt::SCI_EN | self.slp_typ
    }

    /// A byte read at `port` (claimed by [`Pm::claims`]).
    pub fn read(&self, port: u16, ticks: u64) -> u8 {
        let off = port.wrapping_sub(PM_BASE);
        let (word, byte) = match off {
            0 | 1 => (self.status(ticks) as u32, off),
            2 | 3 => (self.enable as u32, off - 2),
            4 | 5 => (self.control() as u32, off - 4),
            8..=11 => (Pm::timer_value(ticks), off - 8),
            _ => (0, 0),
        };
        (word >> (8 * byte)) as u8
    }

    /// A byte write at `port`; true when it powers the VM off (SLP_EN with SLP_TYP = S5).
    pub fn write(&mut self, port: u16, v: u8, ticks: u64) -> bool {
        let off = port.wrapping_sub(PM_BASE);
        let shifted = |byte: u16| (v as u16) << (8 * byte);
        match off {
            // PM1_STS: write 1 to clear.
            0 if v as u16 & pm1::TMR != 0 => {
                self.carries_acked = timer(ticks) / CARRY_PERIOD;
            }
            2 | 3 => {
                let mask = 0xff << (8 * (off - 2));
                self.enable = (self.enable & !mask) | (shifted(off - 2) & mask & pm1::ENABLES);
            }
            4 | 5 => {
                let value = shifted(off - 4);
                let mask: u16 = 0xff << (8 * (off - 4));
                self.slp_typ = (self.slp_typ & !mask) | (value & cnt::SLP_TYP_MASK);
                let typ = (self.slp_typ & cnt::SLP_TYP_MASK) >> cnt::SLP_TYP_SHIFT;
                return value & cnt::SLP_EN != 0 && typ == u16::from(SLP_TYP_S5);
            }
            // The timer is read only; the high status byte has no bit the model sets.
            _ => {}
        }
        false
    }

    /// The SCI's level at `ticks`: a status bit set whose enable bit is set.
    pub fn irq_level(&self, ticks: u64) -> bool {
        self.status(ticks) & self.enable != 0
    }

    /// When the SCI may next change on its own: the next timer carry while TMR_EN is set
    /// and TMR_STS is clear.
    pub fn next_event(&self, ticks: u64) -> Option<u64> {
        if self.enable & pm1::TMR == 0 || self.status(ticks) != 0 {
            return None;
        }
        let carry = (self.carries_acked + 1).checked_mul(CARRY_PERIOD)?;
        Some(carry.div_ceil(TMR_PER_PIT_TICK))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read32(pm: &Pm, port: u16, ticks: u64) -> u32 {
        (0..4).fold(0, |v, i| v | (pm.read(port + i, ticks) as u32) << (8 * i))
    }

    fn read16(pm: &Pm, port: u16, ticks: u64) -> u16 {
        pm.read(port, ticks) as u16 | (pm.read(port + 1, ticks) as u16) << 8
    }

    fn write16(pm: &mut Pm, port: u16, v: u16, ticks: u64) -> bool {
        let a = pm.write(port, v as u8, ticks);
        let b = pm.write(port + 1, (v >> 8) as u8, ticks);
        a || b
    }

    #[test]
    fn timer_runs_at_three_pit_ticks_and_wraps_at_24_bits() {
        let pm = Pm::new();
        assert_eq!(read32(&pm, PM_TMR, 0), 0);
        assert_eq!(read32(&pm, PM_TMR, 1), 3);
        // One second of PIT input clock is 3579546 PM ticks (3 × 1193182).
        assert_eq!(read32(&pm, PM_TMR, 1_193_182), 3_579_546);
        assert_eq!(PM_TIMER_HZ.abs_diff(3 * 1_193_182), 1);
        // 2^24 / 3 = 5592405.33: the value wraps.
        assert_eq!(read32(&pm, PM_TMR, 5_592_405), 0xff_ffff);
        assert_eq!(read32(&pm, PM_TMR, 5_592_406), 2);
        assert!(read32(&pm, PM_TMR, u64::MAX) <= 0xff_ffff);
        // Writes to the timer change nothing.
        let mut w = Pm::new();
        w.write(PM_TMR, 0x55, 10);
        assert_eq!(read32(&w, PM_TMR, 10), 30);
    }

    #[test]
    fn timer_status_enable_and_sci() {
        let mut pm = Pm::new();
        let carry = (1u64 << 23).div_ceil(3);
        assert_eq!(read16(&pm, PM1A_EVT, carry - 1), 0);
        assert_eq!(read16(&pm, PM1A_EVT, carry), pm1::TMR);
        // Not enabled: no SCI, no event.
        assert!(!pm.irq_level(carry));
        assert_eq!(pm.next_event(0), None);
        // The other fixed events' enables hold (an OS reads them back) but raise nothing.
        write16(&mut pm, PM1A_EVT + 2, !pm1::TMR, 0);
        assert_eq!(read16(&pm, PM1A_EVT + 2, 0), pm1::ENABLES & !pm1::TMR);
        assert!(!pm.irq_level(carry));
        assert_eq!(pm.next_event(0), None);
        write16(&mut pm, PM1A_EVT + 2, 0xffff, 0);
        assert_eq!(read16(&pm, PM1A_EVT + 2, 0), pm1::ENABLES);
        assert_eq!(pm.next_event(0), Some(carry));
        assert!(!pm.irq_level(carry - 1));
        assert!(pm.irq_level(carry));
        // Writing 0 does not clear; writing 1 does.
        write16(&mut pm, PM1A_EVT, 0, carry);
        assert!(pm.irq_level(carry));
        write16(&mut pm, PM1A_EVT, pm1::TMR, carry + 5);
        assert!(!pm.irq_level(carry + 5));
        assert_eq!(read16(&pm, PM1A_EVT, carry + 5), 0);
        assert_eq!(pm.next_event(carry + 5), Some((2u64 << 23).div_ceil(3)));
        assert!(pm.irq_level(2 * carry));
        // Disabled again: status stays, the line drops.
        write16(&mut pm, PM1A_EVT + 2, 0, 2 * carry);
        assert!(!pm.irq_level(2 * carry));
        assert_eq!(read16(&pm, PM1A_EVT, 2 * carry), pm1::TMR);
    }

    #[test]
    fn s5_powers_off_and_other_sleep_types_do_not() {
        let mut pm = Pm::new();
        assert_eq!(read16(&pm, PM1A_CNT, 0), cnt::SCI_EN);
        let s5 = (SLP_TYP_S5 as u16) << cnt::SLP_TYP_SHIFT;
        // SLP_TYP alone: stored, no power-off.
        assert!(!write16(&mut pm, PM1A_CNT, s5, 0));
        assert_eq!(read16(&pm, PM1A_CNT, 0), cnt::SCI_EN | s5);
        // S1 with SLP_EN: ignored.
        assert!(!write16(
            &mut pm,
            PM1A_CNT,
            1 << cnt::SLP_TYP_SHIFT | cnt::SLP_EN,
            0
        ));
        assert_eq!(read16(&pm, PM1A_CNT, 0) & cnt::SLP_EN, 0);
        // S5 with SLP_EN, as one word: off.
        assert!(write16(&mut pm, PM1A_CNT, s5 | cnt::SLP_EN, 0));
        // The high byte alone (SLP_TYP and SLP_EN are both in it) also works.
        let mut b = Pm::new();
        assert!(b.write(PM1A_CNT + 1, ((s5 | cnt::SLP_EN) >> 8) as u8, 0));
        assert!(!Pm::claims(PM_BASE - 1));
        assert!(Pm::claims(PM_TMR + 3));
        assert!(!Pm::claims(PM_TMR + 4));
        // Unused ports of the block read 0.
        assert_eq!(pm.read(PM_BASE + 6, 0), 0);
    }
}
