//! The MC146818 real-time clock of the PC's CMOS: the time and alarm registers, status
//! registers A to D, the update cycle and the three interrupts (periodic, alarm,
//! update-ended) on IRQ 8.
//!
//! Time comes in as `ticks`: PIT input-clock periods ([`PIT_HZ`]) since a fixed origin. The
//! 32.768 kHz divider chain starts at tick 0; each second of it ends with an update, which
//! advances the clock by one second (while it counts: register A's divider runs and B.SET is
//! clear), sets C.UF, and C.AF when the new time matches the alarm (a field of 0xC0..=0xFF is
//! "any"). Register A's UIP reads 1 during the last 244 µs (8 cycles of 32.768 kHz) before
//! each update. The periodic flag C.PF is set at the rate of A's rate select (0: none; 1 and
//! 2 are 256 and 128 Hz, 3..=15 are 32768 >> (n - 1) Hz) while the divider runs. IRQ 8 is
//! C.IRQF: a flag set whose enable bit in B is set; reading C clears the flags.
//!
//! The clock is kept as seconds since 1970 and shown in the format B asks for (BCD or
//! binary, 24- or 12-hour with bit 7 for PM) at each read, as QEMU and Bochs do: changing
//! B.DM or B.24/12 reformats the registers. Writing a time register, or setting B.SET,
//! writing the fields and clearing SET, sets the clock; a written field that is not a valid
//! number in the current format or is out of its range is ignored, and a day the month does
//! not have (February 30, on the way to March 30) is shown as written while the clock stands
//! until the fields form a date again. The weekday counts on its own as the chip's does: it steps at
//! midnight and keeps whatever 1..=7 the guest wrote. Register A's divider values 0, 1 and 2
//! all run the 32.768 kHz chain (as in QEMU); 6 and 7 hold it in reset, and the first update
//! after leaving reset comes half a second later. B.DSE is stored and not applied (as in QEMU
//! and Bochs). Years run 0..=9999 through the century register (0x32).

use super::date::{self, DateTime, DAY};
use crate::devices::pit::PIT_HZ;

/// Time-base cycles per second.
const CYCLES: i128 = 32_768;
/// UIP reads 1 for this many time-base cycles before each update (244 µs).
const UIP_CYCLES: i128 = 8;

/// Register indices.
pub mod index {
    pub const SECONDS: u8 = 0x00;
    pub const SECONDS_ALARM: u8 = 0x01;
    pub const MINUTES: u8 = 0x02;
    pub const MINUTES_ALARM: u8 = 0x03;
    pub const HOURS: u8 = 0x04;
    pub const HOURS_ALARM: u8 = 0x05;
    pub const WEEKDAY: u8 = 0x06;
    pub const DAY: u8 = 0x07;
    pub const MONTH: u8 = 0x08;
    pub const YEAR: u8 = 0x09;
    pub const A: u8 = 0x0a;
    pub const B: u8 = 0x0b;
    pub const C: u8 = 0x0c;
    pub const D: u8 = 0x0d;
    pub const CENTURY: u8 = 0x32;
}

/// Register A bits.
pub mod a {
    pub const UIP: u8 = 0x80;
    pub const DIVIDER: u8 = 0x70;
    pub const RATE: u8 = 0x0f;
    /// The PC's value: 32.768 kHz divider, 1024 Hz periodic rate.
    pub const DEFAULT: u8 = 0x26;
}

/// Register B bits.
pub mod b {
    pub const SET: u8 = 0x80;
    pub const PIE: u8 = 0x40;
    pub const AIE: u8 = 0x20;
    pub const UIE: u8 = 0x10;
    pub const SQWE: u8 = 0x08;
    pub const DM_BINARY: u8 = 0x04;
    pub const HOURS_24: u8 = 0x02;
    pub const DSE: u8 = 0x01;
}

/// Register C bits.
pub mod c {
    pub const IRQF: u8 = 0x80;
    pub const PF: u8 = 0x40;
    pub const AF: u8 = 0x20;
    pub const UF: u8 = 0x10;
}

/// Register D: valid RAM and time.
pub const D_VRT: u8 = 0x80;

/// An alarm field: "any" (0xC0..=0xFF), a value, or one that never matches.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Alarm {
    Any,
    Is(u8),
    Never,
}

impl Alarm {
    fn matches(self, v: u8) -> bool {
        match self {
            Alarm::Any => true,
            Alarm::Is(x) => x == v,
            Alarm::Never => false,
        }
    }
}

/// The fields a guest sees: the date and time and the weekday register (1..=7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fields {
    time: DateTime,
    weekday: u8,
}

/// The RTC.
#[derive(Clone, Debug)]
pub struct Rtc {
    /// Register A bits 6:0 (UIP is derived).
    a: u8,
    b: u8,
    /// C's PF/AF/UF, as of tick `synced`.
    flags: u8,
    synced: u64,
    /// The tick at which the divider chain's cycle 0 is (a second ends every CYCLES).
    origin: i128,
    /// While the clock counts: its value at update number `count_at`; while stopped, its
    /// value when it stopped.
    secs: i64,
    count_at: i128,
    /// The weekday register minus the weekday of `secs` (0 = Sunday), mod 7.
    weekday_adjust: u8,
    /// The fields while the clock is stopped (what the guest wrote under SET) or while they
    /// are not a date (`invalid`).
    held: Fields,
    /// The fields written do not form a date: the clock shows `held` and stands until a
    /// write makes them one.
    invalid: bool,
    /// Seconds, minutes and hours alarm registers, as written.
    alarm: [u8; 3],
}

impl Rtc {
    /// An RTC showing `start` at tick 0, in BCD and 24-hour mode (the PC BIOS's setting),
    /// with the weekday of the date.
    pub fn new(start: DateTime) -> Rtc {
        let secs = start.to_secs().unwrap_or(0);
        Rtc {
            a: a::DEFAULT,
            b: b::HOURS_24,
            flags: 0,
            synced: 0,
            origin: 0,
            secs,
            count_at: 0,
            weekday_adjust: 0,
            held: Fields {
                time: DateTime::from_secs(secs),
                weekday: date::weekday(secs) + 1,
            },
            invalid: false,
            alarm: [0; 3],
        }
    }

    /// Whether `index` is an RTC register.
    pub fn claims(index: u8) -> bool {
        index <= index::D || index == index::CENTURY
    }

    fn divider_runs(&self) -> bool {
        self.a & a::DIVIDER <= 0x20
    }

    /// Whether the clock counts: the divider runs and SET is clear.
    fn counting(&self) -> bool {
        self.divider_runs() && self.b & b::SET == 0
    }

    /// Time-base cycles from the origin to `ticks`.
    fn cycles(&self, ticks: u64) -> i128 {
        ((i128::from(ticks) - self.origin) * CYCLES).div_euclid(i128::from(PIT_HZ))
    }

    /// The first tick at which `cycles(tick) >= cycle`.
    fn tick_of(&self, cycle: i128) -> u64 {
        let t = self.origin + (cycle * i128::from(PIT_HZ) + CYCLES - 1).div_euclid(CYCLES);
        t.clamp(0, i128::from(u64::MAX)) as u64
    }

    /// Updates (ends of seconds) from the origin to `ticks`.
    fn count(&self, ticks: u64) -> i128 {
        self.cycles(ticks).div_euclid(CYCLES)
    }

    /// The clock's value after update number `n` (while counting).
    fn secs_at(&self, n: i128) -> i64 {
        let elapsed = (n - self.count_at).clamp(i128::from(i64::MIN), i128::from(i64::MAX));
        self.secs.saturating_add(elapsed as i64)
    }

    /// Cycles between two periodic flags, if the rate select has a rate.
    fn period(&self) -> Option<i128> {
        match self.a & a::RATE {
            0 => None,
            rs @ (1 | 2) => Some(1 << (rs + 6)),
            rs => Some(1 << (rs - 1)),
        }
    }

    fn fields(&self, ticks: u64) -> Fields {
        if !self.counting() || self.invalid {
            return self.held;
        }
        let secs = self.secs_at(self.count(ticks));
        Fields {
            time: DateTime::from_secs(secs),
            weekday: (date::weekday(secs) + self.weekday_adjust) % 7 + 1,
        }
    }

    /// Sets the counting clock to `f` from update `count(ticks)` on; fields that are not a
    /// date are kept as they are and the clock stands.
    fn set_clock(&mut self, f: Fields, ticks: u64) {
        match f.time.to_secs() {
            Some(secs) => {
                self.secs = secs;
                // The weekday register w (1..=7) shows (weekday(secs) + adjust) % 7 + 1.
                self.weekday_adjust = (f.weekday + 6 - date::weekday(secs)) % 7;
                self.invalid = false;
            }
            None => {
                self.held = f;
                self.invalid = true;
            }
        }
        self.count_at = self.count(ticks);
    }

    fn decode(&self, v: u8) -> Option<u8> {
        if self.b & b::DM_BINARY != 0 {
            Some(v)
        } else if v & 0x0f <= 9 && v >> 4 <= 9 {
            Some((v >> 4) * 10 + (v & 0x0f))
        } else {
            None
        }
    }

    fn encode(&self, v: u8) -> u8 {
        if self.b & b::DM_BINARY != 0 {
            v
        } else {
            ((v / 10) << 4) | (v % 10)
        }
    }

    fn decode_hour(&self, v: u8) -> Option<u8> {
        if self.b & b::HOURS_24 != 0 {
            return self.decode(v);
        }
        let h = self.decode(v & 0x7f)?;
        let pm = if v & 0x80 != 0 { 12 } else { 0 };
        (1..=12).contains(&h).then_some(h % 12 + pm)
    }

    fn encode_hour(&self, h: u8) -> u8 {
        if self.b & b::HOURS_24 != 0 {
            return self.encode(h);
        }
        let h12 = if h.is_multiple_of(12) { 12 } else { h % 12 };
        self.encode(h12) | if h >= 12 { 0x80 } else { 0 }
    }

    fn alarm_field(&self, i: usize) -> Alarm {
        let v = self.alarm[i];
        if v & 0xc0 == 0xc0 {
            return Alarm::Any;
        }
        let decoded = if i == 2 {
            self.decode_hour(v)
        } else {
            self.decode(v)
        };
        decoded.map_or(Alarm::Never, Alarm::Is)
    }

    /// The first time after `secs` that matches the alarm, if any does.
    fn next_alarm(&self, secs: i64) -> Option<i64> {
        let [s, m, h] = [0, 1, 2].map(|i| self.alarm_field(i));
        let sod = secs.rem_euclid(DAY);
        let day0 = secs - sod;
        // Minutes of the day from the current one to the same one a day later.
        (sod / 60..=sod / 60 + 1440).find_map(|minute| {
            let ok = h.matches((minute / 60 % 24) as u8) && m.matches((minute % 60) as u8);
            let second = match s {
                _ if !ok => return None,
                Alarm::Any => (minute * 60).max(sod + 1),
                Alarm::Is(x) if x < 60 => minute * 60 + i64::from(x),
                _ => return None,
            };
            (second > sod && second < (minute + 1) * 60).then_some(day0 + second)
        })
    }

    /// Register C's PF, AF and UF as of `ticks` (not yet cleared by a read).
    fn flags_at(&self, ticks: u64) -> u8 {
        self.flags_in(ticks, c::PF | c::AF | c::UF)
    }

    /// The flags of `want` (of PF, AF, UF) as of `ticks`: the IRQ line needs only the enabled
    /// ones, and the alarm's search is the costly part (the interrupt path polls the line
    /// after every exit).
    fn flags_in(&self, ticks: u64, want: u8) -> u8 {
        let mut f = self.flags;
        if ticks <= self.synced || !self.divider_runs() || want == 0 {
            return f;
        }
        let (from, to) = (self.cycles(self.synced), self.cycles(ticks));
        if let Some(p) = self.period() {
            if to.div_euclid(p) > from.div_euclid(p) {
                f |= c::PF;
            }
        }
        let (n0, n1) = (from.div_euclid(CYCLES), to.div_euclid(CYCLES));
        if self.counting() && n1 > n0 {
            f |= c::UF;
            if want & c::AF != 0 && f & c::AF == 0 && !self.invalid {
                let (s0, s1) = (self.secs_at(n0), self.secs_at(n1));
                if self.next_alarm(s0).is_some_and(|t| t <= s1) {
                    f |= c::AF;
                }
            }
        }
        f
    }

    /// Folds the events up to `ticks` into the flags; called before any change.
    fn sync(&mut self, ticks: u64) {
        self.flags = self.flags_at(ticks);
        self.synced = self.synced.max(ticks);
    }

    fn irqf(&self, flags: u8) -> bool {
        flags & (self.b & (b::PIE | b::AIE | b::UIE)) != 0
    }

    /// The IRQ 8 line: C.IRQF.
    pub fn irq_level(&self, ticks: u64) -> bool {
        // PIE, AIE and UIE sit at the bit positions of PF, AF and UF.
        let enabled = self.b & (b::PIE | b::AIE | b::UIE);
        self.irqf(self.flags_in(ticks, enabled))
    }

    /// The earliest tick after `ticks` at which the IRQ 8 line may rise; `None` when it is
    /// already high (only a read of C lowers it) or no enabled interrupt can happen.
    pub fn next_event(&self, ticks: u64) -> Option<u64> {
        if self.irq_level(ticks) || !self.divider_runs() {
            return None;
        }
        let now = self.cycles(ticks);
        let periodic = self
            .period()
            .filter(|_| self.b & b::PIE != 0)
            .map(|p| (now.div_euclid(p) + 1) * p);
        let counting = self.counting();
        let n = now.div_euclid(CYCLES);
        let update = (counting && self.b & b::UIE != 0).then_some((n + 1) * CYCLES);
        let alarm = (counting && !self.invalid && self.b & b::AIE != 0)
            .then(|| self.next_alarm(self.secs_at(n)))
            .flatten()
            .map(|t| (n + i128::from(t - self.secs_at(n))) * CYCLES);
        [periodic, update, alarm]
            .into_iter()
            .flatten()
            .min()
            .map(|cycle| self.tick_of(cycle))
    }

    /// Reads register `i` (see [`Rtc::claims`]) at `ticks`; reading C clears its flags.
    pub fn read(&mut self, i: u8, ticks: u64) -> u8 {
        let f = self.fields(ticks);
        match i {
            index::SECONDS => self.encode(f.time.second),
            index::MINUTES => self.encode(f.time.minute),
            index::HOURS => self.encode_hour(f.time.hour),
            index::SECONDS_ALARM => self.alarm[0],
            index::MINUTES_ALARM => self.alarm[1],
            index::HOURS_ALARM => self.alarm[2],
            index::WEEKDAY => self.encode(f.weekday),
            index::DAY => self.encode(f.time.day),
            index::MONTH => self.encode(f.time.month),
            index::YEAR => self.encode((f.time.year % 100) as u8),
            index::CENTURY => self.encode((f.time.year / 100) as u8),
            index::A => {
                let uip =
                    self.counting() && self.cycles(ticks).rem_euclid(CYCLES) >= CYCLES - UIP_CYCLES;
                self.a | if uip { a::UIP } else { 0 }
            }
            index::B => self.b,
            index::C => {
                self.sync(ticks);
                let v = self.flags | if self.irqf(self.flags) { c::IRQF } else { 0 };
                self.flags = 0;
                v
            }
            index::D => D_VRT,
            _ => 0xff,
        }
    }

    /// Writes register `i` at `ticks`. C and D are read-only, and so is A's UIP.
    pub fn write(&mut self, i: u8, v: u8, ticks: u64) {
        self.sync(ticks);
        match i {
            index::SECONDS_ALARM => self.alarm[0] = v,
            index::MINUTES_ALARM => self.alarm[1] = v,
            index::HOURS_ALARM => self.alarm[2] = v,
            index::A => self.write_a(v & !a::UIP, ticks),
            index::B => self.write_b(v, ticks),
            index::C | index::D => {}
            _ => self.write_field(i, v, ticks),
        }
    }

    fn write_field(&mut self, i: u8, v: u8, ticks: u64) {
        let mut f = self.fields(ticks);
        let decoded = if i == index::HOURS {
            self.decode_hour(v)
        } else {
            self.decode(v)
        };
        let Some(x) = decoded else {
            return; // not a number in the current format
        };
        // A value out of its field's range changes nothing; a day the month does not have
        // is kept (the guest may be about to write the month).
        let t = &mut f.time;
        match i {
            index::SECONDS if x < 60 => t.second = x,
            index::MINUTES if x < 60 => t.minute = x,
            index::HOURS if x < 24 => t.hour = x,
            index::WEEKDAY if (1..=7).contains(&x) => f.weekday = x,
            index::DAY if (1..=31).contains(&x) => t.day = x,
            index::MONTH if (1..=12).contains(&x) => t.month = x,
            index::YEAR if x < 100 => t.year = t.year / 100 * 100 + u16::from(x),
            index::CENTURY if x < 100 => t.year = u16::from(x) * 100 + t.year % 100,
            _ => return,
        }
        if self.counting() {
            self.set_clock(f, ticks);
        } else {
            self.held = f;
        }
    }

    /// Applies a change of A or B: stops or restarts the clock.
    fn change(&mut self, new_a: u8, new_b: u8, ticks: u64) {
        let was_counting = self.counting();
        let divider_was_running = self.divider_runs();
        let f = self.fields(ticks);
        self.a = new_a;
        self.b = new_b;
        if !divider_was_running && self.divider_runs() {
            // Leaving reset: the first update comes half a second later.
            self.origin = i128::from(ticks) - i128::from(PIT_HZ) / 2;
        }
        match (was_counting, self.counting()) {
            (true, false) => {
                if !self.invalid {
                    self.secs = self.secs_at(self.count(ticks));
                }
                self.held = f;
            }
            (false, true) => self.set_clock(self.held, ticks),
            _ => {}
        }
    }

    fn write_a(&mut self, v: u8, ticks: u64) {
        self.change(v, self.b, ticks);
    }

    /// The machine's reset at `ticks` (the MC146818's RESET pin): the periodic, alarm and
    /// update-ended interrupts and the square wave are disabled and C's flags cleared; the
    /// clock, its mode (A, B's SET, DM, 24/12, DSE) and the alarm keep running as they were,
    /// as a battery-backed RTC does.
    pub fn reset(&mut self, ticks: u64) {
        self.sync(ticks);
        self.flags = 0;
        self.b &= !(b::PIE | b::AIE | b::UIE | b::SQWE);
    }

    fn write_b(&mut self, v: u8, ticks: u64) {
        // Setting SET clears UIE.
        let v = if v & b::SET != 0 { v & !b::UIE } else { v };
        self.change(self.a, v, ticks);
    }
}
