//! The 8254 PIT at 0x40..=0x43 (channels 0-2 and the control word), without interrupts.
//!
//! Time comes from outside: every call takes `ticks`, a count of PIT input-clock periods
//! (1.193182 MHz) since some fixed origin. A channel's counter counts down from its reload
//! value starting when the reload value was written: modes 2 and 3 wrap at the reload value
//! (mode 3 is modelled as decrementing by one, not two), the other modes wrap at 2^16 after
//! terminal count. BCD counting and the read-back command (channel field 3) are not modelled
//! (read-back is ignored).

/// Input clock of the PIT in Hz.
pub const PIT_HZ: u64 = 1_193_182;
/// Channel 0 data port; channels 1 and 2 follow, then the control port.
pub const PIT_BASE: u16 = 0x40;
pub const PIT_CONTROL: u16 = 0x43;

/// Access mode (control word bits 5:4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Access {
    LoOnly,
    HiOnly,
    #[default]
    LoHi,
}

#[derive(Clone, Copy, Debug, Default)]
struct Channel {
    /// 0 means 65536.
    reload: u16,
    access: Access,
    mode: u8,
    start: u64,
    latch: Option<u16>,
    /// LoHi: the next read returns the high byte.
    read_hi: bool,
    /// LoHi: the next write is the high byte.
    write_hi: bool,
    /// Low byte written, waiting for the high byte.
    pending_lo: u8,
}

impl Channel {
    fn count(&self, ticks: u64) -> u16 {
        let elapsed = ticks.wrapping_sub(self.start);
        let reload = if self.reload == 0 {
            0x1_0000
        } else {
            self.reload as u64
        };
        match self.mode {
            2 | 3 => (reload - elapsed % reload) as u16,
            _ => (reload.wrapping_sub(elapsed) & 0xffff) as u16,
        }
    }

    fn read(&mut self, ticks: u64) -> u8 {
        let value = self.latch.unwrap_or_else(|| self.count(ticks));
        let [lo, hi] = value.to_le_bytes();
        match self.access {
            Access::LoOnly => {
                self.latch = None;
                lo
            }
            Access::HiOnly => {
                self.latch = None;
                hi
            }
            Access::LoHi => {
                if self.read_hi {
                    self.read_hi = false;
                    self.latch = None;
                    hi
                } else {
                    self.read_hi = true;
                    lo
                }
            }
        }
    }

    fn write(&mut self, v: u8, ticks: u64) {
        let reload = match self.access {
            Access::LoOnly => v as u16,
            Access::HiOnly => (v as u16) << 8,
            Access::LoHi => {
                if !self.write_hi {
                    self.pending_lo = v;
                    self.write_hi = true;
                    return;
                }
                self.write_hi = false;
                u16::from_le_bytes([self.pending_lo, v])
            }
        };
        self.reload = reload;
        self.start = ticks;
    }
}

/// The three channels.
#[derive(Clone, Debug, Default)]
pub struct Pit {
    ch: [Channel; 3],
}

impl Pit {
    pub fn new() -> Pit {
        Pit::default()
    }

    /// Whether `port` belongs to the PIT.
    pub fn claims(port: u16) -> bool {
        (PIT_BASE..=PIT_CONTROL).contains(&port)
    }

    /// Reads `port` (0x40..=0x43); the control port reads 0xff.
    pub fn read(&mut self, port: u16, ticks: u64) -> u8 {
        match self.ch.get_mut(port.wrapping_sub(PIT_BASE) as usize) {
            Some(c) => c.read(ticks),
            None => 0xff,
        }
    }

    /// Writes `port` (0x40..=0x43).
    pub fn write(&mut self, port: u16, v: u8, ticks: u64) {
        if port == PIT_CONTROL {
            self.control(v, ticks);
        } else if let Some(c) = self.ch.get_mut(port.wrapping_sub(PIT_BASE) as usize) {
            c.write(v, ticks);
        }
    }

    fn control(&mut self, v: u8, ticks: u64) {
        let Some(c) = self.ch.get_mut((v >> 6) as usize) else {
            return; // read-back command: not modelled
        };
        let access = match (v >> 4) & 3 {
            0 => {
                // Counter latch: freeze the current count until it is read (once).
                if c.latch.is_none() {
                    c.latch = Some(c.count(ticks));
                    c.read_hi = false;
                }
                return;
            }
            1 => Access::LoOnly,
            2 => Access::HiOnly,
            _ => Access::LoHi,
        };
        c.access = access;
        c.mode = match (v >> 1) & 7 {
            6 => 2,
            7 => 3,
            m => m,
        };
        c.latch = None;
        c.read_hi = false;
        c.write_hi = false;
    }

    /// The reload value of channel `n` (0 means 65536), for tests and reports.
    pub fn reload(&self, n: usize) -> Option<u16> {
        self.ch.get(n).map(|c| c.reload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read16(p: &mut Pit, port: u16, t: u64) -> u16 {
        let lo = p.read(port, t);
        let hi = p.read(port, t);
        u16::from_le_bytes([lo, hi])
    }

    #[test]
    fn lohi_reload_counts_down_and_wraps_in_mode_2() {
        let mut p = Pit::new();
        p.write(0x43, 0x34, 0); // ch0, lo/hi, mode 2
        p.write(0x40, 0x00, 100);
        p.write(0x40, 0x10, 100); // reload 0x1000 at t=100
        assert_eq!(p.reload(0), Some(0x1000));
        assert_eq!(read16(&mut p, 0x40, 100), 0x1000);
        assert_eq!(read16(&mut p, 0x40, 100 + 0x10), 0x0ff0);
        assert_eq!(read16(&mut p, 0x40, 100 + 0x1000 + 1), 0x0fff);
    }

    #[test]
    fn latch_freezes_until_read() {
        let mut p = Pit::new();
        p.write(0x43, 0xb0, 0); // ch2, lo/hi, mode 0
        p.write(0x42, 0xff, 0);
        p.write(0x42, 0xff, 0);
        p.write(0x43, 0x80, 50); // latch ch2 at t=50
        assert_eq!(read16(&mut p, 0x42, 1000), 0xffff - 50);
        // After the latched value is read, reads follow the live count again.
        assert_eq!(read16(&mut p, 0x42, 1000), 0xffff - 1000);
        // Mode 0 wraps past terminal count.
        assert_eq!(read16(&mut p, 0x42, 0x1_0000), 0xffff);
    }

    #[test]
    fn lo_only_and_hi_only() {
        let mut p = Pit::new();
        p.write(0x43, 0x50, 0); // ch1, lo only, mode 0
        p.write(0x41, 0x80, 0);
        assert_eq!(p.read(0x41, 0x10), 0x70);
        p.write(0x43, 0x60, 0); // ch1, hi only
        p.write(0x41, 0x02, 0);
        assert_eq!(p.reload(1), Some(0x200));
        assert_eq!(p.read(0x41, 0x100), 0x01);
        assert_eq!(p.read(0x43, 0), 0xff);
        p.write(0x43, 0xc2, 0); // read-back: ignored
    }
}
