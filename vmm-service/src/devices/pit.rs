//! The 8254 PIT at 0x40..=0x43 (channels 0-2 and the control word), with the outputs kernels
//! use: channel 0's OUT drives IRQ 0, channel 2's gate and OUT are port 0x61's bits 0 and 5.
//!
//! Time comes from outside: every call takes `ticks`, a count of PIT input-clock periods
//! (1.193182 MHz) since some fixed origin. A channel counts from its reload value once the
//! value is written and its gate is high (channels 0 and 1 have their gates tied high; channel
//! 2's is port 0x61 bit 0). OUT in each mode (SDM-like description from the 8254 data sheet):
//! - mode 0 (interrupt on terminal count): low from the write until the count reaches 0,
//!   then high until the next write;
//! - modes 1 and 5 (gate-triggered): high until a rising gate edge starts the count; mode 1
//!   then goes low until terminal count, mode 5 strobes low for one period at it;
//! - mode 2 (rate generator): high, low for one period every `reload` periods;
//! - mode 3 (square wave): high for the first half of each `reload` periods, low for the rest
//!   (modelled as decrementing by one, not two);
//! - mode 4 (software strobe): high, low for one period at terminal count.
//!
//! A gate going low pauses counting (modes 0 and 4 resume where they were; the others restart
//! on the next rising edge). BCD counting and the read-back command (channel field 3) are not
//! modelled (read-back is ignored).

/// Input clock of the PIT in Hz.
pub const PIT_HZ: u64 = 1_193_182;
/// Channel 0 data port; channels 1 and 2 follow, then the control port.
pub const PIT_BASE: u16 = 0x40;
pub const PIT_CONTROL: u16 = 0x43;
/// System control port B: bit 0 channel 2's gate, bit 1 speaker data (both read-write),
/// bit 4 the refresh request toggle (every 15.09 µs), bit 5 channel 2's OUT.
pub const PORT_B: u16 = 0x61;
/// PIT periods per refresh toggle (15.09 µs).
const REFRESH_PERIODS: u64 = 18;

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
    /// A reload value was written since the mode was set: the channel counts.
    armed: bool,
    /// The gate input (tied high on channels 0 and 1).
    gate: bool,
    /// While the gate is low: the periods counted before it fell.
    paused: Option<u64>,
    /// Modes 1 and 5: a rising gate edge started the count.
    triggered: bool,
    /// The last time [`Pit::out_edges`] looked.
    seen: u64,
}

impl Channel {
    fn new(gate: bool) -> Channel {
        Channel {
            gate,
            ..Channel::default()
        }
    }

    fn period(&self) -> u64 {
        if self.reload == 0 {
            0x1_0000
        } else {
            self.reload as u64
        }
    }

    /// Periods counted at `ticks` since the count started.
    fn elapsed(&self, ticks: u64) -> u64 {
        self.paused
            .unwrap_or_else(|| ticks.saturating_sub(self.start))
    }

    /// Whether the count runs at all (modes 1 and 5 wait for their trigger).
    fn counting(&self) -> bool {
        self.armed && (!matches!(self.mode, 1 | 5) || self.triggered)
    }

    /// OUT at `ticks`.
    pub fn out(&self, ticks: u64) -> bool {
        if !self.counting() {
            // Mode 0 holds OUT low from the mode write; the others idle high.
            return self.mode != 0;
        }
        let (e, p) = (self.elapsed(ticks), self.period());
        match self.mode {
            0 | 1 => e >= p,
            2 => e % p != p - 1,
            3 => e % p < p.div_ceil(2),
            _ => e != p, // 4 and 5: one low period at terminal count
        }
    }

    /// The rising edges of OUT in `(from, to]` (`from < to`), and the first one after `to`.
    fn edges(&self, from: u64, to: u64) -> (u64, Option<u64>) {
        if !self.counting() || self.paused.is_some() {
            return (0, None);
        }
        let p = self.period();
        // Rising edges, as times since `start`: mode 0/1 at p; 2 at k*p; 3 at k*p;
        // 4/5 at p + 1.
        let e = |t: u64| t.saturating_sub(self.start);
        let (a, b) = (e(from), e(to));
        match self.mode {
            0 | 1 => (u64::from(a < p && p <= b), (b < p).then(|| self.start + p)),
            2 | 3 => {
                let count = b / p - a / p;
                (count, Some(self.start + (b / p + 1) * p))
            }
            _ => (
                u64::from(a < p + 1 && p < b),
                (b <= p).then(|| self.start + p + 1),
            ),
        }
    }

    fn count(&self, ticks: u64) -> u16 {
        let elapsed = self.elapsed(ticks);
        let reload = self.period();
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
        self.armed = true;
        self.paused = (!self.gate).then_some(0);
    }

    fn set_gate(&mut self, high: bool, ticks: u64) {
        if high == self.gate {
            return;
        }
        self.gate = high;
        if !high {
            self.paused = Some(self.elapsed(ticks));
        } else if matches!(self.mode, 0 | 4) {
            // Counting resumes where it stopped.
            self.start = ticks.saturating_sub(self.paused.unwrap_or(0));
            self.paused = None;
        } else {
            // A rising edge (re)starts the count.
            self.start = ticks;
            self.paused = None;
            self.triggered = true;
        }
    }
}

/// The three channels.
#[derive(Clone, Debug)]
pub struct Pit {
    ch: [Channel; 3],
    /// Port B's speaker data bit.
    speaker: bool,
}

impl Default for Pit {
    fn default() -> Pit {
        Pit::new()
    }
}

impl Pit {
    /// The PIT after reset: channels 0 and 1 gated on, channel 2's gate (port 0x61 bit 0) low.
    pub fn new() -> Pit {
        Pit {
            ch: [Channel::new(true), Channel::new(true), Channel::new(false)],
            speaker: false,
        }
    }

    /// OUT of channel `n` at `ticks` (false for a channel that does not exist).
    pub fn out(&self, n: usize, ticks: u64) -> bool {
        self.ch.get(n).is_some_and(|c| c.out(ticks))
    }

    /// Sets channel `n`'s gate input (channel 2: port 0x61 bit 0).
    pub fn set_gate(&mut self, n: usize, high: bool, ticks: u64) {
        if let Some(c) = self.ch.get_mut(n) {
            c.set_gate(high, ticks);
        }
    }

    /// The gate input of channel `n`.
    pub fn gate(&self, n: usize) -> bool {
        self.ch.get(n).is_some_and(|c| c.gate)
    }

    /// The rising edges of channel `n`'s OUT since the last call (up to `ticks`): IRQ 0 for
    /// channel 0. The caller raises the line once however many there were, as the 8259
    /// latches one edge; the count tells it how many were lost.
    pub fn out_edges(&mut self, n: usize, ticks: u64) -> u64 {
        let Some(c) = self.ch.get_mut(n) else {
            return 0;
        };
        let from = c.seen.max(c.start);
        let edges = if ticks > from {
            c.edges(from, ticks).0
        } else {
            0
        };
        c.seen = c.seen.max(ticks);
        edges
    }

    /// When channel `n`'s OUT next rises after `ticks` (`None`: not while nothing changes).
    pub fn next_edge(&self, n: usize, ticks: u64) -> Option<u64> {
        let c = self.ch.get(n)?;
        let at = ticks.max(c.start);
        c.edges(at, at).1
    }

    /// Whether `port` belongs to the PIT.
    pub fn claims(port: u16) -> bool {
        (PIT_BASE..=PIT_CONTROL).contains(&port) || port == PORT_B
    }

    /// Reads `port` (0x40..=0x43, [`PORT_B`]); the control port reads 0xff.
    pub fn read(&mut self, port: u16, ticks: u64) -> u8 {
        if port == PORT_B {
            return u8::from(self.gate(2))
                | u8::from(self.speaker) << 1
                | (((ticks / REFRESH_PERIODS) & 1) as u8) << 4
                | u8::from(self.out(2, ticks)) << 5;
        }
        match self.ch.get_mut(port.wrapping_sub(PIT_BASE) as usize) {
            Some(c) => c.read(ticks),
            None => 0xff,
        }
    }

    /// Writes `port` (0x40..=0x43).
    pub fn write(&mut self, port: u16, v: u8, ticks: u64) {
        if port == PORT_B {
            self.speaker = v & 2 != 0;
            self.set_gate(2, v & 1 != 0, ticks);
        } else if port == PIT_CONTROL {
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
        // A mode write stops the count until the next reload value.
        c.armed = false;
        c.triggered = false;
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
        p.set_gate(2, true, 0); // port 0x61 bit 0
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

    /// Channel 0 in `mode` with `reload`, written at t=100.
    fn ch0(mode: u8, reload: u16) -> Pit {
        let mut p = Pit::new();
        p.write(0x43, 0x30 | mode << 1, 0);
        let [lo, hi] = reload.to_le_bytes();
        p.write(0x40, lo, 100);
        p.write(0x40, hi, 100);
        p
    }

    #[test]
    fn rate_generator_raises_irq0_once_per_period() {
        let mut p = ch0(2, 1000);
        assert_eq!(p.next_edge(0, 100), Some(1100));
        assert_eq!(p.out_edges(0, 1099), 0);
        assert!(!p.out(0, 1099), "low for the last period");
        assert!(p.out(0, 1100));
        assert_eq!(p.out_edges(0, 1100), 1);
        assert_eq!(p.out_edges(0, 1100), 0, "an edge is counted once");
        assert_eq!(p.next_edge(0, 1100), Some(2100));
        // Late: three periods passed at once.
        assert_eq!(p.out_edges(0, 4150), 3);
        assert_eq!(p.next_edge(0, 4150), Some(5100));
    }

    #[test]
    fn square_wave_is_high_for_the_first_half() {
        let p = ch0(3, 10);
        assert!(p.out(0, 100) && p.out(0, 104));
        assert!(!p.out(0, 105) && !p.out(0, 109));
        assert!(p.out(0, 110));
        assert_eq!(p.next_edge(0, 103), Some(110));
    }

    #[test]
    fn one_shot_modes_fire_once() {
        let mut p = ch0(0, 50);
        assert!(!p.out(0, 149));
        assert!(p.out(0, 150) && p.out(0, 10_000));
        assert_eq!(p.next_edge(0, 120), Some(150));
        assert_eq!(p.out_edges(0, 10_000), 1);
        assert_eq!(p.next_edge(0, 10_000), None);
        let mut p = ch0(4, 50);
        assert!(p.out(0, 149) && !p.out(0, 150) && p.out(0, 151));
        assert_eq!(p.out_edges(0, 151), 1);
        assert_eq!(p.out_edges(0, 5000), 0);
    }

    #[test]
    fn nothing_fires_before_a_reload_value_is_written() {
        let mut p = Pit::new();
        p.write(0x43, 0x34, 0); // mode 2, no count yet
        assert_eq!(p.next_edge(0, 0), None);
        assert_eq!(p.out_edges(0, 1_000_000), 0);
        assert!(p.out(0, 5));
        p.write(0x43, 0x30, 0); // mode 0 holds OUT low
        assert!(!p.out(0, 5));
    }

    #[test]
    fn channel_2_counts_only_while_its_gate_is_high() {
        let mut p = Pit::new();
        p.write(0x43, 0xb0, 0); // ch2, lo/hi, mode 0
        p.write(0x42, 100, 0);
        p.write(0x42, 0, 0);
        assert!(!p.gate(2));
        assert_eq!(read16(&mut p, 0x42, 500), 100, "gate low: no counting");
        p.set_gate(2, true, 1000);
        assert_eq!(read16(&mut p, 0x42, 1040), 60);
        assert!(!p.out(2, 1099));
        assert!(
            p.out(2, 1100),
            "terminal count 100 periods after the gate rose"
        );
        p.set_gate(2, false, 1050);
        // Paused at 50 counted.
        assert_eq!(read16(&mut p, 0x42, 3000), 50);
        p.set_gate(2, true, 4000);
        assert_eq!(read16(&mut p, 0x42, 4010), 40, "mode 0 resumes");
    }

    #[test]
    fn port_b_gates_channel_2_and_shows_its_out() {
        let mut p = Pit::new();
        p.write(0x43, 0xb0, 0);
        p.write(0x42, 10, 0);
        p.write(0x42, 0, 0);
        assert_eq!(p.read(PORT_B, 0) & 0x23, 0);
        p.write(PORT_B, 0x01, 100);
        assert_eq!(p.read(PORT_B, 105) & 0x21, 0x01, "counting, OUT low");
        assert_eq!(p.read(PORT_B, 110) & 0x21, 0x21, "terminal count");
        assert_ne!(
            p.read(PORT_B, 0) & 0x10,
            p.read(PORT_B, REFRESH_PERIODS) & 0x10,
            "the refresh bit toggles"
        );
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
