//! CMOS / RTC at 0x70 (index; bit 7, the NMI-disable bit, is kept but has no effect) and 0x71
//! (data).
//!
//! The RTC registers (0x00..=0x0d and the century at 0x32) are the clock of [`rtc`]; the
//! memory-size registers describe the guest's RAM; other registers are plain bytes that read
//! back what was written. The VMM starts every guest's clock at [`START`] at tick 0 of the
//! service's clock (the kernel's boot): a guest reads that date plus the time since.

pub mod date;
pub mod rtc;
#[cfg(test)]
mod tests;

pub use date::DateTime;
use rtc::Rtc;

pub const INDEX: u16 = 0x70;
pub const DATA: u16 = 0x71;
/// The index port's NMI-disable bit.
pub const NMI_DISABLE: u8 = 0x80;

/// The date and time the VMM's guests' RTC shows at tick 0: 2024-01-01 00:00:00, a Monday.
pub const START: DateTime = DateTime::new(2024, 1, 1, 0, 0, 0);

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The CMOS bytes, the RTC and the selected index.
#[derive(Clone, Debug)]
pub struct Cmos {
    /// The last byte written to the index port (with its NMI-disable bit).
    index: u8,
    regs: [u8; 128],
    pub rtc: Rtc,
}

impl Cmos {
    /// CMOS contents for a guest with `ram_bytes` of RAM starting at 0, its clock showing
    /// `start` at tick 0.
    pub fn new(ram_bytes: u64, start: DateTime) -> Cmos {
        let mut regs = [0u8; 128];
        let [lo, hi] = 640u16.to_le_bytes();
        regs[0x15] = lo;
        regs[0x16] = hi;
        let ext = (ram_bytes.saturating_sub(MIB) / KIB).min(0xffff) as u16;
        let [lo, hi] = ext.to_le_bytes();
        regs[0x17] = lo;
        regs[0x18] = hi;
        regs[0x30] = lo;
        regs[0x31] = hi;
        let blocks = (ram_bytes.saturating_sub(16 * MIB) / (64 * KIB)).min(0xffff) as u16;
        let [lo, hi] = blocks.to_le_bytes();
        regs[0x34] = lo;
        regs[0x35] = hi;
        Cmos {
            index: 0,
            regs,
            rtc: Rtc::new(start),
        }
    }

    pub fn claims(port: u16) -> bool {
        port == INDEX || port == DATA
    }

    /// Whether the guest last wrote the index with the NMI-disable bit set (no effect: the
    /// VMM injects no NMIs from the platform).
    pub fn nmi_disabled(&self) -> bool {
        self.index & NMI_DISABLE != 0
    }

    /// Reads `port` at `ticks` (the RTC's time; reading status C clears its flags).
    pub fn read(&mut self, port: u16, ticks: u64) -> u8 {
        if port != DATA {
            return 0xff; // the index register is write-only
        }
        let i = self.index & !NMI_DISABLE;
        if Rtc::claims(i) {
            self.rtc.read(i, ticks)
        } else {
            self.regs[i as usize]
        }
    }

    /// Writes `port` at `ticks`.
    pub fn write(&mut self, port: u16, v: u8, ticks: u64) {
        if port == INDEX {
            self.index = v;
            return;
        }
        let i = self.index & !NMI_DISABLE;
        if Rtc::claims(i) {
            self.rtc.write(i, v, ticks);
        } else {
            self.regs[i as usize] = v;
        }
    }

    /// The machine's reset at `ticks`: the CMOS memory and the clock keep their contents
    /// (battery-backed), the RTC's interrupts are disabled ([`Rtc::reset`]) and the index
    /// goes back to 0.
    pub fn reset(&mut self, ticks: u64) {
        self.index = 0;
        self.rtc.reset(ticks);
    }

    /// The IRQ 8 line at `ticks` (the RTC's IRQF).
    pub fn irq_level(&self, ticks: u64) -> bool {
        self.rtc.irq_level(ticks)
    }

    /// The earliest tick after `ticks` at which the IRQ 8 line may change.
    pub fn next_event(&self, ticks: u64) -> Option<u64> {
        self.rtc.next_event(ticks)
    }
}
