//! CMOS / RTC at 0x70 (index; bit 7, the NMI mask, is ignored) and 0x71 (data).
//!
//! Memory-size registers describe the guest's RAM; the RTC reads a fixed date,
//! 2024-01-01 00:00:00 (a Monday), in BCD with 24-hour mode; status register D reports valid
//! RAM and time. Other registers are plain bytes that read back what was written.

pub const INDEX: u16 = 0x70;
pub const DATA: u16 = 0x71;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The CMOS bytes and the selected index.
#[derive(Clone, Debug)]
pub struct Cmos {
    index: u8,
    regs: [u8; 128],
}

impl Cmos {
    /// CMOS contents for a guest with `ram_bytes` of RAM starting at 0.
    pub fn new(ram_bytes: u64) -> Cmos {
        let mut regs = [0u8; 128];
        // RTC: seconds, minutes, hours, weekday (1 = Sunday), day, month, year, century.
        for (i, v) in [
            (0x00, 0x00),
            (0x02, 0x00),
            (0x04, 0x00),
            (0x06, 0x02),
            (0x07, 0x01),
            (0x08, 0x01),
            (0x09, 0x24),
            (0x32, 0x20),
        ] {
            regs[i] = v;
        }
        regs[0x0a] = 0x26; // 32.768 kHz time base, 1024 Hz rate, no update in progress
        regs[0x0b] = 0x02; // 24-hour, BCD
        regs[0x0d] = 0x80; // valid RAM and time
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
        Cmos { index: 0, regs }
    }

    pub fn claims(port: u16) -> bool {
        port == INDEX || port == DATA
    }

    pub fn read(&self, port: u16) -> u8 {
        if port == DATA {
            self.regs[(self.index & 0x7f) as usize]
        } else {
            0xff // the index register is write-only
        }
    }

    pub fn write(&mut self, port: u16, v: u8) {
        if port == INDEX {
            self.index = v & 0x7f;
            return;
        }
        let i = (self.index & 0x7f) as usize;
        match i {
            // Status C and D are read-only; status A's update-in-progress bit too.
            0x0c | 0x0d => {}
            0x0a => self.regs[i] = v & 0x7f,
            _ => self.regs[i] = v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(c: &mut Cmos, i: u8) -> u8 {
        c.write(INDEX, i | 0x80); // NMI-mask bit ignored
        c.read(DATA)
    }

    fn get16(c: &mut Cmos, lo: u8) -> u16 {
        u16::from_le_bytes([get(c, lo), get(c, lo + 1)])
    }

    #[test]
    fn memory_sizes_for_32_mib() {
        let mut c = Cmos::new(32 * MIB);
        assert_eq!(get16(&mut c, 0x15), 640);
        assert_eq!(get16(&mut c, 0x17), 31 * 1024);
        assert_eq!(get16(&mut c, 0x30), 31 * 1024);
        assert_eq!(get16(&mut c, 0x34), 256);
        assert_eq!(get(&mut c, 0x0d), 0x80);
    }

    #[test]
    fn sizes_cap_and_small_ram() {
        let mut c = Cmos::new(8 << 30);
        assert_eq!(get16(&mut c, 0x17), 0xffff);
        assert_eq!(get16(&mut c, 0x34), 0xffff);
        let mut c = Cmos::new(512 * KIB);
        assert_eq!(get16(&mut c, 0x17), 0);
        assert_eq!(get16(&mut c, 0x34), 0);
    }

    #[test]
    fn rtc_is_fixed_bcd_and_status_d_read_only() {
        let mut c = Cmos::new(MIB);
        assert_eq!(
            [0x09, 0x08, 0x07, 0x32].map(|i| get(&mut c, i)),
            [0x24, 0x01, 0x01, 0x20]
        );
        c.write(INDEX, 0x0d);
        c.write(DATA, 0);
        assert_eq!(get(&mut c, 0x0d), 0x80);
        c.write(INDEX, 0x40);
        c.write(DATA, 0x5a);
        assert_eq!(get(&mut c, 0x40), 0x5a);
    }
}
